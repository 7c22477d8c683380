//! The client both directions share: keep-alive connections per endpoint, HTTP/1.1 and HTTP/2
//! (prior knowledge), so that a request leaves in the protocol it arrived in.
//!
//! Module map: this file holds the pool and the three ways a request leaves; `plain` is the
//! plain keep-alive exchange (HTTP/1.1, no body, no upgrade: most requests) on connections of our
//! own, with `codec` its wire format; every other HTTP/1 request (a body to stream, an
//! upgrade) and every HTTP/2 one goes through hyper's connection API.
//!
//! Why our own small pool on hyper's connection API (`hyper::client::conn`) rather than
//! hyper-util's legacy `Client`: every request went through that client's general machinery —
//! the request URI rewritten, a race between a pool checkout and a connect boxed and polled, the
//! pool's key (scheme and authority) hashed with SipHash twice, a lock on checkout and another
//! when the connection came back — about a sixth of the sidecar's instructions per request.
//! Our callers already know the endpoint's socket address, its connect timeout and the request's
//! final form, so what is left is small:
//! - **Plain HTTP/1.1** (`plain`): idle connections per endpoint, the most recently used
//!   first, checked as they are handed out (one the endpoint closed is dropped). A connection
//!   goes back when its answer's body has been read to the end and the answer allows another
//!   request (`Connection: close`, a close-delimited body, or bytes past the answer close it).
//! - **Other HTTP/1.1** (hyper): idle connections per endpoint, the most recently used first. A connection
//!   goes back when its answer's body has been read to the end (an answer abandoned half-way
//!   closes it); one that hyper has not yet made ready for the next request, or that is closed,
//!   is never handed out. A request that a pooled connection refused unsent (it was closing) is
//!   sent again on another one, as it never reached the endpoint.
//! - **HTTP/2**: one connection per endpoint, shared by its requests, replaced once it closes.
//! - **Idle connections close after [`POOL_IDLE_TIMEOUT`]** unused: a sweep that runs only while
//!   something is pooled looks every [`SWEEP_PERIOD`].
//! - **Connecting** is bounded by the service's connect timeout, given with each request (two
//!   services may share an endpoint with different timeouts).

mod codec;
mod plain;

use crate::body::{BoxError, ProxyBody};
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long an unused pooled connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How often the pool looks for connections unused for [`POOL_IDLE_TIMEOUT`], while it holds
/// any: such a connection closes within this much after its time.
const SWEEP_PERIOD: Duration = Duration::from_secs(30);

/// Raised when connecting took longer than the service's connect timeout.
#[derive(Debug, thiserror::Error)]
#[error("connect timeout of {0:?} elapsed")]
pub struct ConnectTimeout(pub Duration);

/// Why an upstream call gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection to the endpoint could be made (refused, unreachable, timed out, or the
    /// HTTP/2 handshake failed): the request never left.
    #[error("connecting to {addr} failed")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: BoxError,
    },
    /// The exchange failed on an open connection: reset, closed early, a malformed answer, or
    /// the request's own body failing.
    #[error("the exchange with {addr} failed")]
    Exchange {
        addr: SocketAddr,
        #[source]
        source: BoxError,
    },
}

impl UpstreamError {
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. })
    }
}

#[derive(Clone, Debug, Default)]
pub struct Upstream {
    pool: Arc<Pool>,
}

/// The connections kept between requests.
#[derive(Debug, Default)]
struct Pool {
    state: Mutex<PoolState>,
}

/// Endpoint addresses are ours (from the config or the kernel), not an attacker's choice: a fast
/// hasher is safe.
type ByEndpoint<T> = HashMap<SocketAddr, T, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
struct PoolState {
    /// Plain connections not in use, per endpoint, the most recently used last.
    plain: ByEndpoint<Vec<Idle<plain::Connection>>>,
    /// hyper's HTTP/1.1 connections not in use, per endpoint, the most recently used last.
    idle: ByEndpoint<Vec<Idle<http1::SendRequest<ProxyBody>>>>,
    /// The shared HTTP/2 connection of each endpoint.
    http2: ByEndpoint<Shared>,
    /// Whether a sweep task is running.
    sweeping: bool,
}

/// A connection not in use, and since when.
struct Idle<C> {
    connection: C,
    since: Instant,
}

struct Shared {
    sender: http2::SendRequest<ProxyBody>,
    last_used: Instant,
}

impl<C> std::fmt::Debug for Idle<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle").field("since", &self.since).finish()
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("last_used", &self.last_used)
            .finish()
    }
}

impl Upstream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends `request` to the endpoint at `addr` in the request's own HTTP version, connecting
    /// (when no pooled connection is free) within `connect_timeout`. An HTTP/1 request must be
    /// in origin form with its `Host`; an HTTP/2 one in absolute form.
    pub async fn send(
        &self,
        addr: SocketAddr,
        request: Request<ProxyBody>,
        connect_timeout: Duration,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        if request.version() == http::Version::HTTP_2 {
            self.send_http2(addr, request, connect_timeout).await
        } else if codec::plain_request(&request) {
            self.send_plain(addr, request, connect_timeout).await
        } else {
            self.send_http1(addr, request, connect_timeout).await
        }
    }

    async fn send_plain(
        &self,
        addr: SocketAddr,
        request: Request<ProxyBody>,
        connect_timeout: Duration,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let mut connection = match self.pool.checkout_plain(addr) {
            Some(connection) => connection,
            None => plain::Connection::new(Box::pin(connect(addr, connect_timeout)).await?),
        };
        let head = connection
            .exchange(request)
            .await
            .map_err(|source| UpstreamError::Exchange { addr, source })?;
        let lent = Lent {
            pool: self.pool.clone(),
            addr,
        };
        let body = plain::PlainBody::new(connection, &head, lent);
        let mut response = Response::new(UpstreamBody(Inner::Plain(body)));
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = head.headers;
        if let Some(reason) = head.reason
            && let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason)
        {
            response.extensions_mut().insert(reason);
        }
        Ok(response)
    }

    async fn send_http1(
        &self,
        addr: SocketAddr,
        mut request: Request<ProxyBody>,
        connect_timeout: Duration,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        loop {
            let (mut sender, reused) = match self.pool.checkout(addr) {
                Some(sender) => (sender, true),
                // Boxed: the connect's state is large and rarely needed, and every request's
                // future would otherwise carry (and move) it.
                None => (Box::pin(connect_http1(addr, connect_timeout)).await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    // A switched connection is the upgrade's now, never the pool's.
                    let pooled =
                        (response.status() != http::StatusCode::SWITCHING_PROTOCOLS).then(|| {
                            Pooled {
                                pool: self.pool.clone(),
                                addr,
                                sender,
                            }
                        });
                    return Ok(response.map(|body| UpstreamBody(Inner::Hyper { body, pooled })));
                }
                Err(mut e) => match e.take_message() {
                    // A pooled connection that was closing refused it unsent: the endpoint never
                    // saw it, so another connection may have it.
                    Some(unsent) if reused => request = unsent,
                    _ => {
                        return Err(UpstreamError::Exchange {
                            addr,
                            source: e.into_error().into(),
                        });
                    }
                },
            }
        }
    }

    async fn send_http2(
        &self,
        addr: SocketAddr,
        request: Request<ProxyBody>,
        connect_timeout: Duration,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let (mut sender, reused) = match self.pool.shared(addr) {
            Some(sender) => (sender, true),
            None => {
                let sender = Box::pin(connect_http2(addr, connect_timeout)).await?;
                self.pool.share(addr, sender.clone());
                (sender, false)
            }
        };
        let response = match sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut e) => match e.take_message() {
                Some(unsent) if reused => {
                    let mut sender = Box::pin(connect_http2(addr, connect_timeout)).await?;
                    self.pool.share(addr, sender.clone());
                    sender
                        .send_request(unsent)
                        .await
                        .map_err(|e| UpstreamError::Exchange {
                            addr,
                            source: e.into(),
                        })?
                }
                _ => {
                    return Err(UpstreamError::Exchange {
                        addr,
                        source: e.into_error().into(),
                    });
                }
            },
        };
        Ok(response.map(|body| UpstreamBody(Inner::Hyper { body, pooled: None })))
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, UpstreamError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            return Err(UpstreamError::Connect {
                addr,
                source: e.into(),
            });
        }
        Err(_) => {
            return Err(UpstreamError::Connect {
                addr,
                source: Box::new(ConnectTimeout(timeout)),
            });
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn connect_http1(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<http1::SendRequest<ProxyBody>, UpstreamError> {
    handshake(addr, timeout, |io| async move {
        // One buffer per message rather than a queue for `writev` (as the server side does).
        let (sender, connection) = http1::Builder::new().writev(false).handshake(io).await?;
        // Upgrades allowed: a protocol switch takes the connection over (outbound::splice).
        Ok((sender, connection.with_upgrades()))
    })
    .await
}

async fn connect_http2(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<http2::SendRequest<ProxyBody>, UpstreamError> {
    handshake(addr, timeout, |io| {
        http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
    })
    .await
}

/// Connects within `timeout`, runs hyper's handshake and then its connection in a task of its
/// own; the sender is the caller's.
async fn handshake<Sender, Connection, Handshake>(
    addr: SocketAddr,
    timeout: Duration,
    handshake: impl FnOnce(TokioIo<TcpStream>) -> Handshake,
) -> Result<Sender, UpstreamError>
where
    Handshake: Future<Output = hyper::Result<(Sender, Connection)>>,
    Connection: Future<Output = hyper::Result<()>> + Send + 'static,
{
    let stream = connect(addr, timeout).await?;
    let (sender, connection) = handshake(TokioIo::new(stream))
        .await
        .map_err(|e| connect_failed(addr, e))?;
    run(addr, connection);
    Ok(sender)
}

fn connect_failed(addr: SocketAddr, handshake: hyper::Error) -> UpstreamError {
    UpstreamError::Connect {
        addr,
        source: handshake.into(),
    }
}

/// Runs a connection in a task of its own until it ends.
fn run(addr: SocketAddr, connection: impl Future<Output = hyper::Result<()>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(%addr, error = %e, "upstream connection ended with an error");
        }
    });
}

impl Pool {
    /// An idle plain connection to `addr` that the endpoint has not closed, the most recently
    /// used first; unusable ones are dropped on the way.
    fn checkout_plain(&self, addr: SocketAddr) -> Option<plain::Connection> {
        let mut state = self.state.lock();
        let idle = state.plain.get_mut(&addr)?;
        while let Some(Idle { connection, .. }) = idle.pop() {
            if connection.usable() {
                return Some(connection);
            }
        }
        None
    }

    /// Takes back a plain connection whose exchange is over.
    fn put_plain(self: &Arc<Self>, addr: SocketAddr, connection: plain::Connection) {
        self.park(addr, connection, |state| &mut state.plain);
    }

    /// Keeps `connection` idle for `addr` in the set `idle_set` picks, the most recently used
    /// last.
    fn park<C>(
        self: &Arc<Self>,
        addr: SocketAddr,
        connection: C,
        idle_set: impl FnOnce(&mut PoolState) -> &mut ByEndpoint<Vec<Idle<C>>>,
    ) {
        let since = Instant::now();
        let mut state = self.state.lock();
        idle_set(&mut state)
            .entry(addr)
            .or_default()
            .push(Idle { connection, since });
        self.sweep_later(&mut state);
    }

    /// An idle HTTP/1 connection to `addr` that is ready for a request, the most recently used
    /// first; closed ones are dropped on the way, ones not ready yet stay.
    fn checkout(&self, addr: SocketAddr) -> Option<http1::SendRequest<ProxyBody>> {
        let mut state = self.state.lock();
        let idle = state.idle.get_mut(&addr)?;
        idle.retain(|c| !c.connection.is_closed());
        let ready = idle.iter().rposition(|c| c.connection.is_ready())?;
        Some(idle.remove(ready).connection)
    }

    /// Takes back an HTTP/1 connection whose exchange is over.
    fn put(self: &Arc<Self>, addr: SocketAddr, sender: http1::SendRequest<ProxyBody>) {
        if !sender.is_closed() {
            self.park(addr, sender, |state| &mut state.idle);
        }
    }

    /// The HTTP/2 connection to `addr`, if it is open.
    fn shared(self: &Arc<Self>, addr: SocketAddr) -> Option<http2::SendRequest<ProxyBody>> {
        let mut state = self.state.lock();
        let shared = state.http2.get_mut(&addr)?;
        if shared.sender.is_closed() || !shared.sender.is_ready() {
            state.http2.remove(&addr);
            return None;
        }
        shared.last_used = Instant::now();
        Some(shared.sender.clone())
    }

    fn share(self: &Arc<Self>, addr: SocketAddr, sender: http2::SendRequest<ProxyBody>) {
        let mut state = self.state.lock();
        let last_used = Instant::now();
        state.http2.insert(addr, Shared { sender, last_used });
        self.sweep_later(&mut state);
    }

    /// Starts the sweep unless it runs. Without a runtime (a body dropped after it) nothing is
    /// started: the connections then live as long as the endpoint keeps them.
    fn sweep_later(self: &Arc<Self>, state: &mut PoolState) {
        if state.sweeping {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        state.sweeping = true;
        runtime.spawn(sweep(Arc::downgrade(self)));
    }

    /// Drops what was unused for [`POOL_IDLE_TIMEOUT`] or is closed; whether anything is left.
    fn sweep(&self, now: Instant) -> bool {
        let mut state = self.state.lock();
        let fresh = |since: Instant| now.saturating_duration_since(since) < POOL_IDLE_TIMEOUT;
        state.plain.retain(|_, idle| {
            idle.retain(|c| fresh(c.since) && c.connection.usable());
            !idle.is_empty()
        });
        state.idle.retain(|_, idle| {
            idle.retain(|c| fresh(c.since) && !c.connection.is_closed());
            !idle.is_empty()
        });
        state
            .http2
            .retain(|_, s| fresh(s.last_used) && !s.sender.is_closed());
        let left = !state.plain.is_empty() || !state.idle.is_empty() || !state.http2.is_empty();
        if !left {
            state.sweeping = false;
        }
        left
    }
}

/// Closes idle connections in time, for as long as the pool holds any (and exists).
async fn sweep(pool: Weak<Pool>) {
    loop {
        tokio::time::sleep(SWEEP_PERIOD).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        if !pool.sweep(Instant::now()) {
            return;
        }
    }
}

/// An HTTP/1 connection lent to one exchange.
struct Pooled {
    pool: Arc<Pool>,
    addr: SocketAddr,
    sender: http1::SendRequest<ProxyBody>,
}

/// A plain connection lent to one exchange: where it goes back.
#[derive(Debug)]
struct Lent {
    pool: Arc<Pool>,
    addr: SocketAddr,
}

impl plain::Return for Lent {
    fn give_back(self, connection: plain::Connection) {
        self.pool.put_plain(self.addr, connection);
    }
}

/// An upstream answer's body; an HTTP/1 connection goes back to the pool when it has been read
/// to the end (or had none), and is closed when it is abandoned or fails half-way.
pub struct UpstreamBody(Inner);

enum Inner {
    Plain(plain::PlainBody<Lent>),
    Hyper {
        body: Incoming,
        pooled: Option<Pooled>,
    },
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Inner::Plain(body) => body.fmt(f),
            Inner::Hyper { pooled, .. } => f
                .debug_struct("UpstreamBody")
                .field("pooled", &pooled.is_some())
                .finish_non_exhaustive(),
        }
    }
}

/// A body read from the network fails as I/O does (hyper's errors are kept as the source).
impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::io::Result<Frame<Bytes>>>> {
        match &mut self.0 {
            Inner::Plain(body) => body.poll_frame(cx),
            Inner::Hyper { body, pooled } => {
                let polled = Pin::new(body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => give_back(pooled),
                    Poll::Ready(Some(Err(_))) => *pooled = None,
                    _ => {}
                }
                polled.map_err(std::io::Error::other)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Plain(body) => body.is_end_stream(),
            Inner::Hyper { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Plain(body) => body.size_hint(),
            Inner::Hyper { body, .. } => body.size_hint(),
        }
    }
}

fn give_back(pooled: &mut Option<Pooled>) {
    if let Some(Pooled { pool, addr, sender }) = pooled.take() {
        pool.put(addr, sender);
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body with nothing left to read is not polled: its end is now. (A plain body sees to
        // its own.)
        if let Inner::Hyper { body, pooled } = &mut self.0
            && body.is_end_stream()
        {
            give_back(pooled);
        }
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

#[cfg(test)]
mod tests;
