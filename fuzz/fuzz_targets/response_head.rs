//! Response head + framing. Invariants: no panic; the map handed on never carries framing
//! lines (bar one rewritten length on the answer to HEAD); no body on 1xx/204/304/HEAD; the head
//! the gateway writes to the client parses (httparse) with exactly the framing it chose.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tenantgate::http::codec::{self, Framing, ResponseFraming};

fuzz_target!(|input: &[u8]| {
    let Some((&flags, data)) = input.split_first() else {
        return;
    };
    let is_head = flags & 1 == 1;
    let mut buf = BytesMut::from(data);
    let Ok(Some(head)) = codec::parse_response_head(&mut buf, is_head, 128, 0) else {
        return;
    };
    assert!(!head.headers.contains_key("transfer-encoding"));
    // At most one length line, and only the one the gateway would write itself: the framing's
    // length in plain digits (or, on the answer to HEAD, the validated length).
    let lengths: Vec<_> = head.headers.get_all("content-length").iter().collect();
    if let [line] = lengths[..] {
        assert!(codec::status_has_body(head.status), "a length on a bodiless status");
        let digits = line.as_bytes();
        assert!(matches!(digits, [b'0'] | [b'1'..=b'9', ..]) && digits.iter().all(u8::is_ascii_digit));
        match head.framing {
            Framing::Length(n) => assert_eq!(digits, n.to_string().as_bytes()),
            Framing::Empty => assert!(is_head || digits == b"0"),
            other => panic!("a length line beside {other:?}"),
        }
    } else {
        assert!(lengths.is_empty(), "{lengths:?}");
    }
    if is_head || !codec::status_has_body(head.status) {
        assert_eq!(head.framing, Framing::Empty);
    }
    let framing = match head.framing {
        _ if !codec::status_has_body(head.status) => ResponseFraming::Bodiless,
        _ if is_head => ResponseFraming::Head,
        Framing::Empty => ResponseFraming::Length(0),
        Framing::Length(n) => ResponseFraming::Length(n),
        Framing::Chunked(_) => ResponseFraming::Chunked,
        Framing::UntilClose => ResponseFraming::UntilClose,
    };
    let keep_alive = flags & 2 == 2;
    let mut out = Vec::new();
    codec::write_response_head(&mut out, head.status, &head.headers, framing, keep_alive, false, b"d");
    let mut lines = [httparse::EMPTY_HEADER; 256];
    let mut parsed = httparse::Response::new(&mut lines);
    match parsed.parse(&out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len()),
        other => panic!("the gateway's head does not parse: {other:?}"),
    }
    assert_eq!(parsed.code, Some(head.status.as_u16()));
    let count = |name: &str| parsed.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).count();
    match framing {
        ResponseFraming::Length(_) => assert_eq!((count("content-length"), count("transfer-encoding")), (1, 0)),
        ResponseFraming::Chunked => assert_eq!((count("content-length"), count("transfer-encoding")), (0, 1)),
        ResponseFraming::Bodiless | ResponseFraming::UntilClose => {
            assert_eq!((count("content-length"), count("transfer-encoding")), (0, 0))
        }
        ResponseFraming::Head => assert!(count("content-length") <= 1 && count("transfer-encoding") == 0),
    }
    assert_eq!(count("connection"), usize::from(!keep_alive));
});
