//! The inbound side: calls to this proxy's application, from whoever makes them.
//!
//! Each call goes through a tower stack built from the route table current at its arrival (the
//! layers are small handles on state the table keeps, so a config change applies to the next
//! call and protection carries over): in this order, each layer's reason beside it,
//! 1. **rate limit** — the cheapest refusal comes first, and it must count every arrival, queued
//!    or not;
//! 2. **bulkhead** — admission to the application: at most `maxConcurrent` at once and a
//!    bounded queue, waited in up to `queueTimeout`;
//! 3. **request timeout** — started once admitted: time spent queued is the bulkhead's to bound;
//!    it bounds the answer's headers, the idle timeout then bounds its body;
//! 4. **the application** ([`App`]), whose answer has any `x-weir-reason` of its own removed.
//!
//! A dry-run block keeps its place in the stack but refuses and cuts nothing: the rate limit and
//! the bulkhead let the call through and count it in `weir_dry_run_total`, a dry-run request
//! timeout is only watched (inside [`App`], from admission as the enforced one), a dry-run idle
//! timeout only counted.
//!
//! Everything a call holds — its queue place or slot, the in-flight gauge — is a guard that
//! travels with it and is released when it is dropped, however the call ends: answered, refused,
//! cut by the timeout, or abandoned by a client that went away. Errors cross the layers as
//! `BoxError` and become refusals in one place, [`Inbound::handle`], with `x-weir-reason` so that
//! the caller's sidecar passes them on and never retries them.

use crate::body::{BoxError, ClientBodyError, GuardedBody, ProxyBody, from_client};
use crate::bulkhead::{Admission, BulkheadLayer, Full};
use crate::clock::watch;
use crate::metrics::{DryRunReason, INBOUND, RequestMetrics, TimeoutKind};
use crate::proxy::headers::forward_request;
use crate::proxy::headers::{
    RequestHead, check_request_head, is_upgrade, splice, strip_hop_by_hop,
};
use crate::proxy::upstream::{Upstream, cause};
use crate::rate_limit::{ClientAddr, RateLimitLayer, RateLimited};
use crate::refusal::{REASON_HEADER, Reason, Refusal};
use crate::store::Store;
use crate::table::DEFAULT_CONNECT_TIMEOUT;
use crate::table::Inbound as Policies;
use http::uri::Authority;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus::{IntCounter, IntGauge};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower::ServiceExt;
use tower::timeout::TimeoutLayer;
use tower::timeout::error::Elapsed;

#[derive(Debug)]
pub struct Inbound {
    pub store: Arc<Store>,
    pub upstream: Upstream,
    /// Where the application listens.
    pub app: Authority,
    /// The same, as the socket address to connect to.
    pub app_addr: SocketAddr,
    /// This proxy's service: the `service` label of inbound metrics.
    pub service: String,
}

impl Inbound {
    /// Serves one call from `peer`. `app` is where an intercepted call goes (the app's host at
    /// the port the caller dialed); `None` means the configured app address.
    pub async fn handle(
        self: Arc<Self>,
        peer: SocketAddr,
        app: Option<SocketAddr>,
        mut request: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        let (app_addr, app) =
            match app.and_then(|addr| Some((addr, Authority::try_from(addr.to_string()).ok()?))) {
                Some(intercepted) => intercepted,
                None => (self.app_addr, self.app.clone()),
            };
        let table = self.store.table();
        let policies = &table.inbound;
        let subset = policies.policy.subset.as_deref().unwrap_or("");
        let metrics = &self.store.metrics;
        let service = self.service.as_str();
        let series = policies
            .metrics
            .get_or_init(|| RequestMetrics::new(metrics, INBOUND, service, subset));
        let method = request.method().clone();
        let uri = request.uri().clone();
        request.extensions_mut().insert(ClientAddr(peer.ip()));
        let timeouts = policies.policy.timeouts.clone().unwrap_or_default();

        // An ambiguous head (two Hosts) or a CONNECT is refused before any policy counts it,
        // as on the outbound side: the app must not read a request two ways.
        let result = match check_request_head(&RequestHead::of(&request)) {
            Err(refusal) => Err(refusal),
            Ok(()) => {
                // A dry-run block's counter, resolved only when there is one.
                let dry = |reason: DryRunReason| {
                    metrics
                        .dry_run
                        .with_label_values(&[service, reason.label()])
                };
                let rate_limit = policies.rate_limiter.clone().map(|limiter| {
                    let dry_run = limiter.config.dry_run;
                    RateLimitLayer::new(limiter, dry_run, || dry(DryRunReason::RateLimited))
                });
                let bulkhead = policies.bulkhead.clone().map(|bulkhead| {
                    let dry_run = bulkhead.config.dry_run;
                    BulkheadLayer::new(bulkhead, dry_run, || dry(DryRunReason::BulkheadFull))
                });
                let (request_timeout, watched_timeout) = match timeouts.request {
                    Some(limit) if timeouts.dry_run => {
                        (None, Some((limit.get(), dry(DryRunReason::Timeout))))
                    }
                    limit => (limit.map(|l| TimeoutLayer::new(l.get())), None),
                };
                let stack = ServiceBuilder::new()
                    .option_layer(rate_limit)
                    .option_layer(bulkhead)
                    .option_layer(request_timeout)
                    .service(App {
                        upstream: self.clone(),
                        app: app.clone(),
                        addr: app_addr,
                        in_flight: series.in_flight.clone(),
                        idle: timeouts.idle.map(|idle| {
                            let counter = match timeouts.dry_run {
                                true => dry(DryRunReason::Timeout),
                                false => series.idle_timeouts(metrics).clone(),
                            };
                            (idle.get(), counter, timeouts.dry_run)
                        }),
                        watched_timeout,
                    });
                stack
                    .oneshot(request)
                    .await
                    .map_err(|error| self.refusal(&error, policies, &app))
            }
        };
        let (response, reason) = match result {
            Ok(response) => (response, None),
            Err(refusal) => {
                let reason = refusal.reason;
                (refusal.into_response(), Some(reason))
            }
        };
        let status = response.status();
        let elapsed = start.elapsed();
        series.record(metrics, status, elapsed);
        tracing::debug!(
            target: "weir::access",
            direction = INBOUND,
            peer = %peer,
            method = %method,
            path = uri.path(),
            status = status.as_u16(),
            reason = reason.map(Reason::as_str),
            micros = elapsed.as_micros() as u64,
        );
        response
    }

    /// The one place where an inbound failure becomes a refusal, and is counted.
    fn refusal(&self, error: &BoxError, policies: &Policies, app: &Authority) -> Refusal {
        let service = self.service.as_str();
        let metrics = &self.store.metrics;
        if let Some(RateLimited(wait)) = error.downcast_ref::<RateLimited>() {
            metrics.rate_limited.with_label_values(&[service]).inc();
            let message = match &policies.rate_limiter {
                Some(limiter) => format!(
                    "{service} accepts {} requests per second (burst {})",
                    limiter.config.requests_per_second, limiter.config.burst
                ),
                None => format!("{service} is rate limited"),
            };
            let mut refusal = Refusal::new(Reason::RateLimited, message);
            refusal.retry_after = Some(*wait);
            return refusal;
        }
        if let Some(full) = error.downcast_ref::<Full>() {
            metrics
                .bulkhead_rejected
                .with_label_values(&[service])
                .inc();
            let message = match (&policies.bulkhead, full) {
                (Some(b), Full::QueueFull) => format!(
                    "{service} has {} requests in progress and {} queued",
                    b.config.max_concurrent, b.config.max_queued
                ),
                (Some(b), Full::QueueTimeout) => format!(
                    "no slot came free within the queue timeout of {}",
                    b.config.queue_timeout
                ),
                (None, full) => full.to_string(),
            };
            return Refusal::new(Reason::BulkheadFull, message);
        }
        if error.is::<Elapsed>() {
            metrics
                .timeouts
                .with_label_values(&[service, TimeoutKind::Request.label()])
                .inc();
            let limit = policies
                .policy
                .timeouts
                .as_ref()
                .and_then(|t| t.request)
                .map_or_else(String::new, |l| l.to_string());
            return Refusal::new(
                Reason::Timeout,
                format!("{service} did not answer within {limit}"),
            );
        }
        match error.downcast_ref::<AppError>() {
            Some(AppError::Connect) => Refusal::new(
                Reason::UpstreamConnectFailure,
                format!("could not connect to the application at {app}"),
            ),
            // The caller's own body broke: its fault, not the application's.
            Some(AppError::Client(message)) => Refusal::new(Reason::BadRequest, message.clone()),
            Some(AppError::Reset) | None => Refusal::new(
                Reason::UpstreamReset,
                "the connection to the application broke before the response",
            ),
        }
    }
}

/// Why the application gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    #[error("could not connect to the application")]
    Connect,
    /// The caller's request body broke on its way (malformed, cut short).
    #[error("{0}")]
    Client(String),
    #[error("the connection to the application broke before the response")]
    Reset,
}

/// The innermost service: the call sent on to the application.
#[derive(Debug, Clone)]
pub struct App {
    /// Whose upstream client sends the call (shared, not cloned per call).
    upstream: Arc<Inbound>,
    app: Authority,
    addr: SocketAddr,
    /// `weir_in_flight_requests{direction="inbound"}`.
    in_flight: IntGauge,
    /// The idle timeout of the answer's body, and its `weir_timeouts_total{kind="idle"}`; or,
    /// when the third value says dry run, the `weir_dry_run_total{reason="timeout"}` counted
    /// when it would have fired (the body is not cut).
    idle: Option<(Duration, IntCounter, bool)>,
    /// A dry-run request timeout: counted on `weir_dry_run_total{reason="timeout"}` when the
    /// answer's headers take longer, and not cut.
    watched_timeout: Option<(Duration, IntCounter)>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

impl tower::Service<Request<Incoming>> for App {
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = BoxFuture<Response<ProxyBody>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The upstream client pools connections and waits for one inside the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        Box::pin(self.clone().forward(request))
    }
}

impl App {
    async fn forward(
        self,
        mut request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, BoxError> {
        let admission = request.extensions_mut().remove::<Admission>();
        let in_flight = InFlight::start(self.in_flight);
        let (parts, body) = request.into_parts();
        let upgrade = is_upgrade(&parts);
        let mut downstream = Request::from_parts(parts.clone(), ());
        let client_side = upgrade.then(|| hyper::upgrade::on(&mut downstream));
        let mut forward_parts = parts;
        forward_parts.extensions = http::Extensions::new();
        let request = forward_request(&forward_parts, &self.app, from_client(body), upgrade);
        let upstream = &self.upstream.upstream;
        // The future is made in each arm (a future moved out of a local still takes room in
        // this one); only a dry-run timeout pays for its boxed watch.
        let sent = match self.watched_timeout.clone() {
            Some((limit, counter)) => {
                let at = crate::clock::deadline(Instant::now(), limit);
                let sending = upstream.send(self.addr, request, DEFAULT_CONNECT_TIMEOUT);
                let watched = watch(sending, at, move || {
                    counter.inc();
                    tracing::debug!("dry run: the request timeout would have fired");
                });
                Box::pin(watched).await.0
            }
            None => {
                upstream
                    .send(self.addr, request, DEFAULT_CONNECT_TIMEOUT)
                    .await
            }
        };
        let mut response = sent.map_err(|e| {
            if let Some(client) = cause::<ClientBodyError>(&e) {
                AppError::Client(client.to_string())
            } else if e.is_connect() {
                AppError::Connect
            } else {
                AppError::Reset
            }
        })?;
        // Only Weir's own refusals carry it: one the app set would make the caller's sidecar
        // take the app's answer for a refusal (and skip its retries and fallback).
        response.headers_mut().remove(REASON_HEADER);
        if let (Some(client_side), StatusCode::SWITCHING_PROTOCOLS) =
            (client_side, response.status())
        {
            let app_side = hyper::upgrade::on(&mut response);
            // The switched connection is a call at the application as long as it lasts.
            splice(client_side, app_side, (admission, in_flight));
            let (mut parts, _) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers, true);
            return Ok(Response::from_parts(parts, crate::body::empty()));
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        // The slot and the in-flight count are held until the answer's last byte is sent.
        let mut body = GuardedBody::new(body).guard(in_flight);
        if let Some(admission) = admission {
            body = body.guard(admission);
        }
        match self.idle {
            Some((idle, counter, true)) => body = body.idle_watch(idle, counter),
            Some((idle, counter, false)) => body = body.idle_timeout(idle, counter),
            None => {}
        }
        Ok(Response::from_parts(parts, body.boxed()))
    }
}

/// Holds one request in the inbound in-flight gauge until dropped.
#[derive(Debug)]
struct InFlight(IntGauge);

impl InFlight {
    fn start(gauge: IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
