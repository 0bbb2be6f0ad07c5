//! A tenant's request rate (`rateLimit`): a token bucket kept as one atomic, the theoretical
//! arrival time of the generic cell rate algorithm (GCRA, as in ATM networks and
//! `redis-cell`). A request is allowed when the bucket's time is no further ahead of now than
//! the burst allows; each allowed request moves it on by one emission interval (1 / rate).
//!
//! With `[cluster] scope = "cluster"` the replica enforces its share of the rate and burst
//! (`fraction`, recomputed in the background from the replicas' demand); otherwise all of it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::tenants::tenant::RateLimit;

/// Parts per million: the whole of a tenant's rate.
pub const WHOLE: u32 = 1_000_000;

/// One tenant's bucket on this replica.
#[derive(Debug, Default)]
pub struct Bucket {
    /// The theoretical arrival time of the next request, in nanoseconds since [`epoch`].
    tat: AtomicU64,
}

/// The instant bucket times count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`].
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

impl Bucket {
    /// Takes one request's token at `now` (from [`now_ns`]), this replica holding `share_ppm`
    /// parts per million of the rate; when there is none, how long until there is.
    pub fn try_take(&self, limit: RateLimit, share_ppm: u32, now: u64) -> Result<(), Duration> {
        let fraction = f64::from(share_ppm.min(WHOLE)) / f64::from(WHOLE);
        let rate = limit.per_second * fraction;
        if rate <= 0.0 {
            return Err(Duration::from_secs(1));
        }
        // The burst is shared like the rate, but a replica may always hold one request.
        let burst = (f64::from(limit.burst) * fraction).max(1.0);
        let interval = (1e9 / rate) as u64;
        let tolerance = ((burst - 1.0) * 1e9 / rate) as u64;
        let mut tat = self.tat.load(Relaxed);
        loop {
            let start = tat.max(now);
            if start - now > tolerance {
                return Err(Duration::from_nanos(start - now - tolerance));
            }
            match self
                .tat
                .compare_exchange_weak(tat, start + interval, Relaxed, Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn allows_the_burst_at_once_then_the_rate() {
        let b = Bucket::default();
        let limit = RateLimit {
            per_second: 10.0,
            burst: 5,
        };
        let t0 = 5 * SECOND;
        for _ in 0..5 {
            b.try_take(limit, WHOLE, t0).unwrap();
        }
        let wait = b.try_take(limit, WHOLE, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // One second later the bucket is full again: the burst, not the second's ten.
        let t1 = t0 + SECOND;
        let allowed = (0..20)
            .filter(|_| b.try_take(limit, WHOLE, t1).is_ok())
            .count();
        assert_eq!(allowed, 5);
        // At the rate itself, every request passes: 50 over the next five seconds.
        let steady = (1..=50)
            .filter(|i| b.try_take(limit, WHOLE, t1 + i * SECOND / 10).is_ok())
            .count();
        assert_eq!(steady, 50);
    }

    #[test]
    fn a_share_scales_rate_and_burst_but_keeps_one_request() {
        let b = Bucket::default();
        let limit = RateLimit {
            per_second: 30.0,
            burst: 30,
        };
        let t0 = 10 * SECOND;
        let third = WHOLE / 3 + 1;
        let allowed = (0..50)
            .filter(|_| b.try_take(limit, third, t0).is_ok())
            .count();
        assert_eq!(allowed, 10, "a third of a burst of 30");
        assert!(b.try_take(limit, 0, t0 + 60 * SECOND).is_err());
        let tiny = Bucket::default();
        assert!(
            tiny.try_take(limit, 1, t0).is_ok(),
            "one request is always a burst"
        );
    }
}
