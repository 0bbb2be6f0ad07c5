//! The cache in front of every tenant store: the only way the request path reaches tenants.
//!
//! - **Hit**: a lookup in the connection thread's own map of recent fresh answers, else in the
//!   shared bounded cache (moka) — no store I/O, no global lock. The per-thread copies only ever
//!   answer within their TTL and are dropped by any invalidation (a generation counter, bumped
//!   before and after the shared cache forgets), so they change nothing but the cost of a hit.
//! - **TTL**: an entry is fresh for `ttl`; unknown keys are remembered for `negative_ttl`, so
//!   random keys cannot hammer the store.
//! - **Stale-while-revalidate, bounded**: a known tenant past its TTL is still served (for at most
//!   `max_stale` more) while one background query refreshes it, so a slow or failing store never
//!   stalls requests for tenants the gateway already knows. A failed refresh is retried at most
//!   once a second per tenant.
//! - **Coalescing**: concurrent misses for one key share one store query.
//! - **Miss budget**: store lookups for keys (and preflight origins) that are not cached draw
//!   from one gateway-wide token bucket (`miss_lookups_per_sec`); a lookup that finds a tenant
//!   gives its token back. Negative caching stops a repeated unknown key; the budget also stops
//!   a flood of *distinct* random keys: at most `rate × (seconds + 1)` queries for unknown keys,
//!   whatever the request rate, while real tenants (a cold start after a restart) are never
//!   held back by it. Past it, uncached keys get 503 for a moment; cached tenants never notice.
//! - **Invalidation**: stores that notice changes (the file poller; MongoDB change streams) drop
//!   entries at once; a query that started before an invalidation does not write back its now
//!   possibly old answer.
//!
//! Entries carry the tenant's concurrency counter ([`Slots`]) so the hot path finds it with the
//! tenant, and every copy of one tenant shares the same counter.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use moka::sync::Cache;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::tenants::audit::AuditTrail;
use crate::tenants::counter::PerThreadCounter;
use crate::tenants::slots::{SlotRegistry, Slots};
use crate::tenants::store::{Invalidation, StoreError, TenantStore};
use crate::tenants::tenant::{RetiredKey, Tenant, TenantRecord};

/// Cache settings (`[cache]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub max_stale: Duration,
    pub max_entries: u64,
    pub lookup_timeout: Duration,
    /// Store lookups per second for uncached keys; 0 = unlimited.
    pub miss_lookups_per_sec: u32,
}

/// A tenant as the request path sees it: the validated document and its in-flight counter.
#[derive(Debug)]
pub struct TenantEntry {
    pub tenant: Arc<Tenant>,
    pub slots: Arc<Slots>,
    /// Set when the key looked up is one of the tenant's `retiredKeys`: it works until
    /// `until` (checked on every request, whatever the cache holds), and its responses carry
    /// `Deprecation` and `Sunset`.
    pub retired: Option<RetiredKey>,
}

impl TenantEntry {
    /// Whether the key this entry was found by has passed its `until`.
    pub fn expired(&self) -> bool {
        self.retired
            .as_ref()
            .is_some_and(|r| SystemTime::now() >= r.until)
    }
}

/// The answer for one key.
#[derive(Debug, Clone)]
pub enum Resolved {
    Tenant(Arc<TenantEntry>),
    /// The document exists but is invalid; the reason has been logged by the store.
    Misconfigured,
    Unknown,
}

#[derive(Clone)]
struct Entry {
    value: Resolved,
    fetched: Instant,
    /// No background refresh before this instant (set after a failed refresh).
    quiet_until: Option<Instant>,
}

#[derive(Clone)]
struct OriginEntry {
    in_use: bool,
    fetched: Instant,
}

type Hasher = foldhash::fast::RandomState;

/// One thread's copies of fresh answers from the shared cache, valid for one generation (any
/// invalidation empties it). A hit here costs a hash of the key and no shared memory writes;
/// moka's own hit path records every read for its eviction policy.
#[derive(Default)]
struct Recent {
    generation: u64,
    entries: HashMap<Arc<str>, Entry, Hasher>,
}

/// Most answers a thread keeps copies of; past it the copies start over.
const RECENT_MAX: usize = 4096;
type Fetch = Shared<BoxFuture<'static, Result<Resolved, StoreError>>>;

/// The tenant cache. Cheap to share behind an `Arc`.
pub struct Directory {
    store: Arc<dyn TenantStore>,
    settings: CacheSettings,
    tenants: Cache<Arc<str>, Entry, Hasher>,
    origins: Cache<String, OriginEntry, Hasher>,
    /// Fresh answers recently read from `tenants`, per thread ([`Recent`]).
    recent: thread_local::ThreadLocal<RefCell<Recent>>,
    in_flight: Mutex<HashMap<Arc<str>, Fetch>>,
    slots: Arc<SlotRegistry>,
    /// Bumped by every invalidation; a fetch writes back only if it is unchanged.
    generation: AtomicU64,
    misses: MissBudget,
    /// The last document each key resolved to, for the audit log of changes.
    audit: AuditTrail,
    /// What the cache did (read by `telemetry::metrics` when scraped).
    pub stats: CacheStats,
}

/// The cache's counters. Cloning shares them (prometheus-client metrics are shared handles).
#[derive(Clone)]
pub struct CacheStats {
    /// Answers served from the cache within their TTL (tenants, unknown keys, origins).
    pub hits: PerThreadCounter,
    /// Answers served past their TTL while a background refresh runs (or the store fails).
    pub stale: PerThreadCounter,
    /// Store queries made.
    pub queries: Counter,
    /// Store queries that failed or timed out.
    pub query_errors: Counter,
    /// Store query duration, seconds.
    pub query_seconds: Histogram,
}

impl Default for CacheStats {
    fn default() -> Self {
        CacheStats {
            hits: PerThreadCounter::default(),
            stale: PerThreadCounter::default(),
            queries: Counter::default(),
            query_errors: Counter::default(),
            // 0.5 ms .. ~4 s
            query_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
        }
    }
}

/// The token bucket of store lookups for uncached keys: refilled at `rate` per second, holding
/// at most `rate` tokens. Touched only on a miss, never on a hit.
struct MissBudget {
    rate: f64,
    state: Mutex<BucketState>,
}

struct BucketState {
    tokens: f64,
    refilled: Instant,
    refused: u64,
    last_log: Option<Instant>,
}

impl MissBudget {
    fn new(rate: u32) -> MissBudget {
        MissBudget {
            rate: f64::from(rate),
            state: Mutex::new(BucketState {
                tokens: f64::from(rate),
                refilled: Instant::now(),
                refused: 0,
                last_log: None,
            }),
        }
    }

    /// Gives back a lookup that found a tenant.
    fn refund(&self) {
        if self.rate > 0.0 {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.tokens = (s.tokens + 1.0).min(self.rate);
        }
    }

    /// Takes one lookup from the budget; `Err(StoreError::Busy)` when it is spent.
    fn take(&self) -> Result<(), StoreError> {
        if self.rate == 0.0 {
            return Ok(());
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(s.refilled).as_secs_f64() * self.rate;
        s.tokens = (s.tokens + refill).min(self.rate);
        s.refilled = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            return Ok(());
        }
        s.refused += 1;
        // One line a second at most, however many requests are refused.
        if s.last_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            tracing::warn!(
                refused = s.refused,
                per_sec = self.rate,
                "store lookup budget for uncached tenant keys spent; refusing such requests with 503 for now"
            );
            s.refused = 0;
            s.last_log = Some(now);
        }
        Err(StoreError::Busy)
    }
}

impl Directory {
    /// Builds the cache and subscribes it to the store's change notifications. Must be called
    /// inside a Tokio runtime.
    pub fn new(store: Arc<dyn TenantStore>, settings: CacheSettings) -> Arc<Directory> {
        let dir = Arc::new(Directory {
            // foldhash: tenant keys and origins are hashed on every request's path.
            tenants: Cache::builder()
                .max_capacity(settings.max_entries)
                .build_with_hasher(Hasher::default()),
            origins: Cache::builder()
                .max_capacity(settings.max_entries.min(10_000))
                .build_with_hasher(Hasher::default()),
            recent: thread_local::ThreadLocal::new(),
            in_flight: Mutex::new(HashMap::new()),
            slots: Arc::default(),
            generation: AtomicU64::new(0),
            misses: MissBudget::new(settings.miss_lookups_per_sec),
            audit: AuditTrail::new(settings.max_entries.min(1 << 20) as usize),
            stats: CacheStats::default(),
            store: store.clone(),
            settings,
        });
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        store.watch(tx);
        let weak = Arc::downgrade(&dir);
        tokio::spawn(async move {
            while let Some(change) = rx.recv().await {
                let Some(dir) = weak.upgrade() else { return };
                dir.invalidate(change);
            }
        });
        dir
    }

    /// The store behind the cache.
    pub fn store(&self) -> &Arc<dyn TenantStore> {
        &self.store
    }

    /// Drops cached answers at once (store change notifications; tests feed it directly). A
    /// key looked up before is fetched again right away, so its change reaches the audit log
    /// (and the cache) without waiting for its next request.
    pub fn invalidate(self: &Arc<Self>, change: Invalidation) {
        // Before: a store query already running does not write back its answer. After: a
        // thread that read the old entry just before it went keeps no copy of it ([`Recent`]).
        self.generation.fetch_add(1, Ordering::AcqRel);
        match &change {
            Invalidation::Tenant(key) => self.tenants.invalidate(key),
            Invalidation::All => self.tenants.invalidate_all(),
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        // Any tenant change may add or remove an origin: the origin answers are few and cheap.
        self.origins.invalidate_all();
        if let Invalidation::Tenant(key) = change {
            if self.audit.knows(&key) {
                self.refresh_in_background(&key);
            }
        }
    }

    /// Resolves a (well-formed) tenant key.
    pub async fn resolve(self: &Arc<Self>, key: &str) -> Result<Resolved, StoreError> {
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(value) = self.recent_hit(key, generation) {
            self.stats.hits.inc();
            return Ok(value);
        }
        if let Some(entry) = self.tenants.get(key) {
            let age = entry.fetched.elapsed();
            match &entry.value {
                Resolved::Unknown if age < self.settings.negative_ttl => {
                    self.stats.hits.inc();
                    self.remember(key, &entry, generation);
                    return Ok(entry.value);
                }
                Resolved::Unknown => {}
                _ if age < self.settings.ttl => {
                    self.stats.hits.inc();
                    self.remember(key, &entry, generation);
                    return Ok(entry.value);
                }
                _ if age < self.settings.ttl + self.settings.max_stale => {
                    self.stats.stale.inc();
                    if entry.quiet_until.is_none_or(|t| Instant::now() >= t) {
                        self.refresh_in_background(key);
                    }
                    return Ok(entry.value);
                }
                _ => {}
            }
        }
        self.fetch_shared(key, true)?.0.await
    }

    /// This thread's copy of a fresh answer for `key`, if it has one from this generation.
    fn recent_hit(&self, key: &str, generation: u64) -> Option<Resolved> {
        let recent = self.recent.get()?.borrow();
        if recent.generation != generation {
            return None;
        }
        let entry = recent.entries.get(key)?;
        let ttl = match entry.value {
            Resolved::Unknown => self.settings.negative_ttl,
            _ => self.settings.ttl,
        };
        (entry.fetched.elapsed() < ttl).then(|| entry.value.clone())
    }

    /// Keeps a copy of a fresh answer read at `generation`, unless an invalidation came since.
    fn remember(&self, key: &str, entry: &Entry, generation: u64) {
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        let mut recent = self.recent.get_or_default().borrow_mut();
        if recent.generation != generation || recent.entries.len() >= RECENT_MAX {
            recent.entries.clear();
            recent.generation = generation;
        }
        recent.entries.insert(Arc::from(key), entry.clone());
    }

    fn refresh_in_background(self: &Arc<Self>, key: &str) {
        // Already being refreshed: the request that started it reports the outcome.
        let Ok((fetch, true)) = self.fetch_shared(key, false) else {
            return;
        };
        let dir = self.clone();
        let key: Arc<str> = Arc::from(key);
        tokio::spawn(async move {
            if let Err(e) = fetch.await {
                tracing::warn!(tenant = %key, error = %e, "tenant refresh failed; serving the cached copy");
                if let Some(mut entry) = dir.tenants.get(&key) {
                    entry.quiet_until = Some(Instant::now() + Duration::from_secs(1));
                    dir.tenants.insert(key, entry);
                }
            }
        });
    }

    /// The one store query in flight for `key`, started when there is none (then `true`); a
    /// new query for an uncached key (`budgeted`) first takes from the miss budget.
    fn fetch_shared(
        self: &Arc<Self>,
        key: &str,
        budgeted: bool,
    ) -> Result<(Fetch, bool), StoreError> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = in_flight.get(key) {
            return Ok((f.clone(), false));
        }
        if budgeted {
            self.misses.take()?;
        }
        let key: Arc<str> = Arc::from(key);
        let dir = self.clone();
        let k = key.clone();
        // Spawned, so the query completes and fills the cache even if every waiter goes away.
        let task = tokio::spawn(async move {
            let result = dir.query(&k).await;
            if budgeted && matches!(result, Ok(Resolved::Tenant(_) | Resolved::Misconfigured)) {
                // Found a real tenant: the budget is for unknown keys only.
                dir.misses.refund();
            }
            dir.in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&k);
            result
        });
        let fetch = async move {
            task.await.unwrap_or_else(|e| {
                Err(StoreError::Unavailable(format!(
                    "tenant lookup task failed: {e}"
                )))
            })
        }
        .boxed()
        .shared();
        in_flight.insert(key, fetch.clone());
        Ok((fetch, true))
    }

    async fn query(&self, key: &Arc<str>) -> Result<Resolved, StoreError> {
        let generation = self.generation.load(Ordering::Acquire);
        let timeout = self.settings.lookup_timeout;
        let record = self
            .timed(async {
                match tokio::time::timeout(timeout, self.store.find(key)).await {
                    Ok(r) => r,
                    Err(_) => Err(StoreError::Timeout(timeout)),
                }
            })
            .await?;
        self.audit
            .observe(key, record.as_ref().map(|r| r.document().clone()));
        let value = match record {
            None => Resolved::Unknown,
            Some(TenantRecord::Misconfigured { .. }) => Resolved::Misconfigured,
            Some(TenantRecord::Valid(tenant)) => self.entry(key, tenant),
        };
        if self.generation.load(Ordering::Acquire) == generation {
            self.tenants.insert(
                key.clone(),
                Entry {
                    value: value.clone(),
                    fetched: Instant::now(),
                    quiet_until: None,
                },
            );
        }
        Ok(value)
    }

    /// The entry for a tenant found by `key`: its current key, or one of its retired keys
    /// still within its `until` (past it, or not the tenant's at all: unknown).
    fn entry(&self, key: &str, tenant: Arc<Tenant>) -> Resolved {
        let retired = if *tenant.key == *key {
            None
        } else {
            match tenant.retired_keys.iter().find(|r| &*r.key == key) {
                Some(r) if SystemTime::now() < r.until => Some(r.clone()),
                _ => return Resolved::Unknown,
            }
        };
        Resolved::Tenant(Arc::new(TenantEntry {
            slots: self
                .slots
                .counter(&tenant.key, crate::tenants::slots::NotedLimits::of(&tenant)),
            tenant,
            retired,
        }))
    }

    /// Runs one store query, counting it, its duration and its failure.
    async fn timed<T>(
        &self,
        query: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = query.await;
        self.stats.queries.inc();
        self.stats
            .query_seconds
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.stats.query_errors.inc();
        }
        result
    }

    /// Every tenant's live counts (for the background shares and flushes).
    pub fn slot_registry(&self) -> &Arc<SlotRegistry> {
        &self.slots
    }

    /// Every tenant holding a slot, with its counts.
    pub fn busy_tenants(&self) -> Vec<crate::tenants::slots::Busy> {
        self.slots.busy()
    }

    /// Whether any active tenant lists this preflight origin (already split into index
    /// candidates), cached like tenants: TTL, and the last answer served while the store fails.
    pub async fn origin_in_use(
        &self,
        origin: &str,
        candidates: &[String],
    ) -> Result<bool, StoreError> {
        let cached = self.origins.get(origin);
        if let Some(e) = &cached {
            if e.fetched.elapsed() < self.settings.ttl {
                self.stats.hits.inc();
                return Ok(e.in_use);
            }
        }
        if cached.is_none() {
            self.misses.take()?;
        }
        let generation = self.generation.load(Ordering::Acquire);
        let timeout = self.settings.lookup_timeout;
        let answer = self
            .timed(async {
                match tokio::time::timeout(timeout, self.store.origin_in_use(candidates)).await {
                    Ok(r) => r,
                    Err(_) => Err(StoreError::Timeout(timeout)),
                }
            })
            .await;
        match answer {
            Ok(in_use) => {
                if self.generation.load(Ordering::Acquire) == generation {
                    self.origins.insert(
                        origin.to_string(),
                        OriginEntry {
                            in_use,
                            fetched: Instant::now(),
                        },
                    );
                }
                Ok(in_use)
            }
            Err(e) => match cached {
                Some(c) if c.fetched.elapsed() < self.settings.ttl + self.settings.max_stale => {
                    self.stats.stale.inc();
                    Ok(c.in_use)
                }
                _ => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenants::tenant::TenantDocument;
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    /// A store that counts queries, can be made to fail, and answers after a delay.
    #[derive(Default)]
    struct FakeStore {
        finds: AtomicUsize,
        failing: AtomicBool,
        active: AtomicBool,
        delay_ms: AtomicU64,
    }

    #[async_trait]
    impl TenantStore for FakeStore {
        fn describe(&self) -> String {
            "fake".into()
        }
        async fn find(&self, key: &str) -> Result<Option<TenantRecord>, StoreError> {
            self.finds.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(self.delay_ms.load(Ordering::SeqCst))).await;
            if self.failing.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("down".into()));
            }
            if key != "tnt_a" {
                return Ok(None);
            }
            let doc: TenantDocument = serde_json::from_value(serde_json::json!({
                "apiKey": "tnt_a", "allowedOrigins": [], "isActive": self.active.load(Ordering::SeqCst),
                "maxConcurrentConnections": 1, "providerConfig": {"resources": {"endpoint": "e", "region": "r"}}
            }))
            .unwrap();
            Ok(Some(TenantRecord::from_document(doc).unwrap()))
        }
        async fn origin_in_use(&self, _: &[String]) -> Result<bool, StoreError> {
            Ok(false)
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn settings(ttl_ms: u64) -> CacheSettings {
        CacheSettings {
            ttl: Duration::from_millis(ttl_ms),
            negative_ttl: Duration::from_millis(ttl_ms),
            max_stale: Duration::from_secs(60),
            max_entries: 1000,
            lookup_timeout: Duration::from_millis(200),
            miss_lookups_per_sec: 0,
        }
    }

    impl Directory {
        async fn resolve_owned(self: &Arc<Self>, key: String) -> Result<Resolved, StoreError> {
            self.resolve(&key).await
        }
    }

    fn active(r: &Resolved) -> bool {
        matches!(r, Resolved::Tenant(t) if t.tenant.active)
    }

    #[tokio::test]
    async fn hits_and_negative_hits_do_not_query_and_misses_coalesce() {
        let store = Arc::new(FakeStore {
            active: AtomicBool::new(true),
            ..Default::default()
        });
        store.delay_ms.store(50, Ordering::SeqCst);
        let dir = Directory::new(store.clone(), settings(60_000));
        let all = futures_util::future::join_all((0..100).map(|_| dir.resolve("tnt_a"))).await;
        assert!(all.iter().all(|r| active(r.as_ref().unwrap())));
        assert_eq!(
            store.finds.load(Ordering::SeqCst),
            1,
            "100 concurrent misses, one query"
        );
        for _ in 0..10 {
            dir.resolve("tnt_a").await.unwrap();
            assert!(matches!(
                dir.resolve("tnt_nope").await.unwrap(),
                Resolved::Unknown
            ));
        }
        assert_eq!(
            store.finds.load(Ordering::SeqCst),
            2,
            "hits and negative hits never query"
        );
    }

    #[tokio::test]
    async fn stale_entries_are_served_while_one_refresh_runs_and_survive_store_failure() {
        let store = Arc::new(FakeStore {
            active: AtomicBool::new(true),
            ..Default::default()
        });
        let dir = Directory::new(store.clone(), settings(20));
        assert!(active(&dir.resolve("tnt_a").await.unwrap()));
        store.active.store(false, Ordering::SeqCst);
        store.failing.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(40)).await;
        for _ in 0..50 {
            assert!(
                active(&dir.resolve("tnt_a").await.unwrap()),
                "stale copy served while the store fails"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            store.finds.load(Ordering::SeqCst),
            2,
            "one failed refresh, then quiet for a second"
        );
        assert!(
            dir.resolve("tnt_other").await.is_err(),
            "nothing cached and the store is down"
        );
        store.failing.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        dir.resolve("tnt_a").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !active(&dir.resolve("tnt_a").await.unwrap()),
            "the edit shows once the store is back"
        );
    }

    #[tokio::test]
    async fn misses_draw_from_the_budget_and_hits_do_not() {
        let store = Arc::new(FakeStore {
            active: AtomicBool::new(true),
            ..Default::default()
        });
        let dir = Directory::new(
            store.clone(),
            CacheSettings {
                miss_lookups_per_sec: 5,
                ..settings(60_000)
            },
        );
        let outcomes: Vec<_> =
            futures_util::future::join_all((0..50).map(|i| dir.resolve_owned(format!("k{i}"))))
                .await;
        let refused = outcomes
            .iter()
            .filter(|r| matches!(r, Err(StoreError::Busy)))
            .count();
        assert_eq!((refused, store.finds.load(Ordering::SeqCst)), (45, 5));
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert!(matches!(
            dir.resolve("tnt_a").await,
            Ok(Resolved::Tenant(_))
        ));
        for _ in 0..100 {
            assert!(matches!(
                dir.resolve("tnt_a").await,
                Ok(Resolved::Tenant(_))
            ));
        }
        assert_eq!(
            store.finds.load(Ordering::SeqCst),
            6,
            "a hit costs no budget"
        );
    }

    /// A log sink for one test: what the audit log wrote.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A change a store reports (a change-stream event, a file reload) for a tenant this
    /// gateway has looked up is audited at once, without another request for it.
    #[tokio::test]
    async fn a_reported_change_is_audited_without_a_request() {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let store = Arc::new(FakeStore {
            active: AtomicBool::new(true),
            ..Default::default()
        });
        let dir = Directory::new(store.clone(), settings(60_000));
        assert!(active(&dir.resolve("tnt_a").await.unwrap()));
        store.active.store(false, Ordering::SeqCst);
        dir.invalidate(Invalidation::Tenant(Arc::from("tnt_a")));
        let log = || String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        for _ in 0..100 {
            if log().contains("tenantgate::audit") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let log = log();
        let line = log
            .lines()
            .find(|l| l.contains("tenantgate::audit"))
            .unwrap_or_else(|| panic!("no audit line: {log}"));
        assert!(
            line.contains("key=tnt_a")
                && line.contains("change=\"updated\"")
                && line.contains("isActive: true → false"),
            "{line}"
        );
    }

    #[tokio::test]
    async fn invalidation_drops_the_entry_at_once_and_slow_stores_time_out() {
        let store = Arc::new(FakeStore {
            active: AtomicBool::new(true),
            ..Default::default()
        });
        let dir = Directory::new(store.clone(), settings(60_000));
        // A miss, a hit in the shared cache, then hits on this thread's copy.
        for _ in 0..3 {
            assert!(active(&dir.resolve("tnt_a").await.unwrap()));
        }
        assert!(dir
            .recent_hit("tnt_a", dir.generation.load(Ordering::Acquire))
            .is_some());
        store.active.store(false, Ordering::SeqCst);
        let before = store.finds.load(Ordering::SeqCst);
        dir.invalidate(Invalidation::Tenant(Arc::from("tnt_a")));
        // A key seen before is fetched again at once (for the audit log), without a request.
        for _ in 0..100 {
            if store.finds.load(Ordering::SeqCst) > before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(store.finds.load(Ordering::SeqCst), before + 1);
        assert!(!active(&dir.resolve("tnt_a").await.unwrap()));
        assert_eq!(
            store.finds.load(Ordering::SeqCst),
            before + 1,
            "the refresh filled the cache"
        );
        dir.invalidate(Invalidation::Tenant(Arc::from("tnt_never_seen")));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            store.finds.load(Ordering::SeqCst),
            before + 1,
            "keys never looked up are not fetched"
        );
        store.delay_ms.store(1000, Ordering::SeqCst);
        assert!(matches!(
            dir.resolve("tnt_slow").await,
            Err(StoreError::Timeout(_))
        ));
    }
}
