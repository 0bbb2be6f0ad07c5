//! Writes usage down: every `[cluster] flush_ms` this task takes each tenant's [`Counts`]
//! (leaving zeros), files them under the current UTC hour, and writes them — to MongoDB as one
//! `update` command of `$inc` upserts for every tenant-hour (chunks of [`BATCH`]), or appended
//! as JSON lines to a file. It runs apart from the cluster's heartbeat, so a slow write never
//! delays one. What cannot be written waits in memory ([`Pending`], bounded by `[usage]
//! max_pending` tenant-hours) for the next flush. It also forgets the counters of tenants
//! nothing holds any more, once their counts are taken.
//!
//! [`Counts`]: crate::tenants::usage::Counts

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::{Collection, Database};

use crate::tenants::cluster::Traffic;
use crate::tenants::quota;
use crate::tenants::slots::SlotRegistry;
use crate::tenants::usage::{self, HourUsage, Pending};

/// Tenant-hours per `update` command.
const BATCH: usize = 500;

/// `[usage]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageSettings {
    pub enabled: bool,
    /// MongoDB store: the collection.
    pub collection: String,
    /// File store: the JSON-lines file.
    pub path: Option<PathBuf>,
    /// Tenant-hours kept in memory while the store is away.
    pub max_pending: usize,
}

/// Where usage goes.
enum Sink {
    Mongo { db: Database, collection: String },
    File(PathBuf),
    Off,
}

/// The usage task (see the module documentation).
pub struct UsageWriter {
    sink: Sink,
    max_pending: usize,
    every: Duration,
    registry: Arc<SlotRegistry>,
    pending: Pending,
    /// Write failures are logged once per outage.
    failing: bool,
    traffic: Traffic,
}

impl UsageWriter {
    /// Usage of the MongoDB store's database `db`.
    pub fn mongo(
        settings: &UsageSettings,
        every: Duration,
        registry: Arc<SlotRegistry>,
        db: Database,
        traffic: Traffic,
    ) -> UsageWriter {
        let sink = match settings.enabled {
            true => Sink::Mongo {
                db,
                collection: settings.collection.clone(),
            },
            false => Sink::Off,
        };
        UsageWriter::new(sink, settings, every, registry, traffic)
    }

    /// Usage of the file store: the JSON-lines file.
    pub fn file(
        settings: &UsageSettings,
        every: Duration,
        registry: Arc<SlotRegistry>,
        traffic: Traffic,
    ) -> UsageWriter {
        let sink = match (&settings.path, settings.enabled) {
            (Some(path), true) => Sink::File(path.clone()),
            _ => Sink::Off,
        };
        UsageWriter::new(sink, settings, every, registry, traffic)
    }

    fn new(
        sink: Sink,
        settings: &UsageSettings,
        every: Duration,
        registry: Arc<SlotRegistry>,
        traffic: Traffic,
    ) -> UsageWriter {
        UsageWriter {
            sink,
            max_pending: settings.max_pending,
            every,
            registry,
            pending: Pending::default(),
            failing: false,
            traffic,
        }
    }

    /// Flushes every `[cluster] flush_ms` until `stop` resolves, then once more.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush().await,
                _ = &mut stop => break,
            }
        }
        self.flush().await;
    }

    async fn flush(&mut self) {
        let hour = usage::hour_of(SystemTime::now());
        let metering = !matches!(self.sink, Sink::Off);
        for (key, slots) in self.registry.all() {
            if let Some(u) = slots.usage.take(&key, hour) {
                if metering {
                    self.pending.add(u, self.max_pending);
                }
            }
        }
        self.write().await;
        // A counter nothing holds any more goes once its counts are taken, unless it counts
        // today's quota (forgetting would give the tenant its day again).
        let today = quota::day_of(SystemTime::now());
        self.registry.forget_idle(|s| {
            s.in_flight() == 0 && s.quota.unflushed().is_empty() && !s.quota.counts_on(today)
        });
    }

    async fn write(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let records = self.pending.take();
        let failed = match &self.sink {
            Sink::Mongo { db, collection } => {
                let mut failed = Vec::new();
                let mut error = None;
                let mut chunks = records.chunks(BATCH);
                for chunk in chunks.by_ref() {
                    match write_batch(db, collection, chunk).await {
                        Ok(bytes) => self.traffic.wrote(chunk.len() as u64, bytes),
                        Err(e) => {
                            failed.extend_from_slice(chunk);
                            error = Some(e);
                            break;
                        }
                    }
                }
                for chunk in chunks {
                    failed.extend_from_slice(chunk);
                }
                error.map(|e| (failed, e))
            }
            Sink::File(path) => {
                let mut text = String::new();
                for u in &records {
                    if let Ok(line) = serde_json::to_string(u) {
                        text.push_str(&line);
                        text.push('\n');
                    }
                }
                append(path, text.as_bytes())
                    .await
                    .err()
                    .map(|e| (records, format!("{}: {e}", path.display())))
            }
            Sink::Off => None,
        };
        match failed {
            Some((records, error)) => {
                if !self.failing {
                    tracing::warn!(%error, "usage not written; the counts wait in memory for the next flush");
                    self.failing = true;
                }
                for u in records {
                    self.pending.add(u, self.max_pending);
                }
            }
            None if self.failing => {
                tracing::info!("usage written again");
                self.failing = false;
            }
            None => {}
        }
        if self.pending.dropped > 0 {
            tracing::error!(
                dropped = self.pending.dropped,
                "usage records dropped: the store stayed away longer than [usage] max_pending tenant-hours allow"
            );
            self.pending.dropped = 0;
        }
    }
}

async fn append(path: &PathBuf, bytes: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
    file.write_all(bytes).await
}

/// The `$inc` upsert of one tenant-hour (`_id` = `tenant/hour`).
fn update_of(u: &HourUsage) -> Document {
    let mut inc = Document::new();
    for (k, n) in &u.requests {
        inc.insert(format!("requests.{k}"), *n as i64);
    }
    for (k, n) in &u.rejections {
        inc.insert(format!("rejections.{k}"), *n as i64);
    }
    inc.insert("bytesIn", u.bytes_in as i64);
    inc.insert("bytesOut", u.bytes_out as i64);
    doc! {
        "q": {"_id": format!("{}/{}", u.tenant, u.hour)},
        "u": {"$inc": inc, "$set": {"tenant": &u.tenant, "hour": &u.hour}},
        "upsert": true,
    }
}

/// One `update` command upserting `records`; the BSON bytes sent. Any write error fails the
/// whole batch (the `$inc`s that did apply would be counted twice on a retry, so a partial
/// failure is logged with its count and the batch is not retried).
async fn write_batch(
    db: &Database,
    collection: &str,
    records: &[HourUsage],
) -> Result<u64, String> {
    let updates: Vec<Document> = records.iter().map(update_of).collect();
    let command = doc! {"update": collection, "updates": updates, "ordered": false};
    let bytes = mongodb::bson::to_vec(&command).map_or(0, |v| v.len() as u64);
    let reply = db.run_command(command).await.map_err(|e| e.to_string())?;
    if let Ok(errors) = reply.get_array("writeErrors") {
        tracing::error!(
            failed = errors.len(),
            of = records.len(),
            "usage: some tenant-hours were not written (the rest were; not retried, so none is counted twice)"
        );
    }
    Ok(bytes)
}

/// Reads usage records back from MongoDB (for `tenantgate usage`).
pub async fn read_usage(
    coll: &Collection<Document>,
    tenant: Option<&str>,
) -> Result<Vec<HourUsage>, mongodb::error::Error> {
    let filter = match tenant {
        Some(t) => doc! {"tenant": t},
        None => doc! {},
    };
    let docs: Vec<Document> = coll.find(filter).await?.try_collect().await?;
    let number = crate::tenants::cluster::count;
    let counts = |d: &Document, k: &str| -> BTreeMap<String, u64> {
        d.get_document(k)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), number(v))).collect())
            .unwrap_or_default()
    };
    Ok(docs
        .iter()
        .filter_map(|d| {
            Some(HourUsage {
                tenant: d.get_str("tenant").ok()?.to_string(),
                hour: d.get_str("hour").ok()?.to_string(),
                requests: counts(d, "requests"),
                rejections: counts(d, "rejections"),
                bytes_in: d.get("bytesIn").map_or(0, number),
                bytes_out: d.get("bytesOut").map_or(0, number),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_hour_is_one_inc_upsert_by_tenant_and_hour() {
        let mut u = HourUsage::new("tnt_a", 491_000);
        u.requests.insert("2xx".into(), 3);
        u.rejections.insert("tenant_rate_exceeded".into(), 1);
        u.bytes_out = 10;
        let d = update_of(&u);
        assert_eq!(
            d.get_document("q").unwrap().get_str("_id").unwrap(),
            "tnt_a/2026-01-05T08:00:00Z"
        );
        let inc = d.get_document("u").unwrap().get_document("$inc").unwrap();
        assert_eq!(inc.get_i64("requests.2xx").unwrap(), 3);
        assert_eq!(inc.get_i64("rejections.tenant_rate_exceeded").unwrap(), 1);
        assert_eq!(inc.get_i64("bytesOut").unwrap(), 10);
        assert!(d.get_bool("upsert").unwrap());
    }
}
