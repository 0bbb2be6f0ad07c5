//! Stage 3 — limit: a tenant's concurrency is its requests in flight (plus, with upgrades, its
//! open upgraded connections). A [`SlotGuard`] is taken once the tenant is known and allowed,
//! and travels with the response body, so the slot is freed when the body is done or dropped.
//!
//! Counters are lock-free atomics. They are keyed by tenant key in a [`SlotRegistry`] (consulted
//! only when the directory loads a tenant, never on the cached path), so a tenant whose document
//! is refreshed or edited keeps counting the requests it already has in flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Every slot of the tenant is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllTaken;

/// The in-flight counter of one tenant.
#[derive(Debug, Default)]
pub struct Slots {
    in_flight: AtomicU32,
    /// How many of the slots in flight are open upgraded connections (WebSockets).
    sockets: AtomicU32,
}

impl Slots {
    /// Takes one slot if fewer than `max` are taken; otherwise [`AllTaken`] (the pipeline's
    /// `429 tenant_concurrency_exceeded`).
    pub fn try_acquire(self: &Arc<Self>, max: u32) -> Result<SlotGuard, AllTaken> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(AllTaken);
        }
        Ok(SlotGuard(self.clone()))
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

/// One taken slot; dropping it gives the slot back.
#[derive(Debug)]
pub struct SlotGuard(Arc<Slots>);

impl SlotGuard {
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

/// Finds the counter of a tenant by key, so that every copy of the tenant the cache ever holds
/// shares one counter. Holds weak references: a counter lives as long as a cached copy of its
/// tenant or a request in flight.
/// One tenant's slots at a moment (for metrics).
#[derive(Debug, Clone)]
pub struct Busy {
    pub tenant: Arc<str>,
    pub in_flight: u32,
    pub sockets: u32,
}

#[derive(Debug, Default)]
pub struct SlotRegistry {
    counters: Mutex<HashMap<Arc<str>, Weak<Slots>>>,
}

impl SlotRegistry {
    /// Every tenant holding at least one slot.
    pub fn busy(&self) -> Vec<Busy> {
        let map = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter_map(|(k, w)| {
                w.upgrade().map(|s| Busy {
                    tenant: k.clone(),
                    in_flight: s.in_flight(),
                    sockets: s.sockets(),
                })
            })
            .filter(|b| b.in_flight > 0)
            .collect()
    }

    /// The counter of `key`, created when none is alive.
    pub fn counter(&self, key: &Arc<str>) -> Arc<Slots> {
        let mut map = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slots) = map.get(key).and_then(Weak::upgrade) {
            return slots;
        }
        // Forget dead counters now and then so the map stays the size of the live tenant set.
        if map.len() >= 1024 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let slots = Arc::new(Slots::default());
        map.insert(key.clone(), Arc::downgrade(&slots));
        slots
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
        let first = reg.counter(&key);
        let guard = first.try_acquire(1).unwrap();
        let again = reg.counter(&key);
        assert!(Arc::ptr_eq(&first, &again));
        assert!(
            again.try_acquire(1).is_err(),
            "a reloaded copy must see the slot in flight"
        );
        drop(guard);
        drop((first, again));
        assert_eq!(reg.counter(&key).in_flight(), 0);
    }
}
