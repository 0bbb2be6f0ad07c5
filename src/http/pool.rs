//! Keep-alive connections to the backends, used inside the request's own task.
//!
//! An idle connection is a socket and its buffers; a request takes one (most recently used
//! first) or opens one, runs its exchange on it ([`crate::http::client`]), and the response body,
//! once read to its end, gives it back ([`Lease::release`]). No task per connection and no
//! channels: the request's task does the reading and writing. A body dropped half-way drops its
//! connection, so a connection is never reused mid-message.
//!
//! Idle connections are kept per backend (scheme and authority), at most `max_idle_per_host`,
//! each for at most `idle_timeout`. One the backend closed while it sat idle is noticed without
//! a system call (its socket became readable) and discarded; if one closes just as a request is
//! written and nothing comes back, a bodiless request with an idempotent method is sent again
//! on a fresh connection, anything else gets its 502.
//!
//! `https://` backends get the same treatment over rustls (ALPN `http/1.1`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use thread_local::ThreadLocal;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::http::client::{
    self, BackendBody, Conn, ExchangeError, Home, Lease, Outgoing, PoolKey, UpstreamIo,
};
use crate::http::inbound::RequestBody;

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
    Exchange(#[from] ExchangeError),
    /// From hyper's client, which carries upgrades.
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// Where a request goes: the backend's authority lower-cased (the pool key, with the scheme), the
/// `host:port` to connect to, and for `https://` the name its certificate must carry.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub authority: &'a Arc<str>,
    pub addr: &'a str,
    pub tls: Option<&'a ServerName<'static>>,
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
    /// Each connection thread's idle connections: a socket stays with the runtime that polls
    /// it, and no thread waits on another's lock (one was taken twice per request before).
    idle: ThreadLocal<RefCell<IdleConns>>,
    settings: PoolSettings,
    tls: TlsConnector,
}

/// The pool of backend connections, shared by every tenant.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

type IdleConns = HashMap<PoolKey, Vec<Idle>, foldhash::fast::RandomState>;

impl Home for Shared {
    fn put_back(&self, key: PoolKey, conn: Conn) {
        let max = self.settings.max_idle_per_host;
        if max == 0 {
            return;
        }
        let mut idle = self.idle.get_or_default().borrow_mut();
        let stack = idle.entry(key).or_default();
        if stack.len() >= max {
            stack.remove(0);
        }
        stack.push(Idle {
            conn,
            since: Instant::now(),
        });
    }
}

impl Pool {
    pub fn new(settings: PoolSettings, tls: TlsConnector) -> Pool {
        Pool {
            shared: Arc::new(Shared {
                idle: ThreadLocal::new(),
                settings,
                tls,
            }),
        }
    }

    fn checkout(&self, key: &PoolKey, cx: &mut Context<'_>) -> Option<Conn> {
        let mut idle = self.shared.idle.get_or_default().borrow_mut();
        let stack = idle.get_mut(key)?;
        while let Some(c) = stack.pop() {
            if c.since.elapsed() < self.shared.settings.idle_timeout && !c.conn.is_stale(cx) {
                return Some(c.conn);
            }
        }
        None
    }

    async fn connect(&self, target: Target<'_>) -> Result<UpstreamIo, SendError> {
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
        tracing::debug!(upstream = addr, "opened upstream connection");
        Ok(io)
    }

    /// Sends an upgrade request on a connection of its own (never pooled: after `101` it
    /// belongs to the tunnel), driven by a task of its own so the upgrade can complete.
    pub async fn send_upgrade(
        &self,
        target: Target<'_>,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let io = Box::pin(self.connect(target)).await?;
        let (mut sender, driver) = http1::Builder::new().handshake(TokioIo::new(io)).await?;
        tokio::spawn(async move {
            if let Err(e) = driver.with_upgrades().await {
                tracing::debug!(error = %e, "upgraded upstream connection ended with an error");
            }
        });
        Ok(sender.send_request(req).await?)
    }

    /// Sends the request to `target` and returns the response head; its body streams from the
    /// connection, which it gives back to the pool when read to the end.
    pub async fn send(
        &self,
        target: Target<'_>,
        Outgoing {
            head,
            method,
            mut body,
            framing,
        }: Outgoing,
    ) -> Result<Response<BackendBody>, SendError> {
        let key = (target.tls.is_some(), target.authority.clone());
        let bodiless = body.is_none();
        loop {
            let (conn, reused) = match poll_fn(|cx| Poll::Ready(self.checkout(&key, cx))).await {
                Some(c) => (c, true),
                // Boxed: connecting is the rare path, and keeping its state out of this future
                // keeps the per-request future small.
                None => (Conn::new(Box::pin(self.connect(target)).await?), false),
            };
            let lease = |conn| Lease::new(conn, key.clone(), self.shared.clone());
            match client::exchange(conn, &head, &method, (body.take(), framing), lease).await {
                Ok(resp) => return Ok(resp),
                // The backend closed a kept connection as the request went out: nothing was
                // processed, and a request without a body can be written again.
                Err(failed)
                    if reused && failed.nothing_received && bodiless && is_idempotent(&method) =>
                {
                    tracing::debug!(error = %failed.error, "kept upstream connection was closed; retrying on a new one");
                }
                Err(failed) => return Err(SendError::Exchange(failed.error)),
            }
        }
    }
}

/// RFC 9110 §9.2.2: methods a client may repeat without changing the outcome.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}
