//! The end-to-end harness: a sample backend and a gateway on `127.0.0.1:0`, a tenants file in a
//! temporary directory, and small HTTP client helpers.
#![allow(dead_code)]

pub mod mongo;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tenantgate::run::config::Config;
use tenantgate::run::demo::{serve_backend, BackendStats};
use tenantgate::run::server::{start_with_store, Running};
use tenantgate::tenants::store::file::FileStore;
use tenantgate::tenants::store::TenantStore;
use tokio::net::TcpListener;

/// A running sample backend.
pub struct Backend {
    pub addr: SocketAddr,
    pub stats: Arc<BackendStats>,
}

impl Backend {
    pub async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(BackendStats::default());
        tokio::spawn(serve_backend(listener, stats.clone()));
        Backend { addr, stats }
    }

    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A tenant document with the given key, origins and cap.
pub fn tenant(key: &str, origins: &[&str], max: u64) -> Value {
    json!({
        "apiKey": key,
        "allowedOrigins": origins,
        "providerConfig": {
            "connectionString": format!("endpoint=https://{key}.example/;accesskey=SECRET-{key}"),
            "resources": {"endpoint": format!("https://{key}.communication.azure.com"), "region": "us-east-1"}
        },
        "isActive": true,
        "maxConcurrentConnections": max,
    })
}

/// A gateway in front of a backend, with its tenants file.
pub struct Gateway {
    pub running: Running,
    pub backend: Backend,
    pub tenants_path: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts a backend and a gateway with these tenants; `extra` is appended to the config
    /// (whole sections, e.g. "[tenancy]\nrequire_origin = false").
    pub async fn start(tenants: &[Value], extra: &str) -> Gateway {
        Gateway::start_with(tenants, extra, |store| store).await
    }

    /// Like [`Gateway::start`], letting the test wrap the file store (to count lookups).
    pub async fn start_with(
        tenants: &[Value],
        extra: &str,
        wrap: impl FnOnce(Arc<FileStore>) -> Arc<dyn TenantStore>,
    ) -> Gateway {
        let backend = Backend::start().await;
        let dir = tempfile::tempdir().unwrap();
        let tenants_path = dir.path().join("tenants.json");
        write_json(&tenants_path, &Value::Array(tenants.to_vec()));
        let config = config(&backend.url(), &tenants_path, extra);
        let store = FileStore::open(tenants_path.clone(), Duration::from_millis(50));
        let running = start_with_store(config, wrap(store)).await.unwrap();
        Gateway {
            running,
            backend,
            tenants_path,
            dir,
        }
    }

    /// Like [`Gateway::start`], serving client connections on `workers` threads of their own.
    pub async fn start_on_threads(tenants: &[Value], workers: usize) -> Gateway {
        let backend = Backend::start().await;
        let dir = tempfile::tempdir().unwrap();
        let tenants_path = dir.path().join("tenants.json");
        write_json(&tenants_path, &Value::Array(tenants.to_vec()));
        let mut config = config(&backend.url(), &tenants_path, "");
        config.workers = workers;
        let store = FileStore::open(tenants_path.clone(), Duration::from_millis(50));
        let running = start_with_store(config, store).await.unwrap();
        Gateway {
            running,
            backend,
            tenants_path,
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.admin_addr.unwrap())
    }

    pub fn write_tenants(&self, tenants: &[Value]) {
        write_json(&self.tenants_path, &Value::Array(tenants.to_vec()));
    }

    /// Slots the tenant holds right now.
    pub async fn in_flight(&self, key: &str) -> u32 {
        match self.running.directory.resolve(key).await.unwrap() {
            tenantgate::tenants::directory::Resolved::Tenant(t) => t.slots.in_flight(),
            other => panic!("{key}: {other:?}"),
        }
    }
}

/// The gateway config used by the tests: ephemeral ports, fast polling; `extra` (TOML) adds or
/// overrides keys.
pub fn config(upstream: &str, tenants: &std::path::Path, extra: &str) -> Config {
    let base = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_secs = 5\n\
         [upstream]\nurl = \"{upstream}\"\nresponse_timeout_ms = 5000\n\
         [store]\nkind = \"file\"\npath = {:?}\npoll_interval_ms = 50\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        tenants.display().to_string()
    );
    let mut table: toml::Table = base.parse().unwrap();
    let extra: toml::Table = extra.parse().unwrap();
    for (section, values) in extra {
        let target = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(Default::default()));
        for (k, v) in values.as_table().unwrap() {
            target.as_table_mut().unwrap().insert(k.clone(), v.clone());
        }
    }
    Config::parse(&table.to_string(), "test config").unwrap()
}

/// Writes JSON atomically (as editors do: write then rename).
pub fn write_json(path: &std::path::Path, v: &Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(v).unwrap()).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// A response read to the end.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The `code` of a gateway error body, checking the body's shape on the way.
    pub fn error_code(&self) -> String {
        let v = self.json();
        assert_eq!(self.headers["content-type"], "application/json");
        assert!(v["error"]["message"].is_string(), "{v}");
        assert_eq!(
            v["error"]["requestId"].as_str().unwrap(),
            self.headers["x-request-id"].to_str().unwrap()
        );
        v["error"]["code"].as_str().unwrap().to_string()
    }

    /// Every value the backend saw for a request header (from the sample backend's echo).
    pub fn seen(&self, name: &str) -> Vec<String> {
        self.json()["headers"][name]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn h2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

/// Sends a request with the given headers and reads the whole response.
pub async fn send(client: &HttpClient, method: &str, url: &str, headers: &[(&str, &str)]) -> Reply {
    try_send(client, method, url, headers).await.unwrap()
}

/// [`send`], with a failed exchange (refused connection, connection closed mid-response) as
/// an error.
pub async fn try_send(
    client: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send(&client(), "GET", url, headers).await
}

/// Polls `check` until it is true or `secs` have passed.
pub async fn eventually<F, Fut>(secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `GET url` as tenant `key` from `origin`, on client `c` (reuse one client to reuse its
/// connection).
pub async fn as_tenant(c: &HttpClient, url: &str, key: &str, origin: &str) -> Reply {
    send(c, "GET", url, &[("x-tenant-id", key), ("origin", origin)]).await
}

/// A client for any request body type (streamed uploads, empty bodies).
pub fn client_for<B>() -> Client<HttpConnector, B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A request body produced while it is sent: `chunks` chunks of `size` bytes, handed over one
/// at a time (never all in memory).
pub fn streamed_body(
    chunks: usize,
    size: usize,
) -> http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        for _ in 0..chunks {
            let frame = http_body::Frame::data(Bytes::from(vec![7u8; size]));
            if tx.send(Ok(frame)).await.is_err() {
                return;
            }
        }
    });
    http_body_util::StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
        .boxed()
}

/// A request as tenant `key` from `origin` with `body`.
pub fn tenant_request<B>(method: &str, url: &str, key: &str, origin: &str, body: B) -> Request<B> {
    Request::builder()
        .method(method)
        .uri(url)
        .header("x-tenant-id", key)
        .header("origin", origin)
        .body(body)
        .unwrap()
}

/// Runs the `tenantgate` binary with `args`, feeding `stdin`; returns exit code, stdout, stderr.
pub fn tenantgate(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_tenantgate"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Reads the child's stdout lines on a thread.
pub fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let out = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

pub fn wait_line(
    rx: &std::sync::mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    needle: &str,
) -> String {
    // Access lines from different connection threads may come out in any order (each thread
    // hands its lines over in blocks): a line read while waiting for another counts too.
    if let Some(line) = seen.iter().find(|l| l.contains(needle)) {
        return line.clone();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no line with {needle:?}; saw:\n{}", seen.join("\n")));
        seen.push(line.clone());
        if line.contains(needle) {
            return line;
        }
    }
}

/// Writes `body` as `gateway.toml` in `dir`.
pub fn write_config(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, body).unwrap();
    path
}

/// The config text of a gateway on ephemeral ports in front of `upstream`, with the tenants
/// file `tenants` (polled every 50 ms).
pub fn file_config(upstream: &str, tenants: &std::path::Path) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{upstream}\"\n\
         [store]\nkind = \"file\"\npath = {:?}\npoll_interval_ms = 50\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        tenants.display().to_string()
    )
}

/// The process, its stdout lines, the lines read so far, and the proxy address.
pub type RunningBinary = (
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
    Vec<String>,
    String,
);

/// Starts the real binary as `--log-format json run --config cfg` and waits for it to listen.
pub fn run_binary_json(cfg: &std::path::Path) -> RunningBinary {
    run_binary_json_with_env(cfg, &[])
}

/// [`run_binary_json`] with these environment variables set.
pub fn run_binary_json_with_env(cfg: &std::path::Path, env: &[(&str, &str)]) -> RunningBinary {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tenantgate"))
        .args([
            "--log-format",
            "json",
            "run",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    let listening: Value =
        serde_json::from_str(&wait_line(&rx, &mut seen, "tenantgate listening")).unwrap();
    let addr = listening["addr"].as_str().unwrap().to_string();
    (child, rx, seen, addr)
}

/// One request as a strict HTTP/1.1 server (hyper's) read it off the wire.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A backend that records every request it receives, as hyper's HTTP/1.1 server parses it, and
/// answers each with `200 ok`. For framing tests: every request the backend sees must be one
/// the client sent and the gateway checked.
pub struct Recorder {
    pub addr: SocketAddr,
    pub seen: Arc<std::sync::Mutex<Vec<Recorded>>>,
    pub connections: Arc<std::sync::atomic::AtomicU64>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        use hyper::service::service_fn;
        use hyper_util::rt::TokioIo;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (log, count) = (seen.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let log = log.clone();
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await?.to_bytes();
                        log.lock().unwrap().push(Recorded {
                            method: parts.method.to_string(),
                            target: parts.uri.to_string(),
                            headers: parts.headers,
                            body,
                        });
                        Ok::<_, hyper::Error>(
                            hyper::Response::builder()
                                .header("content-length", "2")
                                .body(Full::new(Bytes::from_static(b"ok")))
                                .unwrap(),
                        )
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Recorder {
            addr,
            seen,
            connections,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }
}
