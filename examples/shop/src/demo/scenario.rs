//! The scripted scenarios: what each changes and when (fault knobs, canary weights, a burst),
//! the phases its figures are reported in, and the checks on those figures.
//!
//! Step times are fractions of the run's duration, so a short CI run and a long demo tell the
//! same story. A phase is measured from `settle` after its start to the next phase, so that
//! what is measured is the state the change led to rather than the change itself.

use super::figures::MeshFigures;
use super::scaling::ScalingFigures;
use super::topology::{self, INVENTORY, Instance, SHIPPING};
use super::traffic::ClientFigures;
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Payments canary 90/10 → 50/50 → 0/100 by editing the TrafficSplit's weights.
    Canary,
    /// Payments v2 (the 10 % canary) answers 30 % of calls with 500: outlier detection ejects it.
    Outlier,
    /// Inventory hangs: timeouts and circuit breakers keep the gateway answering.
    Hang,
    /// A burst of orders from one customer above the gateway's rate limit.
    Burst,
    /// Shipping fails every call: sagas compensate (refund, release, cancel).
    Compensate,
    /// The traffic ramps up from 5 to 40 orders/s, holds, and falls back: the Autoscaler of
    /// `mesh/autoscaler.yaml` adds orders instances and later removes them, and no order fails
    /// on the way.
    Autoscale,
    /// Payments v2 rolled out by canary analysis (steps 20/50/100 %, judged every 3 s from the
    /// orders sidecar's telemetry): it reaches Succeeded.
    Rollout,
    /// The same rollout with v2's fault knob failing every call after the first step started:
    /// the analysis rolls v2 back to weight 0 and orders keep succeeding.
    RolloutFailing,
}

/// The analysis the rollout scenarios add to the payments TrafficSplit. One failed canary
/// answer in a step is enough to judge it: outlier detection ejects a failing v2 after two
/// 5xx in a row, so the callers see only a few of its failures before it stops getting calls.
pub const ROLLOUT_ANALYSIS: &str = "  analysis:\n    canary: v2\n    steps: [20, 50, 100]\n    \
                                    interval: 3s\n    minRequests: 1\n    successRate: 0.99\n";

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A new phase, measured from `settle` after now.
    Phase {
        name: &'static str,
        settle: Duration,
    },
    /// Edit the payments TrafficSplit's weights in the run's mesh folder.
    Weights { v1: u32, v2: u32 },
    /// `PUT /faults` on an app.
    Faults {
        instance: Instance,
        error_rate: f64,
        hang: bool,
    },
    /// `count` orders at once with one customer's token.
    Burst { count: usize, token: &'static str },
    /// The traffic generator's rate from now on, in orders per second.
    Rate(f64),
    /// Add [`ROLLOUT_ANALYSIS`] to the payments TrafficSplit in the run's mesh folder.
    Analysis,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub at: Duration,
    pub action: Action,
}

/// Orders one customer sends at once in the burst scenario: far above the gateway's rate limit
/// (mesh/policies.yaml: per customer, a bucket of 10 refilled at 50/s).
pub const BURST_ORDERS: usize = 150;

/// Orders per second of the autoscale scenario when quiet and at its peak: with the Autoscaler
/// of `mesh/autoscaler.yaml` (12 requests/s per orders instance) that is one instance and four.
pub const AUTOSCALE_LOW: f64 = 5.0;
pub const AUTOSCALE_PEAK: f64 = 40.0;

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Self::Canary => "canary",
            Self::Outlier => "outlier",
            Self::Hang => "hang",
            Self::Burst => "burst",
            Self::Compensate => "compensate",
            Self::Autoscale => "autoscale",
            Self::Rollout => "rollout",
            Self::RolloutFailing => "rollout-failing",
        }
    }

    pub fn default_duration(self) -> Duration {
        Duration::from_secs(match self {
            Self::Canary => 45,
            Self::Outlier => 40,
            Self::Hang => 30,
            Self::Burst => 20,
            Self::Compensate => 30,
            Self::Autoscale => 120,
            Self::Rollout | Self::RolloutFailing => 30,
        })
    }

    /// Orders per second: the canary needs many calls per phase for its split to be measured
    /// within a few percent (binomial noise shrinks with the square root of the count), and the
    /// outlier scenario enough calls to the 10 % canary for its failures to show soon.
    pub fn default_rate(self) -> f64 {
        match self {
            Self::Canary => 50.0,
            Self::Outlier => 40.0,
            Self::Autoscale => AUTOSCALE_LOW,
            Self::Rollout | Self::RolloutFailing => 30.0,
            _ => 20.0,
        }
    }

    /// The script for a run of `total`.
    pub fn steps(self, total: Duration) -> Vec<Step> {
        let at =
            |fraction: f64| Duration::from_secs((total.as_secs_f64() * fraction).round() as u64);
        let phase = |name, settle_secs| Action::Phase {
            name,
            settle: Duration::from_secs(settle_secs),
        };
        let step = |t: Duration, action: Action| Step { at: t, action };
        let faults = |instance, error_rate, hang| Action::Faults {
            instance,
            error_rate,
            hang,
        };
        // Normal traffic, then `instance` failing `error_rate` of its calls (or hanging) from
        // `from` to `to` (fractions of the run), then healthy again.
        let broken = |(instance, error_rate, hang): (Instance, f64, bool), (from, to), label| {
            vec![
                step(at(0.0), phase("normal", 2)),
                step(at(from), faults(instance, error_rate, hang)),
                step(at(from), phase(label, 0)),
                step(at(to), faults(instance, 0.0, false)),
                step(at(to), phase("recovered", 0)),
            ]
        };
        match self {
            Self::Canary => vec![
                step(at(0.0), phase("90/10", 2)),
                step(at(1.0 / 3.0), Action::Weights { v1: 50, v2: 50 }),
                step(at(1.0 / 3.0), phase("50/50", 1)),
                step(at(2.0 / 3.0), Action::Weights { v1: 0, v2: 100 }),
                step(at(2.0 / 3.0), phase("0/100", 1)),
            ],
            Self::Outlier => vec![
                step(at(0.0), phase("healthy", 2)),
                step(at(0.2), faults(topology::PAYMENTS_V2, 0.3, false)),
                step(at(0.2), phase("v2 failing 30 %", 0)),
            ],
            Self::Hang => broken((INVENTORY, 0.0, true), (0.27, 0.73), "inventory hanging"),
            Self::Burst => vec![
                step(at(0.0), phase("steady", 2)),
                step(
                    at(0.3),
                    Action::Burst {
                        count: BURST_ORDERS,
                        token: "bob-token",
                    },
                ),
                step(at(0.3), phase("burst", 0)),
                step(at(0.3) + Duration::from_secs(3), phase("after", 0)),
            ],
            Self::Compensate => broken((SHIPPING, 1.0, false), (0.25, 0.67), "shipping failing"),
            Self::Rollout => vec![
                step(at(0.0), phase("rolling out", 1)),
                step(at(0.0), Action::Analysis),
            ],
            Self::RolloutFailing => vec![
                step(at(0.0), phase("rolling out", 1)),
                step(at(0.0), Action::Analysis),
                // Once the orders sidecar calls payments and the first step runs.
                step(at(0.15), faults(topology::PAYMENTS_V2, 1.0, false)),
                step(at(0.15), phase("v2 failing", 0)),
            ],
            Self::Autoscale => {
                // Quiet for the first 10 %, a linear ramp in steps of one second up to 35 %,
                // the peak until 55 %, then quiet again while the instances go away.
                let mut steps = vec![step(at(0.0), phase("quiet", 2))];
                steps.push(step(at(0.1), phase("ramp", 0)));
                let (from, to) = (
                    at(0.1).as_secs(),
                    at(0.35).as_secs().max(at(0.1).as_secs() + 1),
                );
                for second in from..to {
                    let progress = (second - from + 1) as f64 / (to - from) as f64;
                    let rate = AUTOSCALE_LOW + (AUTOSCALE_PEAK - AUTOSCALE_LOW) * progress;
                    steps.push(step(Duration::from_secs(second), Action::Rate(rate)));
                }
                steps.push(step(at(0.35), phase("peak", 0)));
                steps.push(step(at(0.55), Action::Rate(AUTOSCALE_LOW)));
                steps.push(step(at(0.55), phase("quiet again", 0)));
                steps
            }
        }
    }
}

/// One check of a scenario, as the report shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub name: String,
    pub passed: bool,
    /// The figures the verdict rests on.
    pub detail: String,
}

fn check(name: impl Into<String>, passed: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        passed,
        detail: detail.into(),
    }
}

/// What a phase measured.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PhaseFigures {
    pub name: String,
    /// The measured span, in seconds since the start of the run.
    pub from_seconds: f64,
    pub to_seconds: f64,
    /// The weights written to the mesh for this phase (canary), and how long after the edit the
    /// orders sidecar ran them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<Weights>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights_applied_after_ms: Option<u64>,
    pub mesh: MeshFigures,
    pub orders: ClientFigures,
    pub home: ClientFigures,
    /// Orders and home page visits together: what the gateway answered.
    pub gateway: ClientFigures,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Weights {
    pub v1: u32,
    pub v2: u32,
}

/// The state of orders the compensate scenario checks against the services' own records.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Compensation {
    /// Orders answered 201 or 409 whose records were looked up.
    pub orders_checked: u64,
    pub completed: u64,
    pub compensated: u64,
    /// Compensated orders whose payment is still charged (not refunded): must be 0.
    pub compensated_still_charged: u64,
    /// Compensated orders whose stock is still reserved (not released): must be 0.
    pub compensated_still_reserved: u64,
    /// Completed orders without a charge or a reservation (the other direction of consistency).
    pub completed_not_charged: u64,
    pub completed_not_reserved: u64,
    /// Look-ups that failed or answered something unexpected.
    pub unknown: u64,
    /// Up to five offending order ids with what was found.
    pub examples: Vec<String>,
}

/// Whether a `GET /charges/{orderId}` answer means money is still taken, `None` when the
/// answer says nothing either way.
pub fn charge_held(status: u16, body: Option<&serde_json::Value>) -> Option<bool> {
    match status {
        404 => Some(false),
        200 => match body.and_then(|b| b.get("status")).and_then(|s| s.as_str()) {
            Some("charged" | "captured" | "completed" | "paid") => Some(true),
            Some("refunded" | "cancelled" | "canceled" | "voided" | "failed" | "declined") => {
                Some(false)
            }
            _ => None,
        },
        _ => None,
    }
}

/// Whether a `GET /reservations/{orderId}` answer means stock is still held.
pub fn reservation_held(status: u16, body: Option<&serde_json::Value>) -> Option<bool> {
    match status {
        404 => Some(false),
        200 => match body.and_then(|b| b.get("status")).and_then(|s| s.as_str()) {
            Some("reserved" | "held" | "active" | "committed" | "confirmed") => Some(true),
            Some("released" | "cancelled" | "canceled" | "expired") => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// The checks of `scenario` over its phases (in script order) and the whole run.
pub fn checks(
    scenario: Scenario,
    phases: &[PhaseFigures],
    whole: &PhaseFigures,
    compensation: Option<&Compensation>,
    scaling: &ScalingFigures,
    rollout: Option<&Rollout>,
) -> Vec<Check> {
    let mut out = Vec::new();
    let pct = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} %"));
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0} ms"));
    let phase = |name: &str| phases.iter().find(|p| p.name == name);
    match scenario {
        Scenario::Canary => {
            for p in phases {
                let Some(w) = p.weights.or_else(|| {
                    // The first phase runs the initial weights.
                    (p.name == "90/10").then_some(Weights { v1: 90, v2: 10 })
                }) else {
                    continue;
                };
                let expected = 100.0 * f64::from(w.v2) / f64::from(w.v1 + w.v2);
                let split = &p.mesh.split;
                let observed = split.percent.get("v2").copied().unwrap_or(0.0);
                let enough = split.total >= 50;
                out.push(check(
                    format!(
                        "phase {}: observed v2 share within ±5 points of {expected:.0} %",
                        p.name
                    ),
                    enough && (observed - expected).abs() <= 5.0,
                    format!(
                        "v2 {observed:.1} % of {} calls (v1 {}, v2 {}); applied {} after the edit",
                        split.total,
                        split.counts.get("v1").copied().unwrap_or(0),
                        split.counts.get("v2").copied().unwrap_or(0),
                        p.weights_applied_after_ms
                            .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms")),
                    ),
                ));
            }
        }
        Scenario::Outlier => {
            if let Some(p) = phase("v2 failing 30 %") {
                let ejections: u64 = p
                    .mesh
                    .calls
                    .iter()
                    .filter(|c| c.service == "payments")
                    .map(|c| c.ejections)
                    .sum();
                out.push(check(
                    "outlier detection ejected payments v2",
                    ejections > 0,
                    format!("{ejections} ejections"),
                ));
                out.push(check(
                    "order success stayed at or above 99.5 %",
                    p.orders.success_percent.is_some_and(|s| s >= 99.5),
                    format!(
                        "{} of {} orders completed ({})",
                        p.orders.completed,
                        p.orders.requests - p.orders.rate_limited,
                        pct(p.orders.success_percent)
                    ),
                ));
            }
        }
        Scenario::Hang => {
            if let Some(p) = phase("inventory hanging") {
                out.push(check(
                    "the gateway answered every request in under 1 s (p99 and max)",
                    p.gateway.requests > 0
                        && p.gateway.unanswered == 0
                        && p.gateway.p99_ms.is_some_and(|v| v < 1000.0),
                    format!(
                        "{} requests, p99 {}, max {}, {} over 1 s, {} unanswered",
                        p.gateway.requests,
                        ms(p.gateway.p99_ms),
                        ms(p.gateway.max_ms),
                        p.gateway.over_1s,
                        p.gateway.unanswered
                    ),
                ));
                let opened: Vec<String> = p
                    .mesh
                    .calls
                    .iter()
                    .filter(|c| c.service == "inventory" && c.breaker_worst != "closed")
                    .map(|c| format!("{}→inventory {}", c.caller, c.breaker_worst))
                    .collect();
                out.push(check(
                    "a circuit breaker to inventory opened",
                    !opened.is_empty(),
                    opened.join(", "),
                ));
            }
        }
        Scenario::Burst => {
            let g = &whole.gateway;
            out.push(check(
                "the burst got 429s, each with Retry-After",
                g.rate_limited > 0 && g.rate_limited_without_retry_after == 0,
                format!(
                    "{} answered 429, {} of them without Retry-After",
                    g.rate_limited, g.rate_limited_without_retry_after
                ),
            ));
            let other =
                g.server_errors + g.other_client_errors + g.unanswered + whole.orders.compensated;
            out.push(check(
                "nothing else failed",
                other == 0,
                format!(
                    "{} 5xx, {} other 4xx, {} compensated, {} unanswered of {} requests",
                    g.server_errors,
                    g.other_client_errors,
                    whole.orders.compensated,
                    g.unanswered,
                    g.requests
                ),
            ));
        }
        Scenario::Compensate => {
            if let Some(c) = compensation {
                out.push(check(
                    "sagas compensated while shipping failed",
                    c.compensated > 0,
                    format!("{} compensated, {} completed", c.compensated, c.completed),
                ));
                out.push(check(
                    "no compensated order left a charge or a reservation",
                    c.compensated_still_charged == 0 && c.compensated_still_reserved == 0,
                    format!(
                        "{} still charged, {} still reserved, {} look-ups inconclusive",
                        c.compensated_still_charged, c.compensated_still_reserved, c.unknown
                    ),
                ));
            }
        }
        Scenario::Rollout | Scenario::RolloutFailing => {
            let want = if scenario == Scenario::Rollout {
                "Succeeded"
            } else {
                "RolledBack"
            };
            out.push(check(
                format!("the canary analysis ended {want}"),
                rollout.is_some_and(|r| r.phase == want),
                rollout.map_or_else(
                    || "no analysis in the control plane's /status".to_owned(),
                    |r| {
                        format!(
                            "{} at step {}, canary {} %: {}",
                            r.phase, r.step, r.canary_weight, r.message
                        )
                    },
                ),
            ));
            let o = &whole.orders;
            out.push(check(
                "order success stayed at or above 99 %",
                o.success_percent.is_some_and(|s| s >= 99.0),
                format!(
                    "{} of {} orders completed ({})",
                    o.completed,
                    o.requests - o.rate_limited,
                    pct(o.success_percent)
                ),
            ));
        }
        Scenario::Autoscale => {
            let starts = scaling
                .events
                .iter()
                .filter(|e| e.action == "ready")
                .count();
            let stops = scaling.events.iter().filter(|e| e.action == "stop").count();
            let peak_serving = scaling
                .timeline
                .iter()
                .filter(|p| phase("quiet again").is_none_or(|q| p.at_seconds < q.from_seconds))
                .map(|p| p.serving)
                .max()
                .unwrap_or(0);
            out.push(check(
                "orders scaled out under the ramp (3 or more instances serving)",
                peak_serving >= 3,
                format!(
                    "at most {peak_serving} serving before the load fell; {starts} instances added"
                ),
            ));
            out.push(check(
                "orders scaled in after the load fell",
                scaling.final_serving < peak_serving && stops > 0,
                format!(
                    "{} serving at the end, {stops} instances stopped",
                    scaling.final_serving
                ),
            ));
            let o = &whole.orders;
            let failed = o.server_errors + o.unanswered + o.compensated;
            out.push(check(
                "no order failed while instances came and went",
                o.requests > 0 && failed == 0,
                format!(
                    "{} orders: {} completed, {} 5xx, {} compensated, {} unanswered",
                    o.requests, o.completed, o.server_errors, o.compensated, o.unanswered
                ),
            ));
        }
    }
    out
}

// The rollout as `/status` shows it is one of the mesh's figures; named here too.
pub use super::figures::Rollout;

/// Adds [`ROLLOUT_ANALYSIS`] to the split file of `mesh` (atomically, as [`write_weights`]).
pub fn write_analysis(mesh: &Path) -> Result<()> {
    let path = mesh.join(SPLIT_FILE);
    let mut text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    if text.contains("\n  analysis:") {
        return Ok(());
    }
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(ROLLOUT_ANALYSIS);
    let tmp = mesh.join(".payments-split.yaml.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// The payments TrafficSplit's file in a mesh folder.
pub const SPLIT_FILE: &str = "payments-split.yaml";

/// Sets the weight of `subset` on the backend line that names it
/// (`- {subset: v1, selector: {version: v1}, weight: 90}`), keeping everything else.
pub fn set_weight(text: &str, subset: &str, weight: u32) -> Result<String> {
    let mut found = false;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let names_it = line.contains(&format!("subset: {subset},"))
            || line.contains(&format!("subset: {subset} "))
            || line.trim_end().ends_with(&format!("subset: {subset}"));
        match (names_it, line.find("weight:")) {
            (true, Some(at)) if !line.trim_start().starts_with('#') => {
                let rest = &line[at + "weight:".len()..];
                let digits_start = rest.len() - rest.trim_start().len();
                let digits_len = rest[digits_start..]
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(rest.len() - digits_start);
                out.push_str(&line[..at]);
                out.push_str("weight: ");
                out.push_str(&weight.to_string());
                out.push_str(&rest[digits_start + digits_len..]);
                found = true;
            }
            _ => out.push_str(line),
        }
    }
    if !found {
        bail!("no backend line with `subset: {subset}` and `weight:` in {SPLIT_FILE}");
    }
    Ok(out)
}

/// Writes new weights into the split file of `mesh`, atomically (a temp file renamed over it)
/// so the control plane never reads half a file.
pub fn write_weights(mesh: &Path, v1: u32, v2: u32) -> Result<()> {
    let path = mesh.join(SPLIT_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let text = set_weight(&set_weight(&text, "v1", v1)?, "v2", v2)?;
    // Not `*.yaml`, so the control plane never reads it.
    let tmp = mesh.join(".payments-split.yaml.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPLIT: &str = include_str!("../../mesh/payments-split.yaml");

    #[test]
    fn weights_are_edited_in_the_real_split_file() {
        let text = set_weight(&set_weight(SPLIT, "v1", 50).unwrap(), "v2", 50).unwrap();
        assert!(
            text.contains("subset: v1, selector: {version: v1}, weight: 50}"),
            "{text}"
        );
        assert!(
            text.contains("subset: v2, selector: {version: v2}, weight: 50}"),
            "{text}"
        );
        assert_eq!(text.lines().count(), SPLIT.lines().count());
        let back = set_weight(&set_weight(&text, "v1", 90).unwrap(), "v2", 10).unwrap();
        assert_eq!(back, SPLIT);
        assert!(set_weight(SPLIT, "v3", 1).is_err());
    }

    #[test]
    fn the_analysis_is_added_to_the_real_split_file() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        std::fs::write(dir.join(SPLIT_FILE), SPLIT).unwrap();
        write_analysis(dir).unwrap();
        write_analysis(dir).unwrap();
        let text = std::fs::read_to_string(dir.join(SPLIT_FILE)).unwrap();
        assert_eq!(text.matches("analysis:").count(), 1, "{text}");
        let split: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(split["spec"]["analysis"]["canary"], "v2");
        assert_eq!(split["spec"]["analysis"]["interval"], "3s");
    }

    #[test]
    fn steps_scale_with_the_duration() {
        let steps = Scenario::Canary.steps(Duration::from_secs(30));
        let times: Vec<u64> = steps.iter().map(|s| s.at.as_secs()).collect();
        assert_eq!(times, vec![0, 10, 10, 20, 20]);
        for s in [
            Scenario::Canary,
            Scenario::Outlier,
            Scenario::Hang,
            Scenario::Burst,
            Scenario::Compensate,
            Scenario::Autoscale,
            Scenario::Rollout,
            Scenario::RolloutFailing,
        ] {
            let steps = s.steps(s.default_duration());
            assert!(matches!(steps[0].action, Action::Phase { .. }));
            assert!(steps.windows(2).all(|w| w[0].at <= w[1].at), "{s:?}");
            assert!(steps.iter().all(|st| st.at < s.default_duration()), "{s:?}");
        }
    }

    /// The fault scenarios' scripts, second by second over a 30 s run: fault on, its phase,
    /// fault off, recovered.
    #[test]
    fn the_fault_scenarios_break_one_instance_for_a_while() {
        let phase = |name, secs| Action::Phase {
            name,
            settle: Duration::from_secs(secs),
        };
        let faults = |instance, error_rate, hang| Action::Faults {
            instance,
            error_rate,
            hang,
        };
        let script = |(on, off): (u64, u64), instance, (error_rate, hang), label| {
            let at = Duration::from_secs;
            vec![
                (at(0), phase("normal", 2)),
                (at(on), faults(instance, error_rate, hang)),
                (at(on), phase(label, 0)),
                (at(off), faults(instance, 0.0, false)),
                (at(off), phase("recovered", 0)),
            ]
        };
        for (scenario, expected) in [
            (
                Scenario::Hang,
                script(
                    (8, 22),
                    topology::INVENTORY,
                    (0.0, true),
                    "inventory hanging",
                ),
            ),
            (
                Scenario::Compensate,
                script(
                    (8, 20),
                    topology::SHIPPING,
                    (1.0, false),
                    "shipping failing",
                ),
            ),
        ] {
            let steps: Vec<(Duration, Action)> = scenario
                .steps(Duration::from_secs(30))
                .into_iter()
                .map(|s| (s.at, s.action))
                .collect();
            assert_eq!(steps, expected, "{scenario:?}");
        }
    }

    #[test]
    fn record_states_are_read_leniently() {
        let j = |s: &str| serde_json::json!({ "status": s });
        assert_eq!(charge_held(200, Some(&j("charged"))), Some(true));
        assert_eq!(charge_held(200, Some(&j("refunded"))), Some(false));
        assert_eq!(charge_held(404, None), Some(false));
        assert_eq!(charge_held(500, None), None);
        assert_eq!(reservation_held(200, Some(&j("reserved"))), Some(true));
        assert_eq!(reservation_held(200, Some(&j("released"))), Some(false));
        assert_eq!(reservation_held(200, Some(&j("weird"))), None);
    }
}
