//! Request head + framing decision. Invariants: no panic; an accepted head has one framing;
//! the head the gateway would forward (its request line, the surviving lines, the framing
//! line it writes itself) parses again, strictly, to the same method, target and framing.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tenantgate::http::codec::{self, BodyFraming, Framing};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let Ok(Some(head)) = codec::parse_request_head(&mut buf, 100, 0) else {
        return;
    };
    assert!(head.raw.len() + buf.len() == data.len(), "the head is split off, the rest kept");
    if head.headers.contains_key("transfer-encoding") {
        assert_eq!(head.framing, Framing::CHUNKED);
        assert!(!head.headers.contains_key("content-length"));
    }
    let framing = match head.framing {
        Framing::Empty => BodyFraming::None,
        Framing::Length(n) => BodyFraming::Length(n),
        Framing::Chunked(_) => BodyFraming::Chunked,
        Framing::UntilClose => panic!("a request is never read until close"),
    };
    let mut out = Vec::new();
    codec::request_line(&mut out, &head.method, &codec::origin_form(&head.uri));
    codec::header_line(&mut out, &http::header::HOST, &http::HeaderValue::from_static("backend"));
    for (name, value) in &head.headers {
        let framing_line = name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING;
        if name != http::header::HOST && !framing_line && !codec::is_hop_by_hop(name) {
            codec::header_line(&mut out, name, value);
        }
    }
    codec::end_request_head(&mut out, framing);
    let mut again = BytesMut::from(&out[..]);
    let reparsed = match codec::parse_request_head(&mut again, 200, 0) {
        Ok(Some(h)) => h,
        other => panic!("the forwarded head does not parse: {other:?}\n{}", String::from_utf8_lossy(&out)),
    };
    assert!(again.is_empty());
    assert_eq!(reparsed.method, head.method);
    assert_eq!(reparsed.uri, *codec::origin_form(&head.uri));
    let expected = match framing {
        BodyFraming::None => Framing::Empty,
        BodyFraming::Length(n) => Framing::length(n),
        BodyFraming::Chunked => Framing::CHUNKED,
    };
    assert_eq!(reparsed.framing, expected);
});
