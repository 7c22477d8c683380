//! `weir-bench`: what the weir sidecar costs, against calling the upstream directly and against
//! HAProxy, measured in one run on one machine.
//!
//! A run starts an upstream HTTP/1.1 server (this binary again, `weir-bench upstream`, so that
//! it has a process and a runtime of its own) and measures, each phase after a warm-up that is
//! not counted:
//!
//! - **maximum throughput**, closed loop (every connection sends its next request as soon as
//!   the previous answer is in), directly, through the sidecar's outbound listener, and through
//!   HAProxy when it is installed; with the peak RSS (`VmHWM`) of each proxy;
//! - **latency at a fixed rate**, open loop, at half the sidecar's maximum, directly and through
//!   each proxy. The p99 the sidecar adds is its p99 minus the direct one. Closed-loop latency
//!   would not do: there the load adapts to the target (a slow answer delays the requests
//!   behind it, which are then never sent late), so the worst moments are under-sampled
//!   ("coordinated omission"), and at full throughput latency is mostly queueing anyway. The
//!   open loop sends on a fixed schedule and times every request from when it was due, so a
//!   stall shows in every request it delays;
//! - **the cost of policy**: a sidecar whose service points at its own inbound listener (the
//!   outbound and the inbound path in one process, as between two meshed pods), once with no
//!   policy and once with every policy on (timeouts, retries with a budget, circuit breaker,
//!   outlier detection, least-request balancing outbound; rate limit, bulkhead and timeout
//!   inbound), all set so that they never change an answer.
//!
//! Only 2xx answers count as served, and non-2xx answers and failed requests are shown: a proxy
//! that answers errors fast must not look fast. The target lines are informational; the exit
//! status does not depend on them.
//!
//! Load generator, upstream and proxy share the machine's CPUs, so absolute figures say little
//! and the ratios are the point. Two figures help read them: each proxy's CPU time per request
//! (from `/proc/PID/stat`, independent of how the CPUs were shared), and, on stderr, how many
//! CPUs other processes kept busy during each phase; a build running alongside skews a run, and
//! the report says so.
//!
//! The subcommands measure what the default run cannot: `weir-bench instructions`
//! ([`instructions`]) counts instructions and syscalls per proxied request under callgrind and
//! strace, deterministic on a shared machine; `weir-bench soak` ([`soak`]) keeps the sidecar
//! under half load with hostile traffic and churning configs for minutes and reports what
//! should not have happened; `weir-bench one-core` ([`one_core`]) compares the sidecar and
//! HAProxy one thread each on one pinned CPU, the load generator on another, in interleaved
//! rounds.

mod config;
mod instructions;
mod load;
mod one_core;
mod procs;
mod report;
mod soak;
mod upstream;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use load::{Stats, Target};
use procs::{Launch, Proc, SidecarAddrs, TempDir};
use report::{Check, Entry, Row, fmt_ms, fmt_ratio, ratio};
use serde_json::json;
use std::cell::Cell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// Throughput, latency and memory of the weir sidecar against a direct call and HAProxy.
#[derive(Debug, Parser)]
#[command(name = "weir-bench", version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// How long each phase is measured (`10s`, `500ms`, or seconds).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,

    /// Warm-up before each measured phase, not counted.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,

    /// Keep-alive connections the load generator uses.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    connections: u32,

    /// The sidecar binary [default: `weir-sidecar` next to this executable].
    #[arg(long, value_name = "PATH")]
    sidecar: Option<PathBuf>,

    /// Measure latency at this many requests per second instead of half the sidecar's
    /// maximum (the p99 target is only checked at half the maximum).
    #[arg(long, value_name = "REQ_PER_S", value_parser = parse_rate)]
    rate: Option<f64>,

    /// Measure only direct and HAProxy (e.g. while the sidecar does not build).
    #[arg(long, conflicts_with = "sidecar")]
    skip_sidecar: bool,

    /// Do not measure HAProxy even if it is installed.
    #[arg(long, conflicts_with = "haproxy")]
    skip_haproxy: bool,

    /// The HAProxy binary [default: `haproxy` on PATH, else in /usr/sbin; skipped if absent].
    #[arg(long, value_name = "PATH")]
    haproxy: Option<PathBuf>,

    /// Also write the figures as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The upstream server the bench starts; exits when its stdin closes.
    #[command(hide = true)]
    Upstream {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// The sidecar for a long while (10 minutes by default) under half its maximum load, with
    /// slow, failing, cancelled and malformed requests, silent connections and a config that
    /// changes every few seconds; reports what should not have happened, RSS drift and the
    /// sidecar's refusal counts. Exits non-zero only if the sidecar died or hung.
    Soak(soak::SoakArgs),
    /// Instructions (callgrind) and syscalls (strace) per proxied request, for the sidecar,
    /// HAProxy and nginx side by side: deterministic where wall-clock figures are not.
    Instructions(instructions::InstructionsArgs),
    /// Maximum throughput of the sidecar and HAProxy, each one thread on one CPU with the
    /// upstream, the load generator alone on another, in interleaved rounds; the ratio of the
    /// medians.
    OneCore(one_core::OneCoreArgs),
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs),
        Ok(_) => return Err("must be a non-negative number of seconds".into()),
        Err(_) => s
            .parse::<weir_proxy_api::Duration>()
            .map_err(|e| e.to_string())?
            .get(),
    };
    Ok(d)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 1.0 => Ok(rate),
        _ => Err("must be a number of requests per second, at least 1".into()),
    }
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    match args.command {
        Some(Command::Upstream { listen }) => return upstream::run(listen),
        Some(Command::Soak(soak)) => return block_on_interruptible(soak::run(soak)),
        Some(Command::Instructions(args)) => {
            return block_on_interruptible(instructions::run(args));
        }
        Some(Command::OneCore(args)) => return one_core::run(args),
        None => {}
    }
    anyhow::ensure!(
        !args.duration.is_zero(),
        "--duration must be greater than 0"
    );
    let bench = Bench::new(args)?;
    block_on_interruptible(bench.run())
}

/// Runs `work` on a multi-threaded runtime until it ends or Ctrl-C or SIGTERM arrives; then it
/// is dropped, and with it every process it started and its temp dir.
fn block_on_interruptible(work: impl Future<Output = Result<()>>) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    interruptible(&runtime, work)
}

/// Runs `work` on `runtime` until it ends or Ctrl-C or SIGTERM arrives.
fn interruptible(
    runtime: &tokio::runtime::Runtime,
    work: impl Future<Output = Result<()>>,
) -> Result<()> {
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = work => result,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            _ = term.recv() => bail!("terminated"),
        }
    })
}

/// The sidecar binary: `path`, or `weir-sidecar` next to this executable.
fn sidecar_path(path: Option<&Path>) -> Result<PathBuf> {
    let path = match path {
        Some(path) => path.to_owned(),
        None => std::env::current_exe()
            .context("finding the bench's own executable")?
            .with_file_name("weir-sidecar"),
    };
    if !path.is_file() {
        bail!(
            "no sidecar binary at {}: build it with `cargo build --release -p weir-sidecar`, \
             or pass --sidecar PATH",
            path.display()
        );
    }
    Ok(path)
}

/// Other processes using this many CPUs during a phase get a warning under the table.
const NOISY_OTHER_CPUS: f64 = 0.1;

/// The figures of one whole run.
#[derive(Debug)]
struct Report {
    throughput: Vec<(String, Entry)>,
    /// The open-loop rate and how it was chosen.
    open_rate: Option<(f64, &'static str)>,
    latency: Vec<(String, Entry)>,
    policy: Vec<(String, Entry)>,
    errors: Vec<String>,
}

#[derive(Debug)]
struct Bench {
    args: Args,
    sidecar_bin: Option<PathBuf>,
    haproxy_bin: Option<PathBuf>,
    dir: TempDir,
    upstream: Proc,
    upstream_addr: SocketAddr,
    started: Instant,
    /// The most CPUs other processes kept busy during a phase.
    busiest_other: Cell<f64>,
}

impl Bench {
    fn new(args: Args) -> Result<Self> {
        let sidecar_bin = if args.skip_sidecar {
            None
        } else {
            Some(
                sidecar_path(args.sidecar.as_deref())
                    .context("the sidecar is measured unless --skip-sidecar is given")?,
            )
        };
        let haproxy_bin = match &args.haproxy {
            _ if args.skip_haproxy => None,
            Some(path) if !path.is_file() => bail!("no HAProxy binary at {}", path.display()),
            Some(path) => Some(path.clone()),
            None => procs::find_haproxy(),
        };
        let (upstream, upstream_addr) = procs::start_upstream()?;
        Ok(Self {
            args,
            sidecar_bin,
            haproxy_bin,
            dir: TempDir::new()?,
            upstream,
            upstream_addr,
            started: Instant::now(),
            busiest_other: Cell::new(0.0),
        })
    }

    fn connections(&self) -> usize {
        self.args.connections as usize
    }

    fn progress(&self, what: &str) {
        eprintln!("[{:>5.1}s] {what}", self.started.elapsed().as_secs_f64());
    }

    /// The processes whose CPU time a phase records, in the order of `load::CPU_*`.
    fn watch(&self, proxy: Option<&Proc>) -> Vec<u32> {
        let mut pids = vec![std::process::id(), self.upstream.pid()];
        pids.extend(proxy.map(Proc::pid));
        pids
    }

    fn report_phase(&self, label: &str, stats: &Stats) {
        let cpu = |i| {
            stats
                .cpu_us_per_request(i)
                .map_or_else(|| "-".into(), |us| format!("{us:.1}"))
        };
        self.progress(&format!(
            "{label}: {:.0} req/s, p50 {} ms, p99 {} ms, {} non-2xx, {} errors; CPU µs per \
             request: load generator {}, upstream {}, proxy {}; other processes {} CPUs",
            stats.rps(),
            fmt_ms(stats.quantile_ms(0.5)),
            fmt_ms(stats.quantile_ms(0.99)),
            stats.non_2xx,
            stats.errors,
            cpu(load::CPU_LOAD_GENERATOR),
            cpu(load::CPU_UPSTREAM),
            cpu(load::CPU_PROXY),
            stats
                .other_cpus
                .map_or_else(|| "-".into(), |c| format!("{c:.2}")),
        ));
        if let Some(other) = stats.other_cpus {
            self.busiest_other.set(self.busiest_other.get().max(other));
        }
    }

    async fn closed(&self, label: &str, target: &Target, proxy: Option<&Proc>) -> Result<Stats> {
        self.phase(label, target, None, proxy).await
    }

    async fn open(
        &self,
        label: &str,
        target: &Target,
        rate: f64,
        proxy: Option<&Proc>,
    ) -> Result<Stats> {
        self.phase(label, target, Some(rate), proxy).await
    }

    /// One measured phase: maximum throughput (closed loop) without a `rate`, else latency at
    /// that rate (open loop).
    async fn phase(
        &self,
        label: &str,
        target: &Target,
        rate: Option<f64>,
        proxy: Option<&Proc>,
    ) -> Result<Stats> {
        let (connections, warmup, duration) =
            (self.connections(), self.args.warmup, self.args.duration);
        let watch = self.watch(proxy);
        let stats = match rate {
            None => {
                self.progress(&format!("{label}: maximum throughput (closed loop)"));
                load::closed_loop(target, connections, warmup, duration, &watch).await?
            }
            Some(rate) => {
                self.progress(&format!("{label}: latency at {rate:.0} req/s (open loop)"));
                load::open_loop(target, connections, rate, warmup, duration, &watch).await?
            }
        };
        self.report_phase(label, &stats);
        Ok(stats)
    }

    async fn run(self) -> Result<()> {
        let report = self.measure(self.upstream_addr).await?;
        let checks = checks(&report);
        self.print(&report, &checks);
        if let Some(path) = &self.args.json {
            let doc = self.json(&report, &checks);
            std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    async fn measure(&self, upstream: SocketAddr) -> Result<Report> {
        let mut report = Report {
            throughput: Vec::new(),
            open_rate: self.args.rate.map(|rate| (rate, "set by --rate")),
            latency: Vec::new(),
            policy: Vec::new(),
            errors: Vec::new(),
        };
        let direct = Target::new(upstream, &upstream.to_string())?;
        smoke(&direct, None)
            .await
            .context("the upstream does not answer")?;
        let direct_max = self.closed("direct", &direct, None).await?;
        report.throughput.push((
            "direct".into(),
            Entry::Measured(Row::new(&direct_max, None)),
        ));

        // The sidecar, outbound only: maximum, then latency at half of it; then HAProxy:
        // maximum, then latency at the same rate.
        let haproxy_missing = match self.args.skip_haproxy {
            true => "--skip-haproxy",
            false => "no haproxy on PATH",
        };
        let mut opens = Vec::new();
        for (proxy, bin, missing, basis) in [
            (
                "sidecar",
                &self.sidecar_bin,
                "--skip-sidecar",
                "half the sidecar's maximum",
            ),
            (
                "haproxy",
                &self.haproxy_bin,
                haproxy_missing,
                "half HAProxy's maximum",
            ),
        ] {
            let (entry, open) = match bin {
                None => (Entry::Skipped(missing.into()), None),
                Some(bin) => {
                    let started = match proxy {
                        "sidecar" => self.single_hop(bin, upstream).await,
                        _ => self.haproxy(bin, upstream).await,
                    };
                    let open_rate = &mut report.open_rate;
                    measured(self.max_then_open(proxy, started, open_rate, basis).await)
                }
            };
            report.throughput.push((proxy.into(), entry));
            opens.extend(open.map(|entry| (proxy.to_owned(), entry)));
        }

        // Direct at the same rate: the baseline the proxies' latency is compared with.
        set_half(&mut report.open_rate, &direct_max, "half direct's maximum");
        if let Some((rate, _)) = report.open_rate {
            let stats = self.open("direct", &direct, rate, None).await;
            report.latency.push((
                "direct".into(),
                Entry::from_result(stats.map(|s| Row::new(&s, None))),
            ));
            report.latency.extend(opens);
        }

        // The cost of policy, outbound → inbound in one sidecar.
        if let Some(bin) = &self.sidecar_bin {
            for (label, all) in [("no policy", false), ("all policies", true)] {
                let result = self.two_hop(bin, upstream, all).await;
                report.policy.push((
                    format!("sidecar 2-hop, {label}"),
                    Entry::from_result(result),
                ));
            }
        }
        for (name, entry) in report
            .throughput
            .iter()
            .chain(&report.latency)
            .chain(&report.policy)
        {
            if let Entry::Failed(e) = entry {
                report.errors.push(format!("{name}: {e}"));
            }
        }
        Ok(report)
    }

    /// The sidecar with its service pointing at the upstream, answering.
    async fn single_hop(&self, bin: &Path, upstream: SocketAddr) -> Result<(Proc, Target)> {
        let addrs = SidecarAddrs::pick()?;
        let config = config::proxy_config(upstream, false);
        let dir = self.dir.path();
        let launch = Launch::default();
        let sidecar =
            procs::start_sidecar(bin, dir, "outbound", &config, addrs, upstream, &launch).await?;
        let target = Target::new(sidecar.outbound, config::SERVICE)?;
        smoke(&target, Some(&sidecar.proc)).await?;
        Ok((sidecar.proc, target))
    }

    /// HAProxy in front of the upstream, answering.
    async fn haproxy(&self, bin: &Path, upstream: SocketAddr) -> Result<(Proc, Target)> {
        let (proc, listen) =
            procs::start_haproxy(bin, self.dir.path(), upstream, self.args.connections).await?;
        let target = Target::new(listen, config::SERVICE)?;
        smoke(&target, Some(&proc)).await?;
        Ok((proc, target))
    }

    /// A proxy's maximum throughput, then its latency at `open_rate` (set to half the maximum,
    /// said to be `basis`, if there is none yet), and its peak RSS over both; then it stops.
    async fn max_then_open(
        &self,
        label: &str,
        started: Result<(Proc, Target)>,
        open_rate: &mut Option<(f64, &'static str)>,
        basis: &'static str,
    ) -> Result<(Row, Option<Entry>)> {
        let (proc, target) = started?;
        let target = &target;
        let max = self.closed(label, target, Some(&proc)).await?;
        set_half(open_rate, &max, basis);
        let open = match *open_rate {
            Some((rate, _)) => Some(self.open(label, target, rate, Some(&proc)).await),
            None => None,
        };
        let rss = proc.peak_rss_kib();
        proc.stop();
        let open = open.map(|o| Entry::from_result(o.map(|s| Row::new(&s, rss))));
        Ok((Row::new(&max, rss), open))
    }

    /// A sidecar whose service's endpoint is its own inbound listener, whose app is the
    /// upstream: every request crosses the outbound and the inbound path.
    async fn two_hop(&self, bin: &Path, upstream: SocketAddr, all_policies: bool) -> Result<Row> {
        let addrs = SidecarAddrs::pick()?;
        let config = config::proxy_config(addrs.inbound, all_policies);
        let label = if all_policies { "all" } else { "none" };
        let sidecar = procs::start_sidecar(
            bin,
            self.dir.path(),
            &format!("two-hop-{label}"),
            &config,
            addrs,
            upstream,
            &Launch::default(),
        )
        .await?;
        debug_assert_eq!(sidecar.inbound, addrs.inbound);
        let target = Target::new(sidecar.outbound, config::SERVICE)?;
        smoke(&target, Some(&sidecar.proc)).await?;
        let max = self
            .closed(
                &format!("sidecar 2-hop, {label}"),
                &target,
                Some(&sidecar.proc),
            )
            .await?;
        let rss = sidecar.proc.peak_rss_kib();
        sidecar.proc.stop();
        Ok(Row::new(&max, rss))
    }

    fn print(&self, report: &Report, checks: &[Check]) {
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        println!(
            "\nweir-bench: {} connections, {:?} per phase after {:?} warm-up, {cpus} CPUs \
             shared by load generator, upstream and proxy",
            self.args.connections, self.args.duration, self.args.warmup
        );
        println!("\nMaximum throughput (closed loop)");
        println!("{}", report::table(&report.throughput));
        if let Some((rate, basis)) = report.open_rate {
            println!("\nLatency at {rate:.0} req/s, {basis} (open loop)");
            println!("{}", report::table(&report.latency));
        }
        if !report.policy.is_empty() {
            println!("\nOutbound → inbound in one sidecar (closed loop)");
            println!("{}", report::table(&report.policy));
        }
        println!("\nRatios");
        let direct = find(&report.throughput, "direct");
        let sidecar = find(&report.throughput, "sidecar");
        let haproxy = find(&report.throughput, "haproxy");
        for (name, other) in [("direct", direct), ("haproxy", haproxy)] {
            println!(
                "  sidecar / {name:<8} throughput {:>6}   p50 {:>6}   p99 {:>6}",
                fmt_ratio(ratio(sidecar.map(|r| r.rps), other.map(|r| r.rps))),
                fmt_ratio(ratio(
                    sidecar.and_then(|r| r.p50_ms),
                    other.and_then(|r| r.p50_ms)
                )),
                fmt_ratio(ratio(
                    sidecar.and_then(|r| r.p99_ms),
                    other.and_then(|r| r.p99_ms)
                )),
            );
        }
        let none = find(&report.policy, "sidecar 2-hop, no policy");
        let all = find(&report.policy, "sidecar 2-hop, all policies");
        println!(
            "  all policies / no policy (2-hop) throughput {:>6}",
            fmt_ratio(ratio(all.map(|r| r.rps), none.map(|r| r.rps)))
        );
        for proxy in ["sidecar", "haproxy"] {
            if let Some(added) = p99_added(&report.latency, proxy) {
                println!("  p99 added by {proxy} in the open loop: {added:+.3} ms");
            }
        }
        let other = self.busiest_other.get();
        if other >= NOISY_OTHER_CPUS {
            println!(
                "\nNote: other processes kept up to {other:.2} CPUs busy during a phase; the \
                 figures are noisy (see the progress lines on stderr)."
            );
        }
        println!("\nTargets");
        for check in checks {
            println!("{}", check.line());
        }
        if !report.errors.is_empty() {
            println!("\nFailures");
            for e in &report.errors {
                println!("{e}");
            }
        }
    }

    fn json(&self, report: &Report, checks: &[Check]) -> serde_json::Value {
        json!({
            "parameters": {
                "connections": self.args.connections,
                "durationSeconds": self.args.duration.as_secs_f64(),
                "warmupSeconds": self.args.warmup.as_secs_f64(),
                "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            },
            "busiestOtherProcessesCpus": (self.busiest_other.get() * 100.0).round() / 100.0,
            "throughput": report::entries_json(&report.throughput),
            "latency": {
                "rate": report.open_rate.map(|(rate, _)| rate.round()),
                "rateBasis": report.open_rate.map(|(_, basis)| basis),
                "targets": report::entries_json(&report.latency),
            },
            "policy": report::entries_json(&report.policy),
            "checks": checks.iter().map(Check::to_json).collect::<Vec<_>>(),
        })
    }
}

/// Sets the open-loop rate, unless it is set already, to half the throughput in `max` (if
/// that is at least one request per second).
/// A proxy's throughput entry and, when it was measured, its open-loop entry.
fn measured(result: Result<(Row, Option<Entry>)>) -> (Entry, Option<Entry>) {
    match result {
        Ok((row, open)) => (Entry::Measured(row), open),
        Err(e) => (Entry::from_result(Err(e)), None),
    }
}

fn set_half(open_rate: &mut Option<(f64, &'static str)>, max: &Stats, basis: &'static str) {
    let half = max.rps() / 2.0;
    if open_rate.is_none() && half >= 1.0 {
        *open_rate = Some((half, basis));
    }
}

fn find<'a>(entries: &'a [(String, Entry)], name: &str) -> Option<&'a Row> {
    entries
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, e)| e.row())
}

/// `proxy`'s open-loop p99 minus direct's, in ms.
fn p99_added(latency: &[(String, Entry)], proxy: &str) -> Option<f64> {
    let proxy = find(latency, proxy)?.p99_ms?;
    let direct = find(latency, "direct")?.p99_ms?;
    Some(proxy - direct)
}

fn checks(report: &Report) -> Vec<Check> {
    let sidecar = find(&report.throughput, "sidecar");
    let haproxy = find(&report.throughput, "haproxy");
    let rps = |row: Option<&Row>| row.map(|r| r.rps);
    // Both throughput targets: `a`'s rate at least `floor` times `b`'s.
    let throughput = |target: &str, a: Option<&Row>, b: Option<&Row>, floor: f64| {
        let (a_rps, b_rps) = (rps(a).unwrap_or(0.0), rps(b).unwrap_or(0.0));
        Check::new(
            target,
            ratio(rps(a), rps(b)),
            |r| r >= floor,
            |r| format!("{} ({a_rps:.0} vs {b_rps:.0} req/s)", fmt_ratio(Some(r))),
            &[a, b],
        )
    };
    let none = find(&report.policy, "sidecar 2-hop, no policy");
    let all = find(&report.policy, "sidecar 2-hop, all policies");
    let rate = report
        .open_rate
        .map_or_else(String::new, |(rate, _)| format!(" ({rate:.0}/s)"));
    vec![
        throughput("sidecar throughput >= 0.8 x HAProxy", sidecar, haproxy, 0.8),
        Check::new(
            format!("p99 added by the sidecar at half its max{rate} <= 1 ms"),
            // Only meaningful if the rate is the sidecar's.
            report
                .open_rate
                .filter(|(_, basis)| basis.contains("sidecar"))
                .and_then(|_| p99_added(&report.latency, "sidecar")),
            |added| added <= 1.0,
            |added| format!("{added:+.3} ms"),
            &[
                find(&report.latency, "direct"),
                find(&report.latency, "sidecar"),
            ],
        ),
        Check::new(
            "sidecar peak RSS <= 20 MiB",
            sidecar.and_then(Row::peak_rss_mib),
            |mib| mib <= 20.0,
            |mib| format!("{mib:.1} MiB"),
            &[],
        ),
        throughput(
            "all-policies throughput >= 0.9 x no-policy (2-hop)",
            all,
            none,
            0.9,
        ),
    ]
}

/// One request through `target`, retried for a couple of seconds: a proxy that is ready but
/// cannot reach the upstream fails here, with its log, rather than as a column of errors.
async fn smoke(target: &Target, proc: Option<&Proc>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let host = target.host.to_str().unwrap_or_default();
    loop {
        let outcome = load::get_once(target.addr, host, "/").await;
        match outcome {
            Ok(status) if status.is_success() => return Ok(()),
            _ if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(status) => bail!(
                "GET / with Host: {host} to {} answered {status}{}",
                target.addr,
                proc.map(Proc::log_tail).unwrap_or_default()
            ),
            Err(e) => bail!(
                "GET / with Host: {host} to {} failed: {e:#}{}",
                target.addr,
                proc.map(Proc::log_tail).unwrap_or_default()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use report::Verdict;

    #[test]
    fn durations_parse_in_go_syntax_or_seconds() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn throughput_targets_hold_from_their_floor_up() {
        let measured = |name: &str, rps: f64| {
            let row = Row {
                rps,
                p50_ms: None,
                p99_ms: None,
                non_2xx: 0,
                errors: 0,
                peak_rss_kib: None,
                proxy_cpu_us: None,
            };
            (name.to_owned(), Entry::Measured(row))
        };
        let report = Report {
            throughput: vec![measured("sidecar", 800.0), measured("haproxy", 1000.0)],
            open_rate: None,
            latency: vec![],
            policy: vec![
                measured("sidecar 2-hop, no policy", 1000.0),
                measured("sidecar 2-hop, all policies", 899.0),
            ],
            errors: vec![],
        };
        let checks = checks(&report);
        let sidecar = &checks[0];
        assert_eq!(sidecar.target, "sidecar throughput >= 0.8 x HAProxy");
        assert_eq!(sidecar.verdict, Verdict::Pass);
        assert_eq!(sidecar.detail, "0.80x (800 vs 1000 req/s)");
        let policies = &checks[3];
        assert_eq!(
            policies.target,
            "all-policies throughput >= 0.9 x no-policy (2-hop)"
        );
        assert_eq!(policies.verdict, Verdict::Fail);
        assert_eq!(policies.detail, "0.90x (899 vs 1000 req/s)");
    }

    #[test]
    fn the_cli_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
