//! Bodies as the proxy moves them: streamed by default, buffered only as far as a retry needs,
//! and held to an idle timeout while they stream.
//!
//! Our own wrappers because tower's `Timeout` bounds only the response headers: a body that stops
//! half-way needs a timer of its own, and resources such as a bulkhead permit or an endpoint's
//! in-flight count must be held until the last byte is sent, not until the headers are.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, BodyStream, Empty, Full, StreamBody, combinators::BoxBody};
use prometheus::IntCounter;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type every proxied request and response uses.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// The client's own request body failed — malformed chunking, cut short, the client gone. Marks
/// the error so that an attempt that fails because of it is known to be the client's fault:
/// answered `bad-request`, never charged to the endpoint or the breaker, never retried.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed: {0}")]
pub struct ClientBodyError(#[source] pub BoxError);

/// The client's request body, its errors marked as [`ClientBodyError`].
pub fn from_client<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(|e| Box::new(ClientBodyError(e.into())) as BoxError)
        .boxed()
}

/// Raised when a streaming body stays silent past its idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("body idle for longer than {0:?}")]
pub struct IdleTimeout(pub Duration);

/// Something to run or drop when a body ends (or is abandoned).
pub type Guard = Box<dyn Send + Sync>;

/// A body that holds guards until it ends and fails when it is idle too long. Generic over the
/// body it wraps, and the first guard kept apart from the others, so that the common case (one
/// guard around an upstream's body) costs one box for the whole, not one per layer.
pub struct GuardedBody<B = ProxyBody> {
    inner: B,
    guard: Option<Guard>,
    more_guards: Vec<Guard>,
    idle: Option<IdleTimer>,
    /// Counts the idle timeout when it fires (held inline: every answer with an idle timeout
    /// would otherwise pay an allocation for a closure that only counts).
    on_idle: Option<IntCounter>,
    /// A dry-run idle timeout: `on_idle` runs when it would fire, and the body goes on.
    idle_watch_only: bool,
}

/// A body's idle timeout: it fires `timeout` after the last frame (or the start). The timer is
/// only made, and only moved, when the body waits: an answer whose frames are there when asked
/// for (most of them) never registers one with the runtime.
struct IdleTimer {
    timeout: Duration,
    since: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            since: Instant::now(),
            sleep: None,
        }
    }

    /// Whether the body, waiting now, has been idle for its timeout.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = crate::clock::deadline(self.since, self.timeout);
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                sleep
            }
            None => self
                .sleep
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        sleep.as_mut().poll(cx).is_ready()
    }
}

impl<B> GuardedBody<B> {
    fn release_guards(&mut self) {
        self.guard = None;
        self.more_guards.clear();
    }
}

impl<B> std::fmt::Debug for GuardedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let guards = usize::from(self.guard.is_some()) + self.more_guards.len();
        f.debug_struct("GuardedBody")
            .field("guards", &guards)
            .finish_non_exhaustive()
    }
}

impl<B> GuardedBody<B>
where
    B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            guard: None,
            more_guards: Vec::new(),
            idle: None,
            on_idle: None,
            idle_watch_only: false,
        }
    }

    pub fn guard(mut self, guard: impl Send + Sync + 'static) -> Self {
        if self.guard.is_none() {
            self.guard = Some(Box::new(guard));
        } else {
            self.more_guards.push(Box::new(guard));
        }
        self
    }

    /// Fails the body when no frame arrives for `timeout`; `on_idle` counts it once when it
    /// fires.
    pub fn idle_timeout(mut self, timeout: Duration, on_idle: IntCounter) -> Self {
        self.idle = Some(IdleTimer::new(timeout));
        self.on_idle = Some(on_idle);
        self
    }

    /// As [`GuardedBody::idle_timeout`] for a dry-run policy: `on_idle` counts once when the
    /// timeout would fire, and the body is not cut.
    pub fn idle_watch(mut self, timeout: Duration, on_idle: IntCounter) -> Self {
        self = self.idle_timeout(timeout, on_idle);
        self.idle_watch_only = true;
        self
    }

    pub fn boxed(self) -> ProxyBody {
        if self.guard.is_none() && self.idle.is_none() {
            return boxed(self.inner);
        }
        BoxBody::new(self)
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let frame = frame.map(|f| f.map_err(Into::into));
                if let Some(idle) = &mut this.idle {
                    idle.since = Instant::now();
                }
                if frame.is_none() || matches!(frame, Some(Err(_))) {
                    this.release_guards();
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                if let Some(idle) = &mut this.idle
                    && idle.poll_expired(cx)
                {
                    let timeout = idle.timeout;
                    this.idle = None;
                    if this.idle_watch_only {
                        if let Some(on_idle) = this.on_idle.take() {
                            on_idle.inc();
                        }
                        // The inner body was polled first: its waker is registered.
                        return Poll::Pending;
                    }
                    this.release_guards();
                    if let Some(on_idle) = this.on_idle.take() {
                        on_idle.inc();
                    }
                    return Poll::Ready(Some(Err(Box::new(IdleTimeout(timeout)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body holding one guard until its last frame is sent or it fails: [`GuardedBody`] for the
/// common case of a single guard and no idle timeout, with the guard kept inline rather than
/// boxed (one allocation less on every proxied answer).
pub struct Holding<B, G> {
    inner: B,
    held: Option<G>,
}

impl<B, G> Holding<B, G> {
    /// Unboxed, for a server that takes the body type as it is.
    pub fn new(inner: B, held: G) -> Self {
        Self {
            inner,
            held: Some(held),
        }
    }
}

impl<B, G> Holding<B, G>
where
    B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
    G: Send + Sync + Unpin + 'static,
{
    pub fn boxed(inner: B, held: G) -> ProxyBody {
        boxed(Self::new(inner, held))
    }
}

impl<B, G> std::fmt::Debug for Holding<B, G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Holding")
            .field("held", &self.held.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: Body + Unpin, G: Unpin> Body for Holding<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = frame {
            self.held = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body read for a possible retry.
#[derive(Debug)]
pub enum RetryableBody {
    /// Whole and small: can be sent as often as needed.
    Buffered(Bytes),
    /// Too large to keep: sent once, starting with what was already read.
    Streaming(ProxyBody),
}

/// Reads `body` into memory when it fits in `limit` bytes; otherwise gives back a body that
/// replays what was read and streams the rest, so a large upload is never lost or held.
pub async fn buffer_for_retry(
    mut body: ProxyBody,
    limit: usize,
) -> Result<RetryableBody, BoxError> {
    if body.size_hint().lower() > limit as u64 {
        return Ok(RetryableBody::Streaming(body));
    }
    let mut read = BytesMut::new();
    loop {
        match body.frame().await {
            None => return Ok(RetryableBody::Buffered(read.freeze())),
            Some(Err(e)) => return Err(e),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    read.extend_from_slice(&data);
                    if read.len() > limit {
                        let read = Frame::data(read.freeze());
                        return Ok(RetryableBody::Streaming(replay(vec![read], Some(body))));
                    }
                }
                // Trailers on a small body: stop buffering and stream them through once.
                Err(frame) => {
                    let trailers = frame.into_trailers().unwrap_or_default();
                    let mut frames = Vec::with_capacity(2);
                    if !read.is_empty() {
                        frames.push(Frame::data(read.freeze()));
                    }
                    frames.push(Frame::trailers(trailers));
                    return Ok(RetryableBody::Streaming(replay(frames, None)));
                }
            },
        }
    }
}

/// Reads a response body whole when it fits in `limit` bytes, to see its trailers before the
/// answer is passed on (a gRPC status comes in them). Gives back the body to pass on — the same
/// frames, replayed — and the trailers when the body ended within the limit and by `until`;
/// past either the body replays what was read and streams the rest, and no trailers are given.
pub async fn read_trailers<B>(
    mut body: B,
    limit: usize,
    until: Instant,
) -> Result<(ProxyBody, Option<http::HeaderMap>), BoxError>
where
    B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let mut read_frames = Vec::new();
    let mut read = 0usize;
    loop {
        let Ok(frame) = tokio::time::timeout_at(until, body.frame()).await else {
            return Ok((replay(read_frames, Some(boxed(body))), None));
        };
        match frame {
            None => return Ok((replay(read_frames, None), Some(http::HeaderMap::new()))),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    read = read.saturating_add(data.len());
                    read_frames.push(Frame::data(data));
                    if read > limit {
                        return Ok((replay(read_frames, Some(boxed(body))), None));
                    }
                }
                Err(frame) => {
                    let trailers = frame.into_trailers().unwrap_or_default();
                    read_frames.push(Frame::trailers(trailers.clone()));
                    return Ok((replay(read_frames, None), Some(trailers)));
                }
            },
        }
    }
}

/// The frames already read, replayed, then the rest of the original body if any.
fn replay(read: Vec<Frame<Bytes>>, rest: Option<ProxyBody>) -> ProxyBody {
    let read = futures::stream::iter(read.into_iter().map(Ok));
    match rest {
        Some(rest) => BoxBody::new(StreamBody::new(read.chain(BodyStream::new(rest)))),
        None => BoxBody::new(StreamBody::new(read)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data frames of these chunks.
    fn data<const N: usize>(chunks: [&'static str; N]) -> Vec<Frame<Bytes>> {
        chunks
            .map(|c| Frame::data(Bytes::from_static(c.as_bytes())))
            .into()
    }

    /// Notes when it is dropped.
    struct Held(std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl Drop for Held {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_holding_body_lets_go_at_its_end_or_its_failure_not_before() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let released = std::sync::Arc::new(AtomicBool::new(false));
        let chunks = replay(data(["one", "two"]), None);
        let mut body = Holding::boxed(chunks, Held(released.clone()));
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "one"
        );
        assert!(!released.load(Ordering::SeqCst), "let go mid-body");
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "two"
        );
        assert!(body.frame().await.is_none());
        assert!(released.load(Ordering::SeqCst), "held past the end");
        drop(body);

        let released = std::sync::Arc::new(AtomicBool::new(false));
        let failing =
            http_body_util::StreamBody::new(futures::stream::iter([
                Err::<Frame<Bytes>, BoxError>("cut".into()),
            ]));
        let mut body = Holding::boxed(failing, Held(released.clone()));
        assert!(body.frame().await.unwrap().is_err());
        assert!(released.load(Ordering::SeqCst), "held past a failure");
        drop(body);
    }

    #[tokio::test]
    async fn small_bodies_are_buffered_and_large_ones_stream_whole() {
        let small = buffer_for_retry(full("hello"), 16).await.unwrap();
        assert!(matches!(small, RetryableBody::Buffered(ref b) if b == "hello"));

        // Four 10-byte chunks, as a chunked upload would arrive.
        let chunks = (0..4).map(|i| Frame::data(Bytes::from(vec![b'a' + i; 10])));
        let large = buffer_for_retry(replay(chunks.collect(), None), 16)
            .await
            .unwrap();
        let RetryableBody::Streaming(body) = large else {
            panic!("a 40-byte body must not be buffered under a 16-byte limit")
        };
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 40);
        assert_eq!(&all[..10], &[b'a'; 10]);
        assert_eq!(&all[30..], &[b'd'; 10]);
    }

    #[tokio::test]
    async fn trailers_are_read_from_small_bodies_and_every_byte_passes_on() {
        let trailers: http::HeaderMap = [(
            http::HeaderName::from_static("grpc-status"),
            "14".parse().unwrap(),
        )]
        .into_iter()
        .collect();
        let mut frames = data(["abc", "de"]);
        frames.push(Frame::trailers(trailers.clone()));
        let body = replay(frames, None);
        let later = Instant::now() + Duration::from_secs(1);
        let (again, seen) = read_trailers(body, 16, later).await.unwrap();
        assert_eq!(seen.as_ref(), Some(&trailers));
        let collected = again.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), "abcde");

        let mut frames = data(["0123456789", "abcdefghij"]);
        frames.push(Frame::trailers(trailers.clone()));
        let body = replay(frames, None);
        let (again, seen) = read_trailers(body, 15, later).await.unwrap();
        assert_eq!(seen, None, "past the limit nothing is held back");
        let collected = again.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes().len(), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn a_watched_idle_timeout_counts_and_cuts_nothing() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let stream = http_body_util::StreamBody::new(tokio_stream_from(rx));
        let fired = IntCounter::new("idle", "watched idle timeouts").unwrap();
        let body = GuardedBody::new(stream)
            .idle_watch(Duration::from_millis(100), fired.clone())
            .boxed();
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            tx.send(Bytes::from_static(b"late")).await.unwrap();
        });
        let all = body.collect().await.unwrap().to_bytes();
        sender.await.unwrap();
        assert_eq!(all, "late");
        assert_eq!(fired.get(), 1);
    }

    /// Frames from a channel, ending when its sender goes.
    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Bytes>,
    ) -> impl futures::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send + Sync + Unpin {
        Box::pin(futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }))
    }
}
