//! The HTTP edge shared by every service: the server loop (with the fault knobs, `/health` and
//! per-service answer headers), JSON in and out, the one mapping from errors to answers
//! ([`ApiError`]), and the [`Client`] for calls to other services.
//!
//! Calls to other services go to the sidecar's outbound listener (`--outbound`) with
//! `Host: <service>`: the mesh resolves the service and applies its policies. Without a sidecar
//! (tests, or running a service by hand) `--peer <service>=<addr>` sends a service's calls
//! straight to its address; a `--peer` entry wins over `--outbound` for its service.

use crate::faults::{FaultSettings, Faults, Verdict};
use crate::store::StoreError;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;

pub type Request = hyper::Request<Incoming>;
pub type Response = hyper::Response<Full<Bytes>>;

/// Request bodies larger than this are refused: every request of the shop is small JSON.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The header that opts a non-idempotent method into the mesh's retries (Weir's contract):
/// sent on POSTs that are idempotent by key.
pub const RETRY_OPT_IN: &str = "x-weir-retry";

/// Marks answers made by the fault knobs, so a demo can tell injected failures from real ones.
pub const FAULT_HEADER: &str = "x-shop-fault";

/// An error answer: a status and `{"error": "<code>", "message": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "upstream-failed", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn into_response(self) -> Response {
        let mut response = json(
            self.status,
            &serde_json::json!({"error": self.code, "message": self.message}),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "storage failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage-failed",
            e.to_string(),
        )
    }
}

/// `value` as a JSON answer.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot serialize an answer");
        b"{\"error\":\"internal\"}".to_vec()
    });
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// 200 with `found` as JSON, or 404 saying `missing` (a look-up by id).
pub fn found<T: Serialize>(
    found: Option<T>,
    missing: impl FnOnce() -> String,
) -> Result<Response, ApiError> {
    found
        .map(|value| json(StatusCode::OK, &value))
        .ok_or_else(|| ApiError::not_found(missing()))
}

/// The request body as JSON of type `T`; a clear 400 otherwise.
pub async fn read_json<T: DeserializeOwned>(request: Request) -> Result<T, ApiError> {
    let body = Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// The query string's parameters (the last one wins when a name repeats).
pub fn query(request: &Request) -> HashMap<String, String> {
    request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path split into segments: `/orders/ord-1` → `["orders", "ord-1"]`.
pub fn segments(request: &Request) -> Vec<String> {
    request
        .uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect()
}

/// A parameter that must parse when present: `limit=abc` is a 400, not silently ignored.
pub fn parse_param<T: FromStr>(
    params: &HashMap<String, String>,
    name: &str,
) -> Result<Option<T>, ApiError> {
    params
        .get(name)
        .map(|v| {
            v.parse().map_err(|_| {
                ApiError::bad_request(format!("query parameter {name}={v:?} is invalid"))
            })
        })
        .transpose()
}

/// A service's own routes. `/health` and `/faults` are answered before they are asked. Each
/// call gets its `key` to match on, the method and the path's [`segments`] already split out
/// (`("GET", ["orders", "ord-1"])`), and the request itself for its body, query and headers.
pub trait Routes: Send + Sync + 'static {
    fn route(
        &self,
        key: (&str, &[&str]),
        request: Request,
    ) -> impl Future<Output = Result<Response, ApiError>> + Send;
}

/// A running HTTP server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// Work that lives as long as the server (the saga sweeper), stopped with it.
    background: Vec<JoinHandle<()>>,
}

/// How long a graceful shutdown waits for requests in flight (a hung one would wait forever).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to send a request's headers, on a new connection or between two
/// requests of a kept-alive one; a silent or trickling client is cut off after it. hyper's own
/// default, which the callers' connection pools already lived with.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; past it the server accepts no more until one closes (the others
/// wait in the listen backlog), so a flood of sockets cannot exhaust the file descriptors.
const MAX_CONNECTIONS: usize = 4096;

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Ties `task` to the server's life.
    pub fn with_background(mut self, task: JoinHandle<()>) -> Self {
        self.background.push(task);
        self
    }

    /// Stops accepting, lets requests in flight finish (bounded) and stops background work.
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        for task in &self.background {
            task.abort();
        }
        let _ = self.task.await;
        for task in self.background {
            let _ = task.await;
        }
    }

    /// Runs until `signal` resolves, then shuts down.
    pub async fn run_until(self, signal: impl Future<Output = ()>) {
        signal.await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}

/// Serves `routes` on `listener`, with the fault knobs and `/health` in front, and `stamp`
/// headers on every answer. This is the one accept loop of the shop's binary: every service
/// listens through it, with [`HEADER_READ_TIMEOUT`], [`MAX_CONNECTIONS`] and a graceful drain
/// bounded by [`DRAIN_TIMEOUT`].
pub fn serve<R: Routes>(
    listener: TcpListener,
    routes: Arc<R>,
    faults: Faults,
    stamp: HeaderMap,
) -> std::io::Result<Server> {
    serve_with_cap(listener, routes, faults, stamp, MAX_CONNECTIONS)
}

fn serve_with_cap<R: Routes>(
    listener: TcpListener,
    routes: Arc<R>,
    faults: Faults,
    stamp: HeaderMap,
    max_connections: usize,
) -> std::io::Result<Server> {
    let addr = listener.local_addr()?;
    let (shutdown, mut stopped) = watch::channel(false);
    let stamp = Arc::new(stamp);
    let task = tokio::spawn(async move {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(true);
        let builder = Arc::new(builder);
        let graceful = GracefulShutdown::new();
        let slots = Arc::new(Semaphore::new(max_connections));
        loop {
            // A slot first, then the connection: at the cap, new clients wait in the backlog.
            let (stream, slot) = tokio::select! {
                accepted = accept(&listener, &slots) => accepted,
                () = until_stopped(&mut stopped) => break,
            };
            let _ = stream.set_nodelay(true);
            let (routes, faults, stamp) = (routes.clone(), faults.clone(), stamp.clone());
            let service = service_fn(move |request| {
                let (routes, faults, stamp) = (routes.clone(), faults.clone(), stamp.clone());
                async move {
                    let mut response = handle(&*routes, &faults, request).await;
                    for (name, value) in stamp.iter() {
                        response.headers_mut().insert(name, value.clone());
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            let (builder, watcher, mut stopped) =
                (builder.clone(), graceful.watcher(), stopped.clone());
            tokio::spawn(async move {
                // hyper's header timeout starts with the first byte, and telling HTTP/1 from
                // HTTP/2 waits for bytes too: a client that never sends one is cut off here.
                let mut first_byte = [0u8];
                tokio::select! {
                    first = tokio::time::timeout(HEADER_READ_TIMEOUT, stream.peek(&mut first_byte)) => {
                        // Nothing in time, gone (0 bytes) or broken: nothing to serve.
                        if !matches!(first, Ok(Ok(n)) if n > 0) {
                            return;
                        }
                    }
                    () = until_stopped(&mut stopped) => return,
                }
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                if let Err(e) = watcher.watch(connection).await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                drop(slot);
            });
        }
        drop(listener);
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; leaving them");
        }
    });
    Ok(Server {
        addr,
        shutdown,
        task,
        background: Vec::new(),
    })
}

/// The next connection, with the slot it holds while it lives.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> (tokio::net::TcpStream, OwnedSemaphorePermit) {
    loop {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the server never closes its semaphore");
        match listener.accept().await {
            Ok((stream, _)) => return (stream, slot),
            Err(e) => {
                // Out of file descriptors, mostly: wait a little rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    // Errors only when the sender is gone, which also means stop.
    let _ = stopped.wait_for(|stop| *stop).await;
}

async fn handle<R: Routes>(routes: &R, faults: &Faults, request: Request) -> Response {
    if request.uri().path() == "/faults" {
        return fault_knobs(faults, request)
            .await
            .unwrap_or_else(ApiError::into_response);
    }
    if faults.apply().await == Verdict::Fail {
        let mut response = ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "injected-fault",
            "failed on purpose by the fault knobs (PUT /faults)",
        )
        .into_response();
        response
            .headers_mut()
            .insert(FAULT_HEADER, HeaderValue::from_static("error"));
        return response;
    }
    if request.uri().path() == "/health" && request.method() == Method::GET {
        return json(StatusCode::OK, &serde_json::json!({"status": "ok"}));
    }
    let segments = segments(&request);
    let path: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = request.method().clone();
    routes
        .route((method.as_str(), &path), request)
        .await
        .unwrap_or_else(ApiError::into_response)
}

async fn fault_knobs(faults: &Faults, request: Request) -> Result<Response, ApiError> {
    match *request.method() {
        Method::GET => Ok(json(StatusCode::OK, &faults.get())),
        Method::PUT => {
            let settings: FaultSettings = read_json(request).await?;
            faults
                .set(settings)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            Ok(json(StatusCode::OK, &faults.get()))
        }
        _ => Err(method_not_allowed()),
    }
}

pub fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "method not allowed here",
    )
}

pub fn no_route(request: &Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ))
}

/// `--peer <service>=<addr>`: send calls for one service straight to an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub service: String,
    pub addr: SocketAddr,
}

impl FromStr for Peer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (service, addr) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not <service>=<host:port>"))?;
        let addr = addr
            .parse()
            .map_err(|e| format!("{addr:?} is not a socket address: {e}"))?;
        Ok(Self {
            service: service.to_owned(),
            addr,
        })
    }
}

/// Where a service's calls to other services go.
#[derive(Debug, Clone, Default)]
pub struct Routing {
    /// The sidecar's outbound listener; calls carry `Host: <service>`.
    pub outbound: Option<SocketAddr>,
    /// Direct addresses per service, winning over `outbound`.
    pub peers: BTreeMap<String, SocketAddr>,
}

impl Routing {
    pub fn new(outbound: Option<SocketAddr>, peers: impl IntoIterator<Item = Peer>) -> Self {
        Self {
            outbound,
            peers: peers.into_iter().map(|p| (p.service, p.addr)).collect(),
        }
    }

    pub fn peer(mut self, service: &str, addr: SocketAddr) -> Self {
        self.peers.insert(service.to_owned(), addr);
        self
    }

    fn target(&self, service: &str) -> Option<SocketAddr> {
        self.peers.get(service).copied().or(self.outbound)
    }
}

/// Why a call to another service got no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no route to {0}: give --outbound, or --peer {0}=<addr>")]
    NoRoute(String),
    /// Nothing was sent: the connection could not be made.
    #[error("cannot connect to {service}: {message}")]
    Connect { service: String, message: String },
    #[error("{service} did not answer within {timeout:?}")]
    Timeout { service: String, timeout: Duration },
    #[error("calling {service}: {message}")]
    Transport { service: String, message: String },
    #[error("{service} answered {status} with a body that is not what was expected: {message}")]
    Decode {
        service: String,
        status: StatusCode,
        message: String,
    },
}

/// An HTTP answer from another service, whatever its status.
#[derive(Debug, Clone)]
pub struct Reply {
    pub service: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }

    pub fn json<T: DeserializeOwned>(&self) -> Result<T, CallError> {
        serde_json::from_slice(&self.body).map_err(|e| CallError::Decode {
            service: self.service.clone(),
            status: self.status,
            message: e.to_string(),
        })
    }

    /// The error's `message` (or its `error` code, or the start of the body): for logs and for
    /// reasons shown to users.
    pub fn message(&self) -> String {
        let parsed: Option<serde_json::Value> = serde_json::from_slice(&self.body).ok();
        let field = |name| {
            parsed
                .as_ref()
                .and_then(|v| v.get(name))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        field("message")
            .or_else(|| field("error"))
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&self.body[..self.body.len().min(200)]).into_owned()
            })
    }
}

/// Calls to other services: JSON over HTTP/1.1, through the sidecar or straight to a peer, each
/// call bounded by a timeout so a hung service cannot hold a caller forever.
#[derive(Debug, Clone)]
pub struct Client {
    routing: Arc<Routing>,
    http: LegacyClient<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl Client {
    pub fn new(routing: Routing, timeout: Duration) -> Self {
        let http = LegacyClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http();
        Self {
            routing: Arc::new(routing),
            http,
            timeout,
        }
    }

    pub async fn get(&self, service: &str, path: &str) -> Result<Reply, CallError> {
        self.send(service, Method::GET, path, None, false).await
    }

    pub async fn delete(&self, service: &str, path: &str) -> Result<Reply, CallError> {
        self.send(service, Method::DELETE, path, None, false).await
    }

    /// A POST that is idempotent by a key in its body (an order id): marked so the mesh may
    /// retry it.
    pub async fn post_idempotent<T: Serialize + ?Sized>(
        &self,
        service: &str,
        path: &str,
        body: &T,
    ) -> Result<Reply, CallError> {
        let body = serde_json::to_vec(body).map_err(|e| CallError::Transport {
            service: service.to_owned(),
            message: e.to_string(),
        })?;
        self.send(service, Method::POST, path, Some(Bytes::from(body)), true)
            .await
    }

    async fn send(
        &self,
        service: &str,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        retry_opt_in: bool,
    ) -> Result<Reply, CallError> {
        let target = self
            .routing
            .target(service)
            .ok_or_else(|| CallError::NoRoute(service.to_owned()))?;
        let transport = |message: String| CallError::Transport {
            service: service.to_owned(),
            message,
        };
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{target}{path}"))
            // The mesh routes by Host; a direct peer ignores it.
            .header(header::HOST, service)
            .header(header::ACCEPT, "application/json");
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        if retry_opt_in {
            builder = builder.header(RETRY_OPT_IN, "true");
        }
        let request = builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| transport(e.to_string()))?;
        let call = async {
            let response = self.http.request(request).await.map_err(|e| {
                if e.is_connect() {
                    CallError::Connect {
                        service: service.to_owned(),
                        message: e.to_string(),
                    }
                } else {
                    transport(e.to_string())
                }
            })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, 4 * MAX_BODY_BYTES)
                .collect()
                .await
                .map_err(|e| transport(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(Reply {
                service: service.to_owned(),
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| CallError::Timeout {
                service: service.to_owned(),
                timeout: self.timeout,
            })?
    }
}

#[cfg(test)]
mod tests;
