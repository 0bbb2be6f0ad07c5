//! Trace context end to end, with the `otel` feature: the real binary exports OTLP/HTTP spans to
//! a collector stand-in (a hyper server decoding the protobuf requests), the backend receives
//! `traceparent` in the same trace with the gateway's span as parent, and the JSON request log
//! carries the trace id. `scripts/test.sh` runs the suite with `--features otel`.
#![cfg(feature = "otel")]

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::*;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

const A: &str = "https://client-a.com";

/// A span as the collector received it, with its resource's `service.name`.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

impl Received {
    fn attr(&self, key: &str) -> Option<String> {
        let kv = self.span.attributes.iter().find(|kv| kv.key == key)?;
        Some(match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => s.clone(),
            AnyValue::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
    }
}

/// An OTLP/HTTP traces endpoint on `127.0.0.1:0`.
async fn collector() -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let spans = Arc::new(Mutex::new(Vec::new()));
    let store = spans.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let store = store.clone();
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let store = store.clone();
                async move {
                    assert_eq!(req.uri().path(), "/v1/traces");
                    assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let export = ExportTraceServiceRequest::decode(body).unwrap();
                    let mut store = store.lock().unwrap();
                    for rs in export.resource_spans {
                        let service = rs
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|kv| kv.key == "service.name")
                            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                                AnyValue::StringValue(s) => Some(s.clone()),
                                _ => None,
                            })
                            .unwrap_or_default();
                        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                            store.push(Received {
                                service: service.clone(),
                                span,
                            });
                        }
                    }
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        bytes::Bytes::new(),
                    )))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (url, spans)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn spans_are_exported_traceparent_reaches_the_backend_and_logs_carry_the_trace_id() {
    let (endpoint, spans) = collector().await;
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.json");
    write_json(&tenants, &json!([tenant("tnt_a", &[A], 5)]));
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n[store]\nkind = \"file\"\n\
             path = {:?}\n[admin]\nlisten = \"\"\n[tracing]\nenabled = true\nendpoint = \"{endpoint}\"\n\
             service_name = \"gateway-under-test\"\n",
            backend.url(),
            tenants.display().to_string()
        ),
    )
    .unwrap();
    let (mut child, rx, mut seen, addr) = run_binary_json(&cfg);
    let url = format!("http://{addr}/api/messages");
    let call = |id: &'static str, tenant: &'static str, traceparent: Option<&'static str>| {
        let url = url.clone();
        async move {
            let mut headers = vec![("x-tenant-id", tenant), ("origin", A), ("x-request-id", id)];
            headers.extend(traceparent.map(|t| ("traceparent", t)));
            get(&url, &headers).await
        }
    };

    // A sampled parent: the backend's parent is the gateway's span, in the client's trace.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let with_parent = call(
        "with-parent",
        "tnt_a",
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    )
    .await;
    assert_eq!(with_parent.status, 200);
    let forwarded = with_parent.seen("traceparent");
    assert_eq!(forwarded.len(), 1, "{forwarded:?}");
    let (trace, gateway_span) = (&forwarded[0][3..35], &forwarded[0][36..52]);
    assert_eq!(trace, client_trace);
    assert_ne!(gateway_span, "00f067aa0ba902b7");
    assert!(forwarded[0].ends_with("-01"));

    // No traceparent: a new trace, sampled (sample_ratio defaults to 1.0).
    let fresh = call("fresh", "tnt_a", None).await;
    let fresh_tp = fresh.seen("traceparent")[0].clone();
    assert!(
        fresh_tp.starts_with("00-") && fresh_tp.ends_with("-01"),
        "{fresh_tp}"
    );

    // A parent that is not sampled: no span, the header reaches the backend as sent.
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let quiet = call("unsampled", "tnt_a", Some(unsampled)).await;
    assert_eq!(quiet.seen("traceparent"), [unsampled]);

    // A refused request is a span too, with the rejection code.
    assert_eq!(call("refused", "tnt_nobody", None).await.status, 401);

    // The JSON log lines carry each request's trace id.
    let mut log_trace = HashMap::new();
    for id in ["with-parent", "fresh", "unsampled", "refused"] {
        let line: serde_json::Value =
            serde_json::from_str(&wait_line(&rx, &mut seen, &format!("\"{id}\""))).unwrap();
        log_trace.insert(id, line["trace_id"].as_str().unwrap().to_string());
    }
    assert_eq!(log_trace["with-parent"], client_trace);
    assert_eq!(log_trace["fresh"], fresh_tp[3..35]);
    assert_eq!(log_trace["unsampled"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(log_trace["refused"].len(), 32);

    // SIGTERM flushes the batch: the collector has exactly the three recorded spans.
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // (Waited for off the runtime: the collector answers the export meanwhile.)
    let exit = tokio::task::spawn_blocking(move || child.wait()).await;
    assert!(exit.unwrap().unwrap().success());
    seen.extend(rx.try_iter());
    let spans = spans.lock().unwrap().clone();
    let by_request: HashMap<String, Received> = spans
        .iter()
        .map(|r| (r.attr("tenantgate.request_id").unwrap(), r.clone()))
        .collect();
    assert_eq!(spans.len(), 3, "{spans:#?}\n{}", seen.join("\n"));
    assert!(!by_request.contains_key("unsampled"));

    let s = &by_request["with-parent"];
    assert_eq!(s.service, "gateway-under-test");
    assert_eq!(s.span.name, "GET");
    assert_eq!(s.span.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(hex(&s.span.trace_id), client_trace);
    assert_eq!(hex(&s.span.span_id), gateway_span);
    assert_eq!(hex(&s.span.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(s.attr("http.request.method").as_deref(), Some("GET"));
    assert_eq!(s.attr("url.path").as_deref(), Some("/api/messages"));
    assert_eq!(s.attr("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(s.attr("tenantgate.tenant").as_deref(), Some("tnt_a"));
    assert!(s.span.end_time_unix_nano > s.span.start_time_unix_nano);

    let f = &by_request["fresh"];
    assert_eq!(hex(&f.span.trace_id), &fresh_tp[3..35]);
    assert_eq!(hex(&f.span.span_id), &fresh_tp[36..52]);
    assert!(f.span.parent_span_id.is_empty(), "a root span");

    let r = &by_request["refused"];
    assert_eq!(hex(&r.span.trace_id), log_trace["refused"]);
    assert_eq!(r.attr("http.response.status_code").as_deref(), Some("401"));
    assert_eq!(
        r.attr("tenantgate.rejection").as_deref(),
        Some("tenant_unknown")
    );
}
