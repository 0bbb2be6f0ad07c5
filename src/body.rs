//! The bodies of the request path. Responses: either the backend's streamed body, carrying the
//! tenant's concurrency slot, or a small body the gateway made itself. Requests: the client's
//! body as the server read it ([`Inbound`]), on its way to the backend counted against
//! `[server] max_body_bytes` ([`RequestBody`]).
//!
//! The slot lives inside the body so that it is released exactly when the body is done: at its
//! last frame, or when hyper drops it because the client went away mid-stream. A body that is
//! complete from the start (204, `HEAD`) frees it when hyper drops the body, which it does
//! without polling it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::http::client::BackendBody;
use crate::http::server::ClientBody;
use crate::limit::SlotGuard;

/// What a streamed response body can fail with.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// Body of every response the gateway sends.
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        /// Streamed from the backend, frame by frame, without buffering; its connection goes
        /// back to the pool after the last frame.
        Backend { #[pin] body: BackendBody, slot: Option<SlotGuard> },
        /// A backend's answer through hyper's client (an upgrade the backend declined).
        Upgrade { #[pin] body: Incoming, slot: Option<SlotGuard> },
        /// Made by the gateway (errors, preflights); sent in one frame.
        Full { data: Option<Bytes> },
    }
}

impl ProxyBody {
    /// A body of the given bytes.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        ProxyBody::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        ProxyBody::Full { data: None }
    }

    /// The backend's body, holding `slot` until its last frame has gone out.
    pub fn backend(body: BackendBody, slot: SlotGuard) -> Self {
        ProxyBody::Backend {
            body,
            slot: Some(slot),
        }
    }

    /// The answer to an upgrade request that the backend declined, holding `slot` likewise.
    pub fn declined_upgrade(body: Incoming, slot: SlotGuard) -> Self {
        ProxyBody::Upgrade {
            body,
            slot: Some(slot),
        }
    }
}

/// Polls a streamed body and frees the tenant's slot at its last frame (or an error) rather
/// than when hyper gets round to dropping the body.
fn poll_holding_slot<B>(
    mut body: Pin<&mut B>,
    slot: &mut Option<SlotGuard>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BodyError>,
{
    let polled = body.as_mut().poll_frame(cx);
    let finished = match &polled {
        Poll::Ready(None) | Poll::Ready(Some(Err(_))) => true,
        Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
        Poll::Pending => false,
    };
    if finished {
        slot.take();
    }
    polled.map(|f| f.map(|r| r.map_err(Into::into)))
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project() {
            ProxyBodyProj::Backend { body, slot } => poll_holding_slot(body, slot, cx),
            ProxyBodyProj::Upgrade { body, slot } => poll_holding_slot(body, slot, cx),
            ProxyBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Backend { body, .. } => body.is_end_stream(),
            ProxyBody::Upgrade { body, .. } => body.is_end_stream(),
            ProxyBody::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Backend { body, .. } => body.size_hint(),
            ProxyBody::Upgrade { body, .. } => body.size_hint(),
            ProxyBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
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

pin_project! {
    /// A client's request body on its way to the backend, counted as it streams (never
    /// buffered) and cut with [`BodyLimitExceeded`] once it passes the limit.
    pub struct RequestBody {
        #[pin]
        inner: Inbound,
        limit: Option<u64>,
        seen: u64,
    }
}

impl RequestBody {
    pub fn new(inner: Inbound, limit: Option<u64>) -> RequestBody {
        RequestBody {
            inner,
            limit,
            seen: 0,
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
                if let (Some(limit), Some(data)) = (*this.limit, frame.data_ref()) {
                    *this.seen += data.len() as u64;
                    if *this.seen > limit {
                        return Poll::Ready(Some(Err(Box::new(BodyLimitExceeded(limit)))));
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
