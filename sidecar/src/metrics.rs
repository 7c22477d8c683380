//! The Prometheus metrics of the sidecar contract, one registry per process.
//!
//! Label values come from a fixed set: service and subset names from the config (or `unknown`),
//! status codes, and the four timeout kinds. Never raw paths, hosts or error text, which would let
//! one client grow the registry without bound.

use prometheus::{
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};
use std::sync::OnceLock;
use weir_proxy_api::metrics_registry::{
    MetricSet, Registered, counter_vec, gauge, gauge_vec, histogram_vec,
};

/// `direction` label values.
pub const OUTBOUND: &str = "outbound";
pub const INBOUND: &str = "inbound";

/// The service label for calls to a service the proxy knows nothing about.
pub const UNKNOWN_SERVICE: &str = "unknown";

/// Latency buckets from 0.5 ms to 30 s: a sidecar hop costs well under a millisecond, a slow
/// upstream may take seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The sidecar's registry, read as its [`ProxyMetricSet`] (`metrics.requests`...).
pub type Metrics = Registered<ProxyMetricSet>;

/// Every series the sidecar exports.
#[derive(Debug, Clone)]
pub struct ProxyMetricSet {
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub retries: IntCounterVec,
    pub retry_budget_exhausted: IntCounterVec,
    pub timeouts: IntCounterVec,
    pub circuit_breaker_state: IntGaugeVec,
    pub outlier_ejections: IntCounterVec,
    pub endpoints_ejected: IntGaugeVec,
    pub rate_limited: IntCounterVec,
    pub bulkhead_rejected: IntCounterVec,
    pub in_flight: IntGaugeVec,
    pub config_version: IntGauge,
    pub control_plane_connected: IntGauge,
    pub config_rejected: IntCounterVec,
    /// `weir_connections{listener}`: connections open now on each listener.
    pub connections: IntGaugeVec,
    /// `weir_connections_closed_total{listener,reason}`, reasons from [`crate::server::CloseReason`].
    pub connections_closed: IntCounterVec,
    /// `weir_dry_run_total{service,reason}`: what a `mode: DryRun` block would have done,
    /// reasons from [`DryRunReason`].
    pub dry_run: IntCounterVec,
    /// `weir_faults_injected_total{service,kind}`, kind `delay` or `abort`.
    pub faults_injected: IntCounterVec,
}

/// `reason` label values of `weir_dry_run_total`: what a dry-run block would have done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DryRunReason {
    RateLimited,
    BulkheadFull,
    CircuitOpen,
    Ejection,
    Timeout,
    Retry,
    Fault,
}

impl DryRunReason {
    pub fn label(self) -> &'static str {
        match self {
            Self::RateLimited => "rate-limited",
            Self::BulkheadFull => "bulkhead-full",
            Self::CircuitOpen => "circuit-open",
            Self::Ejection => "ejection",
            Self::Timeout => "timeout",
            Self::Retry => "retry",
            Self::Fault => "fault",
        }
    }
}

/// `kind` label values of `weir_timeouts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    Request,
    PerTry,
    Connect,
    Idle,
}

impl TimeoutKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::PerTry => "per-try",
            Self::Connect => "connect",
            Self::Idle => "idle",
        }
    }
}

impl MetricSet for ProxyMetricSet {
    fn register(r: &Registry) -> Self {
        Self {
            requests: counter_vec(
                r,
                "weir_requests_total",
                "Requests answered, by direction, service, subset and status code.",
                &["direction", "service", "subset", "code"],
            ),
            request_duration: histogram_vec(
                r,
                "weir_request_duration_seconds",
                "Time from receiving a request to sending the response headers.",
                LATENCY_BUCKETS,
                &["direction", "service", "subset"],
            ),
            retries: counter_vec(r, "weir_retries_total", "Retries sent.", &["service"]),
            retry_budget_exhausted: counter_vec(
                r,
                "weir_retry_budget_exhausted_total",
                "Retries not sent because the retry budget was spent.",
                &["service"],
            ),
            timeouts: counter_vec(
                r,
                "weir_timeouts_total",
                "Timeouts, by kind (request, per-try, connect, idle).",
                &["service", "kind"],
            ),
            circuit_breaker_state: gauge_vec(
                r,
                "weir_circuit_breaker_state",
                "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
                &["service"],
            ),
            outlier_ejections: counter_vec(
                r,
                "weir_outlier_ejections_total",
                "Endpoints ejected by outlier detection.",
                &["service"],
            ),
            endpoints_ejected: gauge_vec(
                r,
                "weir_endpoints_ejected",
                "Endpoints currently ejected.",
                &["service"],
            ),
            rate_limited: counter_vec(
                r,
                "weir_rate_limited_total",
                "Requests refused by the rate limit.",
                &["service"],
            ),
            bulkhead_rejected: counter_vec(
                r,
                "weir_bulkhead_rejected_total",
                "Requests refused because the bulkhead was full.",
                &["service"],
            ),
            in_flight: gauge_vec(
                r,
                "weir_in_flight_requests",
                "Requests in flight.",
                &["direction", "service"],
            ),
            config_version: gauge(r, "weir_config_version", "Version of the running config."),
            control_plane_connected: gauge(
                r,
                "weir_control_plane_connected",
                "1 while the control plane answers, else 0.",
            ),
            config_rejected: counter_vec(
                r,
                "weir_config_rejected_total",
                "Config updates refused because they failed validation.",
                &["source"],
            ),
            connections: gauge_vec(
                r,
                "weir_connections",
                "Connections open now, by listener (outbound, inbound, admin).",
                &["listener"],
            ),
            connections_closed: counter_vec(
                r,
                "weir_connections_closed_total",
                "Connections closed, by listener and reason (closed, error, header-timeout, idle).",
                &["listener", "reason"],
            ),
            dry_run: counter_vec(
                r,
                "weir_dry_run_total",
                "What dry-run policy blocks would have done, by reason (rate-limited, bulkhead-full, circuit-open, ejection, timeout, retry, fault).",
                &["service", "reason"],
            ),
            faults_injected: counter_vec(
                r,
                "weir_faults_injected_total",
                "Faults injected into calls, by kind (delay, abort).",
                &["service", "kind"],
            ),
        }
    }
}

impl ProxyMetricSet {
    /// Counts (and logs at debug) what a dry-run block would have done to a call to `service`.
    pub fn dry_run_hit(&self, service: &str, reason: DryRunReason) {
        self.dry_run
            .with_label_values(&[service, reason.label()])
            .inc();
        tracing::debug!(
            service,
            reason = reason.label(),
            "dry run: the policy would have acted"
        );
    }

    /// Counts one answered request and its latency.
    pub fn record(
        &self,
        direction: &str,
        service: &str,
        subset: &str,
        status: http::StatusCode,
        elapsed: std::time::Duration,
    ) {
        self.requests
            .with_label_values(&[direction, service, subset, status.as_str()])
            .inc();
        self.request_duration
            .with_label_values(&[direction, service, subset])
            .observe(elapsed.as_secs_f64());
    }
}

/// The per-request series of one service's subset in one direction, resolved once: looking a
/// series up by its labels hashes every label value and takes the vector's lock, which every
/// request paid two or three times over. The series are the ones [`ProxyMetricSet::record`] and the
/// other lookups would find; those that appear only when something happens (a status code, an
/// idle timeout, a breaker) are still created when it first happens.
#[derive(Debug)]
pub struct RequestMetrics {
    direction: &'static str,
    service: String,
    subset: String,
    duration: Histogram,
    /// `weir_in_flight_requests{direction,service}`.
    pub in_flight: IntGauge,
    /// `weir_requests_total` by the status codes seen so far (a handful).
    codes: parking_lot::RwLock<Vec<(http::StatusCode, IntCounter)>>,
    idle_timeouts: OnceLock<IntCounter>,
    breaker_state: OnceLock<IntGauge>,
}

impl RequestMetrics {
    pub fn new(metrics: &Metrics, direction: &'static str, service: &str, subset: &str) -> Self {
        Self {
            direction,
            service: service.to_owned(),
            subset: subset.to_owned(),
            duration: metrics
                .request_duration
                .with_label_values(&[direction, service, subset]),
            in_flight: metrics.in_flight.with_label_values(&[direction, service]),
            codes: parking_lot::RwLock::new(Vec::new()),
            idle_timeouts: OnceLock::new(),
            breaker_state: OnceLock::new(),
        }
    }

    /// Counts one answered request and its latency, as [`ProxyMetricSet::record`] does.
    pub fn record(
        &self,
        metrics: &Metrics,
        status: http::StatusCode,
        elapsed: std::time::Duration,
    ) {
        let known = self
            .codes
            .read()
            .iter()
            .find(|(code, _)| *code == status)
            .map(|(_, counter)| counter.inc())
            .is_some();
        if !known {
            let counter = metrics.requests.with_label_values(&[
                self.direction,
                &self.service,
                &self.subset,
                status.as_str(),
            ]);
            counter.inc();
            let mut codes = self.codes.write();
            if !codes.iter().any(|(code, _)| *code == status) {
                codes.push((status, counter));
            }
        }
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// `weir_timeouts_total{service,kind="idle"}`.
    pub fn idle_timeouts(&self, metrics: &Metrics) -> &IntCounter {
        self.idle_timeouts.get_or_init(|| {
            metrics
                .timeouts
                .with_label_values(&[&self.service, TimeoutKind::Idle.label()])
        })
    }

    /// `weir_circuit_breaker_state{service}`.
    pub fn breaker_state(&self, metrics: &Metrics) -> &IntGauge {
        self.breaker_state.get_or_init(|| {
            metrics
                .circuit_breaker_state
                .with_label_values(&[&self.service])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use std::time::Duration;

    #[test]
    fn resolved_series_count_as_the_label_lookups_do() {
        let metrics = Metrics::new();
        let series = RequestMetrics::new(&metrics, OUTBOUND, "payments", "v1");
        for status in [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::SERVICE_UNAVAILABLE,
        ] {
            series.record(&metrics, status, Duration::from_millis(2));
        }
        metrics.record(
            OUTBOUND,
            "payments",
            "v1",
            StatusCode::OK,
            Duration::from_millis(2),
        );
        series.idle_timeouts(&metrics).inc();
        series.breaker_state(&metrics).set(1);
        let text = String::from_utf8(metrics.encode()).unwrap();
        for line in [
            r#"weir_requests_total{code="200",direction="outbound",service="payments",subset="v1"} 3"#,
            r#"weir_requests_total{code="503",direction="outbound",service="payments",subset="v1"} 1"#,
            r#"weir_request_duration_seconds_count{direction="outbound",service="payments",subset="v1"} 4"#,
            r#"weir_timeouts_total{kind="idle",service="payments"} 1"#,
            r#"weir_circuit_breaker_state{service="payments"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        assert_eq!(series.in_flight.get(), 0);
        assert_eq!(
            metrics
                .in_flight
                .with_label_values(&[OUTBOUND, "payments"])
                .get(),
            0
        );
        series.in_flight.inc();
        assert_eq!(
            metrics
                .in_flight
                .with_label_values(&[OUTBOUND, "payments"])
                .get(),
            1,
            "the resolved gauge is the labelled one"
        );
    }
}
