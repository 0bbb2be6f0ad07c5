//! The audit log: one `tenantgate::audit` line for every change to a tenant document the
//! gateway observes — a change-stream event or a file reload (which refresh the tenant at
//! once), or a TTL refresh that finds a different document. The line names the key, what
//! happened (`updated`, `created`, `deleted`), which fields changed, and their old and new
//! values; secrets show as `<redacted>`.
//!
//! Secrets: `providerConfig.connectionString`, and every field whose name — or the name of an
//! object it is in — contains `secret`, `password`, `passwd`, `token`, `credential`,
//! `privatekey` or `connectionstring` (any case), at any depth.
//! Turn the lines off with `RUST_LOG=info,tenantgate::audit=off`; they are `info`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// A document as seen by one lookup: `None` when no document had the key.
pub type Seen = Option<Arc<Value>>;

/// What differs between two versions of a document: `(dotted path, old, new)` for every leaf
/// (a string, number, boolean, null or array, compared whole) that changed, in path order;
/// objects are compared field by field, also when only one side has one (or there is no
/// document on one side: every field of the other is listed).
pub fn changed_fields<'a>(
    old: Option<&'a Value>,
    new: Option<&'a Value>,
) -> Vec<(String, Option<&'a Value>, Option<&'a Value>)> {
    let mut out = Vec::new();
    walk(String::new(), old, new, &mut out);
    out
}

fn walk<'a>(
    path: String,
    old: Option<&'a Value>,
    new: Option<&'a Value>,
    out: &mut Vec<(String, Option<&'a Value>, Option<&'a Value>)>,
) {
    let (o, n) = (
        old.and_then(Value::as_object),
        new.and_then(Value::as_object),
    );
    if o.is_none() && n.is_none() {
        if old != new {
            out.push((path, old, new));
        }
        return;
    }
    // An object on either side is compared field by field (so each secret inside is redacted
    // on its own); what stood in its place on the other side, if anything, is listed as gone
    // or come.
    if o.is_none() && old.is_some() {
        out.push((path.clone(), old, None));
    }
    if n.is_none() && new.is_some() {
        out.push((path.clone(), None, new));
    }
    let mut names: Vec<&String> = o.iter().chain(n.iter()).flat_map(|m| m.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let child = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        walk(
            child,
            o.and_then(|m| m.get(name)),
            n.and_then(|m| m.get(name)),
            out,
        );
    }
}

/// Whether a field holds a secret (see the module docs).
fn is_secret(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.split('.').any(|name| {
        [
            "secret",
            "password",
            "passwd",
            "token",
            "credential",
            "privatekey",
            "connectionstring",
        ]
        .iter()
        .any(|s| name.contains(s))
    })
}

/// A value for the log line: compact JSON, `<redacted>` for secrets, `(none)` when absent,
/// long values cut at 200 characters.
fn shown(path: &str, value: Option<&Value>) -> String {
    let Some(value) = value else {
        return "(none)".into();
    };
    if is_secret(path) {
        return "<redacted>".into();
    }
    let mut text = value.to_string();
    if text.len() > 200 {
        let mut cut = 200;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// The changes of one observed transition, or `None` when nothing changed.
pub struct Change {
    pub kind: &'static str,
    /// The changed fields, `, `-separated.
    pub fields: String,
    /// `field: old → new` for each, `; `-separated, secrets redacted.
    pub changes: String,
}

/// Describes the transition from `old` to `new` for the audit line.
pub fn describe(old: &Seen, new: &Seen) -> Option<Change> {
    let kind = match (old, new) {
        (None, None) => return None,
        (None, Some(_)) => "created",
        (Some(_), None) => "deleted",
        (Some(o), Some(n)) if o == n => return None,
        (Some(_), Some(_)) => "updated",
    };
    let diff = changed_fields(old.as_deref(), new.as_deref());
    let fields = diff
        .iter()
        .map(|(p, _, _)| p.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let changes = diff
        .iter()
        .map(|(p, a, b)| format!("{p}: {} → {}", shown(p, *a), shown(p, *b)))
        .collect::<Vec<_>>()
        .join("; ");
    Some(Change {
        kind,
        fields,
        changes,
    })
}

/// The audit trail of one directory: the last document seen for each key it looked up, and
/// the transitions logged lately (one change seen through two keys of a tenant — its current
/// key and a retired one — is logged once).
#[derive(Default)]
pub struct AuditTrail {
    state: Mutex<TrailState>,
    /// Most keys remembered; past it the memory starts over (changes to forgotten keys are
    /// logged again from their next-but-one lookup).
    max_keys: usize,
}

#[derive(Default)]
struct TrailState {
    seen: std::collections::HashMap<Arc<str>, Seen>,
    logged: VecDeque<(Seen, Seen)>,
}

/// Transitions remembered to log each once.
const RECENT_LOGGED: usize = 32;

impl AuditTrail {
    pub fn new(max_keys: usize) -> AuditTrail {
        AuditTrail {
            state: Mutex::default(),
            max_keys,
        }
    }

    /// Whether `key` has been looked up before (its changes are worth a prompt refresh).
    pub fn knows(&self, key: &str) -> bool {
        self.lock().seen.contains_key(key)
    }

    /// Records what a lookup of `key` found, logging the change when it differs from what the
    /// previous lookup found. The first lookup of a key logs nothing (nothing to compare), and
    /// keys that never resolved to a document are not remembered; a tenant that was deleted
    /// and comes back is logged as `created`.
    pub fn observe(&self, key: &Arc<str>, now: Seen) {
        let mut state = self.lock();
        if now.is_none() && !state.seen.contains_key(key) {
            // An unknown key never seen as a tenant: nothing to compare with later (and random
            // keys must not fill this memory).
            return;
        }
        if state.seen.len() >= self.max_keys && !state.seen.contains_key(key) {
            state.seen.clear();
        }
        let before = state.seen.insert(key.clone(), now.clone());
        let Some(before) = before else { return };
        let same = match (&before, &now) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        let transition = (before, now);
        if state.logged.iter().any(|t| *t == transition) {
            return;
        }
        if let Some(change) = describe(&transition.0, &transition.1) {
            let tenant = [&transition.1, &transition.0]
                .into_iter()
                .flatten()
                .find_map(|d| d.get("apiKey").and_then(|k| k.as_str()))
                .unwrap_or("?");
            tracing::info!(
                target: "tenantgate::audit",
                key = %key,
                tenant,
                change = change.kind,
                fields = %change.fields,
                changes = %change.changes,
                "tenant document changed"
            );
        }
        if state.logged.len() >= RECENT_LOGGED {
            state.logged.pop_front();
        }
        state.logged.push_back(transition);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TrailState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_trail_remembers_tenants_not_random_keys() {
        let trail = AuditTrail::new(100);
        let key: Arc<str> = Arc::from("tnt_random");
        trail.observe(&key, None);
        assert!(
            !trail.knows("tnt_random"),
            "unknown keys are not remembered"
        );
        let key: Arc<str> = Arc::from("tnt_a");
        trail.observe(&key, doc(json!({"apiKey": "tnt_a"})));
        assert!(trail.knows("tnt_a"));
        trail.observe(&key, None); // deleted: remembered as gone, so a return is "created"
        assert!(trail.knows("tnt_a"));
    }

    fn doc(v: Value) -> Seen {
        Some(Arc::new(v))
    }

    #[test]
    fn changes_name_the_fields_with_old_and_new_values_and_hide_secrets() {
        let old = doc(
            json!({"apiKey": "tnt_a", "isActive": true, "maxConcurrentConnections": 100,
            "providerConfig": {"connectionString": "endpoint=x;accesskey=OLD-SECRET",
                               "resources": {"region": "eu"}},
            "billing": {"apiToken": "tok-OLD"}, "notes": "same"}),
        );
        let new = doc(
            json!({"apiKey": "tnt_a", "isActive": false, "maxConcurrentConnections": 100,
            "providerConfig": {"connectionString": "endpoint=x;accesskey=NEW-SECRET",
                               "resources": {"region": "us"}},
            "billing": {"apiToken": "tok-NEW"}, "notes": "same", "limits": {"maxBodyBytes": 10}}),
        );
        let c = describe(&old, &new).unwrap();
        assert_eq!(c.kind, "updated");
        assert_eq!(
            c.fields,
            "billing.apiToken, isActive, limits.maxBodyBytes, providerConfig.connectionString, providerConfig.resources.region"
        );
        assert!(
            c.changes.contains("isActive: true → false"),
            "{}",
            c.changes
        );
        assert!(
            c.changes
                .contains("providerConfig.resources.region: \"eu\" → \"us\""),
            "{}",
            c.changes
        );
        assert!(
            c.changes.contains("limits.maxBodyBytes: (none) → 10"),
            "{}",
            c.changes
        );
        assert!(c
            .changes
            .contains("providerConfig.connectionString: <redacted> → <redacted>"));
        assert!(c
            .changes
            .contains("billing.apiToken: <redacted> → <redacted>"));
        for secret in ["SECRET", "tok-"] {
            assert!(!c.changes.contains(secret), "{}", c.changes);
        }
        assert!(describe(&old, &old.clone()).is_none());
        let gone = describe(&old, &None).unwrap();
        assert_eq!(gone.kind, "deleted");
        assert!(
            gone.changes.contains("apiKey: \"tnt_a\" → (none)"),
            "{}",
            gone.changes
        );
        assert!(!gone.changes.contains("OLD-SECRET"));
        assert_eq!(describe(&None, &new).unwrap().kind, "created");
        // Objects that appear or go are listed field by field, each secret hidden.
        let with = doc(json!({"apiKey": "k", "credentials": {"user": "u", "pass": "p1"}}));
        let without = doc(json!({"apiKey": "k", "credentials": "none"}));
        let c = describe(&with, &without).unwrap();
        assert_eq!(c.fields, "credentials, credentials.pass, credentials.user");
        assert!(
            !c.changes.contains("p1") && !c.changes.contains("\"u\""),
            "{}",
            c.changes
        );
    }
}
