//! Every response the gateway makes itself, in one place.
//!
//! Each outcome of the request path is one variant of [`GatewayError`]. The variant decides the
//! status, the stable `code` of the JSON body, the plain-words message, and which side caused it
//! (for logs and metrics). `status()`, `code()` and `cause()` are exhaustive `match`es on purpose:
//! a new variant does not compile until it says what it means.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::pipeline::response::ProxyBody;

/// Who caused a failed request: the caller, the gateway's own dependencies, or the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The request itself is not acceptable (missing key, wrong origin, over the cap).
    Client,
    /// The gateway or its tenant store could not serve it.
    Gateway,
    /// The backend refused, failed or was too slow.
    Upstream,
}

/// One outcome of the request path that the gateway answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("the request carries no tenant key")]
    TenantMissing,
    #[error("the tenant key is malformed")]
    TenantMalformed,
    #[error("the tenant key is unknown")]
    TenantUnknown,
    #[error("the tenant is inactive")]
    TenantInactive,
    #[error("the tenant's configuration is invalid")]
    TenantMisconfigured,
    #[error("the tenant store is unavailable")]
    StoreUnavailable,
    #[error("the request has no Origin header")]
    OriginMissing,
    #[error("the origin is not allowed for this tenant")]
    OriginNotAllowed,
    #[error("the tenant has reached its concurrency limit")]
    ConcurrencyExceeded,
    #[error("the tenant has reached its request rate")]
    RateExceeded,
    #[error("the tenant has used its requests for the day (UTC)")]
    QuotaExhausted,
    #[error("the request body is larger than this gateway accepts")]
    BodyTooLarge,
    #[error("the request headers are larger than this gateway accepts")]
    HeadersTooLarge,
    #[error("the request is not valid HTTP/1.1")]
    BadRequest,
    #[error("the request head did not arrive in time")]
    RequestTimeout,
    #[error("the upstream is unavailable")]
    UpstreamUnavailable,
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
}

impl From<crate::tenants::slots::AllTaken> for GatewayError {
    fn from(_: crate::tenants::slots::AllTaken) -> GatewayError {
        GatewayError::ConcurrencyExceeded
    }
}

impl GatewayError {
    /// The HTTP status of the response.
    pub fn status(self) -> StatusCode {
        use GatewayError::*;
        match self {
            TenantMissing | TenantUnknown => StatusCode::UNAUTHORIZED,
            TenantMalformed => StatusCode::BAD_REQUEST,
            TenantInactive | OriginMissing | OriginNotAllowed => StatusCode::FORBIDDEN,
            TenantMisconfigured | StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ConcurrencyExceeded | RateExceeded | QuotaExhausted => StatusCode::TOO_MANY_REQUESTS,
            BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            BadRequest => StatusCode::BAD_REQUEST,
            RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The stable machine-readable code in the JSON body (part of the contract).
    pub fn code(self) -> &'static str {
        use GatewayError::*;
        match self {
            TenantMissing => "tenant_missing",
            TenantMalformed => "tenant_malformed",
            TenantUnknown => "tenant_unknown",
            TenantInactive => "tenant_inactive",
            TenantMisconfigured => "tenant_misconfigured",
            StoreUnavailable => "store_unavailable",
            OriginMissing => "origin_missing",
            OriginNotAllowed => "origin_not_allowed",
            ConcurrencyExceeded => "tenant_concurrency_exceeded",
            RateExceeded => "tenant_rate_exceeded",
            QuotaExhausted => "tenant_quota_exhausted",
            BodyTooLarge => "body_too_large",
            HeadersTooLarge => "headers_too_large",
            BadRequest => "bad_request",
            RequestTimeout => "request_timeout",
            UpstreamUnavailable => "upstream_unavailable",
            UpstreamTimeout => "upstream_timeout",
        }
    }

    /// Which side caused it.
    pub fn cause(self) -> Cause {
        use GatewayError::*;
        match self {
            TenantMissing | TenantMalformed | TenantUnknown | TenantInactive | OriginMissing
            | OriginNotAllowed | ConcurrencyExceeded | RateExceeded | QuotaExhausted
            | BodyTooLarge | HeadersTooLarge | BadRequest | RequestTimeout => Cause::Client,
            TenantMisconfigured | StoreUnavailable => Cause::Gateway,
            UpstreamUnavailable | UpstreamTimeout => Cause::Upstream,
        }
    }

    /// The JSON response of the contract:
    /// `{"error":{"code":"…","message":"…","requestId":"…"}}`.
    #[cold]
    pub fn to_response(self, request_id: &HeaderValue) -> Response<ProxyBody> {
        let body = serde_json::json!({
            "error": {
                "code": self.code(),
                "message": self.to_string(),
                "requestId": request_id.to_str().unwrap_or_default(),
            }
        });
        let mut resp = Response::new(ProxyBody::full(Bytes::from(body.to_string())));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self == GatewayError::ConcurrencyExceeded {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::GatewayError::*;
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn every_variant_has_its_contract_status_code_and_cause() {
        let table = [
            (TenantMissing, 401, "tenant_missing", Cause::Client),
            (TenantMalformed, 400, "tenant_malformed", Cause::Client),
            (TenantUnknown, 401, "tenant_unknown", Cause::Client),
            (TenantInactive, 403, "tenant_inactive", Cause::Client),
            (
                TenantMisconfigured,
                503,
                "tenant_misconfigured",
                Cause::Gateway,
            ),
            (StoreUnavailable, 503, "store_unavailable", Cause::Gateway),
            (OriginMissing, 403, "origin_missing", Cause::Client),
            (OriginNotAllowed, 403, "origin_not_allowed", Cause::Client),
            (
                ConcurrencyExceeded,
                429,
                "tenant_concurrency_exceeded",
                Cause::Client,
            ),
            (RateExceeded, 429, "tenant_rate_exceeded", Cause::Client),
            (QuotaExhausted, 429, "tenant_quota_exhausted", Cause::Client),
            (
                UpstreamUnavailable,
                502,
                "upstream_unavailable",
                Cause::Upstream,
            ),
            (UpstreamTimeout, 504, "upstream_timeout", Cause::Upstream),
            (BodyTooLarge, 413, "body_too_large", Cause::Client),
            (HeadersTooLarge, 431, "headers_too_large", Cause::Client),
            (BadRequest, 400, "bad_request", Cause::Client),
            (RequestTimeout, 408, "request_timeout", Cause::Client),
        ];
        for (err, status, code, cause) in table {
            assert_eq!(err.status().as_u16(), status, "{err:?}");
            assert_eq!(err.code(), code, "{err:?}");
            assert_eq!(err.cause(), cause, "{err:?}");
        }
    }

    #[tokio::test]
    async fn renders_the_json_body_of_the_contract() {
        let resp = ConcurrencyExceeded.to_response(&HeaderValue::from_static("req-1"));
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.headers()["retry-after"], "1");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "tenant_concurrency_exceeded");
        assert_eq!(v["error"]["requestId"], "req-1");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("concurrency"));
    }
}
