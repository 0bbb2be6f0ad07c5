//! Config reloads (SIGHUP, `POST /reload`): the new file is validated, then swapped in whole.

use std::sync::Arc;

use crate::pipeline::proxy::Gateway;
use crate::run::config::Config;

/// Re-reads the config file (SIGHUP, `POST /reload`). The new file is validated first; the keys
/// that only take effect at start-up must be unchanged, else nothing changes and the answer
/// names them. What a reload changes: `[tenancy]`, `[cors]`, `[server] max_header_bytes` (the
/// request rules) and `[upstream] url`, `response_timeout_ms`, `[server] max_body_bytes`,
/// `upgrade_idle_timeout_secs`, `inject_connection_string`, `[inject] headers` (the backend
/// side). The tenants themselves reload on their own (file polling, change streams, TTL).
pub struct Reloader {
    current: std::sync::Mutex<Config>,
    gateway: Arc<Gateway>,
}

impl Reloader {
    /// Reloads of `config` (the one the gateway started with) into `gateway`.
    pub fn new(config: Config, gateway: Arc<Gateway>) -> Reloader {
        Reloader {
            current: std::sync::Mutex::new(config),
            gateway,
        }
    }

    /// Applies the config file again; `Ok` says what happened, `Err` why nothing changed.
    pub fn reload(&self) -> Result<String, String> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let Some(path) = current.path.clone() else {
            return Err("this gateway was not started from a config file".into());
        };
        let new = Config::load(&path).map_err(|e| e.to_string())?;
        let restart = restart_only_changes(&current, &new);
        if !restart.is_empty() {
            return Err(format!(
                "{}: not reloaded: {} only take effect at start-up (restart to change them)",
                path.display(),
                restart.join(", ")
            ));
        }
        self.gateway.policy.store(Arc::new(new.policy()));
        self.gateway.forwarder.update(new.forward.clone());
        *current = new;
        Ok(format!("{}: reloaded", path.display()))
    }
}

/// The keys whose new value would need a restart.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n) = (&old.forward, &new.forward);
    [
        ("[server] listen", old.listen == new.listen),
        (
            "[server] max_connections",
            old.max_connections == new.max_connections,
        ),
        (
            "[server] shutdown_grace_secs",
            old.shutdown_grace == new.shutdown_grace,
        ),
        (
            "[server] header_read_timeout_secs",
            old.header_read_timeout == new.header_read_timeout,
        ),
        (
            "[admin]",
            old.admin_listen == new.admin_listen
                && old.metrics_top_tenants == new.metrics_top_tenants,
        ),
        ("[tls]", old.tls == new.tls),
        ("[tracing]", old.tracing == new.tracing),
        ("[store]", old.store == new.store),
        ("[cache]", old.cache == new.cache),
        ("[cluster]", old.cluster == new.cluster),
        ("[usage]", old.usage == new.usage),
        (
            "[upstream] connect_timeout_ms / pool_* / ca_file",
            o.connect_timeout == n.connect_timeout
                && o.pool_idle_timeout == n.pool_idle_timeout
                && o.pool_max_idle_per_host == n.pool_max_idle_per_host
                && o.ca_file == n.ca_file,
        ),
    ]
    .into_iter()
    .filter(|(_, same)| !same)
    .map(|(key, _)| key)
    .collect()
}
