//! The spec as the algorithm reads it (bounds, metric targets, the behavior of each direction,
//! parsed from an Autoscaler with the HPA's defaults) and the [`Tuning`] that tells Weir's
//! reading of the metrics from a plain HPA's.

use super::TOLERANCE;
use std::time::Duration;
use weir_crds::{AutoscalerSpec, MetricType, ScalingRules};

// ------------------------------------------------------------------------------------ spec

/// What a policy limits: a number of pods or a percentage of the replicas at the period's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    Pods,
    Percent,
}

/// One scaling policy, as the HPA's `HPAScalingPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub kind: PolicyKind,
    pub value: i32,
    pub period: Duration,
}

/// Which policy wins when there are several.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectPolicy {
    /// The policy allowing the most change (the HPA's default).
    Max,
    /// The policy allowing the least change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// The behavior of one direction, as the HPA's `HPAScalingRules`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub stabilization_window: Duration,
    pub select: SelectPolicy,
    pub policies: Vec<Policy>,
}

impl Rules {
    /// The HPA's default scale-up: no stabilization, at most +4 pods or +100 % per 15 s,
    /// whichever allows more.
    pub fn hpa_scale_up() -> Self {
        Self {
            stabilization_window: Duration::ZERO,
            select: SelectPolicy::Max,
            policies: vec![
                Policy {
                    kind: PolicyKind::Pods,
                    value: 4,
                    period: Duration::from_secs(15),
                },
                Policy {
                    kind: PolicyKind::Percent,
                    value: 100,
                    period: Duration::from_secs(15),
                },
            ],
        }
    }

    /// The HPA's default scale-down: a 300 s stabilization window, at most −100 % per 15 s.
    pub fn hpa_scale_down() -> Self {
        Self {
            stabilization_window: Duration::from_secs(300),
            select: SelectPolicy::Max,
            policies: vec![Policy {
                kind: PolicyKind::Percent,
                value: 100,
                period: Duration::from_secs(15),
            }],
        }
    }

    pub(super) fn longest_period(&self) -> Duration {
        self.policies
            .iter()
            .map(|p| p.period)
            .max()
            .unwrap_or_default()
    }
}

/// One metric and its per-pod target, in the metric's unit: in-flight requests, requests/s,
/// seconds (LatencyP99) or percent of the CPU request (Cpu).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricTarget {
    pub kind: MetricType,
    pub target: f64,
}

/// An Autoscaler's spec, parsed and with the defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub metrics: Vec<MetricTarget>,
    pub scale_up: Rules,
    pub scale_down: Rules,
}

/// Why a spec cannot be used, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl Spec {
    /// Parses an Autoscaler's spec. An absent `behavior` (or direction) takes the HPA's default
    /// behavior for that direction; a direction that sets only some fields takes the HPA's
    /// defaults for the others (window: 0 s up, 300 s down; period 15 s; percent 100). One
    /// `maxChangePercent` becomes one Percent policy; with none, the HPA's default policies
    /// apply (up: +4 pods or +100 % per 15 s).
    pub fn from_crd(spec: &AutoscalerSpec) -> Result<Self, SpecError> {
        let err = |field: &str, message: String| SpecError {
            field: field.to_owned(),
            message,
        };
        if spec.min_replicas < 1 {
            return Err(err("spec.minReplicas", "must be at least 1".to_owned()));
        }
        if spec.max_replicas < spec.min_replicas {
            return Err(err(
                "spec.maxReplicas",
                "must not be less than minReplicas".to_owned(),
            ));
        }
        if spec.metrics.is_empty() {
            return Err(err(
                "spec.metrics",
                "at least one metric is needed".to_owned(),
            ));
        }
        let mut metrics: Vec<MetricTarget> = Vec::with_capacity(spec.metrics.len());
        for (i, metric) in spec.metrics.iter().enumerate() {
            let field = format!("spec.metrics[{i}].target");
            if metrics.iter().any(|m| m.kind == metric.kind) {
                return Err(err(
                    &format!("spec.metrics[{i}].type"),
                    format!("{:?} is listed twice", metric.kind),
                ));
            }
            let target = target_value(metric.kind, &metric.target).map_err(|m| err(&field, m))?;
            metrics.push(MetricTarget {
                kind: metric.kind,
                target,
            });
        }
        let behavior = spec.behavior.clone().unwrap_or_default();
        Ok(Self {
            min_replicas: spec.min_replicas,
            max_replicas: spec.max_replicas,
            metrics,
            scale_up: rules(behavior.scale_up.as_ref(), true)
                .map_err(|(f, m)| err(&format!("spec.behavior.scaleUp.{f}"), m))?,
            scale_down: rules(behavior.scale_down.as_ref(), false)
                .map_err(|(f, m)| err(&format!("spec.behavior.scaleDown.{f}"), m))?,
        })
    }

    /// The target of a metric type, if the spec scales on it.
    pub fn target(&self, kind: MetricType) -> Option<f64> {
        self.metrics
            .iter()
            .find(|m| m.kind == kind)
            .map(|m| m.target)
    }
}

fn target_value(
    kind: MetricType,
    target: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
) -> Result<f64, String> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let value = match (kind, target) {
        (MetricType::LatencyP99, IntOrString::String(text)) => text
            .parse::<weir_proxy_api::Duration>()
            .map_err(|e| format!("`{text}` is not a duration: {e}"))?
            .get()
            .as_secs_f64(),
        (MetricType::LatencyP99, IntOrString::Int(_)) => {
            return Err("a LatencyP99 target is a duration such as `250ms`".to_owned());
        }
        (_, IntOrString::Int(n)) => f64::from(*n),
        (_, IntOrString::String(text)) => text
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("`{text}` is not a number"))?,
    };
    if !(value.is_finite() && value > 0.0) {
        return Err("must be greater than 0".to_owned());
    }
    Ok(value)
}

fn rules(rules: Option<&ScalingRules>, up: bool) -> Result<Rules, (&'static str, String)> {
    let default = if up {
        Rules::hpa_scale_up()
    } else {
        Rules::hpa_scale_down()
    };
    let Some(rules) = rules else {
        return Ok(default);
    };
    let parse = |field: &'static str, text: &str| {
        text.parse::<weir_proxy_api::Duration>()
            .map(|d| d.get())
            .map_err(|e| (field, format!("`{text}` is not a duration: {e}")))
    };
    let stabilization_window = match &rules.stabilization_window {
        Some(text) => parse("stabilizationWindow", text)?,
        None => default.stabilization_window,
    };
    let policies = match (rules.max_change_percent, &rules.period) {
        (None, None) => default.policies,
        (percent, period) => {
            let percent = percent.unwrap_or(100);
            if !(0..=100).contains(&percent) {
                return Err(("maxChangePercent", "must be between 0 and 100".to_owned()));
            }
            let period = match period {
                Some(text) => parse("period", text)?,
                None => Duration::from_secs(15),
            };
            if period.is_zero() {
                return Err(("period", "must be longer than 0".to_owned()));
            }
            vec![Policy {
                kind: PolicyKind::Percent,
                value: percent,
                period,
            }]
        }
    };
    Ok(Rules {
        stabilization_window,
        select: SelectPolicy::Max,
        policies,
    })
}

// ---------------------------------------------------------------------------------- tuning

/// Panic mode's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PanicTuning {
    /// The short window (Knative: 10 % of the stable window).
    pub window: Duration,
    /// Panic when the short-window per-pod value is at least this many times the target.
    pub threshold: f64,
}

/// How the algorithm reads its metrics: what differs between Weir and a plain HPA.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    pub tolerance: f64,
    /// The window normal decisions average over; zero uses the latest evaluation only.
    pub stable_window: Duration,
    /// `None`: no panic mode (the plain HPA).
    pub panic: Option<PanicTuning>,
    /// A sidecar sample older than this is stale: its pod counts as missing.
    pub staleness: Duration,
    /// The same for CPU samples (metrics.k8s.io refreshes every 15–60 s).
    pub cpu_staleness: Duration,
    /// The HPA's `--horizontal-pod-autoscaler-cpu-initialization-period` (5 min).
    pub cpu_initialization_period: Duration,
    /// The HPA's `--horizontal-pod-autoscaler-initial-readiness-delay` (30 s).
    pub initial_readiness_delay: Duration,
    /// A scale-down is applied at most once per this interval. Weir evaluates every 2 s, so
    /// without it a scale-down window sliding past a fading surge would step the count down a
    /// pod at a time every 2 s; with the HPA's own pace (15 s) it steps down in a few larger
    /// moves. Scale-ups are never held. Zero: no such hold (the plain HPA, whose sync period
    /// already is its pace).
    pub scale_down_interval: Duration,
}

impl Tuning {
    /// Weir: evaluated every 2 s on sidecar samples scraped every 2 s; a 20 s stable window and
    /// a 6 s panic window at 2× the target (Knative uses 60 s and 6 s; our windows average the
    /// total load, which pod churn does not distort, and 20 s follows a ramp faster than the
    /// HPA while a ±20 % noise still averages out — see the simulation's figures), scale-downs
    /// at most every 15 s.
    pub fn weir() -> Self {
        Self {
            tolerance: TOLERANCE,
            stable_window: Duration::from_secs(20),
            panic: Some(PanicTuning {
                window: Duration::from_secs(6),
                threshold: 2.0,
            }),
            staleness: Duration::from_secs(10),
            cpu_staleness: Duration::from_secs(120),
            cpu_initialization_period: Duration::from_secs(300),
            initial_readiness_delay: Duration::from_secs(30),
            scale_down_interval: Duration::from_secs(15),
        }
    }

    /// The plain HPA: the latest per-pod samples (metrics.k8s.io's own window), no panic.
    pub fn hpa() -> Self {
        Self {
            tolerance: TOLERANCE,
            stable_window: Duration::ZERO,
            panic: None,
            staleness: Duration::from_secs(120),
            cpu_staleness: Duration::from_secs(120),
            cpu_initialization_period: Duration::from_secs(300),
            initial_readiness_delay: Duration::from_secs(30),
            scale_down_interval: Duration::ZERO,
        }
    }

    pub(super) fn staleness_of(&self, kind: MetricType) -> Duration {
        if kind == MetricType::Cpu {
            self.cpu_staleness
        } else {
            self.staleness
        }
    }
}
