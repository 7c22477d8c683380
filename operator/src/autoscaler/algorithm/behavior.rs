//! The behavior policies (step 6 of the module docs), as the HPA v2's
//! `normalizeDesiredReplicasWithBehaviors`: the stabilization windows over past
//! recommendations, the rate policies over the scale events of their periods, the bounds — and
//! Weir's scale-down pace ([`Tuning::scale_down_interval`]).

use super::{Decision, EPSILON, PolicyKind, Rules, SelectPolicy, Spec, State, Tuning, Verdict};
use std::collections::VecDeque;
use std::time::Duration;

impl State {
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

    /// The HPA seeds the scale-down window with the current count on first sight.
    pub(super) fn seed_scale_down_window(&mut self, spec: &Spec, now: Duration, current: i32) {
        if self.recommendations.is_empty() && !spec.scale_down.stabilization_window.is_zero() {
            self.recommendations.push_back((now, current));
        }
    }

    /// Drops the recommendations no stabilization window needs any more.
    pub(super) fn forget_old_recommendations(&mut self, now: Duration, spec: &Spec) {
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

    /// Stabilizes `recommendation`, rate-limits and clamps it, and holds a scale-down that
    /// comes too soon after the last one.
    pub(super) fn apply_behavior(
        &mut self,
        spec: &Spec,
        tuning: &Tuning,
        recommendation: i32,
        decision: &mut Decision,
    ) {
        let (now, current) = (decision.now, decision.current_replicas);
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
        let stabilized = current.max(up).min(down);
        self.recommendations.push_back((now, recommendation));
        let (reason, message) = if stabilized == recommendation {
            ("ReadyForNewScale", "recommended size matches current size")
        } else if stabilized > recommendation {
            (
                "ScaleDownStabilized",
                "recent recommendations were higher than current one, applying the highest recent recommendation",
            )
        } else {
            (
                "ScaleUpStabilized",
                "recent recommendations were lower than current one, applying the lowest recent recommendation",
            )
        };
        (stabilized, reason, message.to_owned())
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
                .rate_limit(&spec.scale_up, true, now, current)
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
                .rate_limit(&spec.scale_down, false, now, current)
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

    /// `calculateScaleUpLimitWithScalingRules` (`up`) and
    /// `calculateScaleDownLimitWithBehaviors`: the count the policies allow, each from the
    /// replicas at the start of its period. `Max` picks the policy allowing the most change:
    /// the highest count up, the lowest down.
    fn rate_limit(&self, rules: &Rules, up: bool, now: Duration, current: i32) -> i32 {
        let most_change = match rules.select {
            SelectPolicy::Disabled => return current,
            SelectPolicy::Max => true,
            SelectPolicy::Min => false,
        };
        let pick: fn(i64, i64) -> i64 = if most_change == up {
            i64::max
        } else {
            i64::min
        };
        let (sign, factor) = if up { (1, 1.0) } else { (-1, -1.0) };
        rules
            .policies
            .iter()
            .map(|policy| {
                let added = change_in_period(&self.scale_up_events, now, policy.period);
                let deleted = change_in_period(&self.scale_down_events, now, policy.period);
                let start = i64::from(current - added + deleted);
                match policy.kind {
                    PolicyKind::Pods => start + sign * i64::from(policy.value),
                    PolicyKind::Percent => {
                        let exact = start as f64 * (1.0 + factor * f64::from(policy.value) / 100.0);
                        if up {
                            (exact - EPSILON).ceil() as i64
                        } else {
                            (exact + EPSILON).floor() as i64
                        }
                    }
                }
            })
            .reduce(pick)
            .map_or(current, |allowed| {
                allowed.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
            })
    }
}

/// The replicas added (or removed) by the events of the last `period`.
fn change_in_period(events: &VecDeque<(Duration, i32)>, now: Duration, period: Duration) -> i32 {
    events
        .iter()
        .filter(|(at, _)| now.saturating_sub(*at) < period)
        .map(|(_, change)| change)
        .sum()
}
