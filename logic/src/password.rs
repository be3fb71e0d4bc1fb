//! Password hashing with argon2id on a fixed set of workers, each reusing its
//! own argon2 memory.
//!
//! A hash costs tens of milliseconds of CPU and, by design, `memory_kib` of
//! memory (19 MiB by default). Hashing on the async runtime would stall every
//! other request, and letting each hash allocate its own memory made a burst
//! of logins cost far more than the hashes running at once: with glibc's
//! allocator every blocking-pool thread that ever hashed kept its 19 MiB in its
//! own arena (400 registrations left a standalone at 623 MB, eight times its
//! idle size, for good). So hashing has its own threads, one per core (or as
//! configured), each holding one buffer of argon2 blocks that every hash it
//! runs reuses: hashing memory is workers × cost, whatever arrives.
//!
//! In front of the workers is a bounded queue: beyond `queue` waiting checks a
//! login is refused at once as [`HashError::Busy`] rather than queued without
//! end (a flood would otherwise hold every login for minutes).
//!
//! The cost ([`PasswordCost`]) applies to new hashes; a stored hash carries its
//! own parameters, so raising the cost later leaves existing logins working (a
//! worker grows its buffer for an older, larger hash and gives the extra back
//! afterwards).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// argon2id's cost parameters for new hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordCost {
    /// Memory per hash, KiB.
    pub memory_kib: u32,
    /// Passes over that memory.
    pub iterations: u32,
}

impl Default for PasswordCost {
    /// OWASP's recommendation for argon2id (and the `argon2` crate's default):
    /// 19 MiB, 2 passes, one lane.
    fn default() -> Self {
        Self { memory_kib: Params::DEFAULT_M_COST, iterations: Params::DEFAULT_T_COST }
    }
}

/// Hashing did not happen (never a wrong password).
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Too many hashes are waiting: try again in a moment.
    #[error("too many password checks are waiting")]
    Busy,
    #[error("password hashing failed: {0}")]
    Failed(String),
}

/// The largest argon2 memory a stored hash may ask a worker for (1 GiB): a
/// hash asking for more is treated as not matching rather than allocated.
const MAX_STORED_MEMORY_KIB: u32 = 1024 * 1024;
/// Bytes of the hashes Courier makes.
const OUTPUT_LEN: usize = 32;

/// One job for a worker and where its answer goes.
enum Job {
    Hash { password: String, reply: oneshot::Sender<Result<String, HashError>> },
    Verify { password: String, hash: Option<String>, reply: oneshot::Sender<bool> },
}

/// A job with its place among the checks admitted (freed when it is done).
struct Admitted {
    job: Job,
    _place: OwnedSemaphorePermit,
}

/// What the workers have done, for tests and metrics.
#[derive(Debug, Default)]
struct Counters {
    running: AtomicUsize,
    peak_running: AtomicUsize,
    /// argon2 buffers allocated (each worker allocates one, once).
    buffers: AtomicUsize,
}

/// A snapshot of the workers' counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HasherStats {
    pub workers: usize,
    /// Most hashes that ever ran at once.
    pub peak_running: usize,
    /// argon2 memory buffers ever allocated.
    pub buffers_allocated: usize,
}

/// Hashes and verifies passwords; cheap to clone. The workers stop when the
/// last clone is dropped.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    jobs: SyncSender<Admitted>,
    /// One per check running or waiting; none left means busy.
    places: Arc<Semaphore>,
    counters: Arc<Counters>,
    workers: usize,
}

impl PasswordHasher {
    /// `concurrency` workers (0 means one per core) hashing at `cost`, with at
    /// most `queue` checks waiting; refuses parameters argon2 cannot use.
    pub fn new(concurrency: usize, queue: usize, cost: PasswordCost) -> Result<Self, HashError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = if concurrency == 0 { cores } else { concurrency };
        let params = Params::new(cost.memory_kib, cost.iterations, 1, Some(OUTPUT_LEN))
            .map_err(|e| HashError::Failed(format!("{cost:?}: {e}")))?;
        // A real hash of a password nobody knows, checked when the user does
        // not exist, so "no such user" costs the same time as "wrong password".
        let mut blocks = Vec::new();
        let nobody = format!("{:?}", std::time::Instant::now());
        let dummy: Arc<str> = hash_with(&params, &nobody, &mut blocks)?.into();
        drop(blocks);
        // Admission bounds what is in the channel; it never fills.
        let (jobs, receiver) = sync_channel(workers + queue);
        let receiver = Arc::new(Mutex::new(receiver));
        let counters = Arc::new(Counters::default());
        for n in 0..workers {
            let (receiver, counters, params, dummy) =
                (receiver.clone(), counters.clone(), params.clone(), dummy.clone());
            std::thread::Builder::new()
                .name(format!("courier-argon2-{n}"))
                .spawn(move || work(&receiver, &counters, &params, &dummy))
                .map_err(|e| HashError::Failed(format!("starting a hashing worker: {e}")))?;
        }
        Ok(Self { jobs, places: Arc::new(Semaphore::new(workers + queue)), counters, workers })
    }

    fn submit(&self, job: Job) -> Result<(), HashError> {
        let place = self.places.clone().try_acquire_owned().map_err(|_| HashError::Busy)?;
        self.jobs.try_send(Admitted { job, _place: place }).map_err(|e| match e {
            TrySendError::Full(_) => HashError::Busy,
            TrySendError::Disconnected(_) => HashError::Failed("the hashing workers stopped".into()),
        })
    }

    /// An argon2id PHC string for `password` with a fresh random salt.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Hash { password, reply })?;
        answer.await.map_err(|_| HashError::Failed("a hashing worker stopped".into()))?
    }

    /// Whether `password` matches `hash`; `None` for `hash` checks against a dummy
    /// so the time taken does not reveal whether the user exists.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, HashError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Verify { password, hash, reply })?;
        answer.await.map_err(|_| HashError::Failed("a hashing worker stopped".into()))
    }

    /// The workers' counters.
    pub fn stats(&self) -> HasherStats {
        HasherStats {
            workers: self.workers,
            peak_running: self.counters.peak_running.load(Ordering::Relaxed),
            buffers_allocated: self.counters.buffers.load(Ordering::Relaxed),
        }
    }
}

/// A worker: takes jobs until every sender is gone, hashing in its own buffer.
fn work(receiver: &Mutex<Receiver<Admitted>>, counters: &Counters, params: &Params, dummy: &str) {
    let mut blocks: Vec<Block> = Vec::new();
    loop {
        let job = {
            let receiver = receiver.lock().unwrap_or_else(|p| p.into_inner());
            receiver.recv()
        };
        let Ok(Admitted { job, _place }) = job else { return };
        let running = counters.running.fetch_add(1, Ordering::Relaxed) + 1;
        counters.peak_running.fetch_max(running, Ordering::Relaxed);
        if blocks.is_empty() {
            counters.buffers.fetch_add(1, Ordering::Relaxed);
        }
        match job {
            Job::Hash { password, reply } => {
                let _ = reply.send(hash_with(params, &password, &mut blocks));
            }
            Job::Verify { password, hash, reply } => {
                let known = hash.is_some();
                let matches = verify_with(&password, hash.as_deref().unwrap_or(dummy), &mut blocks);
                let _ = reply.send(matches && known);
            }
        }
        // Keep the configured size for the next hash; give back what a
        // larger stored hash needed.
        if blocks.len() > params.block_count() {
            blocks.truncate(params.block_count());
            blocks.shrink_to_fit();
        }
        counters.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `blocks`, grown to `count` blocks if it is smaller.
fn memory(blocks: &mut Vec<Block>, count: usize) -> &mut [Block] {
    if blocks.len() < count {
        blocks.resize(count, Block::default());
    }
    &mut blocks[..count]
}

/// An argon2id PHC string of `password` at `params`, computed in `blocks`.
fn hash_with(params: &Params, password: &str, blocks: &mut Vec<Block>) -> Result<String, HashError> {
    let failed = |e: &dyn std::fmt::Display| HashError::Failed(e.to_string());
    let salt = argon2::password_hash::try_generate_salt().map_err(|e| failed(&e))?;
    let mut out = [0u8; OUTPUT_LEN];
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    argon2
        .hash_password_into_with_memory(password.as_bytes(), &salt, &mut out, memory(blocks, params.block_count()))
        .map_err(|e| failed(&e))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| failed(&e))?,
        salt: Some(Salt::new(&salt).map_err(|e| failed(&e))?),
        hash: Some(Output::new(&out).map_err(|e| failed(&e))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `stored` (its own algorithm,
/// version and parameters), computed in `blocks`; false for anything unreadable.
fn verify_with(password: &str, stored: &str, blocks: &mut Vec<Block>) -> bool {
    let Ok(phc) = PasswordHash::new(stored) else { return false };
    let (Some(salt), Some(expected)) = (&phc.salt, &phc.hash) else { return false };
    let Ok(algorithm) = Algorithm::try_from(phc.algorithm.as_str()) else { return false };
    let Ok(version) = phc.version.map_or(Ok(Version::V0x13), Version::try_from) else { return false };
    let Ok(params) = Params::try_from(&phc) else { return false };
    if params.m_cost() > MAX_STORED_MEMORY_KIB {
        return false;
    }
    let mut buffer = [0u8; Output::MAX_LENGTH];
    let Some(out) = buffer.get_mut(..expected.len()) else { return false };
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let computed =
        argon2.hash_password_into_with_memory(password.as_bytes(), salt, out, memory(blocks, params.block_count()));
    // Output's comparison takes the same time wherever the bytes differ.
    computed.is_ok() && Output::new(out).is_ok_and(|computed| computed == *expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: PasswordCost = PasswordCost { memory_kib: 1024, iterations: 1 };

    #[tokio::test]
    async fn hashes_are_salted_argon2id_and_verify() {
        let hasher = PasswordHasher::new(0, 8, PasswordCost::default()).expect("hasher");
        let a = hasher.hash("111111".into()).await.expect("hash");
        let b = hasher.hash("111111".into()).await.expect("hash");
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b, "salted");
        assert!(hasher.verify("111111".into(), Some(a.clone())).await.expect("verify"));
        assert!(!hasher.verify("111112".into(), Some(a)).await.expect("verify"));
        assert!(!hasher.verify("111111".into(), None).await.expect("verify"));
        assert!(!hasher.verify("x".into(), Some("not a phc string".into())).await.expect("verify"));
    }

    #[tokio::test]
    async fn hashes_made_by_the_argon2_crate_itself_verify_and_the_reverse() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let hasher = PasswordHasher::new(1, 8, CHEAP).expect("hasher");
        let params = Params::new(CHEAP.memory_kib, CHEAP.iterations, 1, None).expect("params");
        let reference = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        // Stored by an earlier Courier (the crate's own PHC strings).
        let earlier = reference.hash_password(b"pw").expect("hash").to_string();
        assert!(hasher.verify("pw".into(), Some(earlier.clone())).await.expect("verify"));
        assert!(!hasher.verify("pW".into(), Some(earlier)).await.expect("verify"));
        // And what the workers make, the crate verifies.
        let ours = hasher.hash("pw".into()).await.expect("hash");
        assert!(reference.verify_password(b"pw", ours.as_str()).is_ok(), "{ours}");
    }

    #[tokio::test]
    async fn a_hash_keeps_verifying_after_the_cost_changes() {
        let old = PasswordHasher::new(1, 0, CHEAP).expect("hasher").hash("pw".into()).await.expect("hash");
        assert!(old.contains("m=1024,t=1"), "{old}");
        let now = PasswordHasher::new(1, 1, PasswordCost::default()).expect("hasher");
        assert!(now.verify("pw".into(), Some(old)).await.expect("verify"));
        assert!(PasswordHasher::new(1, 0, PasswordCost { memory_kib: 1, iterations: 0 }).is_err(), "invalid cost");
        // A stored hash asking for absurd memory is not allocated for.
        let huge = "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";
        assert!(!now.verify("pw".into(), Some(huge.into())).await.expect("verify"));
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_instead_of_waiting() {
        // No worker takes from this queue: one place, taken.
        let hasher = PasswordHasher::new(1, 1, CHEAP).expect("hasher");
        let (jobs, _receiver) = sync_channel(1);
        let blocked =
            PasswordHasher { jobs, places: Arc::new(Semaphore::new(1)), counters: Arc::default(), workers: 0 };
        let (reply, _answer) = oneshot::channel();
        blocked.submit(Job::Verify { password: "pw".into(), hash: None, reply }).expect("a place in the queue");
        assert!(matches!(blocked.verify("pw".into(), None).await, Err(HashError::Busy)));
        assert!(matches!(blocked.hash("pw".into()).await, Err(HashError::Busy)));
        assert!(hasher.hash("pw".into()).await.is_ok(), "the real one has places");
    }

    #[tokio::test]
    async fn a_burst_of_logins_never_runs_more_hashes_or_buffers_than_workers() {
        let hasher = PasswordHasher::new(2, 200, CHEAP).expect("hasher");
        let stored = hasher.hash("pw".into()).await.expect("hash");
        let checks: Vec<_> = (0..100)
            .map(|n| {
                let (hasher, stored) = (hasher.clone(), stored.clone());
                tokio::spawn(
                    async move { hasher.verify(if n % 2 == 0 { "pw" } else { "no" }.into(), Some(stored)).await },
                )
            })
            .collect();
        let mut matched = 0;
        for check in checks {
            matched += usize::from(check.await.expect("task").expect("verified"));
        }
        assert_eq!(matched, 50);
        let stats = hasher.stats();
        assert_eq!(stats.workers, 2);
        assert!(stats.peak_running <= 2, "{stats:?}");
        assert!(stats.buffers_allocated <= 2, "each worker allocates its memory once: {stats:?}");
    }
}
