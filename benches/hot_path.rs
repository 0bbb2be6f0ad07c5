//! Criterion benches of the per-request hot pieces (run: `cargo bench --bench hot_path`).
//! Whole-proxy figures come from `../shared/bench/run.sh`; see BENCHMARKS.md.

use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue};
use tenantgate::http::codec;
use tenantgate::pipeline::forward::{
    forwarded_headers, rewrite_request_headers, strip_hop_by_hop, Forwarded,
};
use tenantgate::tenants::directory::{CacheSettings, Directory, Resolved};
use tenantgate::tenants::origin::AllowedOrigins;
use tenantgate::tenants::store::file::FileStore;
use tenantgate::tenants::tenant::{Tenant, TenantRecord};

fn tenant(i: usize) -> serde_json::Value {
    serde_json::json!({
        "apiKey": format!("tnt_{i:06}"),
        "allowedOrigins": [format!("https://app.tnt-{i:06}.example"), format!("https://*.tnt-{i:06}.example")],
        "providerConfig": {"resources": {"endpoint": format!("https://res-{i:06}.communication.azure.com"), "region": "westeurope"}},
        "isActive": true,
        "maxConcurrentConnections": 100,
        "plan": "gold",
        "seats": 250,
        "beta": true,
        "billing": {"account": format!("acct-{i:06}"), "costCenter": "cc-42"}
    })
}

/// The forwarding settings of a config with this `[inject]` section.
fn forward_settings(inject: &str) -> tenantgate::pipeline::forward::ForwardSettings {
    tenantgate::run::config::Config::parse(inject, "bench")
        .unwrap()
        .forward
}

fn origin_matching(c: &mut Criterion) {
    let list = AllowedOrigins::parse(&[
        "https://client-a.com",
        "http://localhost:5173",
        "https://*.client-a.com",
    ])
    .unwrap();
    let mut g = c.benchmark_group("origin");
    g.bench_function("exact, as browsers send it", |b| {
        b.iter(|| list.allows(black_box("https://client-a.com")))
    });
    g.bench_function("exact, needs normalising", |b| {
        b.iter(|| list.allows(black_box("HTTPS://Client-A.com:443")))
    });
    g.bench_function("wildcard subdomain", |b| {
        b.iter(|| list.allows(black_box("https://app.client-a.com")))
    });
    g.bench_function("refused", |b| {
        b.iter(|| list.allows(black_box("https://evil.example")))
    });
    g.finish();
}

fn tenant_resolution(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tenants.json");
    let docs: Vec<_> = (1..=1000).map(tenant).collect();
    std::fs::write(&path, serde_json::to_string(&docs).unwrap()).unwrap();
    let directory = rt.block_on(async {
        let store = FileStore::open(&path, Duration::from_secs(3600));
        let settings = CacheSettings {
            ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(3600),
            max_stale: Duration::from_secs(3600),
            max_entries: 100_000,
            lookup_timeout: Duration::from_secs(2),
            miss_lookups_per_sec: 0,
        };
        Directory::new(store, settings)
    });
    let keys: Vec<String> = (1..=1000).map(|i| format!("tnt_{i:06}")).collect();
    rt.block_on(async {
        for k in &keys {
            directory.resolve(k).await.unwrap();
        }
    });
    let mut i = 0;
    c.bench_function("resolve cached tenant (1,000 tenants, rotating)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            let r = rt.block_on(directory.resolve(&keys[i])).unwrap();
            assert!(matches!(r, Resolved::Tenant(_)));
        })
    });
}

fn header_rewrite(c: &mut Criterion) {
    let TenantRecord::Valid(t) = TenantRecord::from_json(tenant(1)).unwrap() else {
        panic!()
    };
    let t: Arc<Tenant> = t;
    let mut request = HeaderMap::new();
    for (k, v) in [
        ("host", "gw.example:8080"),
        ("user-agent", "Mozilla/5.0"),
        ("accept", "application/json"),
        ("origin", "https://app.tnt-000001.example"),
        ("x-tenant-id", "tnt_000001"),
        ("connection", "keep-alive"),
        ("accept-encoding", "gzip, deflate, br"),
        ("x-tenant-provider-region", "forged"),
    ] {
        request.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    let uri = http::Uri::from_static("/api/messages");
    let ip = HeaderValue::from_static("10.1.2.3");
    let tenant_header = tenantgate::pipeline::forward::X_TENANT_ID;
    let proto: &'static HeaderValue = Box::leak(Box::new(HeaderValue::from_static("http")));
    let id = HeaderValue::from_static("0123456789abcdef0123456789abcdef");
    let trace = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
    let fwd = Forwarded {
        client_ip: &ip,
        proto,
        request_id: &id,
        traceparent: Some(&trace),
        tenant_header: &tenant_header,
        meter: None,
    };
    let plain = forward_settings("");
    let five = forward_settings(
        "[inject]\nheaders = { \"X-Tenant-Plan\" = \"plan\", \"X-Tenant-Seats\" = \"seats\", \
         \"X-Tenant-Beta\" = \"beta\", \"X-Tenant-Account\" = \"billing.account\", \
         \"X-Tenant-Cost-Center\" = \"billing.costCenter\" }",
    );
    for (name, settings) in [
        ("forwarded request head as bytes (8 client headers)", &plain),
        (
            "forwarded request head as bytes, five [inject] headers (8 client headers)",
            &five,
        ),
    ] {
        c.bench_function(name, |b| {
            let mut head = Vec::with_capacity(1024);
            b.iter(|| {
                head.clear();
                codec::request_line(&mut head, &http::Method::GET, "/api/messages");
                forwarded_headers(&uri, black_box(&request), &t, &fwd, settings, |n, v| {
                    codec::header_line(&mut head, n, v)
                });
                codec::end_request_head(&mut head, codec::BodyFraming::None);
                black_box(head.len())
            })
        });
    }
    c.bench_function(
        "rewrite request headers in a map, upgrades (8 client headers)",
        |b| {
            b.iter(|| {
                let mut h = request.clone();
                rewrite_request_headers(
                    &uri,
                    &mut h,
                    &t,
                    &Forwarded {
                        client_ip: &ip,
                        proto,
                        request_id: &id,
                        traceparent: Some(&trace),
                        tenant_header: &tenant_header,
                        meter: None,
                    },
                    &plain,
                );
                black_box(h)
            })
        },
    );
    let mut response = HeaderMap::new();
    for (k, v) in [
        ("content-type", "application/json"),
        ("content-length", "100"),
        ("date", "x"),
        ("connection", "keep-alive"),
    ] {
        response.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    c.bench_function("strip hop-by-hop from a response (4 headers)", |b| {
        b.iter(|| {
            let mut h = response.clone();
            strip_hop_by_hop(&mut h);
            black_box(h)
        })
    });
}

fn trace_context(c: &mut Criterion) {
    let tracer = tenantgate::telemetry::trace::Tracer::default();
    let mut with_parent = HeaderMap::new();
    with_parent.insert(
        tenantgate::telemetry::trace::TRACEPARENT,
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    let none = HeaderMap::new();
    let get = http::Method::GET;
    c.bench_function("trace context: no traceparent (no export)", |b| {
        b.iter(|| black_box(tracer.start(black_box(&none), &get, "/api/messages")))
    });
    c.bench_function("trace context: client traceparent kept", |b| {
        b.iter(|| black_box(tracer.start(black_box(&with_parent), &get, "/api/messages")))
    });
}

/// The codec: a typical browser request head parsed and checked, and a chunked body decoded.
fn codec_parsing(c: &mut Criterion) {
    let head: &[u8] = b"POST /api/messages HTTP/1.1\r\nHost: gw.example\r\nX-Tenant-ID: tnt_000001\r\nOrigin: https://client-1.example\r\nUser-Agent: Mozilla/5.0\r\nAccept: application/json\r\nContent-Type: application/json\r\nAccept-Encoding: gzip, deflate, br\r\nContent-Length: 2\r\n\r\n{}";
    c.bench_function("codec: parse and check a request head (8 headers)", |b| {
        b.iter(|| {
            let mut buf = bytes::BytesMut::from(black_box(head));
            let parsed = codec::parse_request_head(&mut buf, 100, 4)
                .unwrap()
                .unwrap();
            black_box(parsed.framing);
            codec::recycle(parsed.headers);
        })
    });
    let body: Vec<u8> = (0..16)
        .flat_map(|_| {
            b"400;a=b\r\n"
                .iter()
                .copied()
                .chain([b'x'; 1024])
                .chain(*b"\r\n")
        })
        .chain(*b"0\r\n\r\n")
        .collect();
    c.bench_function("codec: decode a chunked body (16 chunks of 1 KiB)", |b| {
        b.iter(|| {
            let mut buf = bytes::BytesMut::from(black_box(&body[..]));
            let mut framing = codec::Framing::CHUNKED;
            let mut n = 0;
            while let codec::Decoded::Data(d) = codec::decode(&mut buf, &mut framing).unwrap() {
                n += d.len();
            }
            black_box(n)
        })
    });
}

criterion_group!(
    benches,
    origin_matching,
    tenant_resolution,
    header_rewrite,
    trace_context,
    codec_parsing
);
criterion_main!(benches);
