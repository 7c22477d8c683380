//! The outbound side: the application's calls to other services.
//!
//! Per request, in this order (each step's reason beside it):
//! 1. find the target service in the proxy-form URI or the Host header — the app addresses
//!    services by name, never by endpoint; on a connection that interception redirected here,
//!    a Host that names no known service falls back to the connection's original destination
//!    (a service's ClusterIP and port), and a destination that is no service is passed through
//!    as plain HTTP — interception must not break calls to the world outside the mesh;
//! 2. resolve its route, subscribing on first use — a proxy holds only what it calls;
//! 3. pick the subset by rules, then weights — the canary decision is made once per request so
//!    that retries stay in the same subset;
//! 4. inject the policy's faults — an abort answers before anything is charged or retried, a
//!    delay is held before the first try, inside the request timeout;
//! 5. under the request timeout, try: breaker admission → balancer pick among non-ejected
//!    endpoints, passing over those an app's 429 asked to be spared → send under the per-try
//!    timeout → read a gRPC status when the policy retries on one → charge the outcome to the
//!    endpoint (outlier detection, latency) and to the breaker → retry if the class, the method,
//!    the body and the budget allow, after a full-jitter backoff (no shorter than an app's
//!    `Retry-After` on a 429);
//! 6. turn local failures into refusals, or into the fallback answer when the policy has one;
//! 7. count and log, and answer `x-weir-debug: 1` with `x-weir-route`.
//!
//! A dry-run block takes the same decisions but acts on none: where it would have refused, cut,
//! retried, ejected or injected, it counts (`weir_dry_run_total`) and lets the call go on.
//! Nothing of the debug trace is built unless the client asked for it.

use crate::body::{ProxyBody, RetryableBody, boxed, buffer_for_retry, empty, from_client, full};
use crate::clock::watch;
use crate::metrics::{DryRunReason, OUTBOUND, RequestMetrics, TimeoutKind, UNKNOWN_SERVICE};
use crate::proxy::headers::{
    RequestHead, check_request_head, is_upgrade, splice, strip_hop_by_hop,
};
use crate::proxy::upstream::Upstream;
use crate::refusal::{REASON_HEADER, Reason, Refusal};
use crate::retry::{Failure, RETRY_OPT_IN_HEADER, is_idempotent};
use crate::route_trace::{ROUTE_HEADER, RouteTrace};
use crate::store::Store;
use crate::table::{DEFAULT_CONNECT_TIMEOUT, ServiceRoute, Subset};
use http::header::HeaderName;
use http::{HeaderValue, Request, Response, StatusCode, header, request};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tower::retry::budget::Budget;

mod faults;
mod target;
mod tries;

pub use crate::proxy::headers::forward_request;
pub use target::target_of;

/// What a request was routed to, handed down through its tries.
#[derive(Debug, Clone, Copy)]
struct Call<'c> {
    route: &'c Arc<ServiceRoute>,
    subset: &'c Subset,
    parts: &'c request::Parts,
}

/// Marks a fallback answer with the reason it replaced.
const FALLBACK_HEADER: &str = "x-weir-fallback";

/// [`REASON_HEADER`] parsed once: a name given as a string is parsed at every lookup.
const REASON: HeaderName = HeaderName::from_static(REASON_HEADER);

/// Everything the outbound side needs, shared by all its connections.
#[derive(Debug)]
pub struct Outbound {
    pub store: Arc<Store>,
    pub upstream: Upstream,
    /// The proxy's own namespace: a bare service name resolves here, as Kubernetes DNS does.
    pub namespace: String,
}

/// What one call produced before counting: an answer to pass on, or a refusal to make.
type CallResult = Result<Response<ProxyBody>, Refusal>;

impl Outbound {
    /// Serves one request of the app. `original_dst` is where the connection was going when
    /// interception redirected it here; `None` for a connection made to the listener itself.
    pub async fn handle(
        self: Arc<Self>,
        original_dst: Option<SocketAddr>,
        request: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        let (mut parts, body) = request.into_parts();
        // Asked for by the client and never forwarded; nothing is allocated unless asked.
        let mut trace = RouteTrace::requested(&mut parts.headers);
        if let Err(refusal) = check_request_head(&RequestHead::of_parts(&parts)) {
            return self.finish(None, &parts, start, Err(refusal), 0, trace);
        }
        let route = match original_dst {
            None => {
                let (key, port) = match target_of(&parts, &self.namespace) {
                    Ok(target) => target,
                    Err(refusal) => {
                        return self.finish(None, &parts, start, Err(refusal), 0, trace);
                    }
                };
                match self
                    .store
                    .resolve(&key, port, DEFAULT_CONNECT_TIMEOUT)
                    .await
                {
                    Ok(route) => route,
                    Err(why) => {
                        return self.finish(None, &parts, start, Err(why.into()), 0, trace);
                    }
                }
            }
            Some(original) => match self.route_intercepted(&parts, original).await {
                Some(route) => route,
                None => {
                    let result = self.passthrough(original, parts.clone(), body).await;
                    return self.finish(None, &parts, start, result, 1, trace);
                }
            },
        };
        let subset = route.choose_subset(&parts, Instant::now());
        if let Some(trace) = &mut trace {
            trace.route(route.key.to_string(), &subset.name);
        }
        // A guard, not inc/dec around the await: a client that goes away drops this future.
        let in_flight = InFlightGauge::enter(&self.series(&route, subset).in_flight);
        let (result, attempts) = if is_upgrade(&parts) {
            (self.upgrade(&route, subset, parts.clone(), body).await, 1)
        } else {
            let call = Call {
                route: &route,
                subset,
                parts: &parts,
            };
            self.call(call, from_client(body), start, &mut trace).await
        };
        drop(in_flight);
        let result = apply_fallback(&route, result);
        self.finish(
            Some((&route, subset)),
            &parts,
            start,
            result,
            attempts,
            trace,
        )
    }

    /// The request series of `subset` of `route`.
    fn series<'s>(&self, route: &ServiceRoute, subset: &'s Subset) -> &'s RequestMetrics {
        subset.metrics.get_or_init(|| {
            RequestMetrics::new(&self.store.metrics, OUTBOUND, &route.key.name, &subset.name)
        })
    }

    /// The service port an intercepted request is for: the one its Host names if this proxy
    /// knows it (at the Host's port, else at the port dialed, else as without interception),
    /// else the one whose address the connection was going to, else none.
    async fn route_intercepted(
        &self,
        parts: &request::Parts,
        original: SocketAddr,
    ) -> Option<Arc<ServiceRoute>> {
        if let Ok((key, port)) = target_of(parts, &self.namespace) {
            // A Host without a port: the port the app dialed says which of the service's; when
            // the service has no such port (the app dialed a pod, say), a Host without a port
            // means what it means without interception.
            let dialed = port.or(Some(original.port()));
            match self
                .store
                .resolve(&key, dialed, DEFAULT_CONNECT_TIMEOUT)
                .await
            {
                Ok(route) => return Some(route),
                Err(_)
                    if port.is_none()
                        && let Some(Ok(route)) =
                            self.store.table().route(&key.namespace, &key.name, None) =>
                {
                    return Some(route.clone());
                }
                Err(why) => tracing::debug!(
                    %original, message = %why.message,
                    "the Host of an intercepted request names no known service; routing by its original destination"
                ),
            }
        }
        self.store.table().service_at(original).cloned()
    }

    /// An intercepted request to a destination that is no service of the mesh: sent on to where
    /// it was going, without policy, as the app would have without Weir.
    async fn passthrough(
        &self,
        original: SocketAddr,
        parts: request::Parts,
        body: Incoming,
    ) -> CallResult {
        let Ok(authority) = http::uri::Authority::try_from(original.to_string()) else {
            return Err(Refusal::new(
                Reason::BadRequest,
                format!("{original} is not a usable destination"),
            ));
        };
        self.send_once(&authority, original, parts, body).await
    }

    /// Injects the policy's faults, then tries, retries and times out as the policy says.
    async fn call(
        &self,
        call: Call<'_>,
        body: ProxyBody,
        start: Instant,
        trace: &mut Option<Box<RouteTrace>>,
    ) -> (CallResult, u32) {
        let Call { route, parts, .. } = call;
        let policy = route.policy();
        let service = route.key.name.as_str();
        let metrics = &self.store.metrics;
        let timeouts = policy.timeouts.as_ref();
        let dry_timeouts = timeouts.is_some_and(|t| t.dry_run);
        // The deadline is handed down rather than wrapped around the tries: an attempt it cuts
        // must still be charged to its endpoint and the breaker as a timeout. A dry-run
        // deadline cuts nothing: it is only watched.
        let deadline = timeouts
            .and_then(|t| t.request)
            .map(|limit| (limit, crate::clock::deadline(start, limit.get())));
        let (enforced, watched) = if dry_timeouts {
            (None, deadline)
        } else {
            (deadline, None)
        };
        let per_try = timeouts.and_then(|t| t.per_try).map(|d| d.get());
        let limits = TryLimits {
            per_try: per_try.filter(|_| !dry_timeouts),
            watched_per_try: per_try.filter(|_| dry_timeouts),
            deadline: enforced.map(|(_, at)| at),
        };
        let mut attempts = 0;
        // Boxed: only calls with faults configured pay for the delay's timer.
        let faulted = match &policy.faults {
            Some(faults) => {
                Box::pin(self.inject_faults(route, faults, limits.deadline, trace)).await
            }
            None => Ok(()),
        };
        let result = match faulted {
            Err(end) => Err(end),
            Ok(()) => {
                route.budget.budget.deposit();
                let retries = policy.retries.as_ref().filter(|_| {
                    is_idempotent(&parts.method)
                        || parts
                            .headers
                            .get(RETRY_OPT_IN_HEADER)
                            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
                });
                let limit = self.store.table().config.limits.retry_buffer_bytes as usize;
                let (body, dry_replayable) = match retries {
                    Some(retries) if !retries.dry_run => {
                        match buffer_for_retry(body, limit).await {
                            Ok(body) => (body, false),
                            Err(e) => {
                                let refusal = Refusal::new(
                                    Reason::BadRequest,
                                    format!("reading the request body failed: {e}"),
                                );
                                return (Err(refusal), 0);
                            }
                        }
                    }
                    // Dry run: the body is not held back; it would have been buffered (and so
                    // replayable) when its announced size fits the limit.
                    Some(_) => {
                        let fits = http_body::Body::size_hint(&body)
                            .upper()
                            .is_some_and(|n| n <= limit as u64);
                        (RetryableBody::Streaming(body), fits)
                    }
                    None => (RetryableBody::Streaming(body), false),
                };
                // One call site, so it inlines as before; the dry-run watch is boxed so that a
                // plain call's future does not grow by it (the whole handler future is moved
                // into its box on every request: issue 13 counts those bytes).
                let mut watch_exceeded = false;
                let tries = self.tries(call, body, limits, dry_replayable, &mut attempts, trace);
                let result = match watched {
                    Some((_, at)) => {
                        let watched = watch(tries, at, || {
                            metrics.dry_run_hit(service, DryRunReason::Timeout);
                        });
                        let (result, exceeded) = Box::pin(watched).await;
                        watch_exceeded = exceeded;
                        result
                    }
                    None => tries.await,
                };
                if watch_exceeded {
                    note(trace, "dry-run:timeout");
                }
                result
            }
        };
        let result = match (result, deadline) {
            (Err(TriesEnd::Deadline), Some((limit, _))) => {
                self.count_timeout(route, TimeoutKind::Request);
                note(trace, "timeout");
                Err(Refusal::new(
                    Reason::Timeout,
                    format!("request timeout of {limit} elapsed ({attempts} attempts)"),
                ))
            }
            (Err(TriesEnd::Deadline), None) => Err(Refusal::new(
                Reason::Timeout,
                format!("request deadline elapsed ({attempts} attempts)"),
            )),
            (Err(TriesEnd::Done(result)), _) => result,
            (Ok(response), _) => Ok(response),
        };
        (result, attempts)
    }

    /// A protocol switch (WebSocket …): sent once, then both connections are spliced.
    async fn upgrade(
        &self,
        route: &ServiceRoute,
        subset: &Subset,
        parts: request::Parts,
        body: Incoming,
    ) -> CallResult {
        let now = Instant::now();
        let Some(endpoint) = subset.balancer.pick(&subset.endpoints, now).cloned() else {
            return Err(no_healthy_endpoints(route, subset, now));
        };
        self.send_once(&endpoint.authority, endpoint.addr, parts, body)
            .await
    }

    /// Sends a request once to `authority` (at `addr`), without retries: a protocol switch, whose
    /// two connections are spliced once both sides have switched, or a passed-through request.
    async fn send_once(
        &self,
        authority: &http::uri::Authority,
        addr: SocketAddr,
        mut parts: request::Parts,
        body: Incoming,
    ) -> CallResult {
        let upgrade = is_upgrade(&parts);
        let mut downstream = Request::from_parts(parts.clone(), ());
        let client_side = upgrade.then(|| hyper::upgrade::on(&mut downstream));
        parts.extensions = http::Extensions::new();
        let request = forward_request(&parts, authority, boxed(body), upgrade);
        let sent = self.upstream.send(addr, request, DEFAULT_CONNECT_TIMEOUT);
        let mut response = match sent.await {
            Ok(response) => response,
            Err(e) => {
                let failure = if e.is_connect() {
                    Failure::Connect
                } else {
                    Failure::Reset
                };
                return Err(local_refusal(failure, addr, None));
            }
        };
        if let (Some(client_side), StatusCode::SWITCHING_PROTOCOLS) =
            (client_side, response.status())
        {
            let server_side = hyper::upgrade::on(&mut response);
            splice(client_side, server_side, ());
            let (mut parts, _) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers, true);
            return Ok(Response::from_parts(parts, empty()));
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        Ok(Response::from_parts(parts, boxed(body)))
    }

    fn count_timeout(&self, route: &ServiceRoute, kind: TimeoutKind) {
        self.store
            .metrics
            .timeouts
            .with_label_values(&[route.key.name.as_str(), kind.label()])
            .inc();
    }

    /// Counts, logs and answers.
    fn finish(
        &self,
        routed: Option<(&ServiceRoute, &Subset)>,
        parts: &request::Parts,
        start: Instant,
        result: CallResult,
        attempts: u32,
        trace: Option<Box<RouteTrace>>,
    ) -> Response<ProxyBody> {
        let (mut response, reason) = match result {
            Ok(response) => (response, None),
            Err(refusal) => {
                let reason = refusal.reason;
                if reason != Reason::NoHealthyEndpoints || routed.is_some() {
                    tracing::debug!(reason = reason.as_str(), message = %refusal.message, "refused");
                } else {
                    tracing::info!(reason = reason.as_str(), message = %refusal.message, "refused");
                }
                (refusal.into_response(), Some(reason))
            }
        };
        let route = routed.map(|(route, _)| route);
        let service = route.map_or(UNKNOWN_SERVICE, |r| r.key.name.as_str());
        let subset = routed.map_or("", |(_, subset)| subset.name.as_str());
        let elapsed = start.elapsed();
        let status = response.status();
        if let Some(mut trace) = trace {
            if let Some(fallback) = response.headers().get(FALLBACK_HEADER)
                && let Ok(replaced) = fallback.to_str()
            {
                trace.decision(format!("fallback:{replaced}"));
            }
            let value = trace.header(status, reason.map(Reason::as_str));
            response.headers_mut().insert(ROUTE_HEADER, value);
        }
        let metrics = &self.store.metrics;
        match routed {
            Some((route, subset)) => self.series(route, subset).record(metrics, status, elapsed),
            None => metrics.record(OUTBOUND, service, subset, status, elapsed),
        }
        tracing::debug!(
            target: "weir::access",
            direction = OUTBOUND,
            method = %parts.method,
            path = parts.uri.path(),
            service,
            subset,
            status = status.as_u16(),
            attempts,
            reason = reason.map(Reason::as_str),
            micros = elapsed.as_micros() as u64,
        );
        response
    }
}

/// Holds one request in the in-flight gauge until dropped.
#[derive(Debug)]
struct InFlightGauge<'g>(&'g prometheus::IntGauge);

impl<'g> InFlightGauge<'g> {
    fn enter(gauge: &'g prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlightGauge<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Adds a policy decision to the trace, when the client asked for one.
fn note(trace: &mut Option<Box<RouteTrace>>, decision: &str) {
    if let Some(trace) = trace {
        trace.decision(decision);
    }
}

fn no_healthy_endpoints(route: &ServiceRoute, subset: &Subset, now: Instant) -> Refusal {
    let ejected = subset
        .endpoints
        .iter()
        .filter(|e| e.is_ejected(now))
        .count();
    Refusal::new(
        Reason::NoHealthyEndpoints,
        format!(
            "subset {} of {} has {} endpoints, {} of them ejected",
            subset.name,
            route.key,
            subset.endpoints.len(),
            ejected
        ),
    )
}

/// The policy's fallback answer replaces a failure of this call: a 5xx from the endpoint or a
/// refusal made here. Refusals made by the target's sidecar (they carry `x-weir-reason`) pass
/// unchanged, as the contract says.
fn apply_fallback(route: &ServiceRoute, result: CallResult) -> CallResult {
    let Some(fallback) = &route.policy().fallback else {
        return result;
    };
    let reason = match &result {
        Ok(r) if r.status().is_server_error() && !r.headers().contains_key(REASON_HEADER) => {
            "upstream-error"
        }
        Ok(_) => return result,
        // An injected abort rehearses a failure as configured; replacing it would hide it.
        Err(refusal) if refusal.reason == Reason::FaultInjected => return result,
        Err(refusal) => refusal.reason.as_str(),
    };
    let mut response = Response::new(full(fallback.body.clone()));
    *response.status_mut() = StatusCode::from_u16(fallback.status).unwrap_or(StatusCode::OK);
    if let Ok(ct) = HeaderValue::from_str(&fallback.content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    response
        .headers_mut()
        .insert(FALLBACK_HEADER, HeaderValue::from_static(reason));
    Ok(response)
}

/// Why the tries ended without a response to pass on.
#[derive(Debug)]
enum TriesEnd {
    /// The request timeout elapsed.
    Deadline,
    /// This is the call's result (an earlier answer kept across a retry, or a refusal).
    Done(CallResult),
}

/// The time limits of each try: enforced ones, and a dry-run one that is only watched.
#[derive(Debug, Clone, Copy)]
struct TryLimits {
    per_try: Option<Duration>,
    watched_per_try: Option<Duration>,
    /// The request timeout's deadline, when enforced.
    deadline: Option<Instant>,
}

fn local_refusal(failure: Failure, addr: SocketAddr, per_try: Option<Duration>) -> Refusal {
    match failure {
        Failure::PerTryTimeout => Refusal::new(
            Reason::Timeout,
            format!(
                "per-try timeout of {:?} elapsed waiting for {}",
                per_try.unwrap_or_default(),
                addr
            ),
        ),
        Failure::Connect => Refusal::new(
            Reason::UpstreamConnectFailure,
            format!("could not connect to {addr}"),
        ),
        Failure::Reset | Failure::Status(_) | Failure::Grpc(_) => Refusal::new(
            Reason::UpstreamReset,
            format!("the connection to {addr} broke before the response"),
        ),
    }
}
