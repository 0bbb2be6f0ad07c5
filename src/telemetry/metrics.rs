//! Prometheus metrics, served as OpenMetrics text at `GET /metrics` on the admin listener
//! (prometheus-client).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `tenantgate_requests_total` | counter | `status` |
//! | `tenantgate_rejections_total` | counter | `code` (the JSON error code) |
//! | `tenantgate_request_duration_seconds` | histogram | |
//! | `tenantgate_upstream_response_seconds` | histogram (time to the backend's response head) | |
//! | `tenantgate_cache_hits_total`, `tenantgate_cache_stale_total` | counter | |
//! | `tenantgate_store_queries_total`, `tenantgate_store_query_errors_total` | counter | |
//! | `tenantgate_store_query_duration_seconds` | histogram | |
//! | `tenantgate_in_flight`, `tenantgate_open_websockets` | gauge (all tenants) | |
//! | `tenantgate_tenant_in_flight`, `tenantgate_tenant_open_websockets` | gauge | `tenant` |
//!
//! Per-tenant label sets are bounded: only the `[admin] metrics_top_tenants` busiest tenants at
//! scrape time get their own series, the rest are summed under `tenant="other"`, and idle
//! tenants have none — 100,000 tenants never mean 100,000 series. The per-tenant gauges are
//! read from the concurrency counters at scrape time: they cost the request path nothing.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use thread_local::ThreadLocal;

pub use crate::tenants::counter::PerThreadCounter;

use crate::tenants::directory::Directory;
use crate::tenants::slots::Busy;

/// Latency bucket bounds in nanoseconds: 0.1 ms, doubling up to ~3.3 s (then `+Inf`).
const LATENCY_BOUNDS_NS: [u64; 16] = {
    let mut bounds = [0; 16];
    let mut i = 0;
    while i < bounds.len() {
        bounds[i] = 100_000 << i;
        i += 1;
    }
    bounds
};

/// A latency histogram counted per thread and summed when scraped.
///
/// prometheus-client's `Histogram` takes one write lock, shared by all threads, for every
/// observation; the request path observes two latencies per request, so every connection
/// thread took the same two locks for every request. Here each thread adds to counters of its
/// own (no lock, and no cache line shared with another thread).
#[derive(Debug, Clone, Default)]
pub struct Latency {
    shards: Arc<ThreadLocal<LatencyShard>>,
}

#[derive(Debug, Default)]
struct LatencyShard {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; LATENCY_BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Latency {
    pub fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let shard = self.shards.get_or_default();
        // The first bucket whose bound is at least `ns`.
        let bucket = LATENCY_BOUNDS_NS.partition_point(|&bound| bound < ns);
        shard.buckets[bucket].fetch_add(1, Relaxed);
        shard.sum_ns.fetch_add(ns, Relaxed);
    }
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut counts = [0u64; LATENCY_BOUNDS_NS.len() + 1];
        let mut sum_ns = 0u64;
        for shard in self.shards.iter() {
            for (total, n) in counts.iter_mut().zip(&shard.buckets) {
                *total += n.load(Relaxed);
            }
            sum_ns = sum_ns.wrapping_add(shard.sum_ns.load(Relaxed));
        }
        let bounds = LATENCY_BOUNDS_NS.iter().map(|&ns| ns as f64 / 1e9);
        let buckets: Vec<(f64, u64)> = bounds.chain([f64::MAX]).zip(counts).collect();
        let count = counts.iter().sum();
        encoder.encode_histogram::<NoLabelSet>(sum_ns as f64 / 1e9, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Answered requests by status, counted per thread like [`Latency`] and summed when scraped:
/// `tenantgate_requests_total{status}`.
#[derive(Debug, Default)]
struct StatusCounts {
    shards: ThreadLocal<Box<[AtomicU64; 600]>>,
}

impl StatusCounts {
    fn count(&self, status: u16) {
        let shard = self
            .shards
            .get_or(|| Box::new(std::array::from_fn(|_| AtomicU64::new(0))));
        // Statuses are 100..=599 (`http::StatusCode`).
        if let Some(n) = shard.get(usize::from(status)) {
            n.fetch_add(1, Relaxed);
        }
    }
}

impl Collector for StatusCounts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut totals = [0u64; 600];
        for shard in self.shards.iter() {
            for (total, n) in totals.iter_mut().zip(shard.iter()) {
                *total += n.load(Relaxed);
            }
        }
        let mut family = encoder.encode_descriptor(
            "tenantgate_requests",
            "Requests answered, by HTTP status",
            None,
            MetricType::Counter,
        )?;
        for (status, &n) in totals.iter().enumerate().filter(|(_, &n)| n > 0) {
            ConstCounter::new(n).encode(family.encode_family(&[("status", status as u16)])?)?;
        }
        Ok(())
    }
}

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Arc<StatusCounts>,
    rejections: Family<[(&'static str, &'static str); 1], Counter>,
    duration: Latency,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Registers the request metrics and the counters the cache (`directory`) and the
    /// forwarder (`upstream_response`) keep themselves.
    pub fn new(
        directory: &Arc<Directory>,
        upstream_response: &Latency,
        top_tenants: usize,
        cluster: &crate::tenants::cluster::Traffic,
    ) -> Metrics {
        let mut registry = Registry::default();
        registry.register(
            "tenantgate_cluster_documents_written",
            "Documents written for heartbeats, quota leases and usage",
            cluster.documents_written.clone(),
        );
        registry.register(
            "tenantgate_cluster_bytes_written",
            "BSON bytes of the heartbeat, quota and usage updates sent",
            cluster.bytes_written.clone(),
        );
        registry.register(
            "tenantgate_cluster_documents_read",
            "Documents read back: heartbeats of every replica, quota counts",
            cluster.documents_read.clone(),
        );
        registry.register(
            "tenantgate_cluster_bytes_read",
            "BSON bytes of the documents read back",
            cluster.bytes_read.clone(),
        );
        registry.register(
            "tenantgate_cluster_replicas",
            "Live replicas sharing the limits at the last heartbeat (1 with scope replica)",
            cluster.replicas.clone(),
        );
        let requests = Arc::new(StatusCounts::default());
        let rejections = Family::default();
        let duration = Latency::default();
        registry.register_collector(Box::new(requests.clone()));
        registry.register(
            "tenantgate_rejections",
            "Requests the gateway answered itself with an error, by error code",
            rejections.clone(),
        );
        registry.register(
            "tenantgate_request_duration_seconds",
            "Time from the request head to the response head",
            duration.clone(),
        );
        registry.register(
            "tenantgate_upstream_response_seconds",
            "Time from sending a request to a backend to its response head",
            upstream_response.clone(),
        );
        let s = &directory.stats;
        registry.register(
            "tenantgate_cache_hits",
            "Tenant and origin answers served from the cache within their TTL",
            s.hits.clone(),
        );
        registry.register(
            "tenantgate_cache_stale",
            "Answers served past their TTL while refreshed in the background or while the store fails",
            s.stale.clone(),
        );
        registry.register(
            "tenantgate_store_queries",
            "Queries made to the tenant store (cache misses and refreshes)",
            s.queries.clone(),
        );
        registry.register(
            "tenantgate_store_query_errors",
            "Store queries that failed or timed out",
            s.query_errors.clone(),
        );
        registry.register(
            "tenantgate_store_query_duration_seconds",
            "Duration of store queries",
            s.query_seconds.clone(),
        );
        registry.register_collector(Box::new(TenantGauges {
            directory: directory.clone(),
            top: top_tenants,
        }));
        Metrics {
            registry,
            requests,
            rejections,
            duration,
        }
    }

    /// Counts one answered request.
    pub fn observe(&self, status: u16, rejection: Option<&'static str>, elapsed: Duration) {
        self.requests.count(status);
        if let Some(code) = rejection {
            self.rejections.get_or_create(&[("code", code)]).inc();
        }
        self.duration.observe(elapsed);
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The concurrency gauges, read from the tenants' slot counters at scrape time.
struct TenantGauges {
    directory: Arc<Directory>,
    top: usize,
}

impl std::fmt::Debug for TenantGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TenantGauges(top {})", self.top)
    }
}

fn gauge(encoder: MetricEncoder<'_>, value: u64) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value as i64).encode(encoder)
}

/// Which count of a tenant a gauge shows.
type Pick = fn(&Busy) -> u32;

impl Collector for TenantGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut busy = self.directory.busy_tenants();
        // Busiest first; ties by name so the series are stable between scrapes.
        busy.sort_by(|a, b| {
            b.in_flight
                .cmp(&a.in_flight)
                .then_with(|| a.tenant.cmp(&b.tenant))
        });
        let (top, rest) = busy.split_at(busy.len().min(self.top));
        let sum = |list: &[Busy], pick: Pick| list.iter().map(|t| u64::from(pick(t))).sum::<u64>();
        let gauges: [(&str, &str, &str, Pick); 2] = [
            (
                "tenantgate_in_flight",
                "tenantgate_tenant_in_flight",
                "Concurrency slots held: requests in flight plus open upgraded connections",
                |t| t.in_flight,
            ),
            (
                "tenantgate_open_websockets",
                "tenantgate_tenant_open_websockets",
                "Open upgraded connections (WebSockets)",
                |t| t.sockets,
            ),
        ];
        for (total, per_tenant, help, pick) in gauges {
            gauge(
                encoder.encode_descriptor(total, help, None, MetricType::Gauge)?,
                sum(&busy, pick),
            )?;
            let mut family =
                encoder.encode_descriptor(per_tenant, help, None, MetricType::Gauge)?;
            for t in top {
                gauge(
                    family.encode_family(&[("tenant", t.tenant.as_ref())])?,
                    u64::from(pick(t)),
                )?;
            }
            if !rest.is_empty() {
                gauge(
                    family.encode_family(&[("tenant", "other")])?,
                    sum(rest, pick),
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_statuses_and_counts_counted_on_several_threads_add_up_when_scraped() {
        let latency = Latency::default();
        let statuses = Arc::new(StatusCounts::default());
        let hits = PerThreadCounter::default();
        let ms = |n: f64| Duration::from_secs_f64(n / 1000.0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    // Exactly on a bound, just above it, and past the last one.
                    for d in [ms(0.1), ms(0.1001), ms(0.4), ms(5000.0)] {
                        latency.observe(d);
                    }
                    for status in [200, 200, 404, 599] {
                        statuses.count(status);
                        hits.inc();
                    }
                });
            }
        });
        let mut registry = Registry::default();
        registry.register("lat", "", latency.clone());
        registry.register_collector(Box::new(statuses.clone()));
        registry.register("hits", "", hits.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "lat_bucket{le=\"0.0001\"} 3",
            "lat_bucket{le=\"0.0002\"} 6",
            "lat_bucket{le=\"0.0004\"} 9",
            "lat_bucket{le=\"3.2768\"} 9",
            "lat_bucket{le=\"+Inf\"} 12",
            "lat_count 12",
            "tenantgate_requests_total{status=\"200\"} 6",
            "tenantgate_requests_total{status=\"404\"} 3",
            "tenantgate_requests_total{status=\"599\"} 3",
            "hits_total 12",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("lat_sum "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 3.0 * 5.0006001).abs() < 1e-6, "{sum}");
        assert_eq!(text.matches("tenantgate_requests_total{").count(), 3);
    }
}
