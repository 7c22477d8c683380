//! Metric evaluation (steps 1–4 of the module docs): the latest fresh sample per pod, the pods
//! grouped as the HPA groups them, the windows over the recorded load, and the HPA's per-metric
//! formula.

use super::{EPSILON, MetricReading, MetricTarget, Observation, PodPhase, State, Tuning};
use std::time::Duration;
use weir_crds::MetricType;

/// One evaluation's view of one metric's load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Aggregate {
    at: Duration,
    /// Total load (splitting metrics) or the mean (LatencyP99).
    load: f64,
}

/// `MetricType` has no `Ord`; this orders it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct MetricKey(u8);

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

/// Whether a metric can trigger panic mode (`panic`): latency and CPU do not grow linearly
/// with load.
fn panics(kind: MetricType) -> bool {
    matches!(
        kind,
        MetricType::Concurrency | MetricType::RequestsPerSecond
    )
}

/// How the pods fall for one metric at one evaluation.
#[derive(Debug, Default)]
pub(super) struct Groups {
    ready_values: Vec<f64>,
    missing: usize,
    unready: usize,
}

impl State {
    /// Keeps the newest sample per (metric, pod) and forgets the pods that are gone.
    pub(super) fn remember(&mut self, observation: &Observation) {
        for sample in &observation.samples {
            let key = (MetricKey::from(sample.metric), sample.pod.clone());
            let newer = self.latest.get(&key).is_none_or(|old| old.at <= sample.at);
            if newer {
                self.latest.insert(key, sample.clone());
            }
        }
        self.latest
            .retain(|(_, pod), _| observation.pods.iter().any(|p| &p.name == pod));
    }

    /// Groups the pods for one metric (see the module docs, step 2).
    pub(super) fn group(
        &self,
        kind: MetricType,
        tuning: &Tuning,
        observation: &Observation,
    ) -> Groups {
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
    pub(super) fn read(
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
        reading.replicas = Some(replicas_for(value, metric.target, current, groups, tuning));
        reading
    }

    /// Drops the load no window needs any more.
    pub(super) fn forget_old_loads(&mut self, now: Duration, tuning: &Tuning) {
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
    }
}

/// `ceil` that forgives floating point noise.
fn ceil(x: f64) -> i32 {
    let c = (x - EPSILON).ceil();
    c.clamp(0.0, f64::from(i32::MAX)) as i32
}

/// The HPA's `calcPlainMetricReplicas` with every ready pod at `value`.
pub(super) fn replicas_for(
    value: f64,
    target: f64,
    current: i32,
    groups: &Groups,
    tuning: &Tuning,
) -> i32 {
    let ready = groups.ready_values.len();
    let ratio = value / target;
    let rebalance_unready = groups.unready > 0 && ratio > 1.0;
    if !rebalance_unready && groups.missing == 0 {
        if (1.0 - ratio).abs() <= tuning.tolerance + EPSILON {
            return current;
        }
        return ceil(ratio * ready as f64);
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
        return current;
    }
    let replicas = ceil(new_ratio * count as f64);
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return current;
    }
    replicas
}
