//! The HTTP/1.1 codec: every rule about where a message starts and ends, written once and used
//! by both drivers — the client-facing server ([`super::server`]) and the backend client
//! ([`super::client`]). Pure functions over byte buffers, so that unit tests and fuzz targets
//! call them directly.
//!
//! | job | requests (from clients) | responses (from backends) |
//! |---|---|---|
//! | parse a head | [`parse_request_head`] | [`parse_response_head`] |
//! | decide the body's framing | [`request_framing`] | `response_framing` (inside [`parse_response_head`]) |
//! | decode the body | [`decode`] (length, strict chunked) | [`decode`] (+ until close) |
//! | write a head | [`request_line`], [`header_line`], [`end_request_head`] | [`write_response_head`] |
//!
//! The gateway is the only author of framing (DESIGN.md, "HTTP/1.1 framing"): a message's
//! `Content-Length` / `Transfer-Encoding` lines are read here into a [`Framing`], and every
//! message the gateway writes gets lines written from that value, never copies of the lines it
//! read. Requests are parsed strictly: anything ambiguous is an [`Invalid`] that the server
//! answers with `400` and a closed connection. Responses are parsed as RFC 9112 tells a
//! recipient to (chunked wins over a length, unknown codings read until close), but a peer that
//! sends contradictory framing never gets its connection reused.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};

/// Longest chunk-size line (size and extensions) accepted in a chunked body.
pub const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Most bytes of trailer lines accepted after a chunked body (they are read and dropped).
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Header lines parsed without a heap allocation; heads with more are parsed again with room
/// for the caller's maximum.
const STACK_HEADERS: usize = 64;

/// A message that breaks the HTTP/1.1 grammar or the gateway's framing rules, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub &'static str);

/// How a body is delimited on the wire, and how much of it is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body, or a body read to its end.
    Empty,
    /// This many bytes left.
    Length(u64),
    /// Chunked coding, at this point of the decoder.
    Chunked(Chunk),
    /// Until the peer closes the connection (responses only; never reusable).
    UntilClose,
}

/// Where the chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines, this many bytes of them so far.
    Trailers(u32),
}

impl Framing {
    /// The start of a chunked body.
    pub const CHUNKED: Framing = Framing::Chunked(Chunk::Size);

    /// The framing of a body of `n` bytes.
    pub fn length(n: u64) -> Framing {
        match n {
            0 => Framing::Empty,
            n => Framing::Length(n),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Request heads

/// A request head as the gateway understood it. Every field the request path relies on was
/// checked here: the method fits the target's form, `Host` is one valid authority (HTTP/1.1),
/// and the framing is unambiguous.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    /// The header lines, minus those the gateway drops on reading (names with `_`); the
    /// framing lines are still here for reference but are never forwarded.
    pub headers: HeaderMap,
    /// The body's framing (`Empty` for none).
    pub framing: Framing,
    /// The connection may carry another request after this one, as far as the client said.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on a request with a body (HTTP/1.1 only).
    pub expect_continue: bool,
    /// `Connection: upgrade` with `Upgrade` (a WebSocket handshake, say).
    pub upgrade: bool,
    /// The head's bytes as received (for a hand-off to another server).
    pub raw: Bytes,
}

/// Why no request came out of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// More header lines than the caller allows.
    TooManyHeaders,
    /// Refused: `400 bad_request`.
    Invalid(Invalid),
}

impl From<Invalid> for HeadError {
    fn from(e: Invalid) -> HeadError {
        HeadError::Invalid(e)
    }
}

fn invalid(why: &'static str) -> HeadError {
    HeadError::Invalid(Invalid(why))
}

/// Parses a request head at the start of `buf` and removes it from there; `None` until the
/// head is complete. `max_headers` bounds the header lines, `extra` reserves room in the map
/// for what the gateway adds.
pub fn parse_request_head(
    buf: &mut BytesMut,
    max_headers: usize,
    extra: usize,
) -> Result<Option<RequestHead>, HeadError> {
    let mut stack = [MaybeUninit::uninit(); STACK_HEADERS];
    let mut heap = Vec::new();
    let mut req = httparse::Request::new(&mut []);
    let parsed = match req.parse_with_uninit_headers(buf, &mut stack) {
        Err(httparse::Error::TooManyHeaders) if max_headers > STACK_HEADERS => {
            heap.resize(max_headers, MaybeUninit::uninit());
            req = httparse::Request::new(&mut []);
            req.parse_with_uninit_headers(buf, &mut heap)
        }
        other => other,
    };
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(httparse::Error::HeaderName) => return Err(invalid("invalid header name")),
        Err(httparse::Error::HeaderValue) => return Err(invalid("invalid header value")),
        Err(httparse::Error::Version) => return Err(invalid("not HTTP/1.0 or HTTP/1.1")),
        Err(_) => return Err(invalid("malformed request head")),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(invalid("incomplete request line"));
    };
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| invalid("invalid method"))?;
    let target_at = target.as_ptr() as usize - buf.as_ptr() as usize;
    let target_at = target_at..target_at + target.len();
    let mut stack = [Span::default(); STACK_SPANS];
    let mut heap = Vec::new();
    let spans = Span::record(req.headers, buf, &mut stack, &mut heap);
    let raw = buf.split_to(len).freeze();
    let (headers, seen) = header_map(&raw, spans, extra, Side::Request)?;
    let uri = request_target(&method, raw.slice(target_at))?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    check_host(seen, version)?;
    let framing = request_framing(&headers, seen, version)?;
    let says = |token: &str| {
        seen.any(Seen::CONNECTION) && has_token(headers.get_all(header::CONNECTION), token)
    };
    let keep_alive = match version {
        Version::HTTP_10 => says("keep-alive") && !says("close"),
        _ => !says("close"),
    };
    let expect_continue = version == Version::HTTP_11
        && framing != Framing::Empty
        && seen.any(Seen::EXPECT)
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let upgrade = seen.any(Seen::UPGRADE) && says("upgrade");
    Ok(Some(RequestHead {
        method,
        uri,
        version,
        headers,
        framing,
        keep_alive,
        expect_continue,
        upgrade,
        raw,
    }))
}

/// The request rules of [`parse_request_head`] for a head another parser read (hyper's server,
/// for TLS and HTTP/2), so that every request meets one set of rules whatever its protocol:
/// no `CONNECT`, a target that fits its method, `Host` as HTTP/1.1 requires it (on HTTP/2 at
/// most one, and the same as `:authority`), unambiguous framing, and names with `_` dropped.
pub fn check_parsed_request(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &mut HeaderMap,
) -> Result<(), Invalid> {
    if method == Method::CONNECT {
        return Err(Invalid("CONNECT: the gateway does not tunnel"));
    }
    if uri == "*" && method != Method::OPTIONS {
        return Err(Invalid(
            "asterisk-form target on a method other than OPTIONS",
        ));
    }
    if headers.keys().any(|n| n.as_str().contains('_')) {
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|n| n.as_str().contains('_'))
            .cloned()
            .collect();
        for name in doomed {
            tracing::debug!(name = %name, "dropped a request header whose name has '_'");
            headers.remove(name);
        }
    }
    let seen = Seen::of(headers);
    if version == Version::HTTP_2 || version == Version::HTTP_3 {
        let mut hosts = headers.get_all(header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (None, _) => {}
            (Some(host), None) => {
                // The names must agree; a port may be left out (the backend never sees this
                // `Host`: it gets its own, and `:authority` travels in `X-Forwarded-Host`).
                let name = |h: &[u8]| match h.iter().rposition(|&b| b == b':') {
                    Some(colon) if !h[colon..].contains(&b']') => h[..colon].to_ascii_lowercase(),
                    _ => h.to_ascii_lowercase(),
                };
                let host = host.as_bytes();
                let authority = uri.authority().map(|a| name(a.as_str().as_bytes()));
                if !valid_host(host) || authority.is_some_and(|a| a != name(host)) {
                    return Err(Invalid("Host differs from :authority"));
                }
            }
            _ => return Err(Invalid("more than one Host")),
        }
    } else {
        for host in headers.get_all(header::HOST) {
            if !valid_host(host.as_bytes()) {
                return Err(Invalid("invalid Host"));
            }
        }
        check_host(seen, version)?;
    }
    request_framing(headers, seen, version).map(|_| ())
}

/// The request target, in the form its method allows (RFC 9112 §3.2): origin-form
/// (`/path?query`) for every method, absolute-form (`http://host/path`, whose authority is then
/// the request's host) for every method, asterisk-form (`*`) for `OPTIONS` only. `CONNECT` and
/// its authority-form are refused: the gateway does not tunnel.
pub fn request_target(method: &Method, target: Bytes) -> Result<Uri, Invalid> {
    if method == Method::CONNECT {
        return Err(Invalid("CONNECT: the gateway does not tunnel"));
    }
    if target.contains(&b'#') {
        return Err(Invalid("a fragment in the request target"));
    }
    match target.first() {
        Some(b'/') => {}
        Some(b'*') if target.len() == 1 => {
            return match *method == Method::OPTIONS {
                true => Ok(Uri::from_static("*")),
                false => Err(Invalid(
                    "asterisk-form target on a method other than OPTIONS",
                )),
            };
        }
        _ => {
            let uri = Uri::from_maybe_shared(target).map_err(|_| Invalid("invalid target"))?;
            let absolute = matches!(uri.scheme_str(), Some("http" | "https"))
                && uri
                    .authority()
                    .is_some_and(|a| valid_host(a.as_str().as_bytes()));
            return match absolute {
                true => Ok(uri),
                false => Err(Invalid("a target in neither origin nor absolute form")),
            };
        }
    }
    Uri::from_maybe_shared(target).map_err(|_| Invalid("invalid request target"))
}

/// `Host` (RFC 9112 §3.2): exactly one on HTTP/1.1, at most one on HTTP/1.0, and a valid
/// `host[:port]` when present.
/// (The value itself was checked with [`valid_host`] as the map was built.)
fn check_host(seen: Seen, version: Version) -> Result<(), Invalid> {
    if seen.any(Seen::MORE_THAN_ONE_HOST) {
        return Err(Invalid("more than one Host"));
    }
    match seen.any(Seen::HOST) || version == Version::HTTP_10 {
        true => Ok(()),
        false => Err(Invalid("no Host in an HTTP/1.1 request")),
    }
}

/// `uri-host [":" port]` (RFC 3986 §3.2.2): a registered name (unreserved, percent-encoded and
/// sub-delimiter characters, but no `,`: `Host` is one value, and a comma reads as a list to
/// some parsers), an IPv4 address, or an IP literal in brackets; no user info; the port, when
/// given, digits that fit 16 bits.
pub fn valid_host(authority: &[u8]) -> bool {
    if let Some(literal) = authority.strip_prefix(b"[") {
        let Some(end) = literal.iter().position(|&b| b == b']') else {
            return false;
        };
        let (ip, rest) = (&literal[..end], &literal[end + 1..]);
        return !ip.is_empty()
            && ip
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
            && (rest.is_empty() || rest.strip_prefix(b":").is_some_and(valid_port));
    }
    // A registered name or IPv4 address has no `:`: the first one starts the port.
    let (host, port) = match authority.iter().position(|&b| b == b':') {
        Some(colon) => (&authority[..colon], Some(&authority[colon + 1..])),
        None => (authority, None),
    };
    !host.is_empty()
        && host.iter().all(|&b| HOST_CHARS[usize::from(b)])
        && port.is_none_or(valid_port)
}

/// 1-5 digits up to 65535.
fn valid_port(port: &[u8]) -> bool {
    !port.is_empty()
        && port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && port.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= 65_535
}

/// The characters of a registered name: unreserved, `%` of percent-encoding, and the
/// sub-delimiters but `,` (a table: the check runs on every request's `Host`).
static HOST_CHARS: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b';'
                    | b'='
            );
        b += 1;
    }
    table
};

/// How a request body is delimited (RFC 9112 §6.3), refusing every ambiguous case: both
/// `Transfer-Encoding` and `Content-Length`, any transfer coding but one `chunked`,
/// `Transfer-Encoding` on HTTP/1.0, and a `Content-Length` that is invalid, repeated or a list.
pub fn request_framing(
    headers: &HeaderMap,
    seen: Seen,
    version: Version,
) -> Result<Framing, Invalid> {
    if seen.any(Seen::TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(Invalid("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if seen.any(Seen::CONTENT_LENGTH) {
            return Err(Invalid("both Transfer-Encoding and Content-Length"));
        }
        let mut codings = list_items(headers.get_all(header::TRANSFER_ENCODING));
        return match (codings.next(), codings.next()) {
            (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => Ok(Framing::CHUNKED),
            _ => Err(Invalid("a transfer coding other than one chunked")),
        };
    }
    if !seen.any(Seen::CONTENT_LENGTH) {
        return Ok(Framing::Empty);
    }
    let mut lines = headers.get_all(header::CONTENT_LENGTH).iter();
    let (Some(line), None) = (lines.next(), lines.next()) else {
        return Err(Invalid("more than one Content-Length"));
    };
    Ok(Framing::length(decimal(line.as_bytes().trim_ascii())?))
}

/// `1*DIGIT` that fits 64 bits.
fn decimal(digits: &[u8]) -> Result<u64, Invalid> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Invalid("invalid Content-Length"));
    }
    digits
        .iter()
        .try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or(Invalid("Content-Length past 64 bits"))
}

// ---------------------------------------------------------------------------------------------
// Response heads

/// A response head from a backend.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    /// The header lines, without `Content-Length` and `Transfer-Encoding` (the gateway writes
    /// its own from [`ResponseHead::framing`]) — except that the answer to `HEAD` keeps one
    /// `Content-Length`, rewritten from the validated value.
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection can carry another exchange once this body has been read to its end.
    pub reusable: bool,
}

/// Parses a response head at the start of `buf` and removes it from there; `None` until the
/// head is complete. `1xx` interim responses (`100 Continue`, `103 Early Hints`) are skipped
/// (`101` is refused: this client never asks to switch protocols).
pub fn parse_response_head(
    buf: &mut BytesMut,
    is_head: bool,
    max_headers: usize,
    extra: usize,
) -> Result<Option<ResponseHead>, HeadError> {
    loop {
        let mut stack = [MaybeUninit::uninit(); STACK_HEADERS];
        let mut heap = Vec::new();
        let config = httparse::ParserConfig::default();
        let mut resp = httparse::Response::new(&mut []);
        let parsed = match config.parse_response_with_uninit_headers(&mut resp, buf, &mut stack) {
            Err(httparse::Error::TooManyHeaders) if max_headers > STACK_HEADERS => {
                heap.resize(max_headers, MaybeUninit::uninit());
                resp = httparse::Response::new(&mut []);
                config.parse_response_with_uninit_headers(&mut resp, buf, &mut heap)
            }
            other => other,
        };
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
            Err(_) => return Err(invalid("malformed response head")),
        };
        let code = resp.code.unwrap_or(0);
        if (100..200).contains(&code) {
            if code == 101 {
                return Err(invalid("101 Switching Protocols without an upgrade"));
            }
            buf.advance(len);
            continue;
        }
        let status = StatusCode::from_u16(code).map_err(|_| invalid("bad status code"))?;
        let http11 = resp.version == Some(1);
        let mut stack = [Span::default(); STACK_SPANS];
        let mut heap = Vec::new();
        let spans = Span::record(resp.headers, buf, &mut stack, &mut heap);
        let raw = buf.split_to(len).freeze();
        let (mut headers, seen) = header_map(&raw, spans, extra, Side::Response)?;
        let body = response_framing(&headers, seen, status, is_head)?;
        let reusable = body.reusable
            && http11
            && !(seen.any(Seen::CONNECTION)
                && has_token(headers.get_all(header::CONNECTION), "close"));
        if seen.any(Seen::TRANSFER_ENCODING)
            || (seen.any(Seen::CONTENT_LENGTH) && !body.keep_length_line)
        {
            headers.remove(header::CONTENT_LENGTH);
            headers.remove(header::TRANSFER_ENCODING);
            if let (true, Some(n)) = (is_head && status_has_body(status), body.length) {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
        }
        return Ok(Some(ResponseHead {
            status,
            headers,
            framing: body.framing,
            reusable,
        }));
    }
}

/// Whether a response with this status can have a body at all (RFC 9110 §6.4.1).
pub fn status_has_body(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// What a response head says of its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BodyOfResponse {
    framing: Framing,
    /// Whether the framing allows the connection to be reused.
    reusable: bool,
    /// The validated `Content-Length`, whatever the status.
    length: Option<u64>,
    /// Whether the `Content-Length` line may stay in the map as it is: one line, the bytes the
    /// gateway would write itself, on a response that can have a body.
    keep_length_line: bool,
}

/// How a response body is delimited (RFC 9112 §6.3) and whether that allows the connection to
/// be reused: no body for `HEAD`, `1xx`, `204`, `304`; chunked when it is the final coding (a
/// `Content-Length` beside it loses, and the connection is not trusted again); read until close
/// for another final coding or no framing at all; a `Content-Length` whose lines or list items
/// disagree or are not decimal is invalid, whatever the status (the peer is not one to trust
/// with the connection, nor its header with the client).
fn response_framing(
    headers: &HeaderMap,
    seen: Seen,
    status: StatusCode,
    is_head: bool,
) -> Result<BodyOfResponse, Invalid> {
    let (length, plain) = match seen.any(Seen::CONTENT_LENGTH) {
        true => match content_length(headers)? {
            Some((n, plain)) => (Some(n), plain),
            None => (None, false),
        },
        false => (None, false),
    };
    let body = |framing, reusable, keep_length_line| BodyOfResponse {
        framing,
        reusable,
        length,
        keep_length_line,
    };
    if !status_has_body(status) {
        return Ok(body(Framing::Empty, true, false));
    }
    if is_head {
        return Ok(body(Framing::Empty, true, plain));
    }
    if seen.any(Seen::TRANSFER_ENCODING) {
        let last = list_items(headers.get_all(header::TRANSFER_ENCODING)).last();
        if last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")) {
            return Ok(body(
                Framing::CHUNKED,
                !seen.any(Seen::CONTENT_LENGTH),
                false,
            ));
        }
        return Ok(body(Framing::UntilClose, false, false));
    }
    Ok(match length {
        Some(n) => body(Framing::length(n), true, plain),
        None => body(Framing::UntilClose, false, false),
    })
}

/// A response's `Content-Length`: every line, and every item of a list, must give the same
/// decimal number (RFC 9110 §8.6); and whether it came as one line that is byte for byte the
/// line the gateway would write (digits without leading zeros).
fn content_length(headers: &HeaderMap) -> Result<Option<(u64, bool)>, Invalid> {
    let mut length = None;
    let mut lines = 0;
    let mut plain = true;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        lines += 1;
        let bytes = value.as_bytes();
        plain &=
            matches!(bytes, [b'0'] | [b'1'..=b'9', ..]) && bytes.iter().all(u8::is_ascii_digit);
        for item in bytes.split(|&b| b == b',') {
            let n = decimal(item.trim_ascii())?;
            if length.is_some_and(|l| l != n) {
                return Err(Invalid("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(length.map(|n| (n, plain && lines == 1)))
}

// ---------------------------------------------------------------------------------------------
// Header lines

/// Header lines recorded without a heap allocation (see [`Span::record`]).
const STACK_SPANS: usize = 64;

/// Where a header line sits in its head: the name's and the value's offsets and lengths. Heads
/// are parsed in place, then split off their read buffer; the header map is built from the
/// split-off bytes, its values sharing them.
#[derive(Debug, Default, Clone, Copy)]
struct Span {
    name_at: u32,
    name_len: u32,
    value_at: u32,
    value_len: u32,
}

impl Span {
    /// The places of `headers` (parsed from `head`), in `stack` when they fit.
    fn record<'s>(
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

/// Which side a head comes from: a request's header lines are held to more rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// From a client: names with `_` are dropped (backends behind CGI-style adapters read
    /// `X_Tenant_ID` and `X-Tenant-ID` as the same variable, so such a name could stand in for
    /// a header the gateway owns; nginx drops them too), and `Host` must be a valid authority.
    Request,
    /// From a backend: lines kept as they are.
    Response,
}

/// The header map of a head split off its buffer, with room for `extra` more lines, and which
/// of the headers that steer framing and connection handling it has.
///
/// Not inlined: one copy serves request and response heads.
#[inline(never)]
fn header_map(
    head: &Bytes,
    spans: &[Span],
    extra: usize,
    side: Side,
) -> Result<(HeaderMap, Seen), Invalid> {
    let mut headers = spare_map();
    headers.reserve(spans.len() + extra);
    let mut seen = Seen::default();
    for s in spans {
        let (name_at, value_at) = (s.name_at as usize, s.value_at as usize);
        let wire = &head[name_at..name_at + s.name_len as usize];
        let value = &head[value_at..value_at + s.value_len as usize];
        let name = match known_name(wire) {
            Some((name, bit)) => {
                if bit == Seen::HOST && side == Side::Request && !valid_host(value) {
                    return Err(Invalid("invalid Host"));
                }
                seen.add(bit);
                name
            }
            None if side == Side::Request && wire.contains(&b'_') => {
                tracing::debug!(name = %String::from_utf8_lossy(wire), "dropped a request header whose name has '_'");
                continue;
            }
            None => {
                let name =
                    HeaderName::from_bytes(wire).map_err(|_| Invalid("invalid header name"))?;
                seen.note(&name);
                name
            }
        };
        let value =
            HeaderValue::from_maybe_shared(head.slice(value_at..value_at + s.value_len as usize))
                .map_err(|_| Invalid("invalid header value"))?;
        headers.append(name, value);
    }
    Ok((headers, seen))
}

/// Which framing and connection headers a head has, noted while its map is built, so that a
/// head without them (most) skips their lookups.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Seen(u8);

impl Seen {
    pub const CONNECTION: Seen = Seen(1);
    pub const TRANSFER_ENCODING: Seen = Seen(2);
    pub const CONTENT_LENGTH: Seen = Seen(4);
    pub const EXPECT: Seen = Seen(8);
    pub const UPGRADE: Seen = Seen(16);
    /// `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`: hop-by-hop, steer nothing here.
    pub const OTHER_HOP_BY_HOP: Seen = Seen(32);
    pub const HOST: Seen = Seen(64);
    /// A second `Host` line.
    pub const MORE_THAN_ONE_HOST: Seen = Seen(128);

    /// Adds `bit` (a second `Host` is noted as such).
    fn add(&mut self, bit: Seen) {
        if bit == Seen::HOST && self.any(Seen::HOST) {
            self.0 |= Seen::MORE_THAN_ONE_HOST.0;
        }
        self.0 |= bit.0;
    }

    fn note(&mut self, name: &HeaderName) {
        let bit = if name == header::HOST {
            Seen::HOST
        } else if name == header::CONNECTION {
            Seen::CONNECTION
        } else if name == header::TRANSFER_ENCODING {
            Seen::TRANSFER_ENCODING
        } else if name == header::CONTENT_LENGTH {
            Seen::CONTENT_LENGTH
        } else if name == header::EXPECT {
            Seen::EXPECT
        } else if name == header::UPGRADE {
            Seen::UPGRADE
        } else if is_hop_by_hop(name) {
            Seen::OTHER_HOP_BY_HOP
        } else {
            return;
        };
        self.add(bit);
    }

    /// Whether any of `names` was seen.
    pub fn any(self, names: Seen) -> bool {
        self.0 & names.0 != 0
    }

    /// What a header map has, for maps that did not come from the gateway's own parser (hyper's).
    pub fn of(headers: &HeaderMap) -> Seen {
        let mut seen = Seen::default();
        for (name, _) in headers {
            seen.note(name);
        }
        seen
    }
}

impl std::ops::BitOr for Seen {
    type Output = Seen;
    fn bitor(self, other: Seen) -> Seen {
        Seen(self.0 | other.0)
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the legacy `Keep-Alive` and `Proxy-Connection`):
/// they describe one connection and are never forwarded.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// The items of a comma-separated header (RFC 9110 §5.6.1) over all its lines, without the
/// whitespace around them; empty items are skipped, as recipients must.
pub fn list_items<'a>(
    values: impl IntoIterator<Item = &'a HeaderValue>,
) -> impl Iterator<Item = &'a [u8]> {
    values
        .into_iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
}

/// Whether a comma-separated header has `token` (case-insensitive).
pub fn has_token<'a>(values: impl IntoIterator<Item = &'a HeaderValue>, token: &str) -> bool {
    list_items(values).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// The names of the headers that come with nearly every request and response, matched before
/// `HeaderName::from_bytes` (a walk through a large table, which also allocates for a name
/// outside the standard set, such as `X-Tenant-ID`).
fn known_name(wire: &[u8]) -> Option<(HeaderName, Seen)> {
    let is = |lower: &str| eq_lowercase(wire, lower.as_bytes());
    let none = Seen::default();
    Some(match wire.len() {
        4 if is("host") => (header::HOST, Seen::HOST),
        4 if is("date") => (header::DATE, none),
        4 if is("vary") => (header::VARY, none),
        6 if is("origin") => (header::ORIGIN, none),
        6 if is("accept") => (header::ACCEPT, none),
        6 if is("cookie") => (header::COOKIE, none),
        6 if is("server") => (header::SERVER, none),
        7 if is("referer") => (header::REFERER, none),
        10 if is("user-agent") => (header::USER_AGENT, none),
        10 if is("connection") => (header::CONNECTION, Seen::CONNECTION),
        11 if is("x-tenant-id") => (HeaderName::from_static("x-tenant-id"), none),
        11 if is("traceparent") => (HeaderName::from_static("traceparent"), none),
        12 if is("content-type") => (header::CONTENT_TYPE, none),
        12 if is("x-request-id") => (HeaderName::from_static("x-request-id"), none),
        13 if is("cache-control") => (header::CACHE_CONTROL, none),
        14 if is("content-length") => (header::CONTENT_LENGTH, Seen::CONTENT_LENGTH),
        15 if is("accept-encoding") => (header::ACCEPT_ENCODING, none),
        15 if is("accept-language") => (header::ACCEPT_LANGUAGE, none),
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
pub fn recycle(mut headers: HeaderMap) {
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

// ---------------------------------------------------------------------------------------------
// Bodies

/// What the buffered bytes give of a body.
#[derive(Debug)]
pub enum Decoded {
    Data(Bytes),
    End,
    /// More bytes must be read first.
    More,
}

/// The next piece of a body framed by `framing` from what `buf` holds, advancing `framing`
/// (to `Empty` once the body is complete). A chunked body is held to RFC 9112 §7.1: hex digits
/// only in sizes, valid extensions and trailer lines, CRLF after every line and every chunk,
/// and no line longer than [`MAX_CHUNK_LINE`] (trailers: [`MAX_TRAILER_BYTES`] together).
pub fn decode(buf: &mut BytesMut, framing: &mut Framing) -> Result<Decoded, Invalid> {
    loop {
        match *framing {
            Framing::Empty => return Ok(Decoded::End),
            Framing::Length(left) if !buf.is_empty() => {
                let n = left.min(buf.len() as u64);
                *framing = Framing::length(left - n);
                return Ok(Decoded::Data(buf.split_to(n as usize).freeze()));
            }
            Framing::UntilClose if !buf.is_empty() => {
                return Ok(Decoded::Data(buf.split().freeze()))
            }
            Framing::Length(_) | Framing::UntilClose => return Ok(Decoded::More),
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
        }
    }
}

/// One step of the chunked decoder over what is buffered; `None` when it needs more bytes.
enum Step {
    Next(Chunk),
    Data(Bytes, Chunk),
    End,
}

fn chunk_step(buf: &mut BytesMut, state: Chunk) -> Result<Option<Step>, Invalid> {
    Ok(Some(match state {
        Chunk::Size => {
            let Some(line) = crlf_line(buf, MAX_CHUNK_LINE, "chunk-size line too long")? else {
                return Ok(None);
            };
            let size = chunk_size_line(&buf[..line])?;
            buf.advance(line + 2);
            Step::Next(match size {
                0 => Chunk::Trailers(0),
                n => Chunk::Data(n),
            })
        }
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(None);
            }
            let n = left.min(buf.len() as u64);
            let data = buf.split_to(n as usize).freeze();
            let next = match left - n {
                0 => Chunk::DataEnd,
                rest => Chunk::Data(rest),
            };
            Step::Data(data, next)
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return match buf.first() {
                    Some(b'\r') | None => Ok(None),
                    Some(_) => Err(Invalid("chunk data not followed by CRLF")),
                };
            }
            if &buf[..2] != b"\r\n" {
                return Err(Invalid("chunk data not followed by CRLF"));
            }
            buf.advance(2);
            Step::Next(Chunk::Size)
        }
        // Trailer lines are checked and dropped; the empty line ends the body.
        Chunk::Trailers(so_far) => {
            let room = MAX_TRAILER_BYTES - so_far as usize;
            let Some(line) = crlf_line(buf, room, "trailer section too large")? else {
                return Ok(None);
            };
            if line > 0 {
                field_line(&buf[..line])?;
            }
            buf.advance(line + 2);
            match line {
                0 => Step::End,
                n => Step::Next(Chunk::Trailers(so_far + n as u32 + 2)),
            }
        }
    }))
}

/// The length of the line at the start of `buf` when its CRLF has arrived; a bare LF, or no
/// line end within `max` bytes, is invalid.
fn crlf_line(buf: &[u8], max: usize, too_long: &'static str) -> Result<Option<usize>, Invalid> {
    let window = &buf[..buf.len().min(max + 2)];
    match window.iter().position(|&b| b == b'\n') {
        Some(0) => Err(Invalid("bare LF in a chunked body")),
        Some(lf) if window[lf - 1] == b'\r' => Ok(Some(lf - 1)),
        Some(_) => Err(Invalid("bare LF in a chunked body")),
        None if window.len() > max => Err(Invalid(too_long)),
        None => Ok(None),
    }
}

/// `chunk-size [ chunk-ext ]` without its CRLF (RFC 9112 §7.1.1):
/// `1*HEXDIG *( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] )`.
fn chunk_size_line(line: &[u8]) -> Result<u64, Invalid> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(Invalid("chunk size is not hex digits"));
    }
    let mut size = 0u64;
    for &d in &line[..digits] {
        let v = (d as char).to_digit(16).unwrap_or(0);
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(v)))
            .ok_or(Invalid("chunk size past 64 bits"))?;
    }
    chunk_extensions(&line[digits..])?;
    Ok(size)
}

/// `*( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] )`.
fn chunk_extensions(mut rest: &[u8]) -> Result<(), Invalid> {
    const BAD: Invalid = Invalid("invalid chunk extension");
    let bws = |s: &[u8]| -> usize { s.iter().take_while(|b| matches!(b, b' ' | b'\t')).count() };
    loop {
        if rest.is_empty() {
            return Ok(());
        }
        // Whitespace only before a `;`: a size line does not end in it.
        let Some(after) = rest[bws(rest)..].strip_prefix(b";") else {
            return Err(BAD);
        };
        rest = &after[bws(after)..];
        let name = token_len(rest);
        if name == 0 {
            return Err(BAD);
        }
        rest = &rest[name..];
        let before_eq = bws(rest);
        if rest[before_eq..].first() != Some(&b'=') {
            continue;
        }
        rest = &rest[before_eq + 1..];
        rest = &rest[bws(rest)..];
        let value = match rest.first() {
            Some(b'"') => quoted_string_len(rest).ok_or(BAD)?,
            _ => token_len(rest),
        };
        if value == 0 {
            return Err(BAD);
        }
        rest = &rest[value..];
    }
}

/// `field-name ":" OWS field-value OWS` (a trailer line without its CRLF): a token name, no
/// whitespace before the colon, and a value of visible characters, spaces and tabs (no obs-fold:
/// a line starting with whitespace is not a field).
fn field_line(line: &[u8]) -> Result<(), Invalid> {
    let name = token_len(line);
    if name == 0 || line.get(name) != Some(&b':') {
        return Err(Invalid("invalid trailer line"));
    }
    if !line[name + 1..]
        .iter()
        .all(|&b| is_field_vchar(b) || b == b' ' || b == b'\t')
    {
        return Err(Invalid("invalid trailer value"));
    }
    Ok(())
}

/// `tchar` (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// `VCHAR / obs-text`.
fn is_field_vchar(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b >= 0x80
}

fn token_len(s: &[u8]) -> usize {
    s.iter().take_while(|&&b| is_tchar(b)).count()
}

/// The length of the `quoted-string` at the start of `s`, quotes included.
fn quoted_string_len(s: &[u8]) -> Option<usize> {
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'"' => return Some(i + 1),
            b'\\' => {
                let escaped = *s.get(i + 1)?;
                if !(escaped == b'\t' || escaped == b' ' || is_field_vchar(escaped)) {
                    return None;
                }
                i += 2;
            }
            b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => i += 1,
            _ => return None,
        }
    }
    None
}

/// Room for the next read, allocated `chunk` bytes at a time. The buffer keeps the unused tail
/// of its allocation after heads and bodies are split off it, so most reads need no new
/// allocation; an empty buffer goes back to the front of its allocation once nothing else holds
/// a part of it, so that one message after another lands in the same, still cached, memory
/// rather than walking through the whole allocation.
pub fn make_room(buf: &mut BytesMut, chunk: usize) {
    if buf.is_empty() {
        // Asking for more than the tail holds moves an unshared buffer to its front (and does
        // nothing to a shared one).
        let _ = buf.try_reclaim(buf.capacity() + 1);
    }
    if buf.capacity() - buf.len() < chunk / 8 {
        buf.reserve(chunk);
    }
}

// ---------------------------------------------------------------------------------------------
// Writing heads and bodies

/// The request target in origin form for the backend (RFC 9112 §3.2.1): the path and query of
/// `uri`, with `/` as the path when it is empty (an absolute-form target such as
/// `http://host?q` has none), or `*` for a server-wide `OPTIONS`.
pub fn origin_form(uri: &Uri) -> std::borrow::Cow<'_, str> {
    match uri.path_and_query().map(|p| p.as_str()) {
        Some(target) if target.starts_with('/') || target == "*" => target.into(),
        Some(target) => format!("/{target}").into(),
        None => "/".into(),
    }
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

/// The end of a request head, with the framing line the gateway writes itself.
pub fn end_request_head(out: &mut Vec<u8>, framing: BodyFraming) {
    match framing {
        BodyFraming::None => {}
        BodyFraming::Length(n) => length_line(out, n),
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

#[inline]
fn length_line(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// How a response body is delimited on the wire towards the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// `1xx`, `204`, `304`: no body and no length.
    Bodiless,
    /// The answer to `HEAD`: no body; the `Content-Length` the response carries (rewritten
    /// from a validated value by [`parse_response_head`]) is kept.
    Head,
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0 clients, unknown length).
    UntilClose,
}

/// The status line and headers of a response to a client. The gateway owns the framing
/// headers: `Content-Length` from [`ResponseFraming`], `Transfer-Encoding: chunked`,
/// `Connection`; the lines of those names in `headers` are never copied (bar `HEAD`'s length).
pub fn write_response_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    framing: ResponseFraming,
    keep_alive: bool,
    http10: bool,
    date: &[u8],
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_date = false;
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING || name == header::CONNECTION {
            continue;
        }
        if name == header::CONTENT_LENGTH && framing != ResponseFraming::Head {
            continue;
        }
        has_date |= name == header::DATE;
        header_line(out, name, value);
    }
    match framing {
        ResponseFraming::Length(n) => length_line(out, n),
        ResponseFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        ResponseFraming::Bodiless | ResponseFraming::Head | ResponseFraming::UntilClose => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How a body is written: the framing its head announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Length(u64),
    Chunked,
    /// As it comes; the connection's end ends it (responses to HTTP/1.0 clients).
    UntilClose,
}

/// The body writer both sides use: each piece of a body framed as its head announced, and
/// never more or fewer bytes than an announced length (the difference would be read as the
/// next message).
#[derive(Debug, Clone, Copy)]
pub struct BodyEncoder {
    coding: Coding,
    sent: u64,
}

/// Why a body could not be written.
#[derive(Debug)]
pub enum FillError<E> {
    /// The body itself failed.
    Body(E),
    /// It did not fit the length its head announced.
    Framing(Invalid),
}

impl BodyEncoder {
    pub fn new(coding: Coding) -> BodyEncoder {
        BodyEncoder { coding, sent: 0 }
    }

    /// Appends the frames `body` has ready, encoded, until `out` holds `batch` bytes.
    /// `Ready(Ok(true))`: the body is complete and its end written; `Ready(Ok(false))`: `out`
    /// is full; `Pending`: the body waits for more.
    pub fn poll_fill<B: http_body::Body<Data = Bytes>>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        mut body: std::pin::Pin<&mut B>,
        out: &mut Vec<u8>,
        batch: usize,
    ) -> std::task::Poll<Result<bool, FillError<B::Error>>> {
        use std::task::Poll;
        while out.len() < batch {
            match body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers are not forwarded.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if !data.is_empty() {
                        self.data(out, &data).map_err(FillError::Framing)?;
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(FillError::Body(e))),
                Poll::Ready(None) => {
                    self.finish(out).map_err(FillError::Framing)?;
                    return Poll::Ready(Ok(true));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(false))
    }

    /// Appends one piece of the body.
    pub fn data(&mut self, out: &mut Vec<u8>, data: &[u8]) -> Result<(), Invalid> {
        self.sent += data.len() as u64;
        match self.coding {
            Coding::Length(n) if self.sent > n => Err(Invalid("body longer than its length")),
            Coding::Chunked => {
                encode_chunk(out, data);
                Ok(())
            }
            Coding::Length(_) | Coding::UntilClose => {
                out.extend_from_slice(data);
                Ok(())
            }
        }
    }

    /// Appends the end of the body.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), Invalid> {
        match self.coding {
            Coding::Length(n) if self.sent != n => Err(Invalid("body shorter than its length")),
            Coding::Chunked => {
                out.extend_from_slice(LAST_CHUNK);
                Ok(())
            }
            Coding::Length(_) | Coding::UntilClose => Ok(()),
        }
    }
}

/// Appends `data` as one chunk of chunked coding.
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    let mut size = [0u8; 16];
    out.extend_from_slice(hex(data.len() as u64, &mut size));
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk of a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// `n` in lowercase hex without leading zeros, written into `buf`.
pub fn hex(n: u64, buf: &mut [u8; 16]) -> &[u8] {
    hex_digits(&n.to_be_bytes(), buf);
    let zeros = buf.iter().take(15).take_while(|&&d| d == b'0').count();
    &buf[zeros..]
}

/// `bytes` as lowercase hex digits, two per byte, into the start of `out` (the one hex
/// encoder: chunk sizes, request ids, trace ids).
pub fn hex_digits(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

#[cfg(test)]
mod tests;
