//! What the gateway counts live for each tenant: its concurrency slots, its rate bucket, its
//! day's quota and its usage since the last flush — one [`Slots`] per tenant, all lock-free
//! atomics.
//!
//! A tenant's concurrency is its requests in flight (plus, with upgrades, its open upgraded
//! connections). A [`SlotGuard`] is taken once the tenant is known and allowed, and travels
//! with the response body, so the slot is freed when the body is done or dropped. With
//! `[cluster] scope = "cluster"` the replica holds a share of the tenant's cap
//! ([`Slots::set_share`]), recomputed in the background by [`crate::tenants::cluster`] from the
//! demand each replica reports ([`Slots::demand`]).
//!
//! The counters are keyed by tenant key in a [`SlotRegistry`] (consulted only when the
//! directory loads a tenant, never on the cached path), so a tenant whose document is refreshed
//! or edited keeps counting the requests it already has in flight. The registry holds them
//! until the background flush has taken their usage and nothing else holds them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::tenants::quota::DayCount;
use crate::tenants::rate::{self, Bucket};
use crate::tenants::usage::Counts;

/// Every slot of the tenant is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllTaken;

/// The live counts of one tenant on this replica.
#[derive(Debug)]
pub struct Slots {
    in_flight: AtomicU32,
    /// How many of the slots in flight are open upgraded connections (WebSockets).
    sockets: AtomicU32,
    /// This replica's share of the cap (scope `cluster`); `u32::MAX`: the whole cap.
    share: AtomicU32,
    /// The most slots held at once, and the requests refused for want of a slot, since the
    /// cluster's last look ([`Slots::demand`]).
    peak: AtomicU32,
    refused: AtomicU32,
    /// Requests that reached the rate check: the demand behind this replica's share
    /// of them.
    attempts: AtomicU64,
    /// This replica's share of the tenant's rate, parts per million.
    share_ppm: AtomicU32,
    /// The tenant's cap and quota as last loaded (for the background shares and flushes);
    /// a cap of 0: not noted yet.
    noted_cap: AtomicU32,
    noted_quota: AtomicU64,
    noted_rate: AtomicU32,
    pub bucket: Bucket,
    pub quota: DayCount,
    pub usage: Counts,
}

/// A tenant's limits as the background needs them, noted on its counter by the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotedLimits {
    pub cap: u32,
    pub quota: Option<u64>,
    /// `rateLimit.requestsPerSecond`, rounded up.
    pub rate: Option<u32>,
}

impl NotedLimits {
    pub fn of(tenant: &crate::tenants::tenant::Tenant) -> NotedLimits {
        NotedLimits {
            cap: tenant.max_concurrent,
            quota: tenant.quota,
            rate: tenant.rate.map(|r| r.per_second.ceil() as u32),
        }
    }
}

/// `cap` split evenly over `n` replicas, the first `cap mod n` (by id) getting one more: the
/// share of the replica at `index`.
pub fn even_split(cap: u32, n: usize, index: usize) -> u32 {
    let n = n.max(1) as u32;
    cap / n + u32::from((index as u32) < cap % n)
}

impl Default for Slots {
    fn default() -> Self {
        Slots {
            in_flight: AtomicU32::new(0),
            sockets: AtomicU32::new(0),
            share: AtomicU32::new(u32::MAX),
            peak: AtomicU32::new(0),
            refused: AtomicU32::new(0),
            attempts: AtomicU64::new(0),
            share_ppm: AtomicU32::new(rate::WHOLE),
            noted_cap: AtomicU32::new(0),
            noted_quota: AtomicU64::new(0),
            noted_rate: AtomicU32::new(0),
            bucket: Bucket::default(),
            quota: DayCount::default(),
            usage: Counts::default(),
        }
    }
}

/// What one replica needs of a tenant's cap: the most it held at once lately plus what it
/// refused for want of a share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Demand {
    pub slots: u32,
    /// Requests that reached the rate check since the counter was made.
    pub attempts: u64,
}

impl Slots {
    /// Takes one slot if fewer than `max` (or this replica's share of it) are taken; otherwise
    /// [`AllTaken`] (the pipeline's `429 tenant_concurrency_exceeded`).
    pub fn try_acquire(self: &Arc<Self>, max: u32) -> Result<SlotGuard, AllTaken> {
        let max = max.min(self.share.load(Ordering::Relaxed));
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(AllTaken);
        }
        if before >= self.peak.load(Ordering::Relaxed) {
            self.peak.fetch_max(before + 1, Ordering::Relaxed);
        }
        Ok(SlotGuard(self.clone()))
    }

    /// Notes the tenant's limits for the background (the directory does, whenever it loads the
    /// tenant).
    pub fn note(&self, limits: NotedLimits) {
        self.noted_cap.store(limits.cap, Ordering::Relaxed);
        self.noted_quota
            .store(limits.quota.unwrap_or(0), Ordering::Relaxed);
        self.noted_rate
            .store(limits.rate.unwrap_or(0), Ordering::Relaxed);
    }

    /// The tenant's limits as last noted.
    pub fn limits(&self) -> Option<NotedLimits> {
        let cap = self.noted_cap.load(Ordering::Relaxed);
        let quota = self.noted_quota.load(Ordering::Relaxed);
        let rate = self.noted_rate.load(Ordering::Relaxed);
        (cap > 0).then_some(NotedLimits {
            cap,
            quota: (quota > 0).then_some(quota),
            rate: (rate > 0).then_some(rate),
        })
    }

    /// Sets this replica's share of the cap (`u32::MAX`: all of it).
    pub fn set_share(&self, share: u32) {
        self.share.store(share, Ordering::Relaxed);
    }

    /// This replica's share of the cap (`u32::MAX`: all of it).
    pub fn share(&self) -> u32 {
        self.share.load(Ordering::Relaxed)
    }

    /// This replica's demand since the last call, which starts the next period.
    pub fn demand(&self) -> Demand {
        let now = self.in_flight();
        let peak = self.peak.swap(now, Ordering::Relaxed).max(now);
        let refused = self.refused.swap(0, Ordering::Relaxed);
        Demand {
            slots: peak.saturating_add(refused),
            attempts: self.attempts.load(Ordering::Relaxed),
        }
    }

    /// Counts a request that reached the rate check; returns this replica's share of the rate
    /// (parts per million).
    pub fn attempt(&self) -> u32 {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        self.share_ppm.load(Ordering::Relaxed)
    }

    /// Sets this replica's share of the tenant's rate (parts per million).
    pub fn set_share_ppm(&self, ppm: u32) {
        self.share_ppm
            .store(ppm.min(rate::WHOLE), Ordering::Relaxed);
    }

    /// Slots taken right now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Open upgraded connections (part of [`Slots::in_flight`]).
    pub fn sockets(&self) -> u32 {
        self.sockets.load(Ordering::Acquire)
    }
}

impl crate::http::inbound::ByteMeter for Slots {
    fn add(&self, bytes: u64) {
        self.usage.bytes_in(bytes);
    }
}

/// One taken slot; dropping it gives the slot back.
#[derive(Debug)]
pub struct SlotGuard(Arc<Slots>);

impl SlotGuard {
    /// The tenant's counts.
    pub fn slots(&self) -> &Arc<Slots> {
        &self.0
    }

    /// The slot now holds an upgraded connection (counted as a socket until dropped).
    pub fn into_socket(self) -> SocketGuard {
        self.0.sockets.fetch_add(1, Ordering::AcqRel);
        SocketGuard(self)
    }
}

/// A slot held by an open upgraded connection.
#[derive(Debug)]
pub struct SocketGuard(SlotGuard);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        (self.0).0.sockets.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One tenant's slots at a moment (for metrics).
#[derive(Debug, Clone)]
pub struct Busy {
    pub tenant: Arc<str>,
    pub in_flight: u32,
    pub sockets: u32,
}

/// Finds the counter of a tenant by key, so that every copy of the tenant the cache ever holds
/// shares one counter. A counter lives as long as a cached copy of its tenant or a request in
/// flight holds it, and then until [`SlotRegistry::forget_idle`] has seen its usage taken.
#[derive(Debug, Default)]
pub struct SlotRegistry {
    counters: Mutex<HashMap<Arc<str>, Arc<Slots>>>,
    /// Where this replica stands in the cluster, for the shares of new counters.
    place: Mutex<Place>,
}

/// The shares a new counter starts with (set by the background every heartbeat).
#[derive(Debug, Default, Clone)]
pub struct Place {
    /// Scope `cluster`: shares apply. Otherwise every counter has the whole of its limits.
    pub shared: bool,
    /// Live replicas and this one's index among them (by id).
    pub live: usize,
    pub index: usize,
    /// Tenants some replica reports busy: this replica's usable slots and rate share (ppm).
    pub assigned: HashMap<Arc<str>, (u32, u32)>,
}

impl SlotRegistry {
    /// Every tenant holding at least one slot.
    pub fn busy(&self) -> Vec<Busy> {
        let map = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(k, s)| Busy {
                tenant: k.clone(),
                in_flight: s.in_flight(),
                sockets: s.sockets(),
            })
            .filter(|b| b.in_flight > 0)
            .collect()
    }

    /// The counter of `key`, created when there is none (with the shares this replica has of
    /// the tenant: its assigned share when some replica reports the tenant busy, else an even
    /// split), noting the tenant's limits on it.
    pub fn counter(&self, key: &Arc<str>, limits: NotedLimits) -> Arc<Slots> {
        let mut map = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let slots = map
            .entry(key.clone())
            .or_insert_with(|| {
                let slots = Slots::default();
                let place = self.place.lock().unwrap_or_else(|p| p.into_inner());
                if place.shared {
                    let (share, ppm) = place.assigned.get(key).copied().unwrap_or((
                        even_split(limits.cap, place.live, place.index),
                        even_split(rate::WHOLE, place.live, place.index),
                    ));
                    slots.set_share(share);
                    slots.set_share_ppm(ppm);
                }
                Arc::new(slots)
            })
            .clone();
        slots.note(limits);
        slots
    }

    /// Sets where this replica stands (the background, every heartbeat).
    pub fn set_place(&self, place: Place) {
        *self.place.lock().unwrap_or_else(|p| p.into_inner()) = place;
    }

    /// Every tenant's counter (for the background flush and shares).
    pub fn all(&self) -> Vec<(Arc<str>, Arc<Slots>)> {
        let map = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, s)| (k.clone(), s.clone())).collect()
    }

    /// Drops the counters nothing else holds (no cached tenant, no request in flight) once
    /// `flushed` says their counts have been taken.
    pub fn forget_idle(&self, flushed: impl Fn(&Slots) -> bool) {
        let mut map = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| Arc::strong_count(s) > 1 || !flushed(s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_over_the_cap_and_frees_on_drop() {
        let slots = Arc::new(Slots::default());
        let a = slots.try_acquire(2).unwrap();
        let _b = slots.try_acquire(2).unwrap();
        assert_eq!(slots.try_acquire(2).unwrap_err(), AllTaken);
        assert_eq!(slots.in_flight(), 2);
        drop(a);
        assert_eq!(slots.in_flight(), 1);
        assert!(slots.try_acquire(2).is_ok());
    }

    #[test]
    fn registry_shares_one_counter_per_live_tenant() {
        let reg = SlotRegistry::default();
        let key: Arc<str> = Arc::from("tnt_a");
        let limits = NotedLimits {
            cap: 1,
            quota: None,
            rate: None,
        };
        let first = reg.counter(&key, limits);
        let guard = first.try_acquire(1).unwrap();
        let again = reg.counter(&key, limits);
        assert!(Arc::ptr_eq(&first, &again));
        assert!(
            again.try_acquire(1).is_err(),
            "a reloaded copy must see the slot in flight"
        );
        drop(guard);
        drop((first, again));
        assert_eq!(reg.counter(&key, limits).in_flight(), 0);
        reg.forget_idle(|_| true);
        assert!(reg.all().is_empty(), "an idle counter is forgotten");
    }

    #[test]
    fn a_share_lowers_the_cap_and_refusals_count_as_demand() {
        let slots = Arc::new(Slots::default());
        slots.set_share(1);
        let held = slots.try_acquire(10).unwrap();
        assert!(slots.try_acquire(10).is_err());
        assert!(slots.try_acquire(10).is_err());
        assert_eq!(slots.demand().slots, 3, "one held, two refused");
        assert_eq!(
            slots.demand().slots,
            1,
            "a new period starts from what is held"
        );
        drop(held);
        assert_eq!(slots.demand().slots, 1, "the peak of the period just ended");
        assert_eq!(slots.demand().slots, 0);
    }
}
