//! Throttling for one backend: an adaptive concurrency limit (AIMD) shared by every upload of a server,
//! and the retry schedule of single requests.
//!
//! S3 stores answer overload with 503 `SlowDown` or 429 (and some proxies by resetting connections). The
//! spool drainer and the push API run many uploads at once; if each retried on its own the store would
//! see the same load again. So every request to a backend first takes a permit of its [`Throttle`]: the
//! number of requests in flight is capped by a limit between 1 and the configured maximum, halved when
//! the store signals overload and grown by one after a window of successes (additive increase,
//! multiplicative decrease, as TCP does). A throttled request waits a jittered, exponentially growing
//! delay (or the store's `Retry-After`, when the caller can read it) and tries again.
//!
//! Not a crate: `governor` (already used for API rate limits) caps a rate, not a number in flight, and
//! cannot shrink on feedback; tokio's `Semaphore` cannot take permits back from holders. The gate is a
//! mutex-guarded counter and a `Notify`, small enough to read in one sitting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;

/// What a finished request tells the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The request went through.
    Success,
    /// The store signalled overload (429, 503, `SlowDown`, a reset connection): halve the limit, retry later.
    Throttled,
    /// A transient failure that says nothing about load (a corrupted body, a 500, a timeout): retry
    /// without changing the limit.
    Retry,
    /// A failure no retry changes (403, 404, a bad request): give up; the limit is unchanged.
    Fatal,
}

/// Figures for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleStats {
    /// The current limit on requests in flight.
    pub limit: u64,
    /// The configured maximum.
    pub max: u64,
    /// The lowest the limit has been since the server started.
    pub lowest: u64,
    /// Requests in flight now.
    pub in_flight: u64,
    /// Answers that signalled overload.
    pub throttled: u64,
    /// Requests tried again (after overload or another transient failure).
    pub retries: u64,
    /// Times the limit was halved.
    pub decreases: u64,
}

/// How often, and how long apart, one request is tried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts in all (the first included); at least 1.
    pub attempts: u32,
    /// Delay ceiling before the second attempt; doubles per attempt.
    pub base: Duration,
    /// Largest delay (also the most a `Retry-After` is honoured for).
    pub cap: Duration,
}

impl Default for RetryPolicy {
    /// 8 attempts, 100 ms doubling up to 10 s: about 20 s of retries at most before the failure goes to the
    /// caller (whose own, slower retry then takes over: the drainer retries whole entries).
    fn default() -> Self {
        Self { attempts: 8, base: Duration::from_millis(100), cap: Duration::from_secs(10) }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1` (`attempt` ≥ 1 failed so far): uniformly random in
    /// [ceiling/2, ceiling] with ceiling = min(cap, base·2^(attempt−1)) ("equal jitter": retries of many
    /// uploads spread out, yet each waits a while). A `Retry-After` the store sent is honoured up to `cap`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        let ceiling = self.base.saturating_mul(1u32 << exp).min(self.cap);
        let half = ceiling / 2;
        let span = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        let jittered = half + Duration::from_millis(if span == 0 { 0 } else { rand::random::<u64>() % (span + 1) });
        match retry_after {
            Some(wait) => jittered.max(wait.min(self.cap)),
            None => jittered,
        }
    }
}

/// The limit's state.
#[derive(Debug)]
struct Gate {
    limit: usize,
    in_flight: usize,
    /// Successes since the limit last changed.
    successes: usize,
    /// Bumped on every decrease: a request that started before a decrease does not cause another one
    /// (a burst of 503s to requests sent together halves the limit once, not once per request).
    epoch: u64,
    lowest: usize,
}

/// The adaptive limit and retry schedule of one backend. Cheap to share: hold it in an `Arc`.
#[derive(Debug)]
pub struct Throttle {
    gate: Mutex<Gate>,
    wake: Notify,
    max: usize,
    policy: RetryPolicy,
    throttled: AtomicU64,
    retries: AtomicU64,
    decreases: AtomicU64,
}

impl Throttle {
    /// A limit starting at (and never above) `max` requests in flight (at least 1).
    pub fn new(max: usize, policy: RetryPolicy) -> Self {
        let max = max.max(1);
        Self {
            gate: Mutex::new(Gate { limit: max, in_flight: 0, successes: 0, epoch: 0, lowest: max }),
            wake: Notify::new(),
            max,
            policy: RetryPolicy { attempts: policy.attempts.max(1), ..policy },
            throttled: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            decreases: AtomicU64::new(0),
        }
    }

    /// The retry schedule.
    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        // The gate holds plain counters, consistent after every statement: a panic elsewhere cannot leave
        // it half-updated.
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until fewer requests than the limit are in flight, then counts this one in.
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            // Registered before looking, so a release between the look and the wait is not missed.
            notified.as_mut().enable();
            {
                let mut g = self.gate();
                if g.in_flight < g.limit {
                    g.in_flight += 1;
                    return Permit { throttle: Arc::clone(self), epoch: g.epoch };
                }
            }
            notified.await;
        }
    }

    /// Reports how a request that held `permit` ended, and releases the permit.
    pub fn finish(&self, permit: Permit, outcome: Outcome) {
        let mut g = self.gate();
        match outcome {
            Outcome::Success => {
                g.successes += 1;
                // One more after a window of as many successes as the limit: slow growth, as TCP's
                // congestion avoidance.
                if g.limit < self.max && g.successes >= g.limit {
                    g.limit += 1;
                    g.successes = 0;
                    self.wake.notify_one();
                }
            }
            Outcome::Throttled => {
                self.throttled.fetch_add(1, Ordering::Relaxed);
                if permit.epoch == g.epoch {
                    g.limit = (g.limit / 2).max(1);
                    g.lowest = g.lowest.min(g.limit);
                    g.successes = 0;
                    g.epoch += 1;
                    self.decreases.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(limit = g.limit, "the store is throttling: fewer requests at once");
                }
            }
            Outcome::Retry | Outcome::Fatal => {}
        }
        drop(g);
        drop(permit);
    }

    /// Counts one retry (for `/metrics`).
    pub fn note_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// The figures `/metrics` shows.
    pub fn stats(&self) -> ThrottleStats {
        let g = self.gate();
        ThrottleStats {
            limit: g.limit as u64,
            max: self.max as u64,
            lowest: g.lowest as u64,
            in_flight: g.in_flight as u64,
            throttled: self.throttled.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            decreases: self.decreases.load(Ordering::Relaxed),
        }
    }
}

/// One request in flight; released when dropped (also when the request's future is cancelled).
#[derive(Debug)]
pub struct Permit {
    throttle: Arc<Throttle>,
    epoch: u64,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut g = self.throttle.gate();
        g.in_flight = g.in_flight.saturating_sub(1);
        drop(g);
        self.throttle.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(max: usize) -> Arc<Throttle> {
        Arc::new(Throttle::new(max, RetryPolicy::default()))
    }

    #[tokio::test]
    async fn throttling_halves_once_per_burst_and_successes_grow_it_back() {
        let t = throttle(8);
        let permits: Vec<Permit> = futures::future::join_all((0..8).map(|_| t.acquire())).await;
        assert_eq!(t.stats().in_flight, 8);
        // All eight were sent before the store pushed back: one halving, not eight.
        for p in permits {
            t.finish(p, Outcome::Throttled);
        }
        let s = t.stats();
        assert_eq!((s.limit, s.lowest, s.throttled, s.decreases, s.in_flight), (4, 4, 8, 1, 0));
        // A request sent after the decrease that is throttled again halves again.
        let p = t.acquire().await;
        t.finish(p, Outcome::Throttled);
        assert_eq!(t.stats().limit, 2);
        // Two successes at limit 2 → 3; three more → 4.
        for _ in 0..5 {
            let p = t.acquire().await;
            t.finish(p, Outcome::Success);
        }
        assert_eq!(t.stats().limit, 4);
        // Retry and Fatal leave it alone.
        let p = t.acquire().await;
        t.finish(p, Outcome::Retry);
        let p = t.acquire().await;
        t.finish(p, Outcome::Fatal);
        assert_eq!(t.stats().limit, 4);
        assert_eq!(t.stats().lowest, 2);
    }

    #[tokio::test]
    async fn the_limit_never_goes_below_one_nor_above_the_maximum() {
        let t = throttle(2);
        for _ in 0..10 {
            let p = t.acquire().await;
            t.finish(p, Outcome::Throttled);
        }
        assert_eq!(t.stats().limit, 1);
        for _ in 0..100 {
            let p = t.acquire().await;
            t.finish(p, Outcome::Success);
        }
        assert_eq!(t.stats().limit, 2);
    }

    #[tokio::test]
    async fn a_full_gate_makes_the_next_request_wait_for_a_release() {
        let t = throttle(1);
        let first = t.acquire().await;
        let waiting = tokio::spawn({
            let t = Arc::clone(&t);
            async move { t.acquire().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a second request went past a limit of 1");
        // A dropped permit (a cancelled request) releases too.
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert!(matches!(second, Ok(Ok(_))), "the waiting request was never let through");
    }

    #[test]
    fn delays_are_jittered_capped_and_honour_retry_after() {
        let p = RetryPolicy { attempts: 5, base: Duration::from_millis(100), cap: Duration::from_secs(1) };
        for attempt in 1..30 {
            let d = p.delay(attempt, None);
            assert!(d <= Duration::from_secs(1), "{attempt}: {d:?}");
            assert!(d >= Duration::from_millis(50), "{attempt}: {d:?}");
        }
        assert!(p.delay(1, None) <= Duration::from_millis(100));
        assert!(p.delay(1, Some(Duration::from_millis(700))) >= Duration::from_millis(700));
        assert!(p.delay(1, Some(Duration::from_hours(1))) <= Duration::from_secs(1), "Retry-After is capped");
    }
}
