//! WebSocket load for `scripts/bench-websocket.sh`: an echo backend, a throughput client and an
//! idle-socket holder (tokio-tungstenite on both ends).
//!
//! ```text
//! ws_bench echo ADDR                              echo every message back
//! ws_bench throughput URL SOCKETS SECS BYTES      ping-pong messages; prints messages/s
//! ws_bench idle URL SOCKETS HOLD_SECS             open SOCKETS, print "open N", hold them
//! ```
//! Clients offer the subprotocols `tenant.tnt_bench` and `chat`, with `Origin:
//! https://bench.example`, so the same command works against the gateway and the backend.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(url: &str) -> Socket {
    let mut req = url.into_client_request().expect("a ws:// URL");
    let h = req.headers_mut();
    h.insert("origin", "https://bench.example".parse().unwrap());
    h.insert(
        "sec-websocket-protocol",
        "tenant.tnt_bench, chat".parse().unwrap(),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    ws
}

async fn echo(addr: &str) {
    let listener = TcpListener::bind(addr).await.expect("bind");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            // Accept the offered "chat" subprotocol, as a chat backend would.
            #[allow(clippy::result_large_err)] // the handshake callback type is tungstenite's
            let pick = |req: &Request, mut resp: Response| {
                if req.headers().get("sec-websocket-protocol").is_some() {
                    resp.headers_mut()
                        .insert("sec-websocket-protocol", "chat".parse().unwrap());
                }
                Ok(resp)
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, pick).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn throughput(url: &str, sockets: usize, secs: u64, bytes: usize) {
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..sockets {
        let mut ws = open(url).await;
        let (done, count) = (done.clone(), count.clone());
        let payload = vec![b'x'; bytes];
        tasks.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                ws.send(Message::binary(payload.clone())).await.unwrap();
                match ws.next().await {
                    Some(Ok(m)) if m.len() == payload.len() => {}
                    other => panic!("bad echo: {other:?}"),
                }
                count.fetch_add(1, Ordering::Relaxed);
            }
            let _ = ws.close(None).await;
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let n = count.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "messages {n} seconds {elapsed:.2} per_sec {:.0}",
        n as f64 / elapsed
    );
}

async fn idle(url: &str, sockets: usize, hold: u64) {
    let mut open_sockets = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        open_sockets.push(open(url).await);
    }
    println!("open {}", open_sockets.len());
    tokio::time::sleep(Duration::from_secs(hold)).await;
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    let num = |i: usize| arg(i).parse::<u64>().expect("a number");
    match arg(0) {
        "echo" => echo(arg(1)).await,
        "throughput" => throughput(arg(1), num(2) as usize, num(3), num(4) as usize).await,
        "idle" => idle(arg(1), num(2) as usize, num(3)).await,
        _ => {
            eprintln!("usage: ws_bench echo ADDR | throughput URL SOCKETS SECS BYTES | idle URL SOCKETS HOLD_SECS");
            std::process::exit(2);
        }
    }
}
