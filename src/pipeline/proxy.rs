//! The request pipeline: every request goes through these stages, in this order.
//!
//! ```text
//!   preflight? ──► answered here (cors), never forwarded
//!   1 identify   key from the tenant header → tenant (cache → store)      401/400/403/503
//!   2 cors       Origin against the tenant's allow-list                   403
//!   3 limit      a concurrency slot, a token of the rate, a unit of quota 429
//!   4 forward    rewrite headers, stream to the backend and back          502/504
//! ```
//!
//! The order is the point: a malformed key never costs a lookup, a foreign origin never costs
//! a slot, and nothing refused ever reaches the backend. Errors from any stage become the JSON
//! body of [`GatewayError`]; once the origin is known to be allowed, error responses carry the
//! CORS headers too, so browser code can read a 429 instead of an opaque network error.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response};

use crate::http::inbound::Inbound;
use crate::http::server::Unreadable;
use crate::pipeline::cors::CorsSettings;
use crate::pipeline::response::ProxyBody;
use crate::tenants::directory::{Directory, TenantEntry};
use arc_swap::ArcSwap;

use crate::pipeline::error::GatewayError;
use crate::pipeline::forward::{Forwarded, Forwarder, X_REQUEST_ID};
use crate::pipeline::{cors, forward, identify, limit};
use crate::telemetry::trace::{RequestTrace, Tracer};
use crate::tenants::origin;

/// What the pipeline needs besides the request.
pub struct Gateway {
    pub directory: Arc<Directory>,
    pub forwarder: Forwarder,
    /// The request rules; swapped whole by a config reload, each request reads one version.
    pub policy: ArcSwap<Policy>,
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    /// Trace context for every request; OTLP spans when `[tracing]` exports.
    pub tracer: Tracer,
    /// Whether the limits are this replica's or shares of the cluster's (`[cluster] scope`).
    pub scope: limit::Scope,
}

/// The request rules from the config that a reload can change.
#[derive(Debug, Clone)]
pub struct Policy {
    pub key_sources: identify::KeySources,
    pub require_origin: bool,
    pub cors: CorsSettings,
    /// `[server] max_header_bytes`.
    pub max_header_bytes: usize,
}

/// The client connection a request arrived on.
#[derive(Debug)]
pub struct ClientConn {
    /// The peer's IP address, rendered once per connection for `X-Forwarded-For`.
    pub peer_ip: HeaderValue,
    /// `http` or `https`.
    pub proto: &'static HeaderValue,
    /// The backend response timeout's timer, reused by the connection's requests.
    pub response_timer: forward::ResponseTimer,
}

impl ClientConn {
    pub fn new(peer: SocketAddr, proto: &'static HeaderValue) -> ClientConn {
        let peer_ip = HeaderValue::try_from(peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ClientConn {
            peer_ip,
            proto,
            response_timer: forward::ResponseTimer::default(),
        }
    }
}

/// The gateway as one client connection's HTTP/1.1 server ([`crate::http::server`]) sees it.
pub struct Serving<'a> {
    pub gateway: &'a Gateway,
    pub conn: &'a ClientConn,
}

impl crate::http::server::Handler for Serving<'_> {
    type Body = ProxyBody;

    fn handle(
        &self,
        req: Request<Inbound>,
    ) -> impl std::future::Future<Output = Response<ProxyBody>> {
        self.gateway.handle(req, self.conn)
    }

    fn refuse(&self, why: Unreadable) -> Response<ProxyBody> {
        self.gateway.refuse(match why {
            Unreadable::BadRequest => GatewayError::BadRequest,
            Unreadable::HeadTooLarge => GatewayError::HeadersTooLarge,
            Unreadable::HeadTimeout => GatewayError::RequestTimeout,
        })
    }
}

/// Per-request state the stages fill in, used for the error response and the log line.
struct RequestContext {
    request_id: HeaderValue,
    trace: RequestTrace,
    /// The tenant, once resolved (its key is logged without another reference count taken on
    /// the tenant's data, which is rarely in cache).
    entry: Option<Arc<TenantEntry>>,
    /// The tenant key when the request got no further than naming it.
    key: Option<Arc<str>>,
    /// The request's origin, once it is known to be allowed for the tenant.
    allowed_origin: Option<HeaderValue>,
    /// The limit that refused the request, if one did.
    refusal: Option<limit::Refusal>,
}

/// The size of the request head as sent over HTTP/1.1: request line and `name: value` lines.
fn head_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    let line = req.method().as_str().len() + target + 12;
    req.headers()
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

impl Gateway {
    /// Runs one request through the pipeline and logs it. Never fails: every outcome is a
    /// response.
    pub async fn handle(&self, req: Request<Inbound>, conn: &ClientConn) -> Response<ProxyBody> {
        let started = Instant::now();
        let method = req.method().clone();
        let uri = req.uri().clone();
        let mut ctx = RequestContext {
            request_id: request_id(req.headers()),
            trace: self.tracer.start(req.headers(), &method, uri.path()),
            entry: None,
            key: None,
            allowed_origin: None,
            refusal: None,
        };

        let policy = self.policy.load_full();
        let (mut resp, rejected) = match self.process(req, conn, &policy, &mut ctx).await {
            Ok(resp) => (resp, None),
            Err(err) => (err.to_response(&ctx.request_id), Some(err)),
        };
        if let Some(origin) = ctx.allowed_origin.take() {
            cors::decorate(resp.headers_mut(), origin, &policy.cors);
        }
        if let Some(entry) = &ctx.entry {
            if let Some(retired) = &entry.retired {
                identify::mark_retired(resp.headers_mut(), retired);
            }
            if let Some(refusal) = ctx.refusal {
                refusal.decorate(resp.headers_mut(), entry);
            }
        }
        resp.headers_mut()
            .insert(X_REQUEST_ID, ctx.request_id.clone());

        let code = rejected.map(GatewayError::code);
        let (status, elapsed) = (resp.status().as_u16(), started.elapsed());
        let request_id = ctx.request_id.to_str().unwrap_or("-");
        let tenant = match &ctx.entry {
            Some(entry) => Some(&*entry.tenant.key),
            None => ctx.key.as_deref(),
        };
        self.metrics.observe(status, code, elapsed);
        if let Some(entry) = &ctx.entry {
            entry.slots.usage.request(status, code);
        }
        crate::telemetry::logging::access(&crate::telemetry::logging::AccessRecord {
            method: method.as_str(),
            path: uri.path(),
            status,
            tenant: tenant.unwrap_or("-"),
            code: code.unwrap_or("-"),
            latency_us: elapsed.as_micros() as u64,
            request_id,
            trace_id: ctx.trace.trace_id(),
        });
        let outcome = crate::telemetry::trace::Outcome {
            status,
            tenant,
            code,
            request_id,
        };
        self.tracer.finish(ctx.trace, &outcome);
        resp
    }

    /// Answers a request that could not even be read as one (a malformed or oversized head, one
    /// that came too slowly): the contract's JSON error, logged like any refusal.
    #[cold]
    pub fn refuse(&self, err: GatewayError) -> Response<ProxyBody> {
        let request_id = request_id(&HeaderMap::new());
        let mut resp = err.to_response(&request_id);
        resp.headers_mut().insert(X_REQUEST_ID, request_id.clone());
        let status = resp.status().as_u16();
        self.metrics
            .observe(status, Some(err.code()), std::time::Duration::ZERO);
        crate::telemetry::logging::access(&crate::telemetry::logging::AccessRecord {
            method: "-",
            path: "-",
            status,
            tenant: "-",
            code: err.code(),
            latency_us: 0,
            request_id: request_id.to_str().unwrap_or("-"),
            trace_id: "-",
        });
        resp
    }

    async fn process(
        &self,
        req: Request<Inbound>,
        conn: &ClientConn,
        policy: &Policy,
        ctx: &mut RequestContext,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        if head_size(&req) > policy.max_header_bytes {
            return Err(GatewayError::HeadersTooLarge);
        }
        if cors::is_preflight(&req) {
            // Boxed: rare next to actual requests (browsers cache the answer), and its state
            // would otherwise be part of every request's future.
            return Box::pin(self.preflight(&req, policy, ctx)).await;
        }

        // 1. identify
        let key = policy
            .key_sources
            .tenant_key(req.headers(), req.uri())?
            .ok_or(GatewayError::TenantMissing)?;
        let entry = identify::resolve(&self.directory, key)
            .await
            .inspect_err(|_| ctx.key = Some(Arc::from(key)))?;
        let entry = &*ctx.entry.insert(entry);
        let tenant = &entry.tenant;

        // 2. cors
        ctx.allowed_origin =
            cors::check_origin(req.headers(), &tenant.origins, policy.require_origin)?;

        // 3. limit
        let slot = limit::admit(entry, self.scope).map_err(|refusal| {
            ctx.refusal = Some(refusal);
            refusal.error
        })?;

        // 4. forward
        let fwd = Forwarded {
            client_ip: &conn.peer_ip,
            proto: conn.proto,
            request_id: &ctx.request_id,
            traceparent: ctx.trace.traceparent.as_ref(),
            tenant_header: &policy.key_sources.header,
            meter: Some(&entry.slots),
        };
        if forward::is_upgrade(req.headers()) {
            return Box::pin(self.forwarder.upgrade(req, tenant, &fwd, slot)).await;
        }
        let resp = self
            .forwarder
            .forward(req, tenant, &fwd, &conn.response_timer)
            .await?;
        Ok(resp.map(|body| ProxyBody::backend(body, slot)))
    }

    /// A preflight: by the tenant's allow-list when the key is present, otherwise by whether any
    /// active tenant lists the origin. Refusals carry no `Access-Control-Allow-*` header.
    async fn preflight(
        &self,
        req: &Request<Inbound>,
        policy: &Policy,
        ctx: &mut RequestContext,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let headers = req.headers();
        let origin = headers
            .get(header::ORIGIN)
            .cloned()
            .ok_or(GatewayError::OriginMissing)?;
        let raw = origin
            .to_str()
            .map_err(|_| GatewayError::OriginNotAllowed)?;
        let allowed = match policy.key_sources.tenant_key(headers, req.uri())? {
            Some(key) => {
                ctx.key = Some(Arc::from(key));
                identify::resolve(&self.directory, key)
                    .await?
                    .tenant
                    .origins
                    .allows(raw)
            }
            None => {
                let candidates =
                    origin::index_candidates(raw).ok_or(GatewayError::OriginNotAllowed)?;
                match self
                    .directory
                    .origin_in_use(&candidates[0], &candidates)
                    .await
                {
                    Ok(in_use) => in_use,
                    Err(e) => {
                        identify::log_store_error(raw, &e);
                        return Err(GatewayError::StoreUnavailable);
                    }
                }
            }
        };
        if !allowed {
            return Err(GatewayError::OriginNotAllowed);
        }
        Ok(cors::preflight_allowed(origin, &policy.cors))
    }
}

/// The client's `X-Request-Id` when it is a sane token (1-128 visible ASCII characters),
/// otherwise a new one: 32 hex digits, a random prefix drawn by each thread and the thread's
/// count (no counter shared between threads: one cache line bounced between all of them).
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(X_REQUEST_ID) {
        let b = id.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return id.clone();
        }
    }
    thread_local! {
        static NEXT: std::cell::Cell<([u8; 16], u64)> =
            std::cell::Cell::new((hex16(fastrand::u64(..)), 0));
    }
    let (prefix, count) = NEXT.get();
    NEXT.set((prefix, count.wrapping_add(1)));
    let mut id = [0u8; 32];
    id[..16].copy_from_slice(&prefix);
    id[16..].copy_from_slice(&hex16(count));
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// `n` as 16 lowercase hex digits.
fn hex16(n: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    crate::http::codec::hex_digits(&n.to_be_bytes(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_propagated_when_sane_and_generated_unique_otherwise() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        let a = request_id(&h);
        let b = request_id(&HeaderMap::new());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.to_str().unwrap().bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
