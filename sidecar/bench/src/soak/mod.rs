//! `weir-bench soak`: the real sidecar binary for a long while (10 minutes by default) under
//! about half its maximum load, with everything issue 11 found breaking it mixed in, and a
//! report of what should not have happened.
//!
//! The command starts its own upstreams on loopback (two healthy, one slow, one answering 503)
//! and the sidecar in `--config FILE` mode in front of them, then:
//!
//! - sends a fixed mix of requests at a steady rate (`--rate`, else half the maximum measured
//!   for 3 s at the start): normal, inbound, slow and failing ones on keep-alive connections;
//!   cancelled ones, cut-short uploads and malformed ones (broken chunked body, bad request
//!   line, two `Host` headers, `CONNECT`) as raw bytes on connections of their own, at most
//!   [`OWN_CONNECTION_MAX_RATE`] a second so that loopback ports are not exhausted; and up to
//!   [`SILENT_MAX`] connections that never send a byte;
//! - rewrites the config file every `--churn-every` (weights, balancer, policies on and off;
//!   every fifth generation invalid) and checks from `/metrics` that each valid one was applied
//!   and each invalid one refused and counted;
//! - judges every outcome against the sidecar contract ([`traffic::judge`]), probes `/live`
//!   every second, and samples the sidecar's RSS and open descriptors after the warm-up and at
//!   the end.
//!
//! Every loop is bounded (requests in flight, silent connections, deadlines), so the soak
//! itself cannot grow or hang whatever the sidecar does. It prints a progress line every 30 s
//! and a report at the end; the exit status is non-zero only if the sidecar died or hung.

mod churn;
mod scrape;
mod traffic;

use crate::procs::{self, Launch, SidecarAddrs, TempDir};
use crate::upstream::{self, Behaviour};
use crate::{load, parse_duration, parse_rate};
use anyhow::{Context, Result, bail};
use churn::{Endpoints, Generation};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;
use traffic::{KEEP_ALIVE_MIX, Kind, OWN_CONNECTION_MIX, TallyInner, Traffic};

/// Requests on connections of their own (cancelled, malformed) at most this many a second.
const OWN_CONNECTION_MAX_RATE: f64 = 100.0;
/// Their share of the requests below that rate.
const OWN_CONNECTION_SHARE: f64 = 0.15;
/// Silent connections open at once at most.
const SILENT_MAX: usize = 16;
/// How long after `--header-read-timeout` a silent connection still open counts as not closed.
const SILENT_GRACE: Duration = Duration::from_secs(5);
/// A request with neither an answer nor a close by then has hung.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Requests in flight at most; more are counted as not sent.
const MAX_IN_FLIGHT: usize = 1024;
/// The sidecar has hung if `/live` has not answered 200 for this long.
const HANG_AFTER: Duration = Duration::from_secs(10);
/// A progress line this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);
/// RSS may grow this much (in %) between the warm-up and the end.
const RSS_DRIFT_GOAL: f64 = 5.0;

/// Options of `weir-bench soak`.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// How long the sidecar is kept under load (`10m`, `30s`, or seconds).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,

    /// Requests per second [default: half the maximum measured for 3 s at the start].
    #[arg(long, value_name = "REQ_PER_S", value_parser = parse_rate)]
    rate: Option<f64>,

    /// Time after the start before the RSS and descriptors are first sampled (at most a fifth
    /// of the duration).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    warmup: Duration,

    /// How often the config file is rewritten.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    churn_every: Duration,

    /// The sidecar's `--header-read-timeout` (set through `WEIR_HEADER_READ_TIMEOUT`): a silent
    /// connection still open 5 s after it counts as an error.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    header_read_timeout: Duration,

    /// The sidecar binary [default: `weir-sidecar` next to this executable].
    #[arg(long, value_name = "PATH")]
    sidecar: Option<PathBuf>,
}

/// What ended the soak early, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    /// It ran for the whole duration.
    Survived,
    Died(String),
    Hung(String),
}

/// The config churn: the last generation written and the verdicts so far.
#[derive(Debug, Default)]
struct Churn {
    next: u64,
    /// The last generation written, when, and `weir_config_rejected_total` before it.
    pending: Option<(Generation, Instant, f64)>,
    applied: u64,
    not_applied: u64,
    refused: u64,
    invalid_applied: u64,
    refused_uncounted: u64,
}

/// Runs the soak.
pub async fn run(args: SoakArgs) -> Result<()> {
    anyhow::ensure!(
        !args.duration.is_zero(),
        "--duration must be greater than 0"
    );
    anyhow::ensure!(
        !args.churn_every.is_zero(),
        "--churn-every must be greater than 0"
    );
    let bin = crate::sidecar_path(args.sidecar.as_deref())?;
    let dir = TempDir::new()?;
    let endpoints = start_upstreams().await?;
    let addrs = SidecarAddrs::pick()?;
    let first = churn::generation(0, &endpoints, 1000.0);
    let launch = Launch {
        env: vec![(
            "WEIR_HEADER_READ_TIMEOUT".into(),
            format!("{}ms", args.header_read_timeout.as_millis()),
        )],
        extra_args: vec!["--drain-timeout".into(), "5s".into()],
        stop_timeout: Duration::from_secs(15),
        ..Launch::default()
    };
    let config: serde_json::Value = serde_json::from_slice(&first.bytes)?;
    let mut sidecar = procs::start_sidecar(
        &bin,
        dir.path(),
        "soak",
        &config,
        addrs,
        endpoints.healthy[0],
        &launch,
    )
    .await?;
    let normal = load::Target::new(sidecar.outbound, churn::NORMAL)?;
    crate::smoke(&normal, Some(&sidecar.proc)).await?;

    let (rate, basis) = match args.rate {
        Some(rate) => (rate, "set by --rate".to_owned()),
        None => {
            eprintln!("soak: measuring the sidecar's maximum for 3 s");
            let max = load::closed_loop(
                &normal,
                32,
                Duration::from_secs(1),
                Duration::from_secs(3),
                &[],
            )
            .await?;
            (
                (max.rps() / 2.0).max(1.0),
                format!("half the measured maximum of {:.0}", max.rps()),
            )
        }
    };
    let own_rate = (rate * OWN_CONNECTION_SHARE).min(OWN_CONNECTION_MAX_RATE);
    let keep_alive_rate = rate - own_rate;
    let inbound_rate = keep_alive_rate * share(Kind::Inbound);
    let warmup = args.warmup.min(args.duration / 5);
    println!(
        "weir-bench soak: {} at {rate:.0} req/s ({basis}), config rewritten every {}, sidecar {}",
        fmt_duration(args.duration),
        fmt_duration(args.churn_every),
        bin.display()
    );

    let traffic = Traffic::new(
        sidecar.outbound,
        sidecar.inbound,
        REQUEST_DEADLINE,
        MAX_IN_FLIGHT,
    );
    let started = Instant::now();
    let end = started + args.duration;
    let pacers = [
        tokio::spawn(pace(
            traffic.clone(),
            keep_alive_rate,
            &KEEP_ALIVE_MIX,
            end,
            1,
        )),
        tokio::spawn(pace(traffic.clone(), own_rate, &OWN_CONNECTION_MIX, end, 2)),
        tokio::spawn(traffic::silent_connections(
            [sidecar.outbound, sidecar.inbound, sidecar.admin],
            args.header_read_timeout,
            SILENT_GRACE,
            SILENT_MAX,
            end,
            traffic.tally.clone(),
        )),
    ];

    let mut churn = Churn {
        next: 1,
        ..Churn::default()
    };
    let mut start_sample = None;
    let mut last_live = Instant::now();
    let mut next_churn = started + args.churn_every;
    let mut next_progress = started + PROGRESS_EVERY;
    let mut last_progress = (started, 0u64);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let fate = loop {
        tick.tick().await;
        let now = Instant::now();
        if let Err(e) = sidecar.proc.check_running() {
            break Fate::Died(format!("{e:#}"));
        }
        if live(sidecar.admin).await {
            last_live = Instant::now();
        } else if last_live.elapsed() >= HANG_AFTER {
            break Fate::Hung(format!(
                "GET /live has not answered 200 for {}s",
                last_live.elapsed().as_secs()
            ));
        }
        if start_sample.is_none() && now >= started + warmup {
            start_sample = Some((sidecar.proc.rss_kib(), sidecar.proc.open_fds()));
        }
        if now >= end {
            break Fate::Survived;
        }
        if now >= next_churn {
            next_churn = now + args.churn_every;
            let metrics = scrape_metrics(sidecar.admin).await;
            judge_churn(&mut churn, metrics.as_deref(), &traffic);
            let generation = churn::generation(churn.next, &endpoints, inbound_rate);
            churn.next += 1;
            write_config(&sidecar.config_path, &generation.bytes)?;
            let rejected = metrics
                .as_deref()
                .and_then(|m| scrape::total(m, "weir_config_rejected_total"))
                .unwrap_or(0.0);
            churn.pending = Some((generation, Instant::now(), rejected));
        }
        if now >= next_progress {
            next_progress = now + PROGRESS_EVERY;
            let tally = traffic.tally.snapshot();
            let (since, before) = last_progress;
            let requests = tally.requests();
            let achieved = (requests - before) as f64 / since.elapsed().as_secs_f64();
            last_progress = (now, requests);
            eprintln!(
                "[{:>4}s] {requests} requests ({achieved:.0}/s), {} 2xx, {} unexpected, RSS {}, \
                 {} fds, {} configs written",
                started.elapsed().as_secs(),
                tally.count_outcome("2xx"),
                tally.unexpected_total(),
                fmt_kib(sidecar.proc.rss_kib()),
                fmt_count(sidecar.proc.open_fds()),
                churn.next,
            );
        }
    };

    if fate != Fate::Survived {
        for pacer in &pacers {
            pacer.abort();
        }
    }
    for pacer in pacers {
        let _ = pacer.await;
    }
    // The requests still in flight get their deadline to finish and be counted.
    let _ = tokio::time::timeout(
        REQUEST_DEADLINE + Duration::from_secs(1),
        traffic.in_flight.acquire_many(MAX_IN_FLIGHT as u32),
    )
    .await;
    let metrics = scrape_metrics(sidecar.admin).await;
    if let Some((_, written, _)) = &churn.pending
        && written.elapsed() >= Duration::from_secs(1)
    {
        judge_churn(&mut churn, metrics.as_deref(), &traffic);
    }
    let end_sample = (sidecar.proc.rss_kib(), sidecar.proc.open_fds());
    let report = Report {
        tally: traffic.tally.snapshot(),
        churn: &churn,
        start: start_sample.unwrap_or(end_sample),
        end: end_sample,
        metrics: metrics.as_deref(),
        fate: &fate,
    };
    print!("{}", report.text());
    if fate == Fate::Survived {
        let exited = sidecar.proc.stop_and_wait();
        println!(
            "Shutdown: the sidecar {} after SIGTERM",
            if exited {
                "exited by itself"
            } else {
                "had to be killed"
            }
        );
    }
    match fate {
        Fate::Survived => Ok(()),
        Fate::Died(why) => bail!("the sidecar died: {why}"),
        Fate::Hung(why) => bail!("the sidecar hung: {why}"),
    }
}

/// `kind`'s share of the keep-alive mix.
fn share(kind: Kind) -> f64 {
    let total: u32 = KEEP_ALIVE_MIX.iter().map(|(_, s)| s).sum();
    let mine: u32 = KEEP_ALIVE_MIX
        .iter()
        .filter(|(k, _)| *k == kind)
        .map(|(_, s)| s)
        .sum();
    f64::from(mine) / f64::from(total)
}

/// The soak's upstreams, serving in this process until it exits.
async fn start_upstreams() -> Result<Endpoints> {
    async fn one(behaviour: Behaviour) -> Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(upstream::serve_as(listener, behaviour));
        Ok(addr)
    }
    Ok(Endpoints {
        healthy: [
            one(Behaviour::Healthy).await?,
            one(Behaviour::Healthy).await?,
        ],
        slow: one(Behaviour::Slow {
            max: Duration::from_millis(400),
        })
        .await?,
        failing: one(Behaviour::Failing).await?,
    })
}

/// Releases requests of `mix` at `rate` a second until `end`, every 10 ms the ones that have
/// fallen due (a millisecond timer could not space them finer anyway).
async fn pace(traffic: Traffic, rate: f64, mix: &[(Kind, u32)], end: Instant, seed: u64) {
    if rate <= 0.0 {
        return;
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < end {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        // After a stall of the soak itself, do not send a second's worth at once.
        sent = sent.max(due.saturating_sub(rate.ceil() as u64));
        while sent < due {
            sent += 1;
            traffic.spawn(traffic::pick(mix, &mut rng), rng.u64(..));
        }
    }
}

/// Whether admin `/live` answers 200 within 2 s.
async fn live(admin: SocketAddr) -> bool {
    let host = admin.to_string();
    let probe = load::get_once(admin, &host, "/live");
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(status)) if status == 200
    )
}

/// The sidecar's `/metrics` text, if it answers within 2 s.
async fn scrape_metrics(admin: SocketAddr) -> Option<String> {
    let host = admin.to_string();
    let scrape = load::get_answer_once(admin, &host, "/metrics");
    match tokio::time::timeout(Duration::from_secs(2), scrape).await {
        Ok(Ok(answer)) if answer.status.is_success() => {
            Some(String::from_utf8_lossy(&answer.body).into_owned())
        }
        _ => None,
    }
}

/// Replaces the config file in one step (a rename), so the sidecar never reads half of it.
fn write_config(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// Judges the last generation written from the sidecar's `metrics`: a valid one must be
/// running, an invalid one must not be and must have been counted as rejected.
fn judge_churn(churn: &mut Churn, metrics: Option<&str>, traffic: &Traffic) {
    let Some((generation, written, rejected_before)) = churn.pending.take() else {
        return;
    };
    let Some(metrics) = metrics else {
        traffic
            .tally
            .unexpected("/metrics did not answer within 2 s", None);
        return;
    };
    let running = scrape::total(metrics, "weir_config_version").unwrap_or(0.0) as u64;
    let rejected = scrape::total(metrics, "weir_config_rejected_total").unwrap_or(0.0);
    let after = written.elapsed().as_secs_f64();
    let tally = &traffic.tally;
    match generation.invalid {
        None if running == generation.version => churn.applied += 1,
        None => {
            churn.not_applied += 1;
            tally.unexpected(
                "valid config not running when the next was written",
                Some(format!(
                    "version {} written, {running} running {after:.1}s later",
                    generation.version
                )),
            );
        }
        Some(what) if running == generation.version => {
            churn.invalid_applied += 1;
            tally.unexpected(&format!("invalid config applied: {what}"), None);
        }
        Some(what) if rejected <= rejected_before => {
            churn.refused_uncounted += 1;
            tally.unexpected(
                &format!("invalid config not counted in weir_config_rejected_total: {what}"),
                None,
            );
        }
        Some(_) => churn.refused += 1,
    }
}

/// The figures printed at the end.
struct Report<'a> {
    tally: TallyInner,
    churn: &'a Churn,
    /// RSS (KiB) and open descriptors after the warm-up, and at the end.
    start: (Option<u64>, Option<usize>),
    end: (Option<u64>, Option<usize>),
    metrics: Option<&'a str>,
    fate: &'a Fate,
}

/// The refusal and error counters of `/metrics` the report shows, with the labels they are
/// summed by.
const REPORTED_METRICS: [(&str, &[&str]); 10] = [
    ("weir_config_rejected_total", &[]),
    ("weir_rate_limited_total", &[]),
    ("weir_bulkhead_rejected_total", &[]),
    ("weir_retry_budget_exhausted_total", &[]),
    ("weir_retries_total", &[]),
    ("weir_timeouts_total", &["kind"]),
    ("weir_outlier_ejections_total", &[]),
    ("weir_connections_closed_total", &["listener", "reason"]),
    ("weir_connections", &["listener"]),
    ("weir_requests_total", &["direction", "code"]),
];

impl Report<'_> {
    fn text(&self) -> String {
        let mut out = String::new();
        let t = &self.tally;
        let _ = writeln!(
            out,
            "\nRequests by outcome ({} in all; {} not sent because {MAX_IN_FLIGHT} were in flight)",
            t.requests(),
            t.not_sent
        );
        for ((kind, outcome), n) in &t.outcomes {
            let _ = writeln!(out, "  {kind:<20} {outcome:<44} {n:>9}");
        }
        let mut reasons = std::collections::BTreeMap::<&str, u64>::new();
        for ((_, outcome), n) in &t.outcomes {
            if let Some((code, reason)) = outcome.split_once(' ')
                && code.parse::<u16>().is_ok()
                && !reason.starts_with('(')
            {
                *reasons.entry(reason).or_insert(0) += n;
            }
        }
        let reasons: Vec<String> = reasons.iter().map(|(r, n)| format!("{r} {n}")).collect();
        let _ = writeln!(
            out,
            "  x-weir-reason seen by clients: {}",
            if reasons.is_empty() {
                "none".to_owned()
            } else {
                reasons.join(", ")
            }
        );

        let _ = writeln!(
            out,
            "\nUnexpected (should not happen): {}",
            t.unexpected_total()
        );
        for (what, n) in &t.unexpected {
            match t.first_details.get(what) {
                Some(detail) => {
                    let _ = writeln!(out, "  {n:>7}  {what} (first: {detail})");
                }
                None => {
                    let _ = writeln!(out, "  {n:>7}  {what}");
                }
            }
        }

        let c = self.churn;
        let _ = writeln!(
            out,
            "\nConfig churn: {} generations written after the first; valid: {} applied, {} not \
             applied; invalid: {} refused and counted, {} refused uncounted, {} applied",
            c.next.saturating_sub(1),
            c.applied,
            c.not_applied,
            c.refused,
            c.refused_uncounted,
            c.invalid_applied
        );

        let _ = writeln!(out, "\nSidecar");
        let drift = drift_percent(self.start.0, self.end.0);
        let _ = writeln!(
            out,
            "  RSS after warm-up {}, at end {}, drift {} (goal < {RSS_DRIFT_GOAL} %): {}",
            fmt_kib(self.start.0),
            fmt_kib(self.end.0),
            drift.map_or_else(|| "-".into(), |d| format!("{d:+.1} %")),
            match drift {
                Some(d) if d < RSS_DRIFT_GOAL => "PASS",
                Some(_) => "FAIL",
                None => "n/a",
            }
        );
        let _ = writeln!(
            out,
            "  open file descriptors after warm-up {}, at end {}",
            fmt_count(self.start.1),
            fmt_count(self.end.1)
        );
        let _ = writeln!(
            out,
            "  state: {}",
            match self.fate {
                Fate::Survived => "ran for the whole duration".to_owned(),
                Fate::Died(why) => format!("DIED: {why}"),
                Fate::Hung(why) => format!("HUNG: {why}"),
            }
        );

        let _ = writeln!(out, "\nCounted by the sidecar (/metrics)");
        match self.metrics {
            None => {
                let _ = writeln!(out, "  /metrics did not answer");
            }
            Some(metrics) => {
                for (family, by) in REPORTED_METRICS {
                    let sums = scrape::sum_by(metrics, family, by);
                    let line: Vec<String> = sums
                        .iter()
                        .map(|(labels, v)| {
                            if labels.is_empty() {
                                format!("{v}")
                            } else {
                                format!("{{{labels}}} {v}")
                            }
                        })
                        .collect();
                    let shown = if line.is_empty() {
                        "0 (no sample)".to_owned()
                    } else {
                        line.join(", ")
                    };
                    let _ = writeln!(out, "  {family}: {shown}");
                }
            }
        }
        out
    }
}

/// (end − start) / start in %.
fn drift_percent(start: Option<u64>, end: Option<u64>) -> Option<f64> {
    match (start, end) {
        (Some(start), Some(end)) if start > 0 => {
            Some((end as f64 - start as f64) * 100.0 / start as f64)
        }
        _ => None,
    }
}

fn fmt_kib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn fmt_count(n: Option<usize>) -> String {
    n.map_or_else(|| "-".into(), |n| n.to_string())
}

fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs >= 60.0 && secs % 60.0 == 0.0 {
        format!("{}m", secs as u64 / 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_generation_is_judged_from_the_metrics() {
        let endpoints = Endpoints {
            healthy: [
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
            ],
            slow: "127.0.0.1:3".parse().unwrap(),
            failing: "127.0.0.1:4".parse().unwrap(),
        };
        let local: SocketAddr = "127.0.0.1:5".parse().unwrap();
        let traffic = Traffic::new(local, local, REQUEST_DEADLINE, 1);
        let mut churn = Churn::default();
        let metrics = |version: u64, rejected: u64| {
            format!(
                "weir_config_version {version}\nweir_config_rejected_total{{source=\"file\"}} {rejected}\n"
            )
        };
        let mut judge = |n: u64, rejected_before: f64, text: Option<String>| {
            churn.pending = Some((
                churn::generation(n, &endpoints, 100.0),
                Instant::now(),
                rejected_before,
            ));
            judge_churn(&mut churn, text.as_deref(), &traffic);
        };
        judge(0, 0.0, Some(metrics(1, 0))); // valid, running
        judge(1, 0.0, Some(metrics(1, 0))); // valid, not running
        judge(2, 0.0, Some(metrics(1, 0))); // valid, not running
        judge(4, 0.0, Some(metrics(4, 1))); // invalid, refused and counted
        judge(9, 1.0, Some(metrics(4, 1))); // invalid, refused, not counted
        judge(14, 1.0, Some(metrics(15, 2))); // invalid, running
        judge(3, 0.0, None); // no metrics
        assert_eq!((churn.applied, churn.not_applied), (1, 2));
        assert_eq!(
            (
                churn.refused,
                churn.refused_uncounted,
                churn.invalid_applied
            ),
            (1, 1, 1)
        );
        let tally = traffic.tally.snapshot();
        let stuck = "valid config not running when the next was written";
        assert_eq!(tally.unexpected[stuck], 2);
        assert!(tally.first_details[stuck].starts_with("version 2 written, 1 running "));
        assert_eq!(
            tally.unexpected["invalid config not counted in weir_config_rejected_total: all weights zero"],
            1
        );
        assert_eq!(
            tally.unexpected["invalid config applied: retries.attempts 11 (range 0-10)"],
            1
        );
        assert_eq!(tally.unexpected["/metrics did not answer within 2 s"], 1);
        assert_eq!(tally.unexpected_total(), 5);
    }

    #[test]
    fn drift_is_relative_to_the_start() {
        assert_eq!(drift_percent(Some(1000), Some(1030)), Some(3.0));
        assert_eq!(drift_percent(Some(1000), Some(900)), Some(-10.0));
        assert_eq!(drift_percent(Some(0), Some(900)), None);
        assert_eq!(drift_percent(None, Some(900)), None);
        assert_eq!(fmt_duration(Duration::from_secs(600)), "10m");
        assert_eq!(fmt_duration(Duration::from_millis(5500)), "5.5s");
        assert!((share(Kind::Inbound) - 0.15).abs() < 1e-9);
    }
}
