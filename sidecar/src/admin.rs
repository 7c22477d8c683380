//! The admin listener: `/metrics`, `/ready`, `/live`, `/config`.

use crate::body::{ProxyBody, full};
use crate::store::Store;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use std::sync::Arc;

pub async fn handle(store: Arc<Store>, request: Request<Incoming>) -> Response<ProxyBody> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match request.uri().path() {
        "/metrics" => {
            store.refresh_gauges();
            let mut response = Response::new(full(store.metrics.encode()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" => match store.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/config" => {
            let table = store.table();
            let body = serde_json::to_vec_pretty(&*table.config).unwrap_or_default();
            let mut response = Response::new(full(body));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        // The app's probes, forwarded unpoliced and uncounted (see `probe`).
        path if path.starts_with(crate::probe::PATH_PREFIX) => crate::probe::answer(&request).await,
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /ready, /live or /config\n",
        ),
    }
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<ProxyBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
