//! The figures of a run as the report (and the closing summary) shows them: per phase, over the
//! last window and since the start, with the scenario's checks.

use super::figures::{self, Snapshot};
use super::launch::Layout;
use super::procs::Stopped;
use super::scaling::ScalingFigures;
use super::scenario::{self, Check, Compensation, PhaseFigures, Rollout, Scenario, Weights};
use super::traffic::{ClientFigures, Kind, Outcome, Traffic};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A phase as the run marks it.
#[derive(Debug, Clone)]
pub(super) struct PhaseMark {
    pub(super) name: &'static str,
    pub(super) measure_from: Duration,
    pub(super) end: Option<Duration>,
    pub(super) weights: Option<Weights>,
    /// Milliseconds from the weights edit until the orders sidecar ran them.
    pub(super) applied: Arc<Mutex<Option<u64>>>,
}

/// Everything the report holds.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Report {
    pub(super) scenario: Option<Scenario>,
    /// All checks of the scenario passed (`null` without a scenario).
    pub(super) passed: Option<bool>,
    pub(super) checks: Vec<Check>,
    pub(super) rate: f64,
    pub(super) seconds: f64,
    pub(super) cumulative: PhaseFigures,
    /// The last [`WINDOW`] seconds of traffic.
    pub(super) last_window: PhaseFigures,
    pub(super) phases: Vec<PhaseFigures>,
    /// The orders sent in bursts (the burst scenario), apart from the steady load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) burst: Option<ClientFigures>,
    pub(super) sagas: Sagas,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) compensation: Option<Compensation>,
    /// Where the payments canary analysis stood at the end (the rollout scenarios).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) rollout: Option<Rollout>,
    /// How many orders instances ran when, and why (the Autoscaler's view).
    pub(super) orders_scaling: ScalingFigures,
    /// Things that went wrong on the way (a fault knob that could not be set …).
    pub(super) notes: Vec<String>,
    /// How every child ended.
    pub(super) shutdown: Vec<Stopped>,
    /// Every child exited by itself after SIGTERM.
    pub(super) clean_shutdown: bool,
    pub(super) data_dir: String,
    pub(super) logs_dir: String,
    pub(super) mesh_dir: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Sagas {
    /// Orders the gateway answered 201.
    pub(super) completed: u64,
    /// Orders the gateway answered 409.
    pub(super) compensated: u64,
    /// The reasons the gateway gave for compensated orders, with how often.
    pub(super) compensation_reasons: BTreeMap<String, u64>,
    /// The sagas orders itself records, by status (`GET /sagas?status=…`, which lists at most
    /// 1000: a count of 1000 means "1000 or more"), when it answered.
    pub(super) recorded_by_orders: Option<BTreeMap<String, u64>>,
}

/// The span of the dashboard's and the report's "last window".
pub(super) const WINDOW: Duration = Duration::from_secs(5);
/// How long a child gets to exit after SIGTERM.
pub(super) const GRACE: Duration = Duration::from_secs(15);

/// The snapshots whose time is within `[from, to]` (scrapes start a little after their tick).
pub(super) fn span(snapshots: &[Snapshot], from: Duration, to: Duration) -> &[Snapshot] {
    let slack = Duration::from_millis(300);
    let start = snapshots.partition_point(|s| s.at + slack < from);
    let end = snapshots.partition_point(|s| s.at <= to + slack);
    &snapshots[start.min(end)..end]
}

pub(super) fn phase_figures(
    name: &str,
    from: Duration,
    to: Duration,
    snapshots: &[Snapshot],
    traffic: &Traffic,
) -> PhaseFigures {
    let pick = |o: &Outcome| o.sent >= from && o.sent < to;
    let both = traffic.outcomes(pick);
    PhaseFigures {
        name: name.to_owned(),
        from_seconds: from.as_secs_f64(),
        to_seconds: to.as_secs_f64(),
        weights: None,
        weights_applied_after_ms: None,
        mesh: figures::mesh_figures(span(snapshots, from, to)),
        orders: traffic.figures(Kind::Order, pick),
        home: traffic.figures(Kind::Home, pick),
        gateway: ClientFigures::of(&both),
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn build_report(
    scenario: Option<Scenario>,
    rate: f64,
    end: Duration,
    snapshots: &[Snapshot],
    phases: &[PhaseMark],
    traffic: &Traffic,
    compensation: Option<Compensation>,
    recorded_by_orders: Option<BTreeMap<String, u64>>,
    scaling: ScalingFigures,
    rollout: Option<Rollout>,
    notes: Vec<String>,
    layout: &Layout,
) -> Report {
    let mut cumulative = phase_figures(
        "cumulative",
        Duration::ZERO,
        end + Duration::from_secs(1),
        snapshots,
        traffic,
    );
    // The counts since the start include what was answered after the traffic stopped.
    cumulative.mesh = figures::mesh_figures(snapshots);
    let window_from = end.saturating_sub(WINDOW);
    let last_window = phase_figures(
        &format!("last {} s", WINDOW.as_secs()),
        window_from,
        end,
        snapshots,
        traffic,
    );
    let phase_reports: Vec<PhaseFigures> = phases
        .iter()
        .map(|p| {
            let to = p.end.unwrap_or(end);
            let mut f = phase_figures(p.name, p.measure_from.min(to), to, snapshots, traffic);
            f.weights = p.weights;
            f.weights_applied_after_ms = *p.applied.lock();
            f
        })
        .collect();
    let checks = scenario
        .map(|s| {
            scenario::checks(
                s,
                &phase_reports,
                &cumulative,
                compensation.as_ref(),
                &scaling,
                rollout.as_ref(),
            )
        })
        .unwrap_or_default();
    let orders = traffic.cumulative(Kind::Order);
    let mut compensation_reasons = BTreeMap::new();
    for o in traffic.outcomes(|o| o.kind == Kind::Order && o.status == Some(409)) {
        let reason = o.reason.unwrap_or_else(|| "(none given)".to_owned());
        *compensation_reasons.entry(reason).or_default() += 1;
    }
    let burst = traffic.outcomes(|o| o.burst);
    Report {
        scenario,
        passed: scenario.map(|_| checks.iter().all(|c| c.passed)),
        checks,
        rate,
        seconds: end.as_secs_f64(),
        cumulative,
        last_window,
        phases: phase_reports,
        burst: (!burst.is_empty()).then(|| ClientFigures::of(&burst)),
        sagas: Sagas {
            completed: orders.completed,
            compensated: orders.compensated,
            compensation_reasons,
            recorded_by_orders,
        },
        compensation,
        rollout,
        orders_scaling: scaling,
        notes,
        shutdown: Vec::new(),
        clean_shutdown: false,
        data_dir: layout.data.display().to_string(),
        logs_dir: layout.logs.display().to_string(),
        mesh_dir: layout.mesh.display().to_string(),
    }
}

pub(super) fn print_summary(report: &Report) {
    let o = &report.cumulative.orders;
    println!(
        "\n{:.0} s: {} orders, {} completed, {} compensated, {} rate limited, {} 5xx, {} unanswered",
        report.seconds,
        o.requests,
        o.completed,
        o.compensated,
        o.rate_limited,
        o.server_errors,
        o.unanswered
    );
    for p in &report.phases {
        println!(
            "phase {:<20} orders ok {:>6} %  gateway p99 {:>6} ms  canary {}",
            p.name,
            p.orders
                .success_percent
                .map_or_else(|| "-".into(), |v| format!("{v:.2}")),
            p.gateway
                .p99_ms
                .map_or_else(|| "-".into(), |v| format!("{v:.0}")),
            p.mesh.split.percent_line(1)
        );
    }
    let s = &report.orders_scaling;
    if s.autoscaled {
        println!(
            "orders instances: at most {} serving, {} at the end ({} added, {} stopped)",
            s.max_serving,
            s.final_serving,
            s.events.iter().filter(|e| e.action == "ready").count(),
            s.events.iter().filter(|e| e.action == "stop").count()
        );
    }
    for c in &report.checks {
        println!(
            "{} {}: {}",
            if c.passed { "PASS" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    let unclean: Vec<String> = report
        .shutdown
        .iter()
        .filter(|s| !s.clean)
        .map(|s| format!("{} ({})", s.name, s.status))
        .collect();
    if unclean.is_empty() {
        println!("stopped cleanly: every process exited after SIGTERM");
    } else {
        println!("not stopped cleanly: {}", unclean.join(", "));
    }
}
