//! Where tenant documents live. A store answers the two questions of the request path — "which
//! tenant has this key?" and "does any active tenant list this origin?" — and, for the CLI,
//! manages the documents themselves. The [`crate::tenants::directory`] cache sits in front of every store.
//!
//! - [`file`]: a JSON array in a file, re-read when it changes (the zero-setup default).
//! - [`mongodb`]: a MongoDB collection, with change-stream invalidation where available.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc::UnboundedSender;

use crate::tenants::tenant::TenantRecord;

pub mod file;
pub mod mongodb;

/// A store could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Unreachable, unreadable, or refused the query; the text says which and why (no secrets).
    #[error("{0}")]
    Unavailable(String),
    /// No answer within the lookup timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A document to be written is invalid; the text names the field.
    #[error("{0}")]
    Invalid(String),
    /// Not asked: the budget of lookups for uncached keys is spent for the moment.
    #[error("too many lookups of uncached tenant keys right now")]
    Busy,
}

/// A change a store reports so the cache can drop what it holds before its TTL runs out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// One tenant's document changed, appeared or went away.
    Tenant(Arc<str>),
    /// Anything may have changed.
    All,
}

/// The lookups of the request path.
#[async_trait]
pub trait TenantStore: Send + Sync + 'static {
    /// Where the store is, for logs and `check` (never a password).
    fn describe(&self) -> String;

    /// The record of `key`, `None` when no document has that key.
    async fn find(&self, key: &str) -> Result<Option<TenantRecord>, StoreError>;

    /// Whether an active, valid tenant lists any of `candidates` (normalised allow-list entries,
    /// see [`crate::tenants::origin::index_candidates`]) in `allowedOrigins`.
    async fn origin_in_use(&self, candidates: &[String]) -> Result<bool, StoreError>;

    /// Ok when the store can answer lookups now (readiness, `check`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Starts reporting changes to `sink`, when the store can notice them. The default reports
    /// nothing and the cache relies on its TTL.
    fn watch(self: Arc<Self>, sink: UnboundedSender<Invalidation>) {
        let _ = sink;
    }
}

/// Document management for `tenantgate tenants …`. Documents are raw JSON so that fields this
/// version does not know survive a round trip.
#[async_trait]
pub trait TenantDocuments: Send + Sync {
    async fn list(&self) -> Result<Vec<serde_json::Value>, StoreError>;
    async fn get(&self, key: &str) -> Result<Option<serde_json::Value>, StoreError>;
    /// Inserts or replaces each document by `apiKey`, after validating all of them; returns how
    /// many were written.
    async fn upsert(&self, docs: Vec<serde_json::Value>) -> Result<usize, StoreError>;
    /// Removes the document of `key`; false when there was none.
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;
    /// Replaces the document whose `apiKey` is `key` by `doc` (which may have another
    /// `apiKey`: a key rotation), after validating it; false when there was none.
    async fn replace(&self, key: &str, doc: serde_json::Value) -> Result<bool, StoreError>;
}

/// The keys a document claims: its `apiKey` and every `retiredKeys[].key` (what is not a
/// string is left to validation).
pub fn claimed_keys(doc: &serde_json::Value) -> Vec<(&str, KeyRole)> {
    let mut keys: Vec<(&str, KeyRole)> = Vec::new();
    if let Some(k) = doc.get("apiKey").and_then(|k| k.as_str()) {
        keys.push((k, KeyRole::Current));
    }
    let retired = doc.get("retiredKeys").and_then(|r| r.as_array());
    for entry in retired.into_iter().flatten() {
        if let Some(k) = entry.get("key").and_then(|k| k.as_str()) {
            keys.push((k, KeyRole::Retired));
        }
    }
    keys
}

/// How a document holds a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    Current,
    Retired,
}

impl std::fmt::Display for KeyRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyRole::Current => "apiKey",
            KeyRole::Retired => "retired key",
        })
    }
}

/// Keys are unique across every `apiKey` and `retiredKeys[].key` of every tenant: the first
/// key two documents claim, named with both tenants.
pub fn check_unique_keys<'a>(
    docs: impl IntoIterator<Item = &'a serde_json::Value>,
) -> Result<(), String> {
    // Key → (document, its tenant, how it holds the key). Repeats within one document are
    // validation's business (that tenant is misconfigured), not a clash between tenants.
    let mut owners: std::collections::HashMap<&str, (usize, &str, KeyRole)> =
        std::collections::HashMap::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let tenant = doc.get("apiKey").and_then(|k| k.as_str()).unwrap_or("?");
        for (key, role) in claimed_keys(doc) {
            match owners.insert(key, (i, tenant, role)) {
                Some((j, other, other_role)) if j != i => {
                    return Err(clash(key, (other, other_role), (tenant, role)));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The refusal of a key two tenants claim.
pub fn clash(key: &str, first: (&str, KeyRole), second: (&str, KeyRole)) -> String {
    if first.1 == KeyRole::Current && second.1 == KeyRole::Current {
        return format!("duplicate apiKey {key:?}: two tenant documents have it");
    }
    format!(
        "key {key:?} belongs to two tenants: the {} of tenant {:?} and the {} of tenant {:?} \
         (keys are unique across apiKey and retiredKeys)",
        first.1, first.0, second.1, second.0
    )
}

/// Validates a document for writing: it must be a fully valid tenant, not merely parseable.
pub fn validate_for_write(doc: &serde_json::Value) -> Result<Arc<str>, StoreError> {
    match TenantRecord::from_json(doc.clone()) {
        Ok(TenantRecord::Valid(t)) => Ok(t.key.clone()),
        Ok(TenantRecord::Misconfigured { key, reason, .. }) => {
            Err(StoreError::Invalid(format!("tenant {key:?}: {reason}")))
        }
        Err(reason) => Err(StoreError::Invalid(reason)),
    }
}
