//! The client both directions share: hyper's pooled client with keep-alive connections per
//! endpoint, one for HTTP/1.1 and one for HTTP/2 (prior knowledge), so a request leaves in the
//! protocol it arrived in.

use crate::body::{BoxError, ProxyBody};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tower::Service;

/// How long an unused pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Raised when connecting took longer than the service's connect timeout.
#[derive(Debug, thiserror::Error)]
#[error("connect timeout of {0:?} elapsed")]
pub struct ConnectTimeout(pub Duration);

tokio::task_local! {
    /// The connect timeout of the service the request in this task is for.
    static CONNECT_TIMEOUT: Duration;
}

/// hyper's connector with the connect timeout of the service the request is for. hyper's own
/// setting is one value for the whole client; ours differ per service, and two services may
/// share an endpoint address (one pod behind two Services), so the timeout travels with the
/// request (a task-local around the send) rather than being looked up by address. hyper-util's
/// pool calls the connector on the request's own task, the first time it polls the connect.
#[derive(Clone, Debug)]
pub struct Connector {
    inner: HttpConnector,
    default_timeout: Duration,
}

impl Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let timeout = CONNECT_TIMEOUT
            .try_with(|timeout| *timeout)
            .unwrap_or(self.default_timeout);
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(Box::new(ConnectTimeout(timeout)) as BoxError),
            }
        })
    }
}

#[derive(Clone, Debug)]
pub struct Upstream {
    http1: Client<Connector, ProxyBody>,
    http2: Client<Connector, ProxyBody>,
}

impl Upstream {
    pub fn new(default_connect_timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(true);
        let connector = Connector {
            inner: http,
            default_timeout: default_connect_timeout,
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            // A request that lost a race with a pooled connection closing was never seen by
            // the endpoint; sending it again is always safe.
            .retry_canceled_requests(true)
            .set_host(true);
        let http1 = builder.build(connector.clone());
        builder.http2_only(true);
        let http2 = builder.build(connector);
        Self { http1, http2 }
    }

    /// Sends `request` (absolute URI naming the endpoint) in its own HTTP version.
    pub async fn send(
        &self,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        if request.version() == http::Version::HTTP_2 {
            self.http2.request(request).await
        } else {
            self.http1.request(request).await
        }
    }

    /// Sends `request`, connecting (when no pooled connection is free) within `connect_timeout`.
    pub async fn send_within(
        &self,
        request: Request<ProxyBody>,
        connect_timeout: Duration,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        CONNECT_TIMEOUT
            .scope(connect_timeout, self.send(request))
            .await
    }
}

/// The first `T` in the error chain.
pub fn cause<'e, T: std::error::Error + 'static>(
    error: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// Whether the error chain contains a `T`.
pub fn caused_by<T: std::error::Error + 'static>(
    error: &(dyn std::error::Error + 'static),
) -> bool {
    cause::<T>(error).is_some()
}
