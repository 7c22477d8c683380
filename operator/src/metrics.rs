//! The operator's Prometheus metrics (names from the sidecar contract in the design), one
//! registry per process, shared as `Arc<Metrics>` by the sources, the config API and the admin
//! listener that serves [`Metrics::encode`] on `/metrics`.
//!
//! Label values come from fixed sets (resource kinds, results) or from the names of objects the
//! operator itself manages (`namespace`, `name` of an Autoscaler); never from what a proxy or a
//! client sends, which would let one of them grow the registry without bound.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
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

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
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

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        fn register<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
            r.register(Box::new(m.clone()))
                .expect("metric registered once");
            m
        }
        let reconcile = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "weir_reconcile_total",
                    "Reconciles of custom resources, by kind and result.",
                ),
                &["kind", "result"],
            )
            .expect("valid metric"),
        );
        let reconcile_duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "weir_reconcile_duration_seconds",
                    "How long one reconcile took, by kind.",
                )
                .buckets(RECONCILE_BUCKETS.to_vec()),
                &["kind"],
            )
            .expect("valid metric"),
        );
        let connected_proxies = register(
            &registry,
            IntGauge::new(
                "weir_connected_proxies",
                "Proxies with a poll in flight or a recent poll on the config API.",
            )
            .expect("valid metric"),
        );
        let config_push = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "weir_config_push_seconds",
                    "From a config change seen to every subscribed proxy acknowledging it.",
                )
                .buckets(PUSH_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
        );
        let autoscaler_desired_replicas = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "weir_autoscaler_desired_replicas",
                    "Replicas each Autoscaler wants now.",
                ),
                &["namespace", "name"],
            )
            .expect("valid metric"),
        );
        let config_rejected = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "weir_config_rejected_total",
                    "Config updates that proxies refused (failed their validation), by resource kind.",
                ),
                &["kind"],
            )
            .expect("valid metric"),
        );
        let config_version = register(
            &registry,
            IntGauge::new(
                "weir_config_version",
                "The version of the config snapshot the operator serves.",
            )
            .expect("valid metric"),
        );
        let webhook_admissions = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "weir_webhook_admissions_total",
                    "Admission requests the injection webhook answered, by result.",
                ),
                &["result"],
            )
            .expect("valid metric"),
        );
        let canary_weight = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "weir_canary_weight",
                    "The canary's share of traffic in percent, per TrafficSplit with an analysis.",
                ),
                &["namespace", "name"],
            )
            .expect("valid metric"),
        );
        let analysis_judgements = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "weir_analysis_judgements_total",
                    "Judgements of canary rollout steps, by result (Passed, Failed, Inconclusive).",
                ),
                &["namespace", "name", "result"],
            )
            .expect("valid metric"),
        );
        Self {
            canary_weight,
            analysis_judgements,
            registry,
            reconcile,
            reconcile_duration,
            connected_proxies,
            config_push,
            autoscaler_desired_replicas,
            config_rejected,
            config_version,
            webhook_admissions,
        }
    }

    /// The registry, to add metrics that live elsewhere (e.g. a client library's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every metric in the Prometheus text format (what `/metrics` serves).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        out
    }

    /// One reconcile of a resource of `kind`: `weir_reconcile_total{kind,result}` and its
    /// duration in `weir_reconcile_duration_seconds{kind}`.
    pub fn record_reconcile(&self, kind: &str, result: &str, took: std::time::Duration) {
        self.reconcile.with_label_values(&[kind, result]).inc();
        self.reconcile_duration
            .with_label_values(&[kind])
            .observe(took.as_secs_f64());
    }

    /// The `Content-Type` of [`Metrics::encode`]'s output.
    pub fn content_type() -> &'static str {
        prometheus::TEXT_FORMAT
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
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
