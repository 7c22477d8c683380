//! The autoscaling decision: a pure, deterministic function of the metric history it has been
//! fed. No I/O, no clock: every call gets `now` (time since any fixed origin, e.g. the Unix epoch
//! or the start of a simulation), so the same calls always give the same decisions.
//!
//! # What one evaluation does
//!
//! 1. **Per pod, per metric: the latest sample**, if it is fresh (younger than the metric's
//!    staleness: [`Tuning::staleness`] for the sidecar metrics, [`Tuning::cpu_staleness`] for CPU).
//! 2. **Pods are grouped as the HPA groups them** (`groupPods` in Kubernetes'
//!    `replica_calculator.go`): terminating and failed pods are *ignored*; pending pods are
//!    *unready*; a running pod without a fresh sample is *missing*; a pod with a sample is
//!    *unready* when it is not Ready — for CPU with the HPA's exact rules (within the CPU
//!    initialization period a sample whose window began before the pod turned Ready is not
//!    trusted; later, only a pod that never became Ready is set aside) — and *ready* otherwise.
//!    The HPA applies the readiness rules to CPU only; Weir applies them to every metric, because
//!    a pod that is not Ready is not in the Service's endpoints and its sidecar reports no load:
//!    counting it would read as "idle" and shrink the deployment by accident.
//! 3. **Windows.** Each evaluation records, per metric, the load it saw: for the metrics that
//!    split across pods (Concurrency, RequestsPerSecond, Cpu) the *total*, estimated as the mean
//!    over ready pods × the pods taking traffic (ready + missing); for LatencyP99 the mean. The
//!    value used is the mean of those records over the window divided by the pods taking traffic
//!    *now* (like Knative's stable window): a pod added a moment ago lowers the per-pod value at
//!    once, so a scale-up does not overshoot while the window still remembers the surge.
//!    [`Tuning::stable_window`] drives normal decisions, [`Tuning::panic`]'s short window drives
//!    panic mode. A zero window uses the latest evaluation only (the plain HPA).
//! 4. **Per metric replicas, the HPA's formula** (`calcPlainMetricReplicas`): usage ratio =
//!    value / target; within the tolerance (10 %) nothing changes; otherwise
//!    `ceil(ratio × ready pods)`. With missing pods: on a scale-up they count as 0 % of the
//!    target, on a scale-down as 100 %; with unready pods on a scale-up they count as 0 %; if
//!    those fills flip the direction or land within the tolerance, nothing changes.
//! 5. **Across metrics the highest wins.** Metrics that could not be computed (no ready pod with
//!    a fresh sample) are skipped, but if any is missing the deployment is never scaled *down*
//!    (the HPA's rule), and with none left nothing changes (`ScalingActive=False`).
//! 6. **Bounds and behavior**, exactly as the HPA v2 (`normalizeDesiredReplicasWithBehaviors`):
//!    current replicas outside `[min, max]` are brought inside first; otherwise the recommendation
//!    is recorded and *stabilized* (scale up to the lowest recommendation of the scale-up window,
//!    scale down to the highest of the scale-down window), then *rate limited* by the policies
//!    (replicas at the start of each policy's period, from the scale events of that period; a
//!    Percent policy allows `ceil(start × (1 + p/100))` up and `floor(start × (1 − p/100))` down;
//!    a Pods policy `start ± n`; `Max` picks the policy that allows the most change), then clamped
//!    to `[min, max]`. The reasons are the HPA's: `ScaleUpStabilized`/`ScaleDownStabilized`
//!    (AbleToScale), `TooFewReplicas`, `TooManyReplicas`, `ScaleUpLimit`, `ScaleDownLimit`,
//!    `DesiredWithinRange` (ScalingLimited).
//! 7. **Panic mode** (Weir's addition, after Knative). When the short-window per-pod value of a
//!    load metric (Concurrency or RequestsPerSecond — latency and CPU do not grow linearly with
//!    load, so they never trigger it) reaches [`PanicTuning::threshold`] × its target, the
//!    autoscaler panics: the desired count becomes the highest of the current count, the stable
//!    recommendation, the short-window recommendation and the highest count of this panic,
//!    clamped to `[min, max]` and **applied at once: the scale-up stabilization window and the
//!    scale-up rate limits are bypassed**, as Knative does (a doubling load cannot wait for a
//!    doubling-per-15 s policy). While panicking the count never goes down. Panic ends once the
//!    trigger has not held for a whole stable window; from then on the normal path — and its
//!    scale-down stabilization window, which holds the *stable* recommendations made during the
//!    panic, not the panic counts — takes over.
//!
//! The caller actuates the decision and then reports it with [`State::record_scale`], so the
//! rate limits count only scale changes that happened.

//!
//! # Where each step lives
//!
//! - `spec`: the parsed spec and the [`Tuning`];
//! - `metrics`: metric evaluation — the latest samples, the pod groups, the windows and the
//!   HPA's per-metric formula (steps 1–4);
//! - `behavior`: the behavior policies — stabilization windows, rate policies, the scale-down
//!   pace (step 6) and the scale events they count;
//! - `panic`: panic mode (step 7);
//! - this module: the inputs, the [`Decision`] and [`State::evaluate`], which composes the steps.

mod behavior;
mod metrics;
mod panic;
mod spec;

pub use spec::{
    MetricTarget, PanicTuning, Policy, PolicyKind, Rules, SelectPolicy, Spec, SpecError, Tuning,
};

use metrics::{Aggregate, MetricKey};
use panic::PanicSignal;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;
use weir_crds::MetricType;

/// The HPA's default tolerance: ratios within 10 % of 1 change nothing.
pub const TOLERANCE: f64 = 0.1;

/// Floating point slack for `ceil`: 4.000000001 pods are 4 pods.
const EPSILON: f64 = 1e-9;

// ----------------------------------------------------------------------------------- input

/// A pod's lifecycle phase, as far as the algorithm cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    /// `metadata.deletionTimestamp` is set.
    Terminating,
    /// Failed or Succeeded: it will not serve again.
    Finished,
}

/// A pod of the scaled workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Pod {
    pub name: String,
    pub phase: PodPhase,
    /// Its `Ready` condition is True.
    pub ready: bool,
    /// `status.startTime`.
    pub started_at: Option<Duration>,
    /// The `Ready` condition's `lastTransitionTime`; `None` when the pod has no Ready condition.
    pub ready_changed_at: Option<Duration>,
}

impl Pod {
    /// A running pod that has been Ready since `since`.
    pub fn ready(name: impl Into<String>, since: Duration) -> Self {
        Self {
            ready: true,
            ..Self::starting(name, since)
        }
    }

    /// A running pod that started at `since` and is not Ready yet.
    pub fn starting(name: impl Into<String>, since: Duration) -> Self {
        Self {
            name: name.into(),
            phase: PodPhase::Running,
            ready: false,
            started_at: Some(since),
            ready_changed_at: Some(since),
        }
    }
}

/// One measurement of one metric on one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub pod: String,
    pub metric: MetricType,
    /// When it was measured (the end of its window).
    pub at: Duration,
    /// What it averages over (metrics.k8s.io reports one; a gauge read is instantaneous: 0).
    pub window: Duration,
    /// In the metric's unit: in-flight requests, requests/s, seconds, percent of the request.
    pub value: f64,
}

/// What one evaluation gets.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub now: Duration,
    /// The scale subresource's `spec.replicas`.
    pub spec_replicas: i32,
    /// Every pod the scale's selector selects.
    pub pods: Vec<Pod>,
    /// Samples taken since the last evaluation (older ones are remembered by the state).
    pub samples: Vec<Sample>,
}

// ---------------------------------------------------------------------------------- output

/// One condition's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Verdict {
    fn new(status: bool, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
        }
    }
}

/// What one metric said.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricReading {
    pub kind: MetricType,
    pub target: f64,
    /// The stable-window per-pod value; `None` when no ready pod had a fresh sample.
    pub value: Option<f64>,
    /// The panic-window per-pod value (load metrics with panic mode only).
    pub panic_value: Option<f64>,
    /// The replicas this metric alone asks for.
    pub replicas: Option<i32>,
    pub ready_pods: usize,
    pub missing_pods: usize,
    pub unready_pods: usize,
}

impl MetricReading {
    /// The value as status shows it: `12.5`, `103.2`, `231ms`, `64%`.
    pub fn display_value(&self) -> Option<String> {
        self.value.map(|v| format_value(self.kind, v))
    }
}

/// A metric value in its unit, for people.
pub fn format_value(kind: MetricType, value: f64) -> String {
    match kind {
        MetricType::LatencyP99 => format!("{:.0}ms", value * 1000.0),
        MetricType::Cpu => format!("{value:.0}%"),
        MetricType::Concurrency | MetricType::RequestsPerSecond => format!("{value:.1}"),
    }
}

/// What one evaluation decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub now: Duration,
    /// The scale's `spec.replicas` the decision started from.
    pub current_replicas: i32,
    /// What the scale's `spec.replicas` should be.
    pub desired_replicas: i32,
    /// The highest per-metric recommendation, before stabilization and limits.
    pub recommendation: Option<i32>,
    pub metrics: Vec<MetricReading>,
    pub able_to_scale: Verdict,
    pub scaling_active: Verdict,
    pub scaling_limited: Verdict,
    pub panicking: bool,
}

impl Decision {
    /// Whether the scale should be written.
    pub fn rescale(&self) -> bool {
        self.desired_replicas != self.current_replicas
    }

    /// A short reason for a scale Event: which metric drove it.
    pub fn summary(&self) -> String {
        let metrics: Vec<String> = self
            .metrics
            .iter()
            .filter_map(|m| {
                m.display_value().map(|v| {
                    format!(
                        "{:?} {v} (target {})",
                        m.kind,
                        format_value(m.kind, m.target)
                    )
                })
            })
            .collect();
        let mut text = format!(
            "{} → {} replicas",
            self.current_replicas, self.desired_replicas
        );
        if self.panicking {
            text.push_str(", panic mode");
        }
        if !metrics.is_empty() {
            text.push_str("; ");
            text.push_str(&metrics.join(", "));
        }
        text
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

// ----------------------------------------------------------------------------------- state

/// Everything the algorithm remembers between evaluations of one Autoscaler.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// The latest sample per (metric, pod).
    latest: BTreeMap<(MetricKey, String), Sample>,
    /// Per metric, the load seen by recent evaluations (for the windows).
    aggregates: BTreeMap<MetricKey, VecDeque<Aggregate>>,
    /// Unstabilized recommendations, for the stabilization windows.
    recommendations: VecDeque<(Duration, i32)>,
    scale_up_events: VecDeque<(Duration, i32)>,
    scale_down_events: VecDeque<(Duration, i32)>,
    /// When the panic trigger last held; `None` when not panicking.
    panic_trigger_at: Option<Duration>,
    /// The highest count of the current panic.
    max_panic_replicas: i32,
    /// When the count last went down.
    last_scale_down: Option<Duration>,
}

impl State {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the last evaluation left the autoscaler in panic mode.
    pub fn panicking(&self) -> bool {
        self.panic_trigger_at.is_some()
    }

    /// One evaluation: remembers `observation`'s samples and decides (the steps of the module
    /// docs, in order).
    pub fn evaluate(
        &mut self,
        spec: &Spec,
        tuning: &Tuning,
        observation: &Observation,
    ) -> Decision {
        let now = observation.now;
        let current = observation.spec_replicas;
        self.remember(observation);
        let (readings, panic) = self.read_metrics(spec, tuning, observation);
        self.forget_old_loads(now, tuning);
        self.forget_old_recommendations(now, spec);

        let mut decision = Decision::unchanged(now, current, readings);
        if self.bring_within_bounds(spec, &mut decision) {
            return decision;
        }
        let Some(recommendation) = self.recommend(&mut decision, panic.trigger) else {
            return decision;
        };
        self.update_panic(panic.trigger, now, tuning);
        self.seed_scale_down_window(spec, now, current);
        if self.panicking() {
            self.decide_in_panic(spec, tuning, recommendation, panic, &mut decision);
        } else {
            self.apply_behavior(spec, tuning, recommendation, &mut decision);
        }
        decision
    }

    /// Every metric of the spec read over its windows (steps 1–4), and what the panic windows
    /// said.
    fn read_metrics(
        &mut self,
        spec: &Spec,
        tuning: &Tuning,
        observation: &Observation,
    ) -> (Vec<MetricReading>, PanicSignal) {
        let current = observation.spec_replicas;
        let mut readings = Vec::with_capacity(spec.metrics.len());
        let mut panic = PanicSignal::default();
        for metric in &spec.metrics {
            let groups = self.group(metric.kind, tuning, observation);
            let reading = self.read(metric, &groups, current, tuning, observation.now);
            panic.observe(&reading, &groups, current, tuning);
            readings.push(reading);
        }
        (readings, panic)
    }

    /// The HPA's top level: a target scaled to zero is left alone, a count outside the bounds
    /// is brought inside before anything else. Returns whether the decision is made.
    fn bring_within_bounds(&mut self, spec: &Spec, decision: &mut Decision) -> bool {
        let current = decision.current_replicas;
        if current == 0 && spec.min_replicas != 0 {
            decision.desired_replicas = 0;
            decision.scaling_active = Verdict::new(
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero",
            );
            self.panic_trigger_at = None;
            return true;
        }
        let (desired, reason, message) = if current > spec.max_replicas {
            (
                spec.max_replicas,
                "TooManyReplicas",
                "the current replica count is more than maxReplicas",
            )
        } else if current < spec.min_replicas {
            (
                spec.min_replicas,
                "TooFewReplicas",
                "the current replica count is less than minReplicas",
            )
        } else {
            return false;
        };
        decision.desired_replicas = desired;
        decision.scaling_limited = Verdict::new(true, reason, message);
        true
    }

    /// Across metrics the highest wins (step 5). `None` when nothing may change: no metric
    /// could be computed, or one is unknown and the others say down — unless panic mode can
    /// still scale up on the metrics it has.
    fn recommend(&self, decision: &mut Decision, panic_trigger: bool) -> Option<i32> {
        let current = decision.current_replicas;
        let best = decision
            .metrics
            .iter()
            .filter(|m| m.replicas.is_some())
            .max_by_key(|m| m.replicas);
        let recommendation = best.and_then(|m| m.replicas);
        let unknown: Vec<String> = decision
            .metrics
            .iter()
            .filter(|m| m.replicas.is_none())
            .map(|m| format!("{:?}", m.kind))
            .collect();
        if recommendation.is_none() || (!unknown.is_empty() && recommendation < Some(current)) {
            decision.scaling_active = Verdict::new(
                false,
                "FailedGetMetrics",
                format!(
                    "no fresh metrics from any ready pod for {}{}",
                    unknown.join(", "),
                    if recommendation.is_some() {
                        ": not scaling down while a metric is unknown"
                    } else {
                        ""
                    }
                ),
            );
            if !(panic_trigger || self.panicking()) {
                return None;
            }
        } else if let Some(best) = best {
            decision.scaling_active.message = format!(
                "the replica count is computed from {:?} ({} per pod, target {})",
                best.kind,
                best.display_value().unwrap_or_default(),
                format_value(best.kind, best.target)
            );
        }
        let recommendation = recommendation.unwrap_or(current);
        decision.recommendation = Some(recommendation);
        Some(recommendation)
    }
}

impl Decision {
    /// The decision before any step: nothing changes, every condition at its calm default.
    fn unchanged(now: Duration, current: i32, metrics: Vec<MetricReading>) -> Self {
        Self {
            now,
            current_replicas: current,
            desired_replicas: current,
            recommendation: None,
            metrics,
            able_to_scale: Verdict::new(
                true,
                "ReadyForNewScale",
                "recommended size matches current size",
            ),
            scaling_active: Verdict::new(true, "ValidMetricFound", ""),
            scaling_limited: Verdict::new(
                false,
                "DesiredWithinRange",
                "the desired count is within the acceptable range",
            ),
            panicking: false,
        }
    }
}

#[cfg(test)]
mod tests;
