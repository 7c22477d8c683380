//! One Prometheus registry per process, as both binaries keep it: each declares the series it
//! exports as a [`MetricSet`] and uses [`Registered`] of that set, which makes the registry,
//! registers every series in it once, reads as the set (`metrics.requests`...) and encodes the
//! text `/metrics` serves. The operator and the sidecar used to repeat these steps each.
//!
//! The series' names are the sidecar contract's (DESIGN.md), and the reading side is
//! [`crate::metrics_text`]: both halves of the `/metrics` exchange live in this crate.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::ops::Deref;

/// The series one process exports, created together.
pub trait MetricSet {
    /// Creates every series of the set, each registered in `registry` (e.g. with
    /// [`counter_vec`]).
    fn register(registry: &Registry) -> Self;
}

/// A [`MetricSet`] with the registry its series are in; reads as the set.
#[derive(Debug, Clone)]
pub struct Registered<M> {
    registry: Registry,
    set: M,
}

impl<M: MetricSet> Registered<M> {
    pub fn new() -> Self {
        let registry = Registry::new();
        let set = M::register(&registry);
        Self { registry, set }
    }
}

impl<M: MetricSet> Default for Registered<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> Registered<M> {
    /// The registry, to add metrics that live elsewhere (e.g. a client library's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every series in the Prometheus text format (what `/metrics` serves).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        out
    }

    /// The `Content-Type` of [`Registered::encode`]'s output.
    pub fn content_type() -> &'static str {
        prometheus::TEXT_FORMAT
    }
}

impl<M> Deref for Registered<M> {
    type Target = M;
    fn deref(&self) -> &M {
        &self.set
    }
}

/// Registers `metric` in `registry` and returns it: each series is registered once, at start.
pub fn register<C: Collector + Clone + 'static>(registry: &Registry, metric: C) -> C {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

/// A counter per value of `labels`, registered.
pub fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

/// A gauge per value of `labels`, registered.
pub fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        r,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

/// One gauge, registered.
pub fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    register(r, IntGauge::new(name, help).expect("valid metric"))
}

/// A histogram with `buckets` per value of `labels`, registered.
pub fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(r, HistogramVec::new(opts, labels).expect("valid metric"))
}

/// One histogram with `buckets`, registered.
pub fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(r, Histogram::with_opts(opts).expect("valid metric"))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Calls {
        calls: IntCounterVec,
        latency: Histogram,
    }

    impl MetricSet for Calls {
        fn register(r: &Registry) -> Self {
            Self {
                calls: counter_vec(r, "calls_total", "Calls.", &["service"]),
                latency: histogram(r, "latency_seconds", "Latency.", &[0.1, 1.0]),
            }
        }
    }

    #[test]
    fn a_set_reads_as_itself_and_encodes_every_series_it_registered() {
        let metrics = Registered::<Calls>::default();
        metrics.calls.with_label_values(&["payments"]).inc();
        metrics.latency.observe(0.5);
        let text = String::from_utf8(metrics.encode()).unwrap();
        for line in [
            "# HELP calls_total Calls.",
            r#"calls_total{service="payments"} 1"#,
            r#"latency_seconds_bucket{le="0.1"} 0"#,
            r#"latency_seconds_bucket{le="1"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        assert!(Registered::<Calls>::content_type().starts_with("text/plain"));
        // Each process makes its own registry: a second set starts at zero.
        let other = Registered::<Calls>::new();
        assert!(!String::from_utf8(other.encode()).unwrap().contains("} 1"));
    }

    #[test]
    #[should_panic(expected = "metric registered once")]
    fn a_series_registered_twice_is_a_bug_found_at_start() {
        let r = Registry::new();
        gauge(&r, "same", "Same.");
        gauge(&r, "same", "Same.");
    }
}
