//! The accept loop every operator listener uses: the admin listener ([`crate::admin`]), the
//! config API ([`crate::config_api`]) and the injection webhook ([`crate::webhook::server`],
//! HTTPS through [`Server::tls`]). HTTP/1.1 and HTTP/2 with prior knowledge (hyper-util's auto
//! builder); each listener gives its handler and its name, this module bounds the connections.
//!
//! # Bounds
//! - **A first request within the header-read timeout.** A connection (after its TLS handshake,
//!   which has its own bound) that has not delivered a complete request head by then is closed.
//!   Later heads on a kept-alive HTTP/1 connection are bounded by hyper's own header timer (the
//!   same duration, counted from the end of the previous answer).
//! - **At most `max_connections` at once.** One past the cap is accepted and closed at once
//!   (the client sees the connection closed, not a hang), counted ([`Server::refused`]) and
//!   logged: a warning when a spell of refusals starts, a line with the count when it ends.
//! - **A bounded drain.** On shutdown the listener closes, idle connections are closed, and
//!   requests in flight get the drain bound to finish; whatever is still open then is aborted.
//!
//! Why a timer of our own around hyper's for the first request: hyper-util's auto builder reads
//! the protocol preface before hyper's HTTP/1 header timer starts, with no timer of its own, so
//! a connection that never sends a byte would be held forever. Drain and per-connection
//! bookkeeping are hyper-util's (`GracefulShutdown`); only the cap and that first timer are ours.
//! The sidecar's own server module bounds more (idle time, sniffing of intercepted connections):
//! the operator's listeners are few-connection, low-rate endpoints and do not need it.

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

#[cfg(test)]
#[path = "server/tests.rs"]
mod tests;

/// The defaults of [`Server::new`]: a head in 10 s, 1,024 connections, 5 s of drain.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_CONNECTIONS: usize = 1024;
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Request heads larger than this are refused (431): the operator's requests have small heads.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// After a failed accept (out of file descriptors and the like), wait this long rather than spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// One listener's accept loop and its bounds. Build it with [`Server::new`] and the setters,
/// run it with [`Server::serve`]. Clones share the refusal count.
#[derive(Debug, Clone)]
pub struct Server {
    name: &'static str,
    header_read_timeout: Duration,
    max_connections: usize,
    drain_timeout: Duration,
    tls: Option<Tls>,
    refused: Arc<AtomicU64>,
}

#[derive(Clone)]
struct Tls {
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for Tls {
    // The acceptor has no `Debug` (it holds keys).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS, handshake within {:?}", self.handshake_timeout)
    }
}

impl Server {
    /// A plain-HTTP listener called `name` in logs, with the default bounds.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            header_read_timeout: HEADER_READ_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            drain_timeout: DRAIN_TIMEOUT,
            tls: None,
            refused: Arc::default(),
        }
    }

    /// How long a connection may take to deliver its first complete request head (at least
    /// 1 ms: zero would close every connection).
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How many connections are served at once (at least one).
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    /// How long requests in flight may take to finish once shutdown starts.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Serves HTTPS: each connection first completes a TLS handshake with `acceptor` within
    /// `handshake_timeout`, or is closed.
    pub fn tls(mut self, acceptor: TlsAcceptor, handshake_timeout: Duration) -> Self {
        self.tls = Some(Tls {
            acceptor,
            handshake_timeout,
        });
        self
    }

    /// Connections closed at once because the listener was at its cap, since it was built.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .max_buf_size(MAX_HEADER_BYTES)
            .header_read_timeout(self.header_read_timeout)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_BYTES as u32);
        builder
    }

    /// Serves `listener` with `handler` (called with the peer's address and each request) until
    /// `shutdown` resolves; then drains (see the module docs) and returns.
    pub async fn serve<H, F, B>(
        self,
        listener: TcpListener,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) where
        H: Fn(SocketAddr, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let name = self.name;
        let builder = Arc::new(self.builder());
        let slots = Arc::new(Semaphore::new(self.max_connections));
        let graceful = GracefulShutdown::new();
        let mut connections = JoinSet::new();
        let mut refusals = Refusals::default();
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(listener = name, %error, "accept failed");
                        tokio::select! {
                            () = tokio::time::sleep(ACCEPT_RETRY) => continue,
                            () = &mut shutdown => break,
                        }
                    }
                },
                () = &mut shutdown => break,
            };
            while connections.try_join_next().is_some() {}
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                self.refused.fetch_add(1, Ordering::Relaxed);
                refusals.refused(name, self.max_connections, peer);
                drop(stream);
                continue;
            };
            refusals.accepted(name);
            let _ = stream.set_nodelay(true);
            let connection = Connection {
                name,
                peer,
                header_read_timeout: self.header_read_timeout,
                builder: builder.clone(),
                watcher: graceful.watcher(),
                _slot: slot,
            };
            let tls = self.tls.clone();
            let handler = handler.clone();
            connections.spawn(async move {
                match tls {
                    None => connection.serve(stream, handler).await,
                    Some(tls) => {
                        let handshake = tls.acceptor.accept(stream);
                        match tokio::time::timeout(tls.handshake_timeout, handshake).await {
                            Ok(Ok(stream)) => connection.serve(stream, handler).await,
                            Ok(Err(error)) => {
                                tracing::debug!(listener = name, %peer, %error, "TLS handshake failed");
                            }
                            Err(_) => {
                                tracing::debug!(listener = name, %peer, "TLS handshake timed out");
                            }
                        }
                    }
                }
            });
        }
        drop(listener);
        if tokio::time::timeout(self.drain_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                listener = name,
                "connections still open after {:?}; closing them",
                self.drain_timeout
            );
        }
        connections.shutdown().await;
    }
}

/// One accepted connection: what its task needs besides the socket and the handler. Its slot
/// of the cap is freed when the task ends.
struct Connection {
    name: &'static str,
    peer: SocketAddr,
    header_read_timeout: Duration,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    async fn serve<I, H, F, B>(self, io: I, handler: H)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(SocketAddr, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Self {
            name,
            peer,
            header_read_timeout,
            builder,
            watcher,
            _slot,
        } = self;
        let requested = Arc::new(Notify::new());
        let service = {
            let requested = requested.clone();
            service_fn(move |request| {
                requested.notify_one();
                let response = handler(peer, request);
                async move { Ok::<_, Infallible>(response.await) }
            })
        };
        let connection = builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let connection = watcher.watch(connection);
        tokio::pin!(connection);
        let before_first_request = tokio::select! {
            ended = &mut connection => Some(ended),
            () = requested.notified() => None,
            () = tokio::time::sleep(header_read_timeout) => {
                tracing::debug!(listener = name, %peer, "no request head in time; closing the connection");
                return;
            }
        };
        let ended = match before_first_request {
            Some(ended) => ended,
            None => connection.await,
        };
        if let Err(error) = ended {
            tracing::debug!(listener = name, %peer, %error, "connection ended with an error");
        }
    }
}

/// Refusals at the cap, logged once per spell rather than once per connection.
#[derive(Debug, Default)]
struct Refusals {
    /// Connections refused since the spell started; zero outside a spell.
    spell: u64,
}

impl Refusals {
    fn refused(&mut self, listener: &'static str, limit: usize, peer: SocketAddr) {
        if self.spell == 0 {
            tracing::warn!(
                listener,
                limit,
                %peer,
                "at the connection limit: closing new connections at once until one ends"
            );
        }
        self.spell += 1;
    }

    fn accepted(&mut self, listener: &'static str) {
        if self.spell > 0 {
            tracing::info!(
                listener,
                refused = self.spell,
                "below the connection limit again"
            );
            self.spell = 0;
        }
    }
}
