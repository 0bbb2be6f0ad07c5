//! TLS end to end, with certificates made at test time (rcgen; no key is committed): the
//! listener over HTTP/1.1 and HTTP/2 (ALPN), HTTP/2 streams counted against the tenant's cap,
//! certificate reload without dropping connections, start-up errors, and `https://` backends.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tenantgate::run::demo::{serve_backend_with, BackendStats};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

const A: &str = "https://client-a.com";

/// A test CA and the files it signs.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { ca, dir }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Writes a new leaf for `localhost` / `127.0.0.1` as `name.crt` + `name.key`; returns the
    /// paths and the certificate.
    fn leaf(&self, name: &str) -> (PathBuf, PathBuf, CertificateDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (crt, pem) = (
            self.dir.path().join(format!("{name}.crt")),
            self.dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&pem, key.serialize_pem()).unwrap();
        (crt, pem, cert.der().clone())
    }

    fn acceptor(&self, name: &str) -> tokio_rustls::TlsAcceptor {
        let (crt, key, _) = self.leaf(name);
        tenantgate::run::tls::acceptor(tenantgate::run::tls::CertFiles {
            cert: crt,
            key,
            reload_interval: Duration::from_secs(3600),
        })
        .unwrap()
    }

    /// A TLS connection to `addr` trusting only this CA, offering `alpn`.
    async fn connect(&self, addr: std::net::SocketAddr, alpn: &[u8]) -> TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let tcp = TcpStream::connect(addr).await.unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }
}

fn tls_section(crt: &std::path::Path, key: &std::path::Path) -> String {
    format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nreload_interval_secs = 1\n",
        crt.display().to_string(),
        key.display().to_string()
    )
}

fn request(uri: &str, key: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(uri)
        .header("host", "localhost")
        .header("x-tenant-id", key)
        .header("origin", A)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn h1(stream: TlsStream<TcpStream>) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn body_json(resp: http::Response<hyper::body::Incoming>) -> (StatusCode, serde_json::Value) {
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

#[tokio::test]
async fn the_listener_speaks_tls_with_http1_and_h2_and_counts_h2_streams_against_the_cap() {
    let pki = Pki::new();
    let (crt, key, _) = pki.leaf("gateway");
    let gw = Gateway::start(&[tenant("tnt_a", &[A], 5)], &tls_section(&crt, &key)).await;
    let addr = gw.running.addr;

    let stream = pki.connect(addr, b"http/1.1").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut c = h1(stream).await;
    let (status, echo) = body_json(c.send_request(request("/echo", "tnt_a")).await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https");

    // HTTP/2 over TLS: ten concurrent streams on one connection, cap 5.
    let stream = pki.connect(addr, b"h2").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let uri = format!("https://localhost:{}/slow?ms=500", addr.port());
    let statuses = futures::future::join_all((0..10).map(|_| {
        let mut s = sender.clone();
        let req = request(&uri, "tnt_a");
        async move { s.send_request(req).await.unwrap().status().as_u16() }
    }))
    .await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((ok, refused), (5, 5), "{statuses:?}");

    // Plain HTTP on the TLS port gets no HTTP answer at all.
    let plain = client()
        .request(tenant_request(
            "GET",
            &gw.url("/echo"),
            "tnt_a",
            A,
            Full::new(Bytes::new()),
        ))
        .await;
    assert!(plain.is_err(), "{plain:?}");
}

#[tokio::test]
async fn certificate_files_are_reloaded_without_dropping_connections() {
    let pki = Pki::new();
    let (crt, key, first) = pki.leaf("gateway");
    let gw = Gateway::start(&[tenant("tnt_a", &[A], 5)], &tls_section(&crt, &key)).await;
    let addr = gw.running.addr;
    let peer_cert =
        |s: &TlsStream<TcpStream>| s.get_ref().1.peer_certificates().unwrap()[0].clone();

    let stream = pki.connect(addr, b"http/1.1").await;
    assert_eq!(peer_cert(&stream), first);
    let mut open = h1(stream).await;
    assert_eq!(
        open.send_request(request("/echo", "tnt_a"))
            .await
            .unwrap()
            .status(),
        200
    );

    // Renewal: a new pair written over the files (key first, then certificate, as tools do).
    let (new_crt, new_key, second) = pki.leaf("renewed");
    std::fs::copy(&new_key, &key).unwrap();
    std::fs::copy(&new_crt, &crt).unwrap();
    eventually(10, || async {
        peer_cert(&pki.connect(addr, b"http/1.1").await) == second
    })
    .await;
    // The connection opened before the renewal still works.
    assert_eq!(
        open.send_request(request("/echo", "tnt_a"))
            .await
            .unwrap()
            .status(),
        200
    );

    // A broken file is refused and the current certificate kept.
    std::fs::write(&crt, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(peer_cert(&pki.connect(addr, b"http/1.1").await), second);
}

#[tokio::test]
async fn start_up_refuses_a_missing_or_mismatched_key_with_a_clear_error() {
    let pki = Pki::new();
    let (crt, _, _) = pki.leaf("gateway");
    let (_, other_key, _) = pki.leaf("other");
    let backend = Backend::start().await;
    let tenants = pki.dir.path().join("tenants.json");
    write_json(&tenants, &serde_json::json!([]));
    let start = |key: PathBuf| {
        let config = config(&backend.url(), &tenants, &tls_section(&crt, &key));
        async move {
            tenantgate::run::server::start(config)
                .await
                .err()
                .unwrap()
                .to_string()
        }
    };
    let missing = pki.dir.path().join("missing.key");
    let err = start(missing.clone()).await;
    assert!(err.contains(&missing.display().to_string()), "{err}");
    let err = start(other_key.clone()).await;
    assert!(err.contains("does not match"), "{err}");

    // `check` says the same, as a config error.
    let cfg = pki.dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\npath = {:?}\n{}",
            tenants.display().to_string(),
            tls_section(&crt, &other_key)
        ),
    )
    .unwrap();
    let (code, _, err) = tenantgate(&["check", "--config", cfg.to_str().unwrap()], None);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("does not match"), "{err}");
}

#[tokio::test]
async fn https_backends_by_default_and_per_tenant_verified_against_the_configured_ca() {
    let pki = Pki::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stats = Arc::new(BackendStats::default());
    tokio::spawn(serve_backend_with(
        listener,
        stats.clone(),
        Some(pki.acceptor("backend")),
    ));
    let https = format!("https://localhost:{port}");
    let ca = format!("{:?}", pki.ca_file().display().to_string());

    // The default upstream over TLS.
    let gw = Gateway::start(
        &[tenant("tnt_a", &[A], 5)],
        &format!("[upstream]\nurl = {https:?}\nca_file = {ca}\n"),
    )
    .await;
    let c = client();
    for _ in 0..3 {
        let r = as_tenant(&c, &gw.url("/echo"), "tnt_a", A).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["headers"]["x-tenant-id"][0], "tnt_a");
    }
    assert_eq!(
        stats.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "kept alive"
    );

    // A tenant's own https upstream, next to a plain default one.
    let mut own = tenant("tnt_b", &[A], 5);
    own["upstream"] = serde_json::Value::String(https.clone());
    let gw = Gateway::start(&[own.clone()], &format!("[upstream]\nca_file = {ca}\n")).await;
    let r = as_tenant(&c, &gw.url("/echo"), "tnt_b", A).await;
    assert_eq!(r.status, 200);
    assert_eq!(gw.backend.requests(), 0, "not the default backend");

    // A backend whose certificate the gateway cannot verify: 502.
    let gw = Gateway::start(&[own], "").await;
    let r = as_tenant(&c, &gw.url("/echo"), "tnt_b", A).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code()),
        (502, "upstream_unavailable".into())
    );
}

/// The smuggling request the attack suite found (`Connection` naming `Content-Length`), over
/// TLS (read by the gateway's own HTTP/1.1 server since issue 19, by hyper's before): the
/// backend receives one request, its body whole.
#[tokio::test]
async fn over_tls_connection_cannot_remove_the_content_length_either() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let (crt, key, _) = pki.leaf("gateway");
    let recorder = Recorder::start().await;
    let mut t = tenant("tnt_a", &[A], 5);
    t["upstream"] = serde_json::json!(recorder.url());
    let gw = Gateway::start(&[t], &tls_section(&crt, &key)).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a.example\r\nX-Tenant-ID: tnt_forged\r\n\r\n";
    let attack = format!(
        "POST / HTTP/1.1\r\nHost: a.example\r\nX-Tenant-ID: tnt_a\r\nOrigin: {A}\r\nConnection: Content-Length, close\r\nContent-Length: 68\r\n\r\n{smuggled}"
    );
    let mut stream = pki.connect(gw.running.addr, b"http/1.1").await;
    stream.write_all(attack.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = recorder.requests();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(&seen[0].body[..], smuggled.as_bytes());
    assert_eq!(seen[0].headers["content-length"], "68");
}

/// Reads one response with a `Content-Length` body off `stream`: (head, body).
async fn read_response(stream: &mut TlsStream<TcpStream>) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_string();
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|n| n.parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            while got.len() < end + 4 + length {
                let mut chunk = [0; 4096];
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed inside a body: {head}");
                got.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&got[end + 4..end + 4 + length]).to_string();
            return (head, body);
        }
        let mut chunk = [0; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&chunk[..n]);
    }
}

/// HTTP/1.1 over TLS is served by the gateway's own server (hyper's takes HTTP/2 and upgrades):
/// requests one after another on one connection, a streamed response whose chunks arrive as the
/// backend sends them, an `Expect: 100-continue` upload, and a WebSocket handed over to hyper.
#[tokio::test]
async fn http1_over_tls_keeps_alive_streams_uploads_and_upgrades() {
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let pki = Pki::new();
    let (crt, key, _) = pki.leaf("gateway");
    let gw = Gateway::start(&[tenant("tnt_a", &[A], 5)], &tls_section(&crt, &key)).await;
    let addr = gw.running.addr;
    let head = |path: &str, extra: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nX-Tenant-ID: tnt_a\r\nOrigin: {A}\r\n{extra}\r\n")
    };

    let mut s = pki.connect(addr, b"http/1.1").await;
    for i in 0..3 {
        s.write_all(head(&format!("/echo?n={i}"), "").as_bytes())
            .await
            .unwrap();
        let (status, body) = read_response(&mut s).await;
        assert!(status.starts_with("HTTP/1.1 200 OK"), "{status}");
        let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https");
        assert_eq!(echo["path"], "/echo", "{echo}");
    }

    // A streamed response: the first chunk is read before the backend has sent the last.
    let started = std::time::Instant::now();
    s.write_all(head("/stream?chunks=3&interval_ms=400", "").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut first_chunk_at = None;
    while !got.ends_with(b"0\r\n\r\n") {
        let mut chunk = [0; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "{:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
        if first_chunk_at.is_none() && got.windows(7).any(|w| w == b"chunk 0") {
            first_chunk_at = Some(started.elapsed());
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("transfer-encoding: chunked") && text.contains("chunk 2"),
        "{text}"
    );
    assert!(
        first_chunk_at.unwrap() < Duration::from_millis(700),
        "{first_chunk_at:?}"
    );

    // `Expect: 100-continue`: the interim answer comes through TLS before the body is sent.
    let upload = format!(
        "POST /upload HTTP/1.1\r\nHost: localhost\r\nX-Tenant-ID: tnt_a\r\nOrigin: {A}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    );
    s.write_all(upload.as_bytes()).await.unwrap();
    let mut interim = [0; 25];
    s.read_exact(&mut interim).await.unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.unwrap();
    let (status, body) = read_response(&mut s).await;
    assert!(status.starts_with("HTTP/1.1 200 OK"), "{status}");
    assert_eq!(body, r#"{"received_bytes":5}"#);

    // A WebSocket over TLS: the gateway's server hands the upgrade to hyper's.
    let tls = pki.connect(addr, b"http/1.1").await;
    let mut req = format!("wss://localhost:{}/ws", addr.port())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("origin", A.parse().unwrap());
    req.headers_mut()
        .insert("x-tenant-id", "tnt_a".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("over tls")).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed, Message::text("over tls"));
}
