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
}

/// Validates a document for writing: it must be a fully valid tenant, not merely parseable.
pub fn validate_for_write(doc: &serde_json::Value) -> Result<Arc<str>, StoreError> {
    match TenantRecord::from_json(doc.clone()) {
        Ok(TenantRecord::Valid(t)) => Ok(t.key.clone()),
        Ok(TenantRecord::Misconfigured { key, reason }) => {
            Err(StoreError::Invalid(format!("tenant {key:?}: {reason}")))
        }
        Err(reason) => Err(StoreError::Invalid(reason)),
    }
}
