//! Cleartext HTTP/1.x from clients, served by the gateway itself: read a request head, hand the
//! request to a [`Handler`] (the request pipeline), write the response, and again for the next
//! request on the connection.
//!
//! Why not hyper's server here: on the bench workload hyper's server connection (its dispatcher
//! state machine, header map building, response encoding and the buffered reader it needs for
//! protocol detection) was about a fifth of the gateway's user-space instructions per request
//! (BENCHMARKS.md). This is the same work done once, in the connection's own task.
//!
//! What is served here: HTTP/1.0 and HTTP/1.1 requests, in cleartext or over TLS
//! ([`ClientStream`]; a TLS client that negotiated `h2` goes to hyper's server from the start,
//! `run::server`). Anything else goes to hyper's server together with the bytes read so far
//! ([`Replay`]): HTTP/2 with prior knowledge (recognised by its preface) and protocol upgrades
//! (WebSocket), both after the head passed the codec's rules.
//!
//! What a connection holds while it waits for its next request: its task (about 700 bytes: the
//! request being served is boxed and freed with its response), and no buffer — the read and
//! write buffers go to the thread's spares (`spare`) and the next busy connection takes them.
//!
//! The message rules are the codec's ([`codec::parse_request_head`]), kept strict because the
//! gateway stands in front of another parser: anything ambiguous is answered `400 bad_request`
//! and the connection closed. A head that does not fit the parser's limit gets `431`; one that does not
//! arrive within `[server] header_read_timeout_secs` (idle keep-alive time included) closes the
//! connection, with `408` when part of it had arrived.
//!
//! The connection's lifetime: a response goes out with `Content-Length` when its size is known,
//! chunked otherwise (close-delimited for HTTP/1.0), with `Date` when the backend sent none. The
//! connection stays open unless the client asked otherwise, the request body was not read to
//! its end (a refusal before an upload; a body that is already buffered whole is skipped
//! instead), or the gateway is shutting down. A client that goes away while its request is in
//! flight (its end of the connection closed) cancels the request, which frees the tenant's
//! slot. `Expect: 100-continue` is answered when the body is first read, i.e. only once the
//! request has passed the tenant checks.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, Response, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::io::poll_read_buf;
use tokio_util::sync::CancellationToken;

use crate::http::codec::{
    self, make_room, parse_request_head, BodyEncoder, Coding, FillError, Framing, HeadError,
    ResponseFraming,
};
use crate::http::inbound::{BodyError, BodyState, ClientBody, Expect, Inbound, Reader, READ_CHUNK};
use crate::http::stream::{ClientStream, WriteHalf};

/// Most header lines accepted in a request head.
const MAX_HEADERS: usize = 1_000;
/// Response bytes gathered into one write.
const WRITE_BATCH: usize = 64 * 1024;
/// After a refusal that leaves request bytes unread, how long (and how much) the gateway keeps
/// reading before it closes, so that the client gets the answer instead of a reset.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Buffers of connections that wait for their next request, lent to the next connection that
/// reads or writes on this thread: an idle keep-alive connection holds no read or write buffer
/// (nginx's way; most of what an idle connection cost was its buffers), and a busy one takes a
/// warm buffer back without allocating a new one. At most [`SPARE_BUFFERS`] of each kind are
/// kept.
mod spare {
    use bytes::BytesMut;
    use std::cell::RefCell;

    pub(super) const SPARE_BUFFERS: usize = 64;

    thread_local! {
        static READS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
        static WRITES: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    /// A kind of buffer the thread keeps spares of.
    pub(super) trait Buffer: Default + 'static {
        fn capacity(&self) -> usize;
        /// Runs `f` on the thread's spares of this kind.
        fn spares<R>(f: impl FnOnce(&mut Vec<Self>) -> R) -> R;
    }

    impl Buffer for BytesMut {
        fn capacity(&self) -> usize {
            BytesMut::capacity(self)
        }
        fn spares<R>(f: impl FnOnce(&mut Vec<Self>) -> R) -> R {
            READS.with(|spares| f(&mut spares.borrow_mut()))
        }
    }

    impl Buffer for Vec<u8> {
        fn capacity(&self) -> usize {
            Vec::capacity(self)
        }
        fn spares<R>(f: impl FnOnce(&mut Vec<Self>) -> R) -> R {
            WRITES.with(|spares| f(&mut spares.borrow_mut()))
        }
    }

    /// Gives an idle connection's (empty) buffer to the thread's spares.
    pub(super) fn give<B: Buffer>(buf: &mut B) {
        if buf.capacity() == 0 {
            return;
        }
        let buf = std::mem::take(buf);
        B::spares(|spares| {
            if spares.len() < SPARE_BUFFERS {
                spares.push(buf);
            }
        });
    }

    /// How many buffers of this kind the thread keeps.
    #[cfg(test)]
    pub(super) fn count<B: Buffer>() -> usize {
        B::spares(|spares| spares.len())
    }

    /// A buffer for a connection that has none (after it went idle), when the thread has one.
    pub(super) fn take<B: Buffer>(buf: &mut B) {
        if buf.capacity() == 0 {
            if let Some(spare) = B::spares(|spares| spares.pop()) {
                *buf = spare;
            }
        }
    }
}

/// What the connection needs from the config.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest request head the parser buffers.
    pub head_bytes: usize,
    /// `[server] header_read_timeout_secs`.
    pub header_read_timeout: Duration,
}

/// What the server hands each request to: the request pipeline.
pub trait Handler {
    /// The body of its responses; `Default` is an empty one.
    type Body: Body<Data = Bytes, Error = BodyError> + Default;

    /// The response to a request (never fails: every outcome is a response).
    fn handle(&self, req: Request<Inbound>) -> impl Future<Output = Response<Self::Body>>;

    /// The answer to bytes that could not be read as a request; the connection closes after it.
    fn refuse(&self, why: Unreadable) -> Response<Self::Body>;
}

/// Why bytes on a connection could not be read as a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    /// Malformed or ambiguous (`400`).
    BadRequest,
    /// The head is larger than the limit, or has too many lines (`431`).
    HeadTooLarge,
    /// The head did not arrive in time (`408`).
    HeadTimeout,
}

/// Serves the connection until it closes, or returns it (with what was read of it) when its
/// next message is for hyper's server.
pub async fn serve<H: Handler>(
    stream: ClientStream,
    handler: &H,
    limits: Limits,
    closing: &CancellationToken,
) -> Option<Replay<ClientStream>> {
    let (read, write) = stream.split();
    let mut conn = Connection {
        reader: Arc::new(Mutex::new(Reader {
            io: read,
            buf: BytesMut::new(),
            body: BodyState::DONE,
            expect: Expect::No,
        })),
        write,
        out: Vec::new(),
        limits,
    };
    let mut deadline = pin!(tokio::time::sleep(limits.header_read_timeout));
    let mut shutdown = pin!(closing.cancelled());
    let mut watching = false;
    let mut first = true;
    let refused = loop {
        let mut due = None;
        let wait = poll_fn(|cx| {
            let wait = HeadWait {
                deadline: deadline.as_mut(),
                due: &mut due,
                shutdown: shutdown.as_mut(),
                closing,
                watching: &mut watching,
            };
            conn.poll_head(cx, wait, first)
        });
        // The head is matched as it comes, never bound to a name: a bound request would be kept
        // in this future across the exchange.
        let exchange = match wait.await {
            Ok(Some((req, head))) => {
                // The request's own state (the pipeline's future, the response being written) is
                // boxed: it exists while the request is in flight, and a connection that waits
                // for its next request holds only what waiting needs (BENCHMARKS.md, "Cheap
                // connections"). Written into its allocation rather than moved there: `Box::pin`
                // copied the future's ~3.8 KB (250 instructions per request, callgrind).
                let slot = Box::new_uninit();
                Box::into_pin(Box::write(slot, conn.exchange(handler, req, head, closing)))
            }
            Ok(None) | Err(Refusal::Close) => return None,
            Err(Refusal::Answer(why)) => break why,
            Err(Refusal::Handoff(prefix)) => return conn.hand_off(prefix),
        };
        first = false;
        match exchange.await {
            Exchanged::Again => continue,
            Exchanged::Linger => {
                Box::pin(conn.linger()).await;
                return None;
            }
            Exchanged::Over => return None,
        }
    };
    // Answered outside the loop, where no request of the connection's is held.
    Box::pin(conn.refuse(handler.refuse(refused), closing)).await;
    None
}

/// How a request/response exchange left the connection.
enum Exchanged {
    /// Ready for the next request.
    Again,
    /// To be closed after lingering (request bytes may be left unread).
    Linger,
    /// Closed (the client went away, or the response could not be delivered).
    Over,
}

/// One client connection: the reading side (shared with the request body), the writing side.
struct Connection {
    reader: Arc<Mutex<Reader>>,
    write: WriteHalf,
    /// Response bytes waiting to be written: a buffer from the thread's spares while a response
    /// is written, given back after it.
    out: Vec<u8>,
    limits: Limits,
}

/// How a request leaves the connection: what the response must respect and whether the
/// connection may carry another request.
#[derive(Debug, Clone, Copy)]
struct Sent {
    is_head: bool,
    http10: bool,
    keep_alive: bool,
    expect: bool,
}

impl Sent {
    /// For an answer to a request that could not be read: the connection closes after it.
    fn refusal() -> Sent {
        Sent {
            is_head: false,
            http10: false,
            keep_alive: false,
            expect: false,
        }
    }
}

/// What waiting for a head is bounded by: the header read timeout, counted from when the wait
/// starts (so an idle keep-alive connection is on the same clock), and shutdown.
///
/// The connection's one timer is not moved for every request: moving a timer costs more than
/// the rest of the wait. It stays where it is while it is still ahead; when it fires before the
/// head is `due`, it is moved to `due` then.
struct HeadWait<'a, 'b> {
    deadline: Pin<&'a mut Sleep>,
    due: &'a mut Option<Instant>,
    /// Polled once per connection: the registration lasts (the connection's task does not
    /// change), and polling it again would take the token's lock on every request.
    shutdown: Pin<&'a mut tokio_util::sync::WaitForCancellationFuture<'b>>,
    closing: &'b CancellationToken,
    watching: &'a mut bool,
}

/// The next request on the connection, and how its response must go out.
type Next = (Request<Inbound>, Sent);

/// A parsed request head: the request (its body still on the wire), and its body's framing.
struct Parsed {
    req: Request<()>,
    head: Sent,
    framing: BodyState,
}

/// Why no request came out of the head.
enum Refusal {
    /// Answered with this error, then the connection closes.
    Answer(Unreadable),
    /// Closed without an answer (a timeout with nothing received, a reset).
    Close,
    /// For hyper's server, with the bytes read so far.
    Handoff(Bytes),
}

impl Connection {
    fn lock(&self) -> MutexGuard<'_, Reader> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads until a whole request head is in and makes the request of it. `Ok(None)`: the
    /// connection is over (the client closed it between requests, or the gateway is shutting
    /// down).
    fn poll_head(
        &self,
        cx: &mut Context<'_>,
        wait: HeadWait<'_, '_>,
        first: bool,
    ) -> Poll<Result<Option<Next>, Refusal>> {
        let mut r = self.lock();
        loop {
            if !r.buf.is_empty() {
                match parse_request(&mut r.buf, first) {
                    Ok(Some(Parsed { req, head, framing })) => {
                        r.body = framing;
                        r.expect = if head.expect {
                            Expect::Waiting
                        } else {
                            Expect::No
                        };
                        let req = req.map(|()| match framing {
                            BodyState::DONE => Inbound::Empty,
                            _ => Inbound::Http1 {
                                body: ClientBody {
                                    reader: self.reader.clone(),
                                    done: false,
                                },
                            },
                        });
                        return Poll::Ready(Ok(Some((req, head))));
                    }
                    Ok(None) => {}
                    Err(refusal) => return Poll::Ready(Err(refusal)),
                }
                if r.buf.len() >= self.limits.head_bytes {
                    return Poll::Ready(Err(Refusal::Answer(Unreadable::HeadTooLarge)));
                }
            }
            spare::take(&mut r.buf);
            make_room(&mut r.buf, READ_CHUNK);
            let r = &mut *r;
            match poll_read_buf(Pin::new(&mut r.io), cx, &mut r.buf) {
                Poll::Ready(Ok(0)) if r.buf.is_empty() => return Poll::Ready(Ok(None)),
                Poll::Ready(Ok(0)) => {
                    tracing::debug!("client closed the connection inside a request head");
                    return Poll::Ready(Err(Refusal::Close));
                }
                Poll::Ready(Ok(_)) => continue,
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "reading a request head failed");
                    return Poll::Ready(Err(Refusal::Close));
                }
                Poll::Pending => {}
            }
            // Waiting: an idle connection ends at shutdown; a head must be complete in time.
            let HeadWait {
                mut deadline,
                due,
                shutdown,
                closing,
                watching,
            } = wait;
            if r.buf.is_empty() {
                spare::give(&mut r.buf); // idle: the buffer goes back to the thread
                if closing.is_cancelled() {
                    return Poll::Ready(Ok(None));
                }
                if !*watching {
                    *watching = true;
                    if shutdown.poll(cx).is_ready() {
                        return Poll::Ready(Ok(None));
                    }
                }
            }
            let due = *due.get_or_insert_with(|| Instant::now() + self.limits.header_read_timeout);
            // The timer is never later than `due` (it is only ever set to an earlier wait's).
            while deadline.as_mut().poll(cx).is_ready() {
                if deadline.deadline() < due {
                    deadline.as_mut().reset(due); // it was an earlier wait's
                    continue;
                }
                return Poll::Ready(Err(if r.buf.is_empty() {
                    Refusal::Close
                } else {
                    tracing::debug!("request head not received in time");
                    Refusal::Answer(Unreadable::HeadTimeout)
                }));
            }
            return Poll::Pending;
        }
    }

    /// Hands the request to the handler and writes its response.
    async fn exchange<H: Handler>(
        &mut self,
        handler: &H,
        req: Request<Inbound>,
        head: Sent,
        closing: &CancellationToken,
    ) -> Exchanged {
        let handling = pin!(handler.handle(req));
        let Some(resp) = self.run(handling, head.expect).await else {
            tracing::debug!("client went away mid-request");
            return Exchanged::Over;
        };
        let sent = Sent {
            keep_alive: head.keep_alive && self.skip_unread_body(),
            ..head
        };
        match self.respond(resp, &sent, closing).await {
            Ok(true) => Exchanged::Again,
            Ok(false) => Exchanged::Linger,
            Err(e) => {
                tracing::debug!(error = %e, "response not delivered to the client");
                Exchanged::Over
            }
        }
    }

    /// Answers bytes that could not be read as a request, then closes.
    async fn refuse<B: Body<Data = Bytes, Error = BodyError> + Default>(
        mut self,
        resp: Response<B>,
        closing: &CancellationToken,
    ) {
        let _ = self.respond(resp, &Sent::refusal(), closing).await;
        self.linger().await;
    }

    /// Runs the request's future to its response, answering `Expect: 100-continue` when the
    /// body is first read and watching for the client going away. `None`: it went away.
    async fn run<F, B>(&mut self, mut handling: Pin<&mut F>, expect: bool) -> Option<F::Output>
    where
        F: Future<Output = Response<B>>,
    {
        let mut continued = 0;
        poll_fn(|cx| loop {
            if let Poll::Ready(resp) = handling.as_mut().poll(cx) {
                return Poll::Ready(Some(resp));
            }
            if expect && self.lock().expect == Expect::Wanted {
                if continued < CONTINUE.len() {
                    match Pin::new(&mut self.write).poll_write(cx, &CONTINUE[continued..]) {
                        Poll::Ready(Ok(n)) if n > 0 => continued += n,
                        Poll::Ready(_) => return Poll::Ready(None),
                        Poll::Pending => return Poll::Pending,
                    }
                    continue;
                }
                match Pin::new(&mut self.write).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.lock().expect = Expect::No,
                    Poll::Ready(Err(_)) => return Poll::Ready(None),
                    Poll::Pending => return Poll::Pending,
                }
                continue; // the body reads on now
            }
            if self.poll_client_gone(cx) {
                return Poll::Ready(None);
            }
            return Poll::Pending;
        })
        .await
    }

    /// Whether the client closed its end while no request body is being read (the body itself
    /// notices otherwise). Bytes of a next request are kept for later, up to the head limit.
    fn poll_client_gone(&self, cx: &mut Context<'_>) -> bool {
        let mut r = self.lock();
        while r.body == BodyState::DONE && r.buf.len() < self.limits.head_bytes {
            spare::take(&mut r.buf);
            make_room(&mut r.buf, READ_CHUNK);
            let r = &mut *r;
            match poll_read_buf(Pin::new(&mut r.io), cx, &mut r.buf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return true,
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return false,
            }
        }
        false
    }

    /// After the response is known: whether the request body has been read to its end, which
    /// the next request needs. A `Content-Length` body that is already buffered whole (a small
    /// upload the gateway refused) is skipped.
    fn skip_unread_body(&self) -> bool {
        let mut r = self.lock();
        match r.body {
            BodyState::DONE => true,
            BodyState::Framed(Framing::Length(n)) if n <= r.buf.len() as u64 => {
                r.buf.advance(n as usize);
                r.body = BodyState::DONE;
                true
            }
            _ => false,
        }
    }

    /// Writes the response: head, then the body as it streams. `Ok(true)` when the connection
    /// can carry another request.
    async fn respond<B: Body<Data = Bytes, Error = BodyError> + Default>(
        &mut self,
        resp: Response<B>,
        req: &Sent,
        closing: &CancellationToken,
    ) -> std::io::Result<bool> {
        let (parts, body) = resp.into_parts();
        let mut body = pin!(body);
        // The length is the body's own (a backend's `Content-Length` framed it); the response's
        // `Content-Length` header is written from it, never passed through.
        let framing = if !codec::status_has_body(parts.status) {
            ResponseFraming::Bodiless
        } else if req.is_head {
            ResponseFraming::Head
        } else if let Some(n) = body.size_hint().exact() {
            ResponseFraming::Length(n)
        } else if !req.http10 {
            ResponseFraming::Chunked
        } else {
            ResponseFraming::UntilClose
        };
        let bodiless = matches!(framing, ResponseFraming::Bodiless | ResponseFraming::Head);
        let keep_alive =
            req.keep_alive && framing != ResponseFraming::UntilClose && !closing.is_cancelled();
        spare::take(&mut self.out);
        self.out.clear();
        self.out.reserve(1024);
        codec::write_response_head(
            &mut self.out,
            parts.status,
            &parts.headers,
            framing,
            keep_alive,
            req.http10,
            &http_date(),
        );
        codec::recycle(parts.headers);
        if bodiless {
            // Frees a held slot now; a `HEAD` answer's body is never sent.
            body.set(B::default());
        }
        let mut encoder = BodyEncoder::new(match framing {
            ResponseFraming::Length(n) => Coding::Length(n),
            ResponseFraming::Chunked => Coding::Chunked,
            ResponseFraming::Bodiless | ResponseFraming::Head => Coding::Length(0),
            ResponseFraming::UntilClose => Coding::UntilClose,
        });
        let mut written = 0;
        let mut finished = bodiless;
        let result = poll_fn(|cx| loop {
            if !finished && self.out.len() < WRITE_BATCH {
                match encoder.poll_fill(cx, body.as_mut(), &mut self.out, WRITE_BATCH) {
                    Poll::Ready(Ok(done)) => finished = done,
                    Poll::Ready(Err(FillError::Body(e))) => {
                        return Poll::Ready(Err(std::io::Error::other(e)))
                    }
                    Poll::Ready(Err(FillError::Framing(e))) => {
                        return Poll::Ready(Err(invalid(e.0)))
                    }
                    Poll::Pending => {}
                }
            }
            if written < self.out.len() {
                match Pin::new(&mut self.write).poll_write(cx, &self.out[written..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                    }
                    Poll::Ready(Ok(n)) => written += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
                if written == self.out.len() {
                    self.out.clear();
                    written = 0;
                }
                continue;
            }
            // Written: under TLS, what the session still holds goes out too.
            let flushed = Pin::new(&mut self.write).poll_flush(cx)?;
            if finished {
                return flushed.map(Ok);
            }
            // Waiting for the backend's next bytes.
            if self.poll_client_gone(cx) {
                return Poll::Ready(Err(std::io::ErrorKind::ConnectionAborted.into()));
            }
            return Poll::Pending;
        })
        .await;
        if result.is_ok() {
            spare::give(&mut self.out); // written whole: empty
        }
        result.map(|()| keep_alive)
    }

    /// Closes after an answer that may have left request bytes unread: the sending side first,
    /// then whatever the client still sends is read and dropped for a moment, so that the
    /// client reads the answer instead of a connection reset.
    async fn linger(self) {
        let Connection {
            reader, mut write, ..
        } = self;
        let _ = write.shutdown().await;
        let Ok(reader) = Arc::try_unwrap(reader) else {
            return;
        };
        let mut r = reader.into_inner().unwrap_or_else(|p| p.into_inner());
        if r.body == BodyState::DONE && r.buf.is_empty() {
            return; // nothing of the client's is left unread
        }
        let drain = async {
            let mut dropped = 0;
            while dropped < LINGER_BYTES {
                r.buf.clear();
                make_room(&mut r.buf, READ_CHUNK);
                match tokio_util::io::read_buf(&mut r.io, &mut r.buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => dropped += n,
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }

    /// The connection as one stream again, with the bytes read so far in front, for hyper.
    fn hand_off(self, prefix: Bytes) -> Option<Replay<ClientStream>> {
        let Connection { reader, write, .. } = self;
        let reader = Arc::try_unwrap(reader).ok()?;
        let r = reader.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut replay = BytesMut::from(&prefix[..]);
        replay.extend_from_slice(&r.buf);
        let stream = ClientStream::reunite(r.io, write)?;
        Some(Replay {
            prefix: replay.freeze(),
            io: stream,
        })
    }
}

#[cold]
fn invalid(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// `Date` in the IMF-fixdate form, formatted once a second per thread.
fn http_date() -> [u8; 29] {
    use std::cell::Cell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: Cell<(u64, [u8; 29])> = const { Cell::new((0, [0; 29])) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let (at, text) = cached.get();
        if at == second {
            return text;
        }
        let mut text = [0u8; 29];
        let formatted = httpdate::fmt_http_date(now);
        if formatted.len() == text.len() {
            text.copy_from_slice(formatted.as_bytes());
        }
        cached.set((second, text));
        text
    })
}

/// Parses a request head at the start of `buf` and removes it from there (the codec's rules,
/// [`parse_request_head`]); `None` until the head is complete. Upgrades and HTTP/2's preface
/// are handed to hyper's server.
fn parse_request(buf: &mut BytesMut, first: bool) -> Result<Option<Parsed>, Refusal> {
    if first && buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
        return Ok(None); // maybe HTTP/2's preface, still arriving
    }
    if first && buf.starts_with(H2_PREFACE) {
        return Err(Refusal::Handoff(Bytes::new()));
    }
    // Room for what the gateway adds without growing the map.
    let head = match parse_request_head(buf, MAX_HEADERS, 4) {
        Ok(Some(head)) => head,
        Ok(None) => return Ok(None),
        Err(HeadError::TooManyHeaders) => return Err(Refusal::Answer(Unreadable::HeadTooLarge)),
        Err(HeadError::Invalid(why)) => return Err(bad_request(why.0)),
    };
    // Not this server's to answer: hyper's takes the connection from this request on.
    if head.upgrade {
        codec::recycle(head.headers);
        return Err(Refusal::Handoff(head.raw));
    }
    let sent = Sent {
        is_head: head.method == Method::HEAD,
        http10: head.version == Version::HTTP_10,
        keep_alive: head.keep_alive,
        expect: head.expect_continue,
    };
    let mut request = Request::new(());
    *request.method_mut() = head.method;
    *request.uri_mut() = head.uri;
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers;
    Ok(Some(Parsed {
        req: request,
        head: sent,
        framing: BodyState::Framed(head.framing),
    }))
}

#[cold]
fn bad_request(why: &str) -> Refusal {
    tracing::debug!(reason = why, "refused a request head");
    Refusal::Answer(Unreadable::BadRequest)
}

/// A connection handed to hyper's server: the bytes this server had read come first.
pub struct Replay<S> {
    prefix: Bytes,
    io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                self.prefix = Bytes::new(); // frees it: an upgraded connection lives long
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{combinators::BoxBody, BodyExt, Full};
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// Answers every request with `hello`.
    struct Hello;

    impl Handler for Hello {
        type Body = BoxBody<Bytes, BodyError>;

        async fn handle(&self, _req: Request<Inbound>) -> Response<Self::Body> {
            let body = Full::new(Bytes::from_static(b"hello")).map_err(|e| match e {});
            Response::new(BoxBody::new(body))
        }

        fn refuse(&self, _why: Unreadable) -> Response<Self::Body> {
            Response::new(BoxBody::default())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_waiting_for_its_next_request_holds_no_buffer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let closing = CancellationToken::new();
        let limits = Limits {
            head_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(30),
        };
        let server = async {
            let (stream, _) = listener.accept().await.unwrap();
            serve(ClientStream::Plain(stream), &Hello, limits, &closing).await;
        };
        let client = async {
            let mut client = TcpStream::connect(addr).await.unwrap();
            for _ in 0..2 {
                client
                    .write_all(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
                    .await
                    .unwrap();
                let mut answer = Vec::new();
                while !answer.ends_with(b"hello") {
                    let mut chunk = [0; 1024];
                    let n = client.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "closed: {answer:?}");
                    answer.extend_from_slice(&chunk[..n]);
                }
                assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"), "{answer:?}");
                // The server runs on this thread: once it waits for the next request, its read
                // and write buffers are the thread's (and the next request takes them back).
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
                assert_eq!(
                    spare::count::<BytesMut>(),
                    1,
                    "the read buffer is given back"
                );
                assert_eq!(
                    spare::count::<Vec<u8>>(),
                    1,
                    "the write buffer is given back"
                );
            }
            drop(client);
        };
        tokio::join!(server, client);
    }

    #[test]
    fn idle_buffers_go_to_the_thread_and_come_back_to_the_next_reader() {
        let mut idle = BytesMut::with_capacity(8192);
        let ptr = idle.as_ptr();
        spare::give(&mut idle);
        assert_eq!(idle.capacity(), 0, "the idle connection holds nothing");
        let mut next = BytesMut::new();
        spare::take(&mut next);
        assert_eq!(
            (next.as_ptr(), next.capacity()),
            (ptr, 8192),
            "the same warm buffer"
        );
        // A reader that has a buffer keeps its own; the thread keeps at most SPARE_BUFFERS.
        let mut own = BytesMut::with_capacity(16);
        spare::take(&mut own);
        assert_eq!(own.capacity(), 16);
        for _ in 0..spare::SPARE_BUFFERS + 10 {
            spare::give(&mut BytesMut::with_capacity(64));
        }
        let mut taken = 0;
        loop {
            let mut b = BytesMut::new();
            spare::take(&mut b);
            if b.capacity() == 0 {
                break;
            }
            taken += 1;
        }
        assert_eq!(taken, spare::SPARE_BUFFERS);
    }
}
