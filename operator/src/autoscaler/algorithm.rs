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

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;
use weir_crds::{AutoscalerSpec, MetricType, ScalingRules};

/// The HPA's default tolerance: ratios within 10 % of 1 change nothing.
pub const TOLERANCE: f64 = 0.1;

/// Floating point slack for `ceil`: 4.000000001 pods are 4 pods.
const EPSILON: f64 = 1e-9;

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

    fn longest_period(&self) -> Duration {
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

    fn staleness_of(&self, kind: MetricType) -> Duration {
        if kind == MetricType::Cpu {
            self.cpu_staleness
        } else {
            self.staleness
        }
    }
}

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
            name: name.into(),
            phase: PodPhase::Running,
            ready: true,
            started_at: Some(since),
            ready_changed_at: Some(since),
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

/// One evaluation's view of one metric's load.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Aggregate {
    at: Duration,
    /// Total load (splitting metrics) or the mean (LatencyP99).
    load: f64,
}

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

/// `MetricType` has no `Ord`; this orders it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct MetricKey(u8);

impl From<MetricType> for MetricKey {
    fn from(kind: MetricType) -> Self {
        MetricKey(match kind {
            MetricType::Concurrency => 0,
            MetricType::RequestsPerSecond => 1,
            MetricType::LatencyP99 => 2,
            MetricType::Cpu => 3,
        })
    }
}

/// Whether a metric's load splits across pods (so its total is what the window keeps).
fn splits(kind: MetricType) -> bool {
    kind != MetricType::LatencyP99
}

/// Whether a metric can trigger panic mode.
fn panics(kind: MetricType) -> bool {
    matches!(
        kind,
        MetricType::Concurrency | MetricType::RequestsPerSecond
    )
}

/// How the pods fall for one metric at one evaluation.
#[derive(Debug, Default)]
struct Groups {
    ready_values: Vec<f64>,
    missing: usize,
    unready: usize,
}

/// The outcome of the per-metric formula.
#[derive(Debug)]
struct PerMetric {
    replicas: i32,
}

impl State {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the last evaluation left the autoscaler in panic mode.
    pub fn panicking(&self) -> bool {
        self.panic_trigger_at.is_some()
    }

    /// Records a scale change the caller made (after it succeeded), for the rate limits.
    pub fn record_scale(&mut self, now: Duration, from: i32, to: i32, spec: &Spec) {
        if to > from {
            self.scale_up_events.push_back((now, to - from));
        } else if to < from {
            self.scale_down_events.push_back((now, from - to));
            self.last_scale_down = Some(now);
        }
        let keep = spec
            .scale_up
            .longest_period()
            .max(spec.scale_down.longest_period());
        for events in [&mut self.scale_up_events, &mut self.scale_down_events] {
            while events
                .front()
                .is_some_and(|(at, _)| now.saturating_sub(*at) >= keep)
            {
                events.pop_front();
            }
        }
    }

    /// One evaluation: remembers `observation`'s samples and decides.
    pub fn evaluate(
        &mut self,
        spec: &Spec,
        tuning: &Tuning,
        observation: &Observation,
    ) -> Decision {
        let now = observation.now;
        for sample in &observation.samples {
            let key = (MetricKey::from(sample.metric), sample.pod.clone());
            let newer = self.latest.get(&key).is_none_or(|old| old.at <= sample.at);
            if newer {
                self.latest.insert(key, sample.clone());
            }
        }
        // Forget pods that are gone.
        self.latest
            .retain(|(_, pod), _| observation.pods.iter().any(|p| &p.name == pod));

        let current = observation.spec_replicas;
        let mut readings = Vec::with_capacity(spec.metrics.len());
        let mut panic_recommendation: Option<i32> = None;
        let mut panic_trigger = false;
        for metric in &spec.metrics {
            let groups = self.group(metric.kind, tuning, observation);
            let reading = self.read(metric, &groups, current, tuning, now);
            if let (Some(value), Some(panic)) = (reading.panic_value, tuning.panic) {
                if value >= panic.threshold * metric.target {
                    panic_trigger = true;
                }
                let replicas = replicas_for(value, metric.target, current, &groups, tuning);
                panic_recommendation = Some(
                    panic_recommendation.map_or(replicas.replicas, |r| r.max(replicas.replicas)),
                );
            }
            readings.push(reading);
        }
        self.prune(now, tuning, spec);

        let mut decision = Decision {
            now,
            current_replicas: current,
            desired_replicas: current,
            recommendation: None,
            metrics: readings,
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
        };

        // The HPA's top level: disabled, out of range, or computed.
        if current == 0 && spec.min_replicas != 0 {
            decision.desired_replicas = 0;
            decision.scaling_active = Verdict::new(
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero",
            );
            self.panic_trigger_at = None;
            return decision;
        }
        if current > spec.max_replicas {
            decision.desired_replicas = spec.max_replicas;
            decision.scaling_limited = Verdict::new(
                true,
                "TooManyReplicas",
                "the current replica count is more than maxReplicas",
            );
            return decision;
        }
        if current < spec.min_replicas {
            decision.desired_replicas = spec.min_replicas;
            decision.scaling_limited = Verdict::new(
                true,
                "TooFewReplicas",
                "the current replica count is less than minReplicas",
            );
            return decision;
        }

        let valid: Vec<&MetricReading> = decision
            .metrics
            .iter()
            .filter(|m| m.replicas.is_some())
            .collect();
        let invalid: Vec<&MetricReading> = decision
            .metrics
            .iter()
            .filter(|m| m.replicas.is_none())
            .collect();
        let best = valid.iter().max_by_key(|m| m.replicas);
        let recommendation = best.and_then(|m| m.replicas);
        if recommendation.is_none() || (!invalid.is_empty() && recommendation < Some(current)) {
            let names: Vec<String> = invalid.iter().map(|m| format!("{:?}", m.kind)).collect();
            decision.scaling_active = Verdict::new(
                false,
                "FailedGetMetrics",
                format!(
                    "no fresh metrics from any ready pod for {}{}",
                    names.join(", "),
                    if recommendation.is_some() {
                        ": not scaling down while a metric is unknown"
                    } else {
                        ""
                    }
                ),
            );
            // Panic can still scale up on the metrics it has.
            if !(panic_trigger || self.panicking()) {
                return decision;
            }
        }
        let recommendation = recommendation.unwrap_or(current);
        decision.recommendation = Some(recommendation);
        if decision.scaling_active.status
            && let Some(best) = best
        {
            decision.scaling_active.message = format!(
                "the replica count is computed from {:?} ({} per pod, target {})",
                best.kind,
                best.display_value().unwrap_or_default(),
                format_value(best.kind, best.target)
            );
        }

        // Panic mode.
        if panic_trigger {
            self.panic_trigger_at = Some(now);
        } else if let Some(since) = self.panic_trigger_at
            && now.saturating_sub(since) >= tuning.stable_window
        {
            self.panic_trigger_at = None;
            self.max_panic_replicas = 0;
        }
        // The HPA seeds the scale-down window with the current count on first sight.
        if self.recommendations.is_empty() && !spec.scale_down.stabilization_window.is_zero() {
            self.recommendations.push_back((now, current));
        }
        if self.panicking() {
            let wanted = recommendation
                .max(panic_recommendation.unwrap_or(0))
                .max(self.max_panic_replicas)
                .max(current);
            let desired = wanted.min(spec.max_replicas).max(spec.min_replicas);
            self.max_panic_replicas = desired;
            self.recommendations.push_back((now, recommendation));
            decision.panicking = true;
            decision.desired_replicas = desired;
            let load: Vec<String> = decision
                .metrics
                .iter()
                .filter_map(|m| {
                    m.panic_value
                        .map(|v| format!("{:?} {:.1}× target", m.kind, v / m.target))
                })
                .collect();
            decision.scaling_active = Verdict::new(
                true,
                "Panic",
                format!(
                    "short-window load {}: scaling up at once and not down until it has stayed below {}× the target for {}s",
                    load.join(", "),
                    tuning.panic.map(|p| p.threshold).unwrap_or(2.0),
                    tuning.stable_window.as_secs()
                ),
            );
            decision.able_to_scale = Verdict::new(
                true,
                "ReadyForNewScale",
                "panic mode: the scale-up stabilization window and rate limits are bypassed",
            );
            if wanted > spec.max_replicas {
                decision.scaling_limited = Verdict::new(
                    true,
                    "TooManyReplicas",
                    "the desired replica count is more than the maximum replica count",
                );
            }
            return decision;
        }

        // The HPA's behavior: stabilize, then rate-limit and clamp.
        let (stabilized, reason, message) = self.stabilize(spec, now, current, recommendation);
        decision.able_to_scale = Verdict::new(true, reason, message);
        let (desired, reason, message) = self.limit(spec, now, current, stabilized);
        decision.scaling_limited = Verdict::new(desired != stabilized, reason, message);
        decision.desired_replicas = desired;
        if desired < current
            && let Some(last) = self.last_scale_down
            && now.saturating_sub(last) < tuning.scale_down_interval
        {
            decision.desired_replicas = current;
            decision.able_to_scale = Verdict::new(
                true,
                "ScaleDownStabilized",
                format!(
                    "the last scale-down was less than {}s ago",
                    tuning.scale_down_interval.as_secs()
                ),
            );
        }
        decision
    }

    /// Groups the pods for one metric (see the module docs, step 2).
    fn group(&self, kind: MetricType, tuning: &Tuning, observation: &Observation) -> Groups {
        let now = observation.now;
        let key = MetricKey::from(kind);
        let staleness = tuning.staleness_of(kind);
        let mut groups = Groups::default();
        for pod in &observation.pods {
            match pod.phase {
                PodPhase::Terminating | PodPhase::Finished => continue,
                PodPhase::Pending => {
                    groups.unready += 1;
                    continue;
                }
                PodPhase::Running => {}
            }
            let Some(sample) = self
                .latest
                .get(&(key, pod.name.clone()))
                .filter(|s| now.saturating_sub(s.at) <= staleness)
            else {
                groups.missing += 1;
                continue;
            };
            let unready = if kind == MetricType::Cpu {
                match (pod.ready_changed_at, pod.started_at) {
                    (None, _) | (_, None) => true,
                    (Some(changed), Some(started)) => {
                        if started + tuning.cpu_initialization_period > now {
                            !pod.ready || sample.at < changed + sample.window
                        } else {
                            !pod.ready && started + tuning.initial_readiness_delay > changed
                        }
                    }
                }
            } else {
                !pod.ready
            };
            if unready {
                groups.unready += 1;
            } else {
                groups.ready_values.push(sample.value);
            }
        }
        groups
    }

    /// Records this evaluation's load for `metric` and reads the windows.
    fn read(
        &mut self,
        metric: &MetricTarget,
        groups: &Groups,
        current: i32,
        tuning: &Tuning,
        now: Duration,
    ) -> MetricReading {
        let key = MetricKey::from(metric.kind);
        let mut reading = MetricReading {
            kind: metric.kind,
            target: metric.target,
            value: None,
            panic_value: None,
            replicas: None,
            ready_pods: groups.ready_values.len(),
            missing_pods: groups.missing,
            unready_pods: groups.unready,
        };
        let history = self.aggregates.entry(key).or_default();
        if groups.ready_values.is_empty() {
            return reading;
        }
        let mean = groups.ready_values.iter().sum::<f64>() / groups.ready_values.len() as f64;
        // The pods taking traffic: ready ones and those whose metrics are missing.
        let serving = (groups.ready_values.len() + groups.missing) as f64;
        let load = if splits(metric.kind) {
            mean * serving
        } else {
            mean
        };
        history.push_back(Aggregate { at: now, load });
        let per_pod = |window: Duration| {
            let (sum, n) = history
                .iter()
                .filter(|a| a.at == now || now.saturating_sub(a.at) < window)
                .fold((0.0, 0usize), |(s, n), a| (s + a.load, n + 1));
            let mean = sum / n.max(1) as f64;
            if splits(metric.kind) {
                mean / serving
            } else {
                mean
            }
        };
        let value = per_pod(tuning.stable_window);
        reading.value = Some(value);
        if let Some(panic) = tuning.panic
            && panics(metric.kind)
        {
            reading.panic_value = Some(per_pod(panic.window));
        }
        reading.replicas =
            Some(replicas_for(value, metric.target, current, groups, tuning).replicas);
        reading
    }

    /// Drops history no window needs any more.
    fn prune(&mut self, now: Duration, tuning: &Tuning, spec: &Spec) {
        let keep = tuning
            .stable_window
            .max(tuning.panic.map(|p| p.window).unwrap_or_default());
        for history in self.aggregates.values_mut() {
            while history
                .front()
                .is_some_and(|a| a.at != now && now.saturating_sub(a.at) >= keep)
            {
                history.pop_front();
            }
        }
        let keep = spec
            .scale_up
            .stabilization_window
            .max(spec.scale_down.stabilization_window);
        while self
            .recommendations
            .front()
            .is_some_and(|(at, _)| now.saturating_sub(*at) >= keep)
        {
            self.recommendations.pop_front();
        }
    }

    /// `stabilizeRecommendationWithBehaviors`: records the recommendation, returns the
    /// stabilized one with the AbleToScale reason.
    fn stabilize(
        &mut self,
        spec: &Spec,
        now: Duration,
        current: i32,
        recommendation: i32,
    ) -> (i32, &'static str, String) {
        let mut up = recommendation;
        let mut down = recommendation;
        for (at, past) in &self.recommendations {
            let age = now.saturating_sub(*at);
            if age < spec.scale_up.stabilization_window {
                up = up.min(*past);
            }
            if age < spec.scale_down.stabilization_window {
                down = down.max(*past);
            }
        }
        let mut stabilized = current;
        if stabilized < up {
            stabilized = up;
        }
        if stabilized > down {
            stabilized = down;
        }
        self.recommendations.push_back((now, recommendation));
        if stabilized == recommendation {
            (
                stabilized,
                "ReadyForNewScale",
                "recommended size matches current size".to_owned(),
            )
        } else if stabilized > recommendation {
            (
                stabilized,
                "ScaleDownStabilized",
                "recent recommendations were higher than current one, applying the highest recent recommendation".to_owned(),
            )
        } else {
            (
                stabilized,
                "ScaleUpStabilized",
                "recent recommendations were lower than current one, applying the lowest recent recommendation".to_owned(),
            )
        }
    }

    /// `convertDesiredReplicasWithBehaviorRate`: the rate limits and the bounds.
    fn limit(
        &self,
        spec: &Spec,
        now: Duration,
        current: i32,
        desired: i32,
    ) -> (i32, &'static str, String) {
        if desired > current {
            let limit = self
                .scale_up_limit(&spec.scale_up, now, current)
                .max(current);
            let (allowed, reason, message) = if spec.max_replicas > limit {
                (
                    limit,
                    "ScaleUpLimit",
                    "the desired replica count is increasing faster than the maximum scale rate",
                )
            } else {
                (
                    spec.max_replicas,
                    "TooManyReplicas",
                    "the desired replica count is more than the maximum replica count",
                )
            };
            if desired > allowed {
                return (allowed, reason, message.to_owned());
            }
        } else if desired < current {
            let limit = self
                .scale_down_limit(&spec.scale_down, now, current)
                .min(current);
            let (allowed, reason, message) = if spec.min_replicas < limit {
                (
                    limit,
                    "ScaleDownLimit",
                    "the desired replica count is decreasing faster than the maximum scale rate",
                )
            } else {
                (
                    spec.min_replicas,
                    "TooFewReplicas",
                    "the desired replica count is less than the minimum replica count",
                )
            };
            if desired < allowed {
                return (allowed, reason, message.to_owned());
            }
        }
        (
            desired,
            "DesiredWithinRange",
            "the desired count is within the acceptable range".to_owned(),
        )
    }

    fn change_in_period(
        events: &VecDeque<(Duration, i32)>,
        now: Duration,
        period: Duration,
    ) -> i32 {
        events
            .iter()
            .filter(|(at, _)| now.saturating_sub(*at) < period)
            .map(|(_, change)| change)
            .sum()
    }

    /// `calculateScaleUpLimitWithScalingRules`.
    fn scale_up_limit(&self, rules: &Rules, now: Duration, current: i32) -> i32 {
        let (mut result, pick): (i64, fn(i64, i64) -> i64) = match rules.select {
            SelectPolicy::Disabled => return current,
            SelectPolicy::Min => (i64::MAX, i64::min),
            SelectPolicy::Max => (i64::MIN, i64::max),
        };
        for policy in &rules.policies {
            let added = Self::change_in_period(&self.scale_up_events, now, policy.period);
            let deleted = Self::change_in_period(&self.scale_down_events, now, policy.period);
            let start = i64::from(current - added + deleted);
            let proposed = match policy.kind {
                PolicyKind::Pods => start + i64::from(policy.value),
                PolicyKind::Percent => {
                    (start as f64 * (1.0 + f64::from(policy.value) / 100.0) - EPSILON).ceil() as i64
                }
            };
            result = pick(result, proposed);
        }
        if rules.policies.is_empty() {
            return current;
        }
        result.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
    }

    /// `calculateScaleDownLimitWithBehaviors`.
    fn scale_down_limit(&self, rules: &Rules, now: Duration, current: i32) -> i32 {
        // Scaling down, the policy allowing the most change gives the lowest count.
        let (mut result, pick): (i64, fn(i64, i64) -> i64) = match rules.select {
            SelectPolicy::Disabled => return current,
            SelectPolicy::Min => (i64::MIN, i64::max),
            SelectPolicy::Max => (i64::MAX, i64::min),
        };
        for policy in &rules.policies {
            let added = Self::change_in_period(&self.scale_up_events, now, policy.period);
            let deleted = Self::change_in_period(&self.scale_down_events, now, policy.period);
            let start = i64::from(current - added + deleted);
            let proposed = match policy.kind {
                PolicyKind::Pods => start - i64::from(policy.value),
                PolicyKind::Percent => (start as f64 * (1.0 - f64::from(policy.value) / 100.0)
                    + EPSILON)
                    .floor() as i64,
            };
            result = pick(result, proposed);
        }
        if rules.policies.is_empty() {
            return current;
        }
        result.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
    }
}

/// `ceil` that forgives floating point noise.
fn ceil(x: f64) -> i32 {
    let c = (x - EPSILON).ceil();
    c.clamp(0.0, f64::from(i32::MAX)) as i32
}

/// The HPA's `calcPlainMetricReplicas` with every ready pod at `value`.
fn replicas_for(
    value: f64,
    target: f64,
    current: i32,
    groups: &Groups,
    tuning: &Tuning,
) -> PerMetric {
    let ready = groups.ready_values.len();
    let ratio = value / target;
    let rebalance_unready = groups.unready > 0 && ratio > 1.0;
    if !rebalance_unready && groups.missing == 0 {
        if (1.0 - ratio).abs() <= tuning.tolerance + EPSILON {
            return PerMetric { replicas: current };
        }
        return PerMetric {
            replicas: ceil(ratio * ready as f64),
        };
    }
    let mut sum = value * ready as f64;
    let mut count = ready;
    if groups.missing > 0 {
        if ratio < 1.0 {
            // On a scale-down, missing pods count as using 100 % of the target.
            sum += target * groups.missing as f64;
        }
        // On a scale-up, as 0 %.
        count += groups.missing;
    }
    if rebalance_unready {
        // On a scale-up, unready pods count as 0 %.
        count += groups.unready;
    }
    let new_ratio = sum / count as f64 / target;
    if (1.0 - new_ratio).abs() <= tuning.tolerance + EPSILON
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return PerMetric { replicas: current };
    }
    let replicas = ceil(new_ratio * count as f64);
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return PerMetric { replicas: current };
    }
    PerMetric { replicas }
}

#[cfg(test)]
mod tests;
