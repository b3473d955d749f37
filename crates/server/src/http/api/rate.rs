//! Per-token request rate limit of the API (`--api-requests-per-minute`): a token that sends more is
//! answered 429 with `Retry-After`, so whoever holds a CI token cannot keep a server busy for everyone.
//! The `governor` crate does the counting (GCRA, one small state per token name, no background task):
//! a rate limiter is outside our core, and that crate is the one the Rust ecosystem uses for it.

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;

/// The default of `--api-requests-per-minute`: far above what pushing needs (a push is a few requests
/// plus one per NAR), far below what would keep a server busy.
pub const DEFAULT_PER_MINUTE: u32 = 6000;

/// The limiter of one server (each server counts its own requests).
pub struct ApiRate {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    per_minute: u32,
}

impl ApiRate {
    /// At most `per_minute` requests per token per minute, in bursts of up to that many; 0: no limit.
    pub fn new(per_minute: u32) -> Self {
        let limiter = NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n)));
        ApiRate { limiter, per_minute }
    }

    /// `Ok` when token `name` may send one more request now, else how long it must wait.
    pub fn check(&self, name: &str) -> Result<(), Duration> {
        let Some(l) = &self.limiter else { return Ok(()) };
        l.check_key(&name.to_owned())
            .map_err(|not_until| not_until.wait_time_from(governor::clock::Clock::now(l.clock())))
    }

    /// The configured rate (requests per minute; 0: unlimited).
    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_past_its_rate_waits_and_other_tokens_do_not() {
        let r = ApiRate::new(3);
        for _ in 0..3 {
            assert_eq!(r.check("ci"), Ok(()));
        }
        let wait = r.check("ci").expect_err("the fourth request in a minute");
        assert!(wait > Duration::from_secs(10) && wait <= Duration::from_secs(20), "{wait:?}");
        assert_eq!(r.check("builder-1"), Ok(()), "each token has its own budget");
        let off = ApiRate::new(0);
        assert!((0..10_000).all(|_| off.check("ci").is_ok()));
    }
}
