//! The whole server path: bytes from a client → the gateway (its HTTP/1.1 server, the request
//! pipeline, its backend client and pool) → a backend. Invariant: every request the backend
//! receives is one the gateway parsed, checked and answered, with the framing it wrote:
//! - the backend's bytes parse strictly (the gateway's own codec) on every backend connection;
//! - every backend request carries exactly one `X-Tenant-ID` (the only tenant's key) and one
//!   `X-Request-Id` (so it passed identify and was logged);
//! - every backend answer (numbered) reaches the client exactly once: a request smuggled past
//!   the gateway would have an answer that no client request asked for.
//!
//! The gateway and the backend run in this process on loopback sockets (127.0.0.1:0): the
//! gateway's HTTP/1.1 server is built on a TCP connection's split halves, so the client and
//! backend ends are real sockets rather than in-memory pipes.
#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tenantgate::http::codec::{self, Decoded};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the backend saw since the last input.
#[derive(Default)]
struct Seen {
    answers: Vec<u64>,
    violations: Vec<String>,
}

struct World {
    runtime: tokio::runtime::Runtime,
    gateway: std::net::SocketAddr,
    seen: Arc<Mutex<Seen>>,
    _running: tenantgate::run::server::Running,
}

static NEXT_ANSWER: AtomicU64 = AtomicU64::new(1);

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (gateway, running) = runtime.block_on(async {
            let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let backend_addr = backend.local_addr().unwrap();
            tokio::spawn(serve_backend(backend, seen.clone()));
            let dir = std::env::temp_dir().join(format!("tenantgate-fuzz-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let tenants = dir.join("tenants.json");
            std::fs::write(
                &tenants,
                r#"[{"apiKey":"tnt_a","allowedOrigins":["https://a.example"],"isActive":true,"maxConcurrentConnections":1000}]"#,
            )
            .unwrap();
            let config = format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nheader_read_timeout_secs = 2\n\
                 [upstream]\nurl = \"http://{backend_addr}\"\nresponse_timeout_ms = 2000\n\
                 [store]\nkind = \"file\"\npath = {:?}\n\
                 [tenancy]\nrequire_origin = false\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\n",
                tenants.display().to_string()
            );
            let config = tenantgate::run::config::Config::parse(&config, "fuzz").unwrap();
            let store = tenantgate::tenants::store::file::FileStore::open(tenants, Duration::from_secs(3600));
            let running = tenantgate::run::server::start_with_store(config, store).await.unwrap();
            (running.addr, running)
        });
        World { runtime, gateway, seen, _running: running }
    })
}

/// A backend that parses what it receives with the strict codec and answers every request with
/// a numbered `200`.
async fn serve_backend(listener: TcpListener, seen: Arc<Mutex<Seen>>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else { continue };
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::new();
            loop {
                let head = loop {
                    match codec::parse_request_head(&mut buf, 1000, 0) {
                        Ok(Some(head)) => break head,
                        Ok(None) => {}
                        Err(e) => {
                            let text = String::from_utf8_lossy(&buf).into_owned();
                            seen.lock().unwrap().violations.push(format!("backend got {e:?}: {text:?}"));
                            return;
                        }
                    }
                    if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                        return; // closed between requests, or inside a head the gateway gave up on
                    }
                };
                let mut problems = Vec::new();
                let tenants: Vec<_> = head.headers.get_all("x-tenant-id").iter().collect();
                if tenants.len() != 1 || tenants[0] != "tnt_a" {
                    problems.push(format!("x-tenant-id {tenants:?}"));
                }
                if head.headers.get_all("x-request-id").iter().count() != 1 {
                    problems.push("not one x-request-id".to_string());
                }
                let mut framing = head.framing;
                loop {
                    match codec::decode(&mut buf, &mut framing) {
                        Ok(Decoded::Data(_)) => {}
                        Ok(Decoded::End) => break,
                        Ok(Decoded::More) => {
                            if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                                return; // the gateway dropped an unfinished body: allowed
                            }
                        }
                        Err(e) => {
                            problems.push(format!("body: {e}"));
                            break;
                        }
                    }
                }
                let n = NEXT_ANSWER.fetch_add(1, Ordering::SeqCst);
                {
                    let mut seen = seen.lock().unwrap();
                    seen.answers.push(n);
                    seen.violations.extend(problems.iter().map(|p| format!("{p} in {:?}", head.raw)));
                }
                let answer = format!("HTTP/1.1 200 OK\r\nx-answer: n{n}n\r\ncontent-length: 2\r\n\r\nok");
                if s.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    *w.seen.lock().unwrap() = Seen::default();
    let client_saw = w.runtime.block_on(async {
        let mut s = TcpStream::connect(w.gateway).await.unwrap();
        let _ = s.write_all(data).await;
        let _ = s.shutdown().await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        // Let a backend connection that is still reading a request body see its end.
        tokio::time::sleep(Duration::from_millis(1)).await;
        String::from_utf8_lossy(&out).into_owned()
    });
    let seen = std::mem::take(&mut *w.seen.lock().unwrap());
    assert!(seen.violations.is_empty(), "{:#?}\ninput: {:?}", seen.violations, String::from_utf8_lossy(data));
    for n in seen.answers {
        let marker = format!("x-answer: n{n}n\r\n");
        assert_eq!(
            client_saw.matches(&marker).count(),
            1,
            "backend answer {n} reached the client {} times\ninput: {:?}\nclient saw: {client_saw:?}",
            client_saw.matches(&marker).count(),
            String::from_utf8_lossy(data)
        );
    }
});
