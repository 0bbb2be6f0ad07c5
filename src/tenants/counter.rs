//! A counter for the request path's hot counts (cache hits, stale answers), summed when scraped.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::{MetricType, TypedMetric};
use thread_local::ThreadLocal;

/// A counter counted per thread (like `telemetry::metrics::Latency`) and summed when scraped, for the counts the
/// request path adds to on every request (a shared atomic is one cache line all connection
/// threads write).
#[derive(Debug, Clone, Default)]
pub struct PerThreadCounter {
    shards: Arc<ThreadLocal<AtomicU64>>,
}

impl PerThreadCounter {
    pub fn inc(&self) {
        self.shards.get_or_default().fetch_add(1, Relaxed);
    }

    /// The sum over all threads.
    pub fn get(&self) -> u64 {
        self.shards.iter().map(|n| n.load(Relaxed)).sum()
    }
}

impl TypedMetric for PerThreadCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for PerThreadCounter {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        ConstCounter::new(self.get()).encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}
