//! The config file. Invariant: any text is a config or an error naming what is wrong; never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = tenantgate::run::config::Config::parse(text, "fuzz.toml") {
        assert!(!e.to_string().is_empty());
    }
});
