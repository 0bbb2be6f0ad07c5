//! The tenant document (the contract of DESIGN.md) and its validation into a [`Tenant`].
//!
//! Stores hand over raw documents; [`TenantRecord::from_document`] turns each into either a
//! ready-to-use [`Tenant`] or the reason it is misconfigured. A bad document only ever affects
//! its own tenant (`503 tenant_misconfigured`).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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
    /// Keys this tenant had before, still accepted until their `until` (key rotation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_keys: Vec<RetiredKeyDocument>,
    /// This tenant's own limits, each overriding the gateway's setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsDocument>,
    /// A request rate (token bucket), shared across replicas with `[cluster] scope = "cluster"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitDocument>,
    /// Requests per UTC day, counted across replicas with `[cluster] scope = "cluster"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaDocument>,
}

/// `rateLimit`: `requestsPerSecond` (a positive number) refilled into a bucket of `burst`
/// requests (default: the rate rounded up). Unknown fields are refused, like in `limits`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitDocument {
    pub requests_per_second: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

/// `quota`: requests per UTC day.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaDocument {
    pub requests_per_day: u64,
}

/// One entry of `retiredKeys`: a former key and when it stops working (RFC 3339; MongoDB dates
/// arrive as RFC 3339 too). `since`, written by `tenantgate tenants rotate`, is when it was
/// retired (the `Deprecation` date); without it the key counts as deprecated since the epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetiredKeyDocument {
    pub key: String,
    pub until: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// `limits`: per-tenant overrides of `[server] max_body_bytes`, `[upstream] response_timeout_ms`
/// and `[server] upgrade_idle_timeout_secs`. Unknown fields here are refused (a misspelt limit
/// must not silently not apply).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsDocument {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_idle_timeout_secs: Option<u64>,
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
    /// Former keys still accepted for a while (`retiredKeys`).
    pub retired_keys: Box<[RetiredKey]>,
    /// `limits`: what is `None` falls back to the gateway's setting.
    pub limits: Limits,
    /// `rateLimit`, when set.
    pub rate: Option<RateLimit>,
    /// `quota.requestsPerDay`, when set.
    pub quota: Option<u64>,
    /// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers) naming every limit of the
    /// tenant, sent on each of its limit refusals.
    pub rate_limit_policy: HeaderValue,
    /// The document as stored (`[inject] headers` read fields from it; the audit log compares
    /// versions). Holds the secret too: never logged.
    pub document: Arc<serde_json::Value>,
    /// This tenant's `[inject] headers` values, rendered once per version of that list.
    pub rendered: Rendered,
}

impl Tenant {
    /// The value at a dotted path of the document (`providerConfig.resources.region`), if any.
    pub fn field<'a>(
        &'a self,
        path: impl IntoIterator<Item = &'a str>,
    ) -> Option<&'a serde_json::Value> {
        path.into_iter()
            .try_fold(&*self.document, |v, segment| v.get(segment))
    }
}

/// Header values rendered from a tenant's document for one version (`id`) of a list of
/// injections; kept with the tenant so requests do not render them again. A cache, not part
/// of what the tenant is: two tenants compare equal whatever it holds.
#[derive(Default)]
pub struct Rendered(arc_swap::ArcSwapOption<RenderedValues>);

/// The version of the list the values were rendered for, and one value per configured header.
pub type RenderedValues = (u64, Box<[Option<HeaderValue>]>);

impl Rendered {
    /// The values rendered for list `id`, rendering them now (and keeping them) when the kept
    /// ones are for another version or there are none. Reading kept values takes no lock and
    /// writes no shared memory.
    pub fn get_or_render(
        &self,
        id: u64,
        render: impl FnOnce() -> Box<[Option<HeaderValue>]>,
    ) -> arc_swap::Guard<Option<Arc<RenderedValues>>> {
        let kept = self.0.load();
        if kept.as_ref().is_some_and(|k| k.0 == id) {
            return kept;
        }
        drop(kept);
        self.0.store(Some(Arc::new((id, render()))));
        self.0.load()
    }
}

impl Clone for Rendered {
    fn clone(&self) -> Self {
        Rendered(arc_swap::ArcSwapOption::new(self.0.load_full()))
    }
}

impl PartialEq for Rendered {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Rendered {}

/// A retired key of a tenant, with the headers its responses carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredKey {
    pub key: Arc<str>,
    /// From this instant on the key is unknown.
    pub until: SystemTime,
    /// `Sunset: <HTTP-date of until>` (RFC 8594).
    pub sunset: HeaderValue,
    /// `Deprecation: @<unix seconds of since>` (RFC 9745).
    pub deprecation: HeaderValue,
}

/// A validated `rateLimit`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

impl Eq for RateLimit {}

/// Highest accepted `rateLimit.requestsPerSecond` and `burst`.
pub const MAX_RATE: f64 = 1_000_000.0;
/// Highest accepted `quota.requestsPerDay`.
pub const MAX_QUOTA: u64 = 1_000_000_000_000;

/// A tenant's own limits (`limits`); `None`: the gateway's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_body_bytes: Option<u64>,
    pub response_timeout: Option<Duration>,
    pub upgrade_idle_timeout: Option<Duration>,
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
            .field("retired_keys", &self.retired_keys)
            .field("limits", &self.limits)
            .field("rate", &self.rate)
            .field("quota", &self.quota)
            .finish_non_exhaustive()
    }
}

/// What a store knows about one key: a usable tenant, or why its document is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantRecord {
    Valid(Arc<Tenant>),
    Misconfigured {
        key: Arc<str>,
        reason: Arc<str>,
        /// The document as stored (for the audit log).
        document: Arc<serde_json::Value>,
    },
}

impl TenantRecord {
    /// The tenant key of the record.
    pub fn key(&self) -> &Arc<str> {
        match self {
            TenantRecord::Valid(t) => &t.key,
            TenantRecord::Misconfigured { key, .. } => key,
        }
    }

    /// The document as stored.
    pub fn document(&self) -> &Arc<serde_json::Value> {
        match self {
            TenantRecord::Valid(t) => &t.document,
            TenantRecord::Misconfigured { document, .. } => document,
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
        let document = Arc::new(doc);
        let record = match serde_path_to_error::deserialize::<_, TenantDocument>(&*document) {
            Ok(doc) => validate(doc, document.clone()).map(|t| TenantRecord::Valid(Arc::new(t))),
            // Name the field: "maxConcurrentConnections: invalid value: integer `-3`, …".
            Err(e) if e.path().to_string() == "." => Err(e.inner().to_string()),
            Err(e) => Err(format!("{}: {}", e.path(), e.inner())),
        };
        Ok(record.unwrap_or_else(|reason| TenantRecord::Misconfigured {
            key,
            reason: reason.into(),
            document,
        }))
    }

    /// Validates a typed document; `Err` names the field that is wrong.
    pub fn from_document(doc: TenantDocument) -> Result<TenantRecord, String> {
        let document = Arc::new(serde_json::to_value(&doc).map_err(|e| e.to_string())?);
        Ok(TenantRecord::Valid(Arc::new(validate(doc, document)?)))
    }
}

/// Checks every field of a document (`document` is the same, as stored); the error names the
/// field.
pub fn validate(doc: TenantDocument, document: Arc<serde_json::Value>) -> Result<Tenant, String> {
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
    let retired_keys = retired_keys(&doc.api_key, &doc.retired_keys)?;
    let limits = limits(doc.limits.unwrap_or_default())?;
    let rate = doc.rate_limit.as_ref().map(rate_limit).transpose()?;
    let quota = match doc.quota.as_ref().map(|q| q.requests_per_day) {
        Some(n) if n == 0 || n > MAX_QUOTA => {
            return Err(format!(
                "quota.requestsPerDay must be 1-{MAX_QUOTA}, not {n}"
            ))
        }
        other => other,
    };
    Ok(Tenant {
        rate_limit_policy: rate_limit_policy(max as u32, rate, quota),
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
        retired_keys,
        limits,
        rate,
        quota,
        document,
        rendered: Rendered::default(),
    })
}

/// `rateLimit`: a rate of (0, 1,000,000] per second and a burst of 1-1,000,000 requests.
fn rate_limit(doc: &RateLimitDocument) -> Result<RateLimit, String> {
    let per_second = doc.requests_per_second;
    if !(per_second > 0.0 && per_second <= MAX_RATE) {
        return Err(format!(
            "rateLimit.requestsPerSecond must be greater than 0 and at most {MAX_RATE}, not {per_second}"
        ));
    }
    let burst = doc.burst.unwrap_or(per_second.ceil() as u64);
    if burst == 0 || burst as f64 > MAX_RATE {
        return Err(format!("rateLimit.burst must be 1-{MAX_RATE}, not {burst}"));
    }
    Ok(RateLimit {
        per_second,
        burst: burst as u32,
    })
}

/// The `RateLimit-Policy` field of a tenant's limits (draft-ietf-httpapi-ratelimit-headers):
/// `"concurrency";q=30;qu="concurrent-requests", "rate";q=50;w=1, "day";q=1000;w=86400`. The
/// rate is given as its burst per the window in which the bucket refills it.
fn rate_limit_policy(max: u32, rate: Option<RateLimit>, quota: Option<u64>) -> HeaderValue {
    let mut field = format!("\"concurrency\";q={max};qu=\"concurrent-requests\"");
    if let Some(r) = rate {
        let window = (f64::from(r.burst) / r.per_second).ceil().max(1.0) as u64;
        field.push_str(&format!(", \"rate\";q={};w={window}", r.burst));
    }
    if let Some(q) = quota {
        field.push_str(&format!(", \"day\";q={q};w=86400"));
    }
    HeaderValue::from_str(&field).unwrap_or_else(|_| HeaderValue::from_static("\"concurrency\""))
}

/// `retiredKeys`: valid keys, none equal to `apiKey` or to another, with RFC 3339 instants.
fn retired_keys(api_key: &str, docs: &[RetiredKeyDocument]) -> Result<Box<[RetiredKey]>, String> {
    let mut out: Vec<RetiredKey> = Vec::with_capacity(docs.len());
    for (i, d) in docs.iter().enumerate() {
        let field = format!("retiredKeys[{i}]");
        if !is_valid_key(d.key.as_bytes()) {
            return Err(format!(
                "{field}.key {:?} is not 1-{MAX_KEY_LEN} characters of [A-Za-z0-9._-]",
                d.key
            ));
        }
        if d.key == api_key || out.iter().any(|r| *r.key == *d.key) {
            return Err(format!(
                "{field}.key {:?} appears twice in the document",
                d.key
            ));
        }
        let until = parse_instant(&d.until).map_err(|e| format!("{field}.until: {e}"))?;
        let since = match &d.since {
            Some(s) => parse_instant(s).map_err(|e| format!("{field}.since: {e}"))?,
            None => SystemTime::UNIX_EPOCH,
        };
        let unix = since
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        out.push(RetiredKey {
            key: Arc::from(d.key.as_str()),
            until,
            sunset: HeaderValue::from_str(&httpdate::fmt_http_date(until))
                .map_err(|_| format!("{field}.until: not representable as an HTTP date"))?,
            deprecation: HeaderValue::from_str(&format!("@{unix}"))
                .map_err(|_| format!("{field}.since: not representable"))?,
        });
    }
    Ok(out.into_boxed_slice())
}

/// An RFC 3339 instant (`2027-01-31T00:00:00Z`, offsets allowed), between 1970 and 9999.
pub fn parse_instant(text: &str) -> Result<SystemTime, String> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{text:?} is not an RFC 3339 date-time ({e})"))?;
    if t.year() < 1970 {
        return Err(format!("{text:?} is before 1970"));
    }
    Ok(t.into())
}

/// An instant as RFC 3339 in UTC, whole seconds (`2027-01-31T00:00:00Z`).
pub fn format_instant(at: SystemTime) -> String {
    let t = time::OffsetDateTime::from(at)
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// `limits`: each a positive integer.
fn limits(doc: LimitsDocument) -> Result<Limits, String> {
    let positive = |field: &str, v: Option<u64>| match v {
        Some(0) => Err(format!("limits.{field} must be greater than 0")),
        other => Ok(other),
    };
    Ok(Limits {
        max_body_bytes: positive("maxBodyBytes", doc.max_body_bytes)?,
        response_timeout: positive("responseTimeoutMs", doc.response_timeout_ms)?
            .map(Duration::from_millis),
        upgrade_idle_timeout: positive("upgradeIdleTimeoutSecs", doc.upgrade_idle_timeout_secs)?
            .map(Duration::from_secs),
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
            "retiredKeys": [{"key": "tnt_client_a_2025", "until": "2027-01-31T00:00:00Z"}],
            "limits": {"maxBodyBytes": 1024},
            "rateLimit": {"requestsPerSecond": 50, "burst": 100},
            "quota": {"requestsPerDay": 1000},
            "someFieldFromTheFuture": 1
        })
    }

    #[test]
    fn rates_and_quotas_are_read_with_their_policy_header() {
        let TenantRecord::Valid(t) = TenantRecord::from_json(doc()).unwrap() else {
            panic!()
        };
        assert_eq!(
            t.rate,
            Some(RateLimit {
                per_second: 50.0,
                burst: 100
            })
        );
        assert_eq!(t.quota, Some(1000));
        assert_eq!(
            t.rate_limit_policy,
            "\"concurrency\";q=100;qu=\"concurrent-requests\", \"rate\";q=100;w=2, \"day\";q=1000;w=86400"
        );
        let mut d = doc();
        d["rateLimit"] = json!({"requestsPerSecond": 2.5});
        d.as_object_mut().unwrap().remove("quota");
        let TenantRecord::Valid(t) = TenantRecord::from_json(d).unwrap() else {
            panic!()
        };
        assert_eq!(
            t.rate.unwrap().burst,
            3,
            "the burst defaults to the rate, rounded up"
        );
        assert_eq!(t.quota, None);
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
            ("/limits", json!({"maxBodyBytes": 0}), "limits.maxBodyBytes"),
            (
                "/limits",
                json!({"responseTimeoutMs": -1}),
                "limits.responseTimeoutMs",
            ),
            ("/limits", json!({"maxBodyByte": 10}), "maxBodyByte"),
            (
                "/rateLimit",
                json!({"requestsPerSecond": 0}),
                "rateLimit.requestsPerSecond",
            ),
            (
                "/rateLimit",
                json!({"requestsPerSecond": -5}),
                "rateLimit.requestsPerSecond",
            ),
            (
                "/rateLimit",
                json!({"requestsPerSecond": 5, "burst": 0}),
                "rateLimit.burst",
            ),
            ("/rateLimit", json!({"burst": 5}), "requestsPerSecond"),
            (
                "/rateLimit",
                json!({"requestsPerSecond": 5, "brust": 5}),
                "brust",
            ),
            (
                "/quota",
                json!({"requestsPerDay": 0}),
                "quota.requestsPerDay",
            ),
            (
                "/quota",
                json!({"requestsPerDay": 1.5}),
                "quota.requestsPerDay",
            ),
            ("/quota", json!(1000), "quota"),
            (
                "/retiredKeys/0/until",
                json!("next week"),
                "retiredKeys[0].until",
            ),
            (
                "/retiredKeys/0/until",
                json!("2027-01-31"),
                "retiredKeys[0].until",
            ),
            ("/retiredKeys/0/key", json!("bad key"), "retiredKeys[0].key"),
            (
                "/retiredKeys/0/key",
                json!("tnt_client_a"),
                "retiredKeys[0].key",
            ),
            ("/retiredKeys", json!("tnt_old"), "retiredKeys"),
        ];
        for (pointer, value, needle) in cases {
            let mut d = doc();
            *d.pointer_mut(pointer).unwrap() = value;
            match TenantRecord::from_json(d).unwrap() {
                TenantRecord::Misconfigured { key, reason, .. } => {
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
    fn retired_keys_and_limits_are_read_with_their_headers() {
        let mut d = doc();
        d["retiredKeys"] = json!([
            {"key": "old1", "until": "2027-01-31T00:00:00Z", "since": "2026-12-01T12:00:00+01:00"},
            {"key": "old2", "until": "2027-02-01T10:30:00+02:00"}
        ]);
        d["limits"] =
            json!({"maxBodyBytes": 10, "responseTimeoutMs": 250, "upgradeIdleTimeoutSecs": 2});
        let TenantRecord::Valid(t) = TenantRecord::from_json(d).unwrap() else {
            panic!()
        };
        let [old1, old2] = &*t.retired_keys else {
            panic!("{:?}", t.retired_keys)
        };
        assert_eq!(&*old1.key, "old1");
        assert_eq!(old1.sunset, "Sun, 31 Jan 2027 00:00:00 GMT");
        assert_eq!(old1.deprecation, "@1796122800", "since, as Unix seconds");
        assert_eq!(
            old2.sunset, "Mon, 01 Feb 2027 08:30:00 GMT",
            "offsets are honoured"
        );
        assert_eq!(
            old2.deprecation, "@0",
            "no since: deprecated since the epoch"
        );
        assert_eq!(format_instant(old2.until), "2027-02-01T08:30:00Z");
        assert_eq!(t.limits.max_body_bytes, Some(10));
        assert_eq!(t.limits.response_timeout, Some(Duration::from_millis(250)));
        assert_eq!(t.limits.upgrade_idle_timeout, Some(Duration::from_secs(2)));
        let mut d = doc();
        d.as_object_mut().unwrap().remove("limits");
        d.as_object_mut().unwrap().remove("retiredKeys");
        let TenantRecord::Valid(t) = TenantRecord::from_json(d).unwrap() else {
            panic!()
        };
        assert_eq!(t.limits, Limits::default());
        assert!(t.retired_keys.is_empty());
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
