//! WebSockets through the gateway, with a real WebSocket client and echo backend
//! (tokio-tungstenite): the `tenant.<key>` subprotocol token, the origin check that stops
//! cross-site WebSocket hijacking, and one tenant slot per open socket.

// tungstenite's handshake callback returns its own (large) error type.
#![allow(clippy::result_large_err)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const A: &str = "https://client-a.com";
/// What a browser app offers: the tenant token plus the real subprotocol it speaks. (A browser
/// that offers subprotocols fails the handshake unless the server picks one, and the gateway never
/// picks the token, so apps offer a real one alongside it.)
const TOKEN: &str = "tenant.tnt_a, chat.v1";

/// An echo backend that records the handshake headers it received and picks `chat.v1` when
/// offered.
async fn ws_backend() -> (SocketAddr, Arc<Mutex<Vec<http::HeaderMap>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let record = record.clone();
            tokio::spawn(async move {
                let callback = |req: &Request, mut resp: Response| {
                    record.lock().unwrap().push(req.headers().clone());
                    let offered = req
                        .headers()
                        .get("sec-websocket-protocol")
                        .map(|v| v.to_str().unwrap().to_string());
                    if offered.is_some_and(|o| o.split(',').any(|p| p.trim() == "chat.v1")) {
                        resp.headers_mut().insert(
                            "sec-websocket-protocol",
                            http::HeaderValue::from_static("chat.v1"),
                        );
                    }
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
                    if msg.is_close() || (echo && ws.send(msg).await.is_err()) {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

async fn gateway_to(backend: SocketAddr, cap: u64) -> Gateway {
    gateway_with(backend, cap, "").await
}

async fn gateway_with(backend: SocketAddr, cap: u64, extra: &str) -> Gateway {
    let mut t = tenant("tnt_a", &[A], cap);
    t["upstream"] = serde_json::json!(format!("http://{backend}"));
    Gateway::start(&[t], extra).await
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(
    gw: &Gateway,
    origin: &str,
    protocols: &str,
) -> Result<(Ws, http::Response<Option<Vec<u8>>>), WsError> {
    let mut req = format!("ws://{}/chat", gw.running.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("origin", origin.parse().unwrap());
    req.headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().unwrap());
    tokio_tungstenite::connect_async(req).await
}

fn status_of(err: WsError) -> u16 {
    match err {
        WsError::Http(resp) => resp.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn websockets_pass_through_with_the_tenant_subprotocol_token() {
    let (backend, seen) = ws_backend().await;
    let gw = gateway_to(backend, 10).await;
    let (mut ws, resp) = open(&gw, A, "tenant.tnt_a, chat.v1").await.unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "chat.v1",
        "the token is never the chosen protocol"
    );

    let handshake = seen.lock().unwrap()[0].clone();
    assert_eq!(
        handshake["sec-websocket-protocol"], "chat.v1",
        "the token entry is removed, others pass"
    );
    assert_eq!(handshake["x-tenant-id"], "tnt_a");
    assert_eq!(handshake["x-tenant-provider-region"], "us-east-1");
    assert_eq!(handshake["upgrade"], "websocket");

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    let big = vec![0xabu8; 1024 * 1024];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_data().len(),
        big.len(),
        "1 MiB message"
    );
    ws.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
    assert!(matches!(ws.next().await.unwrap().unwrap(), Message::Pong(p) if &p[..] == b"p"));
    ws.close(None).await.unwrap();
    while let Some(Ok(msg)) = ws.next().await {
        assert!(matches!(msg, Message::Close(_)), "{msg:?}");
    }

    // The header works too (non-browser clients).
    let mut req = format!("ws://{}/chat", gw.running.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("origin", A.parse().unwrap());
    req.headers_mut()
        .insert("x-tenant-id", "tnt_a".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::text("again")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("again"));
}

#[tokio::test]
async fn websockets_from_unlisted_origins_or_unknown_tenants_never_reach_the_backend() {
    let (backend, seen) = ws_backend().await;
    let gw = gateway_to(backend, 10).await;
    assert_eq!(
        status_of(open(&gw, "https://evil.example", TOKEN).await.unwrap_err()),
        403
    );
    assert_eq!(
        status_of(open(&gw, A, "tenant.tnt_nobody").await.unwrap_err()),
        401
    );
    assert_eq!(status_of(open(&gw, A, "chat.v1").await.unwrap_err()), 401);
    assert_eq!(
        status_of(
            open(&gw, A, "tenant.tnt_a, tenant.tnt_b")
                .await
                .unwrap_err()
        ),
        400
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "no refused handshake reached the backend"
    );
}

#[tokio::test]
async fn each_open_websocket_holds_one_tenant_slot_until_it_closes() {
    let (backend, _) = ws_backend().await;
    let gw = gateway_to(backend, 2).await;
    let (mut first, _) = open(&gw, A, TOKEN).await.unwrap();
    let (second, _) = open(&gw, A, TOKEN).await.unwrap();
    assert_eq!(gw.in_flight("tnt_a").await, 2);
    assert_eq!(status_of(open(&gw, A, TOKEN).await.unwrap_err()), 429);
    // The metrics see them as open WebSockets of the tenant.
    let metrics = get(&gw.admin_url("/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    for line in [
        "tenantgate_open_websockets 2",
        "tenantgate_tenant_open_websockets{tenant=\"tnt_a\"} 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in {text}"
        );
    }

    // Closed by the client with a close handshake: the slot comes back.
    first.close(None).await.unwrap();
    eventually(5, || async { gw.in_flight("tnt_a").await == 1 }).await;
    let (third, _) = open(&gw, A, TOKEN).await.unwrap();

    // A dropped TCP connection frees its slot as well.
    drop(second);
    drop(third);
    eventually(5, || async { gw.in_flight("tnt_a").await == 0 }).await;
    let mut sockets = Vec::new();
    for _ in 0..2 {
        sockets.push(open(&gw, A, TOKEN).await.unwrap().0);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(gw.in_flight("tnt_a").await, 2);
}

#[tokio::test]
async fn two_hundred_concurrent_websockets() {
    let (backend, _) = ws_backend().await;
    let gw = gateway_to(backend, 250).await;
    let mut sockets = Vec::new();
    for _ in 0..200 {
        sockets.push(open(&gw, A, TOKEN).await.unwrap().0);
    }
    assert_eq!(gw.in_flight("tnt_a").await, 200);
    let echoes =
        futures::future::join_all(sockets.iter_mut().enumerate().map(|(i, ws)| async move {
            ws.send(Message::text(format!("msg {i}"))).await.unwrap();
            ws.next().await.unwrap().unwrap() == Message::text(format!("msg {i}"))
        }))
        .await;
    assert!(echoes.iter().all(|ok| *ok));
    drop(sockets);
    eventually(5, || async { gw.in_flight("tnt_a").await == 0 }).await;
}

#[tokio::test]
async fn idle_websockets_are_closed_and_free_their_slot() {
    let (backend, _) = ws_backend().await;
    let gw = gateway_with(backend, 10, "[server]\nupgrade_idle_timeout_secs = 1\n").await;
    let (mut idle, _) = open(&gw, A, TOKEN).await.unwrap();
    let (mut busy, _) = open(&gw, A, TOKEN).await.unwrap();
    for i in 0..8 {
        busy.send(Message::text(format!("{i}"))).await.unwrap();
        assert_eq!(
            busy.next().await.unwrap().unwrap(),
            Message::text(format!("{i}"))
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        gw.in_flight("tnt_a").await,
        1,
        "the idle socket was closed, the busy one kept"
    );
    assert!(
        !matches!(idle.next().await, Some(Ok(Message::Text(_)))),
        "the idle socket is gone"
    );
}

/// `limits.upgradeIdleTimeoutSecs` closes that tenant's idle sockets at its own time; another
/// tenant's idle socket keeps the gateway's (300 s here).
#[tokio::test]
async fn a_tenant_s_own_idle_timeout_closes_only_its_sockets() {
    let (backend, _) = ws_backend().await;
    let mut quick = tenant("tnt_a", &[A], 5);
    quick["upstream"] = serde_json::json!(format!("http://{backend}"));
    quick["limits"] = serde_json::json!({"upgradeIdleTimeoutSecs": 1});
    let mut patient = tenant("tnt_b", &[A], 5);
    patient["upstream"] = serde_json::json!(format!("http://{backend}"));
    let gw = Gateway::start(&[quick, patient], "").await;
    let (mut a, _) = open(&gw, A, "tenant.tnt_a, chat.v1").await.unwrap();
    let (mut b, _) = open(&gw, A, "tenant.tnt_b, chat.v1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    eventually(3, || async { gw.in_flight("tnt_a").await == 0 }).await;
    assert!(
        !matches!(a.next().await, Some(Ok(Message::Text(_)))),
        "tnt_a's idle socket was closed at its own 1 s"
    );
    assert_eq!(gw.in_flight("tnt_b").await, 1);
    b.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        b.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
}

#[tokio::test]
async fn shutdown_finishes_requests_closes_websockets_and_refuses_new_connections() {
    let (backend, _) = ws_backend().await;
    let mut ws_tenant = tenant("tnt_a", &[A], 5);
    ws_tenant["upstream"] = serde_json::json!(format!("http://{backend}"));
    // shutdown_grace_secs = 5 (the test config).
    let gw = Gateway::start(&[ws_tenant, tenant("tnt_b", &[A], 5)], "").await;
    let (mut ws, _) = open(&gw, A, TOKEN).await.unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));
    let c = client();
    let slow = tokio::spawn({
        let (c, url) = (c.clone(), gw.url("/slow?ms=1500"));
        async move { as_tenant(&c, &url, "tnt_b", A).await }
    });
    eventually(5, || async { gw.backend.requests() == 1 }).await;

    let started = std::time::Instant::now();
    gw.running.shutdown();
    // The WebSocket is closed by the gateway at once (both sides), not held for the grace period.
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the WebSocket stayed open during shutdown");
    // New connections are refused while the in-flight request finishes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tokio::net::TcpStream::connect(gw.running.addr)
        .await
        .is_err());
    // The request in flight finishes normally.
    assert_eq!(slow.await.unwrap().status, 200);
    let Gateway { running, .. } = gw;
    tokio::time::timeout(Duration::from_secs(5), running.wait())
        .await
        .expect("stopped within the grace period");
    assert!(started.elapsed() < Duration::from_secs(5));
}
