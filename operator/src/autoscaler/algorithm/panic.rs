//! Panic mode (step 7 of the module docs, after Knative): a load metric's short-window value
//! at [`PanicTuning::threshold`](super::PanicTuning::threshold) × its target scales up at once,
//! past the scale-up stabilization window and rate limits, and holds the count until the
//! trigger has stayed off for a whole stable window.

use super::metrics::{Groups, replicas_for};
use super::{Decision, MetricReading, Spec, State, Tuning, Verdict};
use std::time::Duration;

/// What the short windows said at one evaluation, over every metric.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct PanicSignal {
    /// A metric reached the threshold.
    pub(super) trigger: bool,
    /// The highest short-window recommendation.
    recommendation: Option<i32>,
}

impl PanicSignal {
    /// Takes one metric's reading into account.
    pub(super) fn observe(
        &mut self,
        reading: &MetricReading,
        groups: &Groups,
        current: i32,
        tuning: &Tuning,
    ) {
        let (Some(value), Some(panic)) = (reading.panic_value, tuning.panic) else {
            return;
        };
        if value >= panic.threshold * reading.target {
            self.trigger = true;
        }
        let replicas = replicas_for(value, reading.target, current, groups, tuning);
        self.recommendation = Some(self.recommendation.map_or(replicas, |r| r.max(replicas)));
    }
}

impl State {
    /// Enters panic on a trigger; leaves it once the trigger has not held for a stable window.
    pub(super) fn update_panic(&mut self, trigger: bool, now: Duration, tuning: &Tuning) {
        if trigger {
            self.panic_trigger_at = Some(now);
        } else if let Some(since) = self.panic_trigger_at
            && now.saturating_sub(since) >= tuning.stable_window
        {
            self.panic_trigger_at = None;
            self.max_panic_replicas = 0;
        }
    }

    /// The panicking decision: the highest of the current count, the stable and short-window
    /// recommendations and this panic's highest count, within the bounds, at once. The stable
    /// recommendation still enters the scale-down window for when the panic ends.
    pub(super) fn decide_in_panic(
        &mut self,
        spec: &Spec,
        tuning: &Tuning,
        recommendation: i32,
        signal: PanicSignal,
        decision: &mut Decision,
    ) {
        let wanted = recommendation
            .max(signal.recommendation.unwrap_or(0))
            .max(self.max_panic_replicas)
            .max(decision.current_replicas);
        let desired = wanted.min(spec.max_replicas).max(spec.min_replicas);
        self.max_panic_replicas = desired;
        self.recommendations
            .push_back((decision.now, recommendation));
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
    }
}
