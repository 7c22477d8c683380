//! An Autoscaler's status from one evaluation's outcome — shared by the Kubernetes controller
//! (which writes it to the status subresource) and local mode (which serves it on the admin
//! listener's `/autoscalers`), so the two report the same conditions, reasons and values.

use super::algorithm::{Decision, Verdict};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use weir_crds::{AutoscalerStatus, MetricValue};

/// Condition types.
pub const ACCEPTED: &str = "Accepted";
pub const ABLE_TO_SCALE: &str = "AbleToScale";
pub const SCALING_ACTIVE: &str = "ScalingActive";
pub const SCALING_LIMITED: &str = "ScalingLimited";

/// What one evaluation of an Autoscaler concluded.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The `Accepted` condition: the spec is valid and the target exists.
    pub accepted: Verdict,
    /// The algorithm's decision; `None` when it did not run (the previous status's
    /// `ScalingActive`, `ScalingLimited`, `desiredReplicas` and `currentMetrics` then stay).
    pub decision: Option<Decision>,
    /// An `AbleToScale` that overrides the decision's (the target could not be read or written).
    pub able_to_scale: Option<Verdict>,
    /// The replicas the workload has now (the previous status's value stays when `None`).
    pub current_replicas: Option<i32>,
}

impl Outcome {
    /// Accepted, nothing decided yet.
    pub fn accepted() -> Self {
        Self {
            accepted: Verdict {
                status: true,
                reason: "Accepted",
                message: "The spec is valid and its target exists".to_owned(),
            },
            decision: None,
            able_to_scale: None,
            current_replicas: None,
        }
    }

    /// Not accepted, for `reason`.
    pub fn refused(reason: &'static str, message: String) -> Self {
        Self {
            accepted: Verdict {
                status: false,
                reason,
                message,
            },
            ..Self::accepted()
        }
    }
}

/// The status `outcome` calls for: conditions with transition times kept from `previous` when
/// their status did not change, values the outcome lacks kept from `previous`.
pub fn status(
    generation: Option<i64>,
    outcome: &Outcome,
    last_scale_time: Option<Time>,
    previous: Option<&AutoscalerStatus>,
    now: &Time,
) -> AutoscalerStatus {
    let before: &[Condition] = previous
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let condition = |type_: &str, verdict: &Verdict| {
        condition(
            before,
            type_,
            if verdict.status { "True" } else { "False" },
            verdict.reason,
            truncate(&verdict.message, 1000),
            generation,
            now,
        )
    };
    let mut conditions = vec![condition(ACCEPTED, &outcome.accepted)];
    let decision = outcome.decision.as_ref();
    let able = outcome
        .able_to_scale
        .clone()
        .or_else(|| decision.map(|d| d.able_to_scale.clone()));
    if let Some(able) = &able {
        conditions.push(condition(ABLE_TO_SCALE, able));
    }
    if let Some(decision) = decision {
        conditions.push(condition(SCALING_ACTIVE, &decision.scaling_active));
        conditions.push(condition(SCALING_LIMITED, &decision.scaling_limited));
    } else if let Some(previous) = previous {
        // Keep what the last evaluation said about metrics and limits.
        conditions.extend(
            previous
                .conditions
                .iter()
                .filter(|c| c.type_ == SCALING_ACTIVE || c.type_ == SCALING_LIMITED)
                .cloned(),
        );
    }
    AutoscalerStatus {
        observed_generation: generation,
        conditions,
        current_replicas: outcome
            .current_replicas
            .or_else(|| previous.and_then(|p| p.current_replicas)),
        desired_replicas: decision
            .map(|d| d.desired_replicas)
            .or_else(|| previous.and_then(|p| p.desired_replicas)),
        current_metrics: decision
            .map(|d| {
                d.metrics
                    .iter()
                    .filter_map(|m| {
                        m.display_value().map(|current| MetricValue {
                            kind: m.kind,
                            current,
                        })
                    })
                    .collect()
            })
            .unwrap_or_else(|| {
                previous
                    .map(|p| p.current_metrics.clone())
                    .unwrap_or_default()
            }),
        last_scale_time,
    }
}

// The condition helpers below are shared with the status writer of the other resources
// (`kubernetes::status`), which builds on this module: the helpers live here, below both.

/// A condition of `type_`; when `previous` holds it with the same status, its
/// `lastTransitionTime` stays (a condition's time says when its status last changed).
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Now, to the second: what the API server keeps of a `Time`.
pub fn now_time() -> Time {
    let now = Timestamp::now();
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// `text` cut to at most `max` bytes (on a character boundary), with `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// One Autoscaler as the admin listener's `/autoscalers` shows it: which it is, what it scales,
/// and its status (the same fields a cluster's `status` holds, flattened).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerView {
    pub namespace: String,
    pub name: String,
    /// `spec.targetRef.name`: the Deployment, or in local mode the LocalService.
    pub target: String,
    #[serde(flatten)]
    pub status: AutoscalerStatus,
}

/// The body of `GET /autoscalers`: every Autoscaler this operator evaluates, by namespace and
/// name.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AutoscalerList {
    pub autoscalers: Vec<AutoscalerView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(status: bool, reason: &'static str) -> Verdict {
        Verdict {
            status,
            reason,
            message: String::new(),
        }
    }

    #[test]
    fn transition_times_survive_unchanged_statuses() {
        let t0 = Time(Timestamp::from_second(1_000).unwrap());
        let t1 = Time(Timestamp::from_second(2_000).unwrap());
        let first = status(None, &Outcome::accepted(), None, None, &t0);
        let mut refused = Outcome::refused("TargetNotFound", "gone".into());
        refused.able_to_scale = Some(verdict(false, "TargetNotFound"));
        let second = status(None, &refused, None, Some(&first), &t1);
        assert_eq!(second.conditions[0].last_transition_time, t1);
        assert_eq!(second.conditions[0].reason, "TargetNotFound");
        let third = status(None, &refused, None, Some(&second), &t1);
        assert_eq!(third, second);
        let back = status(None, &Outcome::accepted(), None, Some(&third), &t0);
        assert_eq!(back.conditions[0].status, "True");
        assert_eq!(back.conditions[0].last_transition_time, t0);
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("ééé", 3), "é…");
    }

    #[test]
    fn the_view_flattens_the_status() {
        let view = AutoscalerView {
            namespace: "shop".into(),
            name: "orders".into(),
            target: "orders".into(),
            status: AutoscalerStatus {
                current_replicas: Some(1),
                desired_replicas: Some(3),
                ..AutoscalerStatus::default()
            },
        };
        let json = serde_json::to_value(AutoscalerList {
            autoscalers: vec![view],
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"autoscalers": [{"namespace": "shop", "name": "orders",
                "target": "orders", "currentReplicas": 1, "desiredReplicas": 3}]})
        );
    }
}
