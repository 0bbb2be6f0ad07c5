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

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::directory::Directory;
use crate::limit::Busy;

/// Latency buckets: 0.1 ms .. ~3.3 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<[(&'static str, u16); 1], Counter>,
    /// The family's counter of each status, resolved once: the request path then costs one
    /// atomic load and one add instead of a hashed, locked family lookup.
    by_status: Box<[OnceLock<Counter>]>,
    rejections: Family<[(&'static str, &'static str); 1], Counter>,
    duration: Histogram,
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
        upstream_response: &Histogram,
        top_tenants: usize,
    ) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::default();
        let rejections = Family::default();
        let duration = latency_histogram();
        registry.register(
            "tenantgate_requests",
            "Requests answered, by HTTP status",
            requests.clone(),
        );
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
            by_status: (0..600).map(|_| OnceLock::new()).collect(),
            rejections,
            duration,
        }
    }

    /// Counts one answered request.
    pub fn observe(&self, status: u16, rejection: Option<&'static str>, elapsed: Duration) {
        match self.by_status.get(usize::from(status)) {
            Some(slot) => slot
                .get_or_init(|| self.requests.get_or_create(&[("status", status)]).clone())
                .inc(),
            None => self.requests.get_or_create(&[("status", status)]).inc(),
        };
        if let Some(code) = rejection {
            self.rejections.get_or_create(&[("code", code)]).inc();
        }
        self.duration.observe(elapsed.as_secs_f64());
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
