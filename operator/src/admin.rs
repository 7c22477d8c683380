//! The operator's admin listener: `/metrics`, `/ready`, `/live`, `/proxies` (the connected
//! proxies and the versions they hold, for people debugging a push) and `/autoscalers` (each
//! Autoscaler's desired and current replicas, metrics and conditions, as JSON: what a launcher
//! in local mode acts on; see [`crate::autoscaler::local`]).

use crate::autoscaler::status::AutoscalerList;
use crate::config_api::ConfigApi;
use crate::metrics::Metrics;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct Admin {
    pub metrics: Arc<Metrics>,
    /// Set once the source has loaded its first state.
    pub ready: Arc<AtomicBool>,
    pub config_api: Arc<ConfigApi>,
    /// What `/autoscalers` serves: the latest evaluation of every Autoscaler (local mode; empty
    /// in a cluster, where each Autoscaler's status holds the same).
    pub autoscalers: watch::Receiver<Arc<AutoscalerList>>,
}

impl Admin {
    pub fn handle(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        }
        match request.uri().path() {
            "/metrics" => {
                let mut response = Response::new(Full::new(Bytes::from(self.metrics.encode())));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    Metrics::content_type().parse().expect("valid header"),
                );
                response
            }
            "/live" => text(StatusCode::OK, "live\n"),
            "/ready" if self.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n"),
            "/ready" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the first state is not published yet, or the injection webhook has \
                 no certificate yet\n",
            ),
            "/proxies" => json(&self.config_api.proxies()),
            "/autoscalers" => {
                let list = self.autoscalers.borrow().clone();
                json(&*list)
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /ready, /live, /proxies or /autoscalers\n",
            ),
        }
    }

    pub async fn serve(self, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let admin = Arc::new(self);
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            let admin = admin.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(&request)) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

fn json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(value).unwrap_or_default(),
    )));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/json".parse().expect("valid header"),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("valid header"),
    );
    response
}
