//! Jittered, capped exponential backoff: how long to wait before retrying after a transient failure
//! (S3 or PostgreSQL unreachable). Full jitter spreads the retries of many entries so a recovering
//! backend is not hit by all of them at once.

use std::time::Duration;

/// Backoff state for one retried operation.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, doubling per attempt, never above `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap, attempt: 0 }
    }

    /// The default for uploads: 0.5 s doubling up to 60 s.
    pub fn for_uploads() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_mins(1))
    }

    /// Attempts so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The next delay: uniformly random in [ceiling/2, ceiling], ceiling = min(cap, base·2^attempt).
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.attempt.min(20);
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = self.base.saturating_mul(1u32 << exp).min(self.cap);
        let half = ceiling / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        let extra = if jitter_ms == 0 { 0 } else { rand::random::<u64>() % (jitter_ms + 1) };
        half + Duration::from_millis(extra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100), "{first:?}");
        for _ in 0..40 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(2), "{d:?}");
            assert!(d >= Duration::from_millis(50), "{d:?}");
        }
        let late = b.next_delay();
        assert!(late >= Duration::from_secs(1), "capped delays stay near the cap: {late:?}");
        assert_eq!(b.attempts(), 42);
    }
}
