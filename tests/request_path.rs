//! End to end over real sockets: every outcome of the request path (DESIGN.md), in request
//! order — identify, CORS (actual requests and preflights), limit, forward — plus HTTP/2.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use serde_json::json;
use tenantgate::tenants::store::file::FileStore;
use tenantgate::tenants::store::{StoreError, TenantStore};
use tenantgate::tenants::tenant::TenantRecord;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const A: &str = "https://client-a.com";

/// Counts the lookups that reach the store.
struct Counting {
    inner: Arc<FileStore>,
    finds: AtomicUsize,
}

#[async_trait]
impl TenantStore for Counting {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn find(&self, key: &str) -> Result<Option<TenantRecord>, StoreError> {
        self.finds.fetch_add(1, Ordering::SeqCst);
        self.inner.find(key).await
    }
    async fn origin_in_use(&self, c: &[String]) -> Result<bool, StoreError> {
        self.inner.origin_in_use(c).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

fn tenants() -> Vec<serde_json::Value> {
    let mut inactive = tenant("tnt_off", &["https://off.example"], 5);
    inactive["isActive"] = json!(false);
    let mut broken = tenant("tnt_broken", &[A], 5);
    broken["maxConcurrentConnections"] = json!(0);
    vec![
        tenant(
            "tnt_a",
            &[A, "https://*.client-a.com", "http://localhost:3000"],
            5,
        ),
        tenant("tnt_b", &["https://client-b.com", "null"], 5),
        inactive,
        broken,
    ]
}

#[tokio::test]
async fn identify_outcomes() {
    let mut counter = None;
    let gw = Gateway::start_with(&tenants(), "", |inner| {
        let c = Arc::new(Counting {
            inner,
            finds: AtomicUsize::new(0),
        });
        counter = Some(c.clone());
        c
    })
    .await;
    let counter = counter.unwrap();
    let finds = || counter.finds.load(Ordering::SeqCst);
    let url = gw.url("/api/messages");

    let r = get(&url, &[("origin", A)]).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (401, "tenant_missing")
    );

    for bad in [
        "a".repeat(129),
        "tnt a".into(),
        "tnt_a,tnt_b".into(),
        "tnt/a".into(),
        "".into(),
    ] {
        let r = get(&url, &[("x-tenant-id", &bad), ("origin", A)]).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_str()),
            (400, "tenant_malformed"),
            "{bad:?}"
        );
    }
    let mut raw = TcpStream::connect(gw.running.addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-tenant-id: tnt_a\r\nx-tenant-id: tnt_b\r\norigin: https://client-a.com\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    raw.read_to_string(&mut text).await.unwrap();
    assert!(
        text.starts_with("HTTP/1.1 400") && text.contains("tenant_malformed"),
        "{text}"
    );
    assert_eq!(finds(), 0, "malformed keys never reach the store");

    let r = get(&url, &[("x-tenant-id", "tnt_nobody"), ("origin", A)]).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (401, "tenant_unknown")
    );
    assert_eq!(finds(), 1);
    for _ in 0..20 {
        assert_eq!(
            get(&url, &[("x-tenant-id", "tnt_nobody"), ("origin", A)])
                .await
                .status,
            401
        );
    }
    assert_eq!(finds(), 1, "unknown keys are negative-cached");

    let r = get(
        &url,
        &[
            ("x-tenant-id", "tnt_off"),
            ("origin", "https://off.example"),
        ],
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (403, "tenant_inactive")
    );

    let r = get(&url, &[("x-tenant-id", "tnt_broken"), ("origin", A)]).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (503, "tenant_misconfigured")
    );
    assert!(r.header("access-control-allow-origin").is_none());

    let r = get(&url, &[("x-tenant-id", "tnt_a"), ("origin", A)]).await;
    assert_eq!(r.status, 200, "a broken neighbour does not affect tnt_a");
    assert_eq!(
        gw.backend.requests(),
        1,
        "only the allowed request reached the backend"
    );
}

#[tokio::test]
async fn cors_on_actual_requests() {
    let gw = Gateway::start(&tenants(), "").await;
    let url = gw.url("/api/messages");
    let status = |key: &'static str, origin: &'static str| {
        let url = url.clone();
        async move {
            let r = get(&url, &[("x-tenant-id", key), ("origin", origin)]).await;
            if r.status == 200 {
                assert_eq!(
                    r.header("access-control-allow-origin"),
                    Some(origin),
                    "echoes the origin as sent"
                );
                assert!(r
                    .headers
                    .get_all("vary")
                    .iter()
                    .any(|v| v.to_str().unwrap().contains("Origin")));
                assert_eq!(
                    r.headers
                        .get_all("access-control-allow-origin")
                        .iter()
                        .count(),
                    1
                );
            } else {
                assert_eq!(r.error_code(), "origin_not_allowed");
                assert!(r.header("access-control-allow-origin").is_none());
            }
            r.status.as_u16()
        }
    };
    assert_eq!(status("tnt_a", A).await, 200);
    assert_eq!(
        status("tnt_a", "https://client-b.com").await,
        403,
        "another tenant's origin"
    );
    assert_eq!(status("tnt_a", "https://evil.example").await, 403);
    assert_eq!(
        status("tnt_a", "https://app.client-a.com").await,
        200,
        "wildcard subdomain"
    );
    assert_eq!(
        status("tnt_a", "https://x.app.client-a.com").await,
        200,
        "wildcard, two labels"
    );
    assert_eq!(
        status("tnt_a", "http://app.client-a.com").await,
        403,
        "wildcard, other scheme"
    );
    assert_eq!(
        status("tnt_a", "HTTPS://CLIENT-A.com:443").await,
        200,
        "normalised case and default port"
    );
    assert_eq!(status("tnt_a", "http://localhost:3000").await, 200);
    assert_eq!(status("tnt_a", "http://localhost:3001").await, 403);
    assert_eq!(
        status("tnt_a", "https://client-a.com/").await,
        403,
        "a trailing slash is not an origin"
    );
    assert_eq!(status("tnt_a", "null").await, 403, "null only when listed");
    assert_eq!(status("tnt_b", "null").await, 200);

    let r = get(&url, &[("x-tenant-id", "tnt_a")]).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (403, "origin_missing")
    );

    let lax = Gateway::start(&tenants(), "[tenancy]\nrequire_origin = false\n").await;
    let r = get(&lax.url("/x"), &[("x-tenant-id", "tnt_a")]).await;
    assert_eq!(
        r.status, 200,
        "server-to-server callers when require_origin = false"
    );
    assert!(r.header("access-control-allow-origin").is_none());
    let r = get(
        &lax.url("/x"),
        &[("x-tenant-id", "tnt_a"), ("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(r.status, 403, "an Origin that is present is still checked");
}

#[tokio::test]
async fn preflights_are_answered_by_the_gateway() {
    let gw = Gateway::start(&tenants(), "").await;
    let url = gw.url("/api/messages");
    let preflight = |origin: &'static str, key: Option<&'static str>| {
        let url = url.clone();
        async move {
            let mut h = vec![
                ("origin", origin),
                ("access-control-request-method", "POST"),
            ];
            h.push((
                "access-control-request-headers",
                "content-type, x-tenant-id",
            ));
            if let Some(k) = key {
                h.push(("x-tenant-id", k));
            }
            send(&client(), "OPTIONS", &url, &h).await
        }
    };
    // Without a key: decided by whether an active tenant lists the origin.
    for origin in [A, "https://deep.app.client-a.com", "https://client-b.com"] {
        let r = preflight(origin, None).await;
        assert_eq!(r.status, 204, "{origin}");
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert_eq!(
            r.header("access-control-allow-methods"),
            Some("GET, POST, PUT, PATCH, DELETE, OPTIONS")
        );
        assert!(r
            .header("access-control-allow-headers")
            .unwrap()
            .contains("X-Tenant-ID"));
        assert_eq!(r.header("access-control-max-age"), Some("600"));
        assert_eq!(
            r.header("vary"),
            Some("Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
        );
        assert!(r.body.is_empty());
    }
    for origin in [
        "https://evil.example",
        "https://off.example",
        "https://client-a.com.evil.example",
    ] {
        let r = preflight(origin, None).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_str()),
            (403, "origin_not_allowed"),
            "{origin}"
        );
        assert!(
            r.headers
                .keys()
                .all(|k| !k.as_str().starts_with("access-control-allow")),
            "{origin}: {:?}",
            r.headers
        );
    }
    // With a key: that tenant's list decides.
    assert_eq!(preflight(A, Some("tnt_a")).await.status, 204);
    assert_eq!(
        preflight("https://client-b.com", Some("tnt_a"))
            .await
            .status,
        403
    );
    assert_eq!(preflight(A, Some("tnt_nobody")).await.status, 401);
    // An OPTIONS that is not a preflight is an ordinary request.
    let r = send(
        &client(),
        "OPTIONS",
        &url,
        &[("x-tenant-id", "tnt_a"), ("origin", A)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        gw.backend.requests(),
        1,
        "preflights never reach the backend"
    );
}

#[tokio::test]
async fn concurrency_cap_refuses_with_429_and_frees_slots_when_responses_end() {
    let gw = Gateway::start(&[tenant("tnt_a", &[A], 3)], "").await;
    let url = gw.url("/slow?ms=600");
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                get(&url, &[("x-tenant-id", "tnt_a"), ("origin", A)])
                    .await
                    .status
            })
        })
        .collect();
    eventually(5, || async { gw.in_flight("tnt_a").await == 3 }).await;
    let r = get(&gw.url("/x"), &[("x-tenant-id", "tnt_a"), ("origin", A)]).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (429, "tenant_concurrency_exceeded")
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some(A),
        "browser code can read the 429"
    );
    for s in slow {
        assert_eq!(s.await.unwrap(), 200);
    }
    assert_eq!(gw.in_flight("tnt_a").await, 0);
    assert_eq!(
        get(&gw.url("/x"), &[("x-tenant-id", "tnt_a"), ("origin", A)])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn aborted_streams_never_leak_slots() {
    const CAP: usize = 10;
    let gw = Gateway::start(&[tenant("tnt_a", &[A], CAP as u64)], "").await;
    let request = b"GET /stream?chunks=100000&interval_ms=5 HTTP/1.1\r\nhost: x\r\nx-tenant-id: tnt_a\r\norigin: https://client-a.com\r\n\r\n";
    // 1,000 streaming responses, CAP at a time, each abandoned by the client mid-stream.
    for _ in 0..1000 / CAP {
        let mut batch = Vec::new();
        for _ in 0..CAP {
            let mut s = TcpStream::connect(gw.running.addr).await.unwrap();
            s.write_all(request).await.unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                buf[..n].starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&buf[..n])
            );
            batch.push(s);
        }
        drop(batch);
        eventually(10, || async { gw.in_flight("tnt_a").await == 0 }).await;
    }
    // The tenant can use its whole cap again.
    let url = gw.url("/slow?ms=300");
    let all = futures_util::future::join_all((0..CAP).map(|_| async {
        get(&url, &[("x-tenant-id", "tnt_a"), ("origin", A)])
            .await
            .status
    }))
    .await;
    assert!(all.iter().all(|s| *s == 200), "{all:?}");
}

#[tokio::test]
async fn gateway_wide_connection_cap() {
    let gw = Gateway::start(
        &[tenant("tnt_a", &[A], 100)],
        "[server]\nmax_connections = 2\n",
    )
    .await;
    let hold1 = TcpStream::connect(gw.running.addr).await.unwrap();
    let _hold2 = TcpStream::connect(gw.running.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let url = gw.url("/x");
    let third = tokio::spawn(async move {
        get(&url, &[("x-tenant-id", "tnt_a"), ("origin", A)])
            .await
            .status
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !third.is_finished(),
        "a third connection waits while two are open"
    );
    drop(hold1);
    let status = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn forwarded_headers_are_rewritten_and_cannot_be_spoofed() {
    let gw = Gateway::start(&[tenant("tnt_a", &[A], 5)], "").await;
    let mut raw = TcpStream::connect(gw.running.addr).await.unwrap();
    raw.write_all(
        b"GET /api/messages?x=1 HTTP/1.1\r\nhost: gw.example\r\nx-tenant-id: tnt_a\r\norigin: https://client-a.com\r\n\
x-tenant-provider-endpoint: https://evil.example\r\nx-tenant-provider-region: evil-region\r\n\
x-tenant-provider-connection-string: forged\r\nx-forwarded-proto: gopher\r\nx-forwarded-host: evil\r\n\
x-forwarded-for: 203.0.113.9\r\nx-request-id: trace-me-42\r\n\
connection: keep-alive, x-hop-by-name\r\nx-hop-by-name: 1\r\nkeep-alive: timeout=5\r\nte: trailers\r\n\
proxy-connection: keep-alive\r\nx-end-to-end: kept\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut text = String::new();
    raw.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-request-id: trace-me-42"),
        "the id is returned: {head}"
    );
    let body = body
        .split_once('{')
        .map(|(_, rest)| format!("{{{rest}"))
        .unwrap();
    let body = body.trim_end_matches(|c: char| c != '}');
    let seen = Reply {
        status: http::StatusCode::OK,
        headers: Default::default(),
        body: Bytes::from(body.to_string()),
    };
    assert_eq!(
        seen.seen("x-tenant-provider-endpoint"),
        ["https://tnt_a.communication.azure.com"]
    );
    assert_eq!(seen.seen("x-tenant-provider-region"), ["us-east-1"]);
    assert_eq!(seen.seen("x-tenant-id"), ["tnt_a"]);
    assert!(
        seen.seen("x-tenant-provider-connection-string").is_empty(),
        "the secret is not injected by default"
    );
    assert_eq!(seen.seen("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.seen("x-forwarded-host"), ["gw.example"]);
    assert_eq!(seen.seen("x-forwarded-for"), ["203.0.113.9, 127.0.0.1"]);
    assert_eq!(seen.seen("x-request-id"), ["trace-me-42"]);
    assert_eq!(seen.seen("x-end-to-end"), ["kept"]);
    for hop in ["x-hop-by-name", "keep-alive", "te", "proxy-connection"] {
        assert!(seen.seen(hop).is_empty(), "{hop} was forwarded");
    }
    assert!(
        seen.seen("connection").is_empty(),
        "the client's Connection header is not forwarded"
    );
    assert_eq!(seen.seen("host"), [gw.backend.addr.to_string()]);

    // Generated when the client sends none; backend and client see the same id.
    let r = get(&gw.url("/x"), &[("x-tenant-id", "tnt_a"), ("origin", A)]).await;
    let id = r.header("x-request-id").unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(r.seen("x-request-id"), [id]);

    // Trace context without export: a valid traceparent passes unchanged, an invalid one is
    // dropped, and none is made up (a not-sampled parent would silence the backend's tracing).
    assert!(r.seen("traceparent").is_empty(), "no trace is made up");
    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for (sent, forwarded) in [(valid, vec![valid]), ("00-garbage", vec![])] {
        let r = get(
            &gw.url("/x"),
            &[
                ("x-tenant-id", "tnt_a"),
                ("origin", A),
                ("traceparent", sent),
            ],
        )
        .await;
        assert_eq!(r.seen("traceparent"), forwarded, "sent {sent}");
    }
}

#[tokio::test]
async fn connection_string_only_when_opted_in_and_per_tenant_upstreams() {
    let other = Backend::start().await;
    let mut own = tenant("tnt_own", &[A], 5);
    own["upstream"] = json!(other.url());
    let gw = Gateway::start(
        &[tenant("tnt_a", &[A], 5), own],
        "[tenancy]\ninject_connection_string = true\n",
    )
    .await;
    let r = get(&gw.url("/x"), &[("x-tenant-id", "tnt_a"), ("origin", A)]).await;
    assert_eq!(
        r.seen("x-tenant-provider-connection-string"),
        ["endpoint=https://tnt_a.example/;accesskey=SECRET-tnt_a"]
    );
    let r = get(&gw.url("/x"), &[("x-tenant-id", "tnt_own"), ("origin", A)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        (gw.backend.requests(), other.requests()),
        (1, 1),
        "tnt_own went to its own backend"
    );
    assert_eq!(r.seen("host"), [other.addr.to_string()]);
}

#[tokio::test]
async fn keep_alive_pool_to_the_backend() {
    let gw = Gateway::start(&[tenant("tnt_a", &[A], 5)], "").await;
    let c = client();
    for _ in 0..20 {
        assert_eq!(as_tenant(&c, &gw.url("/x"), "tnt_a", A).await.status, 200);
    }
    assert_eq!(gw.backend.requests(), 20);
    assert!(
        gw.backend.connections() <= 2,
        "{} backend connections for 20 requests",
        gw.backend.connections()
    );
}

#[tokio::test]
async fn bodies_stream_both_ways_without_buffering() {
    let gw = Gateway::start(&[tenant("tnt_a", &[A], 5)], "").await;
    // Upload: 16 MiB sent in 64 KiB chunks as they are produced.
    let req = tenant_request(
        "POST",
        &gw.url("/upload"),
        "tnt_a",
        A,
        streamed_body(256, 64 * 1024),
    );
    let c = client_for();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["received_bytes"], 16 * 1024 * 1024);

    // Download: the first chunk arrives while the backend still holds the rest back.
    let url = gw.url("/stream?chunks=2&interval_ms=3000");
    let req = tenant_request(
        "GET",
        &url,
        "tnt_a",
        A,
        http_body_util::Empty::<Bytes>::new(),
    );
    let c = client_for();
    let mut body = c.request(req).await.unwrap().into_body();
    let first = tokio::time::timeout(Duration::from_millis(1500), body.frame())
        .await
        .expect("first chunk streamed");
    assert_eq!(first.unwrap().unwrap().into_data().unwrap(), "chunk 0\n");
}

#[tokio::test]
async fn upstream_failures_are_502_and_504_with_cors() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut dead = tenant("tnt_dead", &[A], 5);
    dead["upstream"] = json!(format!("http://{closed}"));
    let gw = Gateway::start(
        &[tenant("tnt_a", &[A], 5), dead],
        "[upstream]\nresponse_timeout_ms = 300\n",
    )
    .await;
    let r = get(&gw.url("/x"), &[("x-tenant-id", "tnt_dead"), ("origin", A)]).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (502, "upstream_unavailable")
    );
    assert_eq!(r.header("access-control-allow-origin"), Some(A));
    let r = get(
        &gw.url("/slow?ms=2000"),
        &[("x-tenant-id", "tnt_a"), ("origin", A)],
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (504, "upstream_timeout")
    );
    assert_eq!(
        gw.in_flight("tnt_a").await,
        0,
        "the slot is back after a timeout"
    );
}

#[tokio::test]
async fn connection_threads_share_tenants_slots_and_shut_down_cleanly() {
    let gw = Gateway::start_on_threads(&[tenant("tnt_a", &[A], 3)], 3).await;
    // Many clients at once: their connections are dealt to the three threads.
    let mut clients = Vec::new();
    for _ in 0..12 {
        let url = gw.url("/x");
        clients.push(tokio::spawn(async move {
            let c = client();
            let mut statuses = Vec::new();
            for _ in 0..10 {
                statuses.push(as_tenant(&c, &url, "tnt_a", A).await.status.as_u16());
            }
            statuses
        }));
    }
    let mut ok = 0;
    for c in clients {
        for status in c.await.unwrap() {
            assert!(status == 200 || status == 429, "{status}");
            ok += usize::from(status == 200);
        }
    }
    assert_eq!(
        gw.backend.requests(),
        ok as u64,
        "every 200 reached the backend once"
    );
    assert!(
        gw.backend.connections() <= 12,
        "{} backend connections: kept connections are reused on each thread",
        gw.backend.connections()
    );
    // One tenant cap across the threads: three slow requests fill it, wherever they run.
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let url = gw.url("/slow?ms=1500");
            tokio::spawn(async move { get(&url, &[("x-tenant-id", "tnt_a"), ("origin", A)]).await })
        })
        .collect();
    eventually(5, || async { gw.in_flight("tnt_a").await == 3 }).await;
    let r = get(&gw.url("/x"), &[("x-tenant-id", "tnt_a"), ("origin", A)]).await;
    assert_eq!(r.error_code(), "tenant_concurrency_exceeded");
    // Shutdown waits for the in-flight requests on every thread.
    gw.running.shutdown();
    for s in slow {
        assert_eq!(
            s.await.unwrap().status,
            200,
            "in-flight requests finish during shutdown"
        );
    }
}

#[tokio::test]
async fn http2_prior_knowledge_from_clients() {
    let gw = Gateway::start(&[tenant("tnt_a", &[A], 50)], "").await;
    let c = h2_client();
    let url = gw.url("/x");
    let headers = [("x-tenant-id", "tnt_a"), ("origin", A)];
    let all =
        futures_util::future::join_all((0..20).map(|_| send(&c, "GET", &url, &headers))).await;
    for r in &all {
        assert_eq!(r.status, 200);
        assert_eq!(r.header("access-control-allow-origin"), Some(A));
        assert_eq!(r.seen("x-tenant-provider-region"), ["us-east-1"]);
    }
    let r = as_tenant(&c, &gw.url("/x"), "tnt_nobody", A).await;
    assert_eq!(r.error_code(), "tenant_unknown");
}

/// A backend that answers each request on a connection and then, after `idle_close_ms`, closes
/// it — the way servers with a short keep-alive timeout (Node's default is 5 s) drop idle
/// connections. Optional `Connection: close` on every answer. Counts connections.
async fn closing_backend(
    idle_close_ms: u64,
    connection_close: bool,
) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counter = conns.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                loop {
                    let read = tokio::time::timeout(
                        Duration::from_millis(idle_close_ms),
                        s.read(&mut buf),
                    )
                    .await;
                    let n = match read {
                        Ok(Ok(n)) if n > 0 => n,
                        _ => return, // idle too long, or the peer went away: close
                    };
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).to_string();
                        seen.drain(..end + 4);
                        let (status, body) = if head.starts_with("HEAD ") {
                            ("200 OK", "")
                        } else if head.contains("GET /empty ") {
                            ("204 No Content", "")
                        } else {
                            ("200 OK", "hello")
                        };
                        let close = if connection_close {
                            "connection: close\r\n"
                        } else {
                            ""
                        };
                        let len = if status.starts_with("204") {
                            String::new()
                        } else {
                            "content-length: 5\r\n".into()
                        };
                        let resp = format!("HTTP/1.1 {status}\r\n{len}{close}\r\n{body}");
                        if s.write_all(resp.as_bytes()).await.is_err() || connection_close {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, conns)
}

#[tokio::test]
async fn pooled_connections_closed_by_the_backend_are_replaced_transparently() {
    let (addr, conns) = closing_backend(100, false).await;
    let mut t = tenant("tnt_a", &[A], 5);
    t["upstream"] = json!(format!("http://{addr}"));
    let gw = Gateway::start(&[t], "").await;
    let c = client();
    for i in 0..5 {
        let r = as_tenant(&c, &gw.url("/x"), "tnt_a", A).await;
        assert_eq!(
            (r.status.as_u16(), &r.body[..]),
            (200, &b"hello"[..]),
            "request {i}"
        );
        // Longer than the backend keeps an idle connection: the pooled one is dead next time.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        conns.load(Ordering::SeqCst),
        5,
        "one fresh connection per request, no 502"
    );

    // Back to back, the same connection is reused.
    let before = conns.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(as_tenant(&c, &gw.url("/x"), "tnt_a", A).await.status, 200);
    }
    assert_eq!(conns.load(Ordering::SeqCst), before + 1);
}

#[tokio::test]
async fn connection_close_head_and_bodiless_responses_free_slot_and_connection() {
    let (addr, conns) = closing_backend(5_000, true).await;
    let mut t = tenant("tnt_close", &[A], 1);
    t["upstream"] = json!(format!("http://{addr}"));
    let (keep, keep_conns) = closing_backend(5_000, false).await;
    let mut k = tenant("tnt_keep", &[A], 1);
    k["upstream"] = json!(format!("http://{keep}"));
    let gw = Gateway::start(&[t, k], "").await;
    let c = client();
    for _ in 0..5 {
        let r = as_tenant(&c, &gw.url("/x"), "tnt_close", A).await;
        assert_eq!(r.status, 200, "Connection: close answers are never reused");
    }
    assert_eq!(conns.load(Ordering::SeqCst), 5);
    assert!(
        r_close_header_absent(&c, &gw).await,
        "the backend's Connection header is not passed on"
    );

    // HEAD and 204 have no body: with a cap of 1, each must free the slot at once.
    for (method, path, status) in [
        ("HEAD", "/x", 200),
        ("GET", "/empty", 204),
        ("HEAD", "/x", 200),
        ("GET", "/x", 200),
    ] {
        let r = send(
            &c,
            method,
            &gw.url(path),
            &[("x-tenant-id", "tnt_keep"), ("origin", A)],
        )
        .await;
        assert_eq!(r.status.as_u16(), status, "{method} {path}");
        assert!(r.body.is_empty() || path == "/x" && method == "GET");
        assert_eq!(
            gw.in_flight("tnt_keep").await,
            0,
            "{method} {path} left its slot taken"
        );
    }
    assert_eq!(
        keep_conns.load(Ordering::SeqCst),
        1,
        "bodiless responses keep the connection reusable"
    );
}

async fn r_close_header_absent(c: &HttpClient, gw: &Gateway) -> bool {
    let r = send(
        c,
        "GET",
        &gw.url("/x"),
        &[("x-tenant-id", "tnt_close"), ("origin", A)],
    )
    .await;
    r.header("connection")
        .is_none_or(|v| !v.eq_ignore_ascii_case("close"))
}

/// A backend written byte by byte: the path of each request picks a canned answer, some of
/// them wrong on purpose.
async fn scripted_backend() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                let head = loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        break String::from_utf8_lossy(&seen[..end]).to_string();
                    }
                };
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                let answer: Vec<u8> = match path.as_str() {
                    // Refuses the upload after its head, then reads (and drops) whatever comes,
                    // as servers do before closing.
                    "/early" => b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbig!".to_vec(),
                    "/conflicting-length" => b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd".to_vec(),
                    "/not-http" => b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec(),
                    "/huge-head" => format!("HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nok", "a".repeat(70 * 1024)).into_bytes(),
                    "/chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6;note=x\r\nhello \r\n5\r\nworld\r\n0\r\nx-checksum: 1\r\n\r\n".to_vec(),
                    "/until-close" => b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it".to_vec(),
                    // Both framings: chunked wins and the length must not travel on.
                    "/chunked-and-length" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n".to_vec(),
                    "/truncated" => b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this".to_vec(),
                    _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
                };
                let _ = s.write_all(&answer).await;
                let _ = s.shutdown().await;
                // Lingering close: drain until the gateway goes away.
                while let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await
                {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn backend_answers_are_framed_strictly_and_early_answers_are_heard() {
    let mut t = tenant("tnt_a", &[A], 5);
    t["upstream"] = json!(format!("http://{}", scripted_backend().await));
    let gw = Gateway::start(&[t], "").await;
    let c = client();
    let get = |path: &'static str| {
        let (c, url) = (c.clone(), gw.url(path));
        async move { as_tenant(&c, &url, "tnt_a", A).await }
    };

    // Chunked (with an extension and a trailer) and close-delimited bodies arrive whole.
    let r = get("/chunked").await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"hello world"[..]));
    let r = get("/until-close").await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"all of it"[..]));
    let r = get("/chunked-and-length").await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"hello world"[..]));

    // Heads the gateway cannot trust are a 502, never passed on.
    for path in ["/conflicting-length", "/not-http", "/huge-head"] {
        let r = get(path).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_str()),
            (502, "upstream_unavailable"),
            "{path}"
        );
    }
    // A body cut short ends the client's response early instead of passing as complete.
    let req = tenant_request(
        "GET",
        &gw.url("/truncated"),
        "tnt_a",
        A,
        http_body_util::Empty::<Bytes>::new(),
    );
    // (Either the head with part of the body and then an error, or just the error, depending on
    // whether the gateway flushed the head before it saw the connection end.)
    let complete = match client_for().request(req).await {
        Ok(resp) => resp.into_body().collect().await.is_ok(),
        Err(_) => false,
    };
    assert!(!complete, "a truncated body must not look complete");
    assert_eq!(
        gw.in_flight("tnt_a").await,
        0,
        "slots are back after every failure"
    );

    // A backend that refuses an upload before it is sent is heard at once: the client is still
    // holding back most of its declared body.
    let mut s = TcpStream::connect(gw.running.addr).await.unwrap();
    s.write_all(
        format!("POST /early HTTP/1.1\r\nhost: gw\r\nx-tenant-id: tnt_a\r\norigin: {A}\r\ncontent-length: 1000000\r\n\r\nfirst bytes").as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut answer))
        .await
        .expect("the backend's early answer reaches the client")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.ends_with("big!"), "{answer}");
    drop(s);
    eventually(5, || async { gw.in_flight("tnt_a").await == 0 }).await;

    // And the gateway is fine afterwards.
    assert_eq!(get("/ok").await.status, 200);
}

#[tokio::test]
async fn query_parameter_key_is_opt_in_for_event_streams() {
    let url = |gw: &Gateway| gw.url("/stream?chunks=1&interval_ms=1&tenant=tnt_a");
    let off = Gateway::start(&[tenant("tnt_a", &[A], 5)], "").await;
    assert_eq!(
        get(&url(&off), &[("origin", A)]).await.status,
        401,
        "off by default"
    );
    let on = Gateway::start(
        &[tenant("tnt_a", &[A], 5)],
        "[tenancy]\nquery_param = \"tenant\"\n",
    )
    .await;
    let r = get(&url(&on), &[("origin", A)]).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"chunk 0\n"[..]));
    let r = get(
        &on.url("/x?tenant=tnt_a"),
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(r.status, 403, "the origin is still checked");
}

#[tokio::test]
async fn server_sent_events_reach_the_client_as_the_backend_writes_them() {
    let gw = Gateway::start(
        &[tenant("tnt_a", &[A], 5)],
        "[tenancy]\nquery_param = \"tenant\"\n",
    )
    .await;
    // As an EventSource would: the key in the query, the origin from the browser.
    let req = http::Request::get(gw.url("/events?chunks=3&interval_ms=3000&tenant=tnt_a"))
        .header("origin", A)
        .header("accept", "text/event-stream")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = client_for().request(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["access-control-allow-origin"], A);
    let mut body = resp.into_body();
    // The backend holds the next event back for 3 s: the first must arrive well before.
    let first = tokio::time::timeout(Duration::from_millis(1500), body.frame())
        .await
        .expect("the first event was held back");
    assert_eq!(
        first.unwrap().unwrap().into_data().unwrap(),
        "data: event 0\n\n"
    );
    assert_eq!(
        gw.in_flight("tnt_a").await,
        1,
        "an open event stream holds a slot"
    );
    drop(body);
    eventually(5, || async { gw.in_flight("tnt_a").await == 0 }).await;
}

#[tokio::test]
async fn request_bodies_over_the_limit_get_413_declared_or_streamed() {
    let gw = Gateway::start(
        &[tenant("tnt_a", &[A], 5)],
        "[server]\nmax_body_bytes = 1048576\n",
    )
    .await;
    let post = |body: Bytes| {
        tenant_request(
            "POST",
            &gw.url("/upload"),
            "tnt_a",
            A,
            http_body_util::Full::new(body),
        )
    };
    let read = |resp: http::Response<hyper::body::Incoming>| async move {
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
        )
    };
    // Declared larger than the limit: refused before anything is sent to the backend.
    let (status, v) = read(
        client()
            .request(post(Bytes::from(vec![1u8; 2 << 20])))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (413, Some("body_too_large"))
    );
    assert_eq!(gw.backend.requests(), 0);
    // Within the limit: forwarded whole.
    let (status, v) = read(
        client()
            .request(post(Bytes::from(vec![1u8; 512 << 10])))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, v["received_bytes"].as_u64()),
        (200, Some(512 << 10))
    );

    // Streamed without a length: counted as it passes and cut at the limit.
    let req = tenant_request(
        "POST",
        &gw.url("/upload"),
        "tnt_a",
        A,
        streamed_body(32, 64 << 10),
    );
    let streaming = client_for();
    let (status, v) = read(streaming.request(req).await.unwrap()).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (413, Some("body_too_large"))
    );
    eventually(5, || async { gw.in_flight("tnt_a").await == 0 }).await;
}

#[tokio::test]
async fn slow_request_heads_are_cut_off() {
    let gw = Gateway::start(
        &[tenant("tnt_a", &[A], 5)],
        "[server]\nheader_read_timeout_secs = 1\n",
    )
    .await;
    let mut slow = TcpStream::connect(gw.running.addr).await.unwrap();
    // Half a request head, then nothing (slowloris).
    slow.write_all(b"GET /x HTTP/1.1\r\nhost: x\r\nx-tenant-id: tnt_a\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "the gateway kept a half-sent request head open"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed too early"
    );
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert_eq!(gw.backend.requests(), 0);

    // An idle keep-alive connection waits for its next head on the same clock.
    let mut idle = TcpStream::connect(gw.running.addr).await.unwrap();
    idle.write_all(
        b"GET /echo HTTP/1.1\r\nhost: x\r\nx-tenant-id: tnt_a\r\norigin: https://client-a.com\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the idle keep-alive connection stayed open");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn oversized_request_heads_get_431() {
    let gw = Gateway::start(
        &[tenant("tnt_a", &[A], 5)],
        "[server]\nmax_header_bytes = 8192\n",
    )
    .await;
    let url = gw.url("/echo");
    let over = "x".repeat(9_000);
    for c in [client(), h2_client()] {
        let r = send(
            &c,
            "GET",
            &url,
            &[("x-tenant-id", "tnt_a"), ("origin", A), ("x-big", &over)],
        )
        .await;
        assert_eq!(
            (r.status.as_u16(), r.error_code()),
            (431, "headers_too_large".into())
        );
        // Just under the limit passes.
        let under = "x".repeat(7_500);
        let r = send(
            &c,
            "GET",
            &url,
            &[("x-tenant-id", "tnt_a"), ("origin", A), ("x-big", &under)],
        )
        .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        gw.backend.requests(),
        2,
        "refused heads never reach the backend"
    );

    // Far over (beyond 4x the limit): the HTTP/1.1 parser refuses it without buffering more.
    let mut raw = tokio::net::TcpStream::connect(gw.running.addr)
        .await
        .unwrap();
    let head = format!(
        "GET /echo HTTP/1.1\r\nhost: x\r\nx-tenant-id: tnt_a\r\nx-big: {}\r\n\r\n",
        "y".repeat(40_000)
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = raw.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(gw.backend.requests(), 2);
}

/// Writes `bytes` on a fresh connection and reads until the gateway closes it.
async fn raw_exchange(gw: &Gateway, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(gw.running.addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
        .await
        .expect("the gateway closed the connection")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Reads what has arrived until `pattern` is in it.
async fn read_until(s: &mut TcpStream, pattern: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(pattern) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "waited for {pattern:?}, got {:?}",
                    String::from_utf8_lossy(&seen)
                )
            })
            .unwrap();
        assert!(
            n > 0,
            "closed before {pattern:?}: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

const HEAD_A: &str = "host: gw\r\nx-tenant-id: tnt_a\r\norigin: https://client-a.com\r\n";

#[tokio::test]
async fn http1_connections_keep_alive_pipeline_and_frame_bodies() {
    let gw = Gateway::start(&[tenant("tnt_a", &[A], 5)], "").await;

    // Three pipelined requests in one write: a chunked upload (extension, trailer), a
    // Content-Length upload, and a GET that closes; answered in order on one connection.
    let text = raw_exchange(
        &gw,
        format!(
            "POST /upload HTTP/1.1\r\n{HEAD_A}transfer-encoding: chunked\r\n\r\n\
5\r\nhello\r\n6;note=x\r\n world\r\n0\r\nx-sum: 1\r\n\r\n\
POST /upload HTTP/1.1\r\n{HEAD_A}content-length: 3\r\n\r\nabc\
GET /third HTTP/1.1\r\n{HEAD_A}connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let answers: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 3, "{text}");
    assert!(
        answers[0].starts_with("200") && answers[0].contains("\"received_bytes\":11"),
        "{text}"
    );
    assert!(
        answers[1].starts_with("200") && answers[1].contains("\"received_bytes\":3"),
        "{text}"
    );
    assert!(
        answers[2].starts_with("200") && answers[2].contains("\"/third\""),
        "{text}"
    );
    assert!(answers[2].contains("connection: close\r\n"), "{text}");
    assert!(
        answers[0].contains("\r\ndate: "),
        "responses carry Date: {text}"
    );

    // HTTP/1.0: closed after the answer unless the client asks for keep-alive.
    let text = raw_exchange(&gw, format!("GET /a HTTP/1.0\r\n{HEAD_A}\r\n").as_bytes()).await;
    assert!(
        text.starts_with("HTTP/1.1 200") && text.contains("connection: close\r\n"),
        "{text}"
    );
    let text = raw_exchange(
        &gw,
        format!("GET /a HTTP/1.0\r\n{HEAD_A}connection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n{HEAD_A}\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    assert!(text.contains("connection: keep-alive\r\n"), "{text}");

    // HEAD: the backend's headers, no body, and the connection goes on.
    let text = raw_exchange(
        &gw,
        format!("HEAD /h HTTP/1.1\r\n{HEAD_A}\r\nGET /after-head HTTP/1.1\r\n{HEAD_A}connection: close\r\n\r\n").as_bytes(),
    )
    .await;
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        rest.starts_with("HTTP/1.1 200") && rest.contains("/after-head"),
        "{text}"
    );

    // A refused upload whose small body is already in does not cost the connection.
    let text = raw_exchange(
        &gw,
        format!(
            "POST /x HTTP/1.1\r\nhost: gw\r\nx-tenant-id: tnt_nobody\r\norigin: {A}\r\ncontent-length: 5\r\n\r\nhello\
GET /next HTTP/1.1\r\n{HEAD_A}connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(
        text.starts_with("HTTP/1.1 401") && text.contains("tenant_unknown"),
        "{text}"
    );
    assert!(
        text.contains("HTTP/1.1 200") && text.contains("/next"),
        "{text}"
    );

    // A WebSocket upgrade after a plain request on the same connection.
    let mut s = TcpStream::connect(gw.running.addr).await.unwrap();
    s.write_all(format!("GET /first HTTP/1.1\r\n{HEAD_A}\r\n").as_bytes())
        .await
        .unwrap();
    read_until(&mut s, "/first").await;
    s.write_all(
        format!(
            "GET /ws HTTP/1.1\r\n{HEAD_A}upgrade: websocket\r\nconnection: upgrade\r\n\
sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let text = read_until(&mut s, "\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert_eq!(gw.backend.requests(), 11);
}

#[tokio::test]
async fn expect_100_continue_is_answered_only_once_the_request_passes_the_checks() {
    let gw = Gateway::start(&[tenant("tnt_a", &[A], 5)], "").await;
    let mut s = TcpStream::connect(gw.running.addr).await.unwrap();
    s.write_all(
        format!(
            "POST /upload HTTP/1.1\r\n{HEAD_A}content-length: 5\r\nexpect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let text = read_until(&mut s, "\r\n\r\n").await;
    assert_eq!(text, "HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.unwrap();
    let text = read_until(&mut s, "received_bytes").await;
    assert!(
        text.starts_with("HTTP/1.1 200") && text.contains("\"received_bytes\":5"),
        "{text}"
    );

    // Refused: the final answer comes at once, and the body is never asked for.
    let text = raw_exchange(
        &gw,
        format!("POST /upload HTTP/1.1\r\nhost: gw\r\nx-tenant-id: tnt_nobody\r\norigin: {A}\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(
        text.starts_with("HTTP/1.1 401") && text.contains("connection: close\r\n"),
        "{text}"
    );
    assert_eq!(gw.backend.requests(), 1);
}

#[tokio::test]
async fn ambiguous_or_malformed_request_heads_get_400_and_a_closed_connection() {
    let gw = Gateway::start(&[tenant("tnt_a", &[A], 5)], "").await;
    for (what, head) in [
        ("both framings", format!("POST /upload HTTP/1.1\r\n{HEAD_A}content-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")),
        ("coding other than chunked", format!("POST /upload HTTP/1.1\r\n{HEAD_A}transfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n")),
        ("chunked twice", format!("POST /upload HTTP/1.1\r\n{HEAD_A}transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")),
        ("conflicting lengths", format!("POST /upload HTTP/1.1\r\n{HEAD_A}content-length: 3\r\ncontent-length: 4\r\n\r\nabcd")),
        ("bad length", format!("POST /upload HTTP/1.1\r\n{HEAD_A}content-length: +3\r\n\r\nabc")),
        ("chunked on HTTP/1.0", format!("POST /upload HTTP/1.0\r\n{HEAD_A}transfer-encoding: chunked\r\n\r\n0\r\n\r\n")),
        ("not HTTP", "HELLO THERE\r\n\r\n".to_string()),
        ("space before colon", format!("GET / HTTP/1.1\r\n{HEAD_A}x-bad : 1\r\n\r\n")),
    ] {
        // A request that would be served follows on the same connection: it must not be.
        let text = raw_exchange(&gw, format!("{head}GET /smuggled HTTP/1.1\r\n{HEAD_A}\r\n").as_bytes()).await;
        assert!(text.starts_with("HTTP/1.1 400"), "{what}: {text}");
        assert!(text.contains("\"code\":\"bad_request\"") && text.contains("connection: close\r\n"), "{what}: {text}");
        assert!(!text.contains("HTTP/1.1 200"), "{what}: {text}");
    }
    // A chunked body that breaks mid-way fails that request and closes the connection.
    let text = raw_exchange(
        &gw,
        format!("POST /upload HTTP/1.1\r\n{HEAD_A}transfer-encoding: chunked\r\n\r\n5\r\nhelloXX\r\nGET /smuggled HTTP/1.1\r\n{HEAD_A}\r\n").as_bytes(),
    )
    .await;
    assert!(!text.contains("/smuggled"), "{text}");
    assert_eq!(
        gw.backend.requests(),
        0,
        "nothing reached the backend whole"
    );
}

#[tokio::test]
async fn a_client_that_goes_away_mid_request_frees_its_slot() {
    let gw = Gateway::start(&[tenant("tnt_a", &[A], 5)], "").await;
    let mut s = TcpStream::connect(gw.running.addr).await.unwrap();
    s.write_all(format!("GET /slow?ms=5000 HTTP/1.1\r\n{HEAD_A}\r\n").as_bytes())
        .await
        .unwrap();
    eventually(5, || async { gw.in_flight("tnt_a").await == 1 }).await;
    drop(s);
    let started = std::time::Instant::now();
    eventually(5, || async { gw.in_flight("tnt_a").await == 0 }).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the slot waited for the backend"
    );
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_at_once() {
    let gw = Gateway::start(
        &[tenant("tnt_a", &[A], 5)],
        "[server]\nshutdown_grace_secs = 30\n",
    )
    .await;
    let mut s = TcpStream::connect(gw.running.addr).await.unwrap();
    s.write_all(format!("GET /before HTTP/1.1\r\n{HEAD_A}\r\n").as_bytes())
        .await
        .unwrap();
    read_until(&mut s, "/before").await;
    let started = std::time::Instant::now();
    gw.running.shutdown();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the idle connection was closed")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "waited for the grace period"
    );
}
