//! Trace context (W3C `traceparent`), and with the `otel` cargo feature and
//! `[tracing] enabled = true` one exported OTLP span per request.
//!
//! - A client's valid `traceparent` is kept: its trace id is the request's. An invalid one is
//!   dropped.
//! - Exporting, the gateway takes part in the trace: a request without a valid parent starts a
//!   new trace, and the backend receives a `traceparent` in it — the gateway's span as parent
//!   when the span is recorded, the client's header unchanged (or the new trace's not-sampled
//!   context) when it is not.
//! - Not exporting, the gateway only passes a client's valid `traceparent` through and starts no
//!   trace: a made-up not-sampled parent would switch off the backend's own tracing wherever it
//!   samples by parent (the OpenTelemetry default). Gateway and backend logs still join on
//!   `X-Request-Id`.
//! - The access log line carries the trace id (`-` when the request has no trace).
//!
//! Spans are exported in batches by the OpenTelemetry SDK over OTLP/HTTP (protobuf) from its own
//! thread; sampling is parent-based (a client's sampled flag decides) with `sample_ratio` for new
//! traces.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Why `[tracing] enabled = true` is refused by a build without the `otel` feature.
pub const EXPORT_NOT_BUILT: &str =
    "[tracing] enabled: this build has no OTLP export (build with `--features otel`)";

/// `traceparent` (W3C Trace Context).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// `[tracing]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    pub enabled: bool,
    /// OTLP/HTTP traces endpoint, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of new traces (no sampled parent) that are recorded, 0.0-1.0.
    pub sample_ratio: f64,
}

/// The request's place in its trace.
pub struct RequestTrace {
    /// What the backend receives as `traceparent`; `None` when the request has no trace.
    pub traceparent: Option<HeaderValue>,
    #[cfg(feature = "otel")]
    span: Option<opentelemetry_sdk::trace::Span>,
}

impl RequestTrace {
    /// The 32 hex digits of the trace id, or `-`.
    pub fn trace_id(&self) -> &str {
        self.traceparent
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.get(3..35))
            .unwrap_or("-")
    }
}

/// What the span reports once the request is answered.
pub struct Outcome<'a> {
    pub status: u16,
    pub tenant: Option<&'a str>,
    /// The rejection code, when the gateway refused the request.
    pub code: Option<&'static str>,
    pub request_id: &'a str,
}

/// Starts and ends the requests' spans. Without an exporter it only keeps trace context.
#[derive(Default)]
pub struct Tracer {
    #[cfg(feature = "otel")]
    otel: Option<otel::Exporter>,
}

impl Tracer {
    /// The tracer `[tracing]` asks for. Fails when export is enabled in a build without the
    /// `otel` feature, or when the exporter cannot be set up.
    pub fn new(settings: &TracingSettings) -> Result<Tracer, String> {
        if !settings.enabled {
            return Ok(Tracer::default());
        }
        #[cfg(feature = "otel")]
        {
            Ok(Tracer {
                otel: Some(otel::Exporter::new(settings)?),
            })
        }
        #[cfg(not(feature = "otel"))]
        Err(EXPORT_NOT_BUILT.into())
    }

    /// The request's trace, from its `traceparent` when valid; starts the span when exporting.
    pub fn start(&self, headers: &HeaderMap, method: &http::Method, path: &str) -> RequestTrace {
        let incoming = headers.get(TRACEPARENT).filter(|v| is_valid(v));
        #[cfg(feature = "otel")]
        if let Some(otel) = &self.otel {
            return otel.start(incoming.and_then(ids), incoming, method, path);
        }
        let _ = (method, path);
        RequestTrace {
            traceparent: incoming.cloned(),
            #[cfg(feature = "otel")]
            span: None,
        }
    }

    /// Ends the request's span (when one was started) with what happened.
    pub fn finish(&self, trace: RequestTrace, outcome: &Outcome<'_>) {
        #[cfg(feature = "otel")]
        if let Some(span) = trace.span {
            otel::finish(span, outcome);
        }
        #[cfg(not(feature = "otel"))]
        let _ = (trace, outcome);
    }

    /// Exports the spans still buffered (at shutdown). Blocks up to the export timeout.
    pub fn flush(&self) {
        #[cfg(feature = "otel")]
        if let Some(otel) = &self.otel {
            otel.shutdown();
        }
    }
}

/// A `traceparent`'s ids and flags.
#[cfg(any(test, feature = "otel"))]
#[derive(Debug, PartialEq, Eq)]
struct Parent {
    trace_id: u128,
    span_id: u64,
    flags: u8,
}

/// Whether `traceparent` is valid as W3C Trace Context level 1 says: `version-traceid-parentid-
/// flags` in lowercase hex, version `ff` and all-zero ids invalid, later versions may append
/// `-...`. Checked byte by byte: this runs on every request that carries one.
fn is_valid(value: &HeaderValue) -> bool {
    let s = value.as_bytes();
    let lower_hex = |part: &[u8]| part.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let nonzero = |part: &[u8]| part.iter().any(|&c| c != b'0');
    if s.len() < 55 || s[2] != b'-' || s[35] != b'-' || s[52] != b'-' {
        return false;
    }
    let (version, trace_id, span_id, flags) = (&s[0..2], &s[3..35], &s[36..52], &s[53..55]);
    let well_sized = match version {
        b"00" => s.len() == 55,
        _ => s.len() == 55 || s[55] == b'-',
    };
    well_sized
        && version != b"ff"
        && [version, trace_id, span_id, flags]
            .into_iter()
            .all(lower_hex)
        && nonzero(trace_id)
        && nonzero(span_id)
}

/// The ids and flags of a `traceparent`, when valid.
#[cfg(test)]
fn parse(value: &HeaderValue) -> Option<Parent> {
    if is_valid(value) {
        ids(value)
    } else {
        None
    }
}

/// The ids and flags of a `traceparent` that [`is_valid`] accepted.
#[cfg(any(test, feature = "otel"))]
fn ids(value: &HeaderValue) -> Option<Parent> {
    let s = value.to_str().ok()?;
    Some(Parent {
        trace_id: u128::from_str_radix(&s[3..35], 16).ok()?,
        span_id: u64::from_str_radix(&s[36..52], 16).ok()?,
        flags: u8::from_str_radix(&s[53..55], 16).ok()?,
    })
}

/// `00-<trace id>-<span id>-<flags>`.
#[cfg(any(test, feature = "otel"))]
fn render(trace_id: u128, span_id: u64, flags: u8) -> HeaderValue {
    use crate::http::codec::hex_digits;
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_digits(&trace_id.to_be_bytes(), &mut out[3..35]);
    hex_digits(&span_id.to_be_bytes(), &mut out[36..52]);
    hex_digits(&[flags], &mut out[53..55]);
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::{
        Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
        TraceState, Tracer as _, TracerProvider as _,
    };
    use opentelemetry::{Context, KeyValue};
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::trace::{
        BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, Span,
    };
    use opentelemetry_sdk::Resource;

    use super::{render, Outcome, Parent, RequestTrace, TracingSettings};

    /// How long one export (and the flush at shutdown) may take.
    const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

    pub struct Exporter {
        provider: SdkTracerProvider,
        tracer: SdkTracer,
    }

    impl Exporter {
        pub fn new(settings: &TracingSettings) -> Result<Exporter, String> {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(settings.endpoint.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .build()
                .map_err(|e| format!("[tracing] endpoint: {e}"))?;
            let batch = BatchSpanProcessor::builder(exporter)
                .with_batch_config(
                    BatchConfigBuilder::default()
                        .with_max_queue_size(8_192)
                        .build(),
                )
                .build();
            let provider = SdkTracerProvider::builder()
                .with_span_processor(batch)
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    settings.sample_ratio,
                ))))
                .with_resource(
                    Resource::builder()
                        .with_service_name(settings.service_name.clone())
                        .build(),
                )
                .build();
            let tracer = provider.tracer("tenantgate");
            Ok(Exporter { provider, tracer })
        }

        pub fn start(
            &self,
            parent: Option<Parent>,
            incoming: Option<&http::HeaderValue>,
            method: &http::Method,
            path: &str,
        ) -> RequestTrace {
            let cx = match &parent {
                Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                    TraceId::from(p.trace_id),
                    SpanId::from(p.span_id),
                    TraceFlags::new(p.flags),
                    true,
                    TraceState::NONE,
                )),
                None => Context::new(),
            };
            let span = self.tracer.build_with_context(
                self.tracer
                    .span_builder(method.as_str().to_owned())
                    .with_kind(SpanKind::Server)
                    .with_attributes([
                        KeyValue::new("http.request.method", method.as_str().to_owned()),
                        KeyValue::new("url.path", path.to_owned()),
                    ]),
                &cx,
            );
            let sc = span.span_context();
            let traceparent = match incoming {
                Some(v) if !span.is_recording() => v.clone(),
                _ => render(
                    u128::from_be_bytes(sc.trace_id().to_bytes()),
                    u64::from_be_bytes(sc.span_id().to_bytes()),
                    sc.trace_flags().to_u8(),
                ),
            };
            RequestTrace {
                traceparent: Some(traceparent),
                span: span.is_recording().then_some(span),
            }
        }

        pub fn shutdown(&self) {
            if let Err(e) = self.provider.shutdown_with_timeout(EXPORT_TIMEOUT) {
                tracing::warn!(error = %e, "could not export the last spans");
            }
        }
    }

    pub fn finish(mut span: Span, outcome: &Outcome<'_>) {
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(outcome.status),
        ));
        span.set_attribute(KeyValue::new(
            "tenantgate.request_id",
            outcome.request_id.to_owned(),
        ));
        if let Some(tenant) = outcome.tenant {
            span.set_attribute(KeyValue::new("tenantgate.tenant", tenant.to_owned()));
        }
        if let Some(code) = outcome.code {
            span.set_attribute(KeyValue::new("tenantgate.rejection", code));
        }
        if outcome.status >= 500 {
            span.set_status(Status::error(outcome.code.unwrap_or("upstream error")));
        }
        span.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn traceparent_is_parsed_as_the_w3c_spec_says() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse(&hv(good)),
            Some(Parent {
                trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
                span_id: 0x00f067aa0ba902b7,
                flags: 1
            })
        );
        assert_eq!(
            render(0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, 1),
            good
        );
        // A later version may carry more fields after a dash.
        assert!(parse(&hv(&format!("01{}-extra", &good[2..]))).is_some());
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // uppercase
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero span id
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // v00 is exact
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01", // dashes misplaced
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",    // short
        ] {
            assert_eq!(parse(&hv(bad)), None, "{bad}");
        }
    }

    #[test]
    fn without_export_a_valid_parent_passes_through_and_no_trace_is_made_up() {
        let tracer = Tracer::default();
        let mut h = HeaderMap::new();
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        h.insert(TRACEPARENT, hv(good));
        let t = tracer.start(&h, &http::Method::GET, "/");
        assert_eq!(t.traceparent.as_ref().unwrap(), good);
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");

        h.insert(TRACEPARENT, hv("garbage"));
        for t in [
            tracer.start(&h, &http::Method::GET, "/"),
            tracer.start(&HeaderMap::new(), &http::Method::GET, "/"),
        ] {
            assert!(t.traceparent.is_none(), "no trace without a valid parent");
            assert_eq!(t.trace_id(), "-");
        }
    }
}
