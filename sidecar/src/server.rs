//! Accepting connections: HTTP/1.1 and HTTP/2 with prior knowledge on every listener, upgrades
//! allowed, and a graceful drain on shutdown.
//!
//! On the outbound and inbound listeners a connection may have been redirected by the
//! interception rules: its original destination (`SO_ORIGINAL_DST`) is then not the listener.
//! Such a connection is sniffed first; HTTP is served as any other, anything else is spliced to
//! where it was going. A connection made to the listener itself is served exactly as without
//! interception.

use crate::body::ProxyBody;
use crate::intercept::detect::{self, Protocol, SNIFF_TIMEOUT};
use crate::intercept::{opaque, original_dst};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Request headers larger than this get 431: Envoy's default is 60 KiB, and a proxy that buffers
/// unbounded headers is a memory hazard.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// How long a client may take to send its request headers (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

pub fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(MAX_HEADER_BYTES)
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    builder
}

/// What one accepted connection is, as the handler sees it with each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Who connected.
    pub peer: SocketAddr,
    /// Where the connection was going before interception redirected it here; `None` when it
    /// was made to the listener itself.
    pub original_dst: Option<SocketAddr>,
}

/// What a listener does with intercepted connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interception {
    /// None are expected (admin): every connection is HTTP, nothing is looked up.
    Off,
    /// Outbound: opaque connections go on to their original destination.
    ToOriginalDst,
    /// Inbound: opaque connections go to the app's host, at the port the caller dialed.
    ToApp(IpAddr),
}

impl Interception {
    fn direction(self) -> &'static str {
        match self {
            Self::Off => "admin",
            Self::ToOriginalDst => crate::metrics::OUTBOUND,
            Self::ToApp(_) => crate::metrics::INBOUND,
        }
    }
}

/// Serves `listener` until `shutdown` turns true, then lets open connections finish their
/// requests (each connection is told to close once idle) until `drained` is dropped.
pub async fn serve<H, F>(
    listener: TcpListener,
    interception: Interception,
    handler: H,
    mut shutdown: watch::Receiver<bool>,
    graceful: Arc<GracefulShutdown>,
) where
    H: Fn(Accepted, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let builder = Arc::new(builder());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        // Taken here, not in the task: a drain that starts while the connection is still being
        // sniffed waits for it.
        let watcher = graceful.watcher();
        let handler = handler.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let original_dst = match interception {
                Interception::Off => None,
                _ => original_dst::original_dst(&stream),
            };
            if let Some(original) = original_dst
                && detect::sniff(&stream, SNIFF_TIMEOUT).await == Protocol::Opaque
            {
                drop(watcher);
                let target = match interception {
                    Interception::ToApp(app) => SocketAddr::new(app, original.port()),
                    Interception::ToOriginalDst | Interception::Off => original,
                };
                opaque::splice(stream, peer, target, interception.direction()).await;
                return;
            }
            let accepted = Accepted { peer, original_dst };
            let service = service_fn(move |request| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(accepted, request).await) }
            });
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
