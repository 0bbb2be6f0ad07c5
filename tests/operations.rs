//! Operating the gateway: tenants-file reloads, readiness, the CLI (`check`, `tenants …`), and
//! the real binary under SIGTERM with its request log.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

const A: &str = "https://client-a.com";
const BIN: &str = env!("CARGO_BIN_EXE_tenantgate");

fn region_of(t: &mut serde_json::Value, region: &str) {
    t["providerConfig"]["resources"]["region"] = json!(region);
}

#[tokio::test]
async fn tenants_file_edits_apply_without_restart_and_bad_files_keep_the_old_tenants() {
    let gw = Gateway::start(&[tenant("tnt_a", &[A], 5)], "").await;
    let url = gw.url("/x");
    let hdrs = [("x-tenant-id", "tnt_a"), ("origin", A)];
    assert_eq!(
        get(&url, &hdrs).await.seen("x-tenant-provider-region"),
        ["us-east-1"]
    );

    let mut edited = tenant("tnt_a", &[A], 5);
    region_of(&mut edited, "westeurope");
    gw.write_tenants(&[edited.clone(), tenant("tnt_new", &[A], 5)]);
    eventually(3, || async {
        get(&url, &hdrs).await.seen("x-tenant-provider-region") == ["westeurope"]
    })
    .await;
    assert_eq!(
        get(&url, &[("x-tenant-id", "tnt_new"), ("origin", A)])
            .await
            .status,
        200
    );

    // A broken file and a file with a duplicate key are refused whole: the old tenants stay.
    std::fs::write(&gw.tenants_path, "[{\"apiKey\": ").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&url, &hdrs).await.status, 200);
    gw.write_tenants(&[
        tenant("tnt_a", &[A], 5),
        tenant("tnt_a", &["https://b.com"], 5),
    ]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = get(&url, &hdrs).await;
    assert_eq!(
        (r.status.as_u16(), r.seen("x-tenant-provider-region")),
        (200, vec!["westeurope".to_string()])
    );

    // Removing and deactivating apply too.
    let mut off = edited;
    off["isActive"] = json!(false);
    gw.write_tenants(&[off]);
    eventually(3, || async { get(&url, &hdrs).await.status == 403 }).await;
    eventually(3, || async {
        get(&url, &[("x-tenant-id", "tnt_new"), ("origin", A)])
            .await
            .status
            == 401
    })
    .await;
}

#[tokio::test]
async fn readiness_follows_the_store() {
    let gw = Gateway::start(&[], "").await;
    std::fs::remove_file(&gw.tenants_path).unwrap();
    // A gateway started on a missing file: alive, not ready, 503 store_unavailable.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("tenants.json");
    let cfg = config(&gw.backend.url(), &missing, "");
    let running = tenantgate::run::server::start(cfg).await.unwrap();
    let admin = |p: &str| format!("http://{}{p}", running.admin_addr.unwrap());
    assert_eq!(get(&admin("/healthz"), &[]).await.status, 200);
    let r = get(&admin("/readyz"), &[]).await;
    assert_eq!(r.status, 503);
    assert!(
        r.json()["reason"]
            .as_str()
            .unwrap()
            .contains("tenants.json"),
        "{:?}",
        r.json()
    );
    let url = format!("http://{}/x", running.addr);
    let r = get(&url, &[("x-tenant-id", "tnt_a"), ("origin", A)]).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (503, "store_unavailable")
    );
    let r = send(
        &client(),
        "OPTIONS",
        &url,
        &[("origin", A), ("access-control-request-method", "GET")],
    )
    .await;
    assert_eq!(
        r.status, 503,
        "preflight without a key cannot be decided either"
    );

    write_json(&missing, &json!([tenant("tnt_a", &[A], 5)]));
    eventually(3, || async {
        get(&admin("/readyz"), &[]).await.status == 200
    })
    .await;
    eventually(3, || async {
        get(&url, &[("x-tenant-id", "tnt_a"), ("origin", A)])
            .await
            .status
            == 200
    })
    .await;
    assert_eq!(get(&admin("/nope"), &[]).await.status, 404);
}

#[test]
fn check_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.json");
    std::fs::write(&tenants, tenantgate::run::demo::EXAMPLE_TENANTS).unwrap();
    let good = format!(
        "[store]\nkind = \"file\"\npath = {:?}\n",
        tenants.display().to_string()
    );
    let cfg = write_config(dir.path(), &good);
    let (code, out, _) = tenantgate(&["check", "--config", cfg.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 active, 1 inactive, 0 invalid"), "{out}");
    assert!(
        out.contains("tracing  off (a client's traceparent passes through)"),
        "{out}"
    );

    let cfg = write_config(
        dir.path(),
        &format!("{good}\n[server]\nlisen = \"0.0.0.0:1\"\n"),
    );
    let (code, _, err) = tenantgate(&["check", "--config", cfg.to_str().unwrap()], None);
    assert_eq!(code, 64);
    assert!(
        err.contains("gateway.toml") && err.contains("lisen"),
        "{err}"
    );

    let cfg = write_config(
        dir.path(),
        "[store]\nkind = \"file\"\npath = \"/nonexistent/tenants.json\"\n",
    );
    let (code, _, err) = tenantgate(&["check", "--config", cfg.to_str().unwrap()], None);
    assert_eq!(code, 69);
    assert!(err.contains("/nonexistent/tenants.json"), "{err}");

    // OTLP export asked of a build that has it is reported; of one without, refused by name.
    let cfg = write_config(
        dir.path(),
        &format!("{good}\n[tracing]\nenabled = true\nservice_name = \"chat-gw\"\n"),
    );
    let (code, out, err) = tenantgate(&["check", "--config", cfg.to_str().unwrap()], None);
    if cfg!(feature = "otel") {
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("tracing  OTLP to http://127.0.0.1:4318/v1/traces as \"chat-gw\""),
            "{out}"
        );
    } else {
        assert_eq!(code, 64);
        assert!(err.contains("[tracing] enabled"), "{err}");
    }

    let (code, _, err) = tenantgate(&["run", "--config", "/nonexistent/gateway.toml"], None);
    assert_eq!(code, 64);
    assert!(err.contains("/nonexistent/gateway.toml"), "{err}");
}

#[test]
fn tenants_commands_manage_the_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.json");
    let cfg = write_config(
        dir.path(),
        &format!(
            "[store]\nkind = \"file\"\npath = {:?}\n",
            tenants.display().to_string()
        ),
    );
    let cfg = cfg.to_str().unwrap();
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut all = vec!["tenants"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--config", cfg]);
        tenantgate(&all, stdin)
    };

    let (code, out, err) = run(
        &["import", "-"],
        Some(tenantgate::run::demo::EXAMPLE_TENANTS),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("imported 3"));
    assert_eq!(
        run(
            &["import", "-"],
            Some(tenantgate::run::demo::EXAMPLE_TENANTS)
        )
        .0,
        0,
        "import is idempotent"
    );
    let (_, out, _) = run(&["list"], None);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.contains("tnt_client_c\tinactive"), "{out}");

    assert_eq!(run(&["disable", "tnt_client_a"], None).0, 0);
    let (_, out, _) = run(&["get", "tnt_client_a"], None);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["isActive"], false);
    assert_eq!(run(&["enable", "tnt_client_a"], None).0, 0);
    assert!(run(&["list"], None).1.contains("tnt_client_a\tactive"));

    let mut bad = tenant("tnt_d", &[A], 5);
    bad["allowedOrigins"] = json!(["https://d.com/app"]);
    let (code, _, err) = run(&["put", "-"], Some(&bad.to_string()));
    assert_eq!(code, 65);
    assert!(err.contains("allowedOrigins"), "{err}");
    let (code, _, _) = run(&["put", "-"], Some(&tenant("tnt_d", &[A], 5).to_string()));
    assert_eq!(code, 0);

    assert_eq!(run(&["delete", "tnt_client_b"], None).0, 0);
    assert_eq!(
        run(&["delete", "tnt_client_b"], None).0,
        1,
        "deleting twice names the missing tenant"
    );
    assert_eq!(run(&["get", "tnt_client_b"], None).0, 1);
    let (_, out, _) = run(&["export"], None);
    let all: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let keys: Vec<&str> = all.iter().map(|d| d["apiKey"].as_str().unwrap()).collect();
    assert_eq!(keys, ["tnt_client_a", "tnt_client_c", "tnt_d"]);
}

#[tokio::test]
async fn binary_logs_requests_as_json_reloads_and_drains_on_sigterm() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.json");
    write_json(&tenants, &json!([tenant("tnt_a", &[A], 5)]));
    let cfg = write_config(
        dir.path(),
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_secs = 10\n[upstream]\nurl = \"{}\"\n\
             [store]\nkind = \"file\"\npath = {:?}\npoll_interval_ms = 100\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            backend.url(),
            tenants.display().to_string()
        ),
    );
    let (mut child, rx, mut seen, addr) = run_binary_json(&cfg);
    let url = |p: &str| format!("http://{addr}{p}");

    let r = get(
        &url("/api/messages?token=abc"),
        &[
            ("x-tenant-id", "tnt_a"),
            ("origin", A),
            ("x-request-id", "rid-1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let line: serde_json::Value =
        serde_json::from_str(&wait_line(&rx, &mut seen, "rid-1")).unwrap();
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/api/messages", "no query string in the log");
    assert_eq!(line["status"], 200);
    assert_eq!(line["tenant"], "tnt_a");
    assert!(line["latency_us"].as_u64().is_some());

    // A broken file: one error naming the file and the problem, old tenants kept.
    std::fs::write(&tenants, "not json").unwrap();
    let err = wait_line(&rx, &mut seen, "not reloaded");
    assert!(
        err.contains("tenants.json") && err.contains("not a JSON array"),
        "{err}"
    );
    assert_eq!(
        get(&url("/x"), &[("x-tenant-id", "tnt_a"), ("origin", A)])
            .await
            .status,
        200
    );

    // SIGHUP reloads the config: here, requests without Origin become allowed.
    assert_eq!(
        get(&url("/x"), &[("x-tenant-id", "tnt_a")]).await.status,
        403
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}[tenancy]\nrequire_origin = false\n")).unwrap();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    wait_line(&rx, &mut seen, "config reloaded (SIGHUP)");
    assert_eq!(
        get(&url("/x"), &[("x-tenant-id", "tnt_a")]).await.status,
        200
    );

    // SIGTERM with a request in flight: it finishes, new connections are refused, exit 0.
    let slow_url = url("/slow?ms=1500");
    let slow = tokio::spawn(async move {
        get(&slow_url, &[("x-tenant-id", "tnt_a"), ("origin", A)])
            .await
            .status
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    wait_line(&rx, &mut seen, "shutting down");
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "the listener is closed"
    );
    assert_eq!(slow.await.unwrap(), 200, "the in-flight request finished");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let all: String = seen.join("\n") + &rx.try_iter().collect::<Vec<_>>().join("\n");
    assert!(!all.contains("SECRET-tnt_a"), "a secret reached the log");
}

#[tokio::test]
async fn metrics_count_requests_rejections_cache_and_bounded_per_tenant_gauges() {
    let tenants: Vec<_> = (0..12)
        .map(|i| tenant(&format!("tnt_{i}"), &[A], 10))
        .collect();
    let gw = Gateway::start(&tenants, "[admin]\nmetrics_top_tenants = 3\n").await;
    let c = client();
    for _ in 0..5 {
        assert_eq!(
            as_tenant(&c, &gw.url("/echo"), "tnt_0", A).await.status,
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(
            as_tenant(&c, &gw.url("/echo"), "tnt_nobody", A)
                .await
                .status,
            401
        );
    }
    let r = as_tenant(&c, &gw.url("/echo"), "tnt_0", "https://evil.example").await;
    assert_eq!(r.status, 403);

    // Requests held in flight: tnt_1 x3, tnt_2 x2, tnt_3..5 x1 (8 in all).
    let held: Vec<_> = [1, 1, 1, 2, 2, 3, 4, 5]
        .into_iter()
        .map(|i| {
            let (c, url) = (c.clone(), gw.url("/slow?ms=3000"));
            tokio::spawn(async move { as_tenant(&c, &url, &format!("tnt_{i}"), A).await })
        })
        .collect();
    eventually(5, || async { gw.backend.requests() == 13 }).await;

    let text = get(&gw.admin_url("/metrics"), &[]).await;
    assert_eq!(text.status, 200);
    assert!(text
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let body = String::from_utf8(text.body.to_vec()).unwrap();
    for line in [
        "tenantgate_requests_total{status=\"200\"} 5",
        "tenantgate_requests_total{status=\"401\"} 2",
        "tenantgate_requests_total{status=\"403\"} 1",
        "tenantgate_rejections_total{code=\"tenant_unknown\"} 2",
        "tenantgate_rejections_total{code=\"origin_not_allowed\"} 1",
        "tenantgate_request_duration_seconds_count 8",
        "tenantgate_upstream_response_seconds_count 5",
        "tenantgate_in_flight 8",
        "tenantgate_tenant_in_flight{tenant=\"tnt_1\"} 3",
        "tenantgate_tenant_in_flight{tenant=\"tnt_2\"} 2",
        "tenantgate_tenant_in_flight{tenant=\"tnt_3\"} 1",
        "tenantgate_tenant_in_flight{tenant=\"other\"} 2",
        "tenantgate_open_websockets 0",
        // tnt_0, tnt_nobody, tnt_1..tnt_5: one store query each; everything else from the cache.
        "tenantgate_store_queries_total 7",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in:\n{body}"
        );
    }
    // tnt_0: 1 miss + 5 hits; tnt_nobody: 1 miss + 1 hit; the held requests may coalesce on
    // their misses or hit, depending on timing.
    let hits: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("tenantgate_cache_hits_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!((6..=12).contains(&hits), "{hits}");
    assert_eq!(
        body.lines()
            .filter(|l| l.starts_with("tenantgate_tenant_in_flight{"))
            .count(),
        4,
        "3 busiest tenants + other, whatever the number of tenants"
    );
    for h in held {
        assert_eq!(h.await.unwrap().status, 200);
    }
}

#[test]
fn completions_and_man_page_come_from_the_command_definitions() {
    let (code, out, err) = tenantgate(&["completions", "bash"], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("complete -F") && out.contains("tenants"),
        "{out}"
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let (code, out, _) = tenantgate(&["completions", shell], None);
        assert!(code == 0 && out.contains("tenantgate"), "{shell}");
    }
    let (code, _, err) = tenantgate(&["completions", "tcsh"], None);
    assert_eq!(code, 64, "an unknown shell is a usage error: {err}");
    assert_eq!(tenantgate(&["--version"], None).0, 0);
    let (code, out, _) = tenantgate(&["man"], None);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(".ie") || out.contains(".TH tenantgate"),
        "{out}"
    );
    for word in ["check", "demo", "tenants", "completions"] {
        assert!(out.contains(word), "the manual lists {word}");
    }
}

#[tokio::test]
async fn the_sample_backend_runs_alone_for_the_deployment_examples() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(BIN)
        .args(["backend", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/echo");
    eventually(10, || async {
        client()
            .request(tenant_request(
                "GET",
                &url,
                "tnt_a",
                A,
                http_body_util::Full::new(bytes::Bytes::new()),
            ))
            .await
            .is_ok()
    })
    .await;
    let r = get(&url, &[("x-probe", "1")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-probe"][0], "1");
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    assert!(child.wait().unwrap().success(), "SIGTERM stops it cleanly");
}

#[tokio::test]
async fn post_reload_applies_the_request_rules_and_refuses_bad_or_restart_only_changes() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.json");
    write_json(&tenants, &json!([tenant("tnt_a", &[A], 5)]));
    let base = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n\
         [store]\nkind = \"file\"\npath = {:?}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        backend.url(),
        tenants.display().to_string()
    );
    let cfg = write_config(dir.path(), &base);
    let config = tenantgate::run::config::Config::load(&cfg).unwrap();
    let running = tenantgate::run::server::start(config).await.unwrap();
    let url = format!("http://{}/x", running.addr);
    let reload = format!("http://{}/reload", running.admin_addr.unwrap());
    let no_origin = || async { get(&url, &[("x-tenant-id", "tnt_a")]).await };
    assert_eq!(no_origin().await.error_code(), "origin_missing");

    std::fs::write(&cfg, format!("{base}[tenancy]\nrequire_origin = false\n")).unwrap();
    let r = send(&client(), "POST", &reload, &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(no_origin().await.status, 200);

    // Invalid: refused with the key named, the running config stays.
    std::fs::write(&cfg, format!("{base}[tenancy]\nrequire_origin = 3\n")).unwrap();
    let r = send(&client(), "POST", &reload, &[]).await;
    assert_eq!(r.status, 422);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("require_origin"));
    assert_eq!(no_origin().await.status, 200);

    // A key that needs a restart: refused, and said so.
    let moved = base.replace(
        "listen = \"127.0.0.1:0\"\n[upstream]",
        "listen = \"127.0.0.1:1\"\n[upstream]",
    );
    std::fs::write(&cfg, format!("{moved}[tenancy]\nrequire_origin = true\n")).unwrap();
    let r = send(&client(), "POST", &reload, &[]).await;
    assert_eq!(r.status, 422);
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("[server] listen") && message.contains("restart"),
        "{message}"
    );
    assert_eq!(
        no_origin().await.status,
        200,
        "nothing of that file applied"
    );
    running.shutdown();
    running.wait().await;
}
