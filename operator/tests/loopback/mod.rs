//! The in-test HTTP servers the operator's tests start on loopback (`local.rs`,
//! `local_autoscaler.rs`, `autoscaler_controller.rs`, `webhook.rs`): upstream apps, stand-ins
//! for a sidecar's admin listener serving what an Autoscaler scrapes, a small fake API server.

#![allow(dead_code)] // each test binary uses a different part

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Answers every request on `listener` (HTTP/1.1 or h2c) with `handler`, until the task is
/// aborted or the runtime ends.
pub fn serve<F, Fut>(listener: TcpListener, handler: F) -> JoinHandle<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let answer = handler(request);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// A sidecar's `/metrics` as far as a Concurrency Autoscaler of orders reads it: `in_flight`
/// inbound requests to orders, beside outbound calls the autoscaler must not count.
pub fn sidecar_metrics(in_flight: f64) -> String {
    format!(
        "# TYPE weir_in_flight_requests gauge\n\
         weir_in_flight_requests{{direction=\"inbound\",service=\"orders\"}} {in_flight}\n\
         weir_in_flight_requests{{direction=\"outbound\",service=\"payments\"}} 99\n"
    )
}
