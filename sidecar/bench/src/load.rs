//! The load generator: keep-alive HTTP/1.1 connections driven either closed loop (each
//! connection sends its next request as soon as the previous answer is read: the maximum
//! throughput) or open loop (requests are due at fixed times whatever the target does: latency
//! at a given rate, free of coordinated omission).

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Where the load generator, the upstream and the proxy are in [`Stats::cpu`].
pub const CPU_LOAD_GENERATOR: usize = 0;
pub const CPU_UPSTREAM: usize = 1;
pub const CPU_PROXY: usize = 2;

/// A request that takes longer than this counts as an error and its connection is replaced.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The open loop releases the requests that have fallen due at most this often. Releasing each
/// on its own (every 50 µs at 20 000 req/s) costs the load generator twice the CPU, which on a
/// small machine it takes from the proxy. A request's latency still runs from when it was due,
/// so it includes up to one tick of release delay; that is the same for every target, so the
/// latency a proxy adds (its p99 minus direct's) is unaffected.
const PACER_TICK: Duration = Duration::from_micros(250);
/// How long the open loop waits, after the last request was due, for the answers still owed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where requests go and the `Host` header they carry.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: HeaderValue,
}

impl Target {
    pub fn new(addr: SocketAddr, host: &str) -> Result<Self> {
        Ok(Self {
            addr,
            host: HeaderValue::from_str(host).context("invalid Host header")?,
        })
    }
}

/// One HTTP/1.1 keep-alive connection, without a pool in front of it.
#[derive(Debug)]
pub struct Conn {
    sender: Sender,
}

/// The sending half of an HTTP/1.1 or an h2c connection.
#[derive(Debug)]
enum Sender {
    Http1(SendRequest<Empty<Bytes>>),
    H2c(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            sender: Sender::Http1(sender),
        })
    }

    /// A connection speaking HTTP/2 with prior knowledge; its requests name the service in their
    /// URI's authority, as HTTP/2 requests do.
    pub async fn open_h2c(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            sender: Sender::H2c(sender),
        })
    }

    fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::Http1(sender) => sender.is_closed(),
            Sender::H2c(sender) => sender.is_closed(),
        }
    }

    /// Sends `GET path` and reads the whole answer.
    pub async fn get(&mut self, host: &HeaderValue, path: &str) -> Result<StatusCode> {
        let response = self.send_get(host, path).await?;
        let status = response.status();
        response.into_body().collect().await?;
        Ok(status)
    }

    async fn send_get(
        &mut self,
        host: &HeaderValue,
        path: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        Ok(match &mut self.sender {
            Sender::Http1(sender) => {
                sender.ready().await?;
                let request = Request::get(path)
                    .header(HOST, host.clone())
                    .body(Empty::new())?;
                sender.send_request(request).await?
            }
            Sender::H2c(sender) => {
                sender.ready().await?;
                let uri = format!("http://{}{path}", host.to_str()?);
                let request = Request::get(uri)
                    .version(hyper::Version::HTTP_2)
                    .body(Empty::new())?;
                sender.send_request(request).await?
            }
        })
    }
}

/// An answer and its body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Conn {
    /// Sends `GET path` and reads the whole answer, keeping its body.
    pub async fn get_answer(&mut self, host: &HeaderValue, path: &str) -> Result<Answer> {
        let response = self.send_get(host, path).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Answer { status, body })
    }
}

/// One `GET path` on a new connection, with its whole answer.
pub async fn get_answer_once(addr: SocketAddr, host: &str, path: &str) -> Result<Answer> {
    let mut conn = Conn::open(addr).await?;
    let host = HeaderValue::from_str(host)?;
    tokio::time::timeout(REQUEST_TIMEOUT, conn.get_answer(&host, path))
        .await
        .context("timed out")?
}

/// One `GET path` on a new connection.
pub async fn get_once(addr: SocketAddr, host: &str, path: &str) -> Result<StatusCode> {
    Ok(get_answer_once(addr, host, path).await?.status)
}

/// What one phase measured. Only 2xx answers count as requests served and have their latency
/// recorded: a proxy that answers errors fast must not look fast.
#[derive(Debug, Clone)]
pub struct Stats {
    /// 2xx answers.
    pub ok: u64,
    /// Answers with any other status.
    pub non_2xx: u64,
    /// Failed connections, broken connections and timeouts.
    pub errors: u64,
    /// Latency of the 2xx answers, in microseconds.
    pub latency_us: Histogram<u64>,
    /// How long the measurement lasted.
    pub window: Duration,
    /// CPU time (user + system, all threads) each watched process used during the
    /// measurement, in the order they were given; `None` if it could not be read.
    pub cpu: Vec<Option<Duration>>,
    /// CPU time that processes other than the watched ones used meanwhile, in CPUs (1.0 is one
    /// CPU busy all the time): something else running makes the figures noisy.
    pub other_cpus: Option<f64>,
}

impl Stats {
    fn new(window: Duration) -> Self {
        Self {
            ok: 0,
            non_2xx: 0,
            errors: 0,
            // One microsecond to one hour, three significant digits.
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("constant histogram bounds are valid"),
            window,
            cpu: Vec::new(),
            other_cpus: None,
        }
    }

    fn merge(&mut self, other: &Self) {
        self.ok += other.ok;
        self.non_2xx += other.non_2xx;
        self.errors += other.errors;
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms with the same bounds add up");
    }

    fn count(&mut self, outcome: &Outcome, latency: Duration) {
        match outcome {
            Outcome::Ok => {
                self.ok += 1;
                let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                self.latency_us.saturating_record(us.max(1));
            }
            Outcome::Non2xx => self.non_2xx += 1,
            Outcome::Error => self.errors += 1,
        }
    }

    /// 2xx answers per second.
    pub fn rps(&self) -> f64 {
        let secs = self.window.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// Microseconds of CPU the `i`th watched process spent per 2xx answer.
    pub fn cpu_us_per_request(&self, i: usize) -> Option<f64> {
        let cpu = (*self.cpu.get(i)?)?;
        (self.ok > 0).then(|| cpu.as_secs_f64() * 1e6 / self.ok as f64)
    }

    /// The latency at `quantile` (0..=1) in milliseconds, `None` without a single 2xx answer.
    pub fn quantile_ms(&self, quantile: f64) -> Option<f64> {
        (!self.latency_us.is_empty())
            .then(|| self.latency_us.value_at_quantile(quantile) as f64 / 1000.0)
    }
}

enum Outcome {
    Ok,
    Non2xx,
    Error,
}

/// Sends one request on `conn`, (re)connecting first if needed; a broken connection is dropped
/// so that the next request opens a new one.
async fn request(conn: &mut Option<Conn>, target: &Target) -> Outcome {
    if conn.as_ref().is_some_and(Conn::is_closed) {
        // The peer closed it between requests (e.g. `Connection: close`): not an error.
        *conn = None;
    }
    let c = match conn {
        Some(c) => c,
        None => match tokio::time::timeout(REQUEST_TIMEOUT, Conn::open(target.addr)).await {
            Ok(Ok(c)) => conn.insert(c),
            _ => {
                // Do not spin on a refused port.
                tokio::time::sleep(Duration::from_millis(10)).await;
                return Outcome::Error;
            }
        },
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, c.get(&target.host, "/")).await {
        Ok(Ok(status)) if status.is_success() => Outcome::Ok,
        Ok(Ok(_)) => Outcome::Non2xx,
        Ok(Err(_)) | Err(_) => {
            *conn = None;
            Outcome::Error
        }
    }
}

async fn open_all(target: &Target, connections: usize) -> Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(Conn::open(target.addr).await?);
    }
    Ok(conns)
}

/// Maximum throughput: every connection sends its next request as soon as it has read the
/// previous answer. Answers that arrive during `warmup` are not counted.
pub async fn closed_loop(
    target: &Target,
    connections: usize,
    warmup: Duration,
    duration: Duration,
    watch: &[u32],
) -> Result<Stats> {
    let conns = open_all(target, connections).await?;
    let measure_start = Instant::now() + warmup;
    let end = measure_start + duration;
    let cpu = watch_cpu(watch, measure_start, end);
    let workers: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut conn = Some(conn);
                let mut stats = Stats::new(duration);
                while Instant::now() < end {
                    let sent = Instant::now();
                    let outcome = request(&mut conn, &target).await;
                    let done = Instant::now();
                    if done >= measure_start && done <= end {
                        stats.count(&outcome, done - sent);
                    }
                }
                stats
            })
        })
        .collect();
    let mut total = Stats::new(duration);
    for worker in workers {
        total.merge(&worker.await?);
    }
    (total.cpu, total.other_cpus) = cpu.await?;
    Ok(total)
}

/// A request that is due at `due`.
struct Slot {
    due: Instant,
    /// Outside the warm-up: count it.
    measured: bool,
}

/// Latency at a fixed rate. Requests are due at evenly spaced times, handed round-robin to the
/// connections, and their latency runs from when they were due, not from when they could be
/// sent: a request that waits behind a slow answer on its connection carries that wait, as a
/// real client's would (no coordinated omission).
///
/// The schedule is kept by a plain thread rather than the tokio timer, whose 1 ms ticks would
/// release requests in larger bursts and add up to 1 ms to every latency.
pub async fn open_loop(
    target: &Target,
    connections: usize,
    rate: f64,
    warmup: Duration,
    duration: Duration,
    watch: &[u32],
) -> Result<Stats> {
    anyhow::ensure!(
        rate.is_finite() && rate > 0.0,
        "open-loop rate must be positive, not {rate}"
    );
    let conns = open_all(target, connections).await?;
    let mut senders = Vec::with_capacity(connections);
    let mut workers = Vec::with_capacity(connections);
    for conn in conns {
        let (tx, mut rx) = mpsc::unbounded_channel::<Slot>();
        senders.push(tx);
        let target = target.clone();
        workers.push(tokio::spawn(async move {
            let mut conn = Some(conn);
            let mut stats = Stats::new(duration);
            while let Some(slot) = rx.recv().await {
                let outcome = request(&mut conn, &target).await;
                if slot.measured {
                    stats.count(&outcome, slot.due.elapsed());
                }
            }
            stats
        }));
    }
    // Let the workers park on their channels before the first request is due.
    let start = Instant::now() + Duration::from_millis(20);
    let measure_start = start + warmup;
    let end = measure_start + duration;
    let cpu = watch_cpu(watch, measure_start, end);
    let pacer = std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || pace(&senders, rate, start, measure_start, end))?;
    let mut total = Stats::new(duration);
    let drained = tokio::time::timeout_at(end + DRAIN_TIMEOUT, async {
        for worker in workers {
            total.merge(&worker.await?);
        }
        anyhow::Ok(())
    })
    .await;
    pacer
        .join()
        .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
    match drained {
        Ok(result) => result?,
        Err(_) => anyhow::bail!(
            "answers were still owed {}s after the last request was due",
            DRAIN_TIMEOUT.as_secs()
        ),
    }
    (total.cpu, total.other_cpus) = cpu.await?;
    Ok(total)
}

/// Releases one request every `1/rate` seconds from `start` until `end`, in batches at most
/// every [`PACER_TICK`].
fn pace(
    senders: &[mpsc::UnboundedSender<Slot>],
    rate: f64,
    start: Instant,
    measure_start: Instant,
    end: Instant,
) {
    let period_ns = 1e9 / rate;
    let mut k: u64 = 0;
    loop {
        let due = start + Duration::from_nanos((k as f64 * period_ns) as u64);
        if due >= end {
            return;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep((due - now).max(PACER_TICK));
            continue;
        }
        let slot = Slot {
            due,
            measured: due >= measure_start,
        };
        // A worker only goes away if it panicked; the join reports that.
        let _ = senders[(k % senders.len() as u64) as usize].send(slot);
        k += 1;
    }
}

/// The CPU time each of `pids` uses between `start` and `end`, and how many CPUs the rest of
/// the machine's processes kept busy meanwhile.
fn watch_cpu(
    pids: &[u32],
    start: Instant,
    end: Instant,
) -> tokio::task::JoinHandle<(Vec<Option<Duration>>, Option<f64>)> {
    let pids = pids.to_vec();
    tokio::spawn(async move {
        tokio::time::sleep_until(start).await;
        let machine_before = machine_cpu_time();
        let before: Vec<_> = pids.iter().map(|&pid| cpu_time(pid)).collect();
        tokio::time::sleep_until(end).await;
        let used: Vec<_> = pids
            .iter()
            .zip(before)
            .map(|(&pid, before)| Some(cpu_time(pid)?.saturating_sub(before?)))
            .collect();
        let machine = machine_cpu_time()
            .zip(machine_before)
            .map(|(after, before)| after.saturating_sub(before));
        let ours: Option<Duration> = used.iter().copied().sum();
        let other = machine.zip(ours).map(|(all, ours)| {
            all.saturating_sub(ours).as_secs_f64() / (end - start).as_secs_f64()
        });
        (used, other)
    })
}

/// Time all CPUs spent running processes (user, nice and system; not interrupts), from
/// `/proc/stat`.
fn machine_cpu_time() -> Option<Duration> {
    parse_machine_cpu_time(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_machine_cpu_time(stat: &str) -> Option<Duration> {
    let mut fields = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace();
    let mut ticks = 0;
    for _ in 0..3 {
        ticks += fields.next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_millis(ticks * 1000 / USER_HZ))
}

/// Linux reports CPU times in /proc in USER_HZ ticks, which are 1/100 s on every architecture.
const USER_HZ: u64 = 100;

/// User plus system time of all threads of `pid`, from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Option<Duration> {
    let split = cpu_split(pid)?;
    Some(split.user + split.system)
}

/// A process's CPU time in user space and in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSplit {
    pub user: Duration,
    pub system: Duration,
}

/// The user and system time of all threads of `pid`, from `/proc/PID/stat`.
pub fn cpu_split(pid: u32) -> Option<CpuSplit> {
    parse_cpu_split(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_cpu_split(stat: &str) -> Option<CpuSplit> {
    // Fields after the command name (which may hold spaces and parentheses): state is the
    // first, utime and stime the 12th and 13th, in clock ticks.
    let mut fields = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .skip(11);
    let mut ticks = || -> Option<Duration> {
        let ticks: u64 = fields.next()?.parse().ok()?;
        Some(Duration::from_millis(ticks * 1000 / USER_HZ))
    };
    Some(CpuSplit {
        user: ticks()?,
        system: ticks()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_milliseconds() {
        let mut stats = Stats::new(Duration::from_secs(2));
        for us in 1..=1000 {
            stats.count(&Outcome::Ok, Duration::from_micros(us));
        }
        stats.count(&Outcome::Non2xx, Duration::from_secs(9));
        stats.count(&Outcome::Error, Duration::ZERO);
        assert_eq!(stats.ok, 1000);
        assert_eq!((stats.non_2xx, stats.errors), (1, 1));
        assert_eq!(stats.rps(), 500.0);
        let p50 = stats.quantile_ms(0.5).unwrap();
        let p99 = stats.quantile_ms(0.99).unwrap();
        assert!((p50 - 0.5).abs() < 0.001, "{p50}");
        assert!((p99 - 0.99).abs() < 0.001, "{p99}");
        assert_eq!(Stats::new(Duration::from_secs(1)).quantile_ms(0.5), None);
        stats.cpu = vec![Some(Duration::from_millis(5)), None];
        assert_eq!(stats.cpu_us_per_request(0), Some(5.0));
        assert_eq!(stats.cpu_us_per_request(1), None);
        assert_eq!(stats.cpu_us_per_request(2), None);
    }

    #[test]
    fn cpu_time_is_utime_plus_stime() {
        let stat = "4242 (weir (x) bench) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 130 0 0 20 0 \
                    3 0 100 0 0";
        let split = parse_cpu_split(stat).unwrap();
        assert_eq!(
            (split.user, split.system),
            (Duration::from_millis(2500), Duration::from_millis(1300))
        );
        assert!(cpu_time(std::process::id()).is_some());
        let machine = "cpu  54171 10 20874 154907 448 0 7065 32 0 0\ncpu0 1 2 3 4 5 6 7 8 9 0\n";
        assert_eq!(
            parse_machine_cpu_time(machine),
            Some(Duration::from_millis(750_550))
        );
        assert!(machine_cpu_time().is_some());
    }
}
