//! Logs: human-readable text or one JSON object per line (`--log-format json`), written by a
//! background thread so request handling never waits on stdout. Level from `RUST_LOG` (default
//! `info`). Each request is logged once, by target `tenantgate::access`. Secrets (connection
//! strings, store passwords) are never passed to the logger.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global logger; keep the guard alive until exit so buffered lines are written.
pub fn init(format: LogFormat) -> WorkerGuard {
    let stdout = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());
    let (writer, guard) = tracing_appender::non_blocking(stdout);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    guard
}
