//! A tenant's rate and daily quota on one gateway (file store, scope "replica"), their
//! refusals as the contract has them (429, codes, `Retry-After`, `RateLimit-Policy`,
//! `RateLimit`, CORS headers for an allowed origin), validation of the new fields, and usage
//! metering to the JSON-lines file read back by `tenantgate usage`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const A: &str = "https://app.example";

/// A config naming the gateway's tenants file, for the CLI.
fn store_config(gw: &Gateway) -> std::path::PathBuf {
    write_config(
        gw.dir.path(),
        &format!(
            "[store]\nkind = \"file\"\npath = {:?}\n",
            gw.tenants_path.display().to_string()
        ),
    )
}

fn with(mut t: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        t[k] = v.clone();
    }
    t
}

#[tokio::test]
async fn a_rate_refuses_past_its_burst_with_retry_after_and_ratelimit_headers() {
    let t = with(
        tenant("tnt_r", &[A], 10),
        json!({"rateLimit": {"requestsPerSecond": 2, "burst": 3}}),
    );
    let gw = Gateway::start(&[t], "").await;
    let c = client();
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(
                as_tenant(&c, &gw.url("/x"), "tnt_r", A)
                    .await
                    .status
                    .as_u16(),
            );
        }
        v
    };
    assert_eq!(statuses, [200, 200, 200, 429, 429], "a burst of 3");
    let refused = as_tenant(&c, &gw.url("/x"), "tnt_r", A).await;
    assert_eq!(refused.error_code(), "tenant_rate_exceeded");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some("\"concurrency\";q=10;qu=\"concurrent-requests\", \"rate\";q=3;w=2")
    );
    assert!(refused
        .header("ratelimit")
        .unwrap()
        .starts_with("\"rate\";r=0;t="));
    assert_eq!(refused.header("access-control-allow-origin"), Some(A));
    // Half a second later one more token has come.
    tokio::time::sleep(Duration::from_millis(550)).await;
    assert_eq!(as_tenant(&c, &gw.url("/x"), "tnt_r", A).await.status, 200);
}

#[tokio::test]
async fn a_daily_quota_refuses_until_midnight_utc() {
    let t = with(
        tenant("tnt_q", &[A], 10),
        json!({"quota": {"requestsPerDay": 3}}),
    );
    let gw = Gateway::start(&[t], "").await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(as_tenant(&c, &gw.url("/x"), "tnt_q", A).await.status, 200);
    }
    let refused = as_tenant(&c, &gw.url("/x"), "tnt_q", A).await;
    assert_eq!(refused.error_code(), "tenant_quota_exhausted");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        retry.abs_diff(86_400 - now % 86_400) <= 2,
        "Retry-After {retry}"
    );
    assert!(refused
        .header("ratelimit")
        .unwrap()
        .starts_with("\"day\";r=0;t="));
    assert!(refused
        .header("ratelimit-policy")
        .unwrap()
        .ends_with("\"day\";q=3;w=86400"));
    // Still refused after a flush: the count is the replica's own for the day.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(as_tenant(&c, &gw.url("/x"), "tnt_q", A).await.status, 429);
}

#[tokio::test]
async fn bad_rates_and_quotas_make_only_their_tenant_misconfigured_and_are_refused_by_put() {
    let bad = with(
        tenant("tnt_bad", &[A], 10),
        json!({"rateLimit": {"requestsPerSecond": 0}}),
    );
    let gw = Gateway::start(&[bad.clone(), tenant("tnt_ok", &[A], 10)], "").await;
    let c = client();
    let reply = as_tenant(&c, &gw.url("/x"), "tnt_bad", A).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.error_code(), "tenant_misconfigured");
    assert_eq!(as_tenant(&c, &gw.url("/x"), "tnt_ok", A).await.status, 200);

    let cfg = store_config(&gw);
    let cfg = cfg.to_str().unwrap();
    for (doc, field) in [
        (bad, "rateLimit.requestsPerSecond"),
        (
            with(
                tenant("tnt_q", &[A], 10),
                json!({"quota": {"requestsPerDay": -1}}),
            ),
            "quota.requestsPerDay",
        ),
        (
            with(
                tenant("tnt_q", &[A], 10),
                json!({"rateLimit": {"requestsPerSecond": 5, "bursts": 9}}),
            ),
            "bursts",
        ),
    ] {
        let (code, _, err) = tenantgate(
            &["tenants", "put", "-", "--config", cfg],
            Some(&doc.to_string()),
        );
        assert_eq!(code, 65, "{err}");
        assert!(err.contains(field), "{field}: {err}");
    }
}

#[tokio::test]
async fn usage_is_metered_per_tenant_and_hour_and_reported_as_table_json_and_csv() {
    let gw = Gateway::start(
        &[tenant("tnt_u", &[A], 1), tenant("tnt_v", &[A], 5)],
        "[cluster]\nflush_ms = 100\n",
    )
    .await;
    let c = client();
    for _ in 0..4 {
        assert_eq!(as_tenant(&c, &gw.url("/x"), "tnt_u", A).await.status, 200);
    }
    assert_eq!(
        as_tenant(&c, &gw.url("/x"), "tnt_v", "https://evil.example")
            .await
            .status,
        403
    );
    // A body up, and the sample backend's echo down.
    let up = send(
        &c,
        "POST",
        &gw.url("/upload"),
        &[("x-tenant-id", "tnt_u"), ("origin", A)],
    )
    .await;
    assert_eq!(up.status, 200);
    let usage_file = gw.dir.path().join("tenants.json.usage.jsonl");
    eventually(5, || async {
        std::fs::read_to_string(&usage_file).is_ok_and(|t| t.contains("tnt_v"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let cfg = store_config(&gw);
    let cfg = cfg.to_str().unwrap();
    let (code, out, err) = tenantgate(&["usage", "--config", cfg, "--format", "json"], None);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    let row = |t: &str| rows.iter().find(|r| r["tenant"] == t).unwrap().clone();
    let u = row("tnt_u");
    assert_eq!(u["requests"]["2xx"], 5);
    assert!(u["bytesOut"].as_u64().unwrap() > 0);
    assert_eq!(row("tnt_v")["rejections"]["origin_not_allowed"], 1);
    assert_eq!(row("tnt_v")["requests"]["4xx"], 1);

    let (_, csv, _) = tenantgate(
        &[
            "usage", "--config", cfg, "--format", "csv", "--tenant", "tnt_v",
        ],
        None,
    );
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[0].starts_with("tenant,hour,requests,"));
    assert!(lines[1].starts_with("tnt_v,"));
    let (_, table, _) = tenantgate(&["usage", "--config", cfg], None);
    assert!(table.starts_with("TENANT"), "{table}");
    assert_eq!(table.lines().count(), 3);
    let (_, later, _) = tenantgate(
        &["usage", "--config", cfg, "--since", "2999-01-01T00:00:00Z"],
        None,
    );
    assert_eq!(later.lines().count(), 1, "only the header: {later}");
    let (code, _, err) = tenantgate(&["usage", "--config", cfg, "--since", "yesterday"], None);
    assert_eq!(code, 64);
    assert!(err.contains("--since"), "{err}");
}
