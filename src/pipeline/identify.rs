//! Stage 1 — identify: which tenant is this request for?
//!
//! The key comes from the tenant header (`X-Tenant-ID` unless configured otherwise) or, for
//! WebSockets, from a `tenant.<key>` subprotocol entry. It is checked for shape before anything
//! else, so malformed keys never reach the cache or the
//! store; then the directory resolves it.

use std::sync::Arc;

use http::{HeaderMap, HeaderName};

use crate::pipeline::error::GatewayError;
use crate::tenants::directory::{Directory, Resolved, TenantEntry};
use crate::tenants::store::StoreError;
use crate::tenants::tenant::{is_valid_key, RetiredKey};

/// Prefix of the `Sec-WebSocket-Protocol` entry that carries the tenant key: browsers cannot set
/// headers on a WebSocket, so `new WebSocket(url, ["tenant.<key>", "chat.v1"])` names the tenant.
pub const TENANT_SUBPROTOCOL: &str = "tenant.";

/// Where a request may carry its tenant key (`[tenancy] header` and `query_param`).
#[derive(Debug, Clone)]
pub struct KeySources {
    pub header: HeaderName,
    /// Opt-in: a query parameter for clients that can set neither a header nor a subprotocol
    /// (EventSource). The query string is never logged, so the key is not either.
    pub query_param: Option<String>,
}

impl KeySources {
    /// The tenant key of the request: from the tenant header, else from a `tenant.<key>` entry
    /// of `Sec-WebSocket-Protocol`, else (when enabled) from the query parameter. `None` when
    /// absent; `400 tenant_malformed` when not 1-128 characters of `[A-Za-z0-9._-]` or when
    /// one source gives two different values.
    pub fn tenant_key<'a>(
        &self,
        headers: &'a HeaderMap,
        uri: &'a http::Uri,
    ) -> Result<Option<&'a str>, GatewayError> {
        if let Some(key) = tenant_key(headers, &self.header)? {
            return Ok(Some(key));
        }
        let Some(param) = &self.query_param else {
            return Ok(None);
        };
        let mut values = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .filter(|(name, _)| name == param)
            .map(|(_, value)| value);
        let Some(first) = values.next() else {
            return Ok(None);
        };
        if values.any(|other| other != first) || !is_valid_key(first.as_bytes()) {
            return Err(GatewayError::TenantMalformed);
        }
        Ok(Some(first))
    }
}

/// The tenant key from the tenant header, else from a `tenant.<key>` entry of
/// `Sec-WebSocket-Protocol` (see [`KeySources::tenant_key`]).
pub fn tenant_key<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a str>, GatewayError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return subprotocol_key(headers);
    };
    if values.any(|other| other != first) {
        return Err(GatewayError::TenantMalformed);
    }
    if !is_valid_key(first.as_bytes()) {
        return Err(GatewayError::TenantMalformed);
    }
    // Valid keys are ASCII, so this cannot fail.
    first
        .to_str()
        .map(Some)
        .map_err(|_| GatewayError::TenantMalformed)
}

fn subprotocol_key(headers: &HeaderMap) -> Result<Option<&str>, GatewayError> {
    let mut found: Option<&str> = None;
    let entries =
        crate::http::codec::list_items(headers.get_all(http::header::SEC_WEBSOCKET_PROTOCOL))
            .filter_map(|p| p.strip_prefix(TENANT_SUBPROTOCOL.as_bytes()));
    for key in entries {
        // Valid keys are ASCII, so the `str` conversion cannot fail once the check has passed.
        let key = match std::str::from_utf8(key) {
            Ok(key) if is_valid_key(key.as_bytes()) => key,
            _ => return Err(GatewayError::TenantMalformed),
        };
        if found.is_some_and(|f| f != key) {
            return Err(GatewayError::TenantMalformed);
        }
        found = Some(key);
    }
    Ok(found)
}

/// Resolves a key to a servable tenant, or the outcome that refuses it.
pub async fn resolve(
    directory: &Arc<Directory>,
    key: &str,
) -> Result<Arc<TenantEntry>, GatewayError> {
    match directory.resolve(key).await {
        // A retired key past its `until` is unknown from that instant, cached or not.
        Ok(Resolved::Tenant(entry)) if entry.expired() => Err(GatewayError::TenantUnknown),
        Ok(Resolved::Tenant(entry)) if entry.tenant.active => Ok(entry),
        Ok(Resolved::Tenant(_)) => Err(GatewayError::TenantInactive),
        Ok(Resolved::Misconfigured) => Err(GatewayError::TenantMisconfigured),
        Ok(Resolved::Unknown) => Err(GatewayError::TenantUnknown),
        Err(e) => {
            log_store_error(key, &e);
            Err(GatewayError::StoreUnavailable)
        }
    }
}

/// `Deprecation` (RFC 9745): the request used a retired key.
pub const DEPRECATION: HeaderName = HeaderName::from_static("deprecation");
/// `Sunset` (RFC 8594): when that retired key stops working.
pub const SUNSET: HeaderName = HeaderName::from_static("sunset");

/// Marks the response to a request made with a retired key, so frontends still shipping it
/// (and their monitoring) notice before it stops working.
#[cold]
pub fn mark_retired(headers: &mut HeaderMap, retired: &RetiredKey) {
    headers.insert(DEPRECATION, retired.deprecation.clone());
    headers.insert(SUNSET, retired.sunset.clone());
    // Browser code reads them only when exposed (a second list line adds to any configured).
    if headers.contains_key(http::header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        headers.append(
            http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
            http::HeaderValue::from_static("Deprecation, Sunset"),
        );
    }
}

#[cold]
pub(crate) fn log_store_error(what: &str, e: &StoreError) {
    if *e == StoreError::Busy {
        return; // the directory logs these, at most once a second
    }
    tracing::warn!(lookup = what, error = %e, "tenant store unavailable and nothing usable cached");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn key(values: &[&str]) -> Result<Option<String>, GatewayError> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-tenant-id", HeaderValue::from_str(v).unwrap());
        }
        tenant_key(&h, &HeaderName::from_static("x-tenant-id")).map(|k| k.map(String::from))
    }

    #[test]
    fn reads_checks_and_refuses_conflicts() {
        assert_eq!(key(&[]), Ok(None));
        assert_eq!(key(&["tnt_a"]), Ok(Some("tnt_a".into())));
        assert_eq!(
            key(&["tnt_a", "tnt_a"]),
            Ok(Some("tnt_a".into())),
            "repeated but equal is fine"
        );
        assert_eq!(key(&["tnt_a", "tnt_b"]), Err(GatewayError::TenantMalformed));
        assert_eq!(key(&["tnt_a, tnt_b"]), Err(GatewayError::TenantMalformed));
        assert_eq!(key(&[""]), Err(GatewayError::TenantMalformed));
        assert_eq!(key(&[&"a".repeat(129)]), Err(GatewayError::TenantMalformed));
    }

    #[test]
    fn query_parameter_only_when_enabled_and_after_the_header() {
        let sources = |param: Option<&str>| KeySources {
            header: HeaderName::from_static("x-tenant-id"),
            query_param: param.map(String::from),
        };
        let uri: http::Uri = "/events?x=1&tenant=tnt_q".parse().unwrap();
        let none = HeaderMap::new();
        assert_eq!(
            sources(None).tenant_key(&none, &uri),
            Ok(None),
            "off by default"
        );
        assert_eq!(
            sources(Some("tenant")).tenant_key(&none, &uri),
            Ok(Some("tnt_q"))
        );
        let mut h = HeaderMap::new();
        h.insert("x-tenant-id", HeaderValue::from_static("tnt_h"));
        assert_eq!(
            sources(Some("tenant")).tenant_key(&h, &uri),
            Ok(Some("tnt_h"))
        );
        let two: http::Uri = "/e?tenant=a&tenant=b".parse().unwrap();
        assert_eq!(
            sources(Some("tenant")).tenant_key(&none, &two),
            Err(GatewayError::TenantMalformed)
        );
        let bad: http::Uri = "/e?tenant=a%20b".parse().unwrap();
        assert_eq!(
            sources(Some("tenant")).tenant_key(&none, &bad),
            Err(GatewayError::TenantMalformed)
        );
    }

    #[test]
    fn websocket_subprotocol_carries_the_key_when_the_header_is_absent() {
        let with = |protocols: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(protocols).unwrap(),
            );
            tenant_key(&h, &HeaderName::from_static("x-tenant-id")).map(|k| k.map(String::from))
        };
        assert_eq!(with("chat.v1, tenant.tnt_a"), Ok(Some("tnt_a".into())));
        assert_eq!(with("chat.v1"), Ok(None));
        assert_eq!(
            with("tenant.tnt_a, tenant.tnt_b"),
            Err(GatewayError::TenantMalformed)
        );
        assert_eq!(with("tenant.bad key"), Err(GatewayError::TenantMalformed));
    }
}
