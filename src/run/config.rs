//! Configuration: the TOML file as written ([`RawConfig`], every key optional with a default,
//! unknown keys rejected), then validated into the types the gateway runs on ([`Config`]).
//! Every error names the file, the key and what is wrong. `gateway.example.toml` documents each
//! key with its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use crate::http::upstream::Upstream;
use crate::pipeline::cors::CorsSettings;
use crate::pipeline::forward::ForwardSettings;
use crate::pipeline::proxy::Policy;
use crate::tenants::cluster::ClusterSettings;
use crate::tenants::directory::CacheSettings;
use crate::tenants::metering::UsageSettings;

/// Prefix of the environment variables that override config keys:
/// `TENANTGATE_<SECTION>_<KEY>`, e.g. `TENANTGATE_STORE_URI` (so a password need not sit in a
/// file) or `TENANTGATE_UPSTREAM_CONNECT_TIMEOUT_MS`. Values are read as TOML values when they
/// parse as one (numbers, booleans, arrays), otherwise as strings.
pub const ENV_PREFIX: &str = "TENANTGATE_";

/// A configuration problem: always names the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    /// Address of the proxy listener.
    pub listen: String,
    /// Gateway-wide cap on open client connections; further clients wait in the accept queue.
    pub max_connections: usize,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    pub shutdown_grace_secs: u64,
    /// Seconds a client has to send a complete request head (slowloris guard).
    pub header_read_timeout_secs: u64,
    /// Seconds an upgraded connection (WebSocket) may carry no bytes before it is closed.
    pub upgrade_idle_timeout_secs: u64,
    /// Largest request body forwarded, in bytes (0 = no limit).
    pub max_body_bytes: u64,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "0.0.0.0:8080".into(),
            max_connections: 10_000,
            shutdown_grace_secs: 30,
            header_read_timeout_secs: 30,
            upgrade_idle_timeout_secs: 300,
            max_body_bytes: 0,
            max_header_bytes: 65_536,
        }
    }
}

/// `[upstream]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    pub url: String,
    pub connect_timeout_ms: u64,
    pub response_timeout_ms: u64,
    pub pool_idle_timeout_secs: u64,
    pub pool_max_idle_per_host: usize,
    pub ca_file: Option<String>,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            url: "http://127.0.0.1:3000".into(),
            connect_timeout_ms: 2_000,
            response_timeout_ms: 30_000,
            pool_idle_timeout_secs: 90,
            pool_max_idle_per_host: 1_024,
            ca_file: None,
        }
    }
}

/// `[store]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    pub kind: String,
    pub path: String,
    pub poll_interval_ms: u64,
    pub uri: Option<String>,
    pub database: String,
    pub collection: String,
    pub connect_timeout_ms: u64,
    pub server_selection_timeout_ms: u64,
    pub create_indexes: bool,
    pub watch_changes: bool,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            kind: "file".into(),
            path: "tenants.json".into(),
            poll_interval_ms: 500,
            uri: None,
            database: "tenantgate".into(),
            collection: "tenants".into(),
            connect_timeout_ms: 2_000,
            server_selection_timeout_ms: 2_000,
            create_indexes: true,
            watch_changes: true,
        }
    }
}

/// `[cache]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCache {
    pub ttl_secs: u64,
    pub negative_ttl_secs: u64,
    pub max_stale_secs: u64,
    pub max_entries: u64,
    pub lookup_timeout_ms: u64,
    pub miss_lookups_per_sec: u32,
}

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            ttl_secs: 30,
            negative_ttl_secs: 10,
            max_stale_secs: 300,
            max_entries: 100_000,
            lookup_timeout_ms: 2_000,
            miss_lookups_per_sec: 200,
        }
    }
}

/// `[admin]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// Address of the admin listener; empty disables it.
    pub listen: String,
    /// Tenants with their own per-tenant metric series (the busiest at scrape time).
    pub metrics_top_tenants: usize,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: "127.0.0.1:9090".into(),
            metrics_top_tenants: 20,
        }
    }
}

/// `[tenancy]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTenancy {
    pub header: String,
    /// Query parameter that may carry the key (EventSource cannot set headers); "" = off.
    pub query_param: String,
    pub require_origin: bool,
    pub inject_connection_string: bool,
}

impl Default for RawTenancy {
    fn default() -> Self {
        RawTenancy {
            header: "X-Tenant-ID".into(),
            query_param: String::new(),
            require_origin: true,
            inject_connection_string: false,
        }
    }
}

/// `[cors]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCors {
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
    pub max_age_secs: u64,
}

impl Default for RawCors {
    fn default() -> Self {
        RawCors {
            allow_methods: ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
                .map(String::from)
                .to_vec(),
            allow_headers: ["Content-Type", "Authorization", "X-Request-Id"]
                .map(String::from)
                .to_vec(),
            expose_headers: vec!["X-Request-Id".into()],
            allow_credentials: false,
            max_age_secs: 600,
        }
    }
}

/// `[tls]`: both or neither.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub reload_interval_secs: u64,
}

impl Default for RawTls {
    fn default() -> Self {
        RawTls {
            cert: None,
            key: None,
            reload_interval_secs: 5,
        }
    }
}

/// `[tracing]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTracing {
    /// Export one OTLP span per request (needs the `otel` cargo feature).
    pub enabled: bool,
    /// OTLP/HTTP (protobuf) traces endpoint.
    pub endpoint: String,
    pub service_name: String,
    /// Share of new traces recorded; a client's sampled flag decides for its own traces.
    pub sample_ratio: f64,
}

impl Default for RawTracing {
    fn default() -> Self {
        RawTracing {
            enabled: false,
            endpoint: "http://127.0.0.1:4318/v1/traces".into(),
            service_name: "tenantgate".into(),
            sample_ratio: 1.0,
        }
    }
}

/// `[inject]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawInject {
    /// Header name → dotted path in the tenant document, e.g. `"X-Tenant-Plan" = "plan"`.
    pub headers: std::collections::BTreeMap<String, String>,
}

/// `[cluster]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCluster {
    pub scope: String,
    pub replica_id: String,
    pub collection: String,
    pub quota_collection: String,
    pub heartbeat_ms: u64,
    /// 0: three heartbeats.
    pub member_timeout_ms: u64,
    pub flush_ms: u64,
}

impl Default for RawCluster {
    fn default() -> Self {
        RawCluster {
            scope: "replica".into(),
            replica_id: String::new(),
            collection: "gateways".into(),
            quota_collection: "quotas".into(),
            heartbeat_ms: 1_000,
            member_timeout_ms: 0,
            flush_ms: 1_000,
        }
    }
}

/// `[usage]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUsage {
    pub enabled: bool,
    pub collection: String,
    /// "": beside the tenants file, `<tenants file>.usage.jsonl`.
    pub path: String,
    pub max_pending: u64,
}

impl Default for RawUsage {
    fn default() -> Self {
        RawUsage {
            enabled: true,
            collection: "usage".into(),
            path: String::new(),
            max_pending: 100_000,
        }
    }
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub server: RawServer,
    pub upstream: RawUpstream,
    pub store: RawStore,
    pub cache: RawCache,
    pub admin: RawAdmin,
    pub tenancy: RawTenancy,
    pub cors: RawCors,
    pub tls: RawTls,
    pub tracing: RawTracing,
    pub inject: RawInject,
    pub cluster: RawCluster,
    pub usage: RawUsage,
}

/// Which store holds the tenants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    File {
        path: PathBuf,
        poll_interval: Duration,
    },
    MongoDb(crate::tenants::store::mongodb::MongoSettings),
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was loaded from (what a reload re-reads); `None` when parsed from text.
    pub path: Option<PathBuf>,
    pub listen: SocketAddr,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    /// TLS on the listener, when configured.
    pub tls: Option<crate::run::tls::CertFiles>,
    pub admin_listen: Option<SocketAddr>,
    /// `[admin] metrics_top_tenants`.
    pub metrics_top_tenants: usize,
    pub forward: ForwardSettings,
    pub store: StoreConfig,
    pub cache: CacheSettings,
    pub key_sources: crate::pipeline::identify::KeySources,
    pub require_origin: bool,
    pub cors: CorsSettings,
    pub tracing: crate::telemetry::trace::TracingSettings,
    /// `[cluster]`: per-replica or cluster-wide limits, heartbeats, flushes.
    pub cluster: ClusterSettings,
    /// `[usage]`: usage metering.
    pub usage: UsageSettings,
    /// Threads that serve client connections, each with a single-threaded runtime of its own;
    /// 1 serves them on the caller's runtime. Not a file key: `tenantgate run` sets it from
    /// `TOKIO_WORKER_THREADS`, else the number of cores.
    pub workers: usize,
    /// `TENANTGATE_*` environment variables that name no config section, ignored (`run` warns
    /// once).
    pub ignored_env: Vec<String>,
}

impl Config {
    /// Reads, parses and validates a config file, with `TENANTGATE_*` environment overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            message: format!("cannot read: {e}"),
        })?;
        let mut config = Config::parse_with_env(&text, &file, std::env::vars())?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates config text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, file, std::iter::empty())
    }

    /// Like [`Config::parse`], with the `TENANTGATE_<SECTION>_<KEY>` variables among `env`
    /// overriding the file.
    pub fn parse_with_env(
        text: &str,
        file: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let fail = |message: String| ConfigError {
            file: file.into(),
            message,
        };
        let toml_error = |e: toml::de::Error| e.to_string().trim_end().replace('\n', "\n  ");
        let (overrides, mut ignored_env): (Vars, Vars) = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .partition(|(name, _)| names_a_section(name));
        let raw: RawConfig = if overrides.is_empty() {
            // Straight from the text, so errors keep their line and column.
            toml::from_str(text).map_err(|e| fail(toml_error(e)))?
        } else {
            let mut table: toml::Table = text.parse().map_err(|e| fail(toml_error(e)))?;
            let names = apply_env(&mut table, overrides).map_err(fail)?;
            toml::Value::Table(table).try_into().map_err(|e| {
                fail(format!(
                    "{} (with environment overrides {names})",
                    toml_error(e)
                ))
            })?
        };
        let mut config = raw.validate().map_err(fail)?;
        ignored_env.sort();
        config.ignored_env = ignored_env.into_iter().map(|(name, _)| name).collect();
        Ok(config)
    }
}

/// Whether `TENANTGATE_<SECTION>_…` names a config section. Variables that do not are someone
/// else's (Kubernetes sets `TENANTGATE_PORT`, `TENANTGATE_SERVICE_HOST`, … in every pod of a
/// namespace with a Service named `tenantgate`) and are ignored; a known section with an
/// unknown key is still an error.
fn names_a_section(name: &str) -> bool {
    let rest = name[ENV_PREFIX.len()..].to_ascii_lowercase();
    let section = rest
        .split_once('_')
        .map_or(rest.as_str(), |(section, _)| section);
    // The file's sections are those `RawConfig` accepts (it refuses unknown ones).
    toml::from_str::<RawConfig>(&format!("[{section}]")).is_ok()
}

/// Environment variables, name and value.
type Vars = Vec<(String, String)>;

/// Writes `TENANTGATE_<SECTION>_<KEY>=value` into the parsed file; returns the variables' names.
fn apply_env(table: &mut toml::Table, vars: Vec<(String, String)>) -> Result<String, String> {
    let mut names = Vec::new();
    for (name, value) in vars {
        let lower = name[ENV_PREFIX.len()..].to_ascii_lowercase();
        let Some((section, key)) = lower.split_once('_') else {
            return Err(format!(
                "environment variable {name}: expected {ENV_PREFIX}<SECTION>_<KEY>"
            ));
        };
        let value = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        let section = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("environment variable {name}: [{section}] is not a section"))?;
        section.insert(key.to_string(), value);
        names.push(name);
    }
    Ok(names.join(", "))
}

fn addr(key: &str, v: &str) -> Result<SocketAddr, String> {
    v.parse()
        .map_err(|_| format!("{key}: {v:?} is not an address like \"0.0.0.0:8080\""))
}

fn positive(key: &str, v: u64) -> Result<u64, String> {
    if v == 0 {
        return Err(format!("{key}: must be greater than 0"));
    }
    Ok(v)
}

fn header_list(key: &str, items: &[String]) -> Result<http::HeaderValue, String> {
    for item in items {
        if HeaderName::from_bytes(item.as_bytes()).is_err()
            && http::Method::from_bytes(item.as_bytes()).is_err()
        {
            return Err(format!("{key}: {item:?} is not a header or method name"));
        }
    }
    http::HeaderValue::from_str(&items.join(", ")).map_err(|_| format!("{key}: invalid characters"))
}

impl RawConfig {
    /// Checks every key and builds the runtime types.
    pub fn validate(self) -> Result<Config, String> {
        let s = &self.server;
        let listen = addr("[server] listen", &s.listen)?;
        let max_connections =
            positive("[server] max_connections", s.max_connections as u64)? as usize;
        let tenant_header =
            HeaderName::from_bytes(self.tenancy.header.as_bytes()).map_err(|_| {
                format!(
                    "[tenancy] header: {:?} is not a header name",
                    self.tenancy.header
                )
            })?;
        let inject = crate::pipeline::forward::Injections::parse(
            self.inject
                .headers
                .iter()
                .map(|(name, path)| (name.as_str(), path.as_str())),
            self.tenancy.inject_connection_string,
            &tenant_header,
        )?;
        let u = &self.upstream;
        let default_upstream =
            Upstream::parse(&u.url).map_err(|e| format!("[upstream] url: {e}"))?;
        let forward = ForwardSettings {
            default_upstream,
            connect_timeout: Duration::from_millis(positive(
                "[upstream] connect_timeout_ms",
                u.connect_timeout_ms,
            )?),
            response_timeout: Duration::from_millis(positive(
                "[upstream] response_timeout_ms",
                u.response_timeout_ms,
            )?),
            pool_idle_timeout: Duration::from_secs(u.pool_idle_timeout_secs),
            pool_max_idle_per_host: u.pool_max_idle_per_host,
            ca_file: u.ca_file.as_ref().map(PathBuf::from),
            inject_connection_string: self.tenancy.inject_connection_string,
            max_body: (s.max_body_bytes > 0).then_some(s.max_body_bytes),
            upgrade_idle_timeout: Duration::from_secs(positive(
                "[server] upgrade_idle_timeout_secs",
                s.upgrade_idle_timeout_secs,
            )?),
            inject: std::sync::Arc::new(inject),
        };
        let st = &self.store;
        let store = match st.kind.as_str() {
            "file" => {
                if st.path.is_empty() {
                    return Err("[store] path: must name the tenants JSON file".into());
                }
                StoreConfig::File {
                    path: PathBuf::from(&st.path),
                    poll_interval: Duration::from_millis(positive(
                        "[store] poll_interval_ms",
                        st.poll_interval_ms,
                    )?),
                }
            }
            "mongodb" => StoreConfig::MongoDb(crate::tenants::store::mongodb::MongoSettings::new(
                st.uri.as_deref().unwrap_or_default(),
                &st.database,
                &st.collection,
                Duration::from_millis(positive(
                    "[store] connect_timeout_ms",
                    st.connect_timeout_ms,
                )?),
                Duration::from_millis(positive(
                    "[store] server_selection_timeout_ms",
                    st.server_selection_timeout_ms,
                )?),
                st.create_indexes,
                st.watch_changes,
            )?),
            other => {
                return Err(format!(
                    "[store] kind: {other:?} is not one of \"file\", \"mongodb\""
                ))
            }
        };
        let cluster = self.cluster.validate(&store)?;
        let usage = self.usage.validate(&store)?;
        let c = &self.cache;
        let cache = CacheSettings {
            ttl: Duration::from_secs(positive("[cache] ttl_secs", c.ttl_secs)?),
            negative_ttl: Duration::from_secs(positive(
                "[cache] negative_ttl_secs",
                c.negative_ttl_secs,
            )?),
            max_stale: Duration::from_secs(c.max_stale_secs),
            max_entries: positive("[cache] max_entries", c.max_entries)?,
            lookup_timeout: Duration::from_millis(positive(
                "[cache] lookup_timeout_ms",
                c.lookup_timeout_ms,
            )?),
            miss_lookups_per_sec: c.miss_lookups_per_sec,
        };
        let admin_listen = match self.admin.listen.as_str() {
            "" => None,
            v => Some(addr("[admin] listen", v)?),
        };
        let mut allow_headers = self.cors.allow_headers.clone();
        if !allow_headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case(tenant_header.as_str()))
        {
            allow_headers.push(self.tenancy.header.clone());
        }
        let cors = CorsSettings {
            allow_methods: header_list("[cors] allow_methods", &self.cors.allow_methods)?,
            allow_headers: header_list("[cors] allow_headers", &allow_headers)?,
            expose_headers: match self.cors.expose_headers.as_slice() {
                [] => None,
                list => Some(header_list("[cors] expose_headers", list)?),
            },
            allow_credentials: self.cors.allow_credentials,
            max_age: http::HeaderValue::from(self.cors.max_age_secs),
        };
        let tls = match (&self.tls.cert, &self.tls.key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(crate::run::tls::CertFiles {
                cert: PathBuf::from(cert),
                key: PathBuf::from(key),
                reload_interval: Duration::from_secs(positive(
                    "[tls] reload_interval_secs",
                    self.tls.reload_interval_secs,
                )?),
            }),
            _ => return Err("[tls] cert / key: set both (PEM files) or neither".into()),
        };
        Ok(Config {
            path: None,
            workers: 1,
            ignored_env: Vec::new(),
            listen,
            max_connections,
            shutdown_grace: Duration::from_secs(s.shutdown_grace_secs),
            header_read_timeout: Duration::from_secs(positive(
                "[server] header_read_timeout_secs",
                s.header_read_timeout_secs,
            )?),
            max_header_bytes: {
                let n = s.max_header_bytes;
                if !(1_024..=16 << 20).contains(&n) {
                    return Err(format!(
                        "[server] max_header_bytes: {n} is not between 1024 and 16777216"
                    ));
                }
                n
            },
            tls,
            admin_listen,
            metrics_top_tenants: self.admin.metrics_top_tenants,
            forward,
            store,
            cache,
            key_sources: crate::pipeline::identify::KeySources {
                header: tenant_header,
                query_param: match self.tenancy.query_param.as_str() {
                    "" => None,
                    p if p
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
                    {
                        Some(p.to_string())
                    }
                    p => {
                        return Err(format!(
                            "[tenancy] query_param: {p:?} is not a plain parameter name"
                        ))
                    }
                },
            },
            require_origin: self.tenancy.require_origin,
            cors,
            tracing: self.tracing.validate()?,
            cluster,
            usage,
        })
    }
}

impl RawCluster {
    fn validate(&self, store: &StoreConfig) -> Result<ClusterSettings, String> {
        let shared = match self.scope.as_str() {
            "replica" => false,
            "cluster" => true,
            other => {
                return Err(format!(
                    "[cluster] scope: {other:?} is not one of \"replica\", \"cluster\""
                ))
            }
        };
        let watch_changes = match store {
            StoreConfig::MongoDb(m) => m.watch_changes,
            StoreConfig::File { .. } if shared => {
                return Err("[cluster] scope: \"cluster\" shares limits through MongoDB; it needs [store] kind = \"mongodb\"".into())
            }
            StoreConfig::File { .. } => false,
        };
        let name = |key: &str, v: &str| {
            if v.is_empty() || v.contains(['$', '\0']) {
                Err(format!(
                    "[cluster] {key}: {v:?} is not a valid collection name"
                ))
            } else {
                Ok(v.to_string())
            }
        };
        let heartbeat = positive("[cluster] heartbeat_ms", self.heartbeat_ms)?;
        let member_timeout = match self.member_timeout_ms {
            0 => 3 * heartbeat,
            n if n <= heartbeat => {
                return Err(format!(
                "[cluster] member_timeout_ms: {n} must be longer than heartbeat_ms ({heartbeat})"
            ))
            }
            n => n,
        };
        let replica_id = match self.replica_id.as_str() {
            // Generated when the coordinator starts (so a reload compares equal).
            "" => String::new(),
            id if id.len() <= 200 && !id.contains('\0') => id.to_string(),
            id => return Err(format!("[cluster] replica_id: {id:?} is not a usable id")),
        };
        Ok(ClusterSettings {
            shared,
            replica_id,
            collection: name("collection", &self.collection)?,
            quota_collection: name("quota_collection", &self.quota_collection)?,
            heartbeat: Duration::from_millis(heartbeat),
            member_timeout: Duration::from_millis(member_timeout),
            flush: Duration::from_millis(positive("[cluster] flush_ms", self.flush_ms)?),
            watch_changes,
        })
    }
}

impl RawUsage {
    fn validate(&self, store: &StoreConfig) -> Result<UsageSettings, String> {
        if self.collection.is_empty() || self.collection.contains(['$', '\0']) {
            return Err(format!(
                "[usage] collection: {:?} is not a valid collection name",
                self.collection
            ));
        }
        let path = match (store, self.path.as_str()) {
            (_, p) if !p.is_empty() => Some(PathBuf::from(p)),
            (StoreConfig::File { path, .. }, _) => {
                let mut file = path.clone().into_os_string();
                file.push(".usage.jsonl");
                Some(PathBuf::from(file))
            }
            (StoreConfig::MongoDb(_), _) => None,
        };
        Ok(UsageSettings {
            enabled: self.enabled,
            collection: self.collection.clone(),
            path,
            max_pending: positive("[usage] max_pending", self.max_pending)? as usize,
        })
    }
}

impl RawTracing {
    fn validate(self) -> Result<crate::telemetry::trace::TracingSettings, String> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(format!(
                "[tracing] sample_ratio: {} is not between 0.0 and 1.0",
                self.sample_ratio
            ));
        }
        let uri: http::Uri = self
            .endpoint
            .parse()
            .map_err(|_| format!("[tracing] endpoint: {:?} is not a URL", self.endpoint))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(format!(
                "[tracing] endpoint: {:?} must be an http:// URL (OTLP/HTTP to a collector; \
                 this build exports without TLS)",
                self.endpoint
            ));
        }
        if self.service_name.is_empty() {
            return Err("[tracing] service_name: must not be empty".into());
        }
        let settings = crate::telemetry::trace::TracingSettings {
            enabled: self.enabled,
            endpoint: self.endpoint,
            service_name: self.service_name,
            sample_ratio: self.sample_ratio,
        };
        if settings.enabled && !cfg!(feature = "otel") {
            return Err(crate::telemetry::trace::EXPORT_NOT_BUILT.into());
        }
        Ok(settings)
    }
}

impl Config {
    /// The request rules of this config, as the pipeline reads them.
    pub fn policy(&self) -> Policy {
        Policy {
            key_sources: self.key_sources.clone(),
            require_origin: self.require_origin,
            cors: self.cors.clone(),
            max_header_bytes: self.max_header_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_keys_are_checked() {
        let c = Config::parse("", "g.toml").unwrap();
        assert!(!c.tracing.enabled);
        for (text, needle) in [
            ("[tracing]\nsample_ratio = 1.5", "sample_ratio"),
            (
                "[tracing]\nendpoint = \"https://otel.example/v1/traces\"",
                "http://",
            ),
            ("[tracing]\nendpoint = \"not a url\"", "not a URL"),
            ("[tracing]\nservice_name = \"\"", "service_name"),
        ] {
            let err = Config::parse(text, "g.toml").unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
        let enabled = Config::parse("[tracing]\nenabled = true", "g.toml");
        assert_eq!(enabled.is_ok(), cfg!(feature = "otel"), "{enabled:?}");
    }

    #[test]
    fn defaults_are_valid_and_the_tenant_header_is_always_allowed() {
        let c = Config::parse("", "g.toml").unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.admin_listen.unwrap().to_string(), "127.0.0.1:9090");
        assert!(c.require_origin);
        assert!(c
            .cors
            .allow_headers
            .to_str()
            .unwrap()
            .contains("X-Tenant-ID"));
        let c = Config::parse(
            "[tenancy]\nheader = \"X-Api-Key\"\n[admin]\nlisten = \"\"",
            "g.toml",
        )
        .unwrap();
        assert!(c
            .cors
            .allow_headers
            .to_str()
            .unwrap()
            .ends_with("X-Api-Key"));
        assert!(c.admin_listen.is_none());
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let cases = [
            ("[server]\nlisen = \"x\"", "lisen"),
            ("[nope]\na = 1", "nope"),
            ("[server]\nlisten = \"localhost\"", "[server] listen"),
            ("[upstream]\nurl = \"chat:3000\"", "[upstream] url"),
            (
                "[upstream]\nresponse_timeout_ms = 0",
                "[upstream] response_timeout_ms",
            ),
            (
                "[upstream]\nconnect_timeout_ms = \"soon\"",
                "connect_timeout_ms",
            ),
            ("[store]\nkind = \"redis\"", "[store] kind"),
            ("[store]\nkind = \"mongodb\"", "[store] uri"),
            (
                "[store]\nkind = \"mongodb\"\nuri = \"postgres://db\"",
                "[store] uri",
            ),
            (
                "[store]\nkind = \"mongodb\"\nuri = \"mongodb://db\"\ncollection = \"\"",
                "[store] collection",
            ),
            ("[cache]\nttl_secs = 0", "[cache] ttl_secs"),
            ("[tenancy]\nheader = \"bad header\"", "[tenancy] header"),
            ("[cors]\nallow_headers = [\"a b\"]", "[cors] allow_headers"),
        ];
        for (text, key) in cases {
            let err = Config::parse(text, "gw.toml").unwrap_err().to_string();
            assert!(err.starts_with("gw.toml: "), "{err}");
            assert!(err.contains(key), "{text:?} -> {err}");
        }
    }
}

#[cfg(test)]
mod env_overrides {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_variables_override_the_file() {
        let text = "[upstream]\nurl = \"http://a:1\"\n[store]\nuri = \"mongodb://from-file\"\n";
        let vars = env(&[
            ("TENANTGATE_STORE_URI", "mongodb://user:secret@db:27017"),
            ("TENANTGATE_UPSTREAM_CONNECT_TIMEOUT_MS", "250"),
            ("TENANTGATE_TENANCY_REQUIRE_ORIGIN", "false"),
            ("TENANTGATE_SERVER_LISTEN", "127.0.0.1:9999"),
            ("PATH", "/usr/bin"),
        ]);
        let c = Config::parse_with_env(text, "g.toml", vars.clone()).unwrap();
        assert_eq!(c.forward.connect_timeout, Duration::from_millis(250));
        assert!(!c.require_origin);
        assert_eq!(c.listen.to_string(), "127.0.0.1:9999");
        assert_eq!(
            format!("{:?}", c.forward.default_upstream),
            "http://a:1",
            "keys not overridden stay"
        );
        // The URI (with its password) comes from the environment and never shows.
        let text = format!("{text}kind = \"mongodb\"\n");
        let c = Config::parse_with_env(&text, "g.toml", vars).unwrap();
        let StoreConfig::MongoDb(m) = &c.store else {
            panic!("{:?}", c.store)
        };
        assert_eq!(
            m.describe(),
            "mongodb db:27017 database \"tenantgate\" collection \"tenants\""
        );
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn bad_overrides_name_the_variable() {
        let err = Config::parse_with_env("", "g.toml", env(&[("TENANTGATE_SERVER_LISEN", "x")]))
            .unwrap_err();
        assert!(
            err.to_string().contains("TENANTGATE_SERVER_LISEN")
                && err.to_string().contains("lisen"),
            "{err}"
        );
        // A known section with an unknown key stays an error (a typo must not pass silently).
        let err = Config::parse_with_env("", "g.toml", env(&[("TENANTGATE_STORE_URL", "x")]))
            .unwrap_err();
        assert!(err.to_string().contains("TENANTGATE_STORE_URL"), "{err}");
        let err =
            Config::parse_with_env("", "g.toml", env(&[("TENANTGATE_SERVER", "x")])).unwrap_err();
        assert!(err.to_string().contains("TENANTGATE_SERVER"), "{err}");
        let err = Config::parse_with_env("", "g.toml", env(&[("TENANTGATE_CACHE_TTL_SECS", "0")]))
            .unwrap_err();
        assert!(err.to_string().contains("[cache] ttl_secs"), "{err}");
    }

    #[test]
    fn variables_of_no_config_section_are_ignored_and_reported() {
        // What Kubernetes sets in every pod of a namespace with a Service named `tenantgate`.
        let vars = env(&[
            ("TENANTGATE_PORT", "tcp://10.0.0.1:8080"),
            ("TENANTGATE_SERVICE_HOST", "10.0.0.1"),
            ("TENANTGATE_PORT_8080_TCP_ADDR", "10.0.0.1"),
            ("TENANTGATE_BIN", "/usr/local/bin/tenantgate"),
            ("TENANTGATE_CACHE_TTL_SECS", "7"),
        ]);
        let c = Config::parse_with_env("", "g.toml", vars).unwrap();
        assert_eq!(
            c.cache.ttl,
            Duration::from_secs(7),
            "known keys still apply"
        );
        assert_eq!(
            c.ignored_env,
            [
                "TENANTGATE_BIN",
                "TENANTGATE_PORT",
                "TENANTGATE_PORT_8080_TCP_ADDR",
                "TENANTGATE_SERVICE_HOST"
            ]
        );
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    /// `gateway.example.toml` parses, and shows every default this code uses.
    #[test]
    fn the_example_config_is_valid_and_shows_the_defaults() {
        let text = include_str!("../../gateway.example.toml");
        let example: RawConfig = toml::from_str(text).unwrap();
        let defaults = RawConfig::default();
        assert_eq!(
            format!("{example:?}"),
            format!("{defaults:?}"),
            "gateway.example.toml and the defaults disagree"
        );
        Config::parse(text, "gateway.example.toml").unwrap();
    }
}
