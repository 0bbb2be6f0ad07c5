//! Stage 2 — CORS: is this browser origin allowed for this tenant?
//!
//! - A **preflight** (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered
//!   here and never forwarded. With a tenant key it is decided by that tenant's allow-list;
//!   without one (browsers never send custom headers on a preflight) by whether any active tenant
//!   lists the origin.
//! - An **actual request** with an `Origin` must match the tenant's allow-list; the response then
//!   echoes the origin in `Access-Control-Allow-Origin` (never `*`) with `Vary: Origin`. Without
//!   an `Origin` it is refused unless `require_origin = false`.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::pipeline::error::GatewayError;
use crate::pipeline::response::ProxyBody;
use crate::tenants::origin::AllowedOrigins;

const VARY_PREFLIGHT: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);
const VARY_ORIGIN: HeaderValue = HeaderValue::from_static("Origin");

/// CORS answers (`[cors]`), pre-rendered as header values.
#[derive(Debug, Clone)]
pub struct CorsSettings {
    pub allow_methods: http::HeaderValue,
    /// Always includes the tenant header.
    pub allow_headers: http::HeaderValue,
    pub expose_headers: Option<http::HeaderValue>,
    pub allow_credentials: bool,
    pub max_age: http::HeaderValue,
}

/// Whether the request is a CORS preflight.
pub fn is_preflight<B>(req: &Request<B>) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(header::ORIGIN)
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Checks an actual request's `Origin` against the tenant. Returns the origin to echo, `None`
/// when there is no `Origin` and none is required.
pub fn check_origin(
    headers: &HeaderMap,
    allowed: &AllowedOrigins,
    require_origin: bool,
) -> Result<Option<HeaderValue>, GatewayError> {
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let Some(origin) = origins.next() else {
        return if require_origin {
            Err(GatewayError::OriginMissing)
        } else {
            Ok(None)
        };
    };
    // Browsers send exactly one Origin; two are not a browser and cannot both be echoed.
    if origins.next().is_some() {
        return Err(GatewayError::OriginNotAllowed);
    }
    match origin.to_str() {
        Ok(raw) if allowed.allows(raw) => Ok(Some(origin.clone())),
        _ => Err(GatewayError::OriginNotAllowed),
    }
}

/// Adds the CORS headers of an allowed actual request (or of an error answered to one).
pub fn decorate(headers: &mut HeaderMap, origin: HeaderValue, cors: &CorsSettings) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(header::VARY, VARY_ORIGIN);
    if cors.allow_credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if let Some(expose) = &cors.expose_headers {
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
    }
}

/// The `204` answer to an allowed preflight.
pub fn preflight_allowed(origin: HeaderValue, cors: &CorsSettings) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        cors.allow_methods.clone(),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        cors.allow_headers.clone(),
    );
    h.insert(header::ACCESS_CONTROL_MAX_AGE, cors.max_age.clone());
    if cors.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    h.insert(header::VARY, VARY_PREFLIGHT);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origins: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for o in origins {
            h.append(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn origin_outcomes() {
        let allowed = AllowedOrigins::parse(&["https://a.com"]).unwrap();
        assert_eq!(
            check_origin(&headers(&["https://a.com"]), &allowed, true)
                .unwrap()
                .unwrap(),
            "https://a.com"
        );
        assert_eq!(
            check_origin(&headers(&["HTTPS://A.com:443"]), &allowed, true)
                .unwrap()
                .unwrap(),
            "HTTPS://A.com:443",
            "the browser's own spelling is echoed"
        );
        assert_eq!(
            check_origin(&headers(&["https://b.com"]), &allowed, true),
            Err(GatewayError::OriginNotAllowed)
        );
        assert_eq!(
            check_origin(&headers(&[]), &allowed, true),
            Err(GatewayError::OriginMissing)
        );
        assert_eq!(check_origin(&headers(&[]), &allowed, false), Ok(None));
        assert_eq!(
            check_origin(
                &headers(&["https://a.com", "https://a.com"]),
                &allowed,
                true
            ),
            Err(GatewayError::OriginNotAllowed)
        );
    }

    #[test]
    fn preflight_detection() {
        let req = |m: Method, h: &[(&str, &str)]| {
            let mut b = Request::builder().method(m);
            for (k, v) in h {
                b = b.header(*k, *v);
            }
            b.body(()).unwrap()
        };
        let full = [
            ("origin", "https://a.com"),
            ("access-control-request-method", "POST"),
        ];
        assert!(is_preflight(&req(Method::OPTIONS, &full)));
        assert!(!is_preflight(&req(Method::OPTIONS, &full[..1])));
        assert!(!is_preflight(&req(Method::POST, &full)));
    }
}
