//! `weir-bench instructions`: what one proxied request costs, counted rather than timed, so
//! that a change to the hot path can be judged on a shared, noisy machine.
//!
//! Each proxy (the sidecar plain and with every policy on, HAProxy with `nbthread 1`, nginx
//! with one worker and `keepalive 64` upstream; each when installed) stands in front of one
//! upstream: nginx answering a 13-byte body itself when nginx is installed, as issue 13
//! measured, else the bench's own upstream. One client sends GET requests one after another on
//! one keep-alive HTTP/1.1 connection.
//!
//! - **Instructions**: the proxy runs under `valgrind --tool=callgrind`, which counts the
//!   user-space instructions it executes (its libraries included, the kernel not). Two runs,
//!   one of `--low` requests and one of `--high`, each from start to exit; the difference
//!   divided by `high − low` is the marginal cost of a request, free of start-up, the first
//!   connection and shutdown. Two whole runs rather than `callgrind_control` toggling keep the
//!   measurement independent of when a signal lands.
//! - **Syscalls**: the proxy runs natively; `strace -c -f` is attached while `--low`
//!   requests are sent on a new connection, detached, and attached again for `--high`; the
//!   difference of the call counts over `high − low` again.
//!
//! What depends on time rather than requests (the sidecar's 200 ms config-file poll, HAProxy's
//! and nginx's timers) adds a little to the longer run; a few hundred instructions and a few
//! thousandths of a syscall per request at the defaults.

use crate::load::Conn;
use crate::procs::{self, Launch, NginxRole, Proc, SidecarAddrs, TempDir};
use crate::{config, report::fmt_ratio};
use anyhow::{Context, Result, bail};
use hyper::header::HeaderValue;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a proxy under valgrind gets to start and to exit: everything runs some 50 times
/// slower there.
const VALGRIND_READY_TIMEOUT: Duration = Duration::from_secs(120);
const VALGRIND_STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// One request may take this long (under valgrind) before the run is given up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests sent before strace is first attached, so that what a proxy sets up on its first
/// requests is not counted in either run.
const STRACE_WARMUP_REQUESTS: u64 = 100;

/// Options of `weir-bench instructions`.
#[derive(Debug, clap::Args)]
pub struct InstructionsArgs {
    /// Requests in the shorter run.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..))]
    low: u64,

    /// Requests in the longer run (more than --low).
    #[arg(long, default_value_t = 12_000, value_parser = clap::value_parser!(u64).range(2..))]
    high: u64,

    /// The sidecar binary [default: `weir-sidecar` next to this executable].
    #[arg(long, value_name = "PATH")]
    sidecar: Option<PathBuf>,

    /// Do not measure the sidecar.
    #[arg(long, conflicts_with = "sidecar")]
    skip_sidecar: bool,

    /// Do not measure HAProxy even if it is installed.
    #[arg(long)]
    skip_haproxy: bool,

    /// Do not measure nginx (as a proxy) even if it is installed.
    #[arg(long)]
    skip_nginx: bool,

    /// Use the bench's own upstream even if nginx is installed.
    #[arg(long)]
    bench_upstream: bool,

    /// Do not count syscalls (instructions only: quicker while iterating on the hot path).
    #[arg(long)]
    skip_syscalls: bool,

    /// Copy callgrind's output files into DIR (for `callgrind_annotate`) instead of losing
    /// them with the run's temporary directory.
    #[arg(long, value_name = "DIR")]
    keep_profiles: Option<PathBuf>,
}

/// A proxy measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proxy {
    Sidecar {
        all_policies: bool,
    },
    /// The sidecar without policies, HTTP/2 with prior knowledge (h2c) on both sides: one
    /// client connection, one stream at a time, one shared upstream connection.
    SidecarH2c,
    Haproxy,
    Nginx,
}

impl Proxy {
    fn label(self) -> &'static str {
        match self {
            Self::Sidecar {
                all_policies: false,
            } => "weir-sidecar (plain)",
            Self::Sidecar { all_policies: true } => "weir-sidecar (every policy on)",
            Self::SidecarH2c => "weir-sidecar (plain), h2c",
            Self::Haproxy => "HAProxy, nbthread 1",
            Self::Nginx => "nginx proxy, keepalive 64",
        }
    }
}

/// The figures of one proxy: per request, or why there are none.
#[derive(Debug, Clone, PartialEq)]
struct Figures {
    proxy: Proxy,
    instructions: Result<f64, String>,
    syscalls: Result<f64, String>,
    /// The marginal syscalls per request by call, most frequent first.
    syscall_mix: Vec<(String, f64)>,
}

/// The tools and programs found on this machine.
#[derive(Debug)]
struct Tools {
    valgrind: Option<PathBuf>,
    strace: Option<PathBuf>,
    sidecar: Option<PathBuf>,
    haproxy: Option<PathBuf>,
    nginx: Option<PathBuf>,
}

/// Runs the benchmark and prints the table.
pub async fn run(args: InstructionsArgs) -> Result<()> {
    anyhow::ensure!(
        args.high > args.low,
        "--high ({}) must be more than --low ({})",
        args.high,
        args.low
    );
    let tools = Tools {
        valgrind: procs::find_program("valgrind"),
        strace: procs::find_program("strace"),
        sidecar: if args.skip_sidecar {
            None
        } else {
            Some(crate::sidecar_path(args.sidecar.as_deref())?)
        },
        haproxy: procs::find_program("haproxy").filter(|_| !args.skip_haproxy),
        nginx: procs::find_program("nginx"),
    };
    let dir = TempDir::new()?;
    let (_upstream, upstream, upstream_name) = match &tools.nginx {
        Some(nginx) if !args.bench_upstream => {
            let (proc, addr) =
                procs::start_nginx(nginx, dir.path(), NginxRole::Static, &Launch::default())
                    .await?;
            (proc, addr, "nginx answering a 13-byte body")
        }
        _ => {
            let (proc, addr) = procs::start_upstream()?;
            (proc, addr, "the bench's upstream (13-byte body)")
        }
    };
    // h2c needs an upstream that speaks it: nginx (the bench's own is HTTP/1 only).
    let h2c_upstream = match (&tools.nginx, &tools.sidecar) {
        (Some(nginx), Some(_)) if !args.bench_upstream => Some(
            procs::start_nginx(nginx, dir.path(), NginxRole::StaticH2c, &Launch::default()).await?,
        ),
        _ => None,
    };
    let mut proxies = Vec::new();
    if let Some(bin) = &tools.sidecar {
        for all_policies in [false, true] {
            proxies.push((Proxy::Sidecar { all_policies }, bin.clone()));
        }
        if h2c_upstream.is_some() {
            proxies.push((Proxy::SidecarH2c, bin.clone()));
        }
    }
    if let Some(bin) = &tools.haproxy {
        proxies.push((Proxy::Haproxy, bin.clone()));
    }
    if let Some(bin) = tools.nginx.as_ref().filter(|_| !args.skip_nginx) {
        proxies.push((Proxy::Nginx, bin.clone()));
    }
    let bench = Measure {
        dir: dir.path(),
        upstream,
        low: args.low,
        high: args.high,
        keep_profiles: args.keep_profiles.as_deref(),
        h2c_upstream: h2c_upstream.as_ref().map(|(_, addr)| *addr),
    };
    let mut figures = Vec::new();
    for (proxy, bin) in &proxies {
        let instructions = match &tools.valgrind {
            None => Err("valgrind is not installed".to_owned()),
            Some(valgrind) => bench
                .instructions(*proxy, bin, valgrind)
                .await
                .map_err(|e| format!("{e:#}")),
        };
        let (syscalls, syscall_mix) = match &tools.strace {
            _ if args.skip_syscalls => (Err("--skip-syscalls".to_owned()), Vec::new()),
            None => (Err("strace is not installed".to_owned()), Vec::new()),
            Some(strace) => match bench.syscalls(*proxy, bin, strace).await {
                Ok(mix) => (Ok(mix.iter().map(|(_, n)| n).sum()), mix),
                Err(e) => (Err(format!("{e:#}")), Vec::new()),
            },
        };
        eprintln!(
            "{}: {} instructions, {} syscalls per request",
            proxy.label(),
            fmt_figure(&instructions, 0),
            fmt_figure(&syscalls, 2)
        );
        figures.push(Figures {
            proxy: *proxy,
            instructions,
            syscalls,
            syscall_mix,
        });
    }
    let mut skipped = Vec::new();
    if tools.sidecar.is_none() {
        skipped.push("the sidecar (--skip-sidecar)");
    }
    if tools.haproxy.is_none() {
        skipped.push(if args.skip_haproxy {
            "HAProxy (--skip-haproxy)"
        } else {
            "HAProxy (not installed)"
        });
    }
    if tools.sidecar.is_some() && h2c_upstream.is_none() {
        skipped.push("the sidecar over h2c (needs nginx as the h2c upstream)");
    }
    if tools.nginx.is_none() || args.skip_nginx {
        skipped.push(if args.skip_nginx {
            "nginx (--skip-nginx)"
        } else {
            "nginx (not installed)"
        });
    }
    print!(
        "{}",
        table(&figures, args.low, args.high, upstream_name, &skipped)
    );
    Ok(())
}

/// One measurement setup.
#[derive(Debug)]
struct Measure<'a> {
    dir: &'a Path,
    upstream: SocketAddr,
    low: u64,
    high: u64,
    keep_profiles: Option<&'a Path>,
    /// nginx answering over h2c, for [`Proxy::SidecarH2c`].
    h2c_upstream: Option<SocketAddr>,
}

impl Measure<'_> {
    /// Starts `proxy` as `launch` says; its process and the address to send requests to.
    async fn start(&self, proxy: Proxy, bin: &Path, launch: &Launch) -> Result<(Proc, SocketAddr)> {
        match proxy {
            Proxy::Sidecar { .. } | Proxy::SidecarH2c => {
                let addrs = SidecarAddrs::pick()?;
                let (upstream, all_policies, label) = match proxy {
                    Proxy::Sidecar { all_policies } => (
                        self.upstream,
                        all_policies,
                        if all_policies { "all" } else { "plain" },
                    ),
                    _ => (self.h2c_upstream.context("no h2c upstream")?, false, "h2c"),
                };
                let config = config::proxy_config(upstream, all_policies);
                let mut launch = launch.clone();
                launch.extra_args.extend(["--threads".into(), "1".into()]);
                let sidecar = procs::start_sidecar(
                    bin,
                    self.dir,
                    &format!("instructions-{label}"),
                    &config,
                    addrs,
                    self.upstream,
                    &launch,
                )
                .await?;
                Ok((sidecar.proc, sidecar.outbound))
            }
            Proxy::Haproxy => {
                procs::start_haproxy_with(bin, self.dir, self.upstream, 64, Some(1), launch).await
            }
            Proxy::Nginx => {
                let role = NginxRole::Proxy {
                    upstream: self.upstream,
                };
                procs::start_nginx(bin, self.dir, role, launch).await
            }
        }
    }

    /// Marginal instructions per request under callgrind: two runs.
    async fn instructions(&self, proxy: Proxy, bin: &Path, valgrind: &Path) -> Result<f64> {
        let mut totals = Vec::new();
        for requests in [self.low, self.high] {
            let prefix = format!("callgrind-{}-{requests}", slug(proxy));
            let mut out_file = OsString::from("--callgrind-out-file=");
            out_file.push(self.dir.join(format!("{prefix}.%p")));
            let launch = Launch {
                wrapper: vec![
                    valgrind.into(),
                    "--tool=callgrind".into(),
                    // The total is all we read; no per-instruction or per-jump detail.
                    "--dump-instr=no".into(),
                    out_file,
                ],
                ready_timeout: VALGRIND_READY_TIMEOUT,
                stop_timeout: VALGRIND_STOP_TIMEOUT,
                ..Launch::default()
            };
            let (proc, addr) = self.start(proxy, bin, &launch).await?;
            send(addr, requests, proxy == Proxy::SidecarH2c).await?;
            if !proc.stop_and_wait() {
                bail!("{} did not exit under valgrind", proxy.label());
            }
            totals.push(callgrind_total(self.dir, &prefix, self.keep_profiles)?);
        }
        Ok(marginal(totals[0], totals[1], self.low, self.high))
    }

    /// Marginal syscalls per request by call, most frequent first: strace attached to one
    /// running proxy twice.
    async fn syscalls(
        &self,
        proxy: Proxy,
        bin: &Path,
        strace: &Path,
    ) -> Result<Vec<(String, f64)>> {
        let (proc, addr) = self.start(proxy, bin, &Launch::default()).await?;
        let h2c = proxy == Proxy::SidecarH2c;
        send(addr, STRACE_WARMUP_REQUESTS, h2c).await?;
        let mut counts = Vec::new();
        for requests in [self.low, self.high] {
            let out = self
                .dir
                .join(format!("strace-{}-{requests}.txt", slug(proxy)));
            let tracer = Tracer::attach(strace, proc.pid(), &out)?;
            send(addr, requests, h2c).await?;
            // Let the proxy see the connection close before the count stops.
            tokio::time::sleep(Duration::from_millis(200)).await;
            tracer.detach()?;
            let text = std::fs::read_to_string(&out)
                .with_context(|| format!("reading {}", out.display()))?;
            counts.push(
                strace_calls(&text)
                    .with_context(|| format!("no syscall counts in {}", out.display()))?,
            );
        }
        proc.stop();
        let (low, high) = (&counts[0], &counts[1]);
        let mut mix: Vec<(String, f64)> = high
            .keys()
            .chain(low.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|call| {
                let at = |counts: &BTreeMap<String, u64>| counts.get(call).copied().unwrap_or(0);
                (
                    call.clone(),
                    marginal(at(low), at(high), self.low, self.high),
                )
            })
            .filter(|(_, n)| n.abs() >= 0.005)
            .collect();
        mix.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(mix)
    }
}

/// `(at_high − at_low) / (high − low)`.
fn marginal(at_low: u64, at_high: u64, low: u64, high: u64) -> f64 {
    (at_high as f64 - at_low as f64) / (high - low) as f64
}

fn slug(proxy: Proxy) -> &'static str {
    match proxy {
        Proxy::Sidecar {
            all_policies: false,
        } => "sidecar",
        Proxy::Sidecar { all_policies: true } => "sidecar-all",
        Proxy::SidecarH2c => "sidecar-h2c",
        Proxy::Haproxy => "haproxy",
        Proxy::Nginx => "nginx",
    }
}

/// `requests` GETs, one after another, on one new keep-alive connection (HTTP/1.1, or HTTP/2
/// with prior knowledge when `h2c`); every answer must be a 2xx.
async fn send(addr: SocketAddr, requests: u64, h2c: bool) -> Result<()> {
    let mut conn = match h2c {
        false => Conn::open(addr).await?,
        true => Conn::open_h2c(addr).await?,
    };
    let host = HeaderValue::from_static(config::SERVICE);
    for i in 0..requests {
        let status = tokio::time::timeout(REQUEST_TIMEOUT, conn.get(&host, "/"))
            .await
            .with_context(|| format!("request {i} took more than {REQUEST_TIMEOUT:?}"))??;
        anyhow::ensure!(status.is_success(), "request {i} answered {status}");
    }
    Ok(())
}

/// The instructions in every callgrind output file whose name starts with `prefix` (one per
/// process), summed; each file copied into `keep` when given.
fn callgrind_total(dir: &Path, prefix: &str, keep: Option<&Path>) -> Result<u64> {
    let mut total = None;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !name.starts_with(&format!("{prefix}.")) {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        if let Some(keep) = keep {
            std::fs::create_dir_all(keep)
                .and_then(|()| std::fs::write(keep.join(name), &text))
                .with_context(|| format!("keeping {name} in {}", keep.display()))?;
        }
        let n = parse_callgrind_total(&text)
            .with_context(|| format!("no total in {}", path.display()))?;
        *total.get_or_insert(0) += n;
    }
    total.with_context(|| format!("callgrind wrote no {prefix}.* file"))
}

/// The first event's total (instructions, `Ir`) of a callgrind output file.
fn parse_callgrind_total(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| {
            line.strip_prefix("summary:")
                .or_else(|| line.strip_prefix("totals:"))
        })?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The `calls` column of an `strace -c` summary, by syscall.
fn strace_calls(text: &str) -> Option<BTreeMap<String, u64>> {
    let mut calls_by_name = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // `% time  seconds  usecs/call  calls  [errors]  syscall`; the total line is skipped
        // because older versions leave its usecs/call empty.
        if fields.len() < 5 || fields.last() == Some(&"total") || fields[0].parse::<f64>().is_err()
        {
            continue;
        }
        let calls: u64 = fields[3].parse().ok()?;
        let name = fields.last()?.to_string();
        *calls_by_name.entry(name).or_insert(0) += calls;
    }
    (!calls_by_name.is_empty()).then_some(calls_by_name)
}

/// `strace -c -f` attached to a running process.
#[derive(Debug)]
struct Tracer {
    child: Child,
}

impl Tracer {
    /// Attaches and waits until strace says it is attached.
    fn attach(strace: &Path, pid: u32, out: &Path) -> Result<Self> {
        let mut child = Command::new(strace)
            .args(["-c", "-f", "-p", &pid.to_string(), "-o"])
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting strace")?;
        let stderr = child.stderr.take().context("strace's stderr")?;
        let tracer = Self { child };
        let mut said = String::new();
        for line in BufReader::new(stderr).lines() {
            let line = line?;
            if line.contains("attached") {
                return Ok(tracer);
            }
            said.push_str(&line);
            said.push('\n');
        }
        bail!("strace did not attach to {pid}: {said}")
    }

    /// Detaches (SIGINT), which makes strace write its summary, and waits for it.
    fn detach(mut self) -> Result<()> {
        procs::send_signal(self.child.id(), nix::sys::signal::Signal::SIGINT)?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn fmt_figure(figure: &Result<f64, String>, decimals: usize) -> String {
    match figure {
        Ok(v) => fmt_thousands(*v, decimals),
        Err(_) => "-".into(),
    }
}

/// `48318.4` → `48,318` (no decimals) or `4.49` (two).
fn fmt_thousands(v: f64, decimals: usize) -> String {
    let text = format!("{v:.decimals$}");
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    if frac.is_empty() {
        format!("{sign}{grouped}")
    } else {
        format!("{sign}{grouped}.{frac}")
    }
}

/// The figures side by side, with ratios to HAProxy's and nginx's, then why any are missing.
fn table(figures: &[Figures], low: u64, high: u64, upstream: &str, skipped: &[&str]) -> String {
    let find = |p: Proxy| figures.iter().find(|f| f.proxy == p);
    let ratio = |value: &Result<f64, String>, of: Option<&Result<f64, String>>| {
        fmt_ratio(match (value, of) {
            (Ok(v), Some(Ok(base))) if *base > 0.0 => Some(v / base),
            _ => None,
        })
    };
    let haproxy = find(Proxy::Haproxy);
    let nginx = find(Proxy::Nginx);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nweir-bench instructions: marginal cost of one proxied keep-alive HTTP/1.1 GET \
         (requests {low} to {high} on one connection), upstream: {upstream}\n"
    );
    let _ = writeln!(
        out,
        "{:<32} {:>13} {:>9} {:>9}   {:>9} {:>9} {:>9}",
        "proxy", "instr/req", "/HAProxy", "/nginx", "sys/req", "/HAProxy", "/nginx"
    );
    for f in figures {
        // HAProxy and nginx are measured over HTTP/1.1 only: no ratio for h2c.
        let (haproxy, nginx) = match f.proxy {
            Proxy::SidecarH2c => (None, None),
            _ => (haproxy, nginx),
        };
        let _ = writeln!(
            out,
            "{:<32} {:>13} {:>9} {:>9}   {:>9} {:>9} {:>9}",
            f.proxy.label(),
            fmt_figure(&f.instructions, 0),
            ratio(&f.instructions, haproxy.map(|h| &h.instructions)),
            ratio(&f.instructions, nginx.map(|n| &n.instructions)),
            fmt_figure(&f.syscalls, 2),
            ratio(&f.syscalls, haproxy.map(|h| &h.syscalls)),
            ratio(&f.syscalls, nginx.map(|n| &n.syscalls)),
        );
    }
    let _ = writeln!(out, "\nSyscalls per request by call");
    for f in figures.iter().filter(|f| !f.syscall_mix.is_empty()) {
        let mix: Vec<String> = f
            .syscall_mix
            .iter()
            .map(|(call, n)| format!("{call} {n:.2}"))
            .collect();
        let _ = writeln!(out, "  {:<31} {}", f.proxy.label(), mix.join(", "));
    }
    for f in figures {
        for (what, figure) in [("instructions", &f.instructions), ("syscalls", &f.syscalls)] {
            if let Err(why) = figure {
                let _ = writeln!(out, "  {} {what}: {why}", f.proxy.label());
            }
        }
    }
    for s in skipped {
        let _ = writeln!(out, "  not measured: {s}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callgrind_totals_are_read() {
        let text = "version: 1\ncmd: weir-sidecar\nevents: Ir\nfl=(1) x.rs\nfn=(1) main\n\
                    1 2\nsummary: 123456789\ntotals: 123456789\n";
        assert_eq!(parse_callgrind_total(text), Some(123_456_789));
        assert_eq!(parse_callgrind_total("totals: 42 7\n"), Some(42));
        assert_eq!(parse_callgrind_total("events: Ir\n"), None);
    }

    #[test]
    fn strace_summaries_are_summed() {
        let text = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 60.00    0.000600           3       200           epoll_wait
 30.00    0.000300           1       300        12 recvfrom
 10.00    0.000100           1       100           sendto
------ ----------- ----------- --------- --------- ----------------
100.00    0.001000           1       600        12 total
";
        let calls = strace_calls(text).unwrap();
        assert_eq!(calls.values().sum::<u64>(), 600);
        assert_eq!(calls["recvfrom"], 300);
        assert_eq!(strace_calls("strace: Process 1 detached\n"), None);
    }

    #[test]
    fn marginal_cost_and_formatting() {
        assert_eq!(marginal(100_000_000, 583_180_000, 2_000, 12_000), 48_318.0);
        assert_eq!(marginal(9_000, 53_900, 2_000, 12_000), 4.49);
        assert_eq!(fmt_thousands(48_318.4, 0), "48,318");
        assert_eq!(fmt_thousands(1_234_567.0, 0), "1,234,567");
        assert_eq!(fmt_thousands(999.0, 0), "999");
        assert_eq!(fmt_thousands(4.486, 2), "4.49");
        assert_eq!(fmt_thousands(-1234.0, 0), "-1,234");
    }

    #[test]
    fn the_table_shows_ratios_and_why_figures_are_missing() {
        let figures = vec![
            Figures {
                proxy: Proxy::Sidecar {
                    all_policies: false,
                },
                instructions: Ok(48_318.0),
                syscalls: Ok(4.49),
                syscall_mix: vec![("recvfrom".into(), 2.0), ("sendto".into(), 2.49)],
            },
            Figures {
                proxy: Proxy::Haproxy,
                instructions: Ok(27_932.0),
                syscalls: Ok(4.62),
                syscall_mix: Vec::new(),
            },
            Figures {
                proxy: Proxy::Nginx,
                instructions: Err("valgrind is not installed".into()),
                syscalls: Ok(5.22),
                syscall_mix: Vec::new(),
            },
        ];
        let text = table(&figures, 2000, 12000, "nginx", &["the sidecar's twin"]);
        let sidecar = text
            .lines()
            .find(|l| l.starts_with("weir-sidecar (plain)"))
            .unwrap();
        assert!(
            sidecar.contains(" 48,318 ") && sidecar.contains(" 1.73x "),
            "{sidecar}"
        );
        assert!(
            sidecar.contains(" 4.49 ") && sidecar.contains(" 0.97x ") && sidecar.contains(" 0.86x")
        );
        assert!(text.contains("nginx proxy, keepalive 64 instructions: valgrind is not installed"));
        assert!(text.contains("not measured: the sidecar's twin"));
        let mix = format!(
            "  {:<31} recvfrom 2.00, sendto 2.49\n",
            "weir-sidecar (plain)"
        );
        assert!(text.contains(&mix), "{text}");
    }
}
