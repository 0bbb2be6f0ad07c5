//! The command line (a contract: see DESIGN.md).
//!
//! ```text
//! tenantgate run --config gateway.toml      serve
//! tenantgate check --config gateway.toml    validate the config, reach the store, summarise
//! tenantgate demo                           zero set-up: sample backend + gateway + tenants
//! tenantgate backend [--listen ADDR]        the sample backend alone (compose, Kubernetes)
//! tenantgate tenants list|get|put|import|export|enable|disable|delete --config gateway.toml
//! tenantgate usage [--tenant KEY] [--since RFC3339] [--format table|json|csv] --config FILE
//! tenantgate completions bash|zsh|fish|elvish|powershell    shell completion script
//! tenantgate man                            the manual page (roff)
//! ```
//!
//! Exit codes (sysexits): 0 fine, 64 invalid config or arguments, 65 invalid tenant document,
//! 69 store unreachable, 1 anything else (a port in use, an unknown tenant).

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::run::config::{Config, StoreConfig};
use crate::telemetry::logging::{self, LogFormat};
use crate::tenants::store::file::{FileDocuments, FileStore};
use crate::tenants::store::mongodb::MongoStore;
use crate::tenants::store::{StoreError, TenantDocuments, TenantStore};
use crate::tenants::tenant::{format_instant, TenantRecord};

pub const EXIT_CONFIG: u8 = 64;
pub const EXIT_DATA: u8 = 65;
pub const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Debug, Parser)]
#[command(
    name = "tenantgate",
    version,
    about = "Multi-tenant sidecar reverse proxy: tenant lookup, dynamic CORS, per-tenant concurrency caps, header injection."
)]
struct Cli {
    /// Log lines as text or as one JSON object each.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate the config and reach the store; print a summary (exit 0, 64 or 69).
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start a sample backend and the gateway with example tenants, and print commands to try.
    Demo {
        /// Where the demo gateway listens (a free port is used when this one is taken).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Serve only the sample backend (echoes requests; /slow, /stream, /events, /upload):
    /// a stand-in for your single-tenant service in the compose and Kubernetes examples.
    Backend {
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: SocketAddr,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to standard output.
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff) to standard output: `tenantgate man > tenantgate.1`.
    Man,
    /// Report usage per tenant and UTC hour (requests by status class, rejections by code,
    /// bytes in and out) from the usage collection (MongoDB) or file (file store).
    Usage {
        #[arg(long, short)]
        config: PathBuf,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Only hours starting at or after this instant (RFC 3339, e.g. 2026-12-01T00:00:00Z).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, value_enum, default_value_t = UsageFormat::Table)]
        format: UsageFormat,
    },
    /// Manage tenant documents in the store the config names.
    Tenants {
        /// The gateway config that names the store (required).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: TenantsAction,
    },
}

/// How `tenantgate usage` prints.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum UsageFormat {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Subcommand)]
enum TenantsAction {
    /// One line per tenant: key, state, cap, origins.
    List,
    /// Print one tenant's document.
    Get { key: String },
    /// Insert or replace one document (JSON object) read from FILE or standard input.
    Put {
        #[arg(default_value = "-")]
        file: PathBuf,
    },
    /// Insert or replace every document of a JSON array read from FILE or standard input
    /// (idempotent: upsert by apiKey).
    Import {
        #[arg(default_value = "-")]
        file: PathBuf,
    },
    /// Print every document as a JSON array.
    Export,
    /// Set isActive = true.
    Enable { key: String },
    /// Set isActive = false.
    Disable { key: String },
    /// Remove a tenant.
    Delete { key: String },
    /// Rotate a tenant's key in one step: KEY becomes a retired key, accepted (its responses
    /// carry `Deprecation` and `Sunset`) for the grace period, and the new key becomes the
    /// apiKey. Prints the new key on standard output.
    Rotate {
        /// The tenant's current apiKey.
        key: String,
        /// The new key (1-128 characters of [A-Za-z0-9._-]); generated when not given.
        #[arg(long)]
        new_key: Option<String>,
        /// How long the old key keeps working: 30d, 12h, 90m, …
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print to stdout and succeed; usage errors are sysexits' 64.
        Err(e) => {
            let _ = e.print();
            return match e.use_stderr() {
                true => ExitCode::from(EXIT_CONFIG),
                false => ExitCode::SUCCESS,
            };
        }
    };
    match cli.command {
        Command::Run { config } => run(&config, cli.log_format),
        Command::Check { config } => check(&config),
        Command::Usage {
            config,
            tenant,
            since,
            format,
        } => usage(&config, tenant.as_deref(), since.as_deref(), format),
        Command::Demo { listen } => {
            let _guard = logging::init(cli.log_format);
            runtime().block_on(crate::run::demo::run(listen))
        }
        Command::Backend { listen } => {
            let _guard = logging::init(cli.log_format);
            runtime().block_on(async {
                let listener = match tokio::net::TcpListener::bind(listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("tenantgate: cannot listen on {listen}: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                tracing::info!(%listen, "sample backend listening");
                tokio::select! {
                    _ = crate::run::demo::serve_backend(listener, Default::default()) => {}
                    signal = crate::run::server::shutdown_signal() => tracing::info!(signal, "sample backend stopped"),
                }
                ExitCode::SUCCESS
            })
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "tenantgate", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man => {
            let page = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
            match page.render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tenantgate: cannot write the manual page: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Tenants {
            config: Some(config),
            action,
        } => tenants(&config, action),
        Command::Tenants { config: None, .. } => {
            eprintln!(
                "tenantgate: tenants: --config FILE is required (the config names the store)"
            );
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// The main Tokio runtime: single-threaded. It accepts connections and runs the admin listener
/// and the store's background work; client connections are served by [`connection_threads`]
/// threads of their own (see `server`), or on this runtime when that is 1.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot start the Tokio runtime")
}

/// Threads serving client connections: `TOKIO_WORKER_THREADS`, else one per core.
fn connection_threads() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("tenantgate: invalid config: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn run(path: &Path, format: LogFormat) -> ExitCode {
    let mut config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    config.workers = connection_threads();
    let _guard = logging::init(format);
    if !config.ignored_env.is_empty() {
        tracing::warn!(
            variables = %config.ignored_env.join(", "),
            "ignoring environment variables that name no config section \
             (overrides are TENANTGATE_<SECTION>_<KEY>; Kubernetes sets TENANTGATE_PORT and the \
             like for a Service named tenantgate)"
        );
    }
    runtime().block_on(async {
        let running = match crate::run::server::start(config).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("tenantgate: {e}");
                return ExitCode::FAILURE;
            }
        };
        #[cfg(unix)]
        tokio::spawn(reload_on_sighup(running.reloader.clone()));
        let signal = crate::run::server::shutdown_signal().await;
        tracing::info!(signal, "shutdown requested");
        running.shutdown();
        running.wait().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// Reloads the config on every SIGHUP (see [`crate::run::reload::Reloader`]).
#[cfg(unix)]
async fn reload_on_sighup(reloader: Arc<crate::run::reload::Reloader>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        let reloader = reloader.clone();
        match tokio::task::spawn_blocking(move || reloader.reload()).await {
            Ok(Ok(done)) => tracing::info!(%done, "config reloaded (SIGHUP)"),
            Ok(Err(why)) => {
                tracing::error!(%why, "config not reloaded (SIGHUP); the running config stays")
            }
            Err(e) => tracing::error!(error = %e, "config reload failed"),
        }
    }
}

fn check(path: &Path) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    println!("config {}: ok", path.display());
    println!("  listen   {}", config.listen);
    println!(
        "  admin    {}",
        config
            .admin_listen
            .map_or("disabled".into(), |a| a.to_string())
    );
    println!("  upstream {:?}", config.forward.default_upstream);
    if let Some(files) = &config.tls {
        match crate::run::tls::load_certified_key(files) {
            Ok(_) => println!("  tls      {} (key matches)", files.cert.display()),
            Err(e) => {
                eprintln!("tenantgate: invalid config: [tls] {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    if let Err(e) = crate::run::tls::connector(config.forward.ca_file.as_deref()) {
        eprintln!("tenantgate: invalid config: [upstream] ca_file: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let t = &config.tracing;
    match t.enabled {
        true => println!(
            "  tracing  OTLP to {} as {:?}, sample ratio {}",
            t.endpoint, t.service_name, t.sample_ratio
        ),
        false => println!("  tracing  off (a client's traceparent passes through)"),
    }
    runtime().block_on(async {
        let (store, documents) = match open_documents(&config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("tenantgate: store unreachable: {e}");
                return ExitCode::from(EXIT_UNAVAILABLE);
            }
        };
        println!("  store    {}", store.describe());
        if let Err(e) = store.ping().await {
            println!("store unreachable: {e}");
            eprintln!("tenantgate: store unreachable: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
        let docs = match documents.list().await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("tenantgate: store unreachable: {e}");
                return ExitCode::from(EXIT_UNAVAILABLE);
            }
        };
        let (mut active, mut inactive, mut invalid) = (0, 0, Vec::new());
        for doc in docs {
            match TenantRecord::from_json(doc) {
                Ok(TenantRecord::Valid(t)) if t.active => active += 1,
                Ok(TenantRecord::Valid(_)) => inactive += 1,
                Ok(TenantRecord::Misconfigured { key, reason, .. }) => {
                    invalid.push(format!("{key}: {reason}"))
                }
                Err(reason) => invalid.push(format!("(skipped document) {reason}")),
            }
        }
        println!(
            "  tenants  {active} active, {inactive} inactive, {} invalid",
            invalid.len()
        );
        for problem in &invalid {
            println!("    invalid: {problem}");
        }
        ExitCode::SUCCESS
    })
}

/// `tenantgate usage`: the usage records of the config's store, summed by tenant and hour.
fn usage(path: &Path, tenant: Option<&str>, since: Option<&str>, format: UsageFormat) -> ExitCode {
    use crate::tenants::usage::{HourUsage, Report};
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let since = match since.map(crate::tenants::tenant::parse_instant).transpose() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tenantgate: usage: --since: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if !config.usage.enabled {
        eprintln!("tenantgate: usage: metering is off in {} ([usage] enabled = false); showing what was recorded before", path.display());
    }
    let records: Result<Vec<HourUsage>, String> = match &config.store {
        StoreConfig::MongoDb(settings) => runtime().block_on(async {
            let db = MongoStore::background_database(settings)
                .await
                .map_err(|e| e.to_string())?;
            let coll = db.collection(&config.usage.collection);
            crate::tenants::metering::read_usage(&coll, tenant)
                .await
                .map_err(|e| format!("{}: {e}", settings.describe()))
        }),
        StoreConfig::File { .. } => {
            let file = config.usage.path.clone().unwrap_or_default();
            match std::fs::read_to_string(&file) {
                Ok(text) => Ok(text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                    .filter_map(|(i, l)| match serde_json::from_str::<HourUsage>(l) {
                        Ok(u) => Some(u),
                        Err(e) => {
                            eprintln!(
                                "tenantgate: usage: {} line {}: skipped ({e})",
                                file.display(),
                                i + 1
                            );
                            None
                        }
                    })
                    .filter(|u| tenant.is_none_or(|t| u.tenant == t))
                    .collect()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(format!("cannot read {}: {e}", file.display())),
            }
        }
    };
    let records = match records {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tenantgate: store unreachable: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let mut report = Report::default();
    for u in records {
        let starts = crate::tenants::tenant::parse_instant(&u.hour).ok();
        if let (Some(since), Some(starts)) = (since, starts) {
            if starts < since {
                continue;
            }
        }
        report.add(u);
    }
    print!(
        "{}",
        match format {
            UsageFormat::Table => report.table(),
            UsageFormat::Json => report.json() + "\n",
            UsageFormat::Csv => report.csv(),
        }
    );
    ExitCode::SUCCESS
}

/// The store the config names, for lookups (`check`) and document management, without the
/// gateway's background work (no index creation, no change watching, no file polling).
async fn open_documents(
    config: &Config,
) -> Result<(Arc<dyn TenantStore>, Box<dyn TenantDocuments>), StoreError> {
    Ok(match &config.store {
        StoreConfig::File {
            path,
            poll_interval,
        } => (
            FileStore::open(path.clone(), *poll_interval),
            Box::new(FileDocuments::new(path.clone())),
        ),
        StoreConfig::MongoDb(settings) => {
            let store = MongoStore::connect(settings.clone()).await?;
            (store.clone(), Box::new(store.documents()))
        }
    })
}

fn read_input(file: &Path) -> Result<serde_json::Value, String> {
    let text = if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        s
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?
    };
    serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", file.display()))
}

fn tenants(config_path: &Path, action: TenantsAction) -> ExitCode {
    let config = match load_config(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = runtime().block_on(async {
        let (_, docs) = open_documents(&config).await?;
        tenants_action(docs.as_ref(), action).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Store(e @ StoreError::Invalid(_))) => {
            eprintln!("tenantgate: refused: {e}");
            ExitCode::from(EXIT_DATA)
        }
        Err(Failure::Store(e)) => {
            eprintln!("tenantgate: store unreachable: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
        Err(Failure::Input(e)) => {
            eprintln!("tenantgate: {e}");
            ExitCode::from(EXIT_DATA)
        }
        Err(Failure::NotFound(key)) => {
            eprintln!("tenantgate: no tenant has apiKey {key:?}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Store(StoreError),
    Input(String),
    NotFound(String),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

async fn tenants_action(docs: &dyn TenantDocuments, action: TenantsAction) -> Result<(), Failure> {
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    match action {
        TenantsAction::List => {
            for doc in docs.list().await? {
                let key = doc
                    .get("apiKey")
                    .and_then(|k| k.as_str())
                    .unwrap_or("?")
                    .to_string();
                let line = match TenantRecord::from_json(doc) {
                    Ok(TenantRecord::Valid(t)) => {
                        let mut line = format!(
                            "{key}\t{}\tmax={}\torigins={}",
                            if t.active { "active" } else { "inactive" },
                            t.max_concurrent,
                            t.origins.index_keys().collect::<Vec<_>>().join(",")
                        );
                        for r in t.retired_keys.iter() {
                            line.push_str(&format!(
                                "\tretired={}(until {})",
                                r.key,
                                format_instant(r.until)
                            ));
                        }
                        line
                    }
                    Ok(TenantRecord::Misconfigured { reason, .. }) => {
                        format!("{key}\tinvalid\t{reason}")
                    }
                    Err(reason) => format!("{key}\tinvalid\t{reason}"),
                };
                println!("{line}");
            }
        }
        TenantsAction::Get { key } => {
            let doc = docs.get(&key).await?.ok_or(Failure::NotFound(key))?;
            println!("{}", pretty(&doc));
        }
        TenantsAction::Put { file } => {
            let doc = read_input(&file).map_err(Failure::Input)?;
            if !doc.is_object() {
                return Err(Failure::Input(
                    "put takes one JSON object; use import for an array".into(),
                ));
            }
            docs.upsert(vec![doc]).await?;
            println!("stored 1 tenant");
        }
        TenantsAction::Import { file } => {
            let serde_json::Value::Array(all) = read_input(&file).map_err(Failure::Input)? else {
                return Err(Failure::Input(
                    "import takes a JSON array of tenant documents".into(),
                ));
            };
            let n = docs.upsert(all).await?;
            println!("imported {n} tenants");
        }
        TenantsAction::Export => {
            println!("{}", pretty(&serde_json::Value::Array(docs.list().await?)));
        }
        TenantsAction::Enable { key } => set_active(docs, key, true).await?,
        TenantsAction::Disable { key } => set_active(docs, key, false).await?,
        TenantsAction::Delete { key } => {
            if !docs.delete(&key).await? {
                return Err(Failure::NotFound(key));
            }
            println!("deleted {key}");
        }
        TenantsAction::Rotate {
            key,
            new_key,
            grace,
        } => {
            let doc = docs
                .get(&key)
                .await?
                .ok_or_else(|| Failure::NotFound(key.clone()))?;
            let new_key = new_key.unwrap_or_else(generate_key);
            let until = std::time::SystemTime::now() + grace;
            let rotated = rotate(doc, &new_key, until).map_err(Failure::Input)?;
            let replaced = docs.replace(&key, rotated).await.map_err(|e| match e {
                StoreError::Invalid(why) => {
                    StoreError::Invalid(format!("rotating {key:?} to {new_key:?}: {why}"))
                }
                other => other,
            })?;
            if !replaced {
                return Err(Failure::NotFound(key));
            }
            eprintln!(
                "rotated: {new_key} is the apiKey; {key} keeps working until {}",
                format_instant(until)
            );
            println!("{new_key}");
        }
    }
    Ok(())
}

/// A new tenant key: `tnt_` and 24 random lowercase letters and digits. Keys are public
/// identifiers, not secrets; they only need to be unguessable enough not to collide.
fn generate_key() -> String {
    let mut rng = fastrand::Rng::new();
    let mut key = String::from("tnt_");
    key.extend((0..24).map(|_| rng.alphanumeric().to_ascii_lowercase()));
    key
}

/// The document with `new_key` as its apiKey and the old key retired until `until` (since now).
/// A retired key of the tenant's own that becomes its key again leaves `retiredKeys`.
fn rotate(
    mut doc: serde_json::Value,
    new_key: &str,
    until: std::time::SystemTime,
) -> Result<serde_json::Value, String> {
    let old = doc["apiKey"].as_str().unwrap_or_default().to_string();
    if !crate::tenants::tenant::is_valid_key(new_key.as_bytes()) {
        return Err(format!(
            "--new-key {new_key:?} is not 1-128 characters of [A-Za-z0-9._-]"
        ));
    }
    if new_key == old {
        return Err(format!("--new-key {new_key:?} is the tenant's key already"));
    }
    let mut retired = match doc.get("retiredKeys") {
        Some(serde_json::Value::Array(list)) => list.clone(),
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(_) => return Err(format!("tenant {old:?}: retiredKeys is not an array")),
    };
    retired.retain(|r| r.get("key").and_then(|k| k.as_str()) != Some(new_key));
    retired.push(serde_json::json!({
        "key": old,
        "until": format_instant(until),
        "since": format_instant(std::time::SystemTime::now()),
    }));
    doc["apiKey"] = new_key.into();
    doc["retiredKeys"] = retired.into();
    Ok(doc)
}

async fn set_active(docs: &dyn TenantDocuments, key: String, active: bool) -> Result<(), Failure> {
    let mut doc = docs
        .get(&key)
        .await?
        .ok_or_else(|| Failure::NotFound(key.clone()))?;
    doc["isActive"] = serde_json::Value::Bool(active);
    docs.upsert(vec![doc]).await?;
    println!("{key} {}", if active { "enabled" } else { "disabled" });
    Ok(())
}
