//! The admin listener (loopback by default): `GET /healthz` (the process is up),
//! `GET /readyz` (503 until tenants can be resolved, i.e. the store answers) and `GET /metrics`
//! (Prometheus, see [`crate::metrics`]).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::body::ProxyBody;
use crate::directory::Directory;
use crate::metrics::Metrics;

/// Serves the admin endpoints until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    directory: Arc<Directory>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            _ = &mut shutdown => return,
        };
        let (dir, metrics) = (directory.clone(), metrics.clone());
        let service = service_fn(move |req| {
            let (dir, metrics) = (dir.clone(), metrics.clone());
            async move { Ok::<_, Infallible>(route(req, &dir, &metrics).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

async fn route(
    req: Request<Incoming>,
    directory: &Directory,
    metrics: &Metrics,
) -> Response<ProxyBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(ProxyBody::full(Bytes::from(metrics.render())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        (&Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        (&Method::GET, "/readyz") => match directory.store().ping().await {
            Ok(()) => json(StatusCode::OK, serde_json::json!({"status": "ready"})),
            Err(e) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"status": "not_ready", "reason": e.to_string()}),
            ),
        },
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": {"code": "not_found", "message": "admin endpoints: GET /healthz, GET /readyz, GET /metrics"}}),
        ),
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
