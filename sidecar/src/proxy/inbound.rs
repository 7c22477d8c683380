//! The inbound side: calls to this proxy's application, from whoever makes them.
//!
//! In this order: rate limit (cheapest refusal first, and it must count every arrival), bulkhead
//! (admission to the application), the request timeout, then the application. Refusals carry
//! `x-weir-reason` so that the caller's sidecar passes them on and never retries them.

use crate::body::{GuardedBody, ProxyBody, boxed};
use crate::bulkhead::Full;
use crate::metrics::{INBOUND, TimeoutKind};
use crate::proxy::headers::is_upgrade;
use crate::proxy::outbound::forward_request;
use crate::proxy::upstream::Upstream;
use crate::refusal::{Reason, Refusal};
use crate::store::Store;
use http::uri::Authority;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::Instant;

#[derive(Debug)]
pub struct Inbound {
    pub store: Arc<Store>,
    pub upstream: Upstream,
    /// Where the application listens.
    pub app: Authority,
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
        request: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        let app = app
            .and_then(|addr| Authority::try_from(addr.to_string()).ok())
            .unwrap_or_else(|| self.app.clone());
        let table = self.store.table();
        let inbound = &table.inbound;
        let subset = inbound.policy.subset.as_deref().unwrap_or("");
        let metrics = &self.store.metrics;
        let service = self.service.as_str();
        let (parts, body) = request.into_parts();

        let result: Result<Response<ProxyBody>, Refusal> = async {
            if let Some(limiter) = &inbound.rate_limiter
                && let Err(wait) = limiter.check(peer.ip(), &parts.headers, start)
            {
                metrics.rate_limited.with_label_values(&[service]).inc();
                let mut refusal = Refusal::new(
                    Reason::RateLimited,
                    format!(
                        "{service} accepts {} requests per second (burst {})",
                        limiter.config.requests_per_second, limiter.config.burst
                    ),
                );
                refusal.retry_after = Some(wait);
                return Err(refusal);
            }
            let permit = match &inbound.bulkhead {
                Some(bulkhead) => match bulkhead.enter().await {
                    Ok(permit) => Some(permit),
                    Err(full) => {
                        metrics
                            .bulkhead_rejected
                            .with_label_values(&[service])
                            .inc();
                        let why = match full {
                            Full::QueueFull => format!(
                                "{service} has {} requests in progress and {} queued",
                                bulkhead.config.max_concurrent, bulkhead.config.max_queued
                            ),
                            Full::QueueTimeout => format!(
                                "no slot came free within the queue timeout of {}",
                                bulkhead.config.queue_timeout
                            ),
                        };
                        return Err(Refusal::new(Reason::BulkheadFull, why));
                    }
                },
                None => None,
            };
            let in_flight = metrics.in_flight.with_label_values(&[INBOUND, service]);
            in_flight.inc();
            let in_flight_guard = scopeguard(move || in_flight.dec());
            let upgrade = is_upgrade(&parts);
            let mut downstream = Request::from_parts(parts.clone(), ());
            let client_side = upgrade.then(|| hyper::upgrade::on(&mut downstream));
            let mut forward_parts = parts.clone();
            forward_parts.extensions = http::Extensions::new();
            let request = forward_request(&forward_parts, &app, boxed(body), upgrade);
            let timeouts = inbound.policy.timeouts.clone().unwrap_or_default();
            let sending = self.upstream.send(request);
            let sent = match timeouts.request {
                Some(limit) => match tokio::time::timeout(limit.get(), sending).await {
                    Ok(sent) => sent,
                    Err(_) => {
                        metrics
                            .timeouts
                            .with_label_values(&[service, TimeoutKind::Request.label()])
                            .inc();
                        return Err(Refusal::new(
                            Reason::Timeout,
                            format!("{service} did not answer within {limit}"),
                        ));
                    }
                },
                None => sending.await,
            };
            let mut response = sent.map_err(|e| {
                if e.is_connect() {
                    Refusal::new(
                        Reason::UpstreamConnectFailure,
                        format!("could not connect to the application at {app}"),
                    )
                } else {
                    Refusal::new(
                        Reason::UpstreamReset,
                        "the connection to the application broke before the response",
                    )
                }
            })?;
            if let (Some(client_side), StatusCode::SWITCHING_PROTOCOLS) =
                (client_side, response.status())
            {
                let app_side = hyper::upgrade::on(&mut response);
                crate::proxy::headers::splice(client_side, app_side, (permit, in_flight_guard));
                let (mut parts, _) = response.into_parts();
                crate::proxy::headers::strip_hop_by_hop(&mut parts.headers, true);
                return Ok(Response::from_parts(parts, crate::body::empty()));
            }
            let (mut parts, body) = response.into_parts();
            crate::proxy::headers::strip_hop_by_hop(&mut parts.headers, false);
            let mut body = GuardedBody::new(boxed(body)).guard(in_flight_guard);
            if let Some(permit) = permit {
                body = body.guard(permit);
            }
            if let Some(idle) = timeouts.idle {
                let counter = metrics
                    .timeouts
                    .with_label_values(&[service, TimeoutKind::Idle.label()]);
                body = body.idle_timeout(idle.get(), move || counter.inc());
            }
            Ok(Response::from_parts(parts, body.boxed()))
        }
        .await;

        let (response, reason) = match result {
            Ok(response) => (response, None),
            Err(refusal) => {
                let reason = refusal.reason;
                (refusal.into_response(), Some(reason))
            }
        };
        let status = response.status();
        let elapsed = start.elapsed();
        metrics.record(INBOUND, service, subset, status, elapsed);
        tracing::debug!(
            target: "weir::access",
            direction = INBOUND,
            peer = %peer,
            method = %parts.method,
            path = parts.uri.path(),
            status = status.as_u16(),
            reason = reason.map(Reason::as_str),
            micros = elapsed.as_micros() as u64,
        );
        response
    }
}

/// Runs a closure when dropped: holds the in-flight gauge up until the body is done.
struct ScopeGuard<F: FnOnce()>(Option<F>);

fn scopeguard<F: FnOnce()>(f: F) -> ScopeGuard<F> {
    ScopeGuard(Some(f))
}

impl<F: FnOnce()> Drop for ScopeGuard<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}
