//! A tenant's daily quota (`quota.requestsPerDay`, UTC days) as one replica counts it.
//!
//! The request path only compares and adds atomics: a request is accepted while the requests
//! accepted since the last flush stay under the replica's allowance. The flush (in the
//! background, every `[cluster] flush_ms`, [`crate::tenants::cluster`]) sets the next allowance:
//! per replica, what is left of the day's quota after this replica's own count; with
//! `[cluster] scope = "cluster"`, this replica's lease of the day's count in MongoDB (leased with
//! a conditional `$inc`, so the replicas never hold more than the quota between them).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

/// Seconds in a day.
const DAY: u64 = 86_400;

/// The allowance before this replica's first flush of a tenant: none known yet.
const UNFLUSHED: u64 = u64::MAX;

/// The UTC day (days since 1970-01-01) at `now`.
pub fn day_of(now: SystemTime) -> u32 {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (secs / DAY) as u32
}

/// Time until the next UTC midnight after `now` (at least one second).
pub fn until_next_day(now: SystemTime) -> Duration {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Duration::from_secs((DAY - secs % DAY).max(1))
}

/// Wakes the background flush early: a tenant's quota was checked before its day's total had
/// been read.
static FLUSH_ASKED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Asks the background for a flush now.
pub fn ask_flush() {
    FLUSH_ASKED.notify_waiters();
}

/// Resolves when a flush has been asked for.
pub async fn flush_asked() {
    FLUSH_ASKED.notified().await
}

/// One tenant's count of the day on this replica.
#[derive(Debug)]
pub struct DayCount {
    /// The day the counts are for.
    day: AtomicU32,
    /// Accepted since the last flush.
    pending: AtomicU64,
    /// How many this replica may accept before its next flush — its lease, with scope
    /// `cluster` ([`UNFLUSHED`]: no flush yet today).
    allowance: AtomicU64,
    /// The day's total as of the last flush (the cluster's, or this replica's).
    total: AtomicU64,
}

impl Default for DayCount {
    fn default() -> Self {
        DayCount {
            day: AtomicU32::new(day_of(SystemTime::now())),
            pending: AtomicU64::new(0),
            allowance: AtomicU64::new(UNFLUSHED),
            total: AtomicU64::new(0),
        }
    }
}

/// What a flush takes from a [`DayCount`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unflushed {
    pub day: u32,
    pub count: u64,
}

impl Unflushed {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl DayCount {
    /// Counts one request of day `today` if the allowance has room. Before the day's first
    /// flush the allowance is `first` (the whole quota per replica scope; a thousandth of it with
    /// scope `cluster`, until the first lease).
    pub fn try_take(&self, today: u32, first: u64) -> bool {
        if self.day.load(Relaxed) != today {
            self.roll(today);
        }
        let allowance = match self.allowance.load(Relaxed) {
            UNFLUSHED => {
                ask_flush();
                first
            }
            n => n,
        };
        let before = self.pending.fetch_add(1, Relaxed);
        if before >= allowance {
            self.pending.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    /// A new day: the count starts again (what was pending was the day before's: within its
    /// lease with scope `cluster`, of no further use per replica).
    #[cold]
    fn roll(&self, today: u32) {
        let seen = self.day.load(Relaxed);
        if seen < today
            && self
                .day
                .compare_exchange(seen, today, Relaxed, Relaxed)
                .is_ok()
        {
            self.pending.store(0, Relaxed);
            self.total.store(0, Relaxed);
            self.allowance.store(UNFLUSHED, Relaxed);
        }
    }

    /// What a flush has to add to the totals (it gives it back with [`DayCount::flushed`] or
    /// [`DayCount::unflushed`]).
    pub fn unflushed(&self) -> Unflushed {
        Unflushed {
            day: self.day.load(Relaxed),
            count: self.pending.load(Relaxed),
        }
    }

    /// `taken` has been added to the day's total, which is now `total`; this replica may
    /// accept `allowance` more before the next flush.
    pub fn flushed(&self, taken: Unflushed, total: u64, allowance: u64) {
        if self.day.load(Relaxed) == taken.day {
            self.pending.fetch_sub(taken.count, Relaxed);
            self.total.store(total, Relaxed);
            self.allowance.store(allowance, Relaxed);
        }
    }

    /// Of the requests this replica may accept (its lease, with scope `cluster`), how many
    /// `taken` left unused, and how many it accepted before it held any (before its first
    /// flush of the day).
    pub fn lease_left(&self, taken: Unflushed) -> (u64, u64) {
        match self.allowance.load(Relaxed) {
            UNFLUSHED => (0, taken.count),
            allowance => (allowance.saturating_sub(taken.count), 0),
        }
    }

    /// The day's total as of the last flush, plus what this replica accepted since.
    pub fn used(&self) -> u64 {
        self.total
            .load(Relaxed)
            .saturating_add(self.pending.load(Relaxed))
    }

    /// Whether requests of `today` have been counted (accepted here, or leased).
    pub fn counts_on(&self, today: u32) -> bool {
        self.day.load(Relaxed) == today && self.used() > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_up_to_the_allowance_and_hands_the_count_to_the_flush() {
        let q = DayCount::default();
        let today = day_of(SystemTime::now());
        assert_eq!((0..10).filter(|_| q.try_take(today, 4)).count(), 4);
        let taken = q.unflushed();
        assert_eq!(taken.count, 4);
        // Another replica used 90 of 100; this one may take 3 of the 6 left.
        q.flushed(taken, 94, 3);
        assert_eq!(q.used(), 94);
        assert_eq!((0..10).filter(|_| q.try_take(today, 4)).count(), 3);
        assert_eq!(q.used(), 97);
        assert!(q.counts_on(today));
        assert!(!q.counts_on(today + 1));
    }

    #[test]
    fn a_new_day_starts_from_zero_and_keeps_yesterdays_count_for_the_flush() {
        let q = DayCount::default();
        let today = day_of(SystemTime::now());
        assert!(q.try_take(today, 1));
        q.flushed(q.unflushed(), 1, 0);
        assert!(!q.try_take(today, 1));
        assert!(q.try_take(today + 1, 5), "a new day has its quota again");
        let taken = q.unflushed();
        assert_eq!((taken.day, taken.count), (today + 1, 1));
        assert_eq!(q.used(), 1);
    }

    #[test]
    fn retry_after_runs_to_the_next_utc_midnight() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(20_000 * DAY + 3_600);
        assert_eq!(until_next_day(at), Duration::from_secs(DAY - 3_600));
        assert_eq!(day_of(at), 20_000);
    }
}
