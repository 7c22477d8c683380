//! `weir-bench one-core`: the sidecar's and HAProxy's maximum throughput on one core, the way
//! issue 13 states its goal (sidecar ≥ 1.2× HAProxy).
//!
//! The default run lets load generator, upstream and proxy share every CPU, and HAProxy then
//! runs a thread per CPU against the sidecar's one. Here each proxy runs one thread (the
//! sidecar's `--threads 1`, HAProxy's `nbthread 1`) and shares one CPU (`--proxy-cpu`) with the
//! upstream, while the load generator runs alone on another (`--load-cpu`): the CPU the proxy
//! has is the same for both. Both proxies stay up for the whole run and are measured in
//! interleaved rounds (sidecar, HAProxy, sidecar, …), so that whatever else the machine does
//! weighs on both alike; the median round of each and their ratio are reported, with each
//! round's figures beside them. Then the latency at half the sidecar's median maximum, open
//! loop, directly and through each proxy: the p99 each proxy adds.
//!
//! Beside each proxy's CPU time per request the report gives the kernel's share of it: a proxy
//! makes the same socket calls per request whatever its code, and their cost bounds what
//! user-space work can win.
//!
//! Pinning uses `sched_setaffinity` for the bench's own thread before its runtime starts (the
//! runtime, a single thread, inherits it) and `taskset` for the processes it starts.

use crate::load::{self, CpuSplit, Stats, Target};
use crate::procs::{self, Launch, Proc, SidecarAddrs, TempDir};
use crate::report::{fmt_ms, fmt_ratio};
use crate::{config, parse_duration};
use anyhow::{Context, Result, ensure};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct OneCoreArgs {
    /// Rounds; each measures the sidecar, then HAProxy.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,

    /// How long each proxy is measured in each round (`10s`, `500ms`, or seconds).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,

    /// Warm-up before each measurement, not counted.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,

    /// Keep-alive connections the load generator uses.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    connections: u32,

    /// The CPU the proxy and the upstream run on.
    #[arg(long, default_value_t = 0)]
    proxy_cpu: usize,

    /// The CPU the load generator runs on.
    #[arg(long, default_value_t = 1)]
    load_cpu: usize,

    /// The CPU the upstream runs on [default: the proxy's]; the load generator's CPU leaves the
    /// proxy a CPU of its own.
    #[arg(long)]
    upstream_cpu: Option<usize>,

    /// Measure latency at this many requests per second instead of half the sidecar's median
    /// maximum (on two CPUs half the maximum may starve the load generator or the upstream).
    #[arg(long, value_name = "REQ_PER_S", value_parser = crate::parse_rate)]
    rate: Option<f64>,

    /// The sidecar binary [default: `weir-sidecar` next to this executable].
    #[arg(long, value_name = "PATH")]
    sidecar: Option<PathBuf>,

    /// The HAProxy binary [default: `haproxy` on PATH, else in /usr/sbin].
    #[arg(long, value_name = "PATH")]
    haproxy: Option<PathBuf>,
}

pub fn run(args: OneCoreArgs) -> Result<()> {
    ensure!(
        !args.duration.is_zero(),
        "--duration must be greater than 0"
    );
    ensure!(
        args.proxy_cpu != args.load_cpu,
        "--proxy-cpu and --load-cpu must differ: the point is that they do not share a CPU"
    );
    let sidecar = crate::sidecar_path(args.sidecar.as_deref())?;
    let haproxy = args
        .haproxy
        .clone()
        .or_else(procs::find_haproxy)
        .context("no haproxy on PATH or in /usr/sbin: install it (Debian package `haproxy`) or pass --haproxy PATH")?;
    let taskset = procs::find_program("taskset")
        .context("no taskset on PATH (Debian package `util-linux`): it pins the proxies")?;
    pin_this_thread(args.load_cpu)?;
    // One thread, started after the pinning: it inherits the load generator's CPU.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    crate::interruptible(&runtime, measure(&args, &sidecar, &haproxy, &taskset))
}

fn pin_this_thread(cpu: usize) -> Result<()> {
    use nix::sched::{CpuSet, sched_setaffinity};
    let mut set = CpuSet::new();
    set.set(cpu)
        .with_context(|| format!("CPU {cpu} is past what the kernel's CPU set holds"))?;
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("pinning the load generator to CPU {cpu} (does it exist?)"))
}

/// One proxy's figures over the rounds.
#[derive(Debug, Default)]
struct Measured {
    requests_per_second: Vec<f64>,
    cpu_us_per_request: Vec<f64>,
    /// The share of its CPU time spent in the kernel, in each round (warm-up included).
    kernel_share: Vec<f64>,
    failed: u64,
    peak_rss_kib: Option<u64>,
}

async fn measure(args: &OneCoreArgs, sidecar: &Path, haproxy: &Path, taskset: &Path) -> Result<()> {
    let dir = TempDir::new()?;
    let pinned_to = |cpu: usize| Launch {
        wrapper: vec![taskset.into(), "-c".into(), cpu.to_string().into()],
        ..Launch::default()
    };
    let pinned = pinned_to(args.proxy_cpu);
    let upstream_launch = pinned_to(args.upstream_cpu.unwrap_or(args.proxy_cpu));
    let (upstream, upstream_addr) = procs::start_upstream_with(&upstream_launch)?;
    let config = config::proxy_config(upstream_addr, false);
    let sidecar_launch = Launch {
        extra_args: vec!["--threads".into(), "1".into()],
        ..pinned.clone()
    };
    let sidecar = procs::start_sidecar(
        sidecar,
        dir.path(),
        "one-core",
        &config,
        SidecarAddrs::pick()?,
        upstream_addr,
        &sidecar_launch,
    )
    .await?;
    let (haproxy, haproxy_listen) = procs::start_haproxy_with(
        haproxy,
        dir.path(),
        upstream_addr,
        args.connections,
        Some(1),
        &pinned,
    )
    .await?;
    let proxies: [(&str, Target, &Proc); 2] = [
        (
            "weir-sidecar --threads 1",
            Target::new(sidecar.outbound, config::SERVICE)?,
            &sidecar.proc,
        ),
        (
            "HAProxy nbthread 1",
            Target::new(haproxy_listen, config::SERVICE)?,
            &haproxy,
        ),
    ];
    for (_, target, proc) in &proxies {
        crate::smoke(target, Some(proc)).await?;
    }
    let mut measured: [Measured; 2] = Default::default();
    let connections = usize::try_from(args.connections).unwrap_or(usize::MAX);
    for round in 1..=args.rounds {
        for ((name, target, proc), figures) in proxies.iter().zip(&mut measured) {
            let watched = [proc.pid(), upstream.pid()];
            let before = load::cpu_split(proc.pid());
            let stats =
                load::closed_loop(target, connections, args.warmup, args.duration, &watched)
                    .await?;
            let kernel_share = kernel_share(before, load::cpu_split(proc.pid()));
            eprintln!(
                "round {round}/{}: {}",
                args.rounds,
                round_line(name, &stats, kernel_share)
            );
            figures.record(&stats, kernel_share);
        }
    }
    // Latency at half the sidecar's maximum (or --rate), open loop: the upstream alone, then
    // each proxy.
    let mut latency = None;
    let half = || median(&measured[0].requests_per_second).map(|max| max / 2.0);
    if let Some(rate) = args.rate.or_else(half)
        && rate >= 1.0
    {
        let direct = Target::new(upstream_addr, &upstream_addr.to_string())?;
        let mut p99 = [None; 3];
        let targets = [
            ("direct", &direct, None),
            (proxies[0].0, &proxies[0].1, Some(proxies[0].2)),
            (proxies[1].0, &proxies[1].1, Some(proxies[1].2)),
        ];
        for ((name, target, proc), p99) in targets.into_iter().zip(&mut p99) {
            let mut watched = vec![upstream.pid()];
            watched.extend(proc.map(Proc::pid));
            let stats = load::open_loop(
                target,
                connections,
                rate,
                args.warmup,
                args.duration,
                &watched,
            )
            .await?;
            eprintln!(
                "at {rate:.0} req/s: {name}: p50 {} ms, p99 {} ms, {} failed",
                fmt_ms(stats.quantile_ms(0.5)),
                fmt_ms(stats.quantile_ms(0.99)),
                stats.non_2xx + stats.errors
            );
            *p99 = stats.quantile_ms(0.99);
        }
        latency = Some(Latency { rate, p99 });
    }
    for ((_, _, proc), figures) in proxies.iter().zip(&mut measured) {
        figures.peak_rss_kib = proc.peak_rss_kib();
    }
    println!("{}", summary(args, &measured, latency.as_ref()));
    Ok(())
}

/// The p99 (ms) of direct calls, the sidecar and HAProxy at one rate, open loop.
#[derive(Debug)]
struct Latency {
    rate: f64,
    p99: [Option<f64>; 3],
}

impl Measured {
    fn record(&mut self, stats: &Stats, kernel_share: Option<f64>) {
        self.requests_per_second.push(stats.rps());
        self.cpu_us_per_request.extend(stats.cpu_us_per_request(0));
        self.kernel_share.extend(kernel_share);
        self.failed += stats.non_2xx + stats.errors;
    }
}

/// The kernel's share of the CPU time used between two readings.
fn kernel_share(before: Option<CpuSplit>, after: Option<CpuSplit>) -> Option<f64> {
    let (before, after) = before.zip(after)?;
    let user = after.user.saturating_sub(before.user).as_secs_f64();
    let system = after.system.saturating_sub(before.system).as_secs_f64();
    (user + system > 0.0).then(|| system / (user + system))
}

fn round_line(name: &str, stats: &Stats, kernel_share: Option<f64>) -> String {
    let other = stats.other_cpus.map_or_else(String::new, |cpus| {
        format!(", other processes {cpus:.2} CPUs")
    });
    let cpu = stats
        .cpu_us_per_request(0)
        .map_or_else(String::new, |us| format!(", {us:.1} µs CPU/request"));
    let kernel = kernel_share.map_or_else(String::new, |share| {
        format!(" ({:.0} % in the kernel)", share * 100.0)
    });
    format!(
        "{name}: {:.0} req/s{cpu}{kernel}, {} failed{other}",
        stats.rps(),
        stats.non_2xx + stats.errors
    )
}

/// The middle value (the mean of the two middle ones for an even count); `None` when empty.
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

fn summary(
    args: &OneCoreArgs,
    [sidecar, haproxy]: &[Measured; 2],
    latency: Option<&Latency>,
) -> String {
    let mut out = format!(
        "\nweir-bench one-core: {} rounds of {:?} (after {:?} warm-up) per proxy, interleaved; \
         proxy on CPU {}, upstream on CPU {}, load generator on CPU {}, {} connections\n\n",
        args.rounds,
        args.duration,
        args.warmup,
        args.proxy_cpu,
        args.upstream_cpu.unwrap_or(args.proxy_cpu),
        args.load_cpu,
        args.connections
    );
    out += &format!(
        "{:<26} {:>12} {:>12} {:>12} {:>14} {:>8} {:>10} {:>8}\n",
        "proxy", "median req/s", "min", "max", "CPU µs/req", "kernel", "peak RSS", "failed"
    );
    for (name, m) in [
        ("weir-sidecar --threads 1", sidecar),
        ("HAProxy nbthread 1", haproxy),
    ] {
        let rps = &m.requests_per_second;
        let fold = |f: fn(f64, f64) -> f64| rps.iter().copied().reduce(f).unwrap_or(f64::NAN);
        out += &format!(
            "{:<26} {:>12.0} {:>12.0} {:>12.0} {:>14} {:>8} {:>10} {:>8}\n",
            name,
            median(rps).unwrap_or(f64::NAN),
            fold(f64::min),
            fold(f64::max),
            median(&m.cpu_us_per_request).map_or_else(|| "-".into(), |us| format!("{us:.1}")),
            median(&m.kernel_share)
                .map_or_else(|| "-".into(), |share| format!("{:.0} %", share * 100.0)),
            m.peak_rss_kib.map_or_else(
                || "-".into(),
                |kib| format!("{:.1} MiB", kib as f64 / 1024.0)
            ),
            m.failed
        );
    }
    let ratio = median(&sidecar.requests_per_second)
        .zip(median(&haproxy.requests_per_second))
        .and_then(|(s, h)| (h > 0.0).then_some(s / h));
    let per_round: Vec<String> = sidecar
        .requests_per_second
        .iter()
        .zip(&haproxy.requests_per_second)
        .map(|(s, h)| fmt_ratio((*h > 0.0).then(|| s / h)))
        .collect();
    out += &format!(
        "\nsidecar / HAProxy (medians): {} (goal ≥ 1.20x); each round: {}\n",
        fmt_ratio(ratio),
        per_round.join(" ")
    );
    if let Some(Latency {
        rate,
        p99: [direct, with_sidecar, with_haproxy],
    }) = latency
    {
        let added = |p99: &Option<f64>| {
            let added = p99.zip(*direct).map(|(p, d)| p - d);
            added.map_or_else(|| "-".into(), |ms| format!("{ms:+.3} ms"))
        };
        out += &format!(
            "p99 at {rate:.0} req/s ({}, open loop): direct {} ms, \
             sidecar {} ms ({} added; goal ≤ 0.5 ms), HAProxy {} ms ({} added)\n",
            if args.rate.is_some() {
                "set by --rate"
            } else {
                "half the sidecar's median maximum"
            },
            fmt_ms(*direct),
            fmt_ms(*with_sidecar),
            added(with_sidecar),
            fmt_ms(*with_haproxy),
            added(with_haproxy)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parsed(flags: &[&str]) -> OneCoreArgs {
        let argv = ["weir-bench", "one-core"].iter().chain(flags);
        match crate::Args::try_parse_from(argv).unwrap().command {
            Some(crate::Command::OneCore(args)) => args,
            other => panic!("not one-core: {other:?}"),
        }
    }

    #[test]
    fn the_median_is_the_middle_round() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn the_summary_gives_the_ratio_of_the_medians_and_each_round() {
        let args = parsed(&["--rounds", "3"]);
        let sidecar = Measured {
            requests_per_second: vec![12_000.0, 11_000.0, 13_000.0],
            cpu_us_per_request: vec![40.0, 41.0, 39.0],
            kernel_share: vec![0.7, 0.75, 0.8],
            failed: 0,
            peak_rss_kib: Some(9 * 1024),
        };
        let haproxy = Measured {
            requests_per_second: vec![10_000.0, 10_000.0, 10_000.0],
            ..Measured::default()
        };
        let latency = Latency {
            rate: 6000.0,
            p99: [Some(0.5), Some(0.8), Some(0.7)],
        };
        let text = summary(&args, &[sidecar, haproxy], Some(&latency));
        assert!(text.contains("3 rounds"), "{text}");
        assert!(
            text.contains("sidecar / HAProxy (medians): 1.20x"),
            "{text}"
        );
        assert!(text.contains("each round: 1.20x 1.10x 1.30x"), "{text}");
        assert!(text.contains("9.0 MiB"), "{text}");
        assert!(text.contains("75 %"), "{text}");
        assert!(
            text.contains("p99 at 6000 req/s")
                && text.contains("sidecar 0.800 ms (+0.300 ms added"),
            "{text}"
        );
    }

    #[test]
    fn the_kernel_share_is_of_the_time_used_between_readings() {
        let at = |user, system| {
            Some(CpuSplit {
                user: Duration::from_millis(user),
                system: Duration::from_millis(system),
            })
        };
        let share = kernel_share(at(100, 200), at(200, 500)).unwrap();
        assert!((share - 0.75).abs() < 1e-9, "{share}");
        assert_eq!(
            kernel_share(at(100, 200), at(100, 200)),
            None,
            "no time used"
        );
        assert_eq!(kernel_share(None, at(1, 1)), None);
    }

    #[test]
    fn the_same_cpu_for_load_and_proxy_is_refused() {
        let args = parsed(&["--proxy-cpu", "1", "--load-cpu", "1"]);
        let refused = run(args).unwrap_err().to_string();
        assert!(refused.contains("must differ"), "{refused}");
    }
}
