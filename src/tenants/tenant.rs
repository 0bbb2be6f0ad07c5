//! The tenant document (the contract of DESIGN.md) and its validation into a [`Tenant`].
//!
//! Stores hand over raw documents; [`TenantRecord::from_document`] turns each into either a
//! ready-to-use [`Tenant`] or the reason it is misconfigured. A bad document only ever affects
//! its own tenant (`503 tenant_misconfigured`).

use std::fmt;
use std::sync::Arc;

use http::HeaderValue;
use serde::{Deserialize, Serialize};

use crate::http::upstream::Upstream;
use crate::tenants::origin::AllowedOrigins;

/// Longest accepted tenant key.
pub const MAX_KEY_LEN: usize = 128;

/// Whether `key` is 1-128 characters of `[A-Za-z0-9._-]`.
pub fn is_valid_key(key: &[u8]) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The tenant document exactly as stored (field names are the contract). Unknown fields are
/// ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantDocument {
    pub api_key: String,
    pub allowed_origins: Vec<String>,
    pub provider_config: ProviderConfig,
    pub is_active: bool,
    pub max_concurrent_connections: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
}

/// `providerConfig`: what the backend needs to reach this tenant's provider.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderConfig {
    /// A secret: injected only when the operator opts in, never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_string: Option<String>,
    pub resources: ProviderResources,
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field(
                "connection_string",
                &self.connection_string.as_ref().map(|_| "<redacted>"),
            )
            .field("resources", &self.resources)
            .finish()
    }
}

/// `providerConfig.resources`: injected as headers into every forwarded request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderResources {
    pub endpoint: String,
    pub region: String,
}

/// Highest accepted `maxConcurrentConnections`.
pub const MAX_CONCURRENCY: u64 = 1_000_000;

/// A validated tenant, ready for the request path.
#[derive(Clone, PartialEq, Eq)]
pub struct Tenant {
    pub key: Arc<str>,
    pub origins: AllowedOrigins,
    /// `X-Tenant-ID` as injected.
    pub key_header: HeaderValue,
    pub endpoint: HeaderValue,
    pub region: HeaderValue,
    /// Secret; see [`ProviderConfig::connection_string`].
    pub connection_string: Option<HeaderValue>,
    pub active: bool,
    pub max_concurrent: u32,
    /// This tenant's own backend, when it has one.
    pub upstream: Option<Upstream>,
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tenant")
            .field("key", &self.key)
            .field("origins", &self.origins)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field(
                "connection_string",
                &self.connection_string.as_ref().map(|_| "<redacted>"),
            )
            .field("active", &self.active)
            .field("max_concurrent", &self.max_concurrent)
            .field("upstream", &self.upstream)
            .finish()
    }
}

/// What a store knows about one key: a usable tenant, or why its document is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantRecord {
    Valid(Arc<Tenant>),
    Misconfigured { key: Arc<str>, reason: Arc<str> },
}

impl TenantRecord {
    /// The tenant key of the record.
    pub fn key(&self) -> &Arc<str> {
        match self {
            TenantRecord::Valid(t) => &t.key,
            TenantRecord::Misconfigured { key, .. } => key,
        }
    }

    /// Validates one raw document. `Err` when not even its `apiKey` is usable (such a document
    /// cannot belong to any tenant and is skipped with a log line by the store).
    pub fn from_json(doc: serde_json::Value) -> Result<TenantRecord, String> {
        let key = match doc.get("apiKey") {
            Some(serde_json::Value::String(k)) if is_valid_key(k.as_bytes()) => {
                Arc::<str>::from(k.as_str())
            }
            Some(serde_json::Value::String(k)) => {
                return Err(format!(
                    "apiKey {k:?} is not 1-{MAX_KEY_LEN} characters of [A-Za-z0-9._-]"
                ))
            }
            Some(_) => return Err("apiKey is not a string".into()),
            None => return Err("apiKey is missing".into()),
        };
        let record = match serde_path_to_error::deserialize::<_, TenantDocument>(doc) {
            Ok(doc) => TenantRecord::from_document(doc),
            // Name the field: "maxConcurrentConnections: invalid value: integer `-3`, …".
            Err(e) if e.path().to_string() == "." => Err(e.inner().to_string()),
            Err(e) => Err(format!("{}: {}", e.path(), e.inner())),
        };
        Ok(record.unwrap_or_else(|reason| TenantRecord::Misconfigured {
            key,
            reason: reason.into(),
        }))
    }

    /// Validates a typed document; `Err` names the field that is wrong.
    pub fn from_document(doc: TenantDocument) -> Result<TenantRecord, String> {
        Ok(TenantRecord::Valid(Arc::new(validate(doc)?)))
    }
}

/// Checks every field of a document; the error names the field.
pub fn validate(doc: TenantDocument) -> Result<Tenant, String> {
    if !is_valid_key(doc.api_key.as_bytes()) {
        return Err(format!(
            "apiKey {:?} is not 1-{MAX_KEY_LEN} characters of [A-Za-z0-9._-]",
            doc.api_key
        ));
    }
    let origins =
        AllowedOrigins::parse(&doc.allowed_origins).map_err(|e| format!("allowedOrigins: {e}"))?;
    let header = |field: &str, v: &str| {
        if v.is_empty() {
            return Err(format!("{field} is empty"));
        }
        HeaderValue::from_str(v)
            .map_err(|_| format!("{field} contains characters not allowed in a header"))
    };
    let res = &doc.provider_config.resources;
    let endpoint = header("providerConfig.resources.endpoint", &res.endpoint)?;
    let region = header("providerConfig.resources.region", &res.region)?;
    let connection_string = match &doc.provider_config.connection_string {
        Some(cs) => Some(header("providerConfig.connectionString", cs)?),
        None => None,
    };
    let max = doc.max_concurrent_connections;
    if max == 0 || max > MAX_CONCURRENCY {
        return Err(format!(
            "maxConcurrentConnections must be 1-{MAX_CONCURRENCY}, not {max}"
        ));
    }
    let upstream = match &doc.upstream {
        Some(u) => Some(Upstream::parse(u).map_err(|e| format!("upstream: {e}"))?),
        None => None,
    };
    Ok(Tenant {
        key_header: HeaderValue::from_str(&doc.api_key)
            .map_err(|_| "apiKey is not a header value")?,
        key: Arc::from(doc.api_key),
        origins,
        endpoint,
        region,
        connection_string,
        active: doc.is_active,
        max_concurrent: max as u32,
        upstream,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> serde_json::Value {
        json!({
            "apiKey": "tnt_client_a",
            "allowedOrigins": ["https://client-a.com", "https://*.client-a.com"],
            "providerConfig": {
                "connectionString": "endpoint=https://x;accesskey=secret",
                "resources": {"endpoint": "https://a.communication.azure.com", "region": "us-east-1"}
            },
            "isActive": true,
            "maxConcurrentConnections": 100,
            "upstream": "http://chat-eu.internal:3000",
            "someFieldFromTheFuture": 1
        })
    }

    #[test]
    fn keys_are_1_to_128_safe_characters() {
        assert!(is_valid_key(b"tnt_client-a.1"));
        assert!(is_valid_key(&[b'a'; 128]));
        assert!(!is_valid_key(&[b'a'; 129]));
        assert!(!is_valid_key(b""));
        for bad in ["a b", "a,b", "a/b", "ä", "a\"b"] {
            assert!(!is_valid_key(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn a_good_document_validates_and_ignores_unknown_fields() {
        let TenantRecord::Valid(t) = TenantRecord::from_json(doc()).unwrap() else {
            panic!()
        };
        assert_eq!(&*t.key, "tnt_client_a");
        assert_eq!(t.region, "us-east-1");
        assert_eq!(t.max_concurrent, 100);
        assert!(t.upstream.is_some());
        assert!(t.origins.allows("https://app.client-a.com"));
        assert!(
            !format!("{t:?}").contains("secret"),
            "Debug must redact the connection string"
        );
    }

    #[test]
    fn a_bad_document_is_misconfigured_and_names_the_field() {
        let cases = [
            (
                "/allowedOrigins",
                json!(["https://a.com/path"]),
                "allowedOrigins",
            ),
            (
                "/maxConcurrentConnections",
                json!(0),
                "maxConcurrentConnections",
            ),
            (
                "/maxConcurrentConnections",
                json!(-3),
                "maxConcurrentConnections",
            ),
            ("/isActive", json!("yes"), "invalid type"),
            (
                "/providerConfig/resources/region",
                json!("bad\nregion"),
                "providerConfig.resources.region",
            ),
            ("/upstream", json!("ftp://x"), "upstream"),
        ];
        for (pointer, value, needle) in cases {
            let mut d = doc();
            *d.pointer_mut(pointer).unwrap() = value;
            match TenantRecord::from_json(d).unwrap() {
                TenantRecord::Misconfigured { key, reason } => {
                    assert_eq!(&*key, "tnt_client_a");
                    assert!(reason.contains(needle), "{pointer}: {reason}");
                }
                other => panic!("{pointer}: {other:?}"),
            }
        }
        let mut d = doc();
        d.as_object_mut().unwrap().remove("isActive");
        let TenantRecord::Misconfigured { reason, .. } = TenantRecord::from_json(d).unwrap() else {
            panic!()
        };
        assert!(reason.contains("isActive"), "{reason}");
    }

    #[test]
    fn a_document_without_a_usable_key_belongs_to_no_tenant() {
        let mut d = doc();
        d["apiKey"] = json!("bad key");
        assert!(TenantRecord::from_json(d).unwrap_err().contains("apiKey"));
        let mut d = doc();
        d.as_object_mut().unwrap().remove("apiKey");
        assert!(TenantRecord::from_json(d).is_err());
    }
}
