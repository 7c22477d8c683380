//! Accepting connections: HTTP/1.1 and HTTP/2 with prior knowledge on every listener, upgrades
//! allowed, every connection bounded in number and in time, and a graceful drain on shutdown.
//!
//! On the outbound and inbound listeners a connection may have been redirected by the
//! interception rules: its original destination (`SO_ORIGINAL_DST`) is then not the listener.
//! Such a connection is sniffed first; HTTP is served as any other, anything else is spliced to
//! where it was going. A connection made to the listener itself is served exactly as without
//! interception.
//!
//! # Bounds
//! - **At most `--max-connections` per listener.** The accept loop takes a slot of a semaphore
//!   before it accepts; past the limit new connections wait in the kernel's accept queue. The
//!   slot lives with the connection's socket (also through an upgrade) and is freed on drop.
//! - **A complete request head within `--header-read-timeout` of accept**, sniffing included;
//!   on a kept-alive HTTP/1 connection, a later request's head within the same time from its
//!   first byte. Otherwise the connection is closed.
//! - **Idle connections close after [`IDLE_TIMEOUT`]**: no request in progress (HTTP/1) or no
//!   open stream (HTTP/2). The close is graceful (HTTP/2 sends GOAWAY).
//! - **Out of file descriptors**, accept backs off (growing, bounded) and logs once per spell,
//!   while the connections already open keep being served.
//!
//! Why our own supervisor around hyper's connection rather than hyper's timers alone:
//! hyper-util's `auto` builder first reads the protocol preface with no timer at all, so a
//! connection that never sends a byte is never closed; hyper's HTTP/1 header timer starts when
//! hyper begins waiting for a head, so on a kept-alive connection it also counts the idle time
//! before the next request and cannot give a short head bound and a longer idle bound at once;
//! HTTP/2 has no idle timeout. So each connection's socket is wrapped to note when bytes arrive,
//! each request holds an in-progress guard until its response body is sent, and one task per
//! connection closes it at the earliest deadline those allow. hyper's own header timer is off.

mod connection;

use crate::body::ProxyBody;
use crate::intercept::detect::{self, Protocol, SNIFF_TIMEOUT};
use crate::intercept::{opaque, original_dst};
use crate::metrics::Metrics;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::{IntCounterVec, IntGauge};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

/// Request headers larger than this get 431: Envoy's default is 60 KiB, and a proxy that buffers
/// unbounded headers is a memory hazard.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// How long a kept-alive connection may stay without a request in progress before it is closed:
/// long enough for an app's pool to reuse it, short enough that forgotten connections do not
/// pile up.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The first wait after accept failed for lack of resources, and the longest: short enough to
/// pick up again soon after a descriptor frees, long enough not to spin on a full table.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How each listener bounds its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct Limits {
    /// How long a new connection may take to send a complete request head, counted from accept
    /// (a later request on a kept-alive connection: from its first byte). Slower ones are closed.
    #[arg(long, env = "WEIR_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_header_read_timeout)]
    pub header_read_timeout: Duration,
    /// Connections each listener (outbound, inbound, admin) holds at once; more wait in the
    /// kernel's accept queue until one closes.
    #[arg(long, env = "WEIR_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
}

/// A duration in the range every Weir duration has (DESIGN "Bounds"): zero would close every
/// connection at once, and a deadline past the clock's range would panic.
fn parse_header_read_timeout(s: &str) -> Result<Duration, String> {
    let timeout = crate::parse_duration(s)?;
    if (Duration::from_millis(1)..=Duration::from_secs(24 * 3600)).contains(&timeout) {
        Ok(timeout)
    } else {
        Err(format!("{s} is outside 1ms – 24h"))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
        }
    }
}

pub fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(MAX_HEADER_BYTES)
        // Ours counts from the first byte of a head, hyper's from the end of the last answer.
        .header_read_timeout(None)
        // One buffer per message (the body copied behind the head) rather than a queue of
        // buffers for `writev`: cheaper to keep for the small messages most calls are, one
        // syscall either way.
        .writev(false)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        // Finds a peer that vanished while a long stream is open.
        .keep_alive_interval(IDLE_TIMEOUT);
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
    /// The `listener` label of the connection metrics (and the direction of opaque ones).
    fn listener(self) -> &'static str {
        match self {
            Self::Off => "admin",
            Self::ToOriginalDst => crate::metrics::OUTBOUND,
            Self::ToApp(_) => crate::metrics::INBOUND,
        }
    }
}

/// Why a connection closed: the `reason` label of `weir_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// The client closed, or we did after a drain or a `Connection: close`.
    Closed,
    /// A protocol or I/O error (a malformed request, a reset).
    Error,
    /// No complete request head in time.
    HeaderTimeout,
    /// No request in progress for [`IDLE_TIMEOUT`].
    Idle,
}

impl CloseReason {
    pub const ALL: [Self; 4] = [Self::Closed, Self::Error, Self::HeaderTimeout, Self::Idle];

    pub fn label(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Error => "error",
            Self::HeaderTimeout => "header-timeout",
            Self::Idle => "idle",
        }
    }

    fn from_u8(value: u8) -> Self {
        Self::ALL
            .into_iter()
            .find(|r| *r as u8 == value)
            .unwrap_or(Self::Closed)
    }
}

/// The HTTP connections a drain waits for: each holds a [`DrainHold`]; the drain is over when
/// none is left.
#[derive(Debug)]
pub struct Drain(watch::Sender<()>);

/// Held by a connection the drain waits for; dropped when it is done.
#[derive(Debug)]
pub struct DrainHold {
    _held: watch::Receiver<()>,
}

impl Drain {
    pub fn new() -> Self {
        Self(watch::channel(()).0)
    }

    fn hold(&self) -> DrainHold {
        DrainHold {
            _held: self.0.subscribe(),
        }
    }

    /// Resolves once every held connection has ended.
    pub async fn finished(&self) {
        self.0.closed().await;
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

/// Everything a listener needs besides its socket and its handler.
#[derive(Debug, Clone)]
pub struct Serving {
    pub limits: Limits,
    pub metrics: Metrics,
    pub shutdown: watch::Receiver<bool>,
    pub drain: Arc<Drain>,
}

/// Serves `listener` until `serving.shutdown` turns true, then lets open connections finish
/// their requests (each connection is told to close once idle); `serving.drain` says when they
/// all have.
pub async fn serve<H, F>(
    listener: TcpListener,
    interception: Interception,
    handler: H,
    serving: Serving,
) where
    H: Fn(Accepted, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let name = interception.listener();
    let Serving {
        limits,
        metrics,
        mut shutdown,
        drain,
    } = serving;
    let open = metrics.connections.with_label_values(&[name]);
    // Every series from the start, at zero: a rate over a series that appears late misses its
    // first increase.
    for reason in CloseReason::ALL {
        metrics
            .connections_closed
            .with_label_values(&[name, reason.label()]);
    }
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    let builder = Arc::new(builder());
    let mut backoff = AcceptBackoff::default();
    loop {
        // A slot before accepting: past the limit, new connections wait in the kernel's queue.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = stopped(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff.recovered(name);
                    accepted
                }
                Err(e) => {
                    let wait = backoff.failed(name, &e);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => continue,
                        () = stopped(&mut shutdown) => break,
                    }
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let open = OpenConnection::new(slot, open.clone(), &metrics.connections_closed, name);
        // Taken here, not in the task: a drain that starts while the connection is still being
        // sniffed waits for it.
        let hold = drain.hold();
        let handler = handler.clone();
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let original_dst = match interception {
                Interception::Off => None,
                _ => original_dst::original_dst(&stream),
            };
            // Sniffing is part of the head's time.
            let sniff = SNIFF_TIMEOUT.min(limits.header_read_timeout);
            if let Some(original) = original_dst
                && detect::sniff(&stream, sniff).await == Protocol::Opaque
            {
                drop(hold);
                let target = match interception {
                    Interception::ToApp(app) => SocketAddr::new(app, original.port()),
                    Interception::ToOriginalDst | Interception::Off => original,
                };
                opaque::splice(stream, peer, target, name).await;
                drop(open);
                return;
            }
            let accepted = Accepted { peer, original_dst };
            connection::serve_http(stream, accepted, open, handler, &builder, limits, shutdown)
                .await;
            drop(hold);
        });
    }
}

/// One connection's slot and its metrics, released on drop: the gauge goes down and the close is
/// counted with its reason.
struct OpenConnection {
    _slot: OwnedSemaphorePermit,
    accepted_at: Instant,
    open: IntGauge,
    closed: IntCounterVec,
    listener: &'static str,
    reason: CloseReason,
}

impl OpenConnection {
    fn new(
        slot: OwnedSemaphorePermit,
        open: IntGauge,
        closed: &IntCounterVec,
        listener: &'static str,
    ) -> Self {
        open.inc();
        Self {
            _slot: slot,
            accepted_at: Instant::now(),
            open,
            closed: closed.clone(),
            listener,
            reason: CloseReason::Closed,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.dec();
        self.closed
            .with_label_values(&[self.listener, self.reason.label()])
            .inc();
    }
}

/// Accept's answer to failures: errors of one connection are retried at once; running out of
/// descriptors (or memory) is waited out with a growing pause, logged once per spell.
#[derive(Debug, Default)]
struct AcceptBackoff {
    /// The current pause; `None` outside a spell.
    wait: Option<Duration>,
    /// Failed attempts in the current spell.
    failures: u64,
}

impl AcceptBackoff {
    /// How long to wait before accepting again after `error`.
    fn failed(&mut self, listener: &'static str, error: &io::Error) -> Duration {
        if is_about_one_connection(error) {
            tracing::debug!(listener, %error, "accept failed for one connection");
            return Duration::ZERO;
        }
        self.failures += 1;
        let wait = match self.wait {
            None => {
                tracing::warn!(
                    listener, %error,
                    "cannot accept connections (out of file descriptors?): retrying with a \
                     growing pause; open connections are still served"
                );
                ACCEPT_BACKOFF_FIRST
            }
            Some(wait) => (wait * 2).min(ACCEPT_BACKOFF_MAX),
        };
        self.wait = Some(wait);
        wait
    }

    fn recovered(&mut self, listener: &'static str) {
        if self.wait.take().is_some() {
            tracing::info!(
                listener,
                failed_attempts = self.failures,
                "accepting connections again"
            );
            self.failures = 0;
        }
    }
}

/// Errors that concern the connection being accepted, not the listener or the process.
fn is_about_one_connection(error: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | PermissionDenied
    )
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backs_off_growing_and_bounded_and_resets_when_it_recovers() {
        let mut backoff = AcceptBackoff::default();
        let emfile = io::Error::from_raw_os_error(nix::errno::Errno::EMFILE as i32);
        let waits: Vec<Duration> = (0..12)
            .map(|_| backoff.failed("outbound", &emfile))
            .collect();
        assert_eq!(waits[0], ACCEPT_BACKOFF_FIRST);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
        assert_eq!(*waits.last().unwrap(), ACCEPT_BACKOFF_MAX);
        assert_eq!(backoff.failures, 12);

        backoff.recovered("outbound");
        assert_eq!(backoff.wait, None);
        assert_eq!(backoff.failures, 0);
        assert_eq!(backoff.failed("outbound", &emfile), ACCEPT_BACKOFF_FIRST);

        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        let mut fresh = AcceptBackoff::default();
        assert_eq!(fresh.failed("outbound", &aborted), Duration::ZERO);
        assert_eq!(fresh.wait, None);
    }

    #[test]
    fn close_reasons_survive_the_round_trip_through_their_byte() {
        for reason in CloseReason::ALL {
            assert_eq!(CloseReason::from_u8(reason as u8), reason);
        }
    }
}
