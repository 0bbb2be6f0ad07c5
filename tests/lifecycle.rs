//! Tenant lifecycle (DESIGN.md "Tenant lifecycle"): key rotation with retired keys, per-tenant
//! limits, context injection from document fields, the audit log, and the environment a
//! Kubernetes pod gives the gateway. Real sockets on 127.0.0.1:0; the MongoDB-wire store's side
//! of rotation and audit is in tests/mongodb.rs.

mod common;

use std::process::{Command, Stdio};

use common::*;
use serde_json::json;

const A: &str = "https://a.example";

fn write_config(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, body).unwrap();
    path
}

/// Kubernetes sets `TENANTGATE_PORT`, `TENANTGATE_SERVICE_HOST`, … in every pod of a namespace
/// with a Service named `tenantgate`: the gateway starts and warns once. A typo in a known
/// section still stops it with exit 64, naming the variable.
#[tokio::test]
async fn kubernetes_service_variables_do_not_stop_the_gateway_but_typos_do() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.json");
    write_json(&tenants, &json!([tenant("tnt_a", &[A], 5)]));
    let cfg = write_config(
        dir.path(),
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n\
             [store]\nkind = \"file\"\npath = {:?}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            backend.url(),
            tenants.display().to_string()
        ),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_tenantgate"))
        .args([
            "--log-format",
            "json",
            "run",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .env("TENANTGATE_PORT", "tcp://10.0.0.1:8080")
        .env("TENANTGATE_SERVICE_HOST", "10.0.0.1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    let listening: serde_json::Value =
        serde_json::from_str(&wait_line(&rx, &mut seen, "tenantgate listening")).unwrap();
    let addr = listening["addr"].as_str().unwrap().to_string();
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
