//! A client's request body on its way in: read off a client connection by the gateway's
//! HTTP/1.1 server ([`ClientBody`]) or handed over by hyper's (HTTP/2, TLS, upgrades), as one
//! [`Inbound`] type; on its way to the backend it is counted against `[server] max_body_bytes`
//! ([`RequestBody`]).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio_util::io::poll_read_buf;

use crate::http::codec::{self, decode, make_room, Decoded, Framing};
use crate::http::stream::ReadHalf;

/// What a streamed body can fail with.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Buffer allocated for reads from a client.
pub(super) const READ_CHUNK: usize = 8 * 1024;

/// The connection's reading side: socket, buffered bytes, and where the current request's body
/// stands. Locked by the connection between requests and by the body while it is read.
pub(super) struct Reader {
    pub(super) io: ReadHalf,
    pub(super) buf: BytesMut,
    pub(super) body: BodyState,
    pub(super) expect: Expect,
}

/// What is left of the current request's body on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyState {
    /// Sized or chunked ([`Framing::Empty`] once read to its end).
    Framed(Framing),
    /// The body failed mid-way; the connection cannot be reused.
    Broken,
}

impl BodyState {
    /// Nothing left: the next bytes are the next request.
    pub(super) const DONE: BodyState = BodyState::Framed(Framing::Empty);
}

/// `Expect: 100-continue`, from the head to the interim answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    No,
    /// The client waits for `100 Continue` before it sends the body.
    Waiting,
    /// The body was asked for: the connection writes `100 Continue` now.
    Wanted,
}

/// A request body read from the client connection as the backend takes it.
pub struct ClientBody {
    pub(super) reader: Arc<Mutex<Reader>>,
    pub(super) done: bool,
}

impl ClientBody {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut guard = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let r = &mut *guard;
        if r.expect != Expect::No {
            // The client sends the body once it hears `100 Continue`. The connection writes it
            // when it sees `Wanted`, right after this poll: the body is read inside the
            // request's future, which the connection's task polls ([`Connection::run`]).
            r.expect = Expect::Wanted;
            return Poll::Pending;
        }
        loop {
            let BodyState::Framed(framing) = &mut r.body else {
                self.done = true;
                return Poll::Ready(Some(Err(Box::new(ClientBodyError::Closed))));
            };
            match decode(&mut r.buf, framing) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(Decoded::End) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => {}
                Err(e) => {
                    r.body = BodyState::Broken;
                    return Poll::Ready(Some(Err(Box::new(ClientBodyError::Invalid(e)))));
                }
            }
            make_room(&mut r.buf, READ_CHUNK);
            match poll_read_buf(Pin::new(&mut r.io), cx, &mut r.buf) {
                Poll::Ready(Ok(0)) => {
                    r.body = BodyState::Broken;
                    return Poll::Ready(Some(Err(Box::new(ClientBodyError::Closed))));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    r.body = BodyState::Broken;
                    return Poll::Ready(Some(Err(Box::new(ClientBodyError::Io(e)))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Why a client's request body failed after its head was accepted: the client's fault, which
/// the forward stage answers with `400 bad_request` (not a backend failure).
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("invalid request body: {0}")]
    Invalid(codec::Invalid),
    #[error("the client closed the connection inside the request body")]
    Closed,
    #[error("reading the request body failed: {0}")]
    Io(std::io::Error),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.get_mut()
            .poll_data(cx)
            .map(|d| d.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.reader.lock().map(|r| r.body) {
            Ok(BodyState::Framed(Framing::Length(n))) if !self.done => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

pin_project! {
    /// A client's request body as a server hands it over: read from the connection by the
    /// gateway's HTTP/1.1 server ([`crate::http::server`]) or by hyper's (HTTP/2, TLS, upgrades).
    #[project = InboundProj]
    pub enum Inbound {
        /// No body (none declared, or `Content-Length: 0`).
        Empty,
        Http1 { #[pin] body: ClientBody },
        Hyper { #[pin] body: Incoming },
    }
}

impl Body for Inbound {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project() {
            InboundProj::Empty => Poll::Ready(None),
            InboundProj::Http1 { body } => body.poll_frame(cx),
            InboundProj::Hyper { body } => body.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Inbound::Empty => true,
            Inbound::Http1 { body } => body.is_end_stream(),
            Inbound::Hyper { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inbound::Empty => SizeHint::with_exact(0),
            Inbound::Http1 { body } => body.size_hint(),
            Inbound::Hyper { body } => body.size_hint(),
        }
    }
}

/// Raised by [`RequestBody`] when a request body passes `[server] max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {0} bytes")]
pub struct BodyLimitExceeded(pub u64);

/// Counts the bytes of request bodies (a tenant's usage).
pub trait ByteMeter: Send + Sync {
    fn add(&self, bytes: u64);
}

pin_project! {
    /// A client's request body on its way to the backend, counted as it streams (never
    /// buffered) and cut with [`BodyLimitExceeded`] once it passes the limit.
    pub struct RequestBody {
        #[pin]
        inner: Inbound,
        limit: Option<u64>,
        seen: u64,
        meter: Option<Arc<dyn ByteMeter>>,
    }
}

impl RequestBody {
    pub fn new(
        inner: Inbound,
        limit: Option<u64>,
        meter: Option<Arc<dyn ByteMeter>>,
    ) -> RequestBody {
        RequestBody {
            inner,
            limit,
            seen: 0,
            meter,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    *this.seen += n;
                    if let Some(meter) = this.meter {
                        meter.add(n);
                    }
                    if let Some(limit) = *this.limit {
                        if *this.seen > limit {
                            return Poll::Ready(Some(Err(Box::new(BodyLimitExceeded(limit)))));
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
