//! The bodies the gateway hands to hyper. Responses: either the backend's streamed body,
//! carrying the tenant's concurrency slot, or a small body the gateway made itself. Requests:
//! the client's body on its way to the backend, counted against `[server] max_body_bytes`.
//!
//! The slot lives inside the body so that it is released exactly when the body is done: at its
//! last frame, or when hyper drops it because the client went away mid-stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::limit::SlotGuard;
use crate::pool::Lease;

pin_project! {
    /// Body of every response the gateway sends.
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        /// Streamed from the backend, frame by frame, without buffering. Polling it drives the
        /// backend connection (`lease`), which goes back to the pool after the last frame.
        Upstream { #[pin] body: Incoming, lease: Option<Lease>, slot: Option<SlotGuard> },
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

    /// The backend's body on its connection (pooled: `lease`), holding `slot` until its last
    /// frame has gone out.
    pub fn upstream(body: Incoming, lease: Option<Lease>, slot: Option<SlotGuard>) -> Self {
        // A body that is already complete (no content) frees its connection at once: hyper
        // may never poll such a body.
        let lease = match lease {
            Some(lease) if body.is_end_stream() => {
                lease.release();
                None
            }
            lease => lease,
        };
        ProxyBody::Upstream { body, lease, slot }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project() {
            ProxyBodyProj::Upstream {
                mut body,
                lease,
                slot,
            } => {
                if let Some(lease) = lease.as_mut() {
                    lease.poll_driver(cx);
                }
                let polled = body.as_mut().poll_frame(cx);
                // Finished: at the last frame (or an error), free the tenant's slot now rather
                // than when hyper gets round to dropping the body, and give a cleanly finished
                // connection back to the pool (a failed one is dropped with its lease).
                let finished = match &polled {
                    Poll::Ready(None) => Some(true),
                    Poll::Ready(Some(Ok(_))) if body.is_end_stream() => Some(true),
                    Poll::Ready(Some(Err(_))) => Some(false),
                    _ => None,
                };
                if let Some(reusable) = finished {
                    if let Some(lease) = lease.take().filter(|_| reusable) {
                        lease.release();
                    }
                    slot.take();
                }
                polled
            }
            ProxyBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
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
        inner: Incoming,
        limit: Option<u64>,
        seen: u64,
    }
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: Option<u64>) -> RequestBody {
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
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
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
