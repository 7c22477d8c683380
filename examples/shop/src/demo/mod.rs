//! `weir-shop demo`: the whole shop on one machine, with a live dashboard.
//!
//! One command starts, as separate processes, the control plane in local mode
//! (`weir-operator local` reading `examples/shop/mesh`), every service of the shop (this same
//! binary, `weir-shop <service>`) and a `weir-sidecar` beside each, on the loopback ports of the
//! shop's README (all moved by `--port-base`); then a traffic generator places orders through the gateway's sidecar, and
//! every second the launcher reads the sidecars' `/metrics` and shows, per service, requests/s,
//! success, p50/p99, the canary split the orders sidecar actually makes, breakers, ejections,
//! rate limiting and saga outcomes.
//!
//! With `--report FILE` it runs headless and writes the same figures as JSON; without a
//! terminal, or with a report, it prints a progress line every 5 s (time, scenario phase, orders,
//! instances, canary split) instead of the dashboard, and at the end the report's path;
//! `--scenario NAME` runs one of the scripted stories (see [`Scenario`]) against a private copy
//! of the mesh folder and reports the figures its checks need. Ctrl-C or SIGTERM ends a run cleanly: the traffic stops, the last figures are read,
//! then every child gets SIGTERM (the control plane last) and, after a grace period, SIGKILL.
//!
//! Layout: [`launch`] (binaries, folders, ports, signals, starting the processes), [`procs`]
//! (the children), [`mesh_folder`] (the run's mesh files), [`scaling`] (orders' instances under
//! the Autoscaler), [`topology`] (the addresses), [`traffic`] (the generator), [`prom`] and
//! [`figures`] (reading the sidecars), [`shop`] (the shop's own APIs: faults, sagas, records),
//! [`scenario`] (the scripts and their checks), [`dashboard`] (the frame), [`report`] (the JSON
//! report), [`web`] (the HTTP client), and this module, which runs it all.

mod dashboard;
mod figures;
mod launch;
mod mesh_folder;
mod procs;
mod prom;
mod report;
mod scaling;
mod scenario;
mod shop;
mod topology;
mod traffic;
mod web;

pub use scenario::Scenario;

use anyhow::{Context, Result};
use figures::Snapshot;
use launch::Layout;
use parking_lot::Mutex;
use procs::Children;
use report::{GRACE, PhaseMark, WINDOW};
use scenario::{Action, Step, Weights};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use topology::{GATEWAY, INSTANCES};
use traffic::{Kind, Traffic};

/// `weir-shop demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Stop after this long (`90s`, `2m`, `1m30s`); without it the demo runs until Ctrl-C
    /// (a scenario has a default length of its own).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Run headless and write the figures as JSON to FILE at the end.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Run a scripted scenario against a private copy of the mesh folder.
    #[arg(long, value_enum)]
    pub scenario: Option<Scenario>,
    /// Orders per second placed by the traffic generator (plus a home page visit per 4 orders);
    /// default 20, 50 for the canary scenario.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Reach `--rate` in a linear ramp over this long, from a tenth of it (`60s`, `2m`): the
    /// orders Autoscaler adds instances as the load grows. Default: the full rate at once.
    #[arg(long, value_parser = parse_duration)]
    pub ramp: Option<Duration>,
    /// Where the services keep their databases and the processes' logs. Default: a fresh
    /// temporary folder for a scenario (kept only when something failed), `weir-shop-data`
    /// next to this executable otherwise (so the shop's data survives restarts).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// The mesh folder the control plane reads. Default: this crate's `mesh` folder.
    #[arg(long, value_name = "DIR")]
    pub mesh: Option<PathBuf>,
    /// Move every port of the demo: the table's 18000–18328 (the control plane's config API
    /// and admin 18010/18011 among them) become N to N+328, in the run's mesh copy too.
    #[arg(long, value_name = "N", env = "WEIR_DEMO_PORT_BASE", default_value_t = topology::DEFAULT_PORT_BASE)]
    pub port_base: u16,
    /// Where `weir-operator` and `weir-sidecar` are. Default: next to this executable, built
    /// with cargo first if they are missing there.
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

/// Runs the demo to its end; the exit code is non-zero only when the shop could not be run
/// (a process did not start, or died), never for the figures themselves.
pub fn run(args: DemoArgs) -> ExitCode {
    // A thread of its own: the caller may already be inside a tokio runtime.
    let worker = std::thread::Builder::new()
        .name("weir-shop-demo".into())
        .spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the runtime")?;
            runtime.block_on(demo(args))
        });
    match worker.map(|w| w.join()) {
        Ok(Ok(Ok(()))) => ExitCode::SUCCESS,
        Ok(Ok(Err(e))) => {
            eprintln!("weir-shop demo: {e:#}");
            ExitCode::FAILURE
        }
        Ok(Err(_)) => {
            eprintln!("weir-shop demo: the launcher panicked");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("weir-shop demo: cannot start the launcher thread: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `90s`, `2m`, `1m30s`, `500ms`, or a plain number of seconds. Units are read by the proxy
/// API's parser of the mesh's durations, so a flag takes what a policy field takes (and refuses
/// an absurd length as too large instead of overflowing).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    match s.parse::<f64>() {
        Ok(secs) => {
            Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is not a duration"))
        }
        Err(_) => s
            .parse::<weir_proxy_api::Duration>()
            .map(weir_proxy_api::Duration::get)
            .map_err(|e| e.to_string()),
    }
}

/// What the signals asked for so far.
const RUNNING: u8 = 0;
/// The first SIGINT, SIGTERM or SIGHUP: stop in order (traffic, last figures, children).
const STOP: u8 = 1;
/// A second one: no more waiting; children that have not exited get SIGKILL.
const STOP_NOW: u8 = 2;

/// Snapshots kept for a scenario's phases before older ones are thinned out: five minutes at
/// one a second (a snapshot of every sidecar is some 100 to 300 KB).
const MAX_SNAPSHOTS: usize = 300;

/// Bounds the snapshots a run keeps: the first (the baseline of "since start") and the last
/// window's always; for a scenario, whose phases are measured afterwards, everything up to
/// [`MAX_SNAPSHOTS`], then every other one of the older half.
fn keep_snapshots(snapshots: &mut Vec<Snapshot>, phases: bool) {
    let recent = 2 * WINDOW.as_secs() as usize + 2;
    if !phases {
        if snapshots.len() > recent + 1 {
            snapshots.remove(1);
        }
        return;
    }
    if snapshots.len() > MAX_SNAPSHOTS {
        let half = snapshots.len() / 2;
        let mut i = 0;
        snapshots.retain(|_| {
            i += 1;
            i == 1 || i > half || i % 2 == 0
        });
    }
}

/// A scenario's script as it runs: the steps still to come and the phases so far.
#[derive(Debug, Default)]
struct Script {
    steps: Vec<Step>,
    next: usize,
    phases: Vec<PhaseMark>,
    /// Weights just written, waiting for the phase step that follows the edit.
    pending_weights: Option<(Weights, Arc<Mutex<Option<u64>>>)>,
    /// Bursts still being answered.
    bursts: Vec<tokio::task::JoinHandle<()>>,
}

impl Script {
    fn new(steps: Option<Vec<Step>>) -> Self {
        Self {
            steps: steps.unwrap_or_default(),
            ..Self::default()
        }
    }

    /// Carries out every step due at `now`.
    async fn run_due(
        &mut self,
        now: Duration,
        client: &web::Client,
        mesh: &std::path::Path,
        traffic: &Arc<Traffic>,
        notes: &mut Vec<String>,
    ) {
        while let Some(step) = self.steps.get(self.next).filter(|s| s.at <= now) {
            self.next += 1;
            match step.action.clone() {
                Action::Phase { name, settle } => {
                    if let Some(last) = self.phases.last_mut() {
                        last.end = Some(now);
                    }
                    let (weights, applied) = match self.pending_weights.take() {
                        Some((w, applied)) => (Some(w), applied),
                        None => (None, Arc::new(Mutex::new(None))),
                    };
                    self.phases.push(PhaseMark {
                        name,
                        measure_from: now + settle,
                        end: None,
                        weights,
                        applied,
                    });
                }
                Action::Weights { v1, v2 } => {
                    if let Err(e) = scenario::write_weights(mesh, v1, v2) {
                        notes.push(format!("editing the weights failed: {e:#}"));
                    }
                    let applied = Arc::new(Mutex::new(None));
                    tokio::spawn(shop::watch_weights_applied(
                        client.clone(),
                        v1,
                        v2,
                        applied.clone(),
                    ));
                    self.pending_weights = Some((Weights { v1, v2 }, applied));
                }
                Action::Faults {
                    instance,
                    error_rate,
                    hang,
                } => {
                    if let Err(e) = shop::set_faults(client, &instance, error_rate, hang).await {
                        notes.push(format!(
                            "setting the faults of {} failed: {e:#}",
                            instance.label()
                        ));
                    }
                }
                Action::Burst { count, token } => {
                    self.bursts
                        .push(tokio::spawn(traffic.clone().burst(count, token)));
                }
                Action::Rate(rate) => traffic.set_rate(rate),
                Action::Analysis => {
                    if let Err(e) = scenario::write_analysis(mesh) {
                        notes.push(format!("adding the canary analysis failed: {e:#}"));
                    }
                }
            }
        }
    }
}

/// What is shown while a run goes on: the dashboard on a terminal, a line every 5 s otherwise.
#[derive(Debug)]
struct Live<'a> {
    interactive: bool,
    elapsed: Duration,
    duration: Option<Duration>,
    rate: f64,
    scenario: Option<Scenario>,
    phase: Option<&'static str>,
    layout: &'a Layout,
    scaling: scaling::Scaling<'a>,
}

impl Live<'_> {
    /// `  35 s of 45 s, scenario canary, phase "50/50"`: where a headless run stands.
    fn progress(&self) -> String {
        let mut out = format!("{:>4.0} s", self.elapsed.as_secs_f64());
        if let Some(d) = self.duration {
            out.push_str(&format!(" of {:.0} s", d.as_secs_f64()));
        }
        if let Some(s) = self.scenario {
            out.push_str(&format!(", scenario {}", s.name()));
        }
        if let Some(p) = self.phase {
            out.push_str(&format!(", phase {p:?}"));
        }
        out
    }

    /// Draws a frame (or prints a line when the last was 5 s ago); returns when a line was
    /// last printed.
    fn show(
        &self,
        snapshots: &[Snapshot],
        traffic: &Traffic,
        notes: &[String],
        last_line: Duration,
    ) -> Duration {
        let (Some(first), Some(last)) = (snapshots.first(), snapshots.last()) else {
            return last_line;
        };
        let window_from = last.at.saturating_sub(WINDOW);
        let window = figures::mesh_figures(report::span(snapshots, window_from, last.at));
        let orders = traffic.cumulative(Kind::Order);
        if !self.interactive {
            if self.elapsed < last_line + Duration::from_secs(5) {
                return last_line;
            }
            println!(
                "{}: {} orders completed, {} compensated, {} rate limited, {} failed; orders instances {}; canary {}",
                self.progress(),
                orders.completed,
                orders.compensated,
                orders.rate_limited,
                orders.server_errors + orders.unanswered,
                self.scaling.summary(),
                window.split.percent_line(0)
            );
            // A refused edit changes nothing in the figures: say so on every line until fixed.
            if let Some(last) = snapshots.last() {
                for refusal in &last.refusals {
                    println!("  ! {refusal}");
                }
            }
            return self.elapsed;
        }
        let split_now =
            figures::mesh_figures(&snapshots[snapshots.len().saturating_sub(2)..]).split;
        let cumulative = figures::mesh_figures(&[first.clone(), last.clone()]);
        let home = traffic.cumulative(Kind::Home);
        let orders_window = traffic.figures(Kind::Order, |o| o.done >= window_from);
        // A plain run's edits go to the source folder (the run's folder links to its files).
        let mesh_dir = if self.scenario.is_some() {
            &self.layout.mesh
        } else {
            &self.layout.source_mesh
        }
        .display()
        .to_string();
        let logs_dir = self.layout.logs.display().to_string();
        let frame_notes = live_notes(snapshots, traffic, notes);
        let view = dashboard::View {
            elapsed: self.elapsed,
            duration: self.duration,
            rate: self.rate,
            scenario: self.scenario.map(Scenario::name),
            phase: self.phase,
            window: &window,
            split_now: &split_now,
            cumulative: &cumulative,
            orders: &orders,
            home: &home,
            orders_window: &orders_window,
            mesh_dir: &mesh_dir,
            logs_dir: &logs_dir,
            notes: &frame_notes,
            scaling: &self.scaling,
            rollout: last.rollout.as_ref(),
        };
        let mut out = std::io::stdout().lock();
        let _ = write!(
            out,
            "{}{}",
            dashboard::CLEAR,
            dashboard::render(&view, dashboard::Size::of_stdout())
        );
        let _ = out.flush();
        last_line
    }
}

fn live_notes(snapshots: &[Snapshot], traffic: &Traffic, notes: &[String]) -> Vec<String> {
    let mut out: Vec<String> = notes.to_vec();
    if let Some(last) = snapshots.last() {
        out.extend(last.refusals.iter().cloned());
        if last.operator.is_none() {
            out.push("the control plane's admin does not answer".into());
        }
        for (i, s) in last.sidecars.iter().enumerate() {
            if s.is_none() {
                out.push(format!(
                    "the {} sidecar's /metrics does not answer",
                    INSTANCES[i].label()
                ));
            }
        }
    }
    let skipped = traffic.skipped();
    if skipped > 0 {
        out.push(format!(
            "{skipped} orders not sent: too many requests were waiting for answers"
        ));
    }
    out
}

async fn demo(args: DemoArgs) -> Result<()> {
    topology::set_port_base(args.port_base).map_err(anyhow::Error::msg)?;
    // The binaries first (a first build takes minutes), then the ports, so that the check is
    // about the moment the services start, not the moment the build began.
    let layout = Layout::prepare(&args)?;
    launch::check_ports_free()?;
    let scenario = args.scenario;
    let duration = args
        .duration
        .or_else(|| scenario.map(Scenario::default_duration));
    let rate = args
        .rate
        .unwrap_or_else(|| scenario.map_or(20.0, Scenario::default_rate));
    let interactive = args.report.is_none() && std::io::stdout().is_terminal();
    let quiet = args.report.is_some();
    let (stop_tx, mut stop_rx) = watch::channel(RUNNING);
    launch::watch_signals(stop_tx)?;
    let client = web::client();
    let mut children = Children::default();

    eprintln!(
        "weir-shop demo: starting the control plane, 6 services and their sidecars (logs in {}) …",
        layout.logs.display()
    );
    if let Err(e) = launch::start_everything(&layout, &mut children, &client, &stop_rx).await {
        let interrupted = *stop_rx.borrow() != RUNNING;
        children.stop(GRACE, stop_rx.clone()).await;
        if interrupted {
            eprintln!("weir-shop demo: interrupted while starting; everything is stopped");
            return Ok(());
        }
        eprintln!("weir-shop demo: logs are in {}", layout.logs.display());
        return Err(e);
    }
    eprintln!(
        "weir-shop demo: dashboard at http://{}/dashboard",
        topology::control_plane_admin()
    );
    let skus = shop::stock_skus(&client).await;
    shop::fund_accounts(&client).await;

    // The run's clock: traffic, snapshots and the scenario's steps all count from here.
    let start = Instant::now();
    let keep_all = duration.is_some();
    let traffic = Arc::new(Traffic::new(GATEWAY.inbound_addr(), start, skus, keep_all));
    let (traffic_stop_tx, traffic_stop_rx) = watch::channel(false);
    let ramp = args.ramp.filter(|r| !r.is_zero());
    let generator = tokio::spawn(traffic.clone().run(
        if ramp.is_some() { rate / 10.0 } else { rate },
        traffic_stop_rx,
    ));
    if let Some(ramp) = ramp {
        tokio::spawn(traffic.clone().ramp(rate / 10.0, rate, ramp));
    }
    let mut script =
        Script::new(scenario.map(|s| s.steps(duration.unwrap_or(s.default_duration()))));
    let mut notes: Vec<String> = Vec::new();
    let mut snapshots: Vec<Snapshot> = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failure: Option<anyhow::Error> = None;
    let mut last_line = Duration::ZERO;
    let mut scaler = scaling::OrdersScaler::new(layout.orders_file.clone());

    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop_rx.wait_for(|s| *s != RUNNING) => break,
        }
        let now = start.elapsed();
        let snapshot = figures::scrape(
            &client,
            now,
            Duration::from_millis(800),
            &scaler.running_extra(),
        )
        .await;
        snapshots.push(snapshot);
        keep_snapshots(&mut snapshots, scenario.is_some());

        script
            .run_due(now, &client, &layout.mesh, &traffic, &mut notes)
            .await;
        if scenario.is_none()
            && let Err(e) = mesh_folder::sync_links(
                &layout.source_mesh,
                &layout.mesh,
                layout
                    .orders_file
                    .as_ref()
                    .map(|(source, _)| source.as_path()),
            )
        {
            let note = format!("following the mesh folder failed: {e:#}");
            if !notes.contains(&note) {
                notes.push(note);
            }
        }
        scaler
            .tick(now, &client, &layout, &mut children, &mut notes)
            .await;

        if let Some((child, status)) = children.first_exited() {
            failure = Some(anyhow::anyhow!(
                "the {} exited ({}) while the demo ran\n{}",
                child.name,
                procs::describe(status),
                child.log_tail(15)
            ));
            break;
        }

        // Headless runs print a progress line every 5 s instead of the dashboard.
        let live = Live {
            interactive,
            elapsed: now,
            duration,
            rate: traffic.rate(),
            scenario,
            phase: script.phases.last().map(|p| p.name),
            layout: &layout,
            scaling: scaler.dashboard(),
        };
        last_line = live.show(&snapshots, &traffic, &notes, last_line);

        if duration.is_some_and(|d| now >= d) {
            break;
        }
    }

    // Stop the traffic and let what is in flight finish, then read the last figures.
    let end = start.elapsed();
    let _ = traffic_stop_tx.send(true);
    let _ = generator.await;
    // In-flight answers come within the client timeout; a second Ctrl-C cuts the wait short.
    let mut force = stop_rx.clone();
    tokio::select! {
        _ = async {
            for b in script.bursts.drain(..) {
                let _ = tokio::time::timeout(Duration::from_secs(12), b).await;
            }
            traffic.drain(Duration::from_secs(11)).await;
        } => {}
        _ = force.wait_for(|s| *s == STOP_NOW) => {}
    }
    if let Some(last) = script.phases.last_mut()
        && last.end.is_none()
    {
        last.end = Some(end);
    }
    let final_snapshot = figures::scrape(
        &client,
        start.elapsed(),
        Duration::from_secs(2),
        &scaler.running_extra(),
    )
    .await;
    snapshots.push(final_snapshot);

    let compensation = if scenario == Some(Scenario::Compensate) && failure.is_none() {
        // Clear the fault and let orders finish compensations that were waiting for shipping.
        let _ = shop::set_faults(&client, &topology::SHIPPING, 0.0, false).await;
        if !shop::wait_sagas_settled(&client, Duration::from_secs(30)).await {
            notes.push("orders still had unfinished sagas 30 s after the traffic stopped".into());
        }
        let orders = traffic.outcomes(|o| o.kind == Kind::Order);
        Some(shop::check_compensation(&client, &orders).await)
    } else {
        None
    };
    // Where the payments rollout stands, as the control plane's `/status` shows it.
    let rollout = if matches!(scenario, Some(Scenario::Rollout | Scenario::RolloutFailing)) {
        match web::get(&client, topology::control_plane_admin(), "/status").await {
            Ok(answer) => serde_json::from_slice(&answer.body)
                .ok()
                .and_then(|status| scenario::Rollout::from_status(&status)),
            Err(e) => {
                notes.push(format!("reading the control plane's /status failed: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    let recorded_by_orders = if failure.is_none() {
        shop::saga_states(&client).await
    } else {
        None
    };

    if let Some(e) = &failure {
        notes.push(format!("{e:#}"));
    }
    let mut report = report::build_report(
        scenario,
        rate,
        end,
        &snapshots,
        &script.phases,
        &traffic,
        compensation,
        recorded_by_orders,
        scaler.figures(),
        rollout,
        notes,
        &layout,
    );

    if interactive {
        println!("\nstopping …");
    }
    let shutdown = children.stop(GRACE, stop_rx.clone()).await;
    report.clean_shutdown = shutdown.iter().all(|s| s.clean);
    report.shutdown = shutdown;

    if let Some(path) = &args.report {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        // Absolute, so that it can be opened from wherever the run was started.
        let shown = std::path::absolute(path).unwrap_or_else(|_| path.clone());
        println!("weir-shop demo: report written to {}", shown.display());
    }
    if !quiet {
        report::print_summary(&report);
    }
    if let Some(e) = failure {
        eprintln!("weir-shop demo: logs kept in {}", layout.logs.display());
        return Err(e);
    }
    let keep = !report.clean_shutdown || report.passed == Some(false);
    if layout.temporary {
        if keep {
            eprintln!(
                "weir-shop demo: something failed; data and logs kept in {}",
                layout.data.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&layout.data);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each flag text and the duration it gives (`None`: refused, without a panic).
    #[test]
    fn durations_parse_as_seconds_or_with_units() {
        let secs = |s| Some(Duration::from_secs(s));
        let cases = [
            ("90s", secs(90)),
            ("2m", secs(120)),
            ("1m30s", secs(90)),
            ("1.5h", secs(5400)),
            ("500ms", Some(Duration::from_millis(500))),
            ("12", secs(12)),
            (" 2.5 ", Some(Duration::from_millis(2500))),
            ("12 parsecs", None),
            ("", None),
            ("s", None),
            ("-3", None),
            ("NaN", None),
            ("1e30", None),
            ("99999999999999999999h", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text).ok(), expected, "--duration {text:?}");
        }
    }

    #[test]
    fn spans_pick_snapshots_by_time() {
        let snaps: Vec<Snapshot> = (0..10)
            .map(|s| Snapshot {
                at: Duration::from_millis(s * 1000 + 20),
                ..Snapshot::default()
            })
            .collect();
        let s = report::span(&snaps, Duration::from_secs(3), Duration::from_secs(6));
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].at, Duration::from_millis(3020));
        assert_eq!(s[3].at, Duration::from_millis(6020));
    }

    #[test]
    fn snapshots_stay_bounded() {
        let snap = |s: u64| Snapshot {
            at: Duration::from_secs(s),
            ..Snapshot::default()
        };
        let mut plain = Vec::new();
        for s in 0..100 {
            plain.push(snap(s));
            keep_snapshots(&mut plain, false);
        }
        assert_eq!(plain.len(), 2 * WINDOW.as_secs() as usize + 3);
        assert_eq!(plain[0].at, Duration::ZERO);
        assert_eq!(plain.last().unwrap().at, Duration::from_secs(99));
        let mut scenario = Vec::new();
        for s in 0..1000 {
            scenario.push(snap(s));
            keep_snapshots(&mut scenario, true);
        }
        assert!(scenario.len() <= MAX_SNAPSHOTS);
        assert_eq!(scenario[0].at, Duration::ZERO);
        assert_eq!(scenario.last().unwrap().at, Duration::from_secs(999));
        assert!(scenario.windows(2).all(|w| w[0].at < w[1].at));
    }
}
