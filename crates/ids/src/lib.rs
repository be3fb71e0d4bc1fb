//! Snowflake message ids: 41 bits of milliseconds since [`EPOCH_MS`], 10 bits of
//! worker id, 12 bits of sequence.
//!
//! Ids from one generator strictly increase. When the wall clock steps back, the
//! generator keeps counting from the last millisecond it used instead of reusing
//! it, and when a millisecond's 4,096 sequence numbers run out it borrows the next
//! millisecond; so an id is never repeated by one generator, whatever the clock
//! does. Uniqueness across generators rests on distinct worker ids, which callers
//! lease (see the logic tier), never copy from configuration. [`now_unix_ms`] is
//! the wall clock the generators and the rest of Courier read.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// 2024-01-01T00:00:00Z: ids stay positive as `i64` until the year 2093.
pub const EPOCH_MS: u64 = 1_704_067_200_000;
const WORKER_BITS: u32 = 10;
const SEQUENCE_BITS: u32 = 12;
/// Highest worker id that fits the layout.
pub const MAX_WORKER_ID: u16 = (1 << WORKER_BITS) - 1;
const MAX_SEQUENCE: u64 = (1 << SEQUENCE_BITS) - 1;

/// A worker id outside `0..=1023`.
#[derive(Debug, thiserror::Error)]
#[error("worker id {0} is outside 0..={MAX_WORKER_ID}")]
pub struct WorkerIdError(pub u32);

/// Generates snowflake ids for one worker.
#[derive(Debug)]
pub struct Snowflake {
    worker: u64,
    /// (last millisecond used, last sequence used in it); a plain mutex because the
    /// critical section is a few instructions and never awaits.
    state: Mutex<(u64, u64)>,
    clock: fn() -> u64,
}

impl Snowflake {
    /// A generator for `worker_id`, reading the system clock.
    pub fn new(worker_id: u32) -> Result<Self, WorkerIdError> {
        Self::with_clock(worker_id, system_ms)
    }

    /// A generator that never uses a millisecond before `not_before_unix_ms`: the
    /// last millisecond a previous holder of this worker id may have used, so a
    /// restart onto a clock that stepped back cannot repeat its ids.
    pub fn starting_after(worker_id: u32, not_before_unix_ms: u64) -> Result<Self, WorkerIdError> {
        let ids = Self::new(worker_id)?;
        let floor = not_before_unix_ms.saturating_sub(EPOCH_MS);
        *ids.state.lock().unwrap_or_else(|p| p.into_inner()) = (floor, MAX_SEQUENCE);
        Ok(ids)
    }

    /// The worker id of this generator.
    pub fn worker_id(&self) -> u32 {
        self.worker as u32
    }

    /// The last millisecond (since the Unix epoch) this generator used.
    pub fn last_unix_ms(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0 + EPOCH_MS
    }

    /// A generator with its own clock (milliseconds since the Unix epoch).
    pub fn with_clock(worker_id: u32, clock: fn() -> u64) -> Result<Self, WorkerIdError> {
        if worker_id > u32::from(MAX_WORKER_ID) {
            return Err(WorkerIdError(worker_id));
        }
        Ok(Self { worker: u64::from(worker_id), state: Mutex::new((0, 0)), clock })
    }

    /// The next id.
    pub fn next_id(&self) -> u64 {
        let now = (self.clock)().saturating_sub(EPOCH_MS);
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (last_ms, last_seq) = *state;
        let (ms, seq) = if now > last_ms {
            (now, 0)
        } else if last_seq < MAX_SEQUENCE {
            // Same millisecond, or the clock stepped back: keep counting.
            (last_ms, last_seq + 1)
        } else {
            // Sequence exhausted: borrow the next millisecond.
            (last_ms + 1, 0)
        };
        *state = (ms, seq);
        (ms << (WORKER_BITS + SEQUENCE_BITS)) | (self.worker << SEQUENCE_BITS) | seq
    }
}

/// The worker id encoded in `id`.
pub fn worker_of(id: u64) -> u32 {
    ((id >> SEQUENCE_BITS) & u64::from(MAX_WORKER_ID)) as u32
}

/// Milliseconds since the Unix epoch at which `id` was generated.
pub fn unix_ms_of(id: u64) -> u64 {
    (id >> (WORKER_BITS + SEQUENCE_BITS)) + EPOCH_MS
}

/// Milliseconds since the Unix epoch by the wall clock (0 if it reads before
/// 1970). The one clock every Courier crate stamps records, leases and expiries
/// with.
pub fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Microseconds since the Unix epoch: a message's admission time, which its
/// stage latencies are measured from (milliseconds are too coarse for them).
pub fn now_unix_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

fn system_ms() -> u64 {
    now_unix_ms() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    static FAKE_NOW: AtomicU64 = AtomicU64::new(EPOCH_MS + 10_000);
    fn fake_clock() -> u64 {
        FAKE_NOW.load(Ordering::SeqCst)
    }

    #[test]
    fn ids_increase_through_clock_steps_back_and_sequence_exhaustion() {
        let ids = Snowflake::with_clock(5, fake_clock).expect("valid worker");
        let mut seen = Vec::new();
        for _ in 0..5_000 {
            seen.push(ids.next_id()); // more than one millisecond's sequence
        }
        FAKE_NOW.fetch_sub(3_000, Ordering::SeqCst); // the clock steps back 3 s
        for _ in 0..100 {
            seen.push(ids.next_id());
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "ids must strictly increase");
        assert!(seen.iter().all(|&id| worker_of(id) == 5));
    }

    #[test]
    fn a_successor_never_reuses_its_predecessors_milliseconds() {
        let first = Snowflake::new(3).expect("valid worker");
        let last = (0..10).map(|_| first.next_id()).max().expect("ids");
        // The next holder of the id starts from the last millisecond the first used.
        let successor = Snowflake::starting_after(3, first.last_unix_ms()).expect("valid worker");
        let next = successor.next_id();
        assert!(next > last, "{next} must follow {last}");
        assert_eq!(successor.worker_id(), 3);
    }

    #[test]
    fn layout_round_trips_time_and_worker() {
        let ids = Snowflake::new(1023).expect("valid worker");
        let id = ids.next_id();
        assert_eq!(worker_of(id), 1023);
        assert!(unix_ms_of(id).abs_diff(system_ms()) < 5_000);
        assert!(Snowflake::new(1024).is_err());
    }
}
