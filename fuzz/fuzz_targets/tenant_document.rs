//! Tenant documents. Invariants: any JSON is a valid tenant, a misconfigured one (with a
//! reason), or refused with a reason; never a panic; a valid tenant's key is the document's;
//! its retired keys are valid keys, none its own; the audit line of the document going away
//! never shows its connection string.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenantgate::tenants::tenant::{is_valid_key, TenantRecord};

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let key = doc.get("apiKey").and_then(|k| k.as_str()).map(str::to_owned);
    let secret = doc
        .pointer("/providerConfig/connectionString")
        .and_then(|s| s.as_str())
        .filter(|s| s.len() >= 16)
        .map(str::to_owned);
    let gone = tenantgate::tenants::audit::describe(&Some(std::sync::Arc::new(doc.clone())), &None);
    if let (Some(secret), Some(gone)) = (secret, gone) {
        // (Only when the secret appears nowhere else in the document.)
        if doc.to_string().matches(&*secret).count() == 1 {
            assert!(!gone.changes.contains(&*secret), "{}", gone.changes);
        }
    }
    match TenantRecord::from_json(doc) {
        Ok(record) => {
            assert_eq!(Some(&**record.key()), key.as_deref());
            if let TenantRecord::Valid(t) = record {
                for r in t.retired_keys.iter() {
                    assert!(is_valid_key(r.key.as_bytes()) && r.key != t.key);
                }
            }
        }
        Err(reason) => assert!(!reason.is_empty()),
    }
});
