//! Tenant lifecycle (DESIGN.md "Tenant lifecycle"): key rotation with retired keys, per-tenant
//! limits, context injection from document fields, the audit log, and the environment a
//! Kubernetes pod gives the gateway. Real sockets on 127.0.0.1:0; the MongoDB-wire store's side
//! of rotation and audit is in tests/mongodb.rs.

mod common;

use std::process::{Command, Stdio};

use common::*;
use serde_json::json;

const A: &str = "https://a.example";

/// Kubernetes sets `TENANTGATE_PORT`, `TENANTGATE_SERVICE_HOST`, … in every pod of a namespace
/// with a Service named `tenantgate`: the gateway starts and warns once. A typo in a known
/// section still stops it with exit 64, naming the variable.
#[tokio::test]
async fn kubernetes_service_variables_do_not_stop_the_gateway_but_typos_do() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.json");
    write_json(&tenants, &json!([tenant("tnt_a", &[A], 5)]));
    let cfg = write_config(dir.path(), &file_config(&backend.url(), &tenants));
    let (mut child, _rx, seen, addr) = run_binary_json_with_env(
        &cfg,
        &[
            ("TENANTGATE_PORT", "tcp://10.0.0.1:8080"),
            ("TENANTGATE_SERVICE_HOST", "10.0.0.1"),
        ],
    );
    let r = get(
        &format!("http://{addr}/x"),
        &[("x-tenant-id", "tnt_a"), ("origin", A)],
    )
    .await;
    assert_eq!(r.status, 200, "the gateway serves");
    let warnings: Vec<&String> = seen
        .iter()
        .filter(|l| l.contains("ignoring environment variables"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning: {seen:#?}");
    assert!(
        warnings[0].contains("TENANTGATE_PORT") && warnings[0].contains("TENANTGATE_SERVICE_HOST"),
        "{}",
        warnings[0]
    );
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();

    let out = Command::new(env!("CARGO_BIN_EXE_tenantgate"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("TENANTGATE_PORT", "tcp://10.0.0.1:8080")
        .env("TENANTGATE_STORE_URL", "mongodb://db")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TENANTGATE_STORE_URL"), "{stderr}");
    assert!(
        !stderr.contains("TENANTGATE_PORT"),
        "only the culprit is named: {stderr}"
    );
}

/// An RFC 3339 instant `secs` seconds from now, whole seconds (at least `secs - 1` ahead).
fn from_now(secs: u64) -> (String, std::time::SystemTime) {
    let at = std::time::SystemTime::now() + std::time::Duration::from_secs(secs);
    let text = tenantgate::tenants::tenant::format_instant(at);
    (
        text.clone(),
        tenantgate::tenants::tenant::parse_instant(&text).unwrap(),
    )
}

/// A retired key works until its `until` with `Deprecation` and `Sunset` on every response
/// (errors too), reaches the backend as the tenant's current key, shares the tenant's slots,
/// and from `until` on is unknown — even while the cache still holds it.
#[tokio::test]
async fn a_retired_key_works_until_its_sunset_then_is_unknown() {
    let (until, until_at) = from_now(3);
    let mut a = tenant("tnt_a", &[A], 5);
    a["retiredKeys"] =
        json!([{"key": "tnt_a_2025", "until": until, "since": "2026-12-01T00:00:00Z"}]);
    let gw = Gateway::start(&[a, tenant("tnt_b", &[A], 5)], "").await;
    let c = client();

    let r = as_tenant(&c, &gw.url("/x"), "tnt_a_2025", A).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.seen("x-tenant-id"),
        ["tnt_a"],
        "the backend sees the current key"
    );
    assert_eq!(r.header("deprecation"), Some("@1796083200"));
    assert_eq!(
        r.header("sunset").unwrap(),
        httpdate::fmt_http_date(until_at)
    );
    let exposed: Vec<&str> = r
        .headers
        .get_all("access-control-expose-headers")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(exposed.contains(&"Deprecation, Sunset"), "{exposed:?}");
    let wrong_origin = as_tenant(&c, &gw.url("/x"), "tnt_a_2025", "https://evil.example").await;
    assert_eq!(wrong_origin.error_code(), "origin_not_allowed");
    assert!(
        wrong_origin.header("sunset").is_some(),
        "refusals carry it too"
    );

    let current = as_tenant(&c, &gw.url("/x"), "tnt_a", A).await;
    assert_eq!(current.status, 200);
    assert_eq!(current.header("deprecation"), None);
    assert_eq!(current.header("sunset"), None);
    let other = as_tenant(&c, &gw.url("/x"), "tnt_b", A).await;
    assert_eq!(other.header("sunset"), None);

    // One tenant, one set of slots, whichever key a request names.
    let slow = |key: &'static str| {
        let c = c.clone();
        let url = gw.url("/slow?ms=1500");
        tokio::spawn(async move { as_tenant(&c, &url, key, A).await.status })
    };
    let held: Vec<_> = (0..5)
        .map(|i| slow(if i % 2 == 0 { "tnt_a" } else { "tnt_a_2025" }))
        .collect();
    eventually(5, || async { gw.in_flight("tnt_a").await == 5 }).await;
    assert_eq!(
        as_tenant(&c, &gw.url("/x"), "tnt_a_2025", A)
            .await
            .error_code(),
        "tenant_concurrency_exceeded"
    );
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }

    // Past `until` (the cache's 30 s TTL has not run out): unknown.
    let wait = until_at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(wait + std::time::Duration::from_millis(50)).await;
    let r = as_tenant(&c, &gw.url("/x"), "tnt_a_2025", A).await;
    assert_eq!(r.error_code(), "tenant_unknown");
    assert_eq!(r.header("sunset"), None);
    assert_eq!(as_tenant(&c, &gw.url("/x"), "tnt_a", A).await.status, 200);
}

/// `tenants rotate` on the file store: the new key is printed and works at once (the gateway
/// polls the file), the old one keeps working with `Sunset` at the end of the grace period;
/// clashes are refused naming both tenants, by `put`, `import` and `rotate` alike.
#[tokio::test]
async fn tenants_rotate_and_key_clashes_on_the_file_store() {
    let gw = Gateway::start(&[tenant("tnt_a", &[A], 5), tenant("tnt_b", &[A], 5)], "").await;
    let cfg = gw.dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\nkind = \"file\"\npath = {:?}\n",
            gw.tenants_path.display().to_string()
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let c = client();
    assert_eq!(as_tenant(&c, &gw.url("/x"), "tnt_a", A).await.status, 200);

    let (code, out, err) = tenantgate(
        &[
            "tenants", "rotate", "tnt_a", "--grace", "1h", "--config", cfg,
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let new_key = out.trim().to_string();
    assert!(
        new_key.starts_with("tnt_") && new_key.len() == 28,
        "{new_key:?}"
    );
    assert!(err.contains("tnt_a keeps working until"), "{err}");
    eventually(5, || async {
        as_tenant(&c, &gw.url("/x"), &new_key, A).await.status == 200
    })
    .await;
    let fresh = as_tenant(&c, &gw.url("/x"), &new_key, A).await;
    assert_eq!(fresh.seen("x-tenant-id"), [new_key.as_str()]);
    assert_eq!(fresh.header("sunset"), None);
    let old = as_tenant(&c, &gw.url("/x"), "tnt_a", A).await;
    assert_eq!(old.status, 200);
    assert_eq!(old.seen("x-tenant-id"), [new_key.as_str()]);
    let sunset = httpdate::parse_http_date(old.header("sunset").unwrap()).unwrap();
    let ahead = sunset.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(
        ahead > std::time::Duration::from_secs(3590)
            && ahead <= std::time::Duration::from_secs(3600),
        "{ahead:?}"
    );
    assert!(old.header("deprecation").unwrap().starts_with('@'));

    // Rotating again with a chosen key keeps both former keys retired.
    let (code, out, err) = tenantgate(
        &[
            "tenants",
            "rotate",
            &new_key,
            "--new-key",
            "tnt_a_v3",
            "--config",
            cfg,
        ],
        None,
    );
    assert_eq!((code, out.trim()), (0, "tnt_a_v3"), "{err}");
    let (_, doc, _) = tenantgate(&["tenants", "get", "tnt_a_v3", "--config", cfg], None);
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    let retired: Vec<&str> = doc["retiredKeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(retired, ["tnt_a", new_key.as_str()]);
    let (_, list, _) = tenantgate(&["tenants", "list", "--config", cfg], None);
    let line = list.lines().find(|l| l.starts_with("tnt_a_v3")).unwrap();
    assert!(
        line.contains("retired=tnt_a(until ")
            && line.contains(&format!("retired={new_key}(until ")),
        "{line}"
    );

    // Clashes, each naming both tenants; nothing written.
    let before = std::fs::read_to_string(&gw.tenants_path).unwrap();
    let (code, _, err) = tenantgate(
        &[
            "tenants",
            "rotate",
            "tnt_b",
            "--new-key",
            "tnt_a",
            "--config",
            cfg,
        ],
        None,
    );
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains("\"tnt_a\"")
            && err.contains("tenant \"tnt_a_v3\"")
            && err.contains("rotating \"tnt_b\""),
        "{err}"
    );
    let mut b = tenant("tnt_b", &[A], 5);
    b["retiredKeys"] = json!([{"key": "tnt_a_v3", "until": "2030-01-01T00:00:00Z"}]);
    let (code, _, err) = tenantgate(&["tenants", "put", "--config", cfg], Some(&b.to_string()));
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains("apiKey of tenant \"tnt_a_v3\"")
            && err.contains("retired key of tenant \"tnt_b\""),
        "{err}"
    );
    let mut c2 = tenant("tnt_c", &[A], 5);
    c2["retiredKeys"] = json!([{"key": "tnt_z", "until": "2030-01-01T00:00:00Z"}]);
    let (code, _, err) = tenantgate(
        &["tenants", "import", "--config", cfg],
        Some(&json!([c2, tenant("tnt_z", &[A], 1)]).to_string()),
    );
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains("retired key of tenant \"tnt_c\"")
            && err.contains("apiKey of tenant \"tnt_z\""),
        "{err}"
    );
    let (code, _, err) = tenantgate(
        &[
            "tenants",
            "rotate",
            "tnt_b",
            "--new-key",
            "bad key",
            "--config",
            cfg,
        ],
        None,
    );
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("--new-key"), "{err}");
    let (code, _, _) = tenantgate(&["tenants", "rotate", "tnt_nobody", "--config", cfg], None);
    assert_eq!(code, 1);
    assert_eq!(std::fs::read_to_string(&gw.tenants_path).unwrap(), before);
}

/// `limits.maxBodyBytes` and `limits.responseTimeoutMs` apply to their tenant only: lower or
/// higher than the gateway's, declared or streamed; tenants without them keep the gateway's.
#[tokio::test]
async fn per_tenant_body_limits_and_response_timeouts() {
    use http_body_util::BodyExt;
    let mut small = tenant("tnt_small", &[A], 5);
    small["limits"] = json!({"maxBodyBytes": 1000, "responseTimeoutMs": 300});
    let mut big = tenant("tnt_big", &[A], 5);
    big["limits"] = json!({"maxBodyBytes": 4 << 20});
    let gw = Gateway::start(
        &[small, big, tenant("tnt_plain", &[A], 5)],
        "[server]\nmax_body_bytes = 1048576\n",
    )
    .await;
    let status = |key: &'static str, body: Vec<u8>| {
        let req = tenant_request(
            "POST",
            &gw.url("/upload"),
            key,
            A,
            http_body_util::Full::new(bytes::Bytes::from(body)),
        );
        async move {
            let resp = client_for().request(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (code, body) = status("tnt_small", vec![1; 2000]).await;
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("body_too_large"), "{body}");
    assert_eq!(status("tnt_plain", vec![1; 2000]).await.0, 200);
    assert_eq!(status("tnt_plain", vec![1; 2 << 20]).await.0, 413);
    assert_eq!(status("tnt_big", vec![1; 2 << 20]).await.0, 200);
    assert_eq!(status("tnt_big", vec![1; 5 << 20]).await.0, 413);
    // Streamed (chunked, no declared length): counted as it goes.
    let streamed = tenant_request(
        "POST",
        &gw.url("/upload"),
        "tnt_small",
        A,
        streamed_body(4, 512),
    );
    let resp = client_for().request(streamed).await.unwrap();
    assert_eq!(resp.status(), 413);

    // Response timeout: 300 ms for tnt_small, the gateway's 5 s for the others.
    let r = get(
        &gw.url("/slow?ms=1000"),
        &[("x-tenant-id", "tnt_small"), ("origin", A)],
    )
    .await;
    assert_eq!(r.error_code(), "upstream_timeout");
    assert_eq!(r.status, 504);
    let r = get(
        &gw.url("/slow?ms=1000"),
        &[("x-tenant-id", "tnt_plain"), ("origin", A)],
    )
    .await;
    assert_eq!(r.status, 200);
    let r = get(
        &gw.url("/slow?ms=100"),
        &[("x-tenant-id", "tnt_small"), ("origin", A)],
    )
    .await;
    assert_eq!(r.status, 200, "within its own timeout");
}

/// `[inject] headers` end to end: strings, numbers, booleans and nested fields reach the
/// backend; a tenant without the field gets no header; client-sent copies of every configured
/// name are stripped; an edit of the document changes the header; a reload changes the list;
/// an invalid entry is refused at start-up (exit 64) and on reload (422), naming it.
#[tokio::test]
async fn document_fields_injected_as_headers_and_the_list_checked_at_load_and_reload() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.json");
    let mut a = tenant("tnt_a", &[A], 5);
    a["plan"] = json!("gold");
    a["seats"] = json!(250);
    a["beta"] = json!(true);
    a["providerConfig"]["database"] = json!("chat_a");
    let b = tenant("tnt_b", &[A], 5); // none of those fields
    write_json(&tenants, &json!([a.clone(), b]));
    let base = file_config(&backend.url(), &tenants);
    let inject =
        "[inject]\nheaders = { \"X-Tenant-Plan\" = \"plan\", \"X-Tenant-Seats\" = \"seats\", \
                  \"X-Tenant-Beta\" = \"beta\", \"X-Tenant-Db\" = \"providerConfig.database\" }\n";
    let cfg = write_config(dir.path(), &format!("{base}{inject}"));
    let config = tenantgate::run::config::Config::load(&cfg).unwrap();
    let running = tenantgate::run::server::start(config).await.unwrap();
    let url = format!("http://{}/echo", running.addr);
    let reload = format!("http://{}/reload", running.admin_addr.unwrap());
    let c = client();
    let forged = [
        ("origin", A),
        ("X-Tenant-Plan", "platinum"),
        ("x-tenant-seats", "99999"),
        ("X-Tenant-Db", "other_tenant_db"),
    ];
    let request = |key: &'static str| {
        let c = c.clone();
        let url = url.clone();
        async move {
            let mut headers = vec![("x-tenant-id", key)];
            headers.extend_from_slice(&forged);
            send(&c, "GET", &url, &headers).await
        }
    };

    let r = request("tnt_a").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen("x-tenant-plan"), ["gold"]);
    assert_eq!(r.seen("x-tenant-seats"), ["250"]);
    assert_eq!(r.seen("x-tenant-beta"), ["true"]);
    assert_eq!(r.seen("x-tenant-db"), ["chat_a"]);
    let r = request("tnt_b").await;
    assert_eq!(r.status, 200);
    for name in [
        "x-tenant-plan",
        "x-tenant-seats",
        "x-tenant-beta",
        "x-tenant-db",
    ] {
        assert!(
            r.seen(name).is_empty(),
            "{name}: the forged copy is gone, nothing injected"
        );
    }

    // An edit of the document: the next requests carry the new value.
    let mut edited = a.clone();
    edited["plan"] = json!("silver");
    write_json(&tenants, &json!([edited, tenant("tnt_b", &[A], 5)]));
    eventually(5, || async {
        request("tnt_a").await.seen("x-tenant-plan") == ["silver"]
    })
    .await;

    // A reload with another list: applied to the next requests.
    std::fs::write(
        &cfg,
        format!("{base}[inject]\nheaders = {{ \"X-Plan-Only\" = \"plan\" }}\n"),
    )
    .unwrap();
    let r = send(&c, "POST", &reload, &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = request("tnt_a").await;
    assert_eq!(r.seen("x-plan-only"), ["silver"]);
    assert_eq!(
        r.seen("x-tenant-plan"),
        ["platinum"],
        "no longer the gateway's: the client's header passes like any other"
    );

    // Invalid lists: refused on reload naming the entry (the running list stays) …
    for (entry, needle) in [
        ("\"X-Forwarded-Host\" = \"plan\"", "X-Forwarded-Host"),
        ("\"X-Db\" = \"providerConfig..database\"", "X-Db"),
        (
            "\"X-Secret\" = \"providerConfig.connectionString\"",
            "inject_connection_string",
        ),
    ] {
        std::fs::write(&cfg, format!("{base}[inject]\nheaders = {{ {entry} }}\n")).unwrap();
        let r = send(&c, "POST", &reload, &[]).await;
        assert_eq!(r.status, 422, "{entry}");
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(
            message.contains("[inject] headers") && message.contains(needle),
            "{message}"
        );
        assert_eq!(request("tnt_a").await.seen("x-plan-only"), ["silver"]);
        // … and at start-up, exit 64.
        let (code, _, err) = tenantgate(&["check", "--config", cfg.to_str().unwrap()], None);
        assert_eq!(code, 64, "{err}");
        assert!(err.contains(needle), "{err}");
    }
    running.shutdown();
    running.wait().await;
}

/// The audit log on the file store: an edit of the file logs one `tenantgate::audit` line per
/// changed tenant the gateway has seen — at once, without another request — naming the fields
/// with old and new values; the connection string is `<redacted>` and never printed.
#[tokio::test]
async fn file_edits_are_audited_once_with_secrets_redacted() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.json");
    let mut a = tenant("tnt_a", &[A], 5);
    a["retiredKeys"] = json!([{"key": "tnt_a_old", "until": "2030-01-01T00:00:00Z"}]);
    write_json(&tenants, &json!([a.clone(), tenant("tnt_b", &[A], 5)]));
    let cfg = write_config(dir.path(), &file_config(&backend.url(), &tenants));
    let (mut child, rx, mut seen, addr) = run_binary_json(&cfg);
    let url = format!("http://{addr}/x");
    // Seen through both of its keys; tnt_b is never looked up.
    for key in ["tnt_a", "tnt_a_old"] {
        assert_eq!(
            get(&url, &[("x-tenant-id", key), ("origin", A)])
                .await
                .status,
            200
        );
    }

    let mut edited = a.clone();
    edited["maxConcurrentConnections"] = json!(50);
    edited["isActive"] = json!(false);
    edited["providerConfig"]["connectionString"] =
        json!("endpoint=https://x/;accesskey=NEW-SECRET");
    let mut b = tenant("tnt_b", &[A], 5);
    b["maxConcurrentConnections"] = json!(7);
    write_json(&tenants, &json!([edited, b]));
    let line = wait_line(&rx, &mut seen, "tenant document changed");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["target"], "tenantgate::audit");
    assert_eq!(v["tenant"], "tnt_a");
    assert_eq!(v["change"], "updated");
    assert_eq!(
        v["fields"],
        "isActive, maxConcurrentConnections, providerConfig.connectionString"
    );
    let changes = v["changes"].as_str().unwrap();
    assert!(changes.contains("isActive: true → false"), "{changes}");
    assert!(
        changes.contains("maxConcurrentConnections: 5 → 50"),
        "{changes}"
    );
    assert!(
        changes.contains("providerConfig.connectionString: <redacted> → <redacted>"),
        "{changes}"
    );

    // The change is in effect, and was logged once (not again for the retired key, nor for
    // tnt_b, which this gateway never saw).
    assert_eq!(
        get(&url, &[("x-tenant-id", "tnt_a"), ("origin", A)])
            .await
            .error_code(),
        "tenant_inactive"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(2)) {
        seen.push(line);
    }
    let audits: Vec<&String> = seen
        .iter()
        .filter(|l| l.contains("tenantgate::audit"))
        .collect();
    assert_eq!(audits.len(), 1, "{audits:#?}");
    for line in &seen {
        assert!(!line.contains("SECRET"), "a secret was printed: {line}");
    }
}

/// `tenantgate demo` shows rotation: its printed commands include a request with a retired
/// key, which answers 200 with `Deprecation` and `Sunset` (and the backend sees the tenant's
/// current key and its injected plan).
#[tokio::test]
async fn the_demo_prints_a_request_with_a_retired_key_that_shows_the_sunset() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tenantgate"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    let line = wait_line(&rx, &mut seen, tenantgate::run::demo::DEMO_RETIRED_KEY);
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_string();
    assert!(line.contains("curl"), "{line}");
    let r = get(
        &url,
        &[
            ("x-tenant-id", tenantgate::run::demo::DEMO_RETIRED_KEY),
            ("origin", "https://app.client-a.com"),
        ],
    )
    .await;
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("deprecation"), Some("@1796083200"));
    let sunset = httpdate::parse_http_date(r.header("sunset").unwrap()).unwrap();
    assert!(sunset > std::time::SystemTime::now() + std::time::Duration::from_secs(29 * 86_400));
    assert_eq!(r.seen("x-tenant-id"), ["tnt_client_a"]);
    assert_eq!(r.seen("x-tenant-plan"), ["enterprise"]);
}
