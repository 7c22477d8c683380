//! One ResiliencePolicy's spec converted into the blocks of a proxy's policy, checked against
//! the Bounds table by the sidecar's own validation (local mode has no API server to do it), with
//! every refusal naming the field.
//!
//! A `mode: DryRun` policy's blocks are marked `dryRun` (the sidecar counts what they would have
//! done and changes no request). Its `loadBalancer` and `fallback` have nothing to count, so they
//! are left out: the next level's (Namespace, then Mesh) apply instead.

use super::{Refused, refused};
use weir_proxy_api as api;

/// The converted blocks of one policy: what it gives its callers' sidecars (outbound) and its
/// target's own sidecars (inbound). An absent block is one the policy does not set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Blocks {
    pub policy: api::Policy,
    pub inbound: api::InboundPolicy,
}

fn duration(field: &str, value: &Option<String>) -> Result<Option<api::Duration>, Refused> {
    value
        .as_deref()
        .map(|v| {
            v.parse::<api::Duration>()
                .map_err(|e| refused("Invalid", format!("spec.{field}: {e}")))
        })
        .transpose()
}

fn count(field: &str, value: i32) -> Result<u32, Refused> {
    u32::try_from(value).map_err(|_| {
        refused(
            "Invalid",
            format!("spec.{field}: must not be negative ({value})"),
        )
    })
}

/// `value`, when given, as a count (see [`count`]).
fn optional_count(field: &str, value: Option<i32>) -> Result<Option<u32>, Refused> {
    value.map(|n| count(field, n)).transpose()
}

/// One optional block of the spec converted by `convert`, when the spec has it.
fn block<T, U>(
    spec: &Option<T>,
    convert: impl FnOnce(&T) -> Result<U, Refused>,
) -> Result<Option<U>, Refused> {
    spec.as_ref().map(convert).transpose()
}

/// Converts `spec`, or says which field is out of bounds.
pub fn convert_policy(spec: &weir_crds::ResiliencePolicySpec) -> Result<Blocks, Refused> {
    let dry_run = spec.mode == Some(weir_crds::PolicyMode::DryRun);
    let timeouts = block(&spec.timeouts, |t| -> Result<api::Timeouts, Refused> {
        Ok(api::Timeouts {
            request: duration("timeouts.request", &t.request)?,
            per_try: duration("timeouts.perTry", &t.per_try)?,
            connect: duration("timeouts.connect", &t.connect)?,
            idle: duration("timeouts.idle", &t.idle)?,
            dry_run,
        })
    })?;
    let retries = block(&spec.retries, |r| -> Result<api::Retries, Refused> {
        let defaults = api::Backoff::default();
        let backoff = r.backoff.clone().unwrap_or_default();
        Ok(api::Retries {
            attempts: count("retries.attempts", r.attempts)?,
            retry_on: match &r.retry_on {
                Some(classes) => classes.iter().map(|c| retry_on(*c)).collect(),
                None => api::Retries::default_retry_on(),
            },
            backoff: api::Backoff {
                base: duration("retries.backoff.base", &backoff.base)?.unwrap_or(defaults.base),
                max: duration("retries.backoff.max", &backoff.max)?.unwrap_or(defaults.max),
                multiplier: backoff.multiplier.unwrap_or(defaults.multiplier),
                jitter: match backoff.jitter {
                    Some(weir_crds::Jitter::None) => api::Jitter::None,
                    _ => api::Jitter::Full,
                },
            },
            budget: r
                .budget
                .as_ref()
                .map(|b| -> Result<api::RetryBudget, Refused> {
                    Ok(api::RetryBudget {
                        ratio: b.ratio,
                        min_per_second: count("retries.budget.minPerSecond", b.min_per_second)?,
                    })
                })
                .transpose()?,
            dry_run,
        })
    })?;
    let circuit_breaker = block(
        &spec.circuit_breaker,
        |cb| -> Result<api::CircuitBreaker, Refused> {
            if cb.failure_threshold.is_none() && cb.failure_rate.is_none() {
                return Err(refused(
                    "Invalid",
                    "spec.circuitBreaker: needs failureThreshold, failureRate or both".to_owned(),
                ));
            }
            Ok(api::CircuitBreaker {
                failure_threshold: optional_count(
                    "circuitBreaker.failureThreshold",
                    cb.failure_threshold,
                )?,
                failure_rate: cb.failure_rate,
                window: duration("circuitBreaker.window", &cb.window)?
                    .unwrap_or_else(api::CircuitBreaker::default_window),
                min_requests: optional_count("circuitBreaker.minRequests", cb.min_requests)?
                    .unwrap_or_else(api::CircuitBreaker::default_min_requests),
                dry_run,
                success_threshold: count(
                    "circuitBreaker.successThreshold",
                    cb.success_threshold.unwrap_or(1),
                )?,
                open_duration: duration("circuitBreaker.openDuration", &cb.open_duration)?
                    .unwrap_or(api::Duration::from_secs(30)),
            })
        },
    )?;
    let outlier_detection = block(
        &spec.outlier_detection,
        |od| -> Result<api::OutlierDetection, Refused> {
            Ok(api::OutlierDetection {
                consecutive_5xx_errors: optional_count(
                    "outlierDetection.consecutive5xxErrors",
                    od.consecutive_5xx_errors,
                )?,
                consecutive_gateway_errors: optional_count(
                    "outlierDetection.consecutiveGatewayErrors",
                    od.consecutive_gateway_errors,
                )?,
                interval: duration("outlierDetection.interval", &od.interval)?
                    .unwrap_or(api::Duration::from_secs(10)),
                base_ejection_time: duration(
                    "outlierDetection.baseEjectionTime",
                    &od.base_ejection_time,
                )?
                .unwrap_or(api::Duration::from_secs(30)),
                max_ejection_percent: count(
                    "outlierDetection.maxEjectionPercent",
                    od.max_ejection_percent.unwrap_or(10),
                )?,
                dry_run,
            })
        },
    )?;
    let policy = api::Policy {
        timeouts,
        retries,
        circuit_breaker,
        outlier_detection,
        load_balancer: spec.load_balancer.as_ref().filter(|_| !dry_run).map(|lb| {
            api::LoadBalancer {
                policy: match lb.policy {
                    Some(weir_crds::LoadBalancerPolicy::RoundRobin) => {
                        api::LoadBalancerPolicy::RoundRobin
                    }
                    Some(weir_crds::LoadBalancerPolicy::Ewma) => api::LoadBalancerPolicy::Ewma,
                    Some(weir_crds::LoadBalancerPolicy::LeastRequest) | None => {
                        api::LoadBalancerPolicy::LeastRequest
                    }
                },
            }
        }),
        fallback: spec
            .fallback
            .as_ref()
            .filter(|_| !dry_run)
            .map(|f| -> Result<api::Fallback, Refused> {
                Ok(api::Fallback {
                    status: u16::try_from(f.status).map_err(|_| {
                        refused(
                            "Invalid",
                            format!("spec.fallback.status: {} is not an HTTP status", f.status),
                        )
                    })?,
                    body: f.body.clone().unwrap_or_default(),
                    content_type: f
                        .content_type
                        .clone()
                        .unwrap_or_else(|| "text/plain".to_owned()),
                })
            })
            .transpose()?,
        faults: spec
            .faults
            .as_ref()
            .map(|f| -> Result<api::Faults, Refused> {
                Ok(api::Faults {
                    delay: f
                        .delay
                        .as_ref()
                        .map(|d| -> Result<api::FaultDelay, Refused> {
                            Ok(api::FaultDelay {
                                percent: d.percent,
                                duration: duration(
                                    "faults.delay.duration",
                                    &Some(d.duration.clone()),
                                )?
                                .unwrap_or_default(),
                            })
                        })
                        .transpose()?,
                    abort: f
                        .abort
                        .as_ref()
                        .map(|a| -> Result<api::FaultAbort, Refused> {
                            Ok(api::FaultAbort {
                                percent: a.percent,
                                status: u16::try_from(a.status).map_err(|_| {
                                    refused(
                                        "Invalid",
                                        format!(
                                            "spec.faults.abort.status: {}",
                                            weir_proxy_api::bounds::FAULT_ABORT_STATUS.message()
                                        ),
                                    )
                                })?,
                            })
                        })
                        .transpose()?,
                    dry_run,
                })
            })
            .transpose()?,
    };
    let inbound = api::InboundPolicy {
        subset: None,
        timeouts: spec.timeouts.as_ref().and_then(|_| {
            let t = policy.timeouts.as_ref()?;
            (t.request.is_some() || t.idle.is_some()).then_some(api::InboundTimeouts {
                request: t.request,
                idle: t.idle,
                dry_run,
            })
        }),
        rate_limit: spec
            .rate_limit
            .as_ref()
            .map(|rl| -> Result<api::RateLimit, Refused> {
                Ok(api::RateLimit {
                    requests_per_second: f64::from(rl.requests_per_second),
                    burst: count("rateLimit.burst", rl.burst)?,
                    key: rl
                        .key
                        .as_deref()
                        .unwrap_or("none")
                        .parse()
                        .map_err(|e| refused("Invalid", format!("spec.rateLimit.key: {e}")))?,
                    dry_run,
                })
            })
            .transpose()?,
        bulkhead: spec
            .bulkhead
            .as_ref()
            .map(|b| -> Result<api::Bulkhead, Refused> {
                Ok(api::Bulkhead {
                    max_concurrent: count("bulkhead.maxConcurrent", b.max_concurrent)?,
                    max_queued: count("bulkhead.maxQueued", b.max_queued.unwrap_or(0))?,
                    queue_timeout: duration("bulkhead.queueTimeout", &b.queue_timeout)?
                        .unwrap_or(api::Duration::from_secs(1)),
                    dry_run,
                })
            })
            .transpose()?,
    };
    // The sidecar's own validation, so nothing the operator sends is refused by a proxy.
    let probe = api::ProxyConfig {
        version: 0,
        inbound: inbound.clone(),
        services: vec![api::ServiceConfig {
            name: "probe".into(),
            namespace: "probe".into(),
            addresses: Vec::new(),
            subsets: vec![api::Subset {
                name: "probe".into(),
                weight: 1,
                endpoints: Vec::new(),
            }],
            rules: Vec::new(),
            ports: Vec::new(),
            policy: policy.clone(),
        }],
        limits: Default::default(),
    };
    probe.validate().map_err(|e| {
        let field = e
            .field
            .trim_start_matches("services[0].policy.")
            .trim_start_matches("inbound.")
            .to_owned();
        refused("Invalid", format!("spec.{field}: {}", e.message))
    })?;
    Ok(Blocks { policy, inbound })
}

fn retry_on(class: weir_crds::RetryOn) -> api::RetryOn {
    match class {
        weir_crds::RetryOn::ServerError => api::RetryOn::ServerError,
        weir_crds::RetryOn::GatewayError => api::RetryOn::GatewayError,
        weir_crds::RetryOn::ConnectFailure => api::RetryOn::ConnectFailure,
        weir_crds::RetryOn::Reset => api::RetryOn::Reset,
        weir_crds::RetryOn::Retriable4xx => api::RetryOn::Retriable4xx,
        weir_crds::RetryOn::TooManyRequests => api::RetryOn::TooManyRequests,
        weir_crds::RetryOn::Cancelled => api::RetryOn::Cancelled,
        weir_crds::RetryOn::DeadlineExceeded => api::RetryOn::DeadlineExceeded,
        weir_crds::RetryOn::ResourceExhausted => api::RetryOn::ResourceExhausted,
        weir_crds::RetryOn::Unavailable => api::RetryOn::Unavailable,
    }
}
