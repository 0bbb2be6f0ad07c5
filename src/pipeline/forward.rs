//! Stage 4 — forward: rewrite the request's headers, send it to the tenant's backend over a
//! pooled keep-alive connection, and stream the answer back.
//!
//! Header rules, in the order they apply to a request:
//! 1. **remove** hop-by-hop headers ([`is_hop_by_hop`], RFC 9110 §7.6.1) and every header that
//!    `Connection` names;
//! 2. **remove** any client-sent copy of a header the gateway injects ([`is_injected`], and the
//!    names of `[inject] headers`), so nothing can be spoofed;
//! 3. **set** `X-Tenant-ID`, `X-Tenant-Provider-Endpoint`, `X-Tenant-Provider-Region`,
//!    `X-Tenant-Provider-Connection-String` only when the operator opted in, and the
//!    `[inject] headers` the tenant's document has values for ([`Injections`]);
//! 4. **append** the peer address to `X-Forwarded-For`; **set** `X-Forwarded-Proto`,
//!    `X-Forwarded-Host` and `X-Request-Id`;
//! 5. `Host` becomes the backend's authority (the client's host travels in `X-Forwarded-Host`).
//!
//! Responses lose their hop-by-hop headers the same way. A tenant's `limits` replace the body
//! limit, the response timeout and the upgrade idle timeout for its requests.
//!
//! Protocol upgrades (WebSocket) keep `Upgrade` and `Connection: upgrade`, lose the
//! `tenant.<key>` entry of `Sec-WebSocket-Protocol`, travel on a connection of their own, and
//! after `101` are spliced both ways while holding the tenant's slot ([`Forwarder::upgrade`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Uri;
use http::{Method, Request, Response, Version};
use hyper_util::rt::TokioIo;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::client::{BackendBody, Outgoing};
use crate::http::codec::{self, list_items, BodyFraming};
use crate::http::inbound::{BodyLimitExceeded, ClientBodyError, Inbound, RequestBody};
use crate::http::pool::{Pool, PoolSettings, SendError};
use crate::pipeline::error::GatewayError;
use crate::pipeline::response::ProxyBody;
use crate::tenants::slots::SlotGuard;
use crate::tenants::tenant::Tenant;

use crate::http::codec::is_hop_by_hop;

/// `X-Tenant-ID`: the resolved tenant key.
pub const X_TENANT_ID: HeaderName = HeaderName::from_static("x-tenant-id");
/// `X-Tenant-Provider-Endpoint`: `providerConfig.resources.endpoint`.
pub const X_PROVIDER_ENDPOINT: HeaderName = HeaderName::from_static("x-tenant-provider-endpoint");
/// `X-Tenant-Provider-Region`: `providerConfig.resources.region`.
pub const X_PROVIDER_REGION: HeaderName = HeaderName::from_static("x-tenant-provider-region");
/// `X-Tenant-Provider-Connection-String`: the secret, only when opted in.
pub const X_PROVIDER_CONNECTION_STRING: HeaderName =
    HeaderName::from_static("x-tenant-provider-connection-string");
/// `X-Request-Id`: propagated from the client or generated; returned on the response.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers the gateway owns on the way to the backend: client-sent copies are always removed.
pub fn is_injected(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "x-tenant-id"
            | "x-tenant-provider-endpoint"
            | "x-tenant-provider-region"
            | "x-tenant-provider-connection-string"
            | "x-request-id"
            | "x-forwarded-proto"
            | "x-forwarded-host"
    )
}

pub use crate::http::upstream::Upstream;

/// `[inject] headers`: more headers for the backend, each from a field of the tenant document
/// (strings, numbers and booleans; a missing field sends no header). Client-sent copies of
/// every configured name are removed, like those of the built-in injected headers.
#[derive(Debug, Default)]
pub struct Injections {
    /// Which version of the list this is (each config load makes a new one): tenants keep
    /// their rendered values per version ([`crate::tenants::tenant::Rendered`]).
    id: u64,
    list: Box<[Injection]>,
}

/// One configured header and the dotted document path its value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injection {
    pub name: HeaderName,
    pub path: Box<[Box<str>]>,
}

impl PartialEq for Injections {
    fn eq(&self, other: &Self) -> bool {
        self.list == other.list
    }
}

impl Injections {
    /// Checks `[inject] headers` (header name → dotted path); the error names the entry.
    /// Refused: names that are not header names, that the gateway owns (framing, hop-by-hop,
    /// `Host`, the tenant header, the built-in injected and forwarded headers) or that appear
    /// twice; paths that are not dotted field names; and a path under
    /// `providerConfig.connectionString` unless `inject_secret`.
    pub fn parse<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
        inject_secret: bool,
        tenant_header: &HeaderName,
    ) -> Result<Injections, String> {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let mut list: Vec<Injection> = Vec::new();
        for (name, path) in entries {
            let at = format!("[inject] headers.{name:?}");
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("{at}: not a header name"))?;
            let owned = is_hop_by_hop(&header)
                || is_injected(&header)
                || header == *tenant_header
                || [
                    header::HOST,
                    header::CONTENT_LENGTH,
                    X_FORWARDED_FOR,
                    crate::telemetry::trace::TRACEPARENT,
                ]
                .contains(&header);
            if owned {
                return Err(format!("{at}: the gateway sets this header itself"));
            }
            if list.iter().any(|i| i.name == header) {
                return Err(format!("{at}: the header is configured twice"));
            }
            let segments: Box<[Box<str>]> = path.split('.').map(Box::from).collect();
            let plain = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            };
            if !segments.iter().all(|s| plain(s)) {
                return Err(format!(
                    "{at}: {path:?} is not a dotted path of document fields (like \"providerConfig.resources.region\")"
                ));
            }
            if !inject_secret
                && segments.starts_with(&["providerConfig".into(), "connectionString".into()])
            {
                return Err(format!(
                    "{at}: {path:?} is the tenant's secret connection string; set [tenancy] inject_connection_string = true to send it"
                ));
            }
            list.push(Injection {
                name: header,
                path: segments,
            });
        }
        Ok(Injections {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            list: list.into_boxed_slice(),
        })
    }

    /// Whether `name` is one of the configured headers.
    fn contains(&self, name: &HeaderName) -> bool {
        self.list.iter().any(|i| i.name == name)
    }

    /// Calls `emit` for each configured header the tenant's document has a value for.
    fn emit(&self, tenant: &Tenant, mut emit: impl FnMut(&HeaderName, &HeaderValue)) {
        if self.list.is_empty() {
            return;
        }
        let rendered = tenant
            .rendered
            .get_or_render(self.id, || self.render(tenant));
        if let Some(values) = rendered.as_ref() {
            for (injection, value) in self.list.iter().zip(values.1.iter()) {
                if let Some(value) = value {
                    emit(&injection.name, value);
                }
            }
        }
    }

    /// The tenant's value for each configured header: strings as they are, numbers and
    /// booleans as JSON writes them; a missing field (or `null`) gives none. An object, an
    /// array or a string a header cannot carry gives none either, with a warning.
    #[cold]
    fn render(&self, tenant: &Tenant) -> Box<[Option<HeaderValue>]> {
        use serde_json::Value;
        self.list
            .iter()
            .map(|i| {
                let text = match tenant.field(i.path.iter().map(|s| &**s))? {
                    Value::Null => return None,
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Array(_) | Value::Object(_) => {
                        tracing::warn!(tenant = %tenant.key, header = %i.name, path = %i.path.join("."), "not injected: the field is an array or object, not a string, number or boolean");
                        return None;
                    }
                };
                HeaderValue::from_str(&text)
                    .inspect_err(|_| tracing::warn!(tenant = %tenant.key, header = %i.name, path = %i.path.join("."), "not injected: the value has characters a header cannot carry"))
                    .ok()
            })
            .collect()
    }
}

/// Settings of the upstream side.
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    pub default_upstream: Upstream,
    pub connect_timeout: Duration,
    /// Longest wait for the response head once the request is sent.
    pub response_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// Extra trusted CA certificates (PEM) for `https://` backends.
    pub ca_file: Option<std::path::PathBuf>,
    /// Inject `X-Tenant-Provider-Connection-String` (a secret) — off unless opted in.
    pub inject_connection_string: bool,
    /// Largest request body forwarded (`None`: no limit).
    pub max_body: Option<u64>,
    /// An upgraded connection (WebSocket) with no bytes in either direction for this long is
    /// closed, so a vanished peer cannot hold its tenant's slot forever.
    pub upgrade_idle_timeout: Duration,
    /// `[inject] headers`.
    pub inject: Arc<Injections>,
}

/// Facts about the client connection and request that the forwarded request reports.
pub struct Forwarded<'a> {
    /// The client's IP address as a header value.
    pub client_ip: &'a HeaderValue,
    /// `http` or `https`, as the client reached the gateway.
    pub proto: &'static HeaderValue,
    pub request_id: &'a HeaderValue,
    /// The request's trace context for the backend, if it has one ([`crate::telemetry::trace`]).
    pub traceparent: Option<&'a HeaderValue>,
    /// `[tenancy] header`: the client's copy goes on whatever `Connection` names.
    pub tenant_header: &'a HeaderName,
    /// Counts the request body's bytes for the tenant's usage, when metered.
    pub meter: Option<&'a Arc<crate::tenants::slots::Slots>>,
}

/// The tenant's counter of request bytes, when the request is metered.
fn metered(fwd: &Forwarded<'_>) -> Option<Arc<dyn crate::http::inbound::ByteMeter>> {
    fwd.meter
        .map(|s| s.clone() as Arc<dyn crate::http::inbound::ByteMeter>)
}

/// The upstream side: one pool of keep-alive connections shared by every tenant.
pub struct Forwarder {
    pool: Pool,
    /// Swapped whole by a config reload; each request reads one version.
    settings: ArcSwap<ForwardSettings>,
    /// Time from sending a request to the backend's response head (see [`crate::telemetry::metrics`]).
    pub upstream_response: crate::telemetry::metrics::Latency,
    /// The spliced (upgraded) connections, closed together at shutdown.
    tunnels: TaskTracker,
    closing: CancellationToken,
}

impl Forwarder {
    /// `tls` connects to `https://` backends (`run::tls::connector` makes it).
    pub fn new(settings: ForwardSettings, tls: TlsConnector) -> Forwarder {
        let pool = Pool::new(
            PoolSettings {
                connect_timeout: settings.connect_timeout,
                idle_timeout: settings.pool_idle_timeout,
                max_idle_per_host: settings.pool_max_idle_per_host,
            },
            tls,
        );
        Forwarder {
            pool,
            settings: ArcSwap::from_pointee(settings),
            upstream_response: crate::telemetry::metrics::Latency::default(),
            tunnels: TaskTracker::new(),
            closing: CancellationToken::new(),
        }
    }

    /// Sends the request to the tenant's backend and returns its response head, with the body
    /// still streaming from the backend connection.
    pub async fn forward(
        &self,
        req: Request<Inbound>,
        tenant: &Tenant,
        fwd: &Forwarded<'_>,
        timer: &ResponseTimer,
    ) -> Result<Response<BackendBody>, GatewayError> {
        let settings = self.settings.load_full();
        let (upstream, outgoing) = self.prepare(req, tenant, fwd, &settings)?;
        // One clock read for both the response timeout and the upstream latency.
        let started = tokio::time::Instant::now();
        let sent = self.pool.send(upstream.target(), outgoing);
        let deadline = started + response_timeout(tenant, &settings);
        let mut resp = answered(upstream, timer.within(deadline, sent).await)?;
        self.upstream_response.observe(started.elapsed());
        strip_hop_by_hop(resp.headers_mut());
        Ok(resp)
    }

    /// Forwards a protocol upgrade (WebSocket): on `101 Switching Protocols` the client and
    /// backend connections are spliced in both directions by a task that holds the tenant's
    /// `slot` until both sides have closed. A backend that declines the upgrade has its answer
    /// passed through like any response.
    pub async fn upgrade(
        &self,
        mut req: Request<Inbound>,
        tenant: &Tenant,
        fwd: &Forwarded<'_>,
        slot: SlotGuard,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let client_side = hyper::upgrade::on(&mut req);
        let protocol = req.headers().get(header::UPGRADE).cloned();
        let settings = self.settings.load_full();
        let (upstream, mut req) = self.prepare_upgrade(req, tenant, fwd, &settings)?;
        restore_upgrade(req.headers_mut(), protocol);
        strip_tenant_subprotocol(req.headers_mut());

        let sent = self.pool.send_upgrade(upstream.target(), req);
        let mut resp = answered(
            upstream,
            tokio::time::timeout(response_timeout(tenant, &settings), sent)
                .await
                .map_err(|_| TimedOut),
        )?;
        if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            strip_hop_by_hop(resp.headers_mut());
            return Ok(resp.map(|body| ProxyBody::declined_upgrade(body, slot)));
        }
        let upstream_side = hyper::upgrade::on(&mut resp);
        let tenant_key = tenant.key.clone();
        let idle_timeout = tenant
            .limits
            .upgrade_idle_timeout
            .unwrap_or(settings.upgrade_idle_timeout);
        let closing = self.closing.clone();
        self.tunnels.spawn(async move {
            let _slot = slot.into_socket(); // one of the tenant's slots while the tunnel is open
            match tokio::try_join!(client_side, upstream_side) {
                Ok((client, backend)) => {
                    let (client, backend) = (TokioIo::new(client), TokioIo::new(backend));
                    splice(client, backend, idle_timeout, closing).await;
                }
                Err(e) => {
                    tracing::warn!(tenant = %tenant_key, error = %e, "protocol upgrade failed")
                }
            }
        });
        let (mut parts, _) = resp.into_parts();
        let protocol = parts.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut parts.headers);
        restore_upgrade(&mut parts.headers, protocol);
        Ok(Response::from_parts(parts, ProxyBody::empty()))
    }

    /// Uses `settings` for the requests that start from now (a config reload).
    pub fn update(&self, settings: ForwardSettings) {
        self.settings.store(Arc::new(settings));
    }

    /// Closes every spliced connection (both sides get a FIN) and waits up to `within` for
    /// them to finish; new upgrades are not spliced any more. For shutdown.
    pub async fn close_tunnels(&self, within: Duration) {
        let open = self.tunnels.len();
        self.closing.cancel();
        self.tunnels.close();
        if tokio::time::timeout(within, self.tunnels.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open,
                "upgraded connections still closing at the end of the grace period"
            );
        } else if open > 0 {
            tracing::info!(closed = open, "closed the upgraded connections");
        }
    }

    /// The request as the backend gets it, as bytes: the request line in origin form
    /// (`GET /path?query HTTP/1.1`, whatever the client spoke), `Host` for the backend, the
    /// header rules, and the body counted against the body limit (a larger declared length is
    /// refused at once).
    fn prepare<'a>(
        &self,
        req: Request<Inbound>,
        tenant: &'a Tenant,
        fwd: &Forwarded<'_>,
        settings: &'a ForwardSettings,
    ) -> Result<(&'a Upstream, Outgoing), GatewayError> {
        let (parts, body) = req.into_parts();
        let framing = body_framing(&parts.method, &body);
        let max_body = max_body(tenant, settings);
        check_declared_length(framing, max_body)?;
        let upstream = upstream_for(tenant, settings);
        let body = RequestBody::new(body, max_body, metered(fwd));
        let body = (!http_body::Body::is_end_stream(&body)).then_some(body);
        let mut head = Vec::with_capacity(1024);
        codec::request_line(&mut head, &parts.method, &codec::origin_form(&parts.uri));
        codec::header_line(&mut head, &header::HOST, upstream.host());
        forwarded_headers(
            &parts.uri,
            &parts.headers,
            tenant,
            fwd,
            settings,
            |name, value| codec::header_line(&mut head, name, value),
        );
        codec::end_request_head(&mut head, framing);
        codec::recycle(parts.headers);
        let outgoing = Outgoing {
            head,
            method: parts.method,
            body,
            framing,
        };
        Ok((upstream, outgoing))
    }

    /// [`Forwarder::prepare`] for an upgrade, which goes through hyper's client: the same rules
    /// applied to the request itself.
    fn prepare_upgrade<'a>(
        &self,
        req: Request<Inbound>,
        tenant: &'a Tenant,
        fwd: &Forwarded<'_>,
        settings: &'a ForwardSettings,
    ) -> Result<(&'a Upstream, Request<RequestBody>), GatewayError> {
        let (mut parts, body) = req.into_parts();
        let max_body = max_body(tenant, settings);
        check_declared_length(body_framing(&parts.method, &body), max_body)?;
        let upstream = upstream_for(tenant, settings);
        rewrite_request_headers(&parts.uri, &mut parts.headers, tenant, fwd, settings);
        parts.uri = codec::origin_form(&parts.uri)
            .parse()
            .unwrap_or_else(|_| Uri::from_static("/"));
        parts.version = Version::HTTP_11;
        parts.headers.insert(header::HOST, upstream.host().clone());
        let body = RequestBody::new(body, max_body, metered(fwd));
        Ok((upstream, Request::from_parts(parts, body)))
    }
}

/// The backend's answer, or the error response for a backend that failed or did not answer
/// within `[upstream] response_timeout_ms`. (A plain function over the timed result rather
/// than an async one wrapping the send: a future passed into another is stored twice.)
fn answered<T>(
    upstream: &Upstream,
    timed: Result<Result<T, SendError>, TimedOut>,
) -> Result<T, GatewayError> {
    match timed {
        Err(TimedOut) => Err(GatewayError::UpstreamTimeout),
        Ok(Err(e)) => Err(classify(upstream, &e)),
        Ok(Ok(sent)) => Ok(sent),
    }
}

/// The response timeout's timer, kept by a client connection for its requests one at a time.
///
/// A timer made for each request is put into the runtime's timer wheel on its first poll and
/// taken out again when dropped, under the time driver's lock: about 1,500 instructions per
/// request on the bench workload. A kept timer is registered once; moving it later for the
/// next request is one atomic store (the wheel notices the move only if the old deadline comes
/// first). Requests that overlap on one connection (HTTP/2) use a timer of their own when the
/// kept one is in use.
#[derive(Debug, Default)]
pub struct ResponseTimer(std::sync::Mutex<Option<Pin<Box<tokio::time::Sleep>>>>);

/// The backend did not answer in time.
#[derive(Debug)]
pub struct TimedOut;

impl ResponseTimer {
    /// `fut`'s output, or [`TimedOut`] if `deadline` comes first.
    pub fn within<F: Future>(&self, deadline: tokio::time::Instant, fut: F) -> Within<'_, F> {
        Within {
            fut,
            timer: None,
            deadline,
            home: self,
        }
    }

    fn take(&self) -> Option<Pin<Box<tokio::time::Sleep>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn put_back(&self, timer: Pin<Box<tokio::time::Sleep>>) {
        let mut home = self.0.lock().unwrap_or_else(|p| p.into_inner());
        home.get_or_insert(timer);
    }
}

pin_project_lite::pin_project! {
    /// [`ResponseTimer::within`]'s future.
    pub struct Within<'a, F> {
        #[pin]
        fut: F,
        // Borrowed from `home` from the first wait on, given back when done.
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
        deadline: tokio::time::Instant,
        home: &'a ResponseTimer,
    }

    impl<F> PinnedDrop for Within<'_, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(timer) = this.timer.take() {
                this.home.put_back(timer);
            }
        }
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Result<F::Output, TimedOut>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let deadline = *this.deadline;
        let timer = this.timer.get_or_insert_with(|| match this.home.take() {
            Some(mut kept) => {
                kept.as_mut().reset(deadline);
                kept
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        });
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(TimedOut)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Copies both ways until one side is done or nothing has moved for `idle_timeout`. The tunnel
/// ends when either direction ends (after that direction's last bytes are written and its write
/// side shut down): a WebSocket is over once either peer has closed, and waiting for the other
/// half-close would let a silent peer hold the tenant's slot.
async fn splice<C, B>(client: C, backend: B, idle_timeout: Duration, closing: CancellationToken)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let (client_read, client_write) = tokio::io::split(client);
    let (backend_read, backend_write) = tokio::io::split(backend);
    let started = tokio::time::Instant::now();
    // Milliseconds since `started` of the last byte in either direction.
    let last = std::sync::atomic::AtomicU64::new(0);
    let idle = async {
        loop {
            let since = Duration::from_millis(last.load(std::sync::atomic::Ordering::Relaxed));
            let deadline = started + since + idle_timeout;
            if tokio::time::Instant::now() >= deadline {
                return Ok(());
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let ended = tokio::select! {
        r = pump(client_read, backend_write, started, &last) => r,
        r = pump(backend_read, client_write, started, &last) => r,
        r = idle => {
            tracing::debug!(idle_secs = idle_timeout.as_secs(), "closing an idle upgraded connection");
            r
        }
        _ = closing.cancelled() => {
            tracing::debug!("closing an upgraded connection: the gateway is shutting down");
            Ok(())
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}

/// Copies one direction, noting the time of every chunk in `last`, then shuts the writer down.
///
/// An open tunnel holds no buffer: bytes are read into the thread's scratch buffer and written on
/// at once within the same poll; only what the writer does not take then (backpressure) is kept,
/// in a buffer of its own until it is written. (Two 512-byte buffers per tunnel were a fifth of
/// an idle WebSocket's cost: BENCHMARKS.md, "Cheap connections".)
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    started: tokio::time::Instant,
    last: &std::sync::atomic::AtomicU64,
) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use std::cell::RefCell;
    use tokio::io::{AsyncWriteExt, ReadBuf};
    const SCRATCH_BYTES: usize = 16 * 1024;
    thread_local! {
        static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
    }
    /// What one read came to.
    enum Read {
        /// Bytes passed on (what the writer did not take is in `unwritten`).
        Moved,
        Waiting,
        Ended,
    }
    let mut unwritten: Vec<u8> = Vec::new();
    let mut at = 0;
    std::future::poll_fn(|cx| loop {
        if at < unwritten.len() {
            at += write_now(&mut to, cx, &unwritten[at..])?;
            if at < unwritten.len() {
                return Poll::Pending;
            }
            (unwritten, at) = (Vec::new(), 0);
        }
        let read = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut buf = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut from).poll_read(cx, &mut buf) {
                Poll::Pending => return Ok(Read::Waiting),
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Ok(Read::Ended),
                Poll::Ready(Ok(())) => {}
            }
            let data = buf.filled();
            let taken = write_now(&mut to, cx, data)?;
            unwritten = data[taken..].to_vec(); // no allocation when all was taken
            Ok(Read::Moved)
        });
        match read? {
            Read::Moved => {
                let now = started.elapsed().as_millis() as u64;
                last.store(now, std::sync::atomic::Ordering::Relaxed);
            }
            Read::Waiting => {
                // Waiting to read: what the writer still holds (a TLS session) goes out first.
                if let Poll::Ready(Err(e)) = Pin::new(&mut to).poll_flush(cx) {
                    return Poll::Ready(Err(e));
                }
                return Poll::Pending;
            }
            Read::Ended => return Poll::Ready(Ok(())),
        }
    })
    .await?;
    to.shutdown().await
}

/// Writes as much of `bytes` as `to` takes now; how many it took (fewer when it would block, and
/// then the task is woken when it can take more).
fn write_now<W>(to: &mut W, cx: &mut Context<'_>, bytes: &[u8]) -> std::io::Result<usize>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut written = 0;
    while written < bytes.len() {
        match Pin::new(&mut *to).poll_write(cx, &bytes[written..]) {
            Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => written += n,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => break,
        }
    }
    Ok(written)
}

/// Puts back the two hop-by-hop headers an upgrade needs on each hop (`Upgrade: <protocol>`,
/// `Connection: upgrade`) after the hop-by-hop rules removed them.
fn restore_upgrade(headers: &mut HeaderMap, protocol: Option<HeaderValue>) {
    if let Some(protocol) = protocol {
        headers.insert(header::UPGRADE, protocol);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether the request asks to switch protocols (`Connection: upgrade` + `Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && codec::has_token(headers.get_all(header::CONNECTION), "upgrade")
}

/// Removes the `tenant.<key>` entry from `Sec-WebSocket-Protocol` (it names the tenant to the
/// gateway, not a protocol the backend offers); other offered subprotocols pass through.
pub fn strip_tenant_subprotocol(headers: &mut HeaderMap) {
    if !headers.contains_key(header::SEC_WEBSOCKET_PROTOCOL) {
        return;
    }
    let kept: Vec<u8> = list_items(headers.get_all(header::SEC_WEBSOCKET_PROTOCOL))
        .filter(|p| !p.starts_with(crate::pipeline::identify::TENANT_SUBPROTOCOL.as_bytes()))
        .collect::<Vec<_>>()
        .join(&b", "[..]);
    headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
    if let (false, Ok(v)) = (kept.is_empty(), HeaderValue::from_bytes(&kept)) {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
}

#[cold]
fn classify(upstream: &Upstream, e: &SendError) -> GatewayError {
    let err = match e {
        SendError::ConnectTimeout(_) => GatewayError::UpstreamTimeout,
        // The client's body passed the limit while it streamed: the client's fault, not the
        // backend's.
        _ if caused_by::<BodyLimitExceeded>(e) => return GatewayError::BodyTooLarge,
        // The client's body broke the framing rules or was cut off: the client's fault. The
        // backend connection is discarded with the exchange.
        _ if caused_by::<ClientBodyError>(e) => {
            tracing::info!(upstream = ?upstream, error = %error_chain(e), "request body refused");
            return GatewayError::BadRequest;
        }
        SendError::Connect { .. }
        | SendError::Tls { .. }
        | SendError::Http(_)
        | SendError::Exchange(_) => GatewayError::UpstreamUnavailable,
    };
    tracing::warn!(upstream = ?upstream, error = %error_chain(e), code = err.code(), "upstream request failed");
    err
}

fn caused_by<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if s.is::<E>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// The error and its sources, `: `-separated; a source whose text the message already ends
/// with (errors that print their cause themselves) is not repeated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

/// Removes the hop-by-hop headers and every header that `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named by `Connection` go only with a `Connection` header, itself hop-by-hop.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named = connection_named(headers);
    remove_where(headers, |n| is_hop_by_hop(n) || named.contains(n));
}

/// The header names listed in `Connection` (RFC 9110 §7.6.1: hop-by-hop as well).
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    list_items(headers.get_all(header::CONNECTION))
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .collect()
}

/// Removes every header whose name satisfies `doomed`, in one pass over the names present
/// (a handful) rather than one hash lookup per rule; nothing is allocated when none matches.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let names: Vec<HeaderName> = headers.keys().filter(|n| doomed(n)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// How the forwarded request's body is framed, from the body as the server parsed it: its
/// exact length when it has one, chunked otherwise, and for an empty body `Content-Length: 0`
/// on `POST`, `PUT` and `PATCH`, nothing otherwise. The client's own framing lines are never
/// copied ([`forwarded_headers`] drops them).
fn body_framing(method: &Method, body: &Inbound) -> BodyFraming {
    use http_body::Body;
    if body.is_end_stream() {
        // RFC 9110 §8.6: a request whose method gives the content a meaning says its length,
        // even when it is empty (backends answer `411 Length Required` otherwise).
        return match *method == Method::POST || *method == Method::PUT || *method == Method::PATCH {
            true => BodyFraming::Length(0),
            false => BodyFraming::None,
        };
    }
    match body.size_hint().exact() {
        Some(n) => BodyFraming::Length(n),
        None => BodyFraming::Chunked,
    }
}

/// The longest wait for this tenant's backend to answer: its `limits.responseTimeoutMs`, else
/// `[upstream] response_timeout_ms`.
fn response_timeout(tenant: &Tenant, settings: &ForwardSettings) -> Duration {
    tenant
        .limits
        .response_timeout
        .unwrap_or(settings.response_timeout)
}

/// The largest request body forwarded for this tenant: its `limits.maxBodyBytes`, else
/// `[server] max_body_bytes` (`None`: no limit).
fn max_body(tenant: &Tenant, settings: &ForwardSettings) -> Option<u64> {
    tenant.limits.max_body_bytes.or(settings.max_body)
}

/// A declared request body over the limit is refused before anything is sent.
fn check_declared_length(framing: BodyFraming, max_body: Option<u64>) -> Result<(), GatewayError> {
    match (framing, max_body) {
        (BodyFraming::Length(len), Some(max)) if len > max => Err(GatewayError::BodyTooLarge),
        _ => Ok(()),
    }
}

/// The tenant's own backend, else the default one.
fn upstream_for<'a>(tenant: &'a Tenant, settings: &'a ForwardSettings) -> &'a Upstream {
    tenant
        .upstream
        .as_ref()
        .unwrap_or(&settings.default_upstream)
}

/// The request rules listed at the top of this module: calls `emit` for every header the
/// backend gets (bar `Host`), in order — the client's that survive, then the gateway's.
///
/// `Connection` can only remove end-to-end headers of the client's: framing (written by the
/// gateway), `Host` (the backend's), the tenant's key and every injected header are the
/// gateway's whatever it names. The request's host — the target's authority when the client
/// sent an absolute-form target or HTTP/2's `:authority`, else `Host` — goes on in
/// `X-Forwarded-Host`.
pub fn forwarded_headers(
    uri: &Uri,
    headers: &HeaderMap,
    tenant: &Tenant,
    fwd: &Forwarded<'_>,
    settings: &ForwardSettings,
    mut emit: impl FnMut(&HeaderName, &HeaderValue),
) {
    let named = connection_named(headers);
    let (mut client_host, mut forwarded_for) = (None, None::<Vec<u8>>);
    for (name, value) in headers {
        if name == header::HOST {
            // The backend's own is written by the caller.
            client_host.get_or_insert(value);
        } else if name == X_FORWARDED_FOR {
            // Several lines are one list (RFC 9110 §5.3): joined, then the peer appended.
            let list = forwarded_for.get_or_insert_with(Vec::new);
            if !list.is_empty() {
                list.extend_from_slice(b", ");
            }
            list.extend_from_slice(value.as_bytes());
        } else if name == crate::telemetry::trace::TRACEPARENT {
            // Replaced by the request's own: the client's when valid, or the gateway's span.
        } else if name == header::CONTENT_LENGTH {
            // Framing: written by the gateway from the body it parsed (`exchange::end_head`),
            // never copied.
        } else if !(is_hop_by_hop(name)
            || is_injected(name)
            || settings.inject.contains(name)
            || (named.contains(name) && name != fwd.tenant_header))
        {
            emit(name, value);
        }
    }
    emit(&X_TENANT_ID, &tenant.key_header);
    emit(&X_PROVIDER_ENDPOINT, &tenant.endpoint);
    emit(&X_PROVIDER_REGION, &tenant.region);
    if settings.inject_connection_string {
        if let Some(cs) = &tenant.connection_string {
            emit(&X_PROVIDER_CONNECTION_STRING, cs);
        }
    }
    settings.inject.emit(tenant, &mut emit);
    match forwarded_for {
        Some(mut joined) => {
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(fwd.client_ip.as_bytes());
            let joined = HeaderValue::from_bytes(&joined).unwrap_or_else(|_| fwd.client_ip.clone());
            emit(&X_FORWARDED_FOR, &joined);
        }
        None => emit(&X_FORWARDED_FOR, fwd.client_ip),
    }
    emit(&X_FORWARDED_PROTO, fwd.proto);
    let authority = uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    if let Some(host) = authority.as_ref().or(client_host) {
        emit(&X_FORWARDED_HOST, host);
    }
    emit(&X_REQUEST_ID, fwd.request_id);
    if let Some(traceparent) = fwd.traceparent {
        emit(&crate::telemetry::trace::TRACEPARENT, traceparent);
    }
}

/// [`forwarded_headers`] applied to a header map in place (for the upgrade path, which hands a
/// request to hyper's client). `Host` is removed; the caller sets the backend's.
pub fn rewrite_request_headers(
    uri: &Uri,
    headers: &mut HeaderMap,
    tenant: &Tenant,
    fwd: &Forwarded<'_>,
    settings: &ForwardSettings,
) {
    let mut rewritten = HeaderMap::with_capacity(headers.len() + 10);
    forwarded_headers(uri, headers, tenant, fwd, settings, |name, value| {
        rewritten.append(name.clone(), value.clone());
    });
    *headers = rewritten;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenants::tenant::{TenantDocument, TenantRecord};

    fn tenant() -> Tenant {
        let doc: TenantDocument = serde_json::from_value(serde_json::json!({
            "apiKey": "tnt_a", "allowedOrigins": ["https://a.com"], "isActive": true,
            "maxConcurrentConnections": 5,
            "providerConfig": {"connectionString": "secret-cs", "resources": {"endpoint": "https://ep", "region": "eu"}}
        }))
        .unwrap();
        match TenantRecord::from_document(doc).unwrap() {
            TenantRecord::Valid(t) => (*t).clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_chains_do_not_repeat_a_cause_the_message_already_shows() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot connect to 127.0.0.1:1: {0}")]
        struct Connect(#[source] std::io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("request failed")]
        struct Outer(#[source] Connect);
        let refused = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            error_chain(&Connect(refused())),
            "cannot connect to 127.0.0.1:1: refused"
        );
        assert_eq!(
            error_chain(&Outer(Connect(refused()))),
            "request failed: cannot connect to 127.0.0.1:1: refused"
        );
    }

    /// Forwarding settings with `inject_connection_string = secret` and `[inject] headers`
    /// given as `name=path,name=path`.
    fn settings(secret: bool, inject: &str) -> ForwardSettings {
        let entries = inject
            .split(',')
            .filter(|e| !e.is_empty())
            .map(|e| e.split_once('=').unwrap());
        ForwardSettings {
            default_upstream: Upstream::parse("http://127.0.0.1:3000").unwrap(),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            pool_idle_timeout: Duration::from_secs(1),
            pool_max_idle_per_host: 1,
            ca_file: None,
            inject_connection_string: secret,
            max_body: None,
            upgrade_idle_timeout: Duration::from_secs(1),
            inject: Arc::new(Injections::parse(entries, secret, &X_TENANT_ID).unwrap()),
        }
    }

    #[test]
    fn injections_render_document_fields_and_drop_client_copies() {
        let doc = serde_json::json!({
            "apiKey": "tnt_a", "allowedOrigins": ["https://a.com"], "isActive": true,
            "maxConcurrentConnections": 5, "plan": "gold", "seats": 12, "ratio": 0.5,
            "beta": false, "nothing": null, "tags": ["x"], "bad": "a\nb",
            "providerConfig": {"connectionString": "secret-cs", "database": "db_a",
                               "resources": {"endpoint": "https://ep", "region": "eu"}}
        });
        let TenantRecord::Valid(t) = TenantRecord::from_json(doc).unwrap() else {
            panic!()
        };
        let s = settings(
            false,
            "X-Plan=plan,X-Seats=seats,X-Ratio=ratio,X-Beta=beta,X-Db=providerConfig.database,\
             X-Missing=nope.deeper,X-Null=nothing,X-Tags=tags,X-Bad=bad",
        );
        let id = HeaderValue::from_static("r");
        let mut h = headers(&[
            ("x-plan", "forged"),
            ("X-Missing", "forged"),
            ("x-other", "kept"),
        ]);
        for _ in 0..2 {
            // The second time from the values the tenant keeps.
            let mut copy = h.clone();
            rewrite_request_headers(&Uri::from_static("/"), &mut copy, &t, &forwarded(&id), &s);
            assert_eq!(copy.get_all("x-plan").iter().collect::<Vec<_>>(), ["gold"]);
            assert_eq!(copy["x-seats"], "12");
            assert_eq!(copy["x-ratio"], "0.5");
            assert_eq!(copy["x-beta"], "false");
            assert_eq!(copy["x-db"], "db_a");
            assert_eq!(copy["x-other"], "kept");
            for absent in ["x-missing", "x-null", "x-tags", "x-bad"] {
                assert!(!copy.contains_key(absent), "{absent}: {copy:?}");
            }
        }
        // A new list (a reload) is rendered anew for the same tenant.
        let s2 = settings(false, "X-Plan=seats");
        rewrite_request_headers(&Uri::from_static("/"), &mut h, &t, &forwarded(&id), &s2);
        assert_eq!(h["x-plan"], "12");
    }

    #[test]
    fn injection_lists_are_checked() {
        let parse = |name: &str, path: &str, secret: bool| {
            Injections::parse(
                [(name, path)],
                secret,
                &HeaderName::from_static("x-api-key"),
            )
        };
        assert!(parse("X-Plan", "plan", false).is_ok());
        assert!(parse("X-Cs", "providerConfig.connectionString", true).is_ok());
        for (name, path, needle) in [
            ("X Plan", "plan", "not a header name"),
            ("X-Tenant-ID", "plan", "sets this header itself"),
            ("X-Forwarded-For", "plan", "sets this header itself"),
            ("Connection", "plan", "sets this header itself"),
            ("Host", "plan", "sets this header itself"),
            ("X-Api-Key", "plan", "sets this header itself"),
            ("X-Plan", "", "dotted path"),
            ("X-Plan", "a..b", "dotted path"),
            ("X-Plan", "a.b c", "dotted path"),
            (
                "X-Cs",
                "providerConfig.connectionString",
                "inject_connection_string",
            ),
        ] {
            let err = parse(name, path, false).unwrap_err();
            assert!(
                err.contains(needle) && err.contains(name),
                "{name} {path}: {err}"
            );
        }
        let twice = Injections::parse([("X-A", "a"), ("x-a", "b")], false, &X_TENANT_ID);
        assert!(twice.unwrap_err().contains("twice"));
    }

    fn forwarded<'a>(id: &'a HeaderValue) -> Forwarded<'a> {
        static HTTP: HeaderValue = HeaderValue::from_static("http");
        static IP: HeaderValue = HeaderValue::from_static("10.0.0.7");
        static TENANT_HEADER: HeaderName = X_TENANT_ID;
        static TRACE: HeaderValue =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        Forwarded {
            client_ip: &IP,
            proto: &HTTP,
            request_id: id,
            traceparent: Some(&TRACE),
            tenant_header: &TENANT_HEADER,
            meter: None,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("connection", "x-other-hop"),
            ("x-secret-hop", "1"),
            ("x-other-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-end-to-end", "kept"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-end-to-end"], "kept");
    }

    #[test]
    fn injected_headers_override_client_copies() {
        let id = HeaderValue::from_static("req-9");
        let mut h = headers(&[
            ("host", "gw.example"),
            ("x-tenant-id", "tnt_a"),
            ("x-tenant-provider-endpoint", "https://evil"),
            ("x-tenant-provider-region", "evil"),
            ("x-tenant-provider-connection-string", "evil"),
            ("x-forwarded-proto", "gopher"),
            ("x-forwarded-host", "evil"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-request-id", "client-id"),
            (
                "traceparent",
                "00-11111111111111111111111111111111-2222222222222222-01",
            ),
            ("x-forwarded-for", "5.6.7.8"),
            ("accept", "text/plain"),
        ]);
        rewrite_request_headers(
            &Uri::from_static("/"),
            &mut h,
            &tenant(),
            &forwarded(&id),
            &settings(false, ""),
        );
        assert_eq!(
            h.get_all("traceparent").iter().collect::<Vec<_>>(),
            ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"],
            "the request's trace context replaces the client's header"
        );
        assert_eq!(h["accept"], "text/plain", "other client headers pass");
        assert_eq!(
            h.get_all("x-tenant-provider-endpoint")
                .iter()
                .collect::<Vec<_>>(),
            ["https://ep"]
        );
        assert_eq!(
            h.get_all("x-tenant-provider-region")
                .iter()
                .collect::<Vec<_>>(),
            ["eu"]
        );
        assert_eq!(
            h.get_all("x-tenant-id").iter().collect::<Vec<_>>(),
            ["tnt_a"]
        );
        assert!(
            h.get("x-tenant-provider-connection-string").is_none(),
            "secret injected without opt-in"
        );
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "gw.example");
        assert_eq!(
            h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
            ["1.2.3.4, 5.6.7.8, 10.0.0.7"],
            "every line of the client's list is kept, in order, then the peer"
        );
        assert_eq!(h["x-request-id"], "req-9");
        assert!(
            h.get("host").is_none(),
            "Host is set from the backend URL by the client"
        );
    }

    #[test]
    fn the_name_checks_cover_every_injected_and_hop_by_hop_header_and_nothing_else() {
        for name in [
            X_TENANT_ID,
            X_PROVIDER_ENDPOINT,
            X_PROVIDER_REGION,
            X_PROVIDER_CONNECTION_STRING,
            X_REQUEST_ID,
            X_FORWARDED_PROTO,
            X_FORWARDED_HOST,
        ] {
            assert!(is_injected(&name) && !is_hop_by_hop(&name), "{name}");
        }
        for name in [
            header::CONNECTION,
            HeaderName::from_static("keep-alive"),
            HeaderName::from_static("proxy-connection"),
            header::TE,
            header::TRAILER,
            header::TRANSFER_ENCODING,
            header::UPGRADE,
        ] {
            assert!(is_hop_by_hop(&name) && !is_injected(&name), "{name}");
        }
        // Appended to or set from the client's, not replaced blindly.
        for name in [
            X_FORWARDED_FOR,
            header::HOST,
            header::ORIGIN,
            crate::telemetry::trace::TRACEPARENT,
        ] {
            assert!(!is_injected(&name) && !is_hop_by_hop(&name), "{name}");
        }
    }

    #[test]
    fn connection_string_only_when_opted_in() {
        let id = HeaderValue::from_static("r");
        let mut h = HeaderMap::new();
        rewrite_request_headers(
            &Uri::from_static("/"),
            &mut h,
            &tenant(),
            &forwarded(&id),
            &settings(true, ""),
        );
        assert_eq!(h["x-tenant-provider-connection-string"], "secret-cs");
        assert_eq!(h["x-forwarded-for"], "10.0.0.7");
    }

    /// One tunnel direction through a writer that takes 100 bytes at a time: the bytes the
    /// writer refuses are kept and written later, in order, and the end is passed on.
    #[tokio::test]
    async fn a_tunnel_direction_copies_everything_through_a_slow_writer() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, from) = tokio::io::duplex(64 * 1024);
        let (to, mut sink) = tokio::io::duplex(100);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let last = std::sync::atomic::AtomicU64::new(0);
        let copy = pump(from, to, tokio::time::Instant::now(), &last);
        let feed = async {
            client.write_all(&data).await.unwrap();
            drop(client); // the end of this direction
        };
        let drain = async {
            let mut got = Vec::new();
            sink.read_to_end(&mut got).await.unwrap();
            got
        };
        let (copied, (), got) = tokio::join!(copy, feed, drain);
        copied.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the bytes arrive in order");
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_response_timer_times_out_each_request_by_its_own_deadline() {
        use tokio::time::{sleep, Instant};
        let timer = ResponseTimer::default();
        let within = |secs: u64| Instant::now() + Duration::from_secs(secs);
        let never = std::future::pending::<()>;

        // The first wait makes the timer; the request answers in time.
        assert!(timer
            .within(within(30), sleep(Duration::from_secs(1)))
            .await
            .is_ok());
        assert!(
            timer.0.lock().unwrap().is_some(),
            "kept for the next request"
        );

        // Later requests move it later, and time out at their own deadline.
        for _ in 0..3 {
            assert!(timer
                .within(within(30), sleep(Duration::from_secs(29)))
                .await
                .is_ok());
        }
        let started = Instant::now();
        assert!(timer.within(within(30), never()).await.is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(30));

        // A fired timer is set again; an earlier deadline than the kept one is honoured.
        assert!(timer
            .within(within(60), sleep(Duration::from_secs(45)))
            .await
            .is_ok());
        let started = Instant::now();
        assert!(timer.within(within(2), never()).await.is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(2));

        // Overlapping requests (HTTP/2) each keep their own deadline.
        let (a, b) = tokio::join!(
            timer.within(within(5), never()),
            timer.within(within(10), sleep(Duration::from_secs(7)))
        );
        assert!(a.is_err() && b.is_ok());
    }
}
