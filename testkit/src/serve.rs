//! The accept loop of every in-test server, and [`Upstream`], the app behind a sidecar.
//!
//! Hand-written: hyper-util serves one connection; the loop around it (spawn per connection,
//! HTTP/1.1 and h2c on one port, upgrades allowed, stop when the task is aborted) is the part each
//! test folder used to repeat.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A body a served answer may carry (what hyper can send).
pub trait AnswerBody: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<B: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static> AnswerBody for B {}

/// Answers every request on `listener` (HTTP/1.1 or h2c) with `handler`, until the returned task
/// is aborted or the runtime ends.
pub fn serve<F, Fut, B>(listener: TcpListener, handler: F) -> JoinHandle<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: AnswerBody,
{
    serve_counting(listener, Arc::default(), handler)
}

/// As [`serve()`], adding one to `connections` for each accepted connection.
pub fn serve_counting<F, Fut, B>(
    listener: TcpListener,
    connections: Arc<AtomicUsize>,
    handler: F,
) -> JoinHandle<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: AnswerBody,
{
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            connections.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let answer = handler(request);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// What an [`Upstream`] does with one request.
#[derive(Debug, Clone)]
pub enum Action {
    /// Answer this status and body at once. The body `echo` is replaced by the request body's
    /// length; `refused:REASON` also sets `x-weir-reason: REASON`, as a target sidecar's refusal.
    Respond(u16, &'static str),
    /// Answer this status with the body `slow` after a delay.
    Delay(Duration, u16),
    /// Never answer (the connection stays open).
    Hang,
}

type Behaviour = Arc<dyn Fn(&http::request::Parts, usize) -> Action + Send + Sync>;

/// A real HTTP/1.1 + HTTP/2 app on 127.0.0.1 that answers as told and counts what it sees. Every
/// answer carries `x-served-by: ADDR`, so a test knows which endpoint a proxy chose.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// Requests seen.
    pub hits: Arc<AtomicUsize>,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// The headers of the last request seen.
    pub last_headers: Arc<parking_lot::Mutex<Option<http::HeaderMap>>>,
    /// The body length of the last request seen.
    pub last_body_len: Arc<AtomicUsize>,
}

impl Upstream {
    /// Serves on a free loopback port; `behaviour` gets each request's head and its number
    /// (from 0).
    pub async fn start(
        behaviour: impl Fn(&http::request::Parts, usize) -> Action + Send + Sync + 'static,
    ) -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("an address"), behaviour).await
    }

    /// Answers `status` with `body` to every request.
    pub async fn fixed(status: u16, body: &'static str) -> Self {
        Self::start(move |_, _| Action::Respond(status, body)).await
    }

    /// Answers `status` with `body` to the first `failures` requests, then 200 `ok`.
    pub async fn flaky(failures: usize, status: u16, body: &'static str) -> Self {
        Self::start(move |_, n| match n < failures {
            true => Action::Respond(status, body),
            false => Action::Respond(200, "ok"),
        })
        .await
    }

    /// Answers as `when_set` while the returned flag is set and as `otherwise` when not: the
    /// test flips the flag (an app that recovers, or falls ill, at a moment the test picks).
    pub async fn switched(
        set: bool,
        when_set: Action,
        otherwise: Action,
    ) -> (Self, Arc<std::sync::atomic::AtomicBool>) {
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(set));
        let f = flag.clone();
        let upstream = Self::start(move |_, _| match f.load(Ordering::SeqCst) {
            true => when_set.clone(),
            false => otherwise.clone(),
        })
        .await;
        (upstream, flag)
    }

    /// As [`Upstream::start`], listening on `addr`.
    pub async fn start_on(
        addr: SocketAddr,
        behaviour: impl Fn(&http::request::Parts, usize) -> Action + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("binding {addr}: {e}"));
        let addr = listener.local_addr().expect("a local address");
        let behaviour: Behaviour = Arc::new(behaviour);
        let upstream = Self {
            addr,
            hits: Arc::default(),
            connections: Arc::default(),
            last_headers: Arc::default(),
            last_body_len: Arc::default(),
        };
        let u = upstream.clone();
        serve_counting(listener, upstream.connections.clone(), move |request| {
            u.clone().answer(request, behaviour.clone())
        });
        upstream
    }

    async fn answer(
        self,
        request: Request<Incoming>,
        behaviour: Behaviour,
    ) -> Response<Full<Bytes>> {
        let n = self.hits.fetch_add(1, Ordering::SeqCst);
        let (parts, body) = request.into_parts();
        *self.last_headers.lock() = Some(parts.headers.clone());
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        self.last_body_len.store(body.len(), Ordering::SeqCst);
        let (status, text) = match behaviour(&parts, n) {
            Action::Respond(s, "echo") => (s, body.len().to_string()),
            Action::Respond(s, t) => (s, t.to_owned()),
            Action::Delay(d, s) => {
                tokio::time::sleep(d).await;
                (s, "slow".to_owned())
            }
            Action::Hang => std::future::pending().await,
        };
        let refusal = text.strip_prefix("refused:").map(str::to_owned);
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = StatusCode::from_u16(status).expect("a status code");
        let headers = response.headers_mut();
        if let Some(reason) = refusal {
            headers.insert("x-weir-reason", reason.parse().expect("a header value"));
        }
        headers.insert(
            "x-served-by",
            self.addr.to_string().parse().expect("an address"),
        );
        response
    }

    /// Requests seen so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// An app on a free loopback port that switches a request asking `upgrade: websocket` to the
/// upgraded protocol (101) and then echoes every byte until the client closes; any other
/// request gets 400. For tests of upgrades through a proxy.
pub async fn upgrade_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("a local address");
    serve(listener, |mut request: Request<Incoming>| async move {
        let asked = request
            .headers()
            .get("upgrade")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let mut response = Response::new(Full::new(Bytes::new()));
        if !asked {
            *response.status_mut() = StatusCode::BAD_REQUEST;
            return response;
        }
        let upgrading = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(upgraded) = upgrading.await else {
                return;
            };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 1024];
            while let Ok(n @ 1..) = io.read(&mut buf).await {
                if io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert("upgrade", http::HeaderValue::from_static("websocket"));
        headers.insert("connection", http::HeaderValue::from_static("upgrade"));
        response
    });
    addr
}
