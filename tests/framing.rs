//! The HTTP/1.1 framing contract (DESIGN.md, "HTTP/1.1 framing") end to end: the gateway is the
//! only author of framing, so every request the backend receives is one the client sent and the
//! gateway checked, with the framing the gateway wrote. The backend here is hyper's strict
//! HTTP/1.1 server recording what it parses ([`Recorder`]).

mod common;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const A: &str = "https://client-a.com";

/// A gateway whose tenant `tnt_a` forwards to a recording backend.
async fn recorded_gateway() -> (Gateway, Recorder) {
    let recorder = Recorder::start().await;
    let mut t = tenant("tnt_a", &[A], 5);
    t["upstream"] = json!(recorder.url());
    (Gateway::start(&[t], "").await, recorder)
}

/// Writes `bytes` on a fresh connection and reads one response (framed by `Content-Length`, as
/// the recorder's and the gateway's own answers are), or what came before the connection closed.
async fn exchange(gw: &Gateway, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(gw.running.addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !complete_response(&answer) {
        match tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Whether `bytes` hold a whole response head and the `Content-Length` bytes after it.
fn complete_response(bytes: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(len)) = resp.parse(bytes) else {
        return false;
    };
    let length = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
        .unwrap_or(0);
    bytes.len() >= len + length
}

/// The request the attack suite found: `Connection` names `Content-Length`, the header rules
/// dropped it after the forward stage had decided the body needed no chunking, and the body
/// reached the backend as a second request that passed no check.
#[tokio::test]
async fn connection_cannot_remove_the_content_length_the_gateway_framed_by() {
    let (gw, recorder) = recorded_gateway().await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a.example\r\nX-Tenant-ID: tnt_forged\r\n\r\n";
    assert_eq!(smuggled.len(), 68);
    for connection in [
        "Content-Length",
        "content-length, keep-alive",
        "close, Content-Length",
    ] {
        let attack = format!(
            "POST / HTTP/1.1\r\nHost: a.example\r\nX-Tenant-ID: tnt_a\r\nOrigin: {A}\r\nConnection: {connection}\r\nContent-Length: 68\r\n\r\n{smuggled}"
        );
        let before = recorder.requests().len();
        let text = exchange(&gw, attack.as_bytes()).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{connection}: {text}");
        let seen = recorder.requests();
        let new = &seen[before..];
        assert_eq!(new.len(), 1, "{connection}: the backend saw {new:#?}");
        assert_eq!(new[0].method, "POST");
        assert_eq!(&new[0].body[..], smuggled.as_bytes(), "{connection}");
        assert_eq!(
            new[0]
                .headers
                .get_all("content-length")
                .iter()
                .collect::<Vec<_>>(),
            ["68"],
            "{connection}: the gateway writes the length it framed the body by"
        );
        assert!(new[0].headers.get("transfer-encoding").is_none());
    }
    // Nothing under the forged key ever reached the backend.
    assert!(recorder.requests().iter().all(|r| r.target != "/smuggled"));
}

/// The same with chunked coding: `Connection: Transfer-Encoding` cannot turn a chunked body
/// into the start of the next request either.
#[tokio::test]
async fn connection_cannot_remove_the_chunked_coding_the_gateway_framed_by() {
    let (gw, recorder) = recorded_gateway().await;
    let attack = format!(
        "POST / HTTP/1.1\r\nHost: a.example\r\nX-Tenant-ID: tnt_a\r\nOrigin: {A}\r\nConnection: Transfer-Encoding, close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    let text = exchange(&gw, attack.as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let seen = recorder.requests();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(&seen[0].body[..], b"hello");
    // An empty body declared with `Content-Length: 0` keeps its length on the way.
    let attack = format!(
        "POST /empty HTTP/1.1\r\nHost: a.example\r\nX-Tenant-ID: tnt_a\r\nOrigin: {A}\r\nConnection: Content-Length, close\r\nContent-Length: 0\r\n\r\n"
    );
    let text = exchange(&gw, attack.as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let seen = recorder.requests();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(
        seen[1]
            .headers
            .get_all("content-length")
            .iter()
            .collect::<Vec<_>>(),
        ["0"]
    );
}

const HEAD_A: &str = "Host: a.example\r\nX-Tenant-ID: tnt_a\r\nOrigin: https://client-a.com\r\n";

/// Every ambiguous or invalid head of the contract: `400 bad_request`, the connection closed,
/// nothing forwarded — not even the valid request pipelined behind it.
#[tokio::test]
async fn ambiguous_heads_are_refused_and_nothing_behind_them_is_served() {
    let (gw, recorder) = recorded_gateway().await;
    let tail = format!("GET /smuggled HTTP/1.1\r\n{HEAD_A}\r\n");
    for (what, head) in [
        ("CL list", format!("POST / HTTP/1.1\r\n{HEAD_A}Content-Length: 5, 5\r\n\r\nhello")),
        ("CL repeated", format!("POST / HTTP/1.1\r\n{HEAD_A}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello")),
        ("CL and TE", format!("POST / HTTP/1.1\r\n{HEAD_A}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
        ("TE not chunked", format!("POST / HTTP/1.1\r\n{HEAD_A}Transfer-Encoding: identity\r\n\r\n")),
        ("TE obfuscated", format!("POST / HTTP/1.1\r\n{HEAD_A}Transfer-Encoding: chunked, identity\r\n\r\n")),
        ("TE on HTTP/1.0", format!("POST / HTTP/1.0\r\n{HEAD_A}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
        ("no Host", "GET / HTTP/1.1\r\nX-Tenant-ID: tnt_a\r\nOrigin: https://client-a.com\r\n\r\n".to_string()),
        ("two Hosts", format!("GET / HTTP/1.1\r\nHost: b.example\r\n{HEAD_A}\r\n")),
        ("invalid Host", "GET / HTTP/1.1\r\nHost: a.example/evil\r\nX-Tenant-ID: tnt_a\r\nOrigin: https://client-a.com\r\n\r\n".to_string()),
        ("CONNECT", format!("CONNECT a.example:443 HTTP/1.1\r\n{HEAD_A}\r\n")),
        ("asterisk on GET", format!("GET * HTTP/1.1\r\n{HEAD_A}\r\n")),
        ("authority-form on GET", format!("GET a.example:80 HTTP/1.1\r\n{HEAD_A}\r\n")),
        ("obs-fold", format!("GET / HTTP/1.1\r\n{HEAD_A}X-A: 1\r\n 2\r\n\r\n")),
        ("NUL in a value", format!("GET / HTTP/1.1\r\n{HEAD_A}X-A: 1\x002\r\n\r\n")),
        ("bare CR in a value", format!("GET / HTTP/1.1\r\n{HEAD_A}X-A: 1\r2\r\n\r\n")),
        ("space before colon", format!("GET / HTTP/1.1\r\n{HEAD_A}Content-Length : 5\r\n\r\nhello")),
        ("fragment", format!("GET /a#b HTTP/1.1\r\n{HEAD_A}\r\n")),
    ] {
        let text = exchange_to_close(&gw, format!("{head}{tail}").as_bytes()).await;
        assert!(text.starts_with("HTTP/1.1 400 "), "{what}: {text}");
        assert!(text.contains("\"code\":\"bad_request\""), "{what}: {text}");
        assert!(text.contains("connection: close\r\n"), "{what}: {text}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{what}: one answer only: {text}");
    }
    assert!(recorder.requests().is_empty(), "{:#?}", recorder.requests());
}

/// Writes `bytes` and reads until the gateway closes the connection.
async fn exchange_to_close(gw: &Gateway, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(gw.running.addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        s.read_to_end(&mut answer),
    )
    .await
    .expect("the gateway closes the connection")
    .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// A chunked body that breaks the grammar after its head was forwarded: the client gets `400`
/// (its fault, not the backend's), the connection closes, the backend connection is discarded
/// rather than pooled mid-message, and the next client is served normally.
#[tokio::test]
async fn a_broken_chunked_body_is_the_clients_400_and_the_backend_connection_is_discarded() {
    let (gw, recorder) = recorded_gateway().await;
    for (what, body) in [
        ("sign", "+5\r\nhello\r\n0\r\n\r\n"),
        ("prefix", "0x5\r\nhello\r\n0\r\n\r\n"),
        ("space", "5 \r\nhello\r\n0\r\n\r\n"),
        ("bare LF", "5\nhello\r\n0\r\n\r\n"),
        ("no CRLF after data", "5\r\nhelloXX\r\n0\r\n\r\n"),
        ("bad extension", "5;a=\"b\r\nhello\r\n0\r\n\r\n"),
        ("bad trailer", "5\r\nhello\r\n0\r\nx-t : 1\r\n\r\n"),
        ("overflow", "fffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
    ] {
        let text = exchange_to_close(
            &gw,
            format!("POST /up HTTP/1.1\r\n{HEAD_A}Transfer-Encoding: chunked\r\n\r\n{body}GET /smuggled HTTP/1.1\r\n{HEAD_A}\r\n").as_bytes(),
        )
        .await;
        assert!(text.starts_with("HTTP/1.1 400 "), "{what}: {text}");
        assert!(text.contains("\"code\":\"bad_request\""), "{what}: {text}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{what}: {text}");
    }
    // The backend saw no complete request, and none under the path pipelined behind.
    assert!(recorder.requests().iter().all(|r| r.target != "/smuggled"));
    assert!(recorder.requests().is_empty(), "{:#?}", recorder.requests());
    assert_eq!(gw.in_flight("tnt_a").await, 0);
    let metrics = get(&gw.admin_url("/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        !text.lines().any(|l| l.contains("upstream_unavailable")
            && !l.starts_with('#')
            && !l.ends_with(" 0")),
        "a client's broken body is no backend failure:\n{text}"
    );
    // A fresh request is served (on a fresh backend connection).
    let before = recorder
        .connections
        .load(std::sync::atomic::Ordering::SeqCst);
    let text = exchange(
        &gw,
        format!("POST /ok HTTP/1.1\r\n{HEAD_A}Content-Length: 2\r\n\r\nhi").as_bytes(),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let seen = recorder.requests();
    assert_eq!((seen.len(), &seen[0].body[..]), (1, &b"hi"[..]));
    assert!(
        recorder
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
            > before
            || before == 0
    );
}

/// Header names with `_` are dropped (as nginx does): a CGI-style backend would read
/// `X_Tenant_ID` as the tenant header the gateway sets.
#[tokio::test]
async fn underscore_names_are_dropped_and_absolute_form_hosts_are_the_requests_host() {
    let (gw, recorder) = recorded_gateway().await;
    let text = exchange(
        &gw,
        b"GET http://real.example:8080/p?q=1 HTTP/1.1\r\nHost: other.example\r\nX-Tenant-ID: tnt_a\r\nX_Tenant_ID: forged\r\nX_Forwarded_Host: evil\r\nOrigin: https://client-a.com\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let seen = recorder.requests();
    assert_eq!(seen[0].target, "/p?q=1", "origin-form towards the backend");
    assert_eq!(seen[0].headers["x-forwarded-host"], "real.example:8080");
    assert_eq!(
        seen[0]
            .headers
            .get_all("x-tenant-id")
            .iter()
            .collect::<Vec<_>>(),
        ["tnt_a"]
    );
    assert!(
        seen[0].headers.keys().all(|n| !n.as_str().contains('_')),
        "{:?}",
        seen[0].headers
    );
    // Connection cannot remove the host, the tenant header or an injected header either.
    let text = exchange(
        &gw,
        format!("GET /c HTTP/1.1\r\n{HEAD_A}Connection: host, x-tenant-id, x-forwarded-for, x-request-id, x-tenant-provider-region, x-custom\r\nX-Custom: gone\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let r = &recorder.requests()[1];
    for name in [
        "host",
        "x-tenant-id",
        "x-forwarded-for",
        "x-request-id",
        "x-tenant-provider-region",
        "x-forwarded-host",
    ] {
        assert_eq!(
            r.headers.get_all(name).iter().count(),
            1,
            "{name}: {:?}",
            r.headers
        );
    }
    assert_eq!(r.headers["x-forwarded-host"], "a.example");
    assert!(
        r.headers.get("x-custom").is_none(),
        "an end-to-end header it names goes"
    );
    // An absolute-form target without a path goes on with `/` (found by the request_head fuzz
    // target: it went as `GET ?x HTTP/1.1`, which no backend parses).
    let text = exchange(
        &gw,
        format!("GET http://b.example?x HTTP/1.1\r\n{HEAD_A}\r\n").as_bytes(),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let r = &recorder.requests()[2];
    assert_eq!(
        (
            r.target.as_str(),
            r.headers["x-forwarded-host"].to_str().unwrap()
        ),
        ("/?x", "b.example")
    );
}

/// HTTP/2 from clients becomes HTTP/1.1 towards the backend under the same rules: the request's
/// host is its `:authority` (there is no `Host` line to copy), and the framing is the gateway's.
#[tokio::test]
async fn http2_requests_reach_the_backend_framed_by_the_gateway_with_their_authority() {
    let (gw, recorder) = recorded_gateway().await;
    let req = http::Request::builder()
        .method("POST")
        .uri(gw.url("/h2?x=1"))
        .header("x-tenant-id", "tnt_a")
        .header("origin", A)
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"hello",
        )))
        .unwrap();
    let resp = h2_client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = recorder.requests();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    let r = &seen[0];
    assert_eq!(
        (r.method.as_str(), r.target.as_str(), &r.body[..]),
        ("POST", "/h2?x=1", &b"hello"[..])
    );
    assert_eq!(r.headers["x-forwarded-host"], gw.running.addr.to_string());
    assert_eq!(
        r.headers
            .get_all("content-length")
            .iter()
            .collect::<Vec<_>>(),
        ["5"]
    );
}

/// One HEADERS frame (and optionally a DATA frame) on stream 1 of a new HTTP/2 connection, as
/// raw frames (HPACK literals without indexing), so that a client can send what hyper's client
/// never would. Returns the frame types the gateway sent back on the stream or connection.
async fn raw_h2(gw: &Gateway, headers: &[(&str, &str)], data: Option<&[u8]>) -> Vec<u8> {
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }
    let mut block = Vec::new();
    for (name, value) in headers {
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    let end_stream = if data.is_none() { 0x1 } else { 0 };
    out.extend(frame(1, 0x4 | end_stream, 1, &block));
    if let Some(data) = data {
        out.extend(frame(0, 0x1, 1, data));
    }
    let mut s = TcpStream::connect(gw.running.addr).await.unwrap();
    s.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    let mut kinds = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut buf = [0u8; 4096];
    loop {
        // Frames: 9-byte header, then the payload.
        while got.len() >= 9 {
            let len = u32::from_be_bytes([0, got[0], got[1], got[2]]) as usize;
            if got.len() < 9 + len {
                break;
            }
            let kind = got[3];
            let stream = u32::from_be_bytes([got[5], got[6], got[7], got[8]]) & 0x7fff_ffff;
            if stream == 1 || kind == 7 {
                kinds.push(kind);
            }
            got.drain(..9 + len);
        }
        if kinds.iter().any(|k| matches!(k, 1 | 3 | 7)) {
            return kinds;
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return kinds,
        }
    }
}

/// Malformed HTTP/2 requests (RFC 9113 §8.2.2, §8.1.1) never reach the backend: hyper's HTTP/2
/// server resets the stream, or the gateway answers 400.
#[tokio::test]
async fn malformed_http2_requests_are_refused_and_never_forwarded() {
    let (gw, recorder) = recorded_gateway().await;
    let base = [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/h2"),
        (":authority", "a.example"),
        ("x-tenant-id", "tnt_a"),
        ("origin", A),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut h = base.to_vec();
        h.extend_from_slice(extra);
        h
    };
    // The happy path first: the raw client is understood.
    let kinds = raw_h2(&gw, &base, None).await;
    assert!(kinds.contains(&1), "{kinds:?}");
    assert_eq!(recorder.requests().len(), 1);
    for (what, headers, data) in [
        ("connection", with(&[("connection", "keep-alive")]), None),
        ("keep-alive", with(&[("keep-alive", "timeout=5")]), None),
        (
            "transfer-encoding",
            with(&[("transfer-encoding", "chunked")]),
            None,
        ),
        ("upgrade", with(&[("upgrade", "websocket")]), None),
        ("te other than trailers", with(&[("te", "gzip")]), None),
        (
            "CR LF in a value",
            with(&[("x-a", "1\r\nx-tenant-id: forged")]),
            None,
        ),
        ("NUL in a value", with(&[("x-a", "1\u{0}2")]), None),
        ("uppercase name", with(&[("X-A", "1")]), None),
        (
            "Host differs from :authority",
            with(&[("host", "b.example")]),
            None,
        ),
        (
            "content-length above DATA",
            with(&[("content-length", "10")]),
            Some(&b"hello"[..]),
        ),
        (
            "content-length below DATA",
            with(&[("content-length", "2")]),
            Some(&b"hello"[..]),
        ),
    ] {
        let before = recorder.requests().len();
        let kinds = raw_h2(&gw, &headers, data).await;
        assert!(
            kinds.iter().any(|k| matches!(k, 1 | 3 | 7)),
            "{what}: no answer: {kinds:?}"
        );
        let seen = recorder.requests();
        // A request whose body was cut short by a reset may have reached the backend's head
        // parser, but never as a complete request.
        assert_eq!(
            seen.len(),
            before,
            "{what}: forwarded: {:#?}",
            &seen[before..]
        );
    }
}

/// A backend answering every request on a connection with the canned response its path picks.
async fn canned_backend() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut buf).await {
                            Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&seen[..end]).to_string();
                    seen.drain(..end + 4);
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    let answer: &[u8] = match path.as_str() {
                        "/204" => b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n",
                        "/304" => b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\nx-a: 1\r\n\r\n",
                        "/head" => b"HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\nx-a: 1\r\n\r\n",
                        "/head-bad" => b"HTTP/1.1 200 OK\r\ncontent-length: 7, 8\r\n\r\n",
                        "/chunked-and-length" => b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                        _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                    };
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Towards the client the gateway writes the framing too: no length (nor body) on 204 and 304,
/// the answer to HEAD with one validated length, chunked instead of a length the backend sent
/// beside chunked coding.
#[tokio::test]
async fn responses_are_framed_by_the_gateway_and_bodiless_ones_carry_no_length() {
    let mut t = tenant("tnt_a", &[A], 5);
    t["upstream"] = json!(format!("http://{}", canned_backend().await));
    let gw = Gateway::start(&[t], "").await;
    let ask = |method: &str, path: &str| format!("{method} {path} HTTP/1.1\r\n{HEAD_A}\r\n");
    for path in ["/204", "/304"] {
        // Then a second request on the same connection: nothing of the first is left over.
        let text = exchange_to_close(
            &gw,
            format!(
                "{}{}",
                ask("GET", path),
                ask("GET", "/ok").replace("Origin", "Connection: close\r\nOrigin")
            )
            .as_bytes(),
        )
        .await;
        let first = &text[..text
            .find("HTTP/1.1 200")
            .unwrap_or_else(|| panic!("{path}: {text}"))];
        assert!(first.contains("x-a: 1\r\n"), "{path}: {first}");
        assert!(
            !first.to_ascii_lowercase().contains("content-length"),
            "{path}: {first}"
        );
        assert!(
            !first.to_ascii_lowercase().contains("transfer-encoding"),
            "{path}: {first}"
        );
        assert!(text.ends_with("ok"), "{path}: {text}");
    }
    let text = exchange(&gw, ask("HEAD", "/head").as_bytes()).await;
    assert!(
        text.starts_with("HTTP/1.1 200") && text.contains("content-length: 7\r\n"),
        "{text}"
    );
    assert_eq!(text.matches("content-length").count(), 1, "{text}");
    let text = exchange(&gw, ask("HEAD", "/head-bad").as_bytes()).await;
    assert!(
        text.starts_with("HTTP/1.1 502"),
        "a conflicting length is no answer: {text}"
    );
    let text = exchange(&gw, ask("GET", "/chunked-and-length").as_bytes()).await;
    assert!(
        text.contains("content-length: 2\r\n") || text.contains("transfer-encoding: chunked\r\n"),
        "{text}"
    );
    assert!(!text.contains("content-length: 100"), "{text}");
}

/// A tenant header of the operator's own naming (`[tenancy] header`) travels on to the backend
/// even when `Connection` names it.
#[tokio::test]
async fn connection_cannot_remove_a_configured_tenant_header() {
    let recorder = Recorder::start().await;
    let mut t = tenant("tnt_a", &[A], 5);
    t["upstream"] = json!(recorder.url());
    let gw = Gateway::start(&[t], "[tenancy]\nheader = \"X-App-Key\"").await;
    let text = exchange(
        &gw,
        format!("GET /k HTTP/1.1\r\nHost: a.example\r\nX-App-Key: tnt_a\r\nOrigin: {A}\r\nConnection: X-App-Key, X-Other\r\nX-Other: gone\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let r = &recorder.requests()[0];
    assert_eq!(
        r.headers.get_all("x-app-key").iter().collect::<Vec<_>>(),
        ["tnt_a"]
    );
    assert_eq!(r.headers["x-tenant-id"], "tnt_a");
    assert!(r.headers.get("x-other").is_none());
}
