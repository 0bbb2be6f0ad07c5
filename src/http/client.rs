//! One request/response exchange with a backend over HTTP/1.1, on a connection from
//! [`crate::http::pool`]: the request head written in one buffer (the body follows, chunked when its
//! length is unknown), the response head parsed with `httparse`, and the response body framed by
//! `Content-Length`, chunked coding or the end of the connection (RFC 9112 §6.3).
//!
//! Why not hyper's client here: a hyper client connection hands each request, response and body
//! chunk through channels to a dispatcher state machine; on the bench workload that was about a
//! third of the gateway's user-space instructions per request (BENCHMARKS.md). This is the same
//! work without the hand-offs. Protocol upgrades (WebSocket), which are rare and long-lived,
//! still go through hyper's client ([`crate::http::pool::Pool::send_upgrade`]).
//!
//! The rules kept strict, because a pooled connection must never be reused mid-message: a
//! response is reusable only when it was framed by length or chunks, said neither `Connection:
//! close` nor HTTP/1.0, was read to its end, and left no extra bytes behind. Anything the parser
//! does not accept (a malformed head, conflicting `Content-Length`s, a bad chunk size) fails the
//! exchange with a 502 and drops the connection.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{Method, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::io::poll_read_buf;

use crate::http::codec::{
    self, decode, make_room, BodyEncoder, BodyFraming, Coding, Decoded, FillError, Framing,
    HeadError, ResponseHead,
};
use crate::http::inbound::RequestBody;

/// Largest response head accepted from a backend.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header lines accepted in a response head.
const MAX_HEADERS: usize = 128;
/// Request body bytes gathered into one write.
const WRITE_BATCH: usize = 64 * 1024;
/// Buffer allocated for reads from a backend.
const READ_CHUNK: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("backend closed the connection before answering")]
    Closed,
    #[error("invalid response from the backend: {0}")]
    Protocol(&'static str),
    /// The client's request body failed (or passed the body limit) while it streamed.
    #[error("request body: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The byte stream to a backend: plain TCP, or TLS over it.
pub(crate) enum UpstreamIo {
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

/// A connection to a backend with its buffers (kept with it, so their memory is reused).
pub struct Conn {
    pub(crate) io: UpstreamIo,
    /// Bytes read and not yet used: empty between exchanges on a healthy connection.
    pub(crate) read_buf: BytesMut,
    pub(crate) write_buf: Vec<u8>,
}

impl Conn {
    pub(crate) fn new(io: UpstreamIo) -> Conn {
        Conn {
            io,
            read_buf: BytesMut::new(),
            write_buf: Vec::new(),
        }
    }

    /// Whether an idle connection has become readable: the backend closed it (or sent something
    /// unasked for). Costs no system call: the runtime already knows the socket's readiness.
    pub(crate) fn is_stale(&self, cx: &mut Context<'_>) -> bool {
        let tcp = match &self.io {
            UpstreamIo::Plain(s) => s,
            UpstreamIo::Tls(s) => s.get_ref().0,
        };
        tcp.poll_read_ready(cx).is_ready()
    }
}

/// A connection lent to one request and then to its response body; [`Lease::release`] gives
/// it back to where it came from (the pool).
pub struct Lease {
    conn: Conn,
    key: PoolKey,
    home: Arc<dyn Home>,
}

/// Where a lent connection goes back to once its exchange is complete.
pub trait Home: Send + Sync {
    fn put_back(&self, key: PoolKey, conn: Conn);
}

/// Idle connections are kept per backend: TLS or not, and authority (lower-cased once, when the
/// backend URL was read: `http::uri::Authority` hashes byte by byte, twice per request here).
pub type PoolKey = (bool, Arc<str>);

impl Lease {
    pub fn new(conn: Conn, key: PoolKey, home: Arc<dyn Home>) -> Lease {
        Lease { conn, key, home }
    }

    pub(crate) fn conn(&self) -> &Conn {
        &self.conn
    }

    pub(crate) fn conn_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }

    /// Gives the connection back for reuse (call once the response body is complete).
    pub fn release(self) {
        self.home.put_back(self.key, self.conn);
    }
}

/// A failed exchange, and whether the request may be sent again on another connection: nothing
/// of a response arrived and the request had no body to replay.
pub struct Failed {
    pub error: ExchangeError,
    pub nothing_received: bool,
}

/// A request ready to go: its head as bytes (see [`codec::request_line`],
/// [`codec::header_line`], [`codec::end_request_head`]) and its body, if it has one.
pub struct Outgoing {
    pub head: Vec<u8>,
    pub method: Method,
    pub body: Option<RequestBody>,
    /// How the body is framed: the line the head ends with ([`codec::end_request_head`]).
    pub framing: BodyFraming,
}

/// Writes the request on `conn` and reads the response head. The body keeps streaming while the
/// answer is awaited, so a backend that answers before the upload ends (a 413, say) is heard;
/// such a connection is not reused. `lease` wraps the connection for the response body.
pub async fn exchange(
    mut conn: Conn,
    head: &[u8],
    method: &Method,
    (body, framing): (Option<RequestBody>, BodyFraming),
    lease: impl FnOnce(Conn) -> Lease,
) -> Result<Response<BackendBody>, Failed> {
    let mut out = std::mem::take(&mut conn.write_buf);
    out.clear();
    out.extend_from_slice(head);
    let mut writer = Writer {
        out,
        written: 0,
        body: body.map(Box::pin),
        encoder: BodyEncoder::new(match framing {
            BodyFraming::Chunked => Coding::Chunked,
            BodyFraming::Length(n) => Coding::Length(n),
            BodyFraming::None => Coding::Length(0),
        }),
        done: false,
        failed: None,
    };
    let is_head = method == Method::HEAD;
    let parsed = poll_fn(|cx| {
        if let Err(e) = writer.poll_write(cx, &mut conn) {
            return Poll::Ready(Err(e));
        }
        poll_head(cx, &mut conn, is_head, writer.failed.take())
    })
    .await;
    let unfinished = !writer.done;
    conn.write_buf = writer.out;
    let received = !conn.read_buf.is_empty();
    let parsed = parsed.map_err(|error| Failed {
        nothing_received: !received
            && matches!(error, ExchangeError::Io(_) | ExchangeError::Closed),
        error,
    })?;
    let mut resp = Response::new(BackendBody::new(
        lease(conn),
        parsed.framing,
        // A request body that was not sent to its end leaves the connection mid-message.
        parsed.reusable && !unfinished,
    ));
    *resp.status_mut() = parsed.status;
    *resp.headers_mut() = parsed.headers;
    Ok(resp)
}

/// The sending half of an exchange: the head, then the body's frames as they come.
struct Writer {
    out: Vec<u8>,
    written: usize,
    body: Option<Pin<Box<RequestBody>>>,
    /// Writes the body as the head announced it, and holds it to that.
    encoder: BodyEncoder,
    done: bool,
    /// A write error, reported only if no response arrives (a backend that answered early and
    /// closed makes later writes fail; its answer wins).
    failed: Option<std::io::Error>,
}

impl Writer {
    /// Makes what progress it can; `Err` only for a failed request body.
    fn poll_write(&mut self, cx: &mut Context<'_>, conn: &mut Conn) -> Result<(), ExchangeError> {
        while !self.done {
            self.fill(cx)?;
            if self.written < self.out.len() {
                match Pin::new(&mut conn.io).poll_write(cx, &self.out[self.written..]) {
                    Poll::Ready(Ok(0)) => {
                        return self.fail(std::io::ErrorKind::WriteZero.into());
                    }
                    Poll::Ready(Ok(n)) => self.written += n,
                    Poll::Ready(Err(e)) => return self.fail(e),
                    Poll::Pending => return Ok(()),
                }
                if self.written == self.out.len() {
                    self.out.clear();
                    self.written = 0;
                }
                continue;
            }
            if self.body.is_some() {
                return Ok(()); // waiting for the client's next frame
            }
            match Pin::new(&mut conn.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.done = true,
                Poll::Ready(Err(e)) => return self.fail(e),
                Poll::Pending => return Ok(()),
            }
        }
        Ok(())
    }

    /// Appends the body frames that are ready, up to one write's worth.
    fn fill(&mut self, cx: &mut Context<'_>) -> Result<(), ExchangeError> {
        let Some(body) = self.body.as_mut() else {
            return Ok(());
        };
        match self
            .encoder
            .poll_fill(cx, body.as_mut(), &mut self.out, WRITE_BATCH)
        {
            Poll::Ready(Ok(true)) => self.body = None,
            Poll::Ready(Ok(false)) | Poll::Pending => {}
            Poll::Ready(Err(FillError::Body(e))) => return Err(ExchangeError::Body(e)),
            Poll::Ready(Err(FillError::Framing(e))) => {
                return Err(ExchangeError::Body(Box::new(e)))
            }
        }
        Ok(())
    }

    fn fail(&mut self, e: std::io::Error) -> Result<(), ExchangeError> {
        self.failed = Some(e);
        self.body = None;
        self.done = true;
        Ok(())
    }
}

/// Reads until a whole response head (after any `1xx` interim answers) is in.
fn poll_head(
    cx: &mut Context<'_>,
    conn: &mut Conn,
    is_head: bool,
    mut write_error: Option<std::io::Error>,
) -> Poll<Result<ResponseHead, ExchangeError>> {
    loop {
        // Room for what the gateway adds (CORS, request id) without growing the map.
        let parsed = codec::parse_response_head(&mut conn.read_buf, is_head, MAX_HEADERS, 6);
        if let Some(head) = parsed.map_err(|e| match e {
            HeadError::TooManyHeaders => ExchangeError::Protocol("too many header lines"),
            HeadError::Invalid(why) => ExchangeError::Protocol(why.0),
        })? {
            return Poll::Ready(Ok(head));
        }
        if conn.read_buf.len() >= MAX_HEAD_BYTES {
            return Poll::Ready(Err(ExchangeError::Protocol("response head too large")));
        }
        make_room(&mut conn.read_buf, READ_CHUNK);
        match poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.read_buf) {
            Poll::Ready(Ok(0)) => {
                return Poll::Ready(Err(match write_error.take() {
                    Some(e) => ExchangeError::Io(e),
                    None if conn.read_buf.is_empty() => ExchangeError::Closed,
                    None => ExchangeError::Protocol("connection closed inside the response head"),
                }))
            }
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(ExchangeError::Io(e))),
            Poll::Pending => {
                // A write failure with nothing to read is the connection's end.
                return match write_error {
                    Some(e) => Poll::Ready(Err(ExchangeError::Io(e))),
                    None => Poll::Pending,
                };
            }
        }
    }
}

/// A backend's response body, read from its connection as the client takes it. When it has
/// been read to its end on a reusable connection, the connection goes back to the pool; if it is
/// dropped before that, so is the connection.
pub struct BackendBody {
    lease: Option<Lease>,
    framing: Framing,
    reusable: bool,
}

impl BackendBody {
    fn new(lease: Lease, framing: Framing, reusable: bool) -> BackendBody {
        let mut body = BackendBody {
            lease: Some(lease),
            framing,
            reusable,
        };
        if framing == Framing::Empty {
            body.finish();
        }
        body
    }

    /// The body is complete: give a reusable connection back.
    fn finish(&mut self) {
        self.framing = Framing::Empty;
        if let Some(lease) = self.lease.take() {
            if self.reusable && lease.conn().read_buf.is_empty() {
                lease.release();
            }
        }
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, ExchangeError>>> {
        loop {
            let Some(lease) = self.lease.as_mut() else {
                return Poll::Ready(None);
            };
            let conn = lease.conn_mut();
            match decode(&mut conn.read_buf, &mut self.framing) {
                Ok(Decoded::Data(data)) => {
                    if self.framing == Framing::Empty {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Ok(Decoded::End) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => {}
                Err(e) => {
                    self.lease = None;
                    return Poll::Ready(Some(Err(ExchangeError::Protocol(e.0))));
                }
            }
            make_room(&mut conn.read_buf, READ_CHUNK);
            match poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.read_buf) {
                Poll::Ready(Ok(0)) if self.framing == Framing::UntilClose => {
                    self.reusable = false;
                    self.finish();
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    self.lease = None;
                    return Poll::Ready(Some(Err(ExchangeError::Protocol(
                        "connection closed before the end of the body",
                    ))));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    self.lease = None;
                    return Poll::Ready(Some(Err(ExchangeError::Io(e))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Body for BackendBody {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        self.get_mut()
            .poll_data(cx)
            .map(|d| d.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Empty
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
