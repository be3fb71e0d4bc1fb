//! Password hashing with argon2id, bounded to one hash per core.
//!
//! A hash costs tens of milliseconds of CPU by design. Running it on the async
//! runtime's workers would stall every other request, and running unbounded many
//! at once would let a burst of logins starve the machine; so hashes run on the
//! blocking pool behind a semaphore with one permit per core. The queue in
//! front of it is bounded too: beyond `queue` waiting hashes a login is refused
//! at once as [`HashError::Busy`] rather than queued without end (a flood would
//! otherwise hold every login for minutes, and memory for each waiting one).
//!
//! The cost ([`PasswordCost`]) applies to new hashes; a stored hash carries its
//! own parameters, so raising the cost later leaves existing logins working.

use std::sync::Arc;

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// Hashes and verifies passwords.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    /// One per hash running or waiting; none left means busy.
    admitted: Arc<Semaphore>,
    argon2: Argon2<'static>,
    /// A real hash of a password nobody knows, used when the user does not
    /// exist, so "no such user" costs the same time as "wrong password".
    dummy: Arc<str>,
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

impl PasswordHasher {
    /// At most `concurrency` hashes at a time (0 means one per core), each of
    /// `cost`, with at most `queue` more waiting; refuses parameters argon2
    /// cannot use.
    pub fn new(concurrency: usize, queue: usize, cost: PasswordCost) -> Result<Self, HashError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let permits = if concurrency == 0 { cores } else { concurrency };
        let params = Params::new(cost.memory_kib, cost.iterations, 1, None)
            .map_err(|e| HashError::Failed(format!("{cost:?}: {e}")))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let nobody = format!("{:?}", std::time::Instant::now());
        let dummy = argon2.hash_password(nobody.as_bytes()).map_err(|e| HashError::Failed(e.to_string()))?.to_string();
        Ok(Self {
            permits: Arc::new(Semaphore::new(permits)),
            admitted: Arc::new(Semaphore::new(permits + queue)),
            argon2,
            dummy: dummy.into(),
        })
    }

    /// A place among the hashes running or waiting, or [`HashError::Busy`].
    fn admit(&self) -> Result<OwnedSemaphorePermit, HashError> {
        self.admitted.clone().try_acquire_owned().map_err(|_| HashError::Busy)
    }

    /// An argon2id PHC string for `password` with a fresh random salt.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let _admitted = self.admit()?;
        let _permit = self.permits.acquire().await.map_err(|e| HashError::Failed(e.to_string()))?;
        let argon2 = self.argon2.clone();
        tokio::task::spawn_blocking(move || {
            argon2
                .hash_password(password.as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|e| HashError::Failed(e.to_string()))
        })
        .await
        .map_err(|e| HashError::Failed(e.to_string()))?
    }

    /// Whether `password` matches `hash`; `None` for `hash` checks against a dummy
    /// so the time taken does not reveal whether the user exists.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, HashError> {
        let _admitted = self.admit()?;
        let _permit = self.permits.acquire().await.map_err(|e| HashError::Failed(e.to_string()))?;
        let (argon2, dummy) = (self.argon2.clone(), self.dummy.clone());
        tokio::task::spawn_blocking(move || {
            let known = hash.is_some();
            // Verification reads the parameters from the stored hash.
            let ok = argon2.verify_password(password.as_bytes(), hash.as_deref().unwrap_or(&dummy)).is_ok();
            ok && known
        })
        .await
        .map_err(|e| HashError::Failed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_salted_argon2id_and_verify() {
        let hasher = PasswordHasher::new(0, 8, PasswordCost::default()).expect("hasher");
        let a = hasher.hash("111111".into()).await.expect("hash");
        let b = hasher.hash("111111".into()).await.expect("hash");
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "salted");
        assert!(hasher.verify("111111".into(), Some(a.clone())).await.expect("verify"));
        assert!(!hasher.verify("111112".into(), Some(a)).await.expect("verify"));
        assert!(!hasher.verify("111111".into(), None).await.expect("verify"));
        assert!(!hasher.verify("x".into(), Some("not a phc string".into())).await.expect("verify"));
    }

    #[tokio::test]
    async fn a_hash_keeps_verifying_after_the_cost_changes() {
        let cheap = PasswordCost { memory_kib: 1024, iterations: 1 };
        let old = PasswordHasher::new(1, 0, cheap).expect("hasher").hash("pw".into()).await.expect("hash");
        assert!(old.contains("m=1024,t=1"), "{old}");
        let now = PasswordHasher::new(1, 0, PasswordCost::default()).expect("hasher");
        assert!(now.verify("pw".into(), Some(old)).await.expect("verify"));
        assert!(PasswordHasher::new(1, 0, PasswordCost { memory_kib: 1, iterations: 0 }).is_err(), "invalid cost");
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_instead_of_waiting() {
        let cheap = PasswordCost { memory_kib: 1024, iterations: 1 };
        let hasher = PasswordHasher::new(1, 1, cheap).expect("hasher");
        // One hash running and one waiting take every place.
        let running = hasher.admit().expect("a place");
        let waiting = hasher.admit().expect("a place in the queue");
        assert!(matches!(hasher.verify("pw".into(), None).await, Err(HashError::Busy)));
        assert!(matches!(hasher.hash("pw".into()).await, Err(HashError::Busy)));
        drop((running, waiting));
        assert!(hasher.hash("pw".into()).await.is_ok(), "places free again");
    }
}
