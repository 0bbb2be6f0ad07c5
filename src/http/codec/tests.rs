//! The codec's rules, one test per job, each refusal of the framing contract by name.

use super::*;

fn request(raw: &str) -> Result<Option<RequestHead>, HeadError> {
    parse_request_head(&mut BytesMut::from(raw.as_bytes()), 100, 0)
}

fn refused(raw: &str) -> &'static str {
    match request(raw) {
        Err(HeadError::Invalid(Invalid(why))) => why,
        other => panic!("accepted {raw:?}: {other:?}"),
    }
}

fn accepted(raw: &str) -> RequestHead {
    match request(raw) {
        Ok(Some(head)) => head,
        other => panic!("refused {raw:?}: {other:?}"),
    }
}

#[test]
fn request_heads_parse_into_method_target_headers_and_framing() {
    let mut buf = BytesMut::from(
        &b"POST /p?q=1 HTTP/1.1\r\nHost: gw\r\nX-Tenant-ID: t\r\nContent-Length: 5\r\n\r\nhelloGET"
            [..],
    );
    let head = parse_request_head(&mut buf, 100, 0).unwrap().unwrap();
    assert_eq!(head.method, Method::POST);
    assert_eq!(head.uri, "/p?q=1");
    assert_eq!(head.version, Version::HTTP_11);
    assert_eq!(head.headers["x-tenant-id"], "t");
    assert_eq!(head.framing, Framing::Length(5));
    assert!(head.keep_alive && !head.expect_continue && !head.upgrade);
    assert_eq!(&buf[..], b"helloGET", "the body stays in the buffer");

    let mut partial = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a\r\n"[..]);
    assert!(parse_request_head(&mut partial, 100, 0).unwrap().is_none());
    assert_eq!(partial.len(), 25, "nothing consumed");
}

#[test]
fn keep_alive_expect_and_upgrade_are_read_from_their_headers() {
    let h = accepted("GET / HTTP/1.0\r\n\r\n");
    assert!(!h.keep_alive, "HTTP/1.0 closes unless asked");
    assert!(accepted("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
    assert!(
        !accepted("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n").keep_alive
    );
    let h =
        accepted("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n");
    assert!(h.expect_continue);
    let h = accepted("GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n");
    assert!(!h.expect_continue, "nothing to continue without a body");
    let h = accepted(
        "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    assert!(h.upgrade);
    let h = accepted("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n");
    assert!(!h.upgrade, "Upgrade without Connection: upgrade");
}

#[test]
fn ambiguous_request_framing_is_refused() {
    let post = |lines: &str| format!("POST / HTTP/1.1\r\nHost: a\r\n{lines}\r\n");
    for (lines, why) in [
        (
            "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
            "both TE and CL",
        ),
        (
            "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
            "both, other order",
        ),
        (
            "Transfer-Encoding: gzip, chunked\r\n",
            "a coding before chunked",
        ),
        ("Transfer-Encoding: chunked, gzip\r\n", "chunked not final"),
        ("Transfer-Encoding: gzip\r\n", "no chunked"),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "chunked twice",
        ),
        (
            "Transfer-Encoding: chunked, chunked\r\n",
            "chunked twice in a list",
        ),
        ("Transfer-Encoding: xchunked\r\n", "not chunked"),
        ("Transfer-Encoding: chunked;q=1\r\n", "parameters"),
        ("Transfer-Encoding: \r\n", "empty"),
        (
            "Content-Length: 3\r\nContent-Length: 3\r\n",
            "repeated, even agreeing",
        ),
        ("Content-Length: 3, 3\r\n", "a list, even agreeing"),
        ("Content-Length: 3\r\nContent-Length: 4\r\n", "conflicting"),
        ("Content-Length: +3\r\n", "sign"),
        ("Content-Length: -1\r\n", "negative"),
        ("Content-Length: 0x10\r\n", "hex"),
        ("Content-Length: 3 3\r\n", "two numbers"),
        ("Content-Length: 1e3\r\n", "exponent"),
        ("Content-Length: \r\n", "empty"),
        ("Content-Length: 18446744073709551616\r\n", "past 64 bits"),
    ] {
        assert!(!refused(&post(lines)).is_empty(), "{why}");
    }
    assert_eq!(
        refused("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
        "Transfer-Encoding in an HTTP/1.0 request"
    );
    // What is accepted, and how it is framed.
    assert_eq!(
        accepted(&post("Transfer-Encoding: Chunked\r\n")).framing,
        Framing::CHUNKED
    );
    assert_eq!(
        accepted(&post("Content-Length: 007\r\n")).framing,
        Framing::Length(7)
    );
    assert_eq!(
        accepted(&post("Content-Length: 0\r\n")).framing,
        Framing::Empty
    );
    assert_eq!(accepted(&post("")).framing, Framing::Empty);
    assert_eq!(
        accepted(&post("Content-Length: 18446744073709551615\r\n")).framing,
        Framing::Length(u64::MAX)
    );
}

#[test]
fn host_is_required_once_and_valid_on_http_1_1() {
    assert_eq!(
        refused("GET / HTTP/1.1\r\n\r\n"),
        "no Host in an HTTP/1.1 request"
    );
    assert_eq!(
        refused("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
        "more than one Host"
    );
    assert_eq!(
        refused("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
        "more than one Host"
    );
    for bad in [
        "", "a b", "a/b", "user@a", "a:port", "a:99999", "a:", "[::1", "a\"b", "a,b",
    ] {
        assert_eq!(
            refused(&format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n")),
            "invalid Host",
            "{bad:?}"
        );
    }
    for good in [
        "a",
        "a.example:8080",
        "127.0.0.1",
        "[::1]:443",
        "xn--bcher-kva.example",
    ] {
        accepted(&format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n"));
    }
    accepted("GET / HTTP/1.0\r\n\r\n");
}

#[test]
fn request_targets_must_fit_their_method() {
    assert_eq!(accepted("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").uri, "*");
    let h = accepted("GET http://a.example:8080/p?q HTTP/1.1\r\nHost: other\r\n\r\n");
    assert_eq!(h.uri.authority().unwrap().as_str(), "a.example:8080");
    assert_eq!(h.uri.path_and_query().unwrap().as_str(), "/p?q");
    for (raw, why) in [
        (
            "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            "asterisk-form target on a method other than OPTIONS",
        ),
        (
            "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
            "CONNECT: the gateway does not tunnel",
        ),
        (
            "GET a.example:443 HTTP/1.1\r\nHost: a\r\n\r\n",
            "a target in neither origin nor absolute form",
        ),
        (
            "GET ftp://a.example/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "a target in neither origin nor absolute form",
        ),
        (
            "GET http://u@a.example/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "a target in neither origin nor absolute form",
        ),
        (
            "GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n",
            "a fragment in the request target",
        ),
    ] {
        assert_eq!(refused(raw), why, "{raw:?}");
    }
}

#[test]
fn header_bytes_rfc_9110_forbids_are_refused_and_underscore_names_dropped() {
    for raw in [
        "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n X-A: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n:b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-\x7f: b\r\n\r\n",
        "GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.2\r\nHost: a\r\n\r\n",
        "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        "GET / http/1.1\r\nHost: a\r\n\r\n",
        "G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        refused(raw);
    }
    let h = accepted("GET / HTTP/1.1\r\nHost: a\r\nX_Tenant_ID: forged\r\nX-Tenant-ID: t\r\n\r\n");
    assert_eq!(h.headers.len(), 2, "{:?}", h.headers);
    assert_eq!(h.headers["x-tenant-id"], "t");
    // obs-text in a value is allowed (RFC 9110 §5.5) and kept as is.
    let h = accepted("GET / HTTP/1.1\r\nHost: a\r\nX-A: café\r\n\r\n");
    assert_eq!(h.headers["x-a"].as_bytes(), "café".as_bytes());
}

#[test]
fn too_many_header_lines_are_their_own_error() {
    let many = (0..101)
        .map(|i| format!("x-{i}: v\r\n"))
        .collect::<String>();
    assert_eq!(
        request(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")).unwrap_err(),
        HeadError::TooManyHeaders
    );
    let some = (0..90).map(|i| format!("x-{i}: v\r\n")).collect::<String>();
    assert_eq!(
        accepted(&format!("GET / HTTP/1.1\r\nHost: a\r\n{some}\r\n"))
            .headers
            .len(),
        91
    );
}

fn response(raw: &str, is_head: bool) -> Result<Option<ResponseHead>, HeadError> {
    parse_response_head(&mut BytesMut::from(raw.as_bytes()), is_head, 128, 0)
}

fn framing_of(raw: &str) -> (Framing, bool) {
    let head = response(raw, false).unwrap().unwrap();
    (head.framing, head.reusable)
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
        (Framing::CHUNKED, true)
    );
    assert_eq!(
        framing_of(&ok("transfer-encoding: chunked\r\ncontent-length: 3\r\n")),
        (Framing::CHUNKED, false),
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
    let head = response("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true)
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
        "content-length: 5,\r\n",
    ] {
        assert!(
            matches!(response(&ok(bad), false), Err(HeadError::Invalid(_))),
            "{bad:?} accepted"
        );
    }
    for bad in [
        "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "SSH-2.0-OpenSSH_9.6\r\n\r\n",
    ] {
        assert!(
            matches!(response(bad, false), Err(HeadError::Invalid(_))),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn response_framing_lines_are_removed_and_only_head_keeps_a_rewritten_length() {
    let h = response(
        "HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\nx-a: 1\r\n\r\n",
        false,
    )
    .unwrap()
    .unwrap();
    assert!(h.headers.get("content-length").is_none() && h.headers["x-a"] == "1");
    let h = response(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
        false,
    )
    .unwrap()
    .unwrap();
    assert!(
        h.headers.get("content-length").is_none() && h.headers.get("transfer-encoding").is_none()
    );
    let h = response("HTTP/1.1 200 OK\r\ncontent-length: 007, 7\r\n\r\n", true)
        .unwrap()
        .unwrap();
    assert_eq!(
        h.headers
            .get_all("content-length")
            .iter()
            .collect::<Vec<_>>(),
        ["7"]
    );
    let h = response("HTTP/1.1 204 No Content\r\ncontent-length: 7\r\n\r\n", true)
        .unwrap()
        .unwrap();
    assert!(h.headers.get("content-length").is_none(), "never on 204");
    for bad in [
        "HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
        "HTTP/1.1 304 Not Modified\r\ncontent-length: 1, 2\r\n\r\n",
    ] {
        assert!(
            response(bad, true).is_err(),
            "refused even on HEAD: {bad:?}"
        );
    }
}

#[test]
fn interim_answers_are_skipped_and_partial_heads_wait() {
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nx-a: 1\r\nX-B: two words\r\ncontent-length: 2\r\n\r\nhi"[..],
    );
    let head = parse_response_head(&mut buf, false, 128, 0)
        .unwrap()
        .unwrap();
    assert_eq!(head.status, StatusCode::CREATED);
    assert_eq!(head.headers["x-b"], "two words");
    assert!(
        head.headers.get("link").is_none(),
        "interim headers are not kept"
    );
    assert_eq!(&buf[..], b"hi");
    let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-le"[..]);
    assert!(parse_response_head(&mut partial, false, 128, 0)
        .unwrap()
        .is_none());
    assert_eq!(partial.len(), 27, "nothing consumed");
}

/// Decodes `wire` as a chunked body fed in two parts split at every position; the data, or the
/// first error.
fn dechunk(wire: &[u8]) -> Result<Vec<u8>, Invalid> {
    let mut result = None;
    for split in 0..=wire.len() {
        let (mut buf, mut framing, mut data) = (BytesMut::new(), Framing::CHUNKED, Vec::new());
        let mut outcome = Err(Invalid("incomplete"));
        'parts: for part in [&wire[..split], &wire[split..]] {
            buf.extend_from_slice(part);
            loop {
                match decode(&mut buf, &mut framing) {
                    Ok(Decoded::Data(d)) => data.extend_from_slice(&d),
                    Ok(Decoded::End) => {
                        outcome = Ok(data.clone());
                        break 'parts;
                    }
                    Ok(Decoded::More) => break,
                    Err(e) => {
                        outcome = Err(e);
                        break 'parts;
                    }
                }
            }
        }
        if let Some(first) = &result {
            assert_eq!(
                first,
                &outcome,
                "split at {split} of {:?}",
                String::from_utf8_lossy(wire)
            );
        }
        result = Some(outcome);
    }
    result.unwrap()
}

#[test]
fn chunked_bodies_decode_across_any_split() {
    assert_eq!(
        dechunk(
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: t\r\n\r\n"
        )
        .unwrap(),
        b"helloabcdefghijklmnopqrstuvwxyz"
    );
    assert_eq!(dechunk(b"0\r\n\r\n").unwrap(), b"");
    assert_eq!(
        dechunk(b"0005\r\nhello\r\n0\r\n\r\n").unwrap(),
        b"hello",
        "leading zeros"
    );
    assert_eq!(
        dechunk(b"5 ; a = b ; c=\"q \\\" d\"; e\r\nhello\r\n0\r\n\r\n").unwrap(),
        b"hello",
        "extensions with BWS, quoted values and bare names"
    );
}

#[test]
fn chunked_grammar_violations_are_refused() {
    for (wire, why) in [
        (&b"zz\r\n"[..], "not hex"),
        (b"-5\r\nhello\r\n0\r\n\r\n", "sign"),
        (b"+5\r\nhello\r\n0\r\n\r\n", "sign"),
        (b"0x5\r\nhello\r\n0\r\n\r\n", "prefix"),
        (b" 5\r\nhello\r\n0\r\n\r\n", "leading space"),
        (
            b"5 \r\nhello\r\n0\r\n\r\n",
            "trailing space without an extension",
        ),
        (b"\r\nhello\r\n0\r\n\r\n", "empty size"),
        (b"10000000000000000\r\n", "past 64 bits"),
        (b"5\nhello\r\n0\r\n\r\n", "bare LF after the size"),
        (b"5\rhello\r\n0\r\n\r\n", "bare CR after the size"),
        (b"5\r\nhelloXX0\r\n\r\n", "data not followed by CRLF"),
        (b"5\r\nhello\n0\r\n\r\n", "data followed by LF only"),
        (b"5;\r\nhello\r\n0\r\n\r\n", "empty extension"),
        (b"5;a=\r\nhello\r\n0\r\n\r\n", "extension without a value"),
        (b"5;a b\r\nhello\r\n0\r\n\r\n", "space inside an extension"),
        (
            b"5;a=\"b\r\nhello\r\n0\r\n\r\n",
            "unterminated quoted string",
        ),
        (b"5;a=\x01\r\nhello\r\n0\r\n\r\n", "control character"),
        (b"5;\x80\r\nhello\r\n0\r\n\r\n", "obs-text name"),
        (b"0\r\nx-t: a\nx\r\n\r\n", "bare LF in a trailer"),
        (b"0\r\nx-t : a\r\n\r\n", "space before a trailer's colon"),
        (b"0\r\n x-t: a\r\n\r\n", "obs-fold trailer"),
        (b"0\r\nno colon\r\n\r\n", "not a field line"),
        (b"0\r\nx-t: a\x00b\r\n\r\n", "NUL in a trailer"),
        (b"0\r\n\n", "bare LF ends the trailers"),
    ] {
        assert!(
            dechunk(wire).is_err(),
            "{why}: {:?}",
            String::from_utf8_lossy(wire)
        );
    }
}

#[test]
fn chunk_lines_and_trailers_are_bounded() {
    let long = format!("5;{}\r\nhello\r\n0\r\n\r\n", "a".repeat(MAX_CHUNK_LINE));
    assert_eq!(
        dechunk(long.as_bytes()),
        Err(Invalid("chunk-size line too long"))
    );
    let fits = format!("5;{}\r\nhello\r\n0\r\n\r\n", "a".repeat(MAX_CHUNK_LINE - 3));
    assert_eq!(dechunk(fits.as_bytes()).unwrap(), b"hello");
    let trailers = format!(
        "0\r\n{}\r\n",
        "x-t: aaaaaaaaaa\r\n".repeat(MAX_TRAILER_BYTES / 17 + 1)
    );
    assert_eq!(
        dechunk(trailers.as_bytes()),
        Err(Invalid("trailer section too large"))
    );
    // Without a line end, a growing line is refused once it passes the limit, not buffered on.
    let mut buf = BytesMut::from(&[b'1'; MAX_CHUNK_LINE + 2][..]);
    let mut framing = Framing::CHUNKED;
    assert!(decode(&mut buf, &mut framing).is_err());
}

#[test]
fn sized_and_close_delimited_bodies_decode_to_their_end() {
    let mut buf = BytesMut::from(&b"helloNEXT"[..]);
    let mut framing = Framing::Length(5);
    let Decoded::Data(d) = decode(&mut buf, &mut framing).unwrap() else {
        panic!()
    };
    assert_eq!((&d[..], framing), (&b"hello"[..], Framing::Empty));
    assert!(matches!(
        decode(&mut buf, &mut framing).unwrap(),
        Decoded::End
    ));
    assert_eq!(&buf[..], b"NEXT", "the next message is untouched");
    let mut framing = Framing::UntilClose;
    let Decoded::Data(d) = decode(&mut buf, &mut framing).unwrap() else {
        panic!()
    };
    assert_eq!(&d[..], b"NEXT");
    assert!(matches!(
        decode(&mut buf, &mut framing).unwrap(),
        Decoded::More
    ));
}

#[test]
fn request_heads_are_written_with_the_framing_the_gateway_chose() {
    let mut out = Vec::new();
    request_line(&mut out, &Method::POST, "/p?q=1");
    header_line(
        &mut out,
        &header::HOST,
        &HeaderValue::from_static("backend:80"),
    );
    end_request_head(&mut out, BodyFraming::Chunked);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "POST /p?q=1 HTTP/1.1\r\nhost: backend:80\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    let mut out = Vec::new();
    end_request_head(&mut out, BodyFraming::Length(68));
    assert_eq!(out, b"content-length: 68\r\n\r\n");
    out.clear();
    end_request_head(&mut out, BodyFraming::None);
    assert_eq!(out, b"\r\n");
    let mut buf = [0u8; 16];
    assert_eq!(hex(0, &mut buf), b"0");
    assert_eq!(hex(65536, &mut buf), b"10000");
    assert_eq!(hex(u64::MAX, &mut buf), b"ffffffffffffffff");
    let mut out = Vec::new();
    encode_chunk(&mut out, b"hello world!!!!!!");
    assert_eq!(out, b"11\r\nhello world!!!!!!\r\n");
}

#[test]
fn response_heads_never_copy_framing_lines() {
    let mut headers = HeaderMap::new();
    headers.insert("content-length", HeaderValue::from_static("999"));
    headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
    headers.insert("connection", HeaderValue::from_static("keep-alive"));
    headers.insert("x-a", HeaderValue::from_static("1"));
    let head = |framing, keep_alive, http10| {
        let mut out = Vec::new();
        write_response_head(
            &mut out,
            StatusCode::OK,
            &headers,
            framing,
            keep_alive,
            http10,
            b"D",
        );
        String::from_utf8(out).unwrap()
    };
    assert_eq!(
        head(ResponseFraming::Length(5), true, false),
        "HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\ndate: D\r\n\r\n"
    );
    assert_eq!(
        head(ResponseFraming::Chunked, false, false),
        "HTTP/1.1 200 OK\r\nx-a: 1\r\ntransfer-encoding: chunked\r\nconnection: close\r\ndate: D\r\n\r\n"
    );
    assert_eq!(
        head(ResponseFraming::Bodiless, true, true),
        "HTTP/1.1 200 OK\r\nx-a: 1\r\nconnection: keep-alive\r\ndate: D\r\n\r\n"
    );
    assert_eq!(
        head(ResponseFraming::Head, true, false),
        "HTTP/1.1 200 OK\r\ncontent-length: 999\r\nx-a: 1\r\ndate: D\r\n\r\n"
    );
}

#[test]
fn list_items_split_every_line_on_commas_and_skip_empty_items() {
    let values = [
        HeaderValue::from_static(" a ,, B"),
        HeaderValue::from_static(""),
        HeaderValue::from_static("c\t,"),
    ];
    let items: Vec<&[u8]> = list_items(&values).collect();
    assert_eq!(items, [&b"a"[..], b"B", b"c"]);
    assert!(has_token(&values, "b") && !has_token(&values, "d"));
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
        for wire in [name, &upper] {
            let (known, bit) = known_name(wire.as_bytes()).unwrap_or_else(|| panic!("{wire}"));
            let name = HeaderName::from_bytes(wire.as_bytes()).unwrap();
            assert_eq!(known, name, "{wire}");
            // The bit a known name adds is the one `Seen::note` would give it.
            let mut noted = Seen::default();
            noted.note(&name);
            assert_eq!(bit, noted, "{wire}");
        }
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
    }
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
}

#[test]
fn heads_read_by_another_parser_meet_the_same_rules() {
    let check = |method: Method, uri: &str, version: Version, lines: &[(&str, &str)]| {
        let mut headers = HeaderMap::new();
        for (k, v) in lines {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let uri: Uri = uri.parse().unwrap();
        check_parsed_request(&method, &uri, version, &mut headers).map(|()| headers)
    };
    let h11 = Version::HTTP_11;
    let h2 = Version::HTTP_2;
    assert!(check(Method::CONNECT, "a:443", h2, &[]).is_err());
    assert!(check(Method::GET, "*", h11, &[("host", "a")]).is_err());
    assert!(
        check(Method::GET, "/", h11, &[]).is_err(),
        "no Host on HTTP/1.1"
    );
    assert!(check(Method::GET, "/", h11, &[("host", "a"), ("host", "a")]).is_err());
    assert!(check(
        Method::POST,
        "/",
        h11,
        &[
            ("host", "a"),
            ("content-length", "1"),
            ("transfer-encoding", "chunked")
        ]
    )
    .is_err());
    assert!(check(
        Method::POST,
        "/",
        h2,
        &[("content-length", "1"), ("content-length", "1")]
    )
    .is_err());
    assert!(
        check(Method::GET, "https://a/", h2, &[("host", "b")]).is_err(),
        "Host differs from :authority"
    );
    assert!(check(Method::GET, "https://a/", h2, &[("host", "A")]).is_ok());
    assert!(
        check(Method::GET, "https://a:8443/", h2, &[("host", "a")]).is_ok(),
        "port left out"
    );
    assert!(
        check(Method::GET, "https://a/", h2, &[]).is_ok(),
        ":authority alone"
    );
    let kept = check(
        Method::GET,
        "/",
        h11,
        &[("host", "a"), ("x_tenant_id", "forged"), ("x-a", "1")],
    )
    .unwrap();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(kept.get("x_tenant_id").is_none());
}

#[test]
fn targets_go_to_the_backend_in_origin_form() {
    let of = |raw: &str| {
        let head = accepted(&format!("{raw}\r\nHost: a\r\n\r\n"));
        origin_form(&head.uri).into_owned()
    };
    assert_eq!(of("GET /p?q=1 HTTP/1.1"), "/p?q=1");
    assert_eq!(
        of("GET http://b.example?x HTTP/1.1"),
        "/?x",
        "found by the request_head fuzz target"
    );
    assert_eq!(of("GET http://b.example HTTP/1.1"), "/");
    assert_eq!(of("GET http://b.example/a/b?c HTTP/1.1"), "/a/b?c");
    assert_eq!(of("OPTIONS * HTTP/1.1"), "*");
}

#[test]
fn the_body_encoder_frames_as_announced_and_holds_a_length_to_its_word() {
    let mut out = Vec::new();
    let mut chunked = BodyEncoder::new(Coding::Chunked);
    chunked.data(&mut out, b"hello").unwrap();
    chunked.finish(&mut out).unwrap();
    assert_eq!(out, b"5\r\nhello\r\n0\r\n\r\n");
    let mut out = Vec::new();
    let mut sized = BodyEncoder::new(Coding::Length(5));
    sized.data(&mut out, b"hel").unwrap();
    assert_eq!(
        sized.finish(&mut Vec::new()),
        Err(Invalid("body shorter than its length"))
    );
    sized.data(&mut out, b"lo").unwrap();
    sized.finish(&mut out).unwrap();
    assert_eq!(out, b"hello");
    assert_eq!(
        sized.data(&mut out, b"!"),
        Err(Invalid("body longer than its length"))
    );
    let mut raw = BodyEncoder::new(Coding::UntilClose);
    let mut out = Vec::new();
    raw.data(&mut out, b"as is").unwrap();
    raw.finish(&mut out).unwrap();
    assert_eq!(out, b"as is");
}
