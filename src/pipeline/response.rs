//! The body of every response the gateway sends: either the backend's streamed body, carrying
//! the tenant's concurrency slot, or a small body the gateway made itself. (Request bodies:
//! [`crate::http::inbound`].)
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
use crate::tenants::slots::SlotGuard;

pub use crate::http::inbound::BodyError;

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

impl Default for ProxyBody {
    fn default() -> Self {
        ProxyBody::empty()
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
        Poll::Ready(Some(Ok(frame))) => {
            if let (Some(data), Some(slot)) = (frame.data_ref(), slot.as_ref()) {
                slot.slots().usage.bytes_out(data.len() as u64);
            }
            body.is_end_stream()
        }
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
