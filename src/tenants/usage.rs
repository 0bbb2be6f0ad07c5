//! Usage metering: what each tenant did, per UTC hour — requests by status class, rejections by
//! code, bytes in and out — for billing and capacity planning.
//!
//! The request path adds to a tenant's [`Counts`] (atomics next to its slots); the flush in the
//! background takes them every `[cluster] flush_ms`, files them under the hour it runs in, and
//! writes them with batched `$inc` upserts (MongoDB, `[usage] collection`) or appends them as
//! JSON lines (`[usage] path`). What cannot be written waits in memory ([`Pending`], bounded)
//! and goes with the next flush. `tenantgate usage` reads them back ([`Report`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The rejection codes metered per tenant (those a known tenant's request can get).
pub const REJECTIONS: [&str; 12] = [
    "tenant_inactive",
    "origin_missing",
    "origin_not_allowed",
    "tenant_concurrency_exceeded",
    "tenant_rate_exceeded",
    "tenant_quota_exhausted",
    "body_too_large",
    "headers_too_large",
    "bad_request",
    "request_timeout",
    "upstream_unavailable",
    "upstream_timeout",
];

/// Status classes, `1xx` to `5xx`.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One tenant's counts since the last flush.
#[derive(Debug, Default)]
pub struct Counts {
    by_class: [AtomicU64; 5],
    rejections: [AtomicU64; REJECTIONS.len()],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Counts {
    /// One response of `status`; `code` when the gateway refused the request itself.
    pub fn request(&self, status: u16, code: Option<&str>) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].fetch_add(1, Relaxed);
        if let Some(code) = code {
            self.rejected(code);
        }
    }

    #[cold]
    fn rejected(&self, code: &str) {
        if let Some(i) = REJECTIONS.iter().position(|c| *c == code) {
            self.rejections[i].fetch_add(1, Relaxed);
        }
    }

    /// Request body bytes received from the client.
    pub fn bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Relaxed);
    }

    /// Response body bytes sent to the client.
    pub fn bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Relaxed);
    }

    /// Takes the counts (leaving zeros) as a record of `tenant` for `hour`; `None` when all are
    /// zero.
    pub fn take(&self, tenant: &str, hour: u32) -> Option<HourUsage> {
        let mut usage = HourUsage::new(tenant, hour);
        for (name, n) in CLASSES.iter().zip(&self.by_class) {
            match n.swap(0, Relaxed) {
                0 => {}
                n => {
                    usage.requests.insert(name.to_string(), n);
                }
            }
        }
        for (name, n) in REJECTIONS.iter().zip(&self.rejections) {
            match n.swap(0, Relaxed) {
                0 => {}
                n => {
                    usage.rejections.insert(name.to_string(), n);
                }
            }
        }
        usage.bytes_in = self.bytes_in.swap(0, Relaxed);
        usage.bytes_out = self.bytes_out.swap(0, Relaxed);
        (!usage.is_empty()).then_some(usage)
    }
}

/// The UTC hour (hours since 1970-01-01T00:00Z) at `now`.
pub fn hour_of(now: SystemTime) -> u32 {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (secs / 3_600) as u32
}

/// An hour as RFC 3339 (`2026-12-05T21:00:00Z`).
pub fn hour_text(hour: u32) -> String {
    crate::tenants::tenant::format_instant(
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(hour) * 3_600),
    )
}

/// One tenant's usage in one UTC hour (a line of the JSON-lines file, a document of the usage
/// collection without its `_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HourUsage {
    pub tenant: String,
    /// The hour's start, RFC 3339 (`2026-12-05T21:00:00Z`).
    pub hour: String,
    /// Responses by status class (`2xx`, …), the gateway's own refusals included.
    #[serde(default)]
    pub requests: BTreeMap<String, u64>,
    /// The gateway's refusals by code.
    #[serde(default)]
    pub rejections: BTreeMap<String, u64>,
    #[serde(default)]
    pub bytes_in: u64,
    #[serde(default)]
    pub bytes_out: u64,
}

impl HourUsage {
    pub fn new(tenant: &str, hour: u32) -> HourUsage {
        HourUsage {
            tenant: tenant.to_string(),
            hour: hour_text(hour),
            requests: BTreeMap::new(),
            rejections: BTreeMap::new(),
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.requests.is_empty()
            && self.rejections.is_empty()
            && self.bytes_in == 0
            && self.bytes_out == 0
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &HourUsage) {
        for (k, n) in &other.requests {
            *self.requests.entry(k.clone()).or_default() += n;
        }
        for (k, n) in &other.rejections {
            *self.rejections.entry(k.clone()).or_default() += n;
        }
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
    }

    /// All responses.
    pub fn total(&self) -> u64 {
        self.requests.values().sum()
    }
}

/// Counts taken but not yet written, by tenant and hour. Bounded: past `max` records the
/// oldest hours are dropped (and counted, so the loss is logged), never the request path
/// blocked.
#[derive(Debug, Default)]
pub struct Pending {
    records: BTreeMap<(String, String), HourUsage>,
    /// Records dropped because the store stayed away too long.
    pub dropped: u64,
}

impl Pending {
    /// Adds a record, merging it with one of the same tenant and hour.
    pub fn add(&mut self, usage: HourUsage, max: usize) {
        let key = (usage.hour.clone(), usage.tenant.clone());
        match self.records.get_mut(&key) {
            Some(kept) => kept.add(&usage),
            None => {
                self.records.insert(key, usage);
            }
        }
        while self.records.len() > max {
            self.records.pop_first();
            self.dropped += 1;
        }
    }

    /// Everything waiting, emptying it (what fails to be written is added back).
    pub fn take(&mut self) -> Vec<HourUsage> {
        std::mem::take(&mut self.records).into_values().collect()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Usage records summed by tenant and hour, for `tenantgate usage`.
#[derive(Debug, Default)]
pub struct Report {
    pub rows: BTreeMap<(String, String), HourUsage>,
}

impl Report {
    pub fn add(&mut self, usage: HourUsage) {
        match self
            .rows
            .get_mut(&(usage.tenant.clone(), usage.hour.clone()))
        {
            Some(row) => row.add(&usage),
            None => {
                self.rows
                    .insert((usage.tenant.clone(), usage.hour.clone()), usage);
            }
        }
    }

    /// As a JSON array, one object per tenant and hour.
    pub fn json(&self) -> String {
        let rows: Vec<&HourUsage> = self.rows.values().collect();
        serde_json::to_string_pretty(&rows).unwrap_or_else(|_| "[]".into())
    }

    /// As CSV: one row per tenant and hour, a column per status class and per rejection code.
    pub fn csv(&self) -> String {
        let mut out = String::from("tenant,hour,requests");
        for c in CLASSES {
            out.push_str(&format!(",requests_{c}"));
        }
        for r in REJECTIONS {
            out.push_str(&format!(",{r}"));
        }
        out.push_str(",bytes_in,bytes_out\n");
        for u in self.rows.values() {
            out.push_str(&format!("{},{},{}", u.tenant, u.hour, u.total()));
            for c in CLASSES {
                out.push_str(&format!(",{}", u.requests.get(c).unwrap_or(&0)));
            }
            for r in REJECTIONS {
                out.push_str(&format!(",{}", u.rejections.get(r).unwrap_or(&0)));
            }
            out.push_str(&format!(",{},{}\n", u.bytes_in, u.bytes_out));
        }
        out
    }

    /// As a table for people: the busiest columns only (JSON and CSV have every count).
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<24} {:<20} {:>10} {:>10} {:>10} {:>10} {:>10} {:>14} {:>14}\n",
            "TENANT",
            "HOUR (UTC)",
            "REQUESTS",
            "2XX",
            "4XX",
            "5XX",
            "REJECTED",
            "BYTES IN",
            "BYTES OUT"
        );
        for u in self.rows.values() {
            let get = |c: &str| *u.requests.get(c).unwrap_or(&0);
            out.push_str(&format!(
                "{:<24} {:<20} {:>10} {:>10} {:>10} {:>10} {:>10} {:>14} {:>14}\n",
                u.tenant,
                u.hour,
                u.total(),
                get("2xx"),
                get("4xx"),
                get("5xx"),
                u.rejections.values().sum::<u64>(),
                u.bytes_in,
                u.bytes_out
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_taken_once_by_class_and_code() {
        let c = Counts::default();
        c.request(200, None);
        c.request(204, None);
        c.request(429, Some("tenant_rate_exceeded"));
        c.request(502, Some("upstream_unavailable"));
        c.bytes_in(10);
        c.bytes_out(300);
        let u = c.take("tnt_a", 491_000).unwrap();
        assert_eq!(u.requests["2xx"], 2);
        assert_eq!(u.requests["4xx"], 1);
        assert_eq!(u.rejections["tenant_rate_exceeded"], 1);
        assert_eq!(u.rejections["upstream_unavailable"], 1);
        assert_eq!((u.bytes_in, u.bytes_out, u.total()), (10, 300, 4));
        assert_eq!(u.hour, "2026-01-05T08:00:00Z");
        assert!(c.take("tnt_a", 491_000).is_none(), "taken once");
    }

    #[test]
    fn pending_merges_by_tenant_and_hour_and_drops_the_oldest_past_its_bound() {
        let mut p = Pending::default();
        let mut a = HourUsage::new("tnt_a", 10);
        a.requests.insert("2xx".into(), 1);
        p.add(a.clone(), 2);
        p.add(a.clone(), 2);
        p.add(HourUsage::new("tnt_a", 11), 2);
        assert_eq!(p.len(), 2);
        p.add(HourUsage::new("tnt_b", 12), 2);
        assert_eq!((p.len(), p.dropped), (2, 1));
        let kept = p.take();
        assert!(kept.iter().all(|u| u.hour != hour_text(10)));
    }

    #[test]
    fn reports_sum_rows_and_render_csv_with_every_column() {
        let mut r = Report::default();
        let mut a = HourUsage::new("tnt_a", 10);
        a.requests.insert("2xx".into(), 2);
        a.rejections.insert("tenant_quota_exhausted".into(), 1);
        a.requests.insert("4xx".into(), 1);
        r.add(a.clone());
        r.add(a);
        let csv = r.csv();
        let mut lines = csv.lines();
        let head: Vec<&str> = lines.next().unwrap().split(',').collect();
        let row: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(head.len(), row.len());
        let col = |name: &str| row[head.iter().position(|h| *h == name).unwrap()];
        assert_eq!(col("requests"), "6");
        assert_eq!(col("tenant_quota_exhausted"), "2");
        assert!(r.table().contains("tnt_a"));
    }
}
