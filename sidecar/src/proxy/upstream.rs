//! The client both directions share: hyper's pooled client with keep-alive connections per
//! endpoint, one for HTTP/1.1 and one for HTTP/2 (prior knowledge), so a request leaves in the
//! protocol it arrived in.

use crate::body::{BoxError, ProxyBody};
use crate::store::Store;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
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

/// hyper's connector with the connect timeout of whichever service the endpoint belongs to.
/// hyper's own setting is one value for the whole client; ours differ per service.
#[derive(Clone, Debug)]
pub struct Connector {
    inner: HttpConnector,
    store: Arc<Store>,
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
        let timeout = uri
            .authority()
            .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
            .and_then(|addr| self.store.table().connect_timeouts.get(&addr).copied())
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
    pub fn new(store: Arc<Store>, default_connect_timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(true);
        let connector = Connector {
            inner: http,
            store,
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
}

/// Whether the error chain contains a `T`.
pub fn caused_by<T: std::error::Error + 'static>(
    error: &(dyn std::error::Error + 'static),
) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<T>() {
            return true;
        }
        current = e.source();
    }
    false
}
