//! The attempts of one call: breaker admission, endpoint pick, the try under its time limits,
//! its gRPC status, what it is charged to, and whether and when it is retried.

use super::{
    Call, CallResult, Outbound, REASON, TriesEnd, TryLimits, local_refusal, no_healthy_endpoints,
    note,
};
use crate::body::{
    ClientBodyError, GuardedBody, Holding, ProxyBody, RetryableBody, empty, full, read_trailers,
};
use crate::clock::watch;
use crate::endpoint::{Endpoint, Outcome};
use crate::metrics::{DryRunReason, RequestMetrics, TimeoutKind};
use crate::proxy::headers::{forward_request, strip_hop_by_hop};
use crate::proxy::upstream::{ConnectTimeout, UpstreamBody, cause, caused_by};
use crate::refusal::{Reason, Refusal};
use crate::retry::{
    DEFAULT_OVERLOAD_WAIT, Failure, MAX_OVERLOAD_WAIT, backoff, retries_grpc, retry_after,
};
use crate::route_trace::RouteTrace;
use crate::table::ServiceRoute;
use http::{Response, StatusCode, header, request};
use std::time::Duration;
use tokio::time::Instant;
use tower::retry::budget::Budget;

impl Outbound {
    /// The attempts of one call. Ends with an answer, or with what to answer instead
    /// ([`TriesEnd`]). `dry_replayable`: with dry-run retries, whether the body would have
    /// been buffered for them.
    pub(super) async fn tries(
        &self,
        call: Call<'_>,
        body: RetryableBody,
        limits: TryLimits,
        dry_replayable: bool,
        attempts: &mut u32,
        trace: &mut Option<Box<RouteTrace>>,
    ) -> Result<Response<ProxyBody>, TriesEnd> {
        let (route, subset, parts) = (call.route, call.subset, call.parts);
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
                .idle_watch(idle.get(), counter)
                .boxed()
        }
        Some((idle, false)) => {
            let counter = series.idle_timeouts(metrics).clone();
            GuardedBody::new(body)
                .guard(in_flight)
                .idle_timeout(idle.get(), counter)
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
