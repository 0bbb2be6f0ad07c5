//! `tenantgate demo`: zero set-up. Starts the sample backend and the gateway with the example
//! tenants (written to a temporary file you can edit while it runs), and prints commands to try.
//!
//! The sample backend is also what the end-to-end tests put behind the gateway:
//! - any path: `200` with a JSON echo of the method, path and headers it received (so the
//!   injected headers are visible);
//! - `/slow?ms=N`: the same after N milliseconds;
//! - `/stream?chunks=N&interval_ms=M`: N chunks, one every M milliseconds;
//! - `/events?chunks=N&interval_ms=M`: the same as server-sent events (`text/event-stream`);
//! - `/upload`: reads the request body as it streams in and answers its length;
//! - `/ws`: a WebSocket echo (it selects the first subprotocol offered, as a chat backend would).
//!
//! The demo also serves [`PAGE`], a small web page, from two loopback ports, which are two
//! browser origins: the demo tenant `tnt_browser_demo` lists the first and not the second. Each
//! page calls the gateway with `fetch` (a JSON POST with `X-Tenant-ID`, so the browser sends a
//! real preflight) and opens a WebSocket with the `tenant.<key>` subprotocol, and shows what the
//! browser allowed and what it blocked. `tests/browser.rs` opens both in headless Chromium.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::run::config::Config;

/// The example tenants shipped in `tenants.example.json`.
pub const EXAMPLE_TENANTS: &str = include_str!("../../tenants.example.json");

/// The browser demo page; `{{GATEWAY}}`, `{{TENANT}}`, `{{ORIGIN}}` and `{{LISTED}}` are filled
/// in per listener.
pub const PAGE: &str = include_str!("demo_page.html");

/// The tenant the browser pages call as.
pub const BROWSER_TENANT: &str = "tnt_browser_demo";

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn query_u64(req: &Request<Incoming>, name: &str, default: u64) -> u64 {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(default)
}

fn json_response(value: serde_json::Value) -> Response<BoxBody> {
    let body = http_body_util::Full::new(Bytes::from(value.to_string())).boxed();
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn echo(req: &Request<Incoming>) -> serde_json::Value {
    let mut headers = serde_json::Map::new();
    for (name, value) in req.headers() {
        let v = serde_json::Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned());
        match headers.get_mut(name.as_str()) {
            Some(serde_json::Value::Array(all)) => all.push(v),
            _ => {
                headers.insert(name.as_str().to_string(), serde_json::Value::Array(vec![v]));
            }
        }
    }
    serde_json::json!({
        "backend": "tenantgate sample backend",
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "headers": headers,
    })
}

/// `/ws`: answers the WebSocket handshake and echoes every message back.
fn websocket_echo(req: Request<Incoming>) -> Response<BoxBody> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        let mut resp = json_response(serde_json::json!({"error": "not a WebSocket handshake"}));
        *resp.status_mut() = http::StatusCode::BAD_REQUEST;
        return resp;
    };
    let accept = derive_accept_key(key.as_bytes());
    let protocol = req
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| crate::http::codec::list_items([v]).next())
        .and_then(|p| HeaderValue::from_bytes(p).ok());
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        use futures_util::{SinkExt, StreamExt};
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut resp = Response::new(http_body_util::Empty::new().boxed());
    *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(p) = protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    resp
}

async fn backend(req: Request<Incoming>) -> Result<Response<BoxBody>, Infallible> {
    match req.uri().path() {
        "/ws" => Ok(websocket_echo(req)),
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query_u64(&req, "ms", 1000))).await;
            Ok(json_response(echo(&req)))
        }
        "/stream" | "/events" => {
            // /events is server-sent events: the same stream, framed as SSE.
            let sse = req.uri().path() == "/events";
            let chunks = query_u64(&req, "chunks", 10);
            let interval = Duration::from_millis(query_u64(&req, "interval_ms", 100));
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
            tokio::spawn(async move {
                for i in 0..chunks {
                    let text = if sse {
                        format!("data: event {i}\n\n")
                    } else {
                        format!("chunk {i}\n")
                    };
                    if tx.send(Ok(Frame::data(Bytes::from(text)))).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(interval).await;
                }
            });
            let mut resp = Response::new(StreamBody::new(tokio_stream_from(rx)).boxed());
            if sse {
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                );
            }
            Ok(resp)
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut len = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => len += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
            }
            Ok(json_response(serde_json::json!({"received_bytes": len})))
        }
        _ => Ok(json_response(echo(&req))),
    }
}

/// Turns a channel receiver into a stream without pulling in tokio-stream.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + Sync + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// What the sample backend has seen (tests use it to prove that refused requests never reach
/// the backend and that the gateway reuses its connections).
#[derive(Debug, Default)]
pub struct BackendStats {
    pub requests: AtomicU64,
    pub connections: AtomicU64,
}

/// Serves the sample backend on `listener` until the task is dropped.
pub async fn serve_backend(listener: TcpListener, stats: Arc<BackendStats>) {
    serve_backend_with(listener, stats, None).await
}

/// The sample backend, over TLS when `tls` is given (to test `https://` backends).
pub async fn serve_backend_with(
    listener: TcpListener,
    stats: Arc<BackendStats>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let stats = stats.clone();
        let service = service_fn(move |req| {
            stats.requests.fetch_add(1, Ordering::Relaxed);
            backend(req)
        });
        let (builder, tls) = (builder.clone(), tls.clone());
        tokio::spawn(async move {
            let _ = match tls {
                None => {
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await
                }
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => {
                        builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await
                    }
                    Err(_) => return,
                },
            };
        });
    }
}

/// Serves [`PAGE`] on `listener`, filled in for this listener's origin.
pub async fn serve_page(listener: TcpListener, mut gateway: SocketAddr, listed: bool) {
    if gateway.ip().is_unspecified() {
        gateway.set_ip(std::net::IpAddr::from([127, 0, 0, 1]));
    }
    let origin = match listener.local_addr() {
        Ok(a) => format!("http://{a}"),
        Err(_) => return,
    };
    let page = Bytes::from(
        PAGE.replace("{{GATEWAY}}", &format!("http://{gateway}"))
            .replace("{{TENANT}}", BROWSER_TENANT)
            .replace("{{ORIGIN}}", &origin)
            .replace(
                "{{LISTED}}",
                if listed {
                    "listed in the tenant's allowedOrigins: the browser lets the calls through"
                } else {
                    "not listed in the tenant's allowedOrigins: the browser blocks the calls"
                },
            ),
    );
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let page = page.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let page = page.clone();
            async move {
                let mut resp = Response::new(http_body_util::Full::new(page));
                if req.uri().path() != "/" {
                    *resp.status_mut() = http::StatusCode::NOT_FOUND;
                    *resp.body_mut() = http_body_util::Full::new(Bytes::from_static(b"not found"));
                }
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                Ok::<_, Infallible>(resp)
            }
        });
        let builder = builder.clone();
        tokio::spawn(async move {
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A retired key of the example tenants (`tnt_client_a` was rotated away from it).
pub const DEMO_RETIRED_KEY: &str = "tnt_client_a_2025";

/// The example tenants plus the browser demo's tenant, which lists `allowed_origin` only.
/// Retired keys keep working for 30 more days from the demo's start (the example file's
/// dates would run out one day).
fn demo_tenants(allowed_origin: &str) -> String {
    let mut tenants: Vec<serde_json::Value> =
        serde_json::from_str(EXAMPLE_TENANTS).unwrap_or_default();
    let sunset = crate::tenants::tenant::format_instant(
        std::time::SystemTime::now() + std::time::Duration::from_secs(30 * 86_400),
    );
    for retired in tenants
        .iter_mut()
        .filter_map(|t| t.get_mut("retiredKeys").and_then(|r| r.as_array_mut()))
        .flatten()
    {
        retired["until"] = sunset.clone().into();
    }
    tenants.push(serde_json::json!({
        "apiKey": BROWSER_TENANT,
        "allowedOrigins": [allowed_origin],
        "providerConfig": {
            "resources": { "endpoint": "https://browser-demo.communication.azure.com", "region": "eu-west-1" }
        },
        "isActive": true,
        "maxConcurrentConnections": 20
    }));
    serde_json::to_string_pretty(&tenants).unwrap_or_default()
}

/// Binds `ip:port`, or a free port on `ip` when that one is taken (or `port` is 0).
async fn bind_or_any(ip: std::net::IpAddr, port: u16) -> std::io::Result<TcpListener> {
    match TcpListener::bind((ip, port)).await {
        Ok(l) => Ok(l),
        Err(_) => TcpListener::bind((ip, 0)).await,
    }
}

/// Runs the demo until SIGINT/SIGTERM.
pub async fn run(listen: SocketAddr) -> ExitCode {
    let backend = match TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tenantgate demo: cannot start the sample backend: {e}");
            return ExitCode::FAILURE;
        }
    };
    let backend_addr = backend.local_addr().expect("bound listener has an address");
    tokio::spawn(serve_backend(backend, Arc::default()));

    // The two page origins: the gateway's port + 1 and + 2 when free.
    let page_port = |offset: u16| match listen.port() {
        0 => 0,
        p => p.saturating_add(offset),
    };
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    let pages = match tokio::try_join!(
        bind_or_any(loopback, page_port(1)),
        bind_or_any(loopback, page_port(2))
    ) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tenantgate demo: cannot serve the browser pages: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (allowed_page, other_page) = (
        pages.0.local_addr().expect("bound listener has an address"),
        pages.1.local_addr().expect("bound listener has an address"),
    );

    let dir = std::env::temp_dir().join(format!("tenantgate-demo-{}", std::process::id()));
    let tenants = dir.join("tenants.json");
    if let Err(e) = std::fs::create_dir_all(&dir)
        .and_then(|_| std::fs::write(&tenants, demo_tenants(&format!("http://{allowed_page}"))))
    {
        eprintln!("tenantgate demo: cannot write {}: {e}", tenants.display());
        return ExitCode::FAILURE;
    }
    let listen = match std::net::TcpListener::bind(listen) {
        Ok(probe) => probe.local_addr().unwrap_or(listen),
        Err(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let toml = format!(
        "[server]\nlisten = \"{listen}\"\n[upstream]\nurl = \"http://{backend_addr}\"\n\
         [store]\nkind = \"file\"\npath = {:?}\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [inject]\nheaders = {{ \"X-Tenant-Plan\" = \"plan\" }}\n",
        tenants.display().to_string()
    );
    let config = match Config::parse(&toml, "demo config") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tenantgate demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let running = match crate::run::server::start(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tenantgate demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::spawn(serve_page(pages.0, running.addr, true));
    tokio::spawn(serve_page(pages.1, running.addr, false));
    println!(
        "{}",
        instructions(
            running.addr,
            running.admin_addr,
            backend_addr,
            (allowed_page, other_page),
            &tenants
        )
    );
    crate::run::server::shutdown_signal().await;
    running.shutdown();
    running.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    ExitCode::SUCCESS
}

fn instructions(
    gw: SocketAddr,
    admin: Option<SocketAddr>,
    backend: SocketAddr,
    (allowed_page, other_page): (SocketAddr, SocketAddr),
    tenants: &std::path::Path,
) -> String {
    let a = "-H 'X-Tenant-ID: tnt_client_a'";
    let b = "-H 'X-Tenant-ID: tnt_client_b' -H 'Origin: https://chat.client-b.io'";
    let admin = admin.map_or(String::new(), |a| format!("\n  curl -s http://{a}/readyz"));
    format!(
        r#"
tenantgate demo is running
  gateway        http://{gw}
  sample backend http://{backend} (echoes what it receives)
  tenants file   {tenants}  (edit it: changes apply within a second)

Try these:

# allowed: the backend sees X-Tenant-Provider-Endpoint / -Region and X-Tenant-Plan (from the
# document's "plan", by [inject] headers); the response has CORS headers
  curl -si http://{gw}/api/messages {a} -H 'Origin: https://app.client-a.com'

# a retired key (tnt_client_a was rotated): still works, with Deprecation and Sunset headers
  curl -si http://{gw}/api/messages -H 'X-Tenant-ID: {DEMO_RETIRED_KEY}' -H 'Origin: https://app.client-a.com'

# wrong origin for this tenant -> 403 origin_not_allowed
  curl -si http://{gw}/api/messages {a} -H 'Origin: https://evil.example'

# unknown tenant -> 401 tenant_unknown;  inactive tenant -> 403 tenant_inactive
  curl -si http://{gw}/api/messages -H 'X-Tenant-ID: tnt_nobody' -H 'Origin: https://client-a.com'
  curl -si http://{gw}/api/messages -H 'X-Tenant-ID: tnt_client_c' -H 'Origin: https://app.client-c.org'

# a browser preflight, answered by the gateway
  curl -si -X OPTIONS http://{gw}/api/messages -H 'Origin: https://client-a.com' -H 'Access-Control-Request-Method: POST'

# concurrency cap: tnt_client_b may hold 2 requests at once, the third gets 429
  for i in 1 2 3; do curl -s -o /dev/null -w '%{{http_code}}\n' {b} 'http://{gw}/slow?ms=2000' & done; wait

# health and readiness{admin}

In a browser (tenant {BROWSER_TENANT}: fetch with a real preflight, and a WebSocket):
  allowed origin     http://{allowed_page}/
  disallowed origin  http://{other_page}/

Ctrl-C stops the demo.
"#,
        tenants = tenants.display()
    )
}
