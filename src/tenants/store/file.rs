//! The file store: a JSON array of tenant documents.
//!
//! The whole file is parsed into one immutable [`Snapshot`] published through an `ArcSwap`, so
//! lookups never lock. A poller notices edits (modification time, size, inode: this also sees
//! the atomic rename of editors and Kubernetes ConfigMap updates), re-parses off the async
//! workers, and on success swaps the snapshot and tells the cache which tenants changed. A file
//! that fails to parse, or that has two documents with one `apiKey`, keeps the previous tenants
//! and logs one error naming the file and the problem.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use tokio::sync::mpsc::UnboundedSender;

use super::{
    check_unique_keys, claimed_keys, validate_for_write, Invalidation, KeyRole, StoreError,
    TenantDocuments, TenantStore,
};
use crate::tenants::tenant::TenantRecord;

/// The parsed content of the file at one moment.
#[derive(Debug, Default)]
struct Snapshot {
    tenants: HashMap<Arc<str>, TenantRecord>,
    /// Allow-list entries (normal form) of active, valid tenants: the preflight index.
    origins: HashSet<String>,
}

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

pub(crate) fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let meta = std::fs::metadata(path)?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode,
    })
}

/// Tenants from a JSON file, reloaded when it changes.
pub struct FileStore {
    path: PathBuf,
    poll_interval: Duration,
    snapshot: ArcSwap<Snapshot>,
    /// Why the file could not be read the first time; `None` once a version has loaded.
    not_loaded: ArcSwap<Option<String>>,
}

impl FileStore {
    /// Reads the file now. A missing or broken file does not fail: the store reports itself
    /// unavailable (503 `store_unavailable`, `/readyz` 503) until a good version appears.
    pub fn open(path: impl Into<PathBuf>, poll_interval: Duration) -> Arc<FileStore> {
        let path = path.into();
        let store = FileStore {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            not_loaded: ArcSwap::from_pointee(None),
            poll_interval,
            path,
        };
        match load(&store.path) {
            Ok(snapshot) => {
                tracing::info!(path = %store.path.display(), tenants = snapshot.tenants.len(), "loaded tenants file");
                store.snapshot.store(Arc::new(snapshot));
            }
            Err(problem) => {
                tracing::error!(path = %store.path.display(), %problem, "cannot load the tenants file; no tenant can be served until it is fixed");
                store.not_loaded.store(Arc::new(Some(problem)));
            }
        }
        Arc::new(store)
    }

    fn unavailable(&self) -> Option<StoreError> {
        self.not_loaded
            .load()
            .as_ref()
            .as_ref()
            .map(|p| StoreError::Unavailable(format!("{}: {p}", self.path.display())))
    }

    /// Re-reads the file if its stamp changed since `last`; returns the new stamp.
    async fn poll_once(
        self: &Arc<Self>,
        last: Option<Stamp>,
        sink: &UnboundedSender<Invalidation>,
    ) -> Option<Stamp> {
        let path = self.path.clone();
        let now = tokio::task::spawn_blocking(move || stamp(&path).ok())
            .await
            .ok()
            .flatten();
        if now.is_none() || now == last {
            return now.or(last);
        }
        let path = self.path.clone();
        let loaded = tokio::task::spawn_blocking(move || load(&path)).await;
        match loaded {
            Ok(Ok(new)) => {
                let old = self.snapshot.swap(Arc::new(new));
                let new = self.snapshot.load();
                let changed = diff(&old, &new);
                self.not_loaded.store(Arc::new(None));
                tracing::info!(path = %self.path.display(), tenants = new.tenants.len(), changed = changed.len(), "reloaded tenants file");
                for key in changed {
                    let _ = sink.send(Invalidation::Tenant(key));
                }
            }
            Ok(Err(problem)) => {
                tracing::error!(path = %self.path.display(), %problem, kept = self.snapshot.load().tenants.len(), "tenants file not reloaded; keeping the previous tenants");
            }
            Err(e) => tracing::error!(error = %e, "tenants file reload task failed"),
        }
        now
    }
}

/// Keys whose record differs between two snapshots (added, removed or changed).
fn diff(old: &Snapshot, new: &Snapshot) -> Vec<Arc<str>> {
    let mut changed: Vec<Arc<str>> = new
        .tenants
        .iter()
        .filter(|(k, r)| old.tenants.get(*k) != Some(*r))
        .map(|(k, _)| k.clone())
        .collect();
    changed.extend(
        old.tenants
            .keys()
            .filter(|k| !new.tenants.contains_key(*k))
            .cloned(),
    );
    changed
}

/// Reads and parses the file. Documents that fail validation become misconfigured tenants;
/// documents without a usable `apiKey` are skipped with a warning; duplicate keys reject the
/// whole file.
fn load(path: &Path) -> Result<Snapshot, String> {
    let docs = read_documents(path)?;
    check_unique_keys(&docs)?;
    let mut snapshot = Snapshot::default();
    for (i, doc) in docs.into_iter().enumerate() {
        let retired: Vec<Arc<str>> = claimed_keys(&doc)
            .into_iter()
            .filter(|(_, role)| *role == KeyRole::Retired)
            .map(|(k, _)| Arc::from(k))
            .collect();
        let record = match TenantRecord::from_json(doc) {
            Ok(r) => r,
            Err(reason) => {
                tracing::warn!(path = %path.display(), index = i, %reason, "skipping a tenant document");
                continue;
            }
        };
        let key = record.key().clone();
        // A retired key finds its tenant too (the directory tells the two apart).
        for old in retired {
            snapshot.tenants.insert(old, record.clone());
        }
        match &record {
            TenantRecord::Valid(t) if t.active => snapshot.origins.extend(t.origins.index_keys()),
            TenantRecord::Valid(_) => {}
            TenantRecord::Misconfigured { reason, .. } => {
                tracing::warn!(path = %path.display(), tenant = %key, %reason, "tenant document is invalid; the tenant answers 503 tenant_misconfigured");
            }
        }
        snapshot.tenants.insert(key, record);
    }
    Ok(snapshot)
}

/// The raw documents of the file.
fn read_documents(path: &Path) -> Result<Vec<serde_json::Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("not a JSON array of tenant documents: {e}"))
}

/// Writes the documents next to the file and renames over it, so readers (the gateway's poller)
/// never see half a file.
fn write_documents(path: &Path, docs: &[serde_json::Value]) -> Result<(), String> {
    let mut text = serde_json::to_string_pretty(docs).map_err(|e| e.to_string())?;
    text.push('\n');
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
}

#[async_trait]
impl TenantStore for FileStore {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    async fn find(&self, key: &str) -> Result<Option<TenantRecord>, StoreError> {
        if let Some(e) = self.unavailable() {
            return Err(e);
        }
        Ok(self.snapshot.load().tenants.get(key).cloned())
    }

    async fn origin_in_use(&self, candidates: &[String]) -> Result<bool, StoreError> {
        if let Some(e) = self.unavailable() {
            return Err(e);
        }
        let snapshot = self.snapshot.load();
        Ok(candidates.iter().any(|c| snapshot.origins.contains(c)))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.unavailable().map_or(Ok(()), Err)
    }

    fn watch(self: Arc<Self>, sink: UnboundedSender<Invalidation>) {
        tokio::spawn(async move {
            let mut last = stamp(&self.path).ok();
            let mut tick = tokio::time::interval(self.poll_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if sink.is_closed() {
                    return;
                }
                last = self.poll_once(last, &sink).await;
            }
        });
    }
}

/// Document management on the file (for the CLI; each call reads and rewrites the file).
pub struct FileDocuments {
    path: PathBuf,
}

impl FileDocuments {
    pub fn new(path: impl Into<PathBuf>) -> FileDocuments {
        FileDocuments { path: path.into() }
    }

    fn read(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        if !self.path.exists() {
            return Ok(Vec::new());
        }
        read_documents(&self.path)
            .map_err(|p| StoreError::Unavailable(format!("{}: {p}", self.path.display())))
    }

    fn write(&self, docs: &[serde_json::Value]) -> Result<(), StoreError> {
        write_documents(&self.path, docs).map_err(StoreError::Unavailable)
    }
}

fn key_of(doc: &serde_json::Value) -> Option<&str> {
    doc.get("apiKey").and_then(|k| k.as_str())
}

#[async_trait]
impl TenantDocuments for FileDocuments {
    async fn list(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        self.read()
    }

    async fn get(&self, key: &str) -> Result<Option<serde_json::Value>, StoreError> {
        Ok(self.read()?.into_iter().find(|d| key_of(d) == Some(key)))
    }

    async fn upsert(&self, new: Vec<serde_json::Value>) -> Result<usize, StoreError> {
        let mut seen = HashSet::new();
        for doc in &new {
            let key = validate_for_write(doc)?;
            if !seen.insert(key.clone()) {
                return Err(StoreError::Invalid(format!(
                    "apiKey {key:?} appears twice in the input"
                )));
            }
        }
        let mut docs = self.read()?;
        for doc in new.iter() {
            match docs.iter_mut().find(|d| key_of(d) == key_of(doc)) {
                Some(slot) => *slot = doc.clone(),
                None => docs.push(doc.clone()),
            }
        }
        check_unique_keys(&docs).map_err(StoreError::Invalid)?;
        self.write(&docs)?;
        Ok(new.len())
    }

    async fn replace(&self, key: &str, doc: serde_json::Value) -> Result<bool, StoreError> {
        validate_for_write(&doc)?;
        let mut docs = self.read()?;
        let Some(slot) = docs.iter_mut().find(|d| key_of(d) == Some(key)) else {
            return Ok(false);
        };
        *slot = doc;
        check_unique_keys(&docs).map_err(StoreError::Invalid)?;
        self.write(&docs)?;
        Ok(true)
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let mut docs = self.read()?;
        let before = docs.len();
        docs.retain(|d| key_of(d) != Some(key));
        if docs.len() == before {
            return Ok(false);
        }
        self.write(&docs)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(key: &str, origin: &str, active: bool) -> serde_json::Value {
        json!({"apiKey": key, "allowedOrigins": [origin], "isActive": active, "maxConcurrentConnections": 3,
               "providerConfig": {"resources": {"endpoint": "https://ep", "region": "eu"}}})
    }

    fn write(path: &Path, docs: &[serde_json::Value]) {
        std::fs::write(path, serde_json::to_string(docs).unwrap()).unwrap();
    }

    #[tokio::test]
    async fn finds_tenants_and_indexes_active_origins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        let mut bad = doc("tnt_bad", "https://bad.com", true);
        bad["maxConcurrentConnections"] = json!(0);
        write(
            &path,
            &[
                doc("tnt_a", "https://*.a.com", true),
                doc("tnt_off", "https://off.com", false),
                bad,
            ],
        );
        let store = FileStore::open(&path, Duration::from_secs(60));
        assert!(matches!(
            store.find("tnt_a").await.unwrap(),
            Some(TenantRecord::Valid(_))
        ));
        assert!(matches!(
            store.find("tnt_bad").await.unwrap(),
            Some(TenantRecord::Misconfigured { .. })
        ));
        assert_eq!(store.find("tnt_zz").await.unwrap(), None);
        let has = |o: &str| crate::tenants::origin::index_candidates(o).unwrap();
        assert!(store.origin_in_use(&has("https://x.a.com")).await.unwrap());
        assert!(!store.origin_in_use(&has("https://a.com")).await.unwrap());
        assert!(
            !store.origin_in_use(&has("https://off.com")).await.unwrap(),
            "inactive tenants do not open preflights"
        );
        assert!(!store.origin_in_use(&has("https://bad.com")).await.unwrap());
    }

    #[tokio::test]
    async fn duplicate_keys_and_broken_json_are_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        write(
            &path,
            &[
                doc("tnt_a", "https://a.com", true),
                doc("tnt_a", "https://b.com", true),
            ],
        );
        let err = load(&path).unwrap_err();
        assert!(err.contains("duplicate apiKey \"tnt_a\""), "{err}");
        let mut b = doc("tnt_b", "https://b.com", true);
        b["retiredKeys"] = json!([{"key": "tnt_a", "until": "2030-01-01T00:00:00Z"}]);
        write(&path, &[doc("tnt_a", "https://a.com", true), b]);
        let err = load(&path).unwrap_err();
        assert!(
            err.contains("\"tnt_a\"")
                && err.contains("apiKey of tenant \"tnt_a\"")
                && err.contains("retired key of tenant \"tnt_b\""),
            "{err}"
        );
        std::fs::write(&path, "[{").unwrap();
        assert!(load(&path).unwrap_err().contains("not a JSON array"));
        let store = FileStore::open(dir.path().join("missing.json"), Duration::from_secs(60));
        assert!(matches!(
            store.ping().await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(store.find("tnt_a").await.is_err());
    }

    #[tokio::test]
    async fn documents_round_trip_with_unknown_fields_and_refuse_bad_writes() {
        let dir = tempfile::tempdir().unwrap();
        let docs = FileDocuments::new(dir.path().join("t.json"));
        let mut a = doc("tnt_a", "https://a.com", true);
        a["notes"] = json!("kept");
        assert_eq!(
            docs.upsert(vec![a.clone(), doc("tnt_b", "https://b.com", true)])
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            docs.upsert(vec![doc("tnt_b", "https://b2.com", false)])
                .await
                .unwrap(),
            1
        );
        let all = docs.list().await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(docs.get("tnt_a").await.unwrap().unwrap()["notes"], "kept");
        assert_eq!(docs.get("tnt_b").await.unwrap().unwrap()["isActive"], false);
        let mut bad = doc("tnt_c", "https://c.com", true);
        bad["allowedOrigins"] = json!(["not an origin"]);
        let err = docs.upsert(vec![bad]).await.unwrap_err();
        assert!(err.to_string().contains("allowedOrigins"), "{err}");
        assert_eq!(
            docs.list().await.unwrap().len(),
            2,
            "nothing written on a refused upsert"
        );
        assert!(docs.delete("tnt_a").await.unwrap());
        assert!(!docs.delete("tnt_a").await.unwrap());
    }
}
