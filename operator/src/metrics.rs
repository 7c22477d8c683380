//! The operator's Prometheus metrics (names from the sidecar contract in the design), one
//! registry per process, shared as `Arc<Metrics>` by the sources, the config API and the admin
//! listener that serves [`Registered::encode`] on `/metrics`.
//!
//! Label values come from fixed sets (resource kinds, results) or from the names of objects the
//! operator itself manages (`namespace`, `name` of an Autoscaler); never from what a proxy or a
//! client sends, which would let one of them grow the registry without bound.

use prometheus::{Histogram, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use weir_proxy_api::metrics_registry::{
    MetricSet, Registered, counter_vec, gauge, gauge_vec, histogram, histogram_vec,
};

/// `weir_config_push_seconds` buckets: from 1 ms (a push on loopback) to 10 s (far beyond the
/// 1 s goal; anything slower shows in `+Inf`).
const PUSH_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// `weir_reconcile_duration_seconds` buckets: a reconcile is a few API calls.
const RECONCILE_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// `result` label values of `weir_reconcile_total`.
pub const RESULT_SUCCESS: &str = "success";
pub const RESULT_ERROR: &str = "error";

/// `result` label values of `weir_webhook_admissions_total`.
pub const ADMISSION_INJECTED: &str = "injected";
pub const ADMISSION_SKIPPED: &str = "skipped";
pub const ADMISSION_DENIED: &str = "denied";
pub const ADMISSION_MALFORMED: &str = "malformed";

/// `kind` label values of `weir_config_rejected_total`: which kind of resource a proxy refused.
pub const KIND_INBOUND: &str = "inbound";
pub const KIND_SERVICE: &str = "service";
pub const KIND_OTHER: &str = "other";

/// Records one translation in both modes: a `weir_reconcile_total{kind,result="success"}` per
/// resource judged (a refused resource too: the reconcile worked, the resource did not) and the
/// translation's duration in `weir_reconcile_duration_seconds{kind}` per resource.
pub fn record_reconciles(
    metrics: &Metrics,
    verdicts: &[crate::translate::Verdict],
    took: std::time::Duration,
) {
    for verdict in verdicts {
        metrics.record_reconcile(verdict.kind.as_str(), RESULT_SUCCESS, took);
    }
}

/// The operator's registry, read as its [`OperatorMetricSet`] (`metrics.reconcile`...).
pub type Metrics = Registered<OperatorMetricSet>;

/// Every series the operator exports.
#[derive(Debug, Clone)]
pub struct OperatorMetricSet {
    /// `weir_reconcile_total{kind,result}`: reconciles per resource kind, by result.
    pub reconcile: IntCounterVec,
    /// `weir_reconcile_duration_seconds{kind}`.
    pub reconcile_duration: HistogramVec,
    /// `weir_connected_proxies`: proxies polling the config API now.
    pub connected_proxies: IntGauge,
    /// `weir_config_push_seconds`: a change seen → every subscribed proxy acknowledged it.
    pub config_push: Histogram,
    /// `weir_autoscaler_desired_replicas{namespace,name}`.
    pub autoscaler_desired_replicas: IntGaugeVec,
    /// `weir_config_rejected_total{kind}`: updates proxies refused (their NACKs).
    pub config_rejected: IntCounterVec,
    /// `weir_config_version`: the version of the snapshot served now.
    pub config_version: IntGauge,
    /// `weir_webhook_admissions_total{result}`: admission requests the injection webhook
    /// answered — `injected`, `skipped` (allowed unchanged), `denied`, `malformed`.
    pub webhook_admissions: IntCounterVec,
    /// `weir_canary_weight{namespace,name}`: a rollout's canary share in percent now.
    pub canary_weight: IntGaugeVec,
    /// `weir_analysis_judgements_total{namespace,name,result}`: judgements of rollout steps, by
    /// result (`Passed`, `Failed`, `Inconclusive`).
    pub analysis_judgements: IntCounterVec,
}

impl MetricSet for OperatorMetricSet {
    fn register(r: &Registry) -> Self {
        Self {
            reconcile: counter_vec(
                r,
                "weir_reconcile_total",
                "Reconciles of custom resources, by kind and result.",
                &["kind", "result"],
            ),
            reconcile_duration: histogram_vec(
                r,
                "weir_reconcile_duration_seconds",
                "How long one reconcile took, by kind.",
                RECONCILE_BUCKETS,
                &["kind"],
            ),
            connected_proxies: gauge(
                r,
                "weir_connected_proxies",
                "Proxies with a poll in flight or a recent poll on the config API.",
            ),
            config_push: histogram(
                r,
                "weir_config_push_seconds",
                "From a config change seen to every subscribed proxy acknowledging it.",
                PUSH_BUCKETS,
            ),
            autoscaler_desired_replicas: gauge_vec(
                r,
                "weir_autoscaler_desired_replicas",
                "Replicas each Autoscaler wants now.",
                &["namespace", "name"],
            ),
            config_rejected: counter_vec(
                r,
                "weir_config_rejected_total",
                "Config updates that proxies refused (failed their validation), by resource kind.",
                &["kind"],
            ),
            config_version: gauge(
                r,
                "weir_config_version",
                "The version of the config snapshot the operator serves.",
            ),
            webhook_admissions: counter_vec(
                r,
                "weir_webhook_admissions_total",
                "Admission requests the injection webhook answered, by result.",
                &["result"],
            ),
            canary_weight: gauge_vec(
                r,
                "weir_canary_weight",
                "The canary's share of traffic in percent, per TrafficSplit with an analysis.",
                &["namespace", "name"],
            ),
            analysis_judgements: counter_vec(
                r,
                "weir_analysis_judgements_total",
                "Judgements of canary rollout steps, by result (Passed, Failed, Inconclusive).",
                &["namespace", "name", "result"],
            ),
        }
    }
}

impl OperatorMetricSet {
    /// One reconcile of a resource of `kind`: `weir_reconcile_total{kind,result}` and its
    /// duration in `weir_reconcile_duration_seconds{kind}`.
    pub fn record_reconcile(&self, kind: &str, result: &str, took: std::time::Duration) {
        self.reconcile.with_label_values(&[kind, result]).inc();
        self.reconcile_duration
            .with_label_values(&[kind])
            .observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_name_is_exported() {
        let m = Metrics::new();
        m.reconcile
            .with_label_values(&["TrafficSplit", RESULT_SUCCESS])
            .inc();
        m.reconcile_duration
            .with_label_values(&["TrafficSplit"])
            .observe(0.01);
        m.autoscaler_desired_replicas
            .with_label_values(&["shop", "payments"])
            .set(3);
        m.config_rejected.with_label_values(&[KIND_SERVICE]).inc();
        m.config_push.observe(0.002);
        m.canary_weight
            .with_label_values(&["shop", "payments"])
            .set(25);
        m.analysis_judgements
            .with_label_values(&["shop", "payments", "Passed"])
            .inc();
        let text = String::from_utf8(m.encode()).unwrap();
        for name in [
            "weir_reconcile_total{kind=\"TrafficSplit\",result=\"success\"} 1",
            "weir_reconcile_duration_seconds_bucket{kind=\"TrafficSplit\",le=\"0.01\"} 1",
            "weir_connected_proxies 0",
            "weir_config_push_seconds_bucket{le=\"0.001\"} 0",
            "weir_config_push_seconds_bucket{le=\"0.0025\"} 1",
            "weir_config_push_seconds_bucket{le=\"10\"} 1",
            "weir_autoscaler_desired_replicas{name=\"payments\",namespace=\"shop\"} 3",
            "weir_config_rejected_total{kind=\"service\"} 1",
            "weir_config_version 0",
            "weir_canary_weight{name=\"payments\",namespace=\"shop\"} 25",
            "weir_analysis_judgements_total{name=\"payments\",namespace=\"shop\",result=\"Passed\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
