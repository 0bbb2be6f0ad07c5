//! Stage 3 — limit: one of the tenant's concurrency slots, then (when the tenant has them) its
//! request rate and its daily quota. Each check is atomics on the tenant's live counts
//! ([`crate::tenants::slots`]); with `[cluster] scope = "cluster"` they are this replica's shares,
//! kept current in the background ([`crate::tenants::cluster`]), so no check waits on the store.
//!
//! A refusal says which limit and when to come back: the response carries `Retry-After` and
//! the `RateLimit-Policy` / `RateLimit` fields of draft-ietf-httpapi-ratelimit-headers.

use std::time::{Duration, SystemTime};

use http::{header, HeaderMap, HeaderValue};

use crate::pipeline::error::GatewayError;
use crate::tenants::directory::TenantEntry;
use crate::tenants::slots::SlotGuard;
use crate::tenants::{quota, rate};

/// Which counts the limits are shared over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Each replica enforces the tenant's whole limits (`[cluster] scope = "replica"`).
    #[default]
    Replica,
    /// The limits are the tenant's totals over all live replicas.
    Cluster,
}

/// A limit refused the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub error: GatewayError,
    /// When to try again.
    pub retry_after: Duration,
}

impl Refusal {
    fn concurrency() -> Refusal {
        Refusal {
            error: GatewayError::ConcurrencyExceeded,
            retry_after: Duration::from_secs(1),
        }
    }

    /// The name of the refusing limit in `RateLimit-Policy`.
    fn policy(self) -> &'static str {
        match self.error {
            GatewayError::RateExceeded => "rate",
            GatewayError::QuotaExhausted => "day",
            _ => "concurrency",
        }
    }

    /// `Retry-After`, `RateLimit-Policy` (every limit of the tenant) and `RateLimit` (the one
    /// that refused: nothing remaining, `t` seconds until there is).
    pub fn decorate(self, headers: &mut HeaderMap, entry: &TenantEntry) {
        let secs = self.retry_after.as_secs_f64().ceil().max(1.0) as u64;
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        headers.insert("ratelimit-policy", entry.tenant.rate_limit_policy.clone());
        if let Ok(v) = HeaderValue::from_str(&format!("\"{}\";r=0;t={secs}", self.policy())) {
            headers.insert("ratelimit", v);
        }
    }
}

/// Takes what the request needs of the tenant's limits: a slot it holds until its response is
/// done, a token of the rate, a unit of the day's quota.
pub fn admit(entry: &TenantEntry, scope: Scope) -> Result<SlotGuard, Refusal> {
    let tenant = &entry.tenant;
    let slot = entry
        .slots
        .try_acquire(tenant.max_concurrent)
        .map_err(|_| Refusal::concurrency())?;
    if tenant.rate.is_none() && tenant.quota.is_none() {
        return Ok(slot);
    }
    let slots = &entry.slots;
    // The rate first: a request refused for its rate costs no quota (one refused for its
    // quota has used a token of the rate).
    if let Some(limit) = tenant.rate {
        let share = slots.attempt();
        if let Err(wait) = slots.bucket.try_take(limit, share, rate::now_ns()) {
            return Err(Refusal {
                error: GatewayError::RateExceeded,
                retry_after: wait,
            });
        }
    }
    if let Some(per_day) = tenant.quota {
        let now = SystemTime::now();
        // Before the day's first flush: all of it per replica; a thousandth of it when it is
        // shared, until the first lease (the flush is asked for at once).
        let first = match scope {
            Scope::Replica => per_day,
            Scope::Cluster => per_day.div_ceil(1000),
        };
        if !slots.quota.try_take(quota::day_of(now), first) {
            return Err(Refusal {
                error: GatewayError::QuotaExhausted,
                retry_after: quota::until_next_day(now),
            });
        }
    }
    Ok(slot)
}
