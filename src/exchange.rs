//! One request/response exchange with a backend over HTTP/1.1, on a connection from
//! [`crate::pool`]: the request head written in one buffer (the body follows, chunked when its
//! length is unknown), the response head parsed with `httparse`, and the response body framed by
//! `Content-Length`, chunked coding or the end of the connection (RFC 9112 §6.3).
//!
//! Why not hyper's client here: a hyper client connection hands each request, response and body
//! chunk through channels to a dispatcher state machine; on the bench workload that was about a
//! third of the gateway's user-space instructions per request (BENCHMARKS.md). This is the same
//! work without the hand-offs. Protocol upgrades (WebSocket), which are rare and long-lived,
//! still go through hyper's client ([`crate::pool::Pool::send_upgrade`]).
//!
//! The rules kept strict, because a pooled connection must never be reused mid-message: a
//! response is reusable only when it was framed by length or chunks, said neither `Connection:
//! close` nor HTTP/1.0, was read to its end, and left no extra bytes behind. Anything the parser
//! does not accept (a malformed head, conflicting `Content-Length`s, a bad chunk size) fails the
//! exchange with a 502 and drops the connection.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio_util::io::poll_read_buf;

use crate::body::RequestBody;
use crate::pool::{Conn, Lease};

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

/// A failed exchange, and whether the request may be sent again on another connection: nothing
/// of a response arrived and the request had no body to replay.
pub struct Failed {
    pub error: ExchangeError,
    pub nothing_received: bool,
}

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked(Chunk),
    /// Until the backend closes the connection (never reusable).
    UntilClose,
}

/// Where the chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

/// A request ready to go: its head as bytes (see [`request_line`], [`header_line`],
/// [`end_head`]) and its body, if it has one.
pub struct Outgoing {
    pub head: Vec<u8>,
    pub method: Method,
    pub body: Option<RequestBody>,
    /// The body goes in chunked coding (its length is unknown).
    pub chunked: bool,
}

/// `METHOD target HTTP/1.1`.
pub fn request_line(out: &mut Vec<u8>, method: &Method, target: &str) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// `name: value`.
pub fn header_line(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// How a forwarded request's body is framed: decided from the body the gateway parsed, never
/// from the client's header lines (which `Connection` could have named away).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body and no length line.
    None,
    /// `Content-Length: n` (`0` when the client declared an empty body).
    Length(u64),
    /// `Transfer-Encoding: chunked` (the length is unknown).
    Chunked,
}

/// The end of the head, with the framing line the gateway writes itself.
pub fn end_head(out: &mut Vec<u8>, framing: BodyFraming) {
    match framing {
        BodyFraming::None => {}
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the request on `conn` and reads the response head. The body keeps streaming while the
/// answer is awaited, so a backend that answers before the upload ends (a 413, say) is heard;
/// such a connection is not reused. `lease` wraps the connection for the response body.
pub async fn exchange(
    mut conn: Conn,
    head: &[u8],
    method: &Method,
    (body, chunked): (Option<RequestBody>, bool),
    lease: impl FnOnce(Conn) -> Lease,
) -> Result<Response<BackendBody>, Failed> {
    let mut out = std::mem::take(&mut conn.write_buf);
    out.clear();
    out.extend_from_slice(head);
    let mut writer = Writer {
        out,
        written: 0,
        body: body.map(Box::pin),
        chunked,
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
        parsed.keep_alive && !unfinished,
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
    chunked: bool,
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
        while let Some(body) = self.body.as_mut() {
            if self.out.len() >= WRITE_BATCH {
                return Ok(());
            }
            match body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers from the client are not forwarded.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    if self.chunked {
                        let mut size = [0u8; 16];
                        let hex = hex_len(data.len(), &mut size);
                        self.out.extend_from_slice(hex);
                        self.out.extend_from_slice(b"\r\n");
                    }
                    self.out.extend_from_slice(&data);
                    if self.chunked {
                        self.out.extend_from_slice(b"\r\n");
                    }
                }
                Poll::Ready(Some(Err(e))) => return Err(ExchangeError::Body(e)),
                Poll::Ready(None) => {
                    if self.chunked {
                        self.out.extend_from_slice(b"0\r\n\r\n");
                    }
                    self.body = None;
                }
                Poll::Pending => return Ok(()),
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

/// `n` in lowercase hex, written into `buf`.
pub(crate) fn hex_len(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Reads until a whole response head (after any `1xx` interim answers) is in.
fn poll_head(
    cx: &mut Context<'_>,
    conn: &mut Conn,
    is_head: bool,
    mut write_error: Option<std::io::Error>,
) -> Poll<Result<Head, ExchangeError>> {
    loop {
        if let Some(head) = parse_head(&mut conn.read_buf, is_head)? {
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

/// Room for the next read, allocated `chunk` bytes at a time. The buffer keeps the unused tail
/// of its allocation after heads and bodies are split off it, so most reads need no new
/// allocation; an empty buffer goes back to the front of its allocation once nothing else holds
/// a part of it, so that one message after another lands in the same, still cached, memory
/// rather than walking through the whole allocation.
pub(crate) fn make_room(buf: &mut BytesMut, chunk: usize) {
    if buf.is_empty() {
        // Asking for more than the tail holds moves an unshared buffer to its front (and does
        // nothing to a shared one).
        let _ = buf.try_reclaim(buf.capacity() + 1);
    }
    if buf.capacity() - buf.len() < chunk / 8 {
        buf.reserve(chunk);
    }
}

/// Parses a response head at the start of `buf` and removes it from there; `None` until the
/// head is complete. `1xx` interim responses (`100 Continue`, `103 Early Hints`) are skipped.
fn parse_head(buf: &mut BytesMut, is_head: bool) -> Result<Option<Head>, ExchangeError> {
    loop {
        let mut slots = [std::mem::MaybeUninit::uninit(); MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        let len = match config.parse_response_with_uninit_headers(&mut resp, buf, &mut slots) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ExchangeError::Protocol("too many header lines"))
            }
            Err(_) => return Err(ExchangeError::Protocol("malformed response head")),
        };
        let code = resp.code.unwrap_or(0);
        if (100..200).contains(&code) {
            if code == 101 {
                return Err(ExchangeError::Protocol(
                    "101 Switching Protocols without an upgrade",
                ));
            }
            buf.advance(len);
            continue;
        }
        let status =
            StatusCode::from_u16(code).map_err(|_| ExchangeError::Protocol("bad status code"))?;
        let http11 = resp.version == Some(1);
        let mut stack = [Span::default(); STACK_SPANS];
        let mut heap = Vec::new();
        let spans = Span::record(resp.headers, buf, &mut stack, &mut heap);
        let bytes = buf.split_to(len).freeze();
        // Room for what the gateway adds (CORS, request id) without growing the map.
        let (mut headers, seen) = header_map(&bytes, spans, 6).map_err(ExchangeError::Protocol)?;
        let (framing, mut keep_alive) = framing(&headers, seen, status, is_head)?;
        if matches!(framing, Framing::Chunked(_)) && seen.any(Seen::CONTENT_LENGTH) {
            // Chunked overrides a `Content-Length` sent with it, which must not travel on
            // (RFC 9112 §6.3).
            headers.remove(header::CONTENT_LENGTH);
        }
        keep_alive &= http11
            && !(seen.any(Seen::CONNECTION) && has_token(&headers, header::CONNECTION, "close"));
        return Ok(Some(Head {
            status,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// Header lines recorded without a heap allocation (see [`Span::record`]).
pub(crate) const STACK_SPANS: usize = 64;

/// Where a header line sits in its head: the name's and the value's offsets and lengths. Heads
/// are parsed in place, then split off their read buffer; the header map is built from the
/// split-off bytes, its values sharing them.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Span {
    name_at: u32,
    name_len: u32,
    value_at: u32,
    value_len: u32,
}

impl Span {
    /// The places of `headers` (parsed from `head`), in `stack` when they fit.
    pub(crate) fn record<'s>(
        headers: &[httparse::Header<'_>],
        head: &[u8],
        stack: &'s mut [Span; STACK_SPANS],
        heap: &'s mut Vec<Span>,
    ) -> &'s [Span] {
        let spans: &mut [Span] = if headers.len() <= STACK_SPANS {
            &mut stack[..headers.len()]
        } else {
            heap.resize(headers.len(), Span::default());
            heap
        };
        let base = head.as_ptr() as usize;
        for (span, h) in spans.iter_mut().zip(headers) {
            *span = Span {
                name_at: (h.name.as_ptr() as usize - base) as u32,
                name_len: h.name.len() as u32,
                value_at: (h.value.as_ptr() as usize - base) as u32,
                value_len: h.value.len() as u32,
            };
        }
        spans
    }
}

/// The header map of a head split off its buffer, with room for `extra` more lines, and which
/// of the headers that steer framing and connection handling it has.
///
/// Not inlined: one copy serves request and response heads.
#[inline(never)]
pub(crate) fn header_map(
    head: &Bytes,
    spans: &[Span],
    extra: usize,
) -> Result<(HeaderMap, Seen), &'static str> {
    let mut headers = spare_map();
    headers.reserve(spans.len() + extra);
    let mut seen = Seen::default();
    for s in spans {
        let (name_at, value_at) = (s.name_at as usize, s.value_at as usize);
        let wire = &head[name_at..name_at + s.name_len as usize];
        let name = match known_name(wire) {
            Some(name) => name,
            None => HeaderName::from_bytes(wire).map_err(|_| "invalid header name")?,
        };
        seen.note(&name);
        let value =
            HeaderValue::from_maybe_shared(head.slice(value_at..value_at + s.value_len as usize))
                .map_err(|_| "invalid header value")?;
        headers.append(name, value);
    }
    Ok((headers, seen))
}

/// Which framing and connection headers a head has, noted while its map is built, so that a
/// head without them (most) skips their lookups.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen(u8);

impl Seen {
    pub const CONNECTION: Seen = Seen(1);
    pub const TRANSFER_ENCODING: Seen = Seen(2);
    pub const CONTENT_LENGTH: Seen = Seen(4);
    pub const EXPECT: Seen = Seen(8);
    pub const UPGRADE: Seen = Seen(16);
    /// `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`: hop-by-hop, steer nothing here.
    pub const OTHER_HOP_BY_HOP: Seen = Seen(32);

    fn note(&mut self, name: &HeaderName) {
        let bit = if name == header::CONNECTION {
            Seen::CONNECTION
        } else if name == header::TRANSFER_ENCODING {
            Seen::TRANSFER_ENCODING
        } else if name == header::CONTENT_LENGTH {
            Seen::CONTENT_LENGTH
        } else if name == header::EXPECT {
            Seen::EXPECT
        } else if name == header::UPGRADE {
            Seen::UPGRADE
        } else if crate::forward::is_hop_by_hop(name) {
            Seen::OTHER_HOP_BY_HOP
        } else {
            return;
        };
        self.0 |= bit.0;
    }

    /// Whether any of `names` was seen.
    pub fn any(self, names: Seen) -> bool {
        self.0 & names.0 != 0
    }
}

impl std::ops::BitOr for Seen {
    type Output = Seen;
    fn bitor(self, other: Seen) -> Seen {
        Seen(self.0 | other.0)
    }
}

/// The names of the headers that come with nearly every request and response, matched before
/// `HeaderName::from_bytes` (a walk through a large table, which also allocates for a name
/// outside the standard set, such as `X-Tenant-ID`).
fn known_name(wire: &[u8]) -> Option<HeaderName> {
    let is = |lower: &str| eq_lowercase(wire, lower.as_bytes());
    Some(match wire.len() {
        4 if is("host") => header::HOST,
        4 if is("date") => header::DATE,
        4 if is("vary") => header::VARY,
        6 if is("origin") => header::ORIGIN,
        6 if is("accept") => header::ACCEPT,
        6 if is("cookie") => header::COOKIE,
        6 if is("server") => header::SERVER,
        7 if is("referer") => header::REFERER,
        10 if is("user-agent") => header::USER_AGENT,
        10 if is("connection") => header::CONNECTION,
        11 if is("x-tenant-id") => crate::forward::X_TENANT_ID,
        11 if is("traceparent") => crate::trace::TRACEPARENT,
        12 if is("content-type") => header::CONTENT_TYPE,
        12 if is("x-request-id") => crate::forward::X_REQUEST_ID,
        13 if is("cache-control") => header::CACHE_CONTROL,
        14 if is("content-length") => header::CONTENT_LENGTH,
        15 if is("accept-encoding") => header::ACCEPT_ENCODING,
        15 if is("accept-language") => header::ACCEPT_LANGUAGE,
        _ => return None,
    })
}

/// Whether a header name read off the wire is `lower` in any case. `lower` is lowercase
/// letters and `-`; setting bit `0x20` of every wire byte lowercases letters and leaves `-`
/// alone, and the only other byte it could turn into either is a control character, which
/// the parser never lets into a name. Eight bytes at a time.
fn eq_lowercase(wire: &[u8], lower: &[u8]) -> bool {
    if wire.len() != lower.len() {
        return false;
    }
    const CASE: u64 = u64::from_ne_bytes([0x20; 8]);
    let word = |b: &[u8], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..at + 8]);
        u64::from_ne_bytes(w)
    };
    let n = wire.len();
    if n < 8 {
        return wire.iter().zip(lower).all(|(w, l)| w | 0x20 == *l);
    }
    // Whole words, the last one overlapping the one before when the length is not a multiple.
    (0..n - 8)
        .step_by(8)
        .chain([n - 8])
        .all(|at| word(wire, at) | CASE == word(lower, at))
}

/// Header maps whose requests and responses are done with, kept by each thread for the next
/// heads: a map's two allocations are made once per thread instead of twice per request.
const SPARE_MAPS: usize = 4;

thread_local! {
    static SPARES: std::cell::RefCell<Vec<HeaderMap>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn spare_map() -> HeaderMap {
    SPARES
        .try_with(|spares| spares.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Gives a head's header map back for reuse once its lines have been written out.
pub(crate) fn recycle(mut headers: HeaderMap) {
    // A map grown by an unusual head is not kept.
    if headers.capacity() > 64 {
        return;
    }
    headers.clear();
    let _ = SPARES.try_with(|spares| {
        let mut spares = spares.borrow_mut();
        if spares.len() < SPARE_MAPS {
            spares.push(headers);
        }
    });
}

/// How the body is delimited (RFC 9112 §6.3) and whether that allows reuse.
fn framing(
    headers: &HeaderMap,
    seen: Seen,
    status: StatusCode,
    is_head: bool,
) -> Result<(Framing, bool), ExchangeError> {
    if is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, true));
    }
    if seen.any(Seen::TRANSFER_ENCODING) {
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("").split(','))
            .map(str::trim)
            .rfind(|t| !t.is_empty());
        if last.is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            // With a Content-Length too, chunked wins, but such a peer is not trusted twice.
            let reusable = !seen.any(Seen::CONTENT_LENGTH);
            return Ok((Framing::Chunked(Chunk::Size), reusable));
        }
        return Ok((Framing::UntilClose, false));
    }
    let length = if seen.any(Seen::CONTENT_LENGTH) {
        content_length(headers).map_err(ExchangeError::Protocol)?
    } else {
        None
    };
    Ok(match length {
        Some(0) => (Framing::Empty, true),
        Some(n) => (Framing::Length(n), true),
        None => (Framing::UntilClose, false),
    })
}

/// A head's `Content-Length`: every line, and every comma-separated part of one, must give the
/// same decimal number (RFC 9110 §8.6).
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Err("invalid Content-Length");
            }
            let n = part
                .iter()
                .try_fold(0u64, |n, &digit| {
                    n.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
                })
                .ok_or("invalid Content-Length")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length values");
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// Whether a comma-separated header has `token` (case-insensitive).
pub(crate) fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
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
                    return Poll::Ready(Some(Err(e)));
                }
            }
            // More bytes needed.
            if conn.read_buf.len() >= MAX_HEAD_BYTES {
                return Poll::Ready(Some(Err(ExchangeError::Protocol("chunk line too long"))));
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

/// What the buffered bytes give of a body.
pub(crate) enum Decoded {
    Data(Bytes),
    End,
    /// More bytes must be read first.
    More,
}

/// The next piece of a body framed by `framing` from what `buf` holds, advancing `framing`
/// (to `Empty` once the body is complete). Response bodies here, request bodies in
/// [`crate::http1`].
pub(crate) fn decode(buf: &mut BytesMut, framing: &mut Framing) -> Result<Decoded, ExchangeError> {
    loop {
        match *framing {
            Framing::Empty => return Ok(Decoded::End),
            Framing::Length(left) if !buf.is_empty() => {
                let n = left.min(buf.len() as u64);
                *framing = if n == left {
                    Framing::Empty
                } else {
                    Framing::Length(left - n)
                };
                return Ok(Decoded::Data(buf.split_to(n as usize).freeze()));
            }
            Framing::UntilClose if !buf.is_empty() => {
                return Ok(Decoded::Data(buf.split().freeze()))
            }
            Framing::Chunked(state) => match chunk_step(buf, state)? {
                Some(Step::Next(next)) => *framing = Framing::Chunked(next),
                Some(Step::Data(data, next)) => {
                    *framing = Framing::Chunked(next);
                    return Ok(Decoded::Data(data));
                }
                Some(Step::End) => {
                    *framing = Framing::Empty;
                    return Ok(Decoded::End);
                }
                None => return Ok(Decoded::More),
            },
            Framing::Length(_) | Framing::UntilClose => return Ok(Decoded::More),
        }
    }
}

/// One step of the chunked decoder over what is buffered; `None` when it needs more bytes.
enum Step {
    Next(Chunk),
    Data(Bytes, Chunk),
    End,
}

fn chunk_step(buf: &mut BytesMut, state: Chunk) -> Result<Option<Step>, ExchangeError> {
    Ok(Some(match state {
        Chunk::Size => match httparse::parse_chunk_size(buf) {
            Ok(httparse::Status::Complete((used, size))) => {
                buf.advance(used);
                Step::Next(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                })
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(ExchangeError::Protocol("invalid chunk size")),
        },
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(None);
            }
            let n = left.min(buf.len() as u64);
            let data = buf.split_to(n as usize).freeze();
            let next = if n == left {
                Chunk::DataEnd
            } else {
                Chunk::Data(left - n)
            };
            Step::Data(data, next)
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(None);
            }
            if &buf[..2] != b"\r\n" {
                return Err(ExchangeError::Protocol("chunk data not followed by CRLF"));
            }
            buf.advance(2);
            Step::Next(Chunk::Size)
        }
        // Trailer lines are read and dropped; the empty line ends the body.
        Chunk::Trailers => {
            let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            buf.advance(eol + 2);
            if eol == 0 {
                Step::End
            } else {
                Step::Next(Chunk::Trailers)
            }
        }
    }))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8], is_head: bool) -> Result<Option<Head>, ExchangeError> {
        parse_head(&mut BytesMut::from(raw), is_head)
    }

    fn framing_of(raw: &str) -> (Framing, bool) {
        let head = parse(raw.as_bytes(), false).unwrap().unwrap();
        (head.framing, head.keep_alive)
    }

    /// `raw`'s header lines through [`header_map`].
    fn map_of(raw: &str) -> (HeaderMap, Seen) {
        let mut slots = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut slots);
        let len = match req.parse(raw.as_bytes()).unwrap() {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => panic!("partial head"),
        };
        let (mut stack, mut heap) = ([Span::default(); STACK_SPANS], Vec::new());
        let spans = Span::record(req.headers, raw.as_bytes(), &mut stack, &mut heap);
        header_map(&Bytes::copy_from_slice(&raw.as_bytes()[..len]), spans, 0).unwrap()
    }

    #[test]
    fn content_lengths_are_decimal_agreeing_and_fit_in_64_bits() {
        let of = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::CONTENT_LENGTH, HeaderValue::from_str(v).unwrap());
            }
            content_length(&h)
        };
        assert_eq!(of(&[]), Ok(None));
        assert_eq!(of(&["0"]), Ok(Some(0)));
        assert_eq!(of(&[" 7 , 7", "7"]), Ok(Some(7)));
        assert_eq!(of(&["007"]), Ok(Some(7)));
        assert_eq!(of(&["18446744073709551615"]), Ok(Some(u64::MAX)));
        assert!(of(&["18446744073709551616"]).is_err(), "past u64");
        assert!(
            of(&["7", "8"]).is_err() && of(&["7,8"]).is_err(),
            "conflicting"
        );
        for bad in ["", "7,", "+7", "-1", "0x10", "7 7", "1e3"] {
            assert!(of(&[bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn known_names_match_in_any_case_and_nothing_else() {
        let names = [
            "host",
            "date",
            "vary",
            "origin",
            "accept",
            "cookie",
            "server",
            "referer",
            "user-agent",
            "connection",
            "x-tenant-id",
            "traceparent",
            "content-type",
            "x-request-id",
            "cache-control",
            "content-length",
            "accept-encoding",
            "accept-language",
        ];
        for name in names {
            let upper = name.to_ascii_uppercase();
            let mixed: String = name
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i % 2 == 0 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            for wire in [name, &upper, &mixed] {
                let known = known_name(wire.as_bytes()).unwrap_or_else(|| panic!("{wire}"));
                assert_eq!(
                    known,
                    HeaderName::from_bytes(wire.as_bytes()).unwrap(),
                    "{wire}"
                );
            }
            // One byte changed anywhere (to another token character) is another name.
            for at in 0..name.len() {
                for other in [b'_', b'~', b'0', b'q'] {
                    let mut near = name.as_bytes().to_vec();
                    if near[at] | 0x20 == other | 0x20 {
                        continue;
                    }
                    near[at] = other;
                    assert_eq!(
                        known_name(&near),
                        None,
                        "{}",
                        String::from_utf8_lossy(&near)
                    );
                }
            }
            assert_eq!(known_name(&name.as_bytes()[1..]), None);
            assert_eq!(known_name(format!("{name}s").as_bytes()), None);
        }
    }

    #[test]
    fn header_maps_are_reused_empty_and_note_the_headers_that_steer_framing() {
        let (plain, seen) =
            map_of("GET / HTTP/1.1\r\nHost: a\r\nX-Tenant-ID: t\r\nX-Custom: 1\r\n\r\n");
        assert_eq!(seen, Seen::default());
        assert_eq!(plain.len(), 3);
        assert_eq!(plain["x-tenant-id"], "t");
        recycle(plain);
        let (steering, seen) = map_of(
            "POST / HTTP/1.1\r\nconnection: keep-alive\r\nContent-Length: 3\r\nExpect: 100-continue\r\nUpgrade: x\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(
            seen,
            Seen::CONNECTION
                | Seen::CONTENT_LENGTH
                | Seen::EXPECT
                | Seen::UPGRADE
                | Seen::OTHER_HOP_BY_HOP
                | Seen::TRANSFER_ENCODING
        );
        assert_eq!(steering.len(), 6, "nothing left from the recycled map");
        assert!(!steering.contains_key("x-tenant-id") && !steering.contains_key(header::HOST));
        assert_eq!(steering[header::CONTENT_LENGTH], "3");
    }

    #[test]
    fn response_heads_are_framed_as_rfc_9112_says() {
        let ok = |extra: &str| format!("HTTP/1.1 200 OK\r\n{extra}\r\n");
        assert_eq!(
            framing_of(&ok("content-length: 5\r\n")),
            (Framing::Length(5), true)
        );
        assert_eq!(
            framing_of(&ok("content-length: 0\r\n")),
            (Framing::Empty, true)
        );
        assert_eq!(
            framing_of(&ok("Content-Length: 7, 7\r\ncontent-length: 7\r\n")),
            (Framing::Length(7), true)
        );
        assert_eq!(
            framing_of(&ok("transfer-encoding: gzip, chunked\r\n")),
            (Framing::Chunked(Chunk::Size), true)
        );
        assert_eq!(
            framing_of(&ok("transfer-encoding: chunked\r\ncontent-length: 3\r\n")),
            (Framing::Chunked(Chunk::Size), false),
            "both: chunked wins, the connection is not reused"
        );
        assert_eq!(
            framing_of(&ok("transfer-encoding: gzip\r\n")),
            (Framing::UntilClose, false)
        );
        assert_eq!(framing_of(&ok("")), (Framing::UntilClose, false));
        assert_eq!(
            framing_of(&ok(
                "content-length: 5\r\nconnection: keep-alive, Close\r\n"
            )),
            (Framing::Length(5), false)
        );
        assert_eq!(
            framing_of("HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\n"),
            (Framing::Length(5), false)
        );
        assert_eq!(
            framing_of("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"),
            (Framing::Empty, true)
        );
        assert_eq!(
            framing_of("HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n"),
            (Framing::Empty, true)
        );
        let head = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(
            head.framing,
            Framing::Empty,
            "the answer to HEAD has no body"
        );

        for bad in [
            "content-length: 5\r\ncontent-length: 6\r\n",
            "content-length: -1\r\n",
            "content-length: 5x\r\n",
            "content-length: +5\r\n",
        ] {
            assert!(
                matches!(
                    parse(ok(bad).as_bytes(), false),
                    Err(ExchangeError::Protocol(_))
                ),
                "{bad:?} accepted"
            );
        }
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", false),
            Err(ExchangeError::Protocol(_))
        ));
        assert!(matches!(
            parse(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false),
            Err(ExchangeError::Protocol(_))
        ));
    }

    #[test]
    fn interim_answers_are_skipped_and_partial_heads_wait() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nx-a: 1\r\nX-B: two words\r\ncontent-length: 2\r\n\r\nhi"[..],
        );
        let head = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::CREATED);
        assert_eq!(head.headers["x-a"], "1");
        assert_eq!(head.headers["x-b"], "two words");
        assert!(
            head.headers.get("link").is_none(),
            "interim headers are not kept"
        );
        assert_eq!(&buf[..], b"hi", "the body stays in the buffer");

        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-le"[..]);
        assert!(parse_head(&mut partial, false).unwrap().is_none());
        assert_eq!(partial.len(), 27, "nothing consumed");
    }

    #[test]
    fn an_emptied_buffer_reads_into_the_front_of_its_allocation_again() {
        let mut buf = BytesMut::new();
        make_room(&mut buf, 1024);
        let front = buf.as_ptr();
        buf.extend_from_slice(&[b'x'; 300]);
        let head = buf.split_to(300).freeze();
        make_room(&mut buf, 1024);
        assert_ne!(buf.as_ptr(), front, "the head still holds the front");
        drop(head);
        make_room(&mut buf, 1024);
        assert_eq!(buf.as_ptr(), front);
        assert!(buf.capacity() >= 1024);
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let wire =
            b"5;ext=1\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: t\r\n\r\n";
        for split in 1..wire.len() {
            let (mut buf, mut state, mut data, mut ended) =
                (BytesMut::new(), Chunk::Size, Vec::new(), false);
            for part in [&wire[..split], &wire[split..]] {
                buf.extend_from_slice(part);
                while let Some(step) = chunk_step(&mut buf, state).unwrap() {
                    match step {
                        Step::Next(next) => state = next,
                        Step::Data(d, next) => {
                            data.extend_from_slice(&d);
                            state = next;
                        }
                        Step::End => {
                            ended = true;
                            break;
                        }
                    }
                }
            }
            assert!(ended, "split at {split}");
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz", "split at {split}");
            assert!(buf.is_empty(), "split at {split}");
        }
        let mut bad = BytesMut::from(&b"zz\r\n"[..]);
        assert!(chunk_step(&mut bad, Chunk::Size).is_err());
        let mut no_crlf = BytesMut::from(&b"abXY"[..]);
        let Some(Step::Data(_, Chunk::DataEnd)) = chunk_step(&mut no_crlf, Chunk::Data(2)).unwrap()
        else {
            panic!("data expected")
        };
        assert!(chunk_step(&mut no_crlf, Chunk::DataEnd).is_err());
    }

    #[test]
    fn request_heads_are_written_in_origin_form_with_chunked_when_unsized() {
        let mut out = Vec::new();
        request_line(&mut out, &Method::POST, "/p?q=1");
        header_line(
            &mut out,
            &header::HOST,
            &HeaderValue::from_static("backend:80"),
        );
        end_head(&mut out, BodyFraming::Chunked);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nhost: backend:80\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let mut out = Vec::new();
        end_head(&mut out, BodyFraming::Length(68));
        assert_eq!(out, b"content-length: 68\r\n\r\n");
        out.clear();
        end_head(&mut out, BodyFraming::None);
        assert_eq!(out, b"\r\n");
        let mut buf = [0u8; 16];
        assert_eq!(hex_len(0, &mut buf), b"0");
        assert_eq!(hex_len(65536, &mut buf), b"10000");
        assert_eq!(hex_len(255, &mut buf), b"ff");
    }
}
