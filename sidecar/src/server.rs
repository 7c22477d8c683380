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

use crate::body::{BoxError, ProxyBody};
use crate::intercept::detect::{self, Protocol, SNIFF_TIMEOUT};
use crate::intercept::{opaque, original_dst};
use crate::metrics::Metrics;
use bytes::Bytes;
use http::{Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::{IntCounterVec, IntGauge};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
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
        let accepted_at = Instant::now();
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
            let activity = Arc::new(Activity::new(accepted_at));
            let io = Watched {
                stream,
                activity: activity.clone(),
                open,
            };
            let requests = activity.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let in_progress = requests.request_started(request.version());
                let answer = handler(accepted, request);
                async move {
                    let response = answer.await;
                    Ok::<_, Infallible>(response.map(|body| Answer {
                        body,
                        in_progress: Some(in_progress),
                    }))
                }
            });
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            tokio::pin!(connection);
            supervise(
                connection.as_mut(),
                |connection| connection.graceful_shutdown(),
                &activity,
                limits,
                shutdown,
                peer,
            )
            .await;
            drop(hold);
        });
    }
}

/// Drives one HTTP connection to its end, closing it at the earliest deadline its activity
/// allows; records why it ended in `activity` before the socket is dropped.
async fn supervise<C, E>(
    mut connection: Pin<&mut C>,
    close_gracefully: impl Fn(Pin<&mut C>),
    activity: &Activity,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    peer: SocketAddr,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut draining = false;
    // Set once an idle connection was asked to close: how long it may take to do so.
    let mut closing_by: Option<Instant> = None;
    // Requests do not wake this loop (that would cost every request a wake-up and a timer
    // move). It looks again at least every `period` instead: a deadline that a request moved
    // later is found then, and one that a new head brought nearer (a head's deadline is at most
    // `period` after its first byte) is found in time to be met exactly.
    let period = limits.header_read_timeout.min(IDLE_TIMEOUT);
    let timer = tokio::time::sleep_until(Instant::now() + period);
    tokio::pin!(timer);
    let reason = loop {
        let now = Instant::now();
        let next = match closing_by {
            Some(by) => Some((by, CloseReason::Idle)),
            None => activity.deadline(limits.header_read_timeout),
        };
        match next {
            Some((at, CloseReason::Idle)) if at <= now && closing_by.is_none() => {
                close_gracefully(connection.as_mut());
                closing_by = Some(now + limits.header_read_timeout);
                continue;
            }
            // A head too slow, or an idle close not taken up: drop the socket.
            Some((at, why)) if at <= now => break why,
            _ => {}
        }
        let wake = next.map_or(now + period, |(at, _)| at.min(now + period));
        if timer.deadline() != wake {
            timer.as_mut().reset(wake);
        }
        tokio::select! {
            result = connection.as_mut() => break match result {
                Ok(()) if closing_by.is_some() => CloseReason::Idle,
                Ok(()) => CloseReason::Closed,
                Err(_) if draining => CloseReason::Closed,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                    CloseReason::Error
                }
            },
            () = timer.as_mut() => {}
            () = stopped(&mut shutdown), if !draining => {
                draining = true;
                close_gracefully(connection.as_mut());
            }
        }
    };
    activity.reason.store(reason as u8, Ordering::Relaxed);
}

/// One connection's slot and its metrics, released on drop: the gauge goes down and the close is
/// counted with its reason.
struct OpenConnection {
    _slot: OwnedSemaphorePermit,
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

/// What a connection is doing, as its requests and its socket report it; read by [`supervise`].
struct Activity {
    phase: parking_lot::Mutex<Phase>,
    /// A [`CloseReason`], set by the supervisor for whoever drops the socket last.
    reason: AtomicU8,
}

#[derive(Debug)]
struct Phase {
    accepted_at: Instant,
    requests: u64,
    in_progress: usize,
    http2: bool,
    /// When the last request in progress ended.
    idle_since: Instant,
    /// The first byte after that: a new HTTP/1 head has begun.
    head_started: Option<Instant>,
}

impl Activity {
    fn new(accepted_at: Instant) -> Self {
        Self {
            phase: parking_lot::Mutex::new(Phase {
                accepted_at,
                requests: 0,
                in_progress: 0,
                http2: false,
                idle_since: accepted_at,
                head_started: None,
            }),
            reason: AtomicU8::new(CloseReason::Closed as u8),
        }
    }

    /// When the connection must close, and why; `None` while a request is in progress.
    fn deadline(&self, header_read_timeout: Duration) -> Option<(Instant, CloseReason)> {
        let phase = self.phase.lock();
        if phase.requests == 0 {
            return Some((
                phase.accepted_at + header_read_timeout,
                CloseReason::HeaderTimeout,
            ));
        }
        if phase.in_progress > 0 {
            return None;
        }
        match phase.head_started {
            Some(first_byte) => {
                Some((first_byte + header_read_timeout, CloseReason::HeaderTimeout))
            }
            None => Some((phase.idle_since + IDLE_TIMEOUT, CloseReason::Idle)),
        }
    }

    fn request_started(self: &Arc<Self>, version: Version) -> InProgress {
        let mut phase = self.phase.lock();
        phase.requests += 1;
        phase.in_progress += 1;
        phase.http2 = version == Version::HTTP_2;
        phase.head_started = None;
        InProgress(self.clone())
    }

    fn bytes_read(&self) {
        let mut phase = self.phase.lock();
        // HTTP/2 reads pings and window updates while idle: only HTTP/1 bytes start a head.
        if phase.requests > 0
            && phase.in_progress == 0
            && !phase.http2
            && phase.head_started.is_none()
        {
            phase.head_started = Some(Instant::now());
        }
    }
}

/// A request in progress on its connection, until its answer is sent or abandoned.
struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        let mut phase = self.0.phase.lock();
        phase.in_progress = phase.in_progress.saturating_sub(1);
        if phase.in_progress == 0 {
            phase.idle_since = Instant::now();
            phase.head_started = None;
        }
    }
}

/// A response body that keeps its request in progress until its last frame is sent, it fails,
/// or it is dropped (the client went away). Not `GuardedBody`: that one boxes the body again,
/// which every request would pay for.
struct Answer {
    body: ProxyBody,
    in_progress: Option<InProgress>,
}

impl Body for Answer {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = frame {
            self.in_progress = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An accepted socket that tells its [`Activity`] when bytes arrive, and holds the connection's
/// slot and metrics for as long as the socket lives (an upgraded connection takes it along).
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
    open: OpenConnection,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.open.reason = CloseReason::from_u8(self.activity.reason.load(Ordering::Relaxed));
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
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

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_connection_s_activity() {
        let accepted = Instant::now();
        let header = Duration::from_secs(10);
        let activity = Arc::new(Activity::new(accepted));
        assert_eq!(
            activity.deadline(header),
            Some((accepted + header, CloseReason::HeaderTimeout)),
            "the first head is due a header timeout after accept, bytes or not"
        );
        activity.bytes_read();
        assert_eq!(
            activity.deadline(header),
            Some((accepted + header, CloseReason::HeaderTimeout))
        );

        tokio::time::advance(Duration::from_secs(1)).await;
        let request = activity.request_started(Version::HTTP_11);
        assert_eq!(activity.deadline(header), None, "a request is in progress");
        activity.bytes_read();
        assert_eq!(activity.deadline(header), None, "a body is not a head");

        tokio::time::advance(Duration::from_secs(100)).await;
        drop(request);
        let idle = Instant::now();
        assert_eq!(
            activity.deadline(header),
            Some((idle + IDLE_TIMEOUT, CloseReason::Idle))
        );

        tokio::time::advance(Duration::from_secs(5)).await;
        activity.bytes_read();
        assert_eq!(
            activity.deadline(header),
            Some((Instant::now() + header, CloseReason::HeaderTimeout)),
            "a new head is due a header timeout after its first byte"
        );

        let h2 = Arc::new(Activity::new(Instant::now()));
        drop(h2.request_started(Version::HTTP_2));
        let idle = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        h2.bytes_read();
        assert_eq!(
            h2.deadline(header),
            Some((idle + IDLE_TIMEOUT, CloseReason::Idle)),
            "HTTP/2 frames between streams keep the idle deadline"
        );
    }
}
