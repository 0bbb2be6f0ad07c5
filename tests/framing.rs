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
