//! One HTTP connection, from the accept to its close: what it is doing (a request in progress, a
//! head begun, idle) and the task that closes it at the deadline that allows.
//!
//! Why our own supervisor around hyper's connection rather than hyper's timers alone: see the
//! parent module. The socket is wrapped to note when bytes arrive, each request holds an
//! [`InProgress`] guard until its response body is sent, and [`supervise`] drives hyper's
//! connection and closes it when [`Activity::deadline`] passes.

use super::{Accepted, CloseReason, IDLE_TIMEOUT, Limits, OpenConnection, stopped};
use crate::body::{Holding, ProxyBody};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// Serves HTTP on an accepted socket until the connection ends or a deadline closes it.
pub(super) async fn serve_http<H, F>(
    stream: TcpStream,
    accepted: Accepted,
    open: OpenConnection,
    handler: H,
    builder: &auto::Builder<TokioExecutor>,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) where
    H: Fn(Accepted, Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let activity = Arc::new(Activity::new(open.accepted_at));
    let io = Watched {
        stream,
        activity: activity.clone(),
        open,
    };
    let requests = activity.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let in_progress = requests.request_started(request.version());
        // Boxed: hyper moves the future it gets into its connection's state, and a handler's
        // future is large (every await of the proxying is in it) where a box is one pointer.
        let answer = Box::pin(handler(accepted, request));
        async move {
            let response = answer.await;
            // The request stays in progress until its answer's last frame is sent, it fails, or
            // the client goes away; held inline, not boxed again, as every request pays for it.
            Ok::<_, Infallible>(response.map(|body| Holding::new(body, in_progress)))
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
        accepted.peer,
    )
    .await;
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
    // The shutdown signal is polled once to register this task for it, then only when it has
    // changed (a cheap version check): every wake-up of the connection — each request's arrival,
    // each answer's — would otherwise poll it again, a lock each time.
    let signalled = shutdown.clone();
    let stop = stopped(&mut shutdown);
    tokio::pin!(stop);
    let mut stop_registered = false;
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
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                return Poll::Ready(Event::Ended(result));
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Timer);
            }
            if !draining && (!stop_registered || signalled.has_changed().unwrap_or(true)) {
                stop_registered = true;
                if stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Stop);
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Ended(result) => {
                break match result {
                    Ok(()) if closing_by.is_some() => CloseReason::Idle,
                    Ok(()) => CloseReason::Closed,
                    Err(_) if draining => CloseReason::Closed,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                        CloseReason::Error
                    }
                };
            }
            Event::Timer => {}
            Event::Stop => {
                draining = true;
                close_gracefully(connection.as_mut());
            }
        }
    };
    activity.reason.store(reason as u8, Ordering::Relaxed);
}

/// What woke [`supervise`].
enum Event<E> {
    Ended(Result<(), E>),
    Timer,
    Stop,
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

#[cfg(test)]
mod tests {
    use super::*;

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
