//! The background side of the limits: cluster shares, quota totals and usage metering, all off
//! the request path (which only reads the atomics this module sets, see
//! [`crate::tenants::slots`]).
//!
//! Every `[cluster] heartbeat_ms` a [`Coordinator`]:
//! 1. reads each tenant's demand on this replica (most slots held at once plus refusals, and
//!    requests per second at the rate check);
//! 2. with `[cluster] scope = "cluster"`: publishes it in this replica's heartbeat document in
//!    `[cluster] collection` (`_id` = replica id, `seenAt`, `beat`, and per busy tenant its cap,
//!    demand and *reserve* — the slots it may use until its next heartbeat), reads every
//!    replica's document, and sets this replica's share of each tenant's cap, rate and remaining
//!    quota ([`shares`]);
//! 3. every `[cluster] flush_ms`: settles each tenant's quota — a lease of the day's count in
//!    MongoDB with scope `cluster` ([`lease`]), this replica's own count otherwise.
//!
//! Usage counts are written by a task of their own ([`crate::tenants::metering`]).
//!
//! ## Why the shares never add up to more than the cap
//! A replica publishes its reserve (`max(target, in flight)`) *before* it reads the others, and
//! uses `min(reserve, cap − the others' reserves)`. Of any two replicas, the one that read last
//! saw the other's latest reserve, so the slots in use add up to at most the cap whatever the
//! timing. Targets follow demand (max-min fair, at least one slot each when the cap allows it),
//! so an idle replica hands its slots to a busy one within two heartbeats. A replica whose
//! heartbeat has not changed for `[cluster] member_timeout_ms` is gone: its reserve returns to
//! the others. A replica that does not list a tenant (yet) is taken to hold its even split
//! ([`even_split`]), which is what every replica uses for a tenant nobody has reported busy.
//!
//! ## When MongoDB is away
//! Shares stay as they were and quota leases are not renewed (a replica accepts at most what it
//! holds leased: no fail-open); usage counts wait in memory ([`crate::tenants::metering`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::tenants::quota;
use crate::tenants::rate::WHOLE;
use crate::tenants::slots::{even_split, Place, SlotRegistry, Slots};

/// `[cluster]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// Limits are shared over the live replicas (`scope = "cluster"`).
    pub shared: bool,
    /// This replica's `_id` in the heartbeat collection ("": [`default_replica_id`], made when
    /// the coordinator starts).
    pub replica_id: String,
    pub collection: String,
    pub quota_collection: String,
    pub heartbeat: Duration,
    pub member_timeout: Duration,
    pub flush: Duration,
    /// Learn of other replicas' heartbeats from a change stream where the deployment has one.
    pub watch_changes: bool,
}

/// A replica id for `[cluster] replica_id = ""`: the host name (a pod's name in Kubernetes) and
/// the process id.
pub fn default_replica_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "tenantgate".into());
    format!("{host}-{}-{:04x}", std::process::id(), fastrand::u16(..))
}

// ---------------------------------------------------------------------------------------------
// Shares: pure functions of what the heartbeat documents say.

/// What one replica said about one tenant in its heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reported {
    /// Slots it wants (most held at once lately plus refusals).
    pub demand: u32,
    /// Slots it may use until its next heartbeat.
    pub reserve: u32,
    /// Requests per second at its rate check.
    pub rate: u32,
    /// The tenant's `rateLimit` in requests per second, rounded up (0: none).
    pub limit: u32,
}

/// Splits `total` over replicas wanting `wants` (in id order): one each first when `total`
/// allows it, then max-min fair by what each wants beyond that, then what nobody wants evenly.
/// The result adds up to `total` (when there is at least one replica).
pub fn water_fill(total: u32, wants: &[u32]) -> Vec<u32> {
    let n = wants.len();
    if n == 0 {
        return Vec::new();
    }
    // One each; when there are fewer than replicas, to those who want most (then by id).
    let mut got = vec![u32::from(total >= n as u32); n];
    if total < n as u32 {
        let mut by_want: Vec<usize> = (0..n).collect();
        by_want.sort_by_key(|&i| (std::cmp::Reverse(wants[i]), i));
        for &i in by_want.iter().take(total as usize) {
            got[i] = 1;
        }
    }
    let mut left = total - got.iter().sum::<u32>();
    // Max-min fair: serve the smallest wants first, each at most an equal part of what is left.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (wants[i].saturating_sub(got[i]), i));
    for (k, &i) in order.iter().enumerate() {
        let want = wants[i].saturating_sub(got[i]);
        let fair = left / (n - k) as u32;
        let give = want.min(fair);
        got[i] += give;
        left -= give;
    }
    // Headroom nobody asked for, evenly (so a replica can grow into it before it reports).
    for (i, g) in got.iter_mut().enumerate() {
        *g += left / n as u32 + u32::from((i as u32) < left % n as u32);
    }
    got
}

/// This replica's slots of a tenant with cap `cap`: `target` (its claim, published before the
/// others were read) bounded by what the others' reserves leave.
pub fn usable(cap: u32, target: u32, others_reserved: u32) -> u32 {
    target.min(cap.saturating_sub(others_reserved))
}

/// One tenant as the cluster sees it: every live replica's report (absent: not listed).
#[derive(Debug, Clone, Default)]
struct TenantView {
    cap: u32,
    reports: BTreeMap<String, Reported>,
}

// ---------------------------------------------------------------------------------------------
// The heartbeat documents.

/// One replica's heartbeat as read back.
#[derive(Debug, Clone)]
struct Heartbeat {
    id: String,
    beat: i64,
    /// It shut down and handed its shares back.
    left: bool,
    /// `seenAt` by the server's clock, milliseconds since 1970, when the server stored it.
    seen_at: Option<i64>,
    tenants: Vec<(String, u32, Reported)>,
}

fn heartbeat_of(doc: &Document) -> Option<Heartbeat> {
    let id = doc.get_str("_id").ok()?.to_string();
    let beat = match doc.get("beat")? {
        Bson::Int64(n) => *n,
        Bson::Int32(n) => i64::from(*n),
        Bson::Double(n) => *n as i64,
        _ => return None,
    };
    let number = |d: &Document, k: &str| -> u32 {
        match d.get(k) {
            Some(Bson::Int32(n)) => (*n).max(0) as u32,
            Some(Bson::Int64(n)) => (*n).clamp(0, i64::from(u32::MAX)) as u32,
            Some(Bson::Double(n)) => n.clamp(0.0, f64::from(u32::MAX)) as u32,
            _ => 0,
        }
    };
    let tenants = doc
        .get_array("tenants")
        .map(|list| {
            list.iter()
                .filter_map(|t| t.as_document())
                .filter_map(|t| {
                    let key = t.get_str("key").ok()?.to_string();
                    let report = Reported {
                        demand: number(t, "demand"),
                        reserve: number(t, "reserve"),
                        rate: number(t, "rate"),
                        limit: number(t, "limit"),
                    };
                    Some((key, number(t, "cap"), report))
                })
                .collect()
        })
        .unwrap_or_default();
    let left = doc.get_bool("left").unwrap_or(false);
    // A date on MongoDB; the test server stores `$currentDate` as RFC 3339 text.
    let seen_at = match doc.get("seenAt") {
        Some(Bson::DateTime(t)) => Some(t.timestamp_millis()),
        Some(Bson::String(text)) => crate::tenants::tenant::parse_instant(text)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64),
        _ => None,
    };
    Some(Heartbeat {
        id,
        beat,
        left,
        seen_at,
        tenants,
    })
}

/// Which replicas are alive: a replica is until its last heartbeat is a member timeout old, or
/// it has said goodbye. "Old" is by the server's clock (every `seenAt` is the server's
/// `$currentDate`, and this replica's own, written just before the read, is the server's
/// now), so replicas' clocks need not agree; where the server gives no dates, by how long the
/// replica's `beat` has not changed on this replica's clock. A replica missing from one read
/// keeps its last heartbeat until then: only the timeout or its goodbye hands its shares on.
#[derive(Debug, Default)]
struct Members {
    /// id → (its last heartbeat, when its beat last changed here).
    seen: HashMap<String, (Heartbeat, Instant)>,
}

impl Members {
    /// The live replicas' heartbeats after reading `beats`, and the ids of documents of
    /// replicas gone long enough to be removed (with the beat they were seen at).
    /// `blind`: this replica could not read the heartbeats for a while (MongoDB was away for
    /// everyone, most likely), so an old heartbeat says nothing yet and nobody is gone but those
    /// who said goodbye.
    fn observe(
        &mut self,
        beats: &[Heartbeat],
        (now, server_now): (Instant, Option<i64>),
        timeout: Duration,
        blind: bool,
    ) -> (Vec<Heartbeat>, Vec<(String, i64)>) {
        let age = |hb: &Heartbeat, changed: &Instant| match (server_now, hb.seen_at) {
            _ if blind => Duration::ZERO,
            (Some(server), Some(seen)) => {
                Duration::from_millis(server.saturating_sub(seen).max(0) as u64)
            }
            _ => now.duration_since(*changed),
        };
        for b in beats {
            match self.seen.get_mut(&b.id) {
                Some((kept, changed)) => {
                    if kept.beat != b.beat {
                        *changed = now;
                    }
                    *kept = b.clone();
                }
                None => {
                    self.seen.insert(b.id.clone(), (b.clone(), now));
                }
            }
        }
        let mut stale = Vec::new();
        self.seen.retain(|id, (hb, changed)| {
            let present = beats.iter().any(|b| &b.id == id);
            let quiet = age(hb, changed);
            if present && (hb.left || quiet >= 10 * timeout) {
                stale.push((id.clone(), hb.beat));
            }
            present || quiet < timeout
        });
        let live = self
            .seen
            .values()
            .filter(|(hb, changed)| !hb.left && age(hb, changed) < timeout)
            .map(|(hb, _)| hb.clone())
            .collect();
        (live, stale)
    }
}

// ---------------------------------------------------------------------------------------------
// The coordinator.

/// Where the shared counts live.
enum Shared {
    /// MongoDB: heartbeats and quota leases in collections.
    Mongo {
        gateways: Collection<Document>,
        quotas: Collection<Document>,
    },
    /// No shared store: quotas counted in memory.
    Local,
}

/// A tenant in a heartbeat: its key, its cap, and its counter when this replica has one.
type Counted = (Arc<str>, u32, Option<Arc<Slots>>);

/// What this replica knows of one tenant between heartbeats.
#[derive(Debug, Default, Clone, Copy)]
struct Local {
    /// Its claim published in the last heartbeat.
    target: u32,
    rate: u32,
    /// Heartbeats in a row in which no replica reported demand.
    quiet: u32,
}

/// Runs the heartbeat, the shares and the flushes (see the module documentation).
pub struct Coordinator {
    settings: ClusterSettings,
    registry: Arc<SlotRegistry>,
    shared: Shared,
    members: Members,
    /// The live replicas at the last read (sorted by id; empty before the first), and whether
    /// that read found them changed.
    members_last: Vec<String>,
    membership_changed: bool,
    beat: i64,
    /// Tenants this replica lists in its heartbeat, with what it knows of them.
    listed: HashMap<Arc<str>, Local>,
    /// Each rate-limited tenant's attempts at the last heartbeat (for its requests per second).
    attempts: HashMap<Arc<str>, u64>,
    /// The cluster's view at the last read: tenant → reports of live replicas.
    view: HashMap<String, TenantView>,
    last_heartbeat: Instant,
    /// When this replica last read the heartbeats, and until when it counts nobody as gone
    /// after a gap in its reads.
    last_read: Option<Instant>,
    blind_until: Option<Instant>,
    /// Store failures are logged once per outage.
    failing: bool,
    /// Heartbeat and flush traffic, for `/metrics`.
    traffic: Traffic,
}

/// Heartbeat and flush traffic of this replica, and the replicas it sees (exported on
/// `/metrics` as `tenantgate_cluster_*`).
#[derive(Debug, Default, Clone)]
pub struct Traffic {
    pub documents_written: Counter,
    pub bytes_written: Counter,
    pub documents_read: Counter,
    pub bytes_read: Counter,
    /// Live replicas at the last heartbeat (scope `cluster`; 1 otherwise).
    pub replicas: Gauge,
}

impl Traffic {
    pub(crate) fn wrote(&self, docs: u64, bytes: u64) {
        self.documents_written.inc_by(docs);
        self.bytes_written.inc_by(bytes);
    }

    fn read(&self, docs: u64, bytes: u64) {
        self.documents_read.inc_by(docs);
        self.bytes_read.inc_by(bytes);
    }
}

fn bson_len(d: &Document) -> u64 {
    mongodb::bson::to_vec(d).map_or(0, |v| v.len() as u64)
}

impl Coordinator {
    /// A coordinator over MongoDB database `db` (heartbeats only with scope `cluster`).
    pub fn mongo(
        settings: ClusterSettings,
        registry: Arc<SlotRegistry>,
        db: &Database,
        traffic: Traffic,
    ) -> Coordinator {
        let shared = Shared::Mongo {
            gateways: db.collection(&settings.collection),
            quotas: db.collection(&settings.quota_collection),
        };
        Coordinator::new(settings, registry, shared, traffic)
    }

    /// A coordinator without a shared store (the file store): per-replica limits.
    pub fn local(
        settings: ClusterSettings,
        registry: Arc<SlotRegistry>,
        traffic: Traffic,
    ) -> Coordinator {
        Coordinator::new(settings, registry, Shared::Local, traffic)
    }

    fn new(
        mut settings: ClusterSettings,
        registry: Arc<SlotRegistry>,
        shared: Shared,
        traffic: Traffic,
    ) -> Coordinator {
        traffic.replicas.set(1);
        if settings.replica_id.is_empty() {
            settings.replica_id = default_replica_id();
        }
        Coordinator {
            settings,
            registry,
            shared,
            members: Members::default(),
            members_last: Vec::new(),
            membership_changed: false,
            beat: 0,
            listed: HashMap::new(),
            attempts: HashMap::new(),
            view: HashMap::new(),
            last_heartbeat: Instant::now(),
            last_read: None,
            blind_until: None,
            failing: false,
            traffic,
        }
    }

    fn cluster(&self) -> Option<&Collection<Document>> {
        match &self.shared {
            Shared::Mongo { gateways, .. } if self.settings.shared => Some(gateways),
            _ => None,
        }
    }

    /// Takes part in the cluster before the first request (scope `cluster`): publishes a first
    /// heartbeat and reads the others', so new counters start with this replica's even split
    /// over the replicas it saw. Waits at most one member timeout.
    pub async fn join(&mut self) {
        if self.cluster().is_none() {
            return;
        }
        self.registry.set_place(Place {
            shared: true,
            live: 1,
            index: 0,
            assigned: HashMap::new(),
        });
        let within = self.settings.member_timeout;
        if tokio::time::timeout(within, self.heartbeat())
            .await
            .is_err()
        {
            tracing::warn!(
                replica = %self.settings.replica_id,
                "no first heartbeat within the member timeout; this replica starts alone and shares once MongoDB answers"
            );
        } else {
            tracing::info!(replica = %self.settings.replica_id, replicas = self.live(), "joined the cluster");
        }
    }

    /// Runs until `stop` resolves, then settles the quota leases once more and says goodbye (its
    /// share returns to the others at once).
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        let changed = Arc::new(tokio::sync::Notify::new());
        if let (Some(gateways), true) = (self.cluster(), self.settings.watch_changes) {
            tokio::spawn(watch_members(gateways.clone(), changed.clone()));
        }
        let mut heartbeat = tokio::time::interval(self.settings.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flush = tokio::time::interval(self.settings.flush);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = heartbeat.tick() => self.heartbeat().await,
                _ = changed.notified() => self.heartbeat().await,
                // A replica came or went: claim the new shares at once rather than a
                // heartbeat later (claims are published before they are used).
                _ = std::future::ready(()), if self.membership_changed => {
                    self.membership_changed = false;
                    self.heartbeat().await;
                }
                _ = flush.tick() => self.flush(false).await,
                _ = quota::flush_asked() => self.flush(false).await,
                _ = &mut stop => break,
            }
        }
        self.flush(true).await;
        if let Some(gateways) = self.cluster() {
            // Goodbye: no reserves any more, and `left` so the others take them at once.
            let id = self.settings.replica_id.clone();
            let goodbye = doc! {"$currentDate": {"seenAt": true},
            "$set": {"left": true, "tenants": [], "beat": self.beat + 1}};
            match gateways.update_one(doc! {"_id": &id}, goodbye).await {
                Ok(_) => tracing::info!(replica = %id, "left the cluster"),
                Err(e) => {
                    tracing::warn!(replica = %id, error = %e, "could not say goodbye in the heartbeat collection; the others take this replica's shares after the member timeout")
                }
            }
        }
    }

    /// One heartbeat: demand in, shares out (scope `cluster` only: per replica, every counter
    /// keeps the whole of its limits).
    async fn heartbeat(&mut self) {
        let Some(gateways) = self.cluster().cloned() else {
            return;
        };
        let now = Instant::now();
        let elapsed = now
            .duration_since(self.last_heartbeat)
            .as_secs_f64()
            .max(0.001);
        self.last_heartbeat = now;
        // Every tenant this replica counts, and every tenant another replica reports busy.
        let mut tenants: Vec<Counted> = self
            .registry
            .all()
            .into_iter()
            .filter_map(|(key, slots)| Some((key, slots.limits()?.cap, Some(slots))))
            .collect();
        let counted: std::collections::HashSet<Arc<str>> =
            tenants.iter().map(|(k, _, _)| k.clone()).collect();
        for (key, view) in &self.view {
            if !counted.contains(key.as_str()) {
                tenants.push((Arc::from(key.as_str()), view.cap, None));
            }
        }
        // What this replica asks for, and its claims (targets from the last view). A tenant is
        // coordinated only while some replica wants more than its even split of the cap or of
        // the rate: below that, every replica's even split is enough and nothing is written.
        let mut reports: Vec<(Arc<str>, u32, Reported)> = Vec::new();
        let mut attempts = HashMap::new();
        for (key, cap, slots) in &tenants {
            let (demand, in_flight) = match slots {
                Some(s) => (s.demand(), s.in_flight()),
                None => (Default::default(), 0),
            };
            let limit = slots
                .as_ref()
                .and_then(|s| s.limits())
                .and_then(|l| l.rate)
                .unwrap_or(0);
            let rate = match (limit, self.attempts.get(key)) {
                (0, _) => 0,
                (_, Some(before)) => {
                    (demand.attempts.saturating_sub(*before) as f64 / elapsed).ceil() as u32
                }
                (_, None) => 0,
            };
            if limit > 0 {
                attempts.insert(key.clone(), demand.attempts);
            }
            let wants_more = demand.slots > self.even(*cap) || rate > self.even(limit);
            let known = self.listed.get(key).copied();
            let view = self.view.get(&**key);
            if known.is_none() && !wants_more && view.is_none() {
                continue;
            }
            let mut local = known.unwrap_or_default();
            local.rate = rate;
            let cluster_quiet = view.is_none_or(|v| {
                v.reports.iter().all(|(m, r)| {
                    r.demand <= self.even_for(m, *cap) && r.rate <= self.even_for(m, r.limit)
                })
            });
            local.quiet = if !wants_more && cluster_quiet {
                local.quiet + 1
            } else {
                0
            };
            // Quiet everywhere for a few heartbeats: every replica is back to its even split.
            if local.quiet > 2 && in_flight == 0 {
                self.listed.remove(key);
                if let Some(s) = slots {
                    s.set_share(self.even(*cap));
                    s.set_share_ppm(self.even_ppm());
                }
                continue;
            }
            let target = self.target(key, *cap, demand.slots);
            if let Some(s) = slots {
                // Shrinking is always safe, and immediate.
                s.set_share(s.share().min(target));
            }
            local.target = target;
            self.listed.insert(key.clone(), local);
            reports.push((
                key.clone(),
                *cap,
                Reported {
                    demand: demand.slots,
                    reserve: target.max(in_flight),
                    rate,
                    limit,
                },
            ));
        }
        let all: std::collections::HashSet<&str> = tenants.iter().map(|(k, _, _)| &**k).collect();
        self.listed.retain(|k, _| all.contains(&**k));
        self.attempts = attempts;

        self.beat += 1;
        let id = self.settings.replica_id.clone();
        let listed: Vec<Document> = reports
            .iter()
            .map(|(key, cap, r)| {
                // Zero demand and rate are left out (an idle replica's entry is its reserve).
                let mut entry =
                    doc! {"key": &**key, "cap": i64::from(*cap), "reserve": i64::from(r.reserve)};
                if r.demand > 0 {
                    entry.insert("demand", i64::from(r.demand));
                }
                if r.rate > 0 {
                    entry.insert("rate", i64::from(r.rate));
                }
                if r.limit > 0 {
                    entry.insert("limit", i64::from(r.limit));
                }
                entry
            })
            .collect();
        let update = doc! {"$currentDate": {"seenAt": true}, "$set": {"beat": self.beat, "left": false, "tenants": listed}};
        let written = bson_len(&update);
        if let Err(e) = gateways
            .update_one(doc! {"_id": &id}, update)
            .upsert(true)
            .await
        {
            return self.store_failed("heartbeat", &e);
        }
        self.traffic.wrote(1, written);
        let docs: Vec<Document> = match gateways.find(doc! {}).await {
            Ok(cursor) => match cursor.try_collect().await {
                Ok(docs) => docs,
                Err(e) => return self.store_failed("heartbeat read", &e),
            },
            Err(e) => return self.store_failed("heartbeat read", &e),
        };
        self.traffic
            .read(docs.len() as u64, docs.iter().map(bson_len).sum());
        self.store_back();
        let beats: Vec<Heartbeat> = docs.iter().filter_map(heartbeat_of).collect();
        let server_now = beats.iter().find(|b| b.id == id).and_then(|b| b.seen_at);
        // After this replica missed heartbeats (MongoDB away, or too slow), the others' last
        // heartbeats are old because nobody could write one: they get a member timeout from now
        // before any counts as gone (else the first replica back would take every share while
        // the others still use theirs).
        let read_at = Instant::now();
        if self
            .last_read
            .is_some_and(|at| read_at.duration_since(at) > 2 * self.settings.heartbeat)
        {
            self.blind_until = Some(read_at + self.settings.member_timeout);
        }
        self.last_read = Some(read_at);
        let blind = self.blind_until.is_some_and(|until| read_at < until);
        let (beats, stale) = self.members.observe(
            &beats,
            (read_at, server_now),
            self.settings.member_timeout,
            blind,
        );
        // Documents of replicas long gone are removed (unless they beat again meanwhile).
        for (gone, beat) in stale {
            if gone != id {
                let _ = gateways.delete_one(doc! {"_id": &gone, "beat": beat}).await;
            }
        }
        let mut live: Vec<String> = beats.iter().map(|b| b.id.clone()).collect();
        if !live.contains(&id) {
            live.push(id.clone());
        }
        live.sort();
        self.membership_changed = live != self.members_last;
        self.members_last = live.clone();
        self.traffic.replicas.set(live.len() as i64);
        // The view: every live replica's reports, by tenant.
        self.view.clear();
        for b in beats.iter().filter(|b| live.contains(&b.id)) {
            for (key, cap, report) in &b.tenants {
                let view = self.view.entry(key.clone()).or_default();
                view.cap = view.cap.max(*cap);
                view.reports.insert(b.id.clone(), *report);
            }
        }
        self.apply(&tenants, &live);
    }

    /// This replica's claim on a tenant for the next period, from the last view plus its own
    /// current demand.
    fn target(&self, key: &str, cap: u32, demand: u32) -> u32 {
        let Some(view) = self.view.get(key) else {
            return self.even(cap);
        };
        let id = self.settings.replica_id.as_str();
        let mut wants: Vec<(&str, u32)> = view
            .reports
            .iter()
            .filter(|(m, _)| *m != id)
            .map(|(m, r)| (m.as_str(), r.demand))
            .collect();
        wants.push((id, demand));
        // Live replicas not listing the tenant yet count as wanting nothing (after the others:
        // `\u{10FFFF}` sorts last).
        for _ in 0..self.live().saturating_sub(wants.len()) {
            wants.push(("\u{10FFFF}", 0));
        }
        wants.sort_unstable();
        let shares = water_fill(cap, &wants.iter().map(|w| w.1).collect::<Vec<_>>());
        let mine = wants.iter().position(|w| w.0 == id).unwrap_or(0);
        shares[mine]
    }

    /// Sets every tenant's shares from the view just read, and what new counters start with.
    fn apply(&mut self, tenants: &[Counted], live: &[String]) {
        let id = self.settings.replica_id.clone();
        let mut assigned = HashMap::new();
        let mut known: Vec<Counted> = tenants.to_vec();
        let counted: std::collections::HashSet<&str> =
            tenants.iter().map(|(k, _, _)| &**k).collect();
        for (key, view) in &self.view {
            if !counted.contains(key.as_str()) {
                known.push((Arc::from(key.as_str()), view.cap, None));
            }
        }
        for (key, cap, slots) in &known {
            let Some(view) = self.view.get(&**key) else {
                if let (Some(s), false) = (slots, self.listed.contains_key(key)) {
                    s.set_share(self.even(*cap));
                    s.set_share_ppm(self.even_ppm());
                }
                continue;
            };
            // What this replica claimed before reading; nothing when it did not list the tenant.
            let target = self.listed.get(key).map_or(0, |l| l.target);
            // Others' reserves; a live replica not listing the tenant holds its even split.
            let others: u32 = live
                .iter()
                .enumerate()
                .filter(|(_, m)| **m != id)
                .map(|(i, m)| match view.reports.get(m) {
                    Some(r) => r.reserve,
                    None => even_split(*cap, live.len(), i),
                })
                .sum();
            let share = usable(*cap, target, others);
            // The rate: max-min fair over requests per second.
            let wants: Vec<u32> = live
                .iter()
                .map(|m| {
                    if *m == id {
                        self.listed.get(key).map_or(0, |l| l.rate)
                    } else {
                        view.reports.get(m).map_or(0, |r| r.rate)
                    }
                })
                .collect();
            let total: u64 = wants.iter().map(|&w| u64::from(w)).sum();
            let ppm = if total == 0 {
                self.even_ppm()
            } else {
                let scaled: Vec<u32> = wants
                    .iter()
                    .map(|&w| (u64::from(w) * u64::from(WHOLE) / total) as u32)
                    .collect();
                water_fill(WHOLE, &scaled)[self.index().min(live.len() - 1)]
            };
            match slots {
                Some(s) => {
                    s.set_share(share);
                    s.set_share_ppm(ppm);
                }
                None => {
                    assigned.insert(key.clone(), (share, ppm));
                }
            }
        }
        self.registry.set_place(Place {
            shared: true,
            live: self.live(),
            index: self.index(),
            assigned,
        });
    }

    /// The even split of `cap` of the live replica `member` (by its place among them).
    fn even_for(&self, member: &str, cap: u32) -> u32 {
        let index = self
            .members_last
            .iter()
            .position(|m| m == member)
            .unwrap_or(0);
        even_split(cap, self.members_last.len(), index)
    }

    /// Live replicas (this one alone before the first read).
    fn live(&self) -> usize {
        self.members_last.len().max(1)
    }

    /// This replica's place among the live replicas (by id).
    fn index(&self) -> usize {
        self.members_last
            .iter()
            .position(|m| *m == self.settings.replica_id)
            .unwrap_or(0)
    }

    fn even(&self, cap: u32) -> u32 {
        if self.settings.shared {
            even_split(cap, self.live(), self.index())
        } else {
            u32::MAX
        }
    }

    fn even_ppm(&self) -> u32 {
        if self.settings.shared {
            even_split(WHOLE, self.live(), self.index())
        } else {
            WHOLE
        }
    }

    /// Adds accepted requests to the day's quota totals and writes usage counts.
    /// Settles the quota leases (usage has a task of its own, [`crate::tenants::metering`]).
    async fn flush(&mut self, leaving: bool) {
        let counters = self.registry.all();
        self.flush_quotas(&counters, leaving).await;
    }

    /// Quotas per replica: the day's total is this replica's own. With scope `cluster`: a
    /// lease of the day's quota in MongoDB (see [`lease`]) sized to twice what the replica used
    /// in the last interval, excess leases given back (all of it when `leaving`).
    async fn flush_quotas(&mut self, counters: &[(Arc<str>, Arc<Slots>)], leaving: bool) {
        let quotas = match &self.shared {
            Shared::Mongo { quotas, .. } if self.settings.shared => Some(quotas.clone()),
            _ => None,
        };
        let mut failed = None;
        for (key, slots) in counters {
            let Some(per_day) = slots.limits().and_then(|l| l.quota) else {
                continue;
            };
            let taken = slots.quota.unflushed();
            let Some(quotas) = &quotas else {
                let total = slots.quota.used();
                slots
                    .quota
                    .flushed(taken, total, per_day.saturating_sub(total));
                continue;
            };
            let (unused, unleased) = slots.quota.lease_left(taken);
            let want = if leaving { 0 } else { (2 * taken.count).max(1) };
            let id = format!("{key}/{}", taken.day);
            match lease(quotas, &id, key, taken.day, per_day, unused, unleased, want).await {
                Ok((held, total)) => {
                    self.traffic.wrote(2, 200);
                    self.traffic.read(1, 100);
                    slots.quota.flushed(taken, total, held);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            Some(e) => self.store_failed("quota flush", &e),
            None if quotas.is_some() => self.store_back(),
            None => {}
        }
    }

    fn store_failed(&mut self, what: &str, e: &mongodb::error::Error) {
        if !self.failing {
            tracing::warn!(what, error = %e, "MongoDB unreachable: keeping the last shares and quota allowances, usage waits in memory");
            self.failing = true;
        }
    }

    fn store_back(&mut self) {
        if self.failing {
            tracing::info!("MongoDB reachable again: shares, quotas and usage flushed");
            self.failing = false;
        }
    }
}

/// A count as the server stored it (32 or 64 bits, or a double); 0 for anything else.
pub fn count(value: &Bson) -> u64 {
    match value {
        Bson::Int64(n) => (*n).max(0) as u64,
        Bson::Int32(n) => (*n).max(0) as u64,
        Bson::Double(n) => n.max(0.0) as u64,
        _ => 0,
    }
}

/// A count field of a document (0 when missing).
fn count_of(doc: &Document, field: &str) -> u64 {
    doc.get(field).map_or(0, count)
}

/// Settles one tenant's lease of the day's quota in the quota document `id`, whose `count` is
/// every request leased so far today (used, or held by a replica to use): requests accepted
/// before any lease (`unleased`) are added, and the replica's unused lease (`unused`) is
/// brought to `want` — the excess given back, more leased only while `count` stays within
/// `per_day` (a conditional `$inc`, so replicas never lease more than the quota between them).
/// Returns the requests the replica may accept now and the day's count.
#[allow(clippy::too_many_arguments)]
async fn lease(
    quotas: &Collection<Document>,
    id: &str,
    tenant: &str,
    day: u32,
    per_day: u64,
    unused: u64,
    unleased: u64,
    want: u64,
) -> Result<(u64, u64), mongodb::error::Error> {
    let change = unleased as i64 + want.min(unused) as i64 - unused as i64;
    let settled = quotas
        .find_one_and_update(
            doc! {"_id": id},
            doc! {"$inc": {"count": change}, "$set": {"tenant": tenant, "day": i64::from(day)}},
        )
        .upsert(true)
        .return_document(ReturnDocument::After)
        .await?;
    let mut count = settled.map_or(0, |d| count_of(&d, "count"));
    let mut held = want.min(unused);
    let more = want.saturating_sub(unused);
    if more > 0 && count < per_day {
        let grant = more.min(per_day - count);
        let leased = quotas
            .find_one_and_update(
                doc! {"_id": id, "count": {"$lte": (per_day - grant) as i64}},
                doc! {"$inc": {"count": grant as i64}},
            )
            .return_document(ReturnDocument::After)
            .await?;
        if let Some(d) = leased {
            held += grant;
            count = count_of(&d, "count");
        }
    }
    Ok((held, count))
}

/// Wakes the coordinator when a replica joins (its first heartbeat inserts its document) or says
/// goodbye, where the deployment has change streams (a replica set); without them (a standalone
/// server, the test server) it stops after the first failure and the heartbeat's own reads are
/// how changes are learnt. Ordinary heartbeats are filtered out on the server: waking on each
/// would multiply every replica's heartbeats by the number of replicas.
async fn watch_members(gateways: Collection<Document>, changed: Arc<tokio::sync::Notify>) {
    let membership = doc! {"$match": {"$or": [
        {"operationType": {"$in": ["insert", "delete", "replace"]}},
        {"updateDescription.updatedFields.left": true},
    ]}};
    match gateways.watch().pipeline([membership]).await {
        Ok(events) => wake_on(events, || changed.notify_one()).await,
        Err(e) => {
            tracing::info!(error = %e, "no change stream on the heartbeat collection; membership is read every heartbeat")
        }
    }
}

/// Calls `wake` for each event until the stream fails or ends.
async fn wake_on<S, T, E>(mut events: S, wake: impl Fn())
where
    S: futures_util::Stream<Item = Result<T, E>> + Unpin,
    E: std::fmt::Display,
{
    loop {
        match events.next().await {
            Some(Ok(_)) => wake(),
            Some(Err(e)) => {
                tracing::info!(error = %e, "heartbeat change stream ended; membership is read every heartbeat");
                return;
            }
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn membership_events_wake_the_heartbeat_until_the_stream_fails() {
        let woken = std::sync::atomic::AtomicU32::new(0);
        let events = futures_util::stream::iter(vec![Ok(1), Ok(2), Err("no resume token"), Ok(3)]);
        wake_on(events, || {
            woken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .await;
        assert_eq!(
            woken.into_inner(),
            2,
            "woken per event, and not after the failure"
        );
    }

    #[test]
    fn even_splits_add_up_to_the_cap() {
        for (cap, n) in [(30, 3), (31, 3), (2, 3), (1, 1), (100, 7)] {
            let sum: u32 = (0..n).map(|i| even_split(cap, n, i)).sum();
            assert_eq!(sum, cap, "{cap} over {n}");
        }
        assert_eq!(even_split(2, 3, 2), 0);
    }

    #[test]
    fn water_fill_follows_demand_gives_one_each_and_adds_up() {
        assert_eq!(water_fill(30, &[40, 5, 0]), vec![24, 5, 1]);
        assert_eq!(water_fill(30, &[0, 0, 0]), vec![10, 10, 10]);
        assert_eq!(water_fill(30, &[30, 30, 30]), vec![10, 10, 10]);
        assert_eq!(water_fill(30, &[2, 2, 2]), vec![10, 10, 10]);
        assert_eq!(water_fill(2, &[5, 5, 5]), vec![1, 1, 0]);
        assert_eq!(
            water_fill(1, &[0, 0, 3]),
            vec![0, 0, 1],
            "a cap below the replica count goes to demand"
        );
        for wants in [vec![7, 0, 100, 3], vec![1, 1, 1, 1], vec![1000, 999, 0, 0]] {
            for total in [0, 1, 3, 4, 29, 1000] {
                let got = water_fill(total, &wants);
                assert_eq!(
                    got.iter().sum::<u32>(),
                    total,
                    "{total} over {wants:?}: {got:?}"
                );
            }
        }
    }

    #[test]
    fn a_replica_grows_only_into_what_the_others_do_not_reserve() {
        assert_eq!(usable(30, 24, 10), 20);
        assert_eq!(usable(30, 24, 6), 24);
        assert_eq!(usable(30, 5, 40), 0);
    }

    #[test]
    fn members_are_gone_once_their_beat_stops_changing() {
        let mut m = Members::default();
        let t0 = Instant::now();
        let hb = |id: &str, beat| Heartbeat {
            id: id.into(),
            beat,
            left: false,
            seen_at: None,
            tenants: vec![],
        };
        let timeout = Duration::from_secs(3);
        let ids = |(live, _): (Vec<Heartbeat>, _)| {
            let mut ids: Vec<String> = live.into_iter().map(|h| h.id).collect();
            ids.sort();
            ids
        };
        let at = |secs| (t0 + Duration::from_secs(secs), None);
        assert_eq!(
            ids(m.observe(&[hb("a", 1), hb("b", 7)], at(0), timeout, false)),
            ["a", "b"]
        );
        assert_eq!(
            ids(m.observe(&[hb("a", 2)], at(2), timeout, false)),
            ["a", "b"],
            "missing from one read is not gone"
        );
        assert_eq!(
            ids(m.observe(&[hb("a", 3), hb("b", 7)], at(4), timeout, false)),
            ["a"]
        );
        assert_eq!(
            ids(m.observe(&[hb("a", 4), hb("b", 8)], at(4), timeout, false)),
            ["a", "b"],
            "b beats again"
        );
        let mut bye = hb("b", 9);
        bye.left = true;
        let (live, stale) = m.observe(&[hb("a", 5), bye], at(4), timeout, false);
        assert_eq!(live.len(), 1, "a goodbye is gone at once");
        assert_eq!(stale, vec![("b".to_string(), 9)]);
    }

    #[test]
    fn with_the_servers_clock_a_member_is_gone_a_timeout_after_its_last_heartbeat() {
        let mut m = Members::default();
        let t0 = Instant::now();
        let hb = |id: &str, beat, seen_at| Heartbeat {
            id: id.into(),
            beat,
            left: false,
            seen_at: Some(seen_at),
            tenants: vec![],
        };
        let timeout = Duration::from_millis(600);
        // First seen long after its last heartbeat (a replica started next to a dead one).
        let (live, _) = m.observe(
            &[hb("me", 1, 10_000), hb("dead", 4, 9_000)],
            (t0, Some(10_000)),
            timeout,
            false,
        );
        assert_eq!(live.len(), 1);
        let (live, _) = m.observe(
            &[hb("me", 2, 10_200), hb("b", 1, 10_100)],
            (t0, Some(10_200)),
            timeout,
            false,
        );
        assert_eq!(live.len(), 2);
        let (live, _) = m.observe(
            &[hb("me", 3, 10_700), hb("b", 1, 10_100)],
            (t0, Some(10_700)),
            timeout,
            false,
        );
        assert_eq!(
            live.len(),
            1,
            "600 ms after b's last heartbeat by the server's clock"
        );
    }

    #[test]
    fn heartbeat_documents_read_back() {
        let d = doc! {"_id": "r1", "beat": 3_i64, "tenants": [
            {"key": "tnt_a", "cap": 30, "demand": 12_i64, "reserve": 20_i64, "rate": 4, "limit": 50},
            {"nokey": 1}
        ]};
        let hb = heartbeat_of(&d).unwrap();
        assert_eq!((hb.id.as_str(), hb.beat), ("r1", 3));
        assert_eq!(
            hb.tenants,
            vec![(
                "tnt_a".to_string(),
                30,
                Reported {
                    demand: 12,
                    reserve: 20,
                    rate: 4,
                    limit: 50
                }
            )]
        );
    }
}
