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

use crate::body::{
    ClientBodyError, GuardedBody, Holding, ProxyBody, RetryableBody, boxed, buffer_for_retry,
    empty, from_client, full, read_trailers,
};
use crate::clock::watch;
use crate::endpoint::{Endpoint, Outcome};
use crate::metrics::{DryRunReason, OUTBOUND, RequestMetrics, TimeoutKind, UNKNOWN_SERVICE};
use crate::proxy::headers::{
    RequestHead, check_request_head, is_upgrade, splice, strip_hop_by_hop,
};
use crate::proxy::upstream::{ConnectTimeout, Upstream, UpstreamBody, cause, caused_by};
use crate::refusal::{REASON_HEADER, Reason, Refusal};
use crate::retry::{
    DEFAULT_OVERLOAD_WAIT, Failure, MAX_OVERLOAD_WAIT, RETRY_OPT_IN_HEADER, backoff, is_idempotent,
    retries_grpc, retry_after,
};
use crate::route_trace::{ROUTE_HEADER, RouteTrace};
use crate::store::Store;
use crate::table::{DEFAULT_CONNECT_TIMEOUT, ServiceKey, ServiceRoute, Subset};
use http::header::HeaderName;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header, request};
use hyper::body::Incoming;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tower::retry::budget::Budget;
use weir_proxy_api::Faults;

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
            self.call(&route, subset, &parts, from_client(body), start, &mut trace)
                .await
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
        route: &Arc<ServiceRoute>,
        subset: &Subset,
        parts: &request::Parts,
        body: ProxyBody,
        start: Instant,
        trace: &mut Option<Box<RouteTrace>>,
    ) -> (CallResult, u32) {
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
                let tries = self.tries(
                    route,
                    subset,
                    parts,
                    body,
                    limits,
                    dry_replayable,
                    &mut attempts,
                    trace,
                );
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

    /// The policy's faults: an abort answers at once (never retried, charged to no endpoint or
    /// breaker), a delay holds the call before its first try (inside the request timeout). A
    /// dry-run block only counts what it would have done.
    async fn inject_faults(
        &self,
        route: &ServiceRoute,
        faults: &Faults,
        deadline: Option<Instant>,
        trace: &mut Option<Box<RouteTrace>>,
    ) -> Result<(), TriesEnd> {
        let service = route.key.name.as_str();
        let metrics = &self.store.metrics;
        if let Some(abort) = &faults.abort
            && drawn(abort.percent)
        {
            if faults.dry_run {
                metrics.dry_run_hit(service, DryRunReason::Fault);
                note(trace, "dry-run:fault-abort");
                // An abort answers at once: no delay would have followed.
                return Ok(());
            } else {
                metrics
                    .faults_injected
                    .with_label_values(&[service, "abort"])
                    .inc();
                let status =
                    StatusCode::from_u16(abort.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                if let Some(trace) = trace {
                    trace.decision(format!("fault-abort:{}", status.as_u16()));
                }
                let refusal = Refusal::new(
                    Reason::FaultInjected,
                    format!(
                        "fault injected by the policy of {}: aborted with {}",
                        route.key,
                        status.as_u16()
                    ),
                )
                .with_status(status);
                return Err(TriesEnd::Done(Err(refusal)));
            }
        }
        if let Some(delay) = &faults.delay
            && drawn(delay.percent)
        {
            if faults.dry_run {
                metrics.dry_run_hit(service, DryRunReason::Fault);
                note(trace, "dry-run:fault-delay");
            } else {
                metrics
                    .faults_injected
                    .with_label_values(&[service, "delay"])
                    .inc();
                if let Some(trace) = trace {
                    trace.decision(format!(
                        "fault-delay:{}",
                        crate::route_trace::millis(delay.duration.get())
                    ));
                }
                let wake = crate::clock::deadline(Instant::now(), delay.duration.get());
                if let Some(deadline) = deadline
                    && deadline <= wake
                {
                    tokio::time::sleep_until(deadline).await;
                    return Err(TriesEnd::Deadline);
                }
                tokio::time::sleep_until(wake).await;
            }
        }
        Ok(())
    }

    /// The attempts of one call. Ends with an answer, or with what to answer instead
    /// ([`TriesEnd`]). `dry_replayable`: with dry-run retries, whether the body would have
    /// been buffered for them.
    #[allow(clippy::too_many_arguments)]
    async fn tries(
        &self,
        route: &Arc<ServiceRoute>,
        subset: &Subset,
        parts: &request::Parts,
        body: RetryableBody,
        limits: TryLimits,
        dry_replayable: bool,
        attempts: &mut u32,
        trace: &mut Option<Box<RouteTrace>>,
    ) -> Result<Response<ProxyBody>, TriesEnd> {
        let policy = route.policy();
        let service = route.key.name.as_str();
        let metrics = &self.store.metrics;
        let TryLimits {
            per_try, deadline, ..
        } = limits;
        let (buffered, mut streaming) = match body {
            RetryableBody::Buffered(bytes) => (Some(bytes), None),
            RetryableBody::Streaming(body) => (None, Some(body)),
        };
        let replayable = buffered.is_some() || dry_replayable;
        // gRPC statuses are read only when the policy retries on one of their classes.
        let grpc_classes = policy
            .retries
            .as_ref()
            .is_some_and(|r| retries_grpc(&r.retry_on));
        let mut last: Option<CallResult> = None;
        loop {
            let now = Instant::now();
            let permit = match &route.breaker {
                Some(breaker) => match breaker.admit(now) {
                    Some(permit) => Some(permit),
                    None if breaker.dry_run() => {
                        metrics.dry_run_hit(service, DryRunReason::CircuitOpen);
                        note(trace, "dry-run:circuit-open");
                        None
                    }
                    None => {
                        note(trace, "circuit-open");
                        return Err(TriesEnd::Done(last.unwrap_or_else(|| {
                            Err(Refusal::new(
                                Reason::CircuitOpen,
                                format!("the circuit breaker of {} is open", route.key),
                            ))
                        })));
                    }
                },
                None => None,
            };
            let Some(endpoint) = subset.balancer.pick(&subset.endpoints, now).cloned() else {
                note(trace, "no-healthy-endpoints");
                return Err(TriesEnd::Done(
                    last.unwrap_or_else(|| Err(no_healthy_endpoints(route, subset, now))),
                ));
            };
            let body = match (&buffered, streaming.take()) {
                (Some(bytes), _) => full(bytes.clone()),
                (None, Some(body)) => body,
                (None, None) => empty(),
            };
            *attempts += 1;
            let sent = now;
            let in_flight = endpoint.start();
            let mut watch_exceeded = false;
            let outcome = self
                .attempt(route, &endpoint, parts, body, limits, &mut watch_exceeded)
                .await;
            if watch_exceeded {
                note(trace, "dry-run:timeout");
            }
            let outcome = match outcome {
                Ok(response) => Ok(response),
                Err(TryError::Failure(failure)) => Err(failure),
                Err(TryError::Deadline) => {
                    // Cut by the request timeout: the endpoint did not answer in time.
                    let now = Instant::now();
                    let series = self.series(route, subset);
                    let ejection = self.charge(
                        route,
                        series,
                        &endpoint,
                        Some(Failure::PerTryTimeout),
                        permit,
                        now,
                    );
                    if let Some(trace) = trace {
                        trace.attempt(endpoint.addr, "deadline");
                        if let Some(ejection) = ejection {
                            trace.decision(ejection);
                        }
                    }
                    return Err(TriesEnd::Deadline);
                }
                Err(TryError::Client(message)) => {
                    if let Some(trace) = trace {
                        trace.attempt(endpoint.addr, "client-error");
                    }
                    // The permit is dropped unrecorded: the call counts as cancelled.
                    return Err(TriesEnd::Done(Err(Refusal::new(
                        Reason::BadRequest,
                        message,
                    ))));
                }
            };
            let done = Instant::now();
            let (mut response, mut failure) = match outcome {
                Ok(response) => {
                    endpoint.observe_latency(done.saturating_duration_since(sent), done);
                    let failure = Failure::of_status(response.status());
                    (Some(Answer::Upstream(response)), failure)
                }
                Err(failure) => (None, Some(failure)),
            };
            let refused_by_target = response
                .as_ref()
                .is_some_and(|r| r.headers().contains_key(&REASON));
            // The app's own 429 is overload: its endpoint is avoided for a while, and a retry
            // waits at least as long as it asks.
            let mut overload_wait = None;
            if let Some(r) = &response
                && r.status() == StatusCode::TOO_MANY_REQUESTS
                && !refused_by_target
            {
                let wait = retry_after(r.headers(), std::time::SystemTime::now())
                    .unwrap_or(DEFAULT_OVERLOAD_WAIT)
                    .min(MAX_OVERLOAD_WAIT);
                endpoint.avoid(wait, done);
                overload_wait = Some(wait);
                if let Some(trace) = trace {
                    trace.decision(format!("avoid-429:{}", endpoint.addr));
                }
            }
            // Holding an answer back to read its trailers changes it: never for dry-run retries.
            let retries_left = policy
                .retries
                .as_ref()
                .is_some_and(|r| !r.dry_run && replayable && *attempts <= r.attempts);
            if grpc_classes
                && failure.is_none()
                && !refused_by_target
                && let Some(r) = response.take()
            {
                // Boxed: only policies retrying on gRPC classes pay for reading trailers.
                let (read, grpc_failure) =
                    Box::pin(self.grpc_status(r, retries_left, per_try, deadline)).await;
                response = read;
                failure = grpc_failure;
            }
            if let Some(trace) = trace {
                let outcome = match (&response, failure) {
                    (_, Some(failure)) => failure.label(),
                    (Some(r), None) => r.status().as_str().to_owned(),
                    (None, None) => "reset".to_owned(),
                };
                trace.attempt(endpoint.addr, outcome);
            }
            let series = self.series(route, subset);
            if let Some(ejection) = self.charge(route, series, &endpoint, failure, permit, done) {
                note(trace, ejection);
            }
            if failure == Some(Failure::PerTryTimeout) {
                self.count_timeout(route, TimeoutKind::PerTry);
            }
            let current: CallResult = match response {
                Some(Answer::Upstream(r)) => Ok(guarded(r, in_flight, route, series, metrics)),
                Some(Answer::Replayed(r)) => Ok(guarded(r, in_flight, route, series, metrics)),
                None => Err(local_refusal(
                    failure.unwrap_or(Failure::Reset),
                    endpoint.addr,
                    per_try,
                )),
            };
            let Some(failure) = failure else {
                return current.map_err(|refusal| TriesEnd::Done(Err(refusal)));
            };
            let Some(retries) = policy.retries.as_ref() else {
                return Err(TriesEnd::Done(current));
            };
            if refused_by_target
                || !replayable
                || *attempts > retries.attempts
                || !failure.is_retried_by(&retries.retry_on)
            {
                return Err(TriesEnd::Done(current));
            }
            if retries.dry_run {
                // Would have been retried: answered as it is.
                metrics.dry_run_hit(service, DryRunReason::Retry);
                note(trace, "dry-run:retry");
                return Err(TriesEnd::Done(current));
            }
            if !route.budget.budget.withdraw() {
                metrics
                    .retry_budget_exhausted
                    .with_label_values(&[service])
                    .inc();
                note(trace, "retry-budget-exhausted");
                return Err(TriesEnd::Done(Err(Refusal::new(
                    Reason::RetryBudgetExhausted,
                    format!("the retry budget of {} is spent", route.key),
                ))));
            }
            // Kept while waiting: if the breaker opens or every endpoint is ejected before the
            // next try, the caller gets this real answer rather than a refusal.
            last = Some(current);
            let mut wait = backoff(&retries.backoff, *attempts);
            if let Some(asked) = overload_wait {
                // No earlier than the app asked, but never past the policy's longest backoff.
                wait = wait.max(asked).min(retries.backoff.max.get());
            }
            if let Some(trace) = trace {
                trace.wait(wait);
                trace.decision("retry");
            }
            let wake = crate::clock::deadline(Instant::now(), wait);
            if let Some(deadline) = deadline
                && deadline <= wake
            {
                tokio::time::sleep_until(deadline).await;
                return Err(TriesEnd::Deadline);
            }
            tokio::time::sleep_until(wake).await;
            metrics.retries.with_label_values(&[service]).inc();
        }
    }

    /// The gRPC status of an answer: from its headers (a trailers-only answer), else — when a
    /// retry is still possible — from its trailers, read by holding the body back as long as
    /// it fits the retry buffer and arrives within the per-try timeout (1 s without one) and
    /// the request deadline. A longer or slower body streams on as it is and is not retried.
    /// Gives back the answer to pass on (none when its body broke while held: a reset).
    async fn grpc_status(
        &self,
        answer: Answer,
        retry_possible: bool,
        per_try: Option<Duration>,
        deadline: Option<Instant>,
    ) -> (Option<Answer>, Option<Failure>) {
        let Answer::Upstream(response) = answer else {
            return (Some(answer), None);
        };
        if let Some(failure) = Failure::of_grpc_status(response.headers()) {
            return (Some(Answer::Upstream(response)), Some(failure));
        }
        let is_grpc = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
        if !is_grpc || !retry_possible {
            return (Some(Answer::Upstream(response)), None);
        }
        let limit = self.store.table().config.limits.retry_buffer_bytes as usize;
        let mut until =
            crate::clock::deadline(Instant::now(), per_try.unwrap_or(GRPC_TRAILERS_WAIT));
        if let Some(deadline) = deadline {
            until = until.min(deadline);
        }
        let (parts, body) = response.into_parts();
        match read_trailers(body, limit, until).await {
            Ok((body, trailers)) => (
                Some(Answer::Replayed(Response::from_parts(parts, body))),
                trailers.as_ref().and_then(Failure::of_grpc_status),
            ),
            Err(_) => (None, Some(Failure::Reset)),
        }
    }

    /// One try against one endpoint, bounded by the per-try timeout and the request deadline.
    async fn attempt(
        &self,
        route: &ServiceRoute,
        endpoint: &Endpoint,
        parts: &request::Parts,
        body: ProxyBody,
        limits: TryLimits,
        watch_exceeded: &mut bool,
    ) -> Result<Response<UpstreamBody>, TryError> {
        let TryLimits {
            per_try,
            watched_per_try,
            deadline,
        } = limits;
        let request = forward_request(parts, &endpoint.authority, body, false);
        let sending = self
            .upstream
            .send(endpoint.addr, request, route.connect_timeout);
        let per_try_end = per_try.map(|limit| crate::clock::deadline(Instant::now(), limit));
        let end = match (per_try_end, deadline) {
            (Some(per_try_end), Some(deadline)) => Some(per_try_end.min(deadline)),
            (per_try_end, deadline) => per_try_end.or(deadline),
        };
        let result = match end {
            Some(end) => match tokio::time::timeout_at(end, sending).await {
                Ok(result) => result,
                Err(_) if deadline == Some(end) => return Err(TryError::Deadline),
                Err(_) => return Err(TryError::Failure(Failure::PerTryTimeout)),
            },
            // A dry-run per-try timeout: only watched, in a box only dry runs pay for.
            None => match watched_per_try {
                Some(limit) => {
                    let at = crate::clock::deadline(Instant::now(), limit);
                    let service = route.key.name.as_str();
                    let metrics = &self.store.metrics;
                    let watched = watch(sending, at, || {
                        metrics.dry_run_hit(service, DryRunReason::Timeout);
                    });
                    let (result, exceeded) = Box::pin(watched).await;
                    *watch_exceeded = exceeded;
                    result
                }
                None => sending.await,
            },
        };
        result.map_err(|e| {
            if let Some(client) = cause::<ClientBodyError>(&e) {
                return TryError::Client(client.to_string());
            }
            if caused_by::<ConnectTimeout>(&e) {
                self.count_timeout(route, TimeoutKind::Connect);
            }
            TryError::Failure(if e.is_connect() {
                Failure::Connect
            } else {
                Failure::Reset
            })
        })
    }

    /// Charges an attempt's outcome to outlier detection and the breaker. Returns what outlier
    /// detection did, for `x-weir-route`: `ejection`, `dry-run:ejection` or nothing.
    fn charge(
        &self,
        route: &ServiceRoute,
        series: &RequestMetrics,
        endpoint: &Endpoint,
        failure: Option<Failure>,
        permit: Option<crate::breaker::Permit>,
        now: Instant,
    ) -> Option<&'static str> {
        let outcome = failure.map_or(Outcome::Success, Failure::outcome);
        let service = route.key.name.as_str();
        let mut ejection = None;
        if let Some(detector) = &route.outlier
            && detector.record(endpoint, &route.endpoints, outcome, now)
        {
            if detector.config.dry_run {
                self.store
                    .metrics
                    .dry_run_hit(service, DryRunReason::Ejection);
                ejection = Some("dry-run:ejection");
            } else {
                self.store
                    .metrics
                    .outlier_ejections
                    .with_label_values(&[service])
                    .inc();
                tracing::warn!(service = %route.key, endpoint = %endpoint.addr, "endpoint ejected by outlier detection");
                // Only when it changed: ejections that end are brought up to date before each
                // scrape (Store::refresh_gauges).
                self.store
                    .metrics
                    .endpoints_ejected
                    .with_label_values(&[service])
                    .set(detector.ejected(now) as i64);
                ejection = Some("ejection");
            }
        }
        if let Some(permit) = permit {
            if let Some(state) = permit.record(outcome == Outcome::Success, now) {
                tracing::warn!(service = %route.key, ?state, "circuit breaker changed state");
            }
            if let Some(b) = &route.breaker {
                series
                    .breaker_state(&self.store.metrics)
                    .set(b.state(now).gauge());
            }
        }
        ejection
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

/// The request as it leaves for `authority`: HTTP/1 in origin form with `Host` as the app sent
/// it — or, for an absolute-form request, its URI's authority (RFC 9112 §3.2.2; a Host that
/// disagreed was refused before), or the endpoint's when there was none; HTTP/2 in absolute form
/// to the endpoint. Hop-by-hop headers gone.
pub fn forward_request(
    parts: &request::Parts,
    authority: &http::uri::Authority,
    body: ProxyBody,
    upgrade: bool,
) -> Request<ProxyBody> {
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let http2 = parts.version == http::Version::HTTP_2;
    let uri = if http2 {
        Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query(path)
            .build()
            .expect("scheme, authority and path make a URI")
    } else {
        Uri::from(path)
    };
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    let headers = request.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    if !http2 {
        if let Some(authority) = parts.uri.authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            headers.insert(header::HOST, host);
        } else if !headers.contains_key(header::HOST) {
            headers.insert(header::HOST, endpoint_host(authority));
        }
    }
    request
}

/// The `Host` naming an endpoint: its address, the port left out when it is HTTP's default.
fn endpoint_host(authority: &http::uri::Authority) -> HeaderValue {
    let host = match authority.port_u16() {
        Some(80) => authority.host(),
        _ => authority.as_str(),
    };
    HeaderValue::from_str(host).expect("an authority is a valid header value")
}

/// How one try ended without an answer.
#[derive(Debug)]
enum TryError {
    /// The endpoint, or the way to it, failed: charged, perhaps retried.
    Failure(Failure),
    /// The request deadline cut the try: charged as a timeout, never retried.
    Deadline,
    /// The client's own request body broke: not the endpoint's doing.
    Client(String),
}

/// Why the tries ended without a response to pass on.
#[derive(Debug)]
enum TriesEnd {
    /// The request timeout elapsed.
    Deadline,
    /// This is the call's result (an earlier answer kept across a retry, or a refusal).
    Done(CallResult),
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

/// The upstream answer on its way back, holding the endpoint's in-flight count until its body
/// ends, and held to the idle timeout.
fn guarded<B>(
    response: Response<B>,
    in_flight: crate::endpoint::InFlight,
    route: &ServiceRoute,
    series: &RequestMetrics,
    metrics: &crate::metrics::Metrics,
) -> Response<ProxyBody>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<crate::body::BoxError>,
{
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    let idle = route
        .policy()
        .timeouts
        .as_ref()
        .and_then(|t| Some((t.idle?, t.dry_run)));
    let body = match idle {
        // No idle timeout: the answer only holds the endpoint's in-flight count (one box).
        None => Holding::boxed(body, in_flight),
        Some((idle, true)) => {
            let counter = metrics
                .dry_run
                .with_label_values(&[route.key.name.as_str(), DryRunReason::Timeout.label()]);
            GuardedBody::new(body)
                .guard(in_flight)
                .idle_watch(idle.get(), move || counter.inc())
                .boxed()
        }
        Some((idle, false)) => {
            let counter = series.idle_timeouts(metrics).clone();
            GuardedBody::new(body)
                .guard(in_flight)
                .idle_timeout(idle.get(), move || counter.inc())
                .boxed()
        }
    };
    Response::from_parts(parts, body)
}

/// An endpoint's answer: as it came, or with its body held back and replayed (to read a gRPC
/// status in its trailers).
enum Answer {
    Upstream(Response<UpstreamBody>),
    Replayed(Response<ProxyBody>),
}

impl Answer {
    fn status(&self) -> StatusCode {
        match self {
            Self::Upstream(r) => r.status(),
            Self::Replayed(r) => r.status(),
        }
    }

    fn headers(&self) -> &http::HeaderMap {
        match self {
            Self::Upstream(r) => r.headers(),
            Self::Replayed(r) => r.headers(),
        }
    }
}

/// How long an answer's trailers are awaited for their gRPC status when the policy has no
/// per-try timeout: a server-streaming call must not be held back for long.
const GRPC_TRAILERS_WAIT: Duration = Duration::from_secs(1);

/// The time limits of each try: enforced ones, and a dry-run one that is only watched.
#[derive(Debug, Clone, Copy)]
struct TryLimits {
    per_try: Option<Duration>,
    watched_per_try: Option<Duration>,
    /// The request timeout's deadline, when enforced.
    deadline: Option<Instant>,
}

/// Adds a policy decision to the trace, when the client asked for one.
fn note(trace: &mut Option<Box<RouteTrace>>, decision: &str) {
    if let Some(trace) = trace {
        trace.decision(decision);
    }
}

/// Whether this call falls in the `percent` % share: exact at 0 and 100, fractions allowed.
fn drawn(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && fastrand::f64() * 100.0 < percent)
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

/// The service a request is for, and the port it names if any: the proxy-form URI's
/// authority, else the Host header.
pub fn target_of(
    parts: &request::Parts,
    own_namespace: &str,
) -> Result<(ServiceKey, Option<u16>), Refusal> {
    let authority = match parts.uri.authority() {
        // Without any `user@` part, which names no service.
        Some(authority) => authority
            .as_str()
            .rsplit_once('@')
            .map_or(authority.as_str(), |(_, host)| host),
        None => parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .ok_or_else(|| {
                Refusal::new(
                    Reason::BadRequest,
                    "the request names no service: no Host header and no absolute URI",
                )
            })?,
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => (host, port),
        _ => (authority, ""),
    };
    // An empty port is the default one (RFC 3986 §3.2.3).
    let port = match port {
        "" => None,
        digits => match digits.parse::<u16>() {
            Ok(port) if port > 0 => Some(port),
            _ => {
                return Err(Refusal::new(
                    Reason::BadRequest,
                    format!("port {digits:?} of {authority:?} is not a port (1 to 65535)"),
                ));
            }
        },
    };
    // Borrowed unless the app wrote capitals: every request goes through here.
    let host = host.trim_end_matches('.');
    let host: Cow<'_, str> = match host.bytes().any(|b| b.is_ascii_uppercase()) {
        true => Cow::Owned(host.to_ascii_lowercase()),
        false => Cow::Borrowed(host),
    };
    let mut labels = host.split('.');
    let (name, namespace) = match [(); 6].map(|()| labels.next()) {
        [Some(name), None, ..] => (name, own_namespace),
        [Some(name), Some(namespace), None, ..]
        | [Some(name), Some(namespace), Some("svc"), None, ..]
        | [
            Some(name),
            Some(namespace),
            Some("svc"),
            Some("cluster"),
            Some("local"),
            None,
        ] => (name, namespace),
        _ => ("", ""),
    };
    let label_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if !label_ok(name) || !label_ok(namespace) || name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refusal::new(
            Reason::BadRequest,
            format!(
                "host {host:?} does not name a service (expected NAME, NAME.NAMESPACE or NAME.NAMESPACE.svc.cluster.local)"
            ),
        ));
    }
    Ok((
        ServiceKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        },
        port,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(uri: &str, host: Option<&str>) -> Result<ServiceKey, Refusal> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        target_of(&b.body(()).unwrap().into_parts().0, "shop").map(|(key, _)| key)
    }

    fn ok(uri: &str, host: Option<&str>) -> (String, String) {
        let k = key_of(uri, host).unwrap();
        (k.namespace, k.name)
    }

    #[test]
    fn names_resolve_like_kubernetes_dns() {
        let p = |ns: &str, n: &str| (ns.to_owned(), n.to_owned());
        assert_eq!(ok("/x", Some("payments")), p("shop", "payments"));
        assert_eq!(ok("/x", Some("payments:8080")), p("shop", "payments"));
        assert_eq!(ok("/x", Some("payments.billing")), p("billing", "payments"));
        assert_eq!(
            ok("/x", Some("payments.billing.svc.cluster.local:80")),
            p("billing", "payments")
        );
        assert_eq!(
            ok("http://Payments/x", Some("ignored")),
            p("shop", "payments")
        );
        assert_eq!(
            ok("http://payments.billing.svc:8080/x", None),
            p("billing", "payments")
        );
        // DNS names are case-insensitive, and a trailing dot is the root.
        assert_eq!(
            ok("/x", Some("PAYMENTS.Billing.")),
            p("billing", "payments")
        );
    }

    #[test]
    fn the_port_comes_from_the_uri_else_the_host() {
        let port_of = |uri: &str, host: Option<&str>| {
            let mut b = Request::builder().uri(uri);
            if let Some(h) = host {
                b = b.header("host", h);
            }
            target_of(&b.body(()).unwrap().into_parts().0, "shop")
                .map(|(_, port)| port)
                .map_err(|refusal| (refusal.reason, refusal.message))
        };
        assert_eq!(port_of("/x", Some("payments:81")), Ok(Some(81)));
        assert_eq!(port_of("/x", Some("payments")), Ok(None));
        assert_eq!(port_of("/x", Some("payments:")), Ok(None));
        assert_eq!(
            port_of("http://payments.shop:8080/x", Some("payments:81")),
            Ok(Some(8080))
        );
        assert_eq!(port_of("http://user@payments:81/x", None), Ok(Some(81)));
        assert_eq!(port_of("http://payments/x", Some("payments:81")), Ok(None));
        for host in [
            "payments:0",
            "payments:65536",
            "payments:99999999999999999999",
        ] {
            let (reason, message) = port_of("/x", Some(host)).unwrap_err();
            assert_eq!(reason, Reason::BadRequest, "{host}");
            assert!(message.contains("not a port"), "{message}");
        }
    }

    #[test]
    fn non_service_hosts_are_bad_requests() {
        for host in [
            "127.0.0.1:9000",
            "a.b.c",
            "under_score",
            "example.com.evil.org.x",
            "payments.billing.svc.cluster",
            "payments.billing.svc.cluster.local.x",
            "a.b.c.d.e.f.g",
        ] {
            let r = key_of("/", Some(host)).unwrap_err();
            assert_eq!(r.reason, Reason::BadRequest, "{host}");
        }
        assert_eq!(key_of("/", None).unwrap_err().reason, Reason::BadRequest);
    }
}
