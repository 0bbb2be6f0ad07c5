//! Chunked body decoding. Invariants: no panic; the outcome (data, end, error) does not depend
//! on how the bytes arrive (the first byte picks a split point); the bytes after a body's end
//! are left untouched for the next message; a decoded body encoded again by the gateway's own
//! writer decodes to the same data.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tenantgate::http::codec::{self, Decoded, Framing};

/// Decodes `parts` fed one after another: the data, and whether the body ended (with what
/// was left in the buffer), or the error.
fn run(parts: &[&[u8]]) -> Result<(Vec<u8>, Option<Vec<u8>>), codec::Invalid> {
    let (mut buf, mut framing, mut data) = (BytesMut::new(), Framing::CHUNKED, Vec::new());
    for (i, part) in parts.iter().enumerate() {
        buf.extend_from_slice(part);
        loop {
            match codec::decode(&mut buf, &mut framing)? {
                Decoded::Data(d) => {
                    assert!(!d.is_empty());
                    data.extend_from_slice(&d)
                }
                Decoded::End => {
                    // What follows the body: the rest of this part and the parts not fed yet.
                    let mut rest = buf.to_vec();
                    rest.extend(parts[i + 1..].iter().flat_map(|p| p.iter()));
                    return Ok((data, Some(rest)));
                }
                Decoded::More => break,
            }
        }
    }
    Ok((data, None))
}

fuzz_target!(|input: &[u8]| {
    let Some((&split, body)) = input.split_first() else {
        return;
    };
    let whole = run(&[body]);
    let at = usize::from(split) % (body.len() + 1);
    let split = run(&[&body[..at], &body[at..]]);
    match (&whole, &split) {
        (Ok((_, Some(_))), Ok((_, Some(_)))) | (Err(_), Err(_)) => assert_eq!(whole, split),
        // Unfinished in one run and an error in the other cannot both happen; data seen so far
        // agrees whatever the split.
        (Ok((a, None)), Ok((b, None))) => assert_eq!(a, b),
        _ => panic!("split at {at} changed the outcome: {whole:?} vs {split:?}"),
    }
    if let Ok((data, Some(rest))) = whole {
        assert!(body.ends_with(&rest), "the next message's bytes are untouched");
        let mut encoded = Vec::new();
        for piece in data.chunks(1 + usize::from(input[0]) % 64) {
            codec::encode_chunk(&mut encoded, piece);
        }
        encoded.extend_from_slice(codec::LAST_CHUNK);
        let again = run(&[&encoded]).expect("the gateway's own chunked coding decodes");
        assert_eq!(again, (data, Some(Vec::new())));
    }
});
