//! The MongoDB store: one document per tenant in a collection (official driver).
//!
//! - Lookups: `find_one({$or: [{apiKey}, {retiredKeys: {$elemMatch: {key}}}]})` for a key (a
//!   current or a retired one); `{allowedOrigins: {$in: candidates}, isActive: true}` for a
//!   preflight origin (`$in` and `$elemMatch` match array fields on every server, see
//!   `MONGODB_IN_TESTS.md`). The [`crate::tenants::directory`] cache sits in front of both.
//! - Start-up: the client connects lazily, so a database that is down does not stop the gateway
//!   (lookups fail with 503 until it is back). A background task creates the indexes (unique
//!   `apiKey`, `allowedOrigins`, `retiredKeys.key`, unique partial `tenantKeys`), retrying until
//!   the database answers.
//! - Keys are unique across `apiKey` and `retiredKeys.key` of every document: writes check for a
//!   clash (naming both tenants) and store every key of the document in `tenantKeys`, whose
//!   unique index refuses a racing writer; `tenantKeys` is stripped when documents are read.
//! - Changes: a change-stream watcher invalidates changed tenants at once and resumes after
//!   errors; on deployments without change streams (standalone servers) it says so once and the
//!   cache TTL applies. The watcher logic runs over the [`ChangeFeed`] seam so tests can feed it
//!   events.
//! - Secrets: the URI is never logged or printed; errors that might quote it are redacted.
//! - Numbers: `mongosh` stores `10` as a double; integral doubles are read as integers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Bson, Document};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::error::ErrorKind;
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::{ClientOptions, ConnectionString, FullDocumentType, HostInfo, IndexOptions};
use mongodb::{Client, Collection, IndexModel};
use tokio::sync::mpsc::UnboundedSender;

use super::{
    check_unique_keys, claimed_keys, clash, validate_for_write, Invalidation, StoreError,
    TenantDocuments, TenantStore,
};
use crate::tenants::origin::AllowedOrigins;
use crate::tenants::tenant::TenantRecord;

/// `[store]` settings of `kind = "mongodb"`, validated.
#[derive(Clone, PartialEq, Eq)]
pub struct MongoSettings {
    /// Secret (may hold a password): never logged, never in `Debug`.
    uri: String,
    hosts: String,
    pub database: String,
    pub collection: String,
    pub connect_timeout: Duration,
    pub server_selection_timeout: Duration,
    pub create_indexes: bool,
    pub watch_changes: bool,
}

impl std::fmt::Debug for MongoSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MongoSettings({})", self.describe())
    }
}

impl MongoSettings {
    /// Checks the URI's syntax (no I/O); errors name the key and never quote the password.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        uri: &str,
        database: &str,
        collection: &str,
        connect_timeout: Duration,
        server_selection_timeout: Duration,
        create_indexes: bool,
        watch_changes: bool,
    ) -> Result<MongoSettings, String> {
        if uri.is_empty() {
            return Err(
                "[store] uri: kind = \"mongodb\" needs a connection URI (or TENANTGATE_STORE_URI)"
                    .into(),
            );
        }
        let parsed = ConnectionString::parse(uri)
            .map_err(|e| format!("[store] uri: {}", redact(uri, &e.to_string())))?;
        let hosts = match &parsed.host_info {
            HostInfo::HostIdentifiers(list) => list
                .iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>()
                .join(","),
            HostInfo::DnsRecord(name) => format!("{name} (SRV)"),
            _ => "?".into(),
        };
        for (key, value) in [("database", database), ("collection", collection)] {
            if value.is_empty() || value.contains(['$', '\0']) {
                return Err(format!("[store] {key}: {value:?} is not a valid name"));
            }
        }
        Ok(MongoSettings {
            uri: uri.to_string(),
            hosts,
            database: database.to_string(),
            collection: collection.to_string(),
            connect_timeout,
            server_selection_timeout,
            create_indexes,
            watch_changes,
        })
    }

    /// A driver error as the store's error: where, and why, with the password redacted.
    fn unavailable(&self, e: mongodb::error::Error) -> StoreError {
        StoreError::Unavailable(format!(
            "{}: {}",
            self.describe(),
            redact(&self.uri, &e.to_string())
        ))
    }

    /// Hosts, database and collection: safe for logs.
    pub fn describe(&self) -> String {
        format!(
            "mongodb {} database {:?} collection {:?}",
            self.hosts, self.database, self.collection
        )
    }
}

/// Replaces the URI's password, wherever `text` quotes it.
fn redact(uri: &str, text: &str) -> String {
    let userinfo = uri
        .split_once("://")
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|authority| authority.rsplit_once('@'))
        .map(|(userinfo, _)| userinfo);
    match userinfo.and_then(|u| u.split_once(':')) {
        Some((_, password)) if !password.is_empty() => text.replace(password, "****"),
        _ => text.to_string(),
    }
}

/// Commands the driver started, by name (its command monitoring): the database round trips the
/// gateway made. Tests and metrics read it.
#[derive(Default)]
pub struct CommandCounts {
    counts: Mutex<HashMap<String, u64>>,
}

impl CommandCounts {
    /// How many `name` commands (`find`, `createIndexes`, `ping`, …) were started.
    pub fn get(&self, name: &str) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(name).copied().unwrap_or(0)
    }

    fn count(&self, name: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry(name.to_string()).or_default() += 1;
    }
}

/// Tenants in a MongoDB collection.
pub struct MongoStore {
    settings: MongoSettings,
    collection: Collection<Document>,
    /// Which tenant key each document `_id` had when last seen, so that a change event (which
    /// names only the `_id`) invalidates the right cache entry.
    keys_by_id: Arc<KeysById>,
    commands: Arc<CommandCounts>,
}

impl MongoStore {
    /// Builds the client (no I/O for a `mongodb://` URI; a `mongodb+srv://` URI is resolved
    /// here). The database may be down: lookups fail until it is up.
    pub async fn connect(settings: MongoSettings) -> Result<Arc<MongoStore>, StoreError> {
        let unavailable = |e| settings.unavailable(e);
        let mut options = ClientOptions::parse(&settings.uri)
            .await
            .map_err(unavailable)?;
        options.app_name.get_or_insert_with(|| "tenantgate".into());
        options.connect_timeout = Some(settings.connect_timeout);
        options.server_selection_timeout = Some(settings.server_selection_timeout);
        let commands = Arc::new(CommandCounts::default());
        let counts = commands.clone();
        options.command_event_handler = Some(EventHandler::callback(move |e| {
            if let CommandEvent::Started(started) = e {
                counts.count(&started.command_name);
            }
        }));
        let client = Client::with_options(options).map_err(unavailable)?;
        let collection = client
            .database(&settings.database)
            .collection::<Document>(&settings.collection);
        Ok(Arc::new(MongoStore {
            settings,
            collection,
            keys_by_id: Arc::default(),
            commands,
        }))
    }

    /// The store's database through a client of its own without command monitoring, for the
    /// background (heartbeats, quota leases, usage): monitoring turns every command into an
    /// event document, which for a usage batch of 500 upserts cost more than sending it.
    pub async fn background_database(
        settings: &MongoSettings,
    ) -> Result<mongodb::Database, StoreError> {
        let mut options = ClientOptions::parse(&settings.uri)
            .await
            .map_err(|e| settings.unavailable(e))?;
        options.app_name = Some("tenantgate-limits".into());
        options.connect_timeout = Some(settings.connect_timeout);
        options.server_selection_timeout = Some(settings.server_selection_timeout);
        let client = Client::with_options(options).map_err(|e| settings.unavailable(e))?;
        Ok(client.database(&settings.database))
    }

    /// Creates the indexes (unless `[store] create_indexes = false`), retrying in the
    /// background until the database answers.
    pub fn create_indexes_in_background(&self) {
        if self.settings.create_indexes {
            tokio::spawn(create_indexes(self.collection.clone(), self.describe()));
        } else {
            tracing::info!(store = %self.describe(), "not creating indexes ([store] create_indexes = false)");
        }
    }

    /// The driver's command counts.
    pub fn commands(&self) -> &Arc<CommandCounts> {
        &self.commands
    }

    /// Refuses `doc` when another tenant (one whose `apiKey` is not among `replaced`, the
    /// documents being written) already holds one of its keys, naming both. The unique
    /// `tenantKeys` index stops the race between two writers; this names the tenants.
    async fn check_no_clash(
        &self,
        doc: &serde_json::Value,
        replaced: &[&str],
    ) -> Result<(), StoreError> {
        let claimed = claimed_keys(doc);
        let keys: Vec<&str> = claimed.iter().map(|(k, _)| *k).collect();
        let filter = doc! {
            "$or": [{"apiKey": {"$in": &keys}}, {"retiredKeys": {"$elemMatch": {"key": {"$in": &keys}}}}],
            "apiKey": {"$nin": replaced},
        };
        let mut found = self
            .collection
            .find(filter)
            .projection(doc! {"_id": 0, "apiKey": 1, "retiredKeys": 1})
            .limit(4)
            .await
            .map_err(|e| self.error(e))?;
        let tenant = doc.get("apiKey").and_then(|k| k.as_str()).unwrap_or("?");
        while let Some(other) = found.try_next().await.map_err(|e| self.error(e))? {
            let other = to_json(Bson::Document(other));
            let owner = other.get("apiKey").and_then(|k| k.as_str()).unwrap_or("?");
            for (key, role) in claimed_keys(&other) {
                if let Some((_, mine)) = claimed.iter().find(|(k, _)| *k == key) {
                    return Err(StoreError::Invalid(clash(
                        key,
                        (owner, role),
                        (tenant, *mine),
                    )));
                }
            }
        }
        Ok(())
    }

    fn error(&self, e: mongodb::error::Error) -> StoreError {
        // E11000 on a write: a unique index (apiKey_unique, tenantKeys_unique) refused a key
        // another document holds — a concurrent writer got there between check and write.
        if matches!(&*e.kind, ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) if w.code == 11000)
        {
            return StoreError::Invalid(format!(
                "a key of this document is already held by another tenant (unique index: {})",
                redact(&self.settings.uri, &e.to_string())
            ));
        }
        self.settings.unavailable(e)
    }

    /// The documents for `tenantgate tenants …`, in the same collection.
    pub fn documents(self: &Arc<Self>) -> MongoDocuments {
        MongoDocuments(self.clone())
    }
}

/// Creates the indexes, retrying while the database cannot be reached; a refusal (no
/// privilege, duplicate keys already stored) is logged once and not retried.
async fn create_indexes(collection: Collection<Document>, describe: String) {
    let indexes = [
        IndexModel::builder()
            .keys(doc! {"apiKey": 1})
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .name("apiKey_unique".to_string())
                    .build(),
            )
            .build(),
        IndexModel::builder()
            .keys(doc! {"allowedOrigins": 1})
            .options(
                IndexOptions::builder()
                    .name("allowedOrigins".to_string())
                    .build(),
            )
            .build(),
        // Lookups by a retired key.
        IndexModel::builder()
            .keys(doc! {"retiredKeys.key": 1})
            .options(
                IndexOptions::builder()
                    .name("retiredKeys_key".to_string())
                    .build(),
            )
            .build(),
        // Keys are unique across `apiKey` and `retiredKeys.key` of every tenant: documents the
        // gateway writes list all their keys in `tenantKeys`, a unique multikey index. Partial,
        // so documents written by other tools (without the field) are not all "null".
        IndexModel::builder()
            .keys(doc! {TENANT_KEYS: 1})
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .partial_filter_expression(doc! {TENANT_KEYS: {"$exists": true}})
                    .name("tenantKeys_unique".to_string())
                    .build(),
            )
            .build(),
    ];
    let mut wait = Duration::from_millis(500);
    loop {
        match collection.create_indexes(indexes.clone()).await {
            Ok(_) => {
                tracing::info!(store = %describe, "indexes ready: unique apiKey_unique {{apiKey: 1}}, allowedOrigins {{allowedOrigins: 1}}, retiredKeys_key {{retiredKeys.key: 1}}, unique tenantKeys_unique {{tenantKeys: 1}}");
                return;
            }
            Err(e) if matches!(*e.kind, ErrorKind::Command(_)) => {
                tracing::error!(store = %describe, error = %e, "could not create the indexes; lookups work but scan the collection. Create them yourself, or set [store] create_indexes = false to silence this");
                return;
            }
            Err(e) => {
                tracing::warn!(store = %describe, error = %e, retry_in = ?wait, "database not reachable; will create the indexes when it is");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// The field the gateway keeps every key of a document in (`apiKey` and each retired key), for
/// the unique index; not part of the tenant document (stripped when read).
const TENANT_KEYS: &str = "tenantKeys";

/// The document that holds `key`, as its `apiKey` or as one of its `retiredKeys` (`$elemMatch`:
/// matches on every server, see `MONGODB_IN_TESTS.md`; uses the `retiredKeys.key` index).
fn holding(key: &str) -> Document {
    doc! {"$or": [{"apiKey": key}, {"retiredKeys": {"$elemMatch": {"key": key}}}]}
}

/// A BSON value as the JSON the tenant document parser reads; integral doubles become integers,
/// dates RFC 3339 strings (`retiredKeys[].until` may be stored either way).
fn to_json(value: Bson) -> serde_json::Value {
    match value {
        Bson::Double(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
            serde_json::Value::from(f as i64)
        }
        Bson::DateTime(d) => match d.try_to_rfc3339_string() {
            Ok(s) => serde_json::Value::String(s),
            Err(_) => Bson::DateTime(d).into_relaxed_extjson(),
        },
        Bson::Document(d) => {
            serde_json::Value::Object(d.into_iter().map(|(k, v)| (k, to_json(v))).collect())
        }
        Bson::Array(a) => serde_json::Value::Array(a.into_iter().map(to_json).collect()),
        other => other.into_relaxed_extjson(),
    }
}

/// A stored document without its `_id` (and the gateway's `tenantKeys`), as JSON.
fn document_json(mut doc: Document) -> serde_json::Value {
    doc.remove("_id");
    doc.remove(TENANT_KEYS);
    to_json(Bson::Document(doc))
}

/// A tenant document as BSON, its allow-list in normal form (what the preflight `$in` query
/// looks for).
fn to_bson(mut doc: serde_json::Value) -> Result<Document, StoreError> {
    if let Some(list) = doc.get("allowedOrigins").and_then(|v| v.as_array()) {
        let parsed = AllowedOrigins::parse(
            &list
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect::<Vec<_>>(),
        );
        if let Ok(origins) = parsed {
            doc["allowedOrigins"] = origins.index_keys().collect();
        }
    }
    let keys: Vec<String> = claimed_keys(&doc)
        .into_iter()
        .map(|(k, _)| k.to_string())
        .collect();
    let mut doc =
        mongodb::bson::to_document(&doc).map_err(|e| StoreError::Invalid(e.to_string()))?;
    doc.insert(TENANT_KEYS, keys);
    Ok(doc)
}

#[async_trait]
impl TenantStore for MongoStore {
    fn describe(&self) -> String {
        self.settings.describe()
    }

    async fn find(&self, key: &str) -> Result<Option<TenantRecord>, StoreError> {
        let Some(mut doc) = self
            .collection
            .find_one(holding(key))
            .await
            .map_err(|e| self.error(e))?
        else {
            return Ok(None);
        };
        if let Some(id) = doc.remove("_id") {
            self.keys_by_id.remember(&id, key);
        }
        doc.remove(TENANT_KEYS);
        let json = to_json(Bson::Document(doc));
        let record = TenantRecord::from_json(json.clone()).unwrap_or_else(|reason| {
            TenantRecord::Misconfigured {
                key: Arc::from(key),
                reason: Arc::from(reason),
                document: Arc::new(json),
            }
        });
        if let TenantRecord::Misconfigured { reason, .. } = &record {
            tracing::error!(tenant = key, store = %self.describe(), %reason, "tenant document is invalid; its requests get 503 tenant_misconfigured");
        }
        Ok(Some(record))
    }

    async fn origin_in_use(&self, candidates: &[String]) -> Result<bool, StoreError> {
        let filter = doc! {"allowedOrigins": {"$in": candidates}, "isActive": true};
        let mut found = self
            .collection
            .find(filter)
            .projection(doc! {"_id": 0})
            .limit(16)
            .await
            .map_err(|e| self.error(e))?;
        // Only a valid tenant's list counts, as with the file store.
        while let Some(doc) = found.try_next().await.map_err(|e| self.error(e))? {
            if let Ok(TenantRecord::Valid(t)) =
                TenantRecord::from_json(to_json(Bson::Document(doc)))
            {
                if t.active && t.origins.index_keys().any(|k| candidates.contains(&k)) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.collection
            .client()
            .database(&self.settings.database)
            .run_command(doc! {"ping": 1})
            .await
            .map(drop)
            .map_err(|e| self.error(e))
    }

    fn watch(self: Arc<Self>, sink: UnboundedSender<Invalidation>) {
        if !self.settings.watch_changes {
            tracing::info!(store = %self.describe(), "change streams off ([store] watch_changes = false); edits take effect within [cache] ttl_secs");
            return;
        }
        let feed = MongoFeed {
            collection: self.collection.clone(),
        };
        tokio::spawn(watch_changes(
            feed,
            self.keys_by_id.clone(),
            sink,
            self.describe(),
        ));
    }
}

/// One change event, reduced to what invalidation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A document was inserted, updated or replaced: its `_id` and its `apiKey` now (`None` when
    /// it has none, or it was deleted before the event could be read).
    Written { id: String, key: Option<String> },
    /// A document was deleted.
    Deleted { id: String },
    /// The collection was dropped or renamed, or the stream invalidated: anything may have
    /// changed.
    Everything,
}

/// Why a change stream failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedError {
    /// This deployment has no change streams (a standalone server): stop watching.
    Unsupported(String),
    /// The stream cannot resume where it stopped (the server no longer has that history):
    /// start from now; changes may have been missed.
    ResumeLost(String),
    /// Anything else (network, election): reopen after a pause, where it stopped.
    Failed(String),
}

/// Events of one opened stream, each with the token to resume after it.
pub type ChangeEvents<T> = BoxStream<'static, Result<(T, Option<Change>), FeedError>>;

/// Where change events come from: the collection's change stream, or a test's script.
#[async_trait]
pub trait ChangeFeed: Send + 'static {
    /// Resume token.
    type Token: Clone + Send + Sync + 'static;
    /// Opens the stream: after `resume` when given, otherwise from now.
    async fn open(
        &mut self,
        resume: Option<Self::Token>,
    ) -> Result<ChangeEvents<Self::Token>, FeedError>;
}

/// The tenant key last seen for each document `_id`.
#[derive(Default)]
pub struct KeysById(Mutex<HashMap<String, Arc<str>>>);

impl KeysById {
    fn remember(&self, id: &Bson, key: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(id.to_string(), Arc::from(key));
    }

    /// The cache entries one change makes stale: the key the document had (if this gateway saw
    /// it) and the key it has now (which may be negative-cached).
    pub fn invalidations(&self, change: Change) -> Vec<Invalidation> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match change {
            Change::Everything => vec![Invalidation::All],
            Change::Deleted { id } => map
                .remove(&id)
                .map(Invalidation::Tenant)
                .into_iter()
                .collect(),
            Change::Written { id, key } => {
                let new: Option<Arc<str>> = key.map(Arc::from);
                let old = match &new {
                    Some(k) => map.insert(id, k.clone()),
                    None => map.remove(&id),
                };
                let mut out: Vec<Invalidation> =
                    old.map(Invalidation::Tenant).into_iter().collect();
                if let Some(k) = new {
                    if !out.contains(&Invalidation::Tenant(k.clone())) {
                        out.push(Invalidation::Tenant(k));
                    }
                }
                out
            }
        }
    }
}

/// Follows `feed` until the cache goes away: each change invalidates what it touched; after an
/// error the stream is reopened after the last event seen (with growing pauses), and when that
/// is impossible everything is invalidated once, since changes may have been missed.
pub async fn watch_changes<F: ChangeFeed>(
    mut feed: F,
    keys: Arc<KeysById>,
    sink: UnboundedSender<Invalidation>,
    describe: String,
) {
    const FIRST_PAUSE: Duration = Duration::from_millis(250);
    let mut token: Option<F::Token> = None;
    let mut missed_changes = false;
    let mut pause = FIRST_PAUSE;
    let mut opened_before = false;
    loop {
        let failure = match feed.open(token.clone()).await {
            Err(FeedError::Unsupported(why)) => {
                tracing::info!(store = %describe, reason = %why, "this deployment has no change streams (they need a replica set); edits take effect within [cache] ttl_secs");
                return;
            }
            Err(FeedError::ResumeLost(why)) => {
                token = None;
                missed_changes = true;
                why
            }
            Err(FeedError::Failed(why)) => why,
            Ok(mut events) => {
                if !opened_before {
                    tracing::info!(store = %describe, "watching the tenants collection for changes (change stream)");
                }
                opened_before = true;
                if missed_changes && sink.send(Invalidation::All).is_err() {
                    return;
                }
                missed_changes = false;
                let why = loop {
                    match events.next().await {
                        Some(Ok((t, change))) => {
                            token = Some(t);
                            pause = FIRST_PAUSE;
                            let all = change == Some(Change::Everything);
                            for inv in change.map(|c| keys.invalidations(c)).unwrap_or_default() {
                                if sink.send(inv).is_err() {
                                    return;
                                }
                            }
                            if all {
                                // An invalidated stream ends; start a new one from now.
                                token = None;
                            }
                        }
                        Some(Err(FeedError::Unsupported(why))) => {
                            tracing::info!(store = %describe, reason = %why, "this deployment cannot stream changes; edits take effect within [cache] ttl_secs");
                            return;
                        }
                        Some(Err(FeedError::ResumeLost(why))) => {
                            token = None;
                            missed_changes = true;
                            break why;
                        }
                        Some(Err(FeedError::Failed(why))) => break why,
                        None => break "the change stream ended".to_string(),
                    }
                };
                // A stream that broke before its first event cannot be resumed: what changed
                // until the next one opens is unknown.
                missed_changes |= token.is_none();
                why
            }
        };
        if sink.is_closed() {
            return;
        }
        tracing::warn!(store = %describe, error = %failure, retry_in = ?pause, "change stream interrupted; cached tenants still expire by TTL meanwhile");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

/// The collection's change stream.
struct MongoFeed {
    collection: Collection<Document>,
}

fn feed_error(e: mongodb::error::Error) -> FeedError {
    match &*e.kind {
        // 40573: "$changeStream stage is only supported on replica sets"; 115: not supported.
        ErrorKind::Command(c) if c.code == 40573 || c.code == 115 => {
            FeedError::Unsupported(e.to_string())
        }
        // Events without a resume token: a server that cannot resume streams.
        ErrorKind::MissingResumeToken => FeedError::Unsupported(e.to_string()),
        // 286 ChangeStreamHistoryLost, 280 ChangeStreamFatalError.
        ErrorKind::Command(c) if c.code == 286 || c.code == 280 => {
            FeedError::ResumeLost(e.to_string())
        }
        _ => FeedError::Failed(e.to_string()),
    }
}

fn change_of(event: ChangeStreamEvent<Document>) -> Option<Change> {
    let id = event
        .document_key
        .as_ref()
        .and_then(|k| k.get("_id"))
        .map(|id| id.to_string());
    match event.operation_type {
        OperationType::Insert | OperationType::Update | OperationType::Replace => {
            Some(Change::Written {
                id: id?,
                key: event
                    .full_document
                    .as_ref()
                    .and_then(|d| d.get_str("apiKey").ok())
                    .map(String::from),
            })
        }
        OperationType::Delete => Some(Change::Deleted { id: id? }),
        OperationType::Drop
        | OperationType::Rename
        | OperationType::DropDatabase
        | OperationType::Invalidate => Some(Change::Everything),
        _ => None,
    }
}

#[async_trait]
impl ChangeFeed for MongoFeed {
    type Token = ResumeToken;

    async fn open(
        &mut self,
        resume: Option<ResumeToken>,
    ) -> Result<ChangeEvents<ResumeToken>, FeedError> {
        let stream = self
            .collection
            .watch()
            .full_document(FullDocumentType::UpdateLookup)
            .resume_after(resume)
            .await
            .map_err(feed_error)?;
        Ok(stream
            .map(|item| {
                item.map(|event| (event.id.clone(), change_of(event)))
                    .map_err(feed_error)
            })
            .boxed())
    }
}

/// Document management in the collection (`tenantgate tenants …`).
pub struct MongoDocuments(Arc<MongoStore>);

#[async_trait]
impl TenantDocuments for MongoDocuments {
    async fn list(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        let store = &self.0;
        let docs: Vec<Document> = store
            .collection
            .find(doc! {})
            .sort(doc! {"apiKey": 1})
            .await
            .map_err(|e| store.error(e))?
            .try_collect()
            .await
            .map_err(|e| store.error(e))?;
        Ok(docs.into_iter().map(document_json).collect())
    }

    async fn get(&self, key: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let store = &self.0;
        let doc = store
            .collection
            .find_one(doc! {"apiKey": key})
            .await
            .map_err(|e| store.error(e))?;
        Ok(doc.map(document_json))
    }

    async fn upsert(&self, docs: Vec<serde_json::Value>) -> Result<usize, StoreError> {
        let store = &self.0;
        check_unique_keys(&docs).map_err(StoreError::Invalid)?;
        let written: Vec<&str> = docs
            .iter()
            .filter_map(|d| d.get("apiKey").and_then(|k| k.as_str()))
            .collect();
        for doc in &docs {
            store.check_no_clash(doc, &written).await?;
        }
        let mut writes = Vec::with_capacity(docs.len());
        for doc in docs {
            let key = validate_for_write(&doc)?;
            writes.push((key, to_bson(doc)?));
        }
        for (key, doc) in &writes {
            store
                .collection
                .replace_one(doc! {"apiKey": key.as_ref()}, doc)
                .upsert(true)
                .await
                .map_err(|e| store.error(e))?;
        }
        Ok(writes.len())
    }

    async fn replace(&self, key: &str, doc: serde_json::Value) -> Result<bool, StoreError> {
        let store = &self.0;
        validate_for_write(&doc)?;
        store.check_no_clash(&doc, &[key]).await?;
        let result = store
            .collection
            .replace_one(doc! {"apiKey": key}, to_bson(doc)?)
            .await
            .map_err(|e| store.error(e))?;
        Ok(result.matched_count > 0)
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let store = &self.0;
        let result = store
            .collection
            .delete_one(doc! {"apiKey": key})
            .await
            .map_err(|e| store.error(e))?;
        Ok(result.deleted_count > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    #[test]
    fn passwords_never_reach_messages() {
        let uri = "mongodb://app:s3cr%21t@db1:27017,db2/?replicaSet=rs0";
        assert_eq!(
            redact(uri, "auth failed for app:s3cr%21t"),
            "auth failed for app:****"
        );
        let settings = MongoSettings::new(
            uri,
            "tenantgate",
            "tenants",
            Duration::from_secs(1),
            Duration::from_secs(1),
            true,
            true,
        )
        .unwrap();
        let shown = format!("{} {settings:?}", settings.describe());
        assert!(shown.contains("db1:27017,db2:27017"), "{shown}");
        assert!(!shown.contains("s3cr"), "{shown}");
        let err = MongoSettings::new(
            "mongodb://app:s3cr3t@db:notaport",
            "d",
            "c",
            Duration::from_secs(1),
            Duration::from_secs(1),
            true,
            true,
        )
        .unwrap_err();
        assert!(
            err.starts_with("[store] uri: ") && !err.contains("s3cr3t"),
            "{err}"
        );
    }

    #[test]
    fn documents_read_as_json_with_integral_doubles_as_integers() {
        let stored = doc! {
            "_id": mongodb::bson::oid::ObjectId::new(),
            "apiKey": "tnt_a",
            "allowedOrigins": ["https://a.example"],
            "isActive": true,
            "maxConcurrentConnections": 10.0,
            "providerConfig": {"resources": {"endpoint": "e", "region": "r"}},
        };
        let json = document_json(stored);
        assert_eq!(json["maxConcurrentConnections"], serde_json::json!(10));
        assert!(json.get("_id").is_none());
        assert!(matches!(
            TenantRecord::from_json(json),
            Ok(TenantRecord::Valid(_))
        ));
        let written = to_bson(serde_json::json!({"apiKey": "k", "allowedOrigins": ["HTTPS://A.example:443", "https://*.B.example"]})).unwrap();
        assert_eq!(
            written.get_array("allowedOrigins").unwrap(),
            &vec![
                Bson::from("https://a.example"),
                Bson::from("https://*.b.example")
            ]
        );
    }

    #[test]
    fn a_change_invalidates_the_old_and_the_new_key() {
        let keys = KeysById::default();
        let id = Bson::from("id1");
        keys.remember(&id, "tnt_old");
        let t = |k: &str| Invalidation::Tenant(Arc::from(k));
        // An edit that keeps the key.
        assert_eq!(
            keys.invalidations(Change::Written {
                id: id.to_string(),
                key: Some("tnt_old".into())
            }),
            vec![t("tnt_old")]
        );
        // A key renamed: the old key must stop working, the new one may be negative-cached.
        assert_eq!(
            keys.invalidations(Change::Written {
                id: id.to_string(),
                key: Some("tnt_new".into())
            }),
            vec![t("tnt_old"), t("tnt_new")]
        );
        assert_eq!(
            keys.invalidations(Change::Deleted { id: id.to_string() }),
            vec![t("tnt_new")]
        );
        // A document this gateway never saw: only its key now matters.
        assert_eq!(
            keys.invalidations(Change::Written {
                id: "\"other\"".into(),
                key: Some("tnt_x".into())
            }),
            vec![t("tnt_x")]
        );
        assert_eq!(
            keys.invalidations(Change::Deleted {
                id: "\"gone\"".into()
            }),
            vec![]
        );
        assert_eq!(
            keys.invalidations(Change::Everything),
            vec![Invalidation::All]
        );
    }

    /// What one `open` of the scripted feed gives: its events, or the error opening it.
    type Opened = Result<Vec<Result<(u64, Option<Change>), FeedError>>, FeedError>;

    /// A feed that plays a script: each `open` takes the next stream (or error), and records the
    /// token it was asked to resume after.
    struct ScriptedFeed {
        opens: VecDeque<Opened>,
        resumed_after: Arc<Mutex<Vec<Option<u64>>>>,
    }

    #[async_trait]
    impl ChangeFeed for ScriptedFeed {
        type Token = u64;
        async fn open(&mut self, resume: Option<u64>) -> Result<ChangeEvents<u64>, FeedError> {
            self.resumed_after.lock().unwrap().push(resume);
            match self.opens.pop_front() {
                Some(Ok(events)) => Ok(futures_util::stream::iter(events).boxed()),
                Some(Err(e)) => Err(e),
                // Script over: a stream that never yields, like a quiet collection.
                None => Ok(futures_util::stream::pending().boxed()),
            }
        }
    }

    fn written(id: &str, key: &str) -> Option<Change> {
        Some(Change::Written {
            id: id.into(),
            key: Some(key.into()),
        })
    }

    async fn run(opens: Vec<Opened>) -> (Vec<Invalidation>, Vec<Option<u64>>) {
        let resumed_after = Arc::new(Mutex::new(Vec::new()));
        let feed = ScriptedFeed {
            opens: opens.into(),
            resumed_after: resumed_after.clone(),
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(watch_changes(feed, Arc::default(), tx, "test".into()));
        // Paused time: the retry pauses pass at once.
        tokio::time::sleep(Duration::from_secs(120)).await;
        task.abort();
        let mut seen = Vec::new();
        while let Ok(inv) = rx.try_recv() {
            seen.push(inv);
        }
        let resumed = resumed_after.lock().unwrap().clone();
        (seen, resumed)
    }

    #[tokio::test(start_paused = true)]
    async fn the_watcher_resumes_after_the_last_event_and_invalidates_all_after_a_gap() {
        let t = |k: &str| Invalidation::Tenant(Arc::from(k));
        let (seen, resumed) = run(vec![
            Ok(vec![
                Ok((1, written("a", "tnt_a"))),
                Ok((2, None)), // an event that touches no tenant (e.g. createIndexes)
                Err(FeedError::Failed("connection reset".into())),
            ]),
            // Resumed after token 2: nothing was missed.
            Ok(vec![Ok((3, Some(Change::Deleted { id: "a".into() })))]),
            // The stream ended; the server is briefly unreachable (resume after 3 again), then
            // the resume point is gone: start from now.
            Err(FeedError::Failed("server selection timeout".into())),
            Err(FeedError::ResumeLost("history lost".into())),
            Ok(vec![Ok((10, written("b", "tnt_b")))]),
        ])
        .await;
        assert_eq!(
            resumed,
            vec![None, Some(2), Some(3), Some(3), None, Some(10)]
        );
        assert_eq!(
            seen,
            vec![t("tnt_a"), t("tnt_a"), Invalidation::All, t("tnt_b")],
            "the gap after a lost resume point is covered by one full invalidation"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_change_streams_the_watcher_stops_and_the_ttl_applies() {
        let (seen, resumed) = run(vec![Err(FeedError::Unsupported(
            "only supported on replica sets".into(),
        ))])
        .await;
        assert_eq!((seen, resumed), (vec![], vec![None]));
        let (seen, resumed) = run(vec![Ok(vec![Err(FeedError::Unsupported(
            "missing resume token".into(),
        ))])])
        .await;
        assert_eq!((seen, resumed), (vec![], vec![None]));
    }
}
