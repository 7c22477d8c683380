//! The live terminal dashboard: plain text redrawn every second with two ANSI sequences (clear,
//! home). A TUI library would add raw mode and input handling the demo does not need.
//!
//! Two layouts: the full one, with every column and a blank line between parts, on a terminal of
//! at least [`FULL_COLUMNS`] × [`FULL_ROWS`]; a compact one otherwise, made for 80 × 24 (the
//! default of most terminals): shorter headings, the canary on one line, no blank lines. Either
//! way [`render`] never writes a line wider than the terminal nor more lines than it has (a
//! wider line would wrap and scroll the frame): lines are cut with `…`, notes are wrapped, and
//! when rows run out the call table gives up rows first, then the notes.

use super::figures::{CallFigures, MeshFigures, ServiceFigures, SplitFigures};
use super::scaling::Scaling;
use super::traffic::ClientFigures;
use std::fmt::Write as _;
use std::time::Duration;

/// Clears the screen and moves the cursor home.
pub const CLEAR: &str = "\x1b[2J\x1b[H";

/// The smallest terminal the full layout is drawn on; smaller ones get the compact layout.
pub const FULL_COLUMNS: usize = 125;
pub const FULL_ROWS: usize = 40;

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub columns: usize,
    pub rows: usize,
}

impl Size {
    /// The size of the terminal on stdout; 80 × 24 when it cannot be read (the usual default,
    /// and the compact layout fits it).
    pub fn of_stdout() -> Self {
        match rustix::termios::tcgetwinsize(std::io::stdout()) {
            Ok(w) if w.ws_col > 0 && w.ws_row > 0 => Self {
                columns: usize::from(w.ws_col),
                rows: usize::from(w.ws_row),
            },
            _ => Self {
                columns: 80,
                rows: 24,
            },
        }
    }
}

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
    pub rollout: Option<&'a super::figures::Rollout>,
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

fn count(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// One row of the services or calls table, in either layout: the name left-aligned in the first of
/// `widths`, each figure right-aligned in its own.
fn table_row(cells: [String; 7], widths: [usize; 7]) -> String {
    let mut row = String::new();
    for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
        if i == 0 {
            let _ = write!(row, "{cell:<w$}");
        } else {
            let _ = write!(row, " {cell:>w$}");
        }
    }
    row
}

/// The calls table's columns: the compact layout's heading and width, then the full one's.
const CALL_COLUMNS: [(&str, usize, &str, usize); 7] = [
    ("calls (since start)", 22, "calls", 22),
    ("failed", 6, "failed", 8),
    ("retry", 6, "retries", 8),
    ("tmout", 6, "timeouts", 8),
    ("breaker", 9, "breaker", 9),
    ("ejct", 5, "ejections", 10),
    ("out", 5, "ejected", 8),
];

/// The calls table, its heading first, in the compact or the full layout.
fn call_rows(calls: &[CallFigures], compact: bool) -> Vec<String> {
    let pick = |(short, short_width, long, long_width): (&str, usize, &str, usize)| {
        if compact {
            (short.to_owned(), short_width)
        } else {
            (long.to_owned(), long_width)
        }
    };
    let columns = CALL_COLUMNS.map(pick);
    let widths = columns.clone().map(|(_, width)| width);
    std::iter::once(table_row(columns.map(|(heading, _)| heading), widths))
        .chain(calls.iter().map(|c| table_row(call_cells(c), widths)))
        .collect()
}

/// A caller → service pair's resilience counts as the calls table shows them.
fn call_cells(c: &CallFigures) -> [String; 7] {
    [
        format!("{} → {}", c.caller, c.service),
        c.failed.to_string(),
        c.retries.to_string(),
        c.timeouts.to_string(),
        c.breaker.to_string(),
        c.ejections.to_string(),
        c.endpoints_ejected.to_string(),
    ]
}

/// A service's figures as the services table shows them.
fn service_cells(s: &ServiceFigures) -> [String; 7] {
    [
        s.name.clone(),
        format!("{:.1}", s.requests_per_second),
        opt(s.success_percent, 1),
        opt(s.p50_ms, 1),
        opt(s.p99_ms, 1),
        s.server_errors.to_string(),
        s.rate_limited.to_string(),
    ]
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}", s / 60, s % 60)
}

/// The weights written to the mesh, `v1=90 v2=10`; `-` when none were.
fn configured_weights(split: &SplitFigures) -> String {
    split.configured.as_ref().map_or_else(
        || "-".to_owned(),
        |c| {
            c.iter()
                .map(|(k, n)| format!("{k}={n}"))
                .collect::<Vec<_>>()
                .join(" ")
        },
    )
}

fn split_line(split: &SplitFigures) -> String {
    split_with(split, "  ", |subset, n| {
        let percent = split.percent.get(subset).copied().unwrap_or(0.0);
        format!("{subset} {percent:>5.1} % ({n})")
    })
}

/// Each subset of `split` as `part` writes it, joined by `gap`; `no calls` when there were none.
fn split_with(split: &SplitFigures, gap: &str, part: impl Fn(&str, u64) -> String) -> String {
    if split.total == 0 {
        return "no calls".to_owned();
    }
    let parts: Vec<String> = split.counts.iter().map(|(s, n)| part(s, *n)).collect();
    parts.join(gap)
}

/// One frame for a terminal of `size`: the full layout when it fits, else the compact one.
pub fn render(v: &View<'_>, size: Size) -> String {
    let full = render_full(v);
    let lines: Vec<&str> = full.lines().collect();
    let fits = size.columns >= FULL_COLUMNS
        && size.rows >= FULL_ROWS
        && lines.len() <= size.rows
        && lines.iter().all(|l| width(l) <= size.columns);
    if fits {
        return full;
    }
    if size.columns >= FULL_COLUMNS && size.rows >= FULL_ROWS {
        // Wide and tall, but a long note or many of them: the full layout, cut to the screen.
        let mut out = String::new();
        for line in lines.iter().take(size.rows) {
            out.push_str(&cut(line, size.columns));
            out.push('\n');
        }
        return out;
    }
    render_compact(v, size)
}

/// Columns a line takes: every character the frame uses is one cell wide.
fn width(line: &str) -> usize {
    line.chars().count()
}

/// `line` cut to `columns`, its last cell `…` when something was cut.
fn cut(line: &str, columns: usize) -> String {
    if width(line) <= columns {
        return line.to_owned();
    }
    let mut out: String = line.chars().take(columns.saturating_sub(1)).collect();
    if columns > 0 {
        out.push('…');
    }
    out
}

/// `text` wrapped at spaces into lines of at most `columns` (a word longer than a line is cut).
fn wrap(text: &str, columns: usize, indent: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let prefix = if lines.is_empty() { "" } else { indent };
        if !line.is_empty() && width(prefix) + width(&line) + 1 + width(word) > columns {
            lines.push(cut(&format!("{prefix}{line}"), columns));
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        let prefix = if lines.is_empty() { "" } else { indent };
        lines.push(cut(&format!("{prefix}{line}"), columns));
    }
    lines
}

/// The compact layout: every part of the full one in fewer, shorter lines.
fn render_compact(v: &View<'_>, size: Size) -> String {
    let columns = size.columns.max(20);
    let until = v
        .duration
        .map_or_else(|| "Ctrl-C stops".to_owned(), |d| format!("of {}", clock(d)));
    let mut head = vec![format!(
        "Weir shop {} {until}, {:.0} orders/s{}{}",
        clock(v.elapsed),
        v.rate,
        v.scenario.map(|s| format!(", {s}")).unwrap_or_default(),
        v.phase.map(|p| format!(" ({p})")).unwrap_or_default(),
    )];
    head.push(format!(
        "config v{}, {} proxies; mesh {}",
        count(v.window.config_version),
        count(v.window.connected_proxies),
        v.mesh_dir
    ));
    const WIDTHS: [usize; 7] = [13, 7, 6, 6, 7, 5, 5];
    let heading = ["service", "req/s", "ok %", "p50ms", "p99ms", "5xx", "429"];
    let last = format!("  last {:.0} s", v.window.seconds);
    head.push(table_row(heading.map(str::to_owned), WIDTHS) + &last);
    for s in &v.window.services {
        let down = if s.up { "" } else { "  down" };
        head.push(table_row(service_cells(s), WIDTHS) + down);
    }
    head.push(format!("orders: {}", v.scaling.summary()));
    let configured = configured_weights(&v.window.split);
    head.push(format!(
        "canary {configured}; 1 s: {}; {:.0} s: {}",
        short_split(v.split_now),
        v.window.seconds,
        short_split(&v.window.split)
    ));
    if let Some(r) = v.rollout {
        head.push(format!("analysis: {}", r.summary()));
    }
    let calls = call_rows(&v.cumulative.calls, true);
    let o = v.orders;
    let ow = v.orders_window;
    let limited: u64 = v.cumulative.rate_limited.values().sum();
    let bulkhead: u64 = v.cumulative.bulkhead_rejected.values().sum();
    let tail = vec![
        format!(
            "orders {} placed, {} ok %, {} 429, {} 5xx, {} unanswered; p99 {} ms",
            o.requests,
            opt(o.success_percent, 2),
            o.rate_limited,
            o.server_errors,
            o.unanswered,
            opt(ow.p99_ms, 0)
        ),
        format!(
            "sagas {} done, {} compensated; limited {limited}, bulkhead {bulkhead}; home {}/{}",
            o.completed, o.compensated, v.home.ok, v.home.requests
        ),
    ];
    let notes: Vec<String> = v
        .notes
        .iter()
        .flat_map(|n| wrap(&format!("! {n}"), columns, "  "))
        .collect();
    let footer = format!("Edit {}/payments-split.yaml", v.mesh_dir);

    // Rows: the head, the tail and the footer always; then the notes (what needs attention);
    // the call table gets what is left.
    let fixed = head.len() + tail.len() + 1;
    let mut budget = size.rows.saturating_sub(fixed);
    let notes_shown = notes.len().min(budget);
    budget -= notes_shown;
    let calls_shown = calls.len().min(budget);
    let mut lines: Vec<String> = head;
    lines.extend(calls.into_iter().take(calls_shown));
    lines.extend(tail);
    lines.extend(notes.into_iter().take(notes_shown));
    lines.push(footer);
    let mut out = String::new();
    for line in lines.iter().take(size.rows) {
        out.push_str(&cut(line, columns.min(size.columns)));
        out.push('\n');
    }
    out
}

/// `v1 90% v2 10%`: a split in few columns.
fn short_split(split: &SplitFigures) -> String {
    split_with(split, " ", |subset, _| {
        let percent = split.percent.get(subset).copied().unwrap_or(0.0);
        format!("{subset} {percent:.0}%")
    })
}

/// The full layout, for a large terminal.
fn render_full(v: &View<'_>) -> String {
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
        count(v.window.config_version),
        count(v.window.connected_proxies),
        v.mesh_dir
    );
    let _ = writeln!(w);
    const WIDTHS: [usize; 7] = [13, 8, 8, 8, 8, 6, 6];
    let heading = ["service", "req/s", "ok %", "p50 ms", "p99 ms", "5xx", "429"];
    let heading = table_row(heading.map(str::to_owned), WIDTHS);
    let _ = writeln!(w, "{heading}   (inbound, last {:.0} s)", v.window.seconds);
    for s in &v.window.services {
        let down = if s.up {
            ""
        } else {
            "   (sidecar not answering)"
        };
        let _ = writeln!(w, "{}{down}", table_row(service_cells(s), WIDTHS));
    }
    let _ = writeln!(w, "orders instances: {}", v.scaling.summary());
    let _ = writeln!(w);
    let configured = configured_weights(&v.window.split);
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
    let calls = call_rows(&v.cumulative.calls, false);
    let _ = writeln!(w, "{}   (since start; breaker and ejected now)", calls[0]);
    for row in &calls[1..] {
        let _ = writeln!(w, "{row}");
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
    use crate::demo::figures::{CallFigures, ServiceFigures};
    use crate::demo::scaling::AutoscalerView;

    /// What a frame is drawn from, owned.
    struct Fixture {
        window: MeshFigures,
        cumulative: MeshFigures,
        split_now: SplitFigures,
        orders: ClientFigures,
        autoscaler: AutoscalerView,
        rollout: super::super::figures::Rollout,
        notes: Vec<String>,
    }

    impl Fixture {
        /// A busy shop: every service, every call, a rollout and two notes, one of them a
        /// refused edit with its reason.
        fn busy() -> Self {
            let mut window = MeshFigures {
                seconds: 5.0,
                config_version: Some(12),
                connected_proxies: Some(7),
                ..MeshFigures::default()
            };
            for name in [
                "gateway",
                "orders",
                "inventory",
                "payments v1",
                "payments v2",
                "shipping",
            ] {
                window.services.push(ServiceFigures {
                    name: name.into(),
                    requests: 10_000,
                    requests_per_second: 2000.0,
                    success_percent: Some(70.0),
                    server_errors: 123_456,
                    rate_limited: 99_999,
                    p50_ms: Some(1.5),
                    p99_ms: Some(12_345.6),
                    up: name != "shipping",
                });
            }
            window.split.total = 10;
            window.split.counts.insert("v1".into(), 9);
            window.split.percent.insert("v1".into(), 90.0);
            window.split.configured = Some([("v1".into(), 90), ("v2".into(), 10)].into());
            let mut cumulative = MeshFigures::default();
            for (caller, service) in [
                ("gateway", "orders"),
                ("gateway", "inventory"),
                ("orders", "inventory"),
                ("orders", "payments"),
                ("orders", "shipping"),
            ] {
                cumulative.calls.push(CallFigures {
                    caller: caller.into(),
                    service: service.into(),
                    failed: 1_000_000,
                    retries: 2_000_000,
                    timeouts: 3,
                    requests: 5_000_000,
                    retry_budget_exhausted: 0,
                    breaker: "half-open".into(),
                    breaker_worst: "open".into(),
                    ejections: 4,
                    endpoints_ejected: 1,
                    endpoints_ejected_max: 2,
                });
            }
            Self {
                window,
                cumulative,
                split_now: SplitFigures::default(),
                orders: ClientFigures {
                    completed: 7,
                    compensated: 1,
                    ..ClientFigures::default()
                },
                autoscaler: AutoscalerView {
                    name: "orders".into(),
                    desired_replicas: Some(4),
                    current_replicas: Some(3),
                    metrics: [("RequestsPerSecond".to_owned(), "31.2".to_owned())].into(),
                    conditions: vec!["ScalingLimited: ScaleUpLimit".into()],
                },
                rollout: super::super::figures::Rollout {
                    phase: "Progressing".into(),
                    step: 2,
                    canary_weight: 50,
                    message: String::new(),
                    last_judgement: serde_json::json!({
                        "requests": 24, "successRate": 1.0, "latencyP99": "12ms", "result": "Passed"
                    }),
                },
                notes: vec![
                    "a note".to_owned(),
                    "TrafficSplit shop/payments refused (Invalid): spec.backends: the weights \
                     add up to 0; at least one backend needs a weight above 0; its last good \
                     config stays in force"
                        .to_owned(),
                ],
            }
        }

        fn frame(&self, size: Size) -> String {
            let scaling = Scaling {
                serving: 3,
                starting: 1,
                draining: 0,
                autoscaler: Some(&self.autoscaler),
            };
            render(
                &View {
                    elapsed: Duration::from_secs(75),
                    duration: Some(Duration::from_secs(120)),
                    rate: 20.0,
                    scenario: Some("outlier"),
                    phase: Some("v2 failing 30 %"),
                    window: &self.window,
                    split_now: &self.split_now,
                    cumulative: &self.cumulative,
                    orders: &self.orders,
                    home: &ClientFigures::default(),
                    orders_window: &ClientFigures::default(),
                    mesh_dir: "/home/someone/src/weir/examples/shop/mesh",
                    logs_dir: "/home/someone/src/weir/target/debug/weir-shop-data/logs",
                    notes: &self.notes,
                    scaling: &scaling,
                    rollout: Some(&self.rollout),
                },
                size,
            )
        }
    }

    fn assert_fits(frame: &str, size: Size) {
        let lines: Vec<&str> = frame.lines().collect();
        assert!(
            lines.len() <= size.rows,
            "{} lines on {} rows:\n{frame}",
            lines.len(),
            size.rows
        );
        for line in &lines {
            assert!(
                width(line) <= size.columns,
                "a line of {} columns on {}: {line:?}",
                width(line),
                size.columns
            );
        }
    }

    /// `fixture`'s frame on a `columns` × `rows` terminal, checked to fit it.
    fn fitting(fixture: Fixture, columns: usize, rows: usize) -> String {
        let size = Size { columns, rows };
        let frame = fixture.frame(size);
        assert_fits(&frame, size);
        frame
    }

    /// Fails naming the first of `parts` that `frame` does not show.
    fn assert_shows(frame: &str, parts: &[&str]) {
        for part in parts {
            assert!(frame.contains(part), "{part:?} missing from:\n{frame}");
        }
    }

    #[test]
    fn a_wide_frame_shows_every_part() {
        let frame = fitting(Fixture::busy(), 160, 50);
        assert!(
            frame.contains(
                "analysis: Progressing, step 2, canary 50 %; last judgement Passed on 24 \
                 requests (success 100.0 %, p99 12ms)"
            ),
            "{frame}"
        );
        assert_shows(
            &frame,
            &[
                "01:15 of 02:00",
                "scenario outlier (v2 failing 30 %)",
                "payments v2",
                "v1  90.0 % (9)",
                "7 completed, 1 compensated",
                "! a note",
                "refused (Invalid): spec.backends",
                "orders → shipping",
            ],
        );
        assert!(
            frame.contains(
                "orders instances: 3 serving, 1 starting; autoscaler orders wants 4 \
                 (RequestsPerSecond 31.2 per instance); ScalingLimited: ScaleUpLimit"
            ),
            "{frame}"
        );
        // The full layout: headings in full, a blank line between parts.
        assert!(frame.contains("(inbound, last 5 s)"), "{frame}");
        assert!(frame.lines().any(str::is_empty), "{frame}");
    }

    /// The calls table keeps the columns it had when each layout spelled its own format.
    #[test]
    fn the_calls_table_aligns_its_columns_in_both_layouts() {
        let wide = [
            "calls                    failed  retries timeouts   breaker  ejections  ejected   \
             (since start; breaker and ejected now)",
            "orders → shipping       1000000  2000000        3 half-open          4        1",
        ];
        let compact = [
            "calls (since start)    failed  retry  tmout   breaker  ejct   out",
            "gateway → orders       1000000 2000000      3 half-open     4     1",
        ];
        for ((columns, rows), lines) in [((160, 50), wide), ((80, 24), compact)] {
            let frame = fitting(Fixture::busy(), columns, rows);
            for line in lines {
                assert!(
                    frame.lines().any(|l| l == line),
                    "{line:?} missing from:\n{frame}"
                );
            }
        }
    }

    #[test]
    fn an_80_by_24_frame_fits_and_keeps_what_matters() {
        let frame = fitting(Fixture::busy(), 80, 24);
        assert!(frame.starts_with("Weir shop 01:15 of 02:00"), "{frame}");
        for service in ["gateway", "inventory", "payments v1", "payments v2"] {
            assert!(frame.contains(service), "{service}:\n{frame}");
        }
        assert_shows(
            &frame,
            &[
                "canary v1=90 v2=10",
                "analysis: Progressing, step 2",
                "orders: 3 serving, 1 starting",
                "sagas 7 done, 1 compensated",
            ],
        );
        // The refusal is wrapped, not cut: its reason is on the screen.
        let text = frame.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            text.contains(
                "! TrafficSplit shop/payments refused (Invalid): spec.backends: the weights add \
                 up to 0"
            ),
            "{frame}"
        );
        assert!(frame.contains("Edit /home/someone"), "{frame}");
        assert!(!frame.lines().any(str::is_empty), "{frame}");
    }

    #[test]
    fn tiny_and_crowded_terminals_never_overflow() {
        let mut crowded = Fixture::busy();
        crowded.notes = (0..40)
            .map(|i| format!("note {i}: {}", "word ".repeat(30)))
            .collect();
        for (columns, rows) in [
            (80, 24),
            (40, 10),
            (20, 5),
            (1, 1),
            (0, 0),
            (200, 30),
            (130, 45),
        ] {
            let size = Size { columns, rows };
            for fixture in [Fixture::busy(), Fixture::busy(), crowded.clone_notes()] {
                let frame = fixture.frame(size);
                if columns >= 20 {
                    assert_fits(&frame, size);
                } else {
                    assert!(frame.lines().count() <= rows, "{frame}");
                }
            }
        }
        // With 40 notes on 80 × 24 the notes take the rows left, the calls give way first.
        let frame = fitting(crowded, 80, 24);
        assert!(frame.contains("! note 0:"), "{frame}");
        assert!(!frame.contains("orders → shipping"), "{frame}");
    }

    impl Fixture {
        fn clone_notes(&self) -> Self {
            Self {
                notes: self.notes.clone(),
                ..Self::busy()
            }
        }
    }

    #[test]
    fn long_words_are_cut_and_short_text_is_one_line() {
        assert_eq!(wrap("a b c", 80, "  "), vec!["a b c"]);
        assert_eq!(wrap("aaaa bbbb", 6, "  "), vec!["aaaa", "  bbbb"]);
        assert_eq!(wrap("abcdefghij", 5, "  "), vec!["abcd…"]);
        assert_eq!(cut("abcdef", 3), "ab…");
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abc", 0), "");
    }
}
