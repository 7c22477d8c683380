//! The live terminal dashboard: plain text redrawn every second with two ANSI sequences (clear,
//! home). A TUI library would add raw mode and input handling the demo does not need.

use super::figures::{MeshFigures, SplitFigures};
use super::scaling::AutoscalerView;
use super::traffic::ClientFigures;
use std::fmt::Write as _;
use std::time::Duration;

/// Clears the screen and moves the cursor home.
pub const CLEAR: &str = "\x1b[2J\x1b[H";

/// Everything one frame shows.
#[derive(Debug)]
pub struct View<'a> {
    pub elapsed: Duration,
    pub duration: Option<Duration>,
    pub rate: f64,
    pub scenario: Option<&'a str>,
    pub phase: Option<&'a str>,
    /// The mesh over the last few seconds.
    pub window: &'a MeshFigures,
    /// The canary split over the last second alone (how fast it follows an edit).
    pub split_now: &'a SplitFigures,
    /// The mesh since the start.
    pub cumulative: &'a MeshFigures,
    /// What the customers saw: orders and home page visits since the start, and orders lately.
    pub orders: &'a ClientFigures,
    pub home: &'a ClientFigures,
    pub orders_window: &'a ClientFigures,
    pub mesh_dir: &'a str,
    pub logs_dir: &'a str,
    /// Lines about things that need attention (a sidecar not answering …).
    pub notes: &'a [String],
    pub scaling: &'a Scaling<'a>,
    /// The payments canary analysis now, when the split has one.
    pub rollout: Option<&'a super::scenario::Rollout>,
}

/// The orders instances and what the Autoscaler wants of them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scaling<'a> {
    pub serving: usize,
    pub starting: usize,
    pub draining: usize,
    pub autoscaler: Option<&'a AutoscalerView>,
}

impl Scaling<'_> {
    /// `3 serving, 1 starting; autoscaler orders wants 4 (RequestsPerSecond 31.2 per instance)`.
    pub fn summary(&self) -> String {
        let mut out = format!("{} serving", self.serving);
        if self.starting > 0 {
            out.push_str(&format!(", {} starting", self.starting));
        }
        if self.draining > 0 {
            out.push_str(&format!(", {} stopping", self.draining));
        }
        match self.autoscaler {
            None => out.push_str(" (no Autoscaler for orders)"),
            Some(a) => {
                let wants = a
                    .desired_replicas
                    .map_or_else(|| "-".to_owned(), |d| d.to_string());
                out.push_str(&format!("; autoscaler {} wants {wants}", a.name));
                if !a.metrics.is_empty() {
                    let metrics: Vec<String> =
                        a.metrics.iter().map(|(k, v)| format!("{k} {v}")).collect();
                    out.push_str(&format!(" ({} per instance)", metrics.join(", ")));
                }
                for c in &a.conditions {
                    out.push_str(&format!("; {c}"));
                }
            }
        }
        out
    }
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}", s / 60, s % 60)
}

fn split_line(split: &SplitFigures) -> String {
    if split.total == 0 {
        return "no calls".to_owned();
    }
    split
        .counts
        .iter()
        .map(|(subset, n)| {
            format!(
                "{subset} {:>5.1} % ({n})",
                split.percent.get(subset).copied().unwrap_or(0.0)
            )
        })
        .collect::<Vec<_>>()
        .join("  ")
}

pub fn render(v: &View<'_>) -> String {
    let mut out = String::new();
    let w = &mut out;
    let until = v.duration.map_or_else(
        || "Ctrl-C to stop".to_owned(),
        |d| format!("of {}", clock(d)),
    );
    let _ = writeln!(
        w,
        "Weir shop — {} {until} — {:.0} orders/s{}{}",
        clock(v.elapsed),
        v.rate,
        v.scenario
            .map(|s| format!(" — scenario {s}"))
            .unwrap_or_default(),
        v.phase.map(|p| format!(" ({p})")).unwrap_or_default(),
    );
    let _ = writeln!(
        w,
        "control plane: config version {}, {} proxies connected; mesh: {}",
        v.window
            .config_version
            .map_or_else(|| "-".to_owned(), |c| c.to_string()),
        v.window
            .connected_proxies
            .map_or_else(|| "-".to_owned(), |c| c.to_string()),
        v.mesh_dir
    );
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "{:<13} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6}   (inbound, last {:.0} s)",
        "service", "req/s", "ok %", "p50 ms", "p99 ms", "5xx", "429", v.window.seconds
    );
    for s in &v.window.services {
        let _ = writeln!(
            w,
            "{:<13} {:>8.1} {:>8} {:>8} {:>8} {:>6} {:>6}{}",
            s.name,
            s.requests_per_second,
            opt(s.success_percent, 1),
            opt(s.p50_ms, 1),
            opt(s.p99_ms, 1),
            s.server_errors,
            s.rate_limited,
            if s.up {
                ""
            } else {
                "   (sidecar not answering)"
            }
        );
    }
    let _ = writeln!(w, "orders instances: {}", v.scaling.summary());
    let _ = writeln!(w);
    let configured = v.window.split.configured.as_ref().map_or_else(
        || "-".to_owned(),
        |c| {
            c.iter()
                .map(|(k, n)| format!("{k}={n}"))
                .collect::<Vec<_>>()
                .join(" ")
        },
    );
    let _ = writeln!(w, "canary payments   weights {configured}");
    if let Some(r) = v.rollout {
        let _ = writeln!(w, "  analysis: {}", r.summary());
    }
    let _ = writeln!(w, "  observed, last 1 s:  {}", split_line(v.split_now));
    let _ = writeln!(
        w,
        "  observed, last {:.0} s:  {}",
        v.window.seconds,
        split_line(&v.window.split)
    );
    let _ = writeln!(
        w,
        "  since start:         {}",
        split_line(&v.cumulative.split)
    );
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "{:<22} {:>8} {:>8} {:>8} {:>9} {:>10} {:>8}   (since start; breaker and ejected now)",
        "calls", "failed", "retries", "timeouts", "breaker", "ejections", "ejected"
    );
    for c in &v.cumulative.calls {
        let _ = writeln!(
            w,
            "{:<22} {:>8} {:>8} {:>8} {:>9} {:>10} {:>8}",
            format!("{} → {}", c.caller, c.service),
            c.failed,
            c.retries,
            c.timeouts,
            c.breaker,
            c.ejections,
            c.endpoints_ejected
        );
    }
    let limited: u64 = v.cumulative.rate_limited.values().sum();
    let limited_now: u64 = v.window.rate_limited.values().sum();
    let bulkhead: u64 = v.cumulative.bulkhead_rejected.values().sum();
    let _ = writeln!(
        w,
        "rate limited: {limited} since start, {limited_now} in the last {:.0} s; bulkhead rejected: {bulkhead}",
        v.window.seconds
    );
    let _ = writeln!(w);
    let o = v.orders;
    let _ = writeln!(
        w,
        "sagas: {} completed, {} compensated   orders: {} placed, {} rate limited, {} 5xx, {} unanswered, success {} %",
        o.completed,
        o.compensated,
        o.requests,
        o.rate_limited,
        o.server_errors,
        o.unanswered,
        opt(o.success_percent, 2)
    );
    let ow = v.orders_window;
    let _ = writeln!(
        w,
        "at the client: orders p50 {} / p99 {} ms lately (max {} ms); home pages {} ok of {}",
        opt(ow.p50_ms, 0),
        opt(ow.p99_ms, 0),
        opt(ow.max_ms, 0),
        v.home.ok,
        v.home.requests
    );
    for note in v.notes {
        let _ = writeln!(w, "! {note}");
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "Edit {}/payments-split.yaml to move the canary. Logs: {}",
        v.mesh_dir, v.logs_dir
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::figures::ServiceFigures;

    #[test]
    fn a_frame_shows_every_part() {
        let mut window = MeshFigures {
            seconds: 5.0,
            ..MeshFigures::default()
        };
        window.services.push(ServiceFigures {
            name: "payments v2".into(),
            requests: 10,
            requests_per_second: 2.0,
            success_percent: Some(70.0),
            server_errors: 3,
            rate_limited: 0,
            p50_ms: Some(1.5),
            p99_ms: Some(9.0),
            up: true,
        });
        window.split.total = 10;
        window.split.counts.insert("v1".into(), 9);
        window.split.percent.insert("v1".into(), 90.0);
        let orders = ClientFigures {
            completed: 7,
            compensated: 1,
            ..ClientFigures::default()
        };
        let frame = render(&View {
            elapsed: Duration::from_secs(75),
            duration: None,
            rate: 20.0,
            scenario: Some("outlier"),
            phase: Some("v2 failing 30 %"),
            window: &window,
            split_now: &SplitFigures::default(),
            cumulative: &MeshFigures::default(),
            orders: &orders,
            home: &ClientFigures::default(),
            orders_window: &ClientFigures::default(),
            mesh_dir: "mesh",
            logs_dir: "logs",
            notes: &["a note".to_owned()],
            scaling: &Scaling {
                serving: 3,
                starting: 1,
                draining: 0,
                autoscaler: Some(&AutoscalerView {
                    name: "orders".into(),
                    desired_replicas: Some(4),
                    current_replicas: Some(3),
                    metrics: [("RequestsPerSecond".to_owned(), "31.2".to_owned())].into(),
                    conditions: vec!["ScalingLimited: ScaleUpLimit".into()],
                }),
            },
            rollout: Some(&super::super::scenario::Rollout {
                phase: "Progressing".into(),
                step: 2,
                canary_weight: 50,
                message: String::new(),
                last_judgement: serde_json::json!({
                    "requests": 24, "successRate": 1.0, "latencyP99": "12ms", "result": "Passed"
                }),
            }),
        });
        assert!(
            frame.contains(
                "analysis: Progressing, step 2, canary 50 %; last judgement Passed on 24 \
                 requests (success 100.0 %, p99 12ms)"
            ),
            "{frame}"
        );
        assert!(frame.contains("01:15"), "{frame}");
        assert!(
            frame.contains("scenario outlier (v2 failing 30 %)"),
            "{frame}"
        );
        assert!(frame.contains("payments v2"), "{frame}");
        assert!(frame.contains("v1  90.0 % (9)"), "{frame}");
        assert!(frame.contains("7 completed, 1 compensated"), "{frame}");
        assert!(frame.contains("! a note"), "{frame}");
        assert!(
            frame.contains(
                "orders instances: 3 serving, 1 starting; autoscaler orders wants 4 \
                 (RequestsPerSecond 31.2 per instance); ScalingLimited: ScaleUpLimit"
            ),
            "{frame}"
        );
    }
}
