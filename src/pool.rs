//! Keep-alive connections to the backends, driven inside the request's own task.
//!
//! Each upstream connection is a hyper HTTP/1.1 client connection (`SendRequest` + its
//! `Connection` future). Instead of spawning a task per connection (what hyper-util's pooled
//! client does), the connection future is polled by whoever uses it: the request while it waits
//! for the response head, then the response body while it streams to the client. This removes
//! the cross-task hand-offs of every request and, measured on the bench workload, most of the
//! CPU the gateway spent on the upstream side.
//!
//! A connection whose response body has been read to the end goes back to an idle stack per
//! backend (most recently used first, at most `max_idle_per_host`, dropped after
//! `idle_timeout`). A body dropped half-way drops its connection, so a connection is never
//! reused mid-message. A reused connection that turns out to be closed is replaced by a fresh
//! one, transparently, as long as the request has not been sent on it.
//!
//! `https://` backends get the same treatment over rustls (ALPN `http/1.1`); the idle stacks are
//! kept per scheme and authority.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::body::RequestBody;

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    #[error("TLS with {addr}: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// Where a request goes: the backend's authority (the pool key, with the scheme), the
/// `host:port` to connect to, and for `https://` the name its certificate must carry.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub authority: &'a Authority,
    pub addr: &'a str,
    pub tls: Option<&'a ServerName<'static>>,
}

/// The byte stream to a backend: plain TCP, or TLS over it.
enum UpstreamIo {
    Plain(TcpStream),
    /// Boxed: the TLS state is large and rare next to plain connections.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The future that runs one HTTP/1.1 connection to a backend.
type Driver = Connection<TokioIo<UpstreamIo>, RequestBody>;

struct Conn {
    sender: SendRequest<RequestBody>,
    /// `None` once the connection has finished. Boxed: the connection state is large and a
    /// `Conn` moves several times per request (pool, request, lease, response body); the box is
    /// allocated once per connection, not per request.
    driver: Option<Pin<Box<Driver>>>,
}

impl Conn {
    /// Drives the connection; false once it has closed.
    fn poll_driver(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(driver) = self.driver.as_mut() {
            if let Poll::Ready(result) = driver.as_mut().poll(cx) {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                }
                self.driver = None;
            }
        }
        self.driver.is_some()
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_host: usize,
}

struct Shared {
    idle: Mutex<HashMap<PoolKey, Vec<Idle>, foldhash::fast::RandomState>>,
    settings: PoolSettings,
    tls: TlsConnector,
}

/// The pool of backend connections, shared by every tenant.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

/// A connection lent to one request and then to its response body. Must be polled
/// ([`Lease::poll_driver`]) while the body is read; [`Lease::release`] returns it to the pool.
pub struct Lease {
    conn: Conn,
    key: PoolKey,
    shared: Arc<Shared>,
}

/// Idle connections are kept per backend: TLS or not, and authority.
type PoolKey = (bool, Authority);

impl Lease {
    /// Drives the connection so the response body makes progress.
    pub fn poll_driver(&mut self, cx: &mut Context<'_>) {
        self.conn.poll_driver(cx);
    }

    /// Gives the connection back for reuse (call once the response body is complete).
    pub fn release(self) {
        if self.conn.driver.is_none() || self.conn.sender.is_closed() {
            return;
        }
        let max = self.shared.settings.max_idle_per_host;
        if max == 0 {
            return;
        }
        let mut idle = self.shared.idle.lock().unwrap_or_else(|p| p.into_inner());
        let stack = idle.entry(self.key).or_default();
        if stack.len() >= max {
            stack.remove(0);
        }
        stack.push(Idle {
            conn: self.conn,
            since: Instant::now(),
        });
    }
}

impl Pool {
    pub fn new(settings: PoolSettings, tls: TlsConnector) -> Pool {
        Pool {
            shared: Arc::new(Shared {
                idle: Mutex::new(HashMap::default()),
                settings,
                tls,
            }),
        }
    }

    fn checkout(&self, key: &PoolKey) -> Option<Conn> {
        let mut idle = self.shared.idle.lock().unwrap_or_else(|p| p.into_inner());
        let stack = idle.get_mut(key)?;
        while let Some(c) = stack.pop() {
            if c.since.elapsed() < self.shared.settings.idle_timeout && !c.conn.sender.is_closed() {
                return Some(c.conn);
            }
        }
        None
    }

    async fn connect(&self, target: Target<'_>) -> Result<Conn, SendError> {
        let addr = target.addr;
        let timeout = self.shared.settings.connect_timeout;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(SendError::ConnectTimeout(addr.to_string())),
            Ok(Err(source)) => {
                return Err(SendError::Connect {
                    addr: addr.to_string(),
                    source,
                })
            }
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let io = match target.tls {
            None => UpstreamIo::Plain(stream),
            Some(name) => {
                let handshake = self.shared.tls.connect(name.clone(), stream);
                match tokio::time::timeout(timeout, handshake).await {
                    Err(_) => return Err(SendError::ConnectTimeout(addr.to_string())),
                    Ok(Err(source)) => {
                        return Err(SendError::Tls {
                            addr: addr.to_string(),
                            source,
                        })
                    }
                    Ok(Ok(tls)) => UpstreamIo::Tls(Box::new(tls)),
                }
            }
        };
        let (sender, driver) = http1::Builder::new().handshake(TokioIo::new(io)).await?;
        tracing::debug!(upstream = addr, "opened upstream connection");
        Ok(Conn {
            sender,
            driver: Some(Box::pin(driver)),
        })
    }

    /// Sends an upgrade request on a connection of its own (never pooled: after `101` it
    /// belongs to the tunnel), driven by a task of its own so the upgrade can complete.
    pub async fn send_upgrade(
        &self,
        target: Target<'_>,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let conn = Box::pin(self.connect(target)).await?;
        let (mut sender, driver) = (conn.sender, conn.driver);
        if let Some(driver) = driver {
            let driver = Pin::into_inner(driver);
            tokio::spawn(async move {
                if let Err(e) = driver.with_upgrades().await {
                    tracing::debug!(error = %e, "upgraded upstream connection ended with an error");
                }
            });
        }
        Ok(sender.send_request(req).await?)
    }

    /// Sends `req` (origin-form URI, `Host` set) to `target` and returns the response head
    /// with the connection that carries its body.
    pub async fn send(
        &self,
        target: Target<'_>,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let key = (target.tls.is_some(), target.authority.clone());
        loop {
            let (mut conn, reused) = match self.checkout(&key) {
                Some(c) => (c, true),
                // Boxed: connecting is the rare path, and keeping its state out of this future
                // keeps the per-request future small (it is moved on every request).
                None => (Box::pin(self.connect(target)).await?, false),
            };
            // Ready for a request? (A reused connection may have been closed by the backend.)
            let ready = poll_fn(|cx| {
                if !conn.poll_driver(cx) {
                    return Poll::Ready(false);
                }
                conn.sender.poll_ready(cx).map(|r| r.is_ok())
            })
            .await;
            if !ready && reused {
                continue;
            }
            // (A fresh connection that is not ready makes the send below fail with the reason.)
            let mut response = std::pin::pin!(conn.sender.try_send_request(req));
            let result = poll_fn(|cx| {
                conn.poll_driver(cx);
                response.as_mut().poll(cx)
            })
            .await;
            match result {
                Ok(resp) => {
                    return Ok((
                        resp,
                        Lease {
                            conn,
                            key,
                            shared: self.shared.clone(),
                        },
                    ));
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: safe to try again on another connection.
                    Some(back) if reused => req = back,
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }
}
