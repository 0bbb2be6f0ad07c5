//! The listeners: accept loop with the gateway-wide connection cap, optional TLS ([`crate::run::tls`]),
//! HTTP/1.1 and HTTP/2 on one port (ALPN over TLS, prior knowledge in cleartext), and graceful
//! shutdown. HTTP/1.x, in cleartext or over TLS, is served by [`crate::http::server`]; hyper's
//! server takes HTTP/2 and protocol upgrades.
//!
//! [`start`] builds everything from a [`Config`] and returns a [`Running`] gateway whose
//! addresses are known (tests bind `127.0.0.1:0`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::stream::ClientStream;
use crate::pipeline::forward::Forwarder;
use crate::pipeline::proxy::{ClientConn, Gateway, Serving};
use crate::run::config::{Config, StoreConfig};
use crate::run::reload::Reloader;
use crate::telemetry::metrics::Metrics;
use crate::tenants::cluster::Coordinator;
use crate::tenants::directory::Directory;
use crate::tenants::metering::UsageWriter;
use crate::tenants::store::file::FileStore;
use crate::tenants::store::mongodb::MongoStore;
use crate::tenants::store::{StoreError, TenantStore};

static HTTP: HeaderValue = HeaderValue::from_static("http");
static HTTPS: HeaderValue = HeaderValue::from_static("https");

/// The gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be opened.
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The store could not even be set up (a database that is merely down is not this).
    #[error("cannot open the tenant store: {0}")]
    Store(#[from] StoreError),
    /// The listener's certificate or the backends' CA file cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The OTLP exporter cannot be set up.
    #[error("tracing: {0}")]
    Tracing(String),
}

/// A started gateway.
pub struct Running {
    /// Where the proxy listens.
    pub addr: SocketAddr,
    /// Where the admin endpoints listen, when enabled.
    pub admin_addr: Option<SocketAddr>,
    pub directory: Arc<Directory>,
    /// Config reloads (also what SIGHUP and `POST /reload` call).
    pub reloader: Arc<Reloader>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops accepting; in-flight requests get the grace period.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits until the gateway has stopped (after [`Running::shutdown`]).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// The store the config names, as the gateway uses it (the MongoDB store also creates its
/// indexes in the background).
pub async fn open_store(config: &Config) -> Result<Arc<dyn TenantStore>, StoreError> {
    Ok(match &config.store {
        StoreConfig::File {
            path,
            poll_interval,
        } => FileStore::open(path.clone(), *poll_interval),
        StoreConfig::MongoDb(settings) => {
            let store = MongoStore::connect(settings.clone()).await?;
            store.create_indexes_in_background();
            store
        }
    })
}

/// Binds the listeners and starts serving with the store the config names.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let store = open_store(&config).await?;
    start_with_store(config, store).await
}

/// Binds the listeners and starts serving with the given store.
pub async fn start_with_store(
    config: Config,
    store: Arc<dyn TenantStore>,
) -> Result<Running, StartError> {
    let listener = listen(config.listen).map_err(|source| StartError::Bind {
        what: "[server] listen",
        addr: config.listen,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        what: "[server] listen",
        addr: config.listen,
        source,
    })?;
    let admin = match config.admin_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|source| StartError::Bind {
                    what: "[admin] listen",
                    addr: a,
                    source,
                })?,
        ),
        None => None,
    };
    let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
    let acceptor = match &config.tls {
        Some(files) => Some(crate::run::tls::acceptor(files.clone()).map_err(StartError::Tls)?),
        None => None,
    };
    let connector =
        crate::run::tls::connector(config.forward.ca_file.as_deref()).map_err(StartError::Tls)?;

    let tracer =
        crate::telemetry::trace::Tracer::new(&config.tracing).map_err(StartError::Tracing)?;
    let directory = Directory::new(store, config.cache.clone());
    let forwarder = Forwarder::new(config.forward.clone(), connector);
    let cluster_traffic = crate::tenants::cluster::Traffic::default();
    let metrics = Arc::new(Metrics::new(
        &directory,
        &forwarder.upstream_response,
        config.metrics_top_tenants,
        &cluster_traffic,
    ));
    let gateway = Arc::new(Gateway {
        directory: directory.clone(),
        forwarder,
        policy: ArcSwap::from_pointee(config.policy()),
        metrics: metrics.clone(),
        tracer,
        scope: if config.cluster.shared {
            crate::pipeline::limit::Scope::Cluster
        } else {
            crate::pipeline::limit::Scope::Replica
        },
    });
    let reloader = Arc::new(Reloader::new(config.clone(), gateway.clone()));
    let (stop, stopped) = watch::channel(false);
    let limits = limits_in_background(&config, &directory, cluster_traffic).await?;
    if let Some(admin) = admin {
        tokio::spawn(crate::run::admin::serve(
            admin,
            directory.clone(),
            metrics,
            reloader.clone(),
            wait_for(stopped.clone()),
        ));
    }
    tracing::info!(%addr, tls = acceptor.is_some(), admin = ?admin_addr, store = %directory.store().describe(), "tenantgate listening");
    let task = tokio::spawn(async move {
        serve(listener, acceptor, gateway, config, wait_for(stopped)).await;
        // The requests have finished: the last usage and quota counts are flushed, and the
        // replica leaves the cluster.
        limits.finish().await;
    });
    Ok(Running {
        addr,
        admin_addr,
        directory,
        reloader,
        stop,
        task,
    })
}

/// Connections the kernel queues for the proxy listener before `accept` (capped by
/// `net.core.somaxconn`): an accept storm waits there rather than having its SYNs dropped and
/// retried a second later (tokio's default is 1,024; nginx's bench config uses 4,096).
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The background side of the limits: the [`Coordinator`] (shares, quota leases) and the
/// [`UsageWriter`].
struct Limits {
    stop: watch::Sender<bool>,
    tasks: [JoinHandle<()>; 2],
}

impl Limits {
    async fn finish(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Starts the [`Coordinator`] — with scope `cluster`, after a first heartbeat (bounded by the
/// member timeout) so that the first requests already get this replica's share of each tenant —
/// and the [`UsageWriter`].
async fn limits_in_background(
    config: &Config,
    directory: &Arc<Directory>,
    traffic: crate::tenants::cluster::Traffic,
) -> Result<Limits, StartError> {
    let registry = directory.slot_registry().clone();
    let every = config.cluster.flush;
    let (mut coordinator, usage) = match &config.store {
        StoreConfig::MongoDb(settings) => {
            let db = MongoStore::background_database(settings).await?;
            (
                Coordinator::mongo(
                    config.cluster.clone(),
                    registry.clone(),
                    &db,
                    traffic.clone(),
                ),
                UsageWriter::mongo(&config.usage, every, registry, db, traffic),
            )
        }
        StoreConfig::File { .. } => (
            Coordinator::local(config.cluster.clone(), registry.clone(), traffic.clone()),
            UsageWriter::file(&config.usage, every, registry, traffic),
        ),
    };
    coordinator.join().await;
    let (stop, stopped) = watch::channel(false);
    let tasks = [
        tokio::spawn(coordinator.run(wait_for(stopped.clone()))),
        tokio::spawn(usage.run(wait_for(stopped))),
    ];
    Ok(Limits { stop, tasks })
}

async fn wait_for(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// The accept loop. Returns once `shutdown` has fired and the connections have finished (or the
/// grace period ran out).
async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    gateway: Arc<Gateway>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The parsers' own limits sit above [server] max_header_bytes, so that heads between the two
    // get the gateway's JSON 431; beyond them the parser refuses without buffering more.
    let parser_limit = (config.max_header_bytes * 4).max(16 * 1024);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(parser_limit)
        .max_headers(1_000);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(parser_limit as u32);
    let builder = Arc::new(builder);
    // Every client connection, and the signal for them to finish their request and close.
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    let limits = crate::http::server::Limits {
        head_bytes: parser_limit,
        header_read_timeout: config.header_read_timeout,
    };
    let permits = Arc::new(Semaphore::new(config.max_connections));
    // Access lines of the requests served on this runtime (one worker) or logged by its tasks.
    let stop_flushing = CancellationToken::new();
    let flusher = tokio::spawn(flush_logs_until(stop_flushing.clone()));
    let mut workers = match Workers::start(config.workers) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the connection threads; serving on one");
            None
        }
    };
    tokio::pin!(shutdown);

    loop {
        // The gateway-wide cap: no accept while every permit is taken, so extra clients wait in
        // the kernel's queue instead of costing memory here.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let client = Client {
            peer,
            tls: tls.clone(),
            builder: builder.clone(),
            gateway: gateway.clone(),
            closing: closing.clone(),
            _permit: permit,
            limits,
        };
        let Some(workers) = &mut workers else {
            tokio::spawn(connections.track_future(client.serve(Accepted::Here(stream))));
            continue;
        };
        // Handed to the next connection thread: the socket leaves this runtime's poller and
        // joins that thread's.
        match stream.into_std() {
            Ok(stream) => {
                let serving = client.serve(Accepted::Moved(stream));
                workers.next().spawn(connections.track_future(serving));
            }
            Err(e) => tracing::warn!(%peer, error = %e, "cannot hand over a connection"),
        }
    }

    drop(listener);
    let grace = config.shutdown_grace;
    tracing::info!(
        grace_secs = grace.as_secs(),
        "shutting down: no new connections; finishing in-flight requests"
    );
    // HTTP connections finish their requests; upgraded ones (WebSockets, which would otherwise
    // hold the whole grace period) are closed now so their clients reconnect elsewhere.
    closing.cancel();
    connections.close();
    let requests = async {
        tokio::select! {
            _ = connections.wait() => tracing::info!("all connections finished"),
            _ = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing the remaining connections"),
        }
    };
    tokio::join!(requests, gateway.forwarder.close_tunnels(grace));
    let gw = gateway.clone();
    let _ = tokio::task::spawn_blocking(move || gw.tracer.flush()).await;
    drop(workers);
    stop_flushing.cancel();
    let _ = flusher.await;
}

/// An accepted socket: on the runtime that serves it, or handed over from the accepting one.
enum Accepted {
    Here(TcpStream),
    Moved(std::net::TcpStream),
}

/// One accepted client connection and what serving it needs.
struct Client {
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    gateway: Arc<Gateway>,
    /// Fires at shutdown: finish the request in flight, then close.
    closing: CancellationToken,
    /// Its place under `[server] max_connections`, given back when it closes.
    _permit: tokio::sync::OwnedSemaphorePermit,
    /// The head limits, and the header read timeout that also bounds a TLS handshake.
    limits: crate::http::server::Limits,
}

impl Client {
    /// Serves the connection until it closes: TLS first when configured (its handshake bounded
    /// like a request head), then HTTP/1.1 or HTTP/2, each request through the gateway.
    ///
    /// The task of a cleartext HTTP/1.1 connection is its state while it waits for a request and
    /// little more: the TLS and hyper paths are boxed, so their (much larger) futures are
    /// allocated only by the connections that take them (BENCHMARKS.md, "Cheap connections").
    // An `async move` block rather than an `async fn`, whose future would keep a second copy of
    // its arguments in every connection's task.
    #[allow(clippy::manual_async_fn)]
    fn serve(self, accepted: Accepted) -> impl Future<Output = ()> {
        async move {
            let stream = match accepted {
                Accepted::Here(stream) => stream,
                Accepted::Moved(stream) => match TcpStream::from_std(stream) {
                    Ok(stream) => stream,
                    Err(e) => {
                        let peer = self.peer;
                        return tracing::warn!(%peer, error = %e, "cannot hand over a connection");
                    }
                },
            };
            let (stream, conn) = match &self.tls {
                None => (
                    ClientStream::Plain(stream),
                    ClientConn::new(self.peer, &HTTP),
                ),
                Some(tls) => {
                    let handshake = Box::pin(self.handshake(tls, stream));
                    let Some(stream) = handshake.await else {
                        return;
                    };
                    let conn = ClientConn::new(self.peer, &HTTPS);
                    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                        let hyper = Box::pin(self.serve_with_hyper(stream, conn));
                        return hyper.await;
                    }
                    (ClientStream::Tls(stream), conn)
                }
            };
            let serving = Serving {
                gateway: &self.gateway,
                conn: &conn,
            };
            let served = crate::http::server::serve(stream, &serving, self.limits, &self.closing);
            let Some(handed_over) = served.await else {
                return;
            };
            let hyper = Box::pin(self.serve_with_hyper(handed_over, conn));
            hyper.await
        }
    }

    /// The TLS handshake, bounded like a request head.
    async fn handshake(
        &self,
        tls: &TlsAcceptor,
        stream: TcpStream,
    ) -> Option<Box<TlsStream<TcpStream>>> {
        let timeout = self.limits.header_read_timeout;
        match tokio::time::timeout(timeout, tls.accept(stream)).await {
            Ok(Ok(stream)) => Some(Box::new(stream)),
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                None
            }
        }
    }

    /// HTTP/1.1 (with upgrades) or HTTP/2 through hyper's server.
    async fn serve_with_hyper<IO>(&self, io: IO, conn: ClientConn)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (gateway, conn) = (self.gateway.clone(), Arc::new(conn));
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let (gw, conn) = (gateway.clone(), conn.clone());
            async move {
                let (mut parts, body) = req.into_parts();
                // hyper's parser is not the gateway's: the same request rules apply to what it read.
                let checked = crate::http::codec::check_parsed_request(
                    &parts.method,
                    &parts.uri,
                    parts.version,
                    &mut parts.headers,
                );
                if let Err(why) = checked {
                    tracing::debug!(reason = why.0, "refused a request head");
                    return Ok(gw.refuse(crate::pipeline::error::GatewayError::BadRequest));
                }
                let req =
                    http::Request::from_parts(parts, crate::http::inbound::Inbound::Hyper { body });
                Ok::<_, Infallible>(gw.handle(req, &conn).await)
            }
        });
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        let mut connection = std::pin::pin!(connection);
        let ended = tokio::select! {
            ended = connection.as_mut() => ended,
            _ = self.closing.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(e) = ended {
            tracing::debug!(peer = %self.peer, error = %e, "client connection ended with an error");
        }
    }
}

/// The connection threads: one single-threaded Tokio runtime per thread, connections dealt to
/// them in turn. Like nginx's worker processes: a connection, its requests and its backend
/// connections stay on one thread, with no work-stealing scheduler between them (measured:
/// BENCHMARKS.md, "16 cores, 4 workers each"). Dropping it stops the threads.
struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    /// Where the next connection goes.
    next: usize,
    /// Cancelled on drop: each thread's runtime then returns and drops its remaining tasks.
    stop: CancellationToken,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Workers {
    /// Stops the threads and waits for them, so their last access lines are handed over before
    /// the log writer stops.
    fn drop(&mut self) {
        self.stop.cancel();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Runs on each thread that serves requests until `stop` fires: hands the thread's access lines
/// to the log writer every [`crate::telemetry::logging::FLUSH_EVERY`].
async fn flush_logs_until(stop: CancellationToken) {
    let mut tick = tokio::time::interval(crate::telemetry::logging::FLUSH_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => crate::telemetry::logging::flush_thread(),
        }
    }
}

impl Workers {
    /// `None` for a single worker: connections are then served on the caller's runtime.
    fn start(count: usize) -> std::io::Result<Option<Workers>> {
        if count <= 1 {
            return Ok(None);
        }
        let stop = CancellationToken::new();
        let (mut handles, mut threads) = (Vec::with_capacity(count), Vec::with_capacity(count));
        for i in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("tenantgate-conn-{i}"))
                .spawn(move || runtime.block_on(flush_logs_until(stop)))?;
            threads.push(thread);
        }
        Ok(Some(Workers {
            handles,
            next: 0,
            stop,
            threads,
        }))
    }

    fn next(&mut self) -> &tokio::runtime::Handle {
        self.next = (self.next + 1) % self.handles.len();
        &self.handles[self.next]
    }
}

/// Waits for SIGTERM or SIGINT; returns its name.
pub async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            _ => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "ctrl-c"
    }
}
