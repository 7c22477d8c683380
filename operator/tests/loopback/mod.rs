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
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// A stand-in for a sidecar's admin listener: `/metrics` as far as a Concurrency Autoscaler of
/// orders reads it — `in_flight` (an `f64` in its bits, changed by the test) inbound requests to
/// orders, beside outbound calls the autoscaler must not count; other paths answer empty.
pub fn serve_sidecar_metrics(listener: TcpListener, in_flight: Arc<AtomicU64>) -> JoinHandle<()> {
    serve(listener, move |request| {
        let value = f64::from_bits(in_flight.load(Ordering::SeqCst));
        let body = if request.uri().path() == "/metrics" {
            format!(
                "# TYPE weir_in_flight_requests gauge\n\
                 weir_in_flight_requests{{direction=\"inbound\",service=\"orders\"}} {value}\n\
                 weir_in_flight_requests{{direction=\"outbound\",service=\"payments\"}} 99\n"
            )
        } else {
            String::new()
        };
        async move { Response::new(Full::new(Bytes::from(body))) }
    })
}
