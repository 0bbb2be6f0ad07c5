//! Tenant documents. Invariants: any JSON is a valid tenant, a misconfigured one (with a
//! reason), or refused with a reason; never a panic; a valid tenant's key is the document's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenantgate::tenants::tenant::TenantRecord;

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let key = doc.get("apiKey").and_then(|k| k.as_str()).map(str::to_owned);
    match TenantRecord::from_json(doc) {
        Ok(record) => assert_eq!(Some(&**record.key()), key.as_deref()),
        Err(reason) => assert!(!reason.is_empty()),
    }
});
