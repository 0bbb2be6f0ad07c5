//! The admin listener (loopback by default): `GET /healthz` (the process is up),
//! `GET /readyz` (503 until tenants can be resolved, i.e. the store answers) and `GET /metrics`
//! (Prometheus, see [`crate::telemetry::metrics`]), and `POST /reload` (loopback callers only; see
//! [`crate::run::reload::Reloader`]).

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

use crate::pipeline::response::ProxyBody;
use crate::run::reload::Reloader;
use crate::telemetry::metrics::Metrics;
use crate::tenants::directory::Directory;

/// Serves the admin endpoints until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    directory: Arc<Directory>,
    metrics: Arc<Metrics>,
    reloader: Arc<Reloader>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            _ = &mut shutdown => return,
        };
        let (dir, metrics, reloader) = (directory.clone(), metrics.clone(), reloader.clone());
        let service = service_fn(move |req| {
            let (dir, metrics, reloader) = (dir.clone(), metrics.clone(), reloader.clone());
            async move {
                if req.method() == Method::POST && req.uri().path() == "/reload" {
                    return Ok::<_, Infallible>(reload(&reloader, peer).await);
                }
                Ok::<_, Infallible>(route(req, &dir, &metrics).await)
            }
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
            serde_json::json!({"error": {"code": "not_found", "message": "admin endpoints: GET /healthz, GET /readyz, GET /metrics, POST /reload"}}),
        ),
    }
}

/// `POST /reload`: loopback callers only, whatever interface the admin listener is on.
async fn reload(reloader: &Arc<Reloader>, peer: std::net::SocketAddr) -> Response<ProxyBody> {
    if !peer.ip().is_loopback() {
        return json(
            StatusCode::FORBIDDEN,
            serde_json::json!({"error": {"code": "forbidden", "message": "POST /reload is accepted from loopback only"}}),
        );
    }
    let reloader = reloader.clone();
    let outcome = tokio::task::spawn_blocking(move || reloader.reload()).await;
    match outcome {
        Ok(Ok(done)) => {
            tracing::info!(%done, "config reloaded (POST /reload)");
            json(
                StatusCode::OK,
                serde_json::json!({"status": "reloaded", "message": done}),
            )
        }
        Ok(Err(why)) => {
            tracing::error!(%why, "config not reloaded (POST /reload)");
            json(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({"error": {"code": "reload_refused", "message": why}}),
            )
        }
        Err(e) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"error": {"code": "reload_failed", "message": e.to_string()}}),
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
