//! The one retry policy of every tier: exponential backoff with jitter.
//!
//! Whatever a tier retries — a store write, a push to a connect node, a
//! presence release, an accept that ran out of file descriptors, a history
//! read for a gap — it waits the same way: each pause twice the last, from a
//! first pause to a ceiling, plus a random share of itself (backon's jitter), so
//! that the thousands of connections or lanes that failed together do not all
//! come back in the same millisecond. The delays come from `backon`; this crate
//! only adds waiting that gives way to shutdown, and a reset for when things
//! work again.

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBackoff, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// Pauses between attempts: from `first`, doubling, at most `max` (before
/// jitter), never running out.
#[derive(Debug)]
pub struct Backoff {
    policy: ExponentialBuilder,
    delays: ExponentialBackoff,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        let policy = ExponentialBuilder::default()
            .with_min_delay(first)
            .with_max_delay(max.max(first))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self { delays: policy.build(), policy }
    }

    /// Starts over from the first pause (after an attempt worked).
    pub fn reset(&mut self) {
        self.delays = self.policy.build();
    }

    /// The next pause.
    pub fn next_delay(&mut self) -> Duration {
        // Never exhausted (`without_max_times`); the ceiling is the fallback.
        self.delays.next().unwrap_or(Duration::from_secs(1))
    }

    /// Sleeps the next pause.
    pub async fn sleep(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Sleeps the next pause; false if `stop` came first.
    pub async fn wait(&mut self, stop: &CancellationToken) -> bool {
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = self.sleep() => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_with_jitter_up_to_a_ceiling_and_start_over_on_reset() {
        let first = Duration::from_millis(100);
        let mut backoff = Backoff::new(first, Duration::from_secs(1));
        let pauses: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        for (i, pause) in pauses.iter().enumerate() {
            let base = (first * 2u32.pow(i as u32)).min(Duration::from_secs(1));
            assert!(*pause >= base && *pause <= base * 2, "pause {i}: {pause:?} around {base:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() < first * 2, "back to the first pause");
        // Jitter: many backoffs do not all pick the same pause.
        let firsts: std::collections::HashSet<Duration> =
            (0..20).map(|_| Backoff::new(first, first * 8).next_delay()).collect();
        assert!(firsts.len() > 1, "{firsts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_gives_way_to_shutdown() {
        let stop = CancellationToken::new();
        let mut backoff = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        assert!(backoff.wait(&stop).await, "an uncancelled wait ends with its pause");
        stop.cancel();
        assert!(!backoff.wait(&stop).await, "a cancelled wait ends at once");
    }
}
