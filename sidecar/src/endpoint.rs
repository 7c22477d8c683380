//! Endpoints, their health as outlier detection sees it, and the load balancers that choose
//! among the healthy ones.
//!
//! Our own balancers rather than `tower::balance::p2c`: tower's balancer needs a `Discover`
//! stream of per-endpoint services and hides which endpoint served a request, while outlier
//! detection needs to charge each outcome to its endpoint and to take ejected endpoints out of
//! the choice at once. The balancers themselves are a few lines each: round-robin, power of two
//! random choices over requests in flight (least-request), and power of two choices over a
//! peak-sensitive EWMA of latency weighted by load (Linkerd's default), which decays with time
//! as tower's `PeakEwma` does, so an endpoint that was slow once is tried again.
//!
//! An application's own `429 Too Many Requests` makes the balancers avoid its endpoint for a
//! while (its `Retry-After`, at most 30 s): the endpoint is not ejected (it counts in no
//! ejection metric, and `maxEjectionPercent` does not apply), it is only passed over while
//! another endpoint of the subset can serve, and used anyway when all are avoided.
//!
//! Outlier detection keeps its own book of ejections, so that checking `maxEjectionPercent` and
//! ejecting are one step under one lock (two failing endpoints cannot both take the last
//! allowed place), and the number ejected is known without looking at every endpoint.

use http::uri::Authority;
use parking_lot::Mutex;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use weir_proxy_api::{LoadBalancerPolicy, OutlierDetection};

/// How long an app's 429 avoids its endpoint when it says nothing (no usable `Retry-After`).
pub const DEFAULT_OVERLOAD_WAIT: Duration = Duration::from_secs(1);
/// The longest an app's 429 avoids its endpoint, whatever its `Retry-After` says.
pub const MAX_OVERLOAD_WAIT: Duration = Duration::from_secs(30);

/// One address traffic can be sent to. Shared across config reloads, so an ejection or a latency
/// estimate survives a weight edit.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub authority: Authority,
    in_flight: AtomicU32,
    health: Mutex<Health>,
}

#[derive(Debug)]
struct Health {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    /// Ejections so far; the next ejection lasts this many times `baseEjectionTime`. Decays by
    /// one every `interval` the endpoint stays healthy.
    ejections: u32,
    last_decay: Instant,
    /// Peak-EWMA of response latency in microseconds, as of `ewma_at`; it decays from there.
    ewma_micros: f64,
    ewma_at: Instant,
    /// Until when the balancers pass it over after the app's own 429.
    avoided_until: Option<Instant>,
}

/// Whether an endpoint may be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Ready,
    /// Overloaded by its own account (a 429): picked only when no ready endpoint is left.
    Avoided,
    /// Taken out by outlier detection.
    Ejected,
}

/// How an attempt against an endpoint ended, as outlier detection counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx answer that is not a gateway error.
    ServerError,
    /// 502/503/504, a per-try timeout, a failed connection or a reset.
    GatewayError,
}

/// Time constant of the latency average. Between samples an estimate decays towards zero by a
/// factor e every `EWMA_DECAY`, so an endpoint starved after a slow spell is probed again once
/// its estimate falls to its peers': within about 10 s even for a spell 10,000 times slower
/// than they are (e^9.2 ≈ 10,000). Its first fast answer after that gap replaces the estimate
/// almost whole, and it wins its share back.
const EWMA_DECAY: Duration = Duration::from_secs(1);
/// What an endpoint without measurements is assumed to cost: optimistic, so new endpoints get
/// tried, but not zero, so they do not take everything at once.
const EWMA_DEFAULT_MICROS: f64 = 1_000.0;

impl Endpoint {
    pub fn new(addr: SocketAddr, now: Instant) -> Self {
        let authority =
            Authority::try_from(addr.to_string()).expect("a socket address is an authority");
        Self {
            addr,
            authority,
            in_flight: AtomicU32::new(0),
            health: Mutex::new(Health {
                consecutive_5xx: 0,
                consecutive_gateway: 0,
                ejected_until: None,
                ejections: 0,
                last_decay: now,
                ewma_micros: EWMA_DEFAULT_MICROS,
                ewma_at: now,
                avoided_until: None,
            }),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        matches!(self.health.lock().ejected_until, Some(until) if now < until)
    }

    /// Whether it may be picked at `now`, under one lock.
    pub fn standing(&self, now: Instant) -> Standing {
        let h = self.health.lock();
        if matches!(h.ejected_until, Some(until) if now < until) {
            Standing::Ejected
        } else if matches!(h.avoided_until, Some(until) if now < until) {
            Standing::Avoided
        } else {
            Standing::Ready
        }
    }

    /// Passes the endpoint over until `now + wait` (at most 30 s): it answered an overload 429.
    /// A later, shorter wait does not cut an earlier, longer one short.
    pub fn avoid(&self, wait: Duration, now: Instant) {
        let until = crate::clock::deadline(now, wait.min(MAX_OVERLOAD_WAIT));
        let mut h = self.health.lock();
        h.avoided_until = Some(h.avoided_until.map_or(until, |u| u.max(until)));
    }

    /// Feeds a latency sample into the peak-EWMA: a sample above the (decayed) estimate replaces
    /// it at once (peak-sensitive), a lower one pulls it down by the time since the last sample.
    pub fn observe_latency(&self, latency: Duration, now: Instant) {
        let sample = latency.as_secs_f64() * 1e6;
        let mut h = self.health.lock();
        let w = decay_weight(h.ewma_at, now);
        let decayed = h.ewma_micros * w;
        h.ewma_micros = if sample > decayed {
            sample
        } else {
            decayed + sample * (1.0 - w)
        };
        h.ewma_at = h.ewma_at.max(now);
    }

    /// The latency estimate as of `now`: it decays between samples, as tower's `PeakEwma` does
    /// on read, so that a starved endpoint's cost falls until it is chosen again.
    pub fn latency_estimate(&self, now: Instant) -> Duration {
        let micros = {
            let h = self.health.lock();
            h.ewma_micros * decay_weight(h.ewma_at, now)
        };
        Duration::try_from_secs_f64(micros / 1e6).unwrap_or(Duration::MAX)
    }

    fn ewma_cost(&self, now: Instant) -> f64 {
        let ewma = {
            let h = self.health.lock();
            h.ewma_micros * decay_weight(h.ewma_at, now)
        };
        ewma * (f64::from(self.in_flight()) + 1.0)
    }
}

/// How much of an estimate made at `at` is left at `now`.
fn decay_weight(at: Instant, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(at).as_secs_f64();
    (-elapsed / EWMA_DECAY.as_secs_f64()).exp()
}

/// Holds one request in flight on an endpoint.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Outlier detection over all endpoints of one service.
#[derive(Debug)]
pub struct OutlierDetector {
    pub config: OutlierDetection,
    /// When each current ejection ends, soonest first; ended ones are dropped as they are met.
    /// Its length is the number ejected: no scan over the endpoints.
    ejections: Mutex<BinaryHeap<Reverse<Instant>>>,
}

/// Upper bound of an ejection, whatever the count: an endpoint is always reconsidered eventually.
const MAX_EJECTION: Duration = Duration::from_secs(300);

impl OutlierDetector {
    /// A detector for `endpoints`, counting those already ejected (the health of an endpoint
    /// outlives a config reload; the detector is rebuilt with its population).
    pub fn new(config: OutlierDetection, endpoints: &[Arc<Endpoint>], now: Instant) -> Self {
        let ejections = endpoints
            .iter()
            .filter_map(|e| e.health.lock().ejected_until.filter(|&until| now < until))
            .map(Reverse)
            .collect();
        Self {
            config,
            ejections: Mutex::new(ejections),
        }
    }

    /// How many endpoints are ejected at `now`, in constant time (amortized): what the
    /// `weir_endpoints_ejected` gauge shows.
    pub fn ejected(&self, now: Instant) -> usize {
        let mut book = self.ejections.lock();
        Self::forget_ended(&mut book, now);
        book.len()
    }

    fn forget_ended(book: &mut BinaryHeap<Reverse<Instant>>, now: Instant) {
        while book.peek().is_some_and(|Reverse(until)| *until <= now) {
            book.pop();
        }
    }

    /// Charges `outcome` to `endpoint`; returns true when this outcome ejected it (in dry run:
    /// would have ejected it, and did not).
    pub fn record(
        &self,
        endpoint: &Endpoint,
        all: &[Arc<Endpoint>],
        outcome: Outcome,
        now: Instant,
    ) -> bool {
        let c = &self.config;
        let trip = {
            let mut h = endpoint.health.lock();
            Self::decay(c, &mut h, now);
            match outcome {
                Outcome::Success => {
                    h.consecutive_5xx = 0;
                    h.consecutive_gateway = 0;
                    return false;
                }
                Outcome::ServerError => {
                    h.consecutive_5xx = h.consecutive_5xx.saturating_add(1);
                    h.consecutive_gateway = 0;
                }
                Outcome::GatewayError => {
                    h.consecutive_5xx = h.consecutive_5xx.saturating_add(1);
                    h.consecutive_gateway = h.consecutive_gateway.saturating_add(1);
                }
            }
            let already = matches!(h.ejected_until, Some(until) if now < until);
            !already
                && (c
                    .consecutive_5xx_errors
                    .is_some_and(|n| h.consecutive_5xx >= n)
                    || c.consecutive_gateway_errors
                        .is_some_and(|n| h.consecutive_gateway >= n))
        };
        if !trip {
            return false;
        }
        // The check and the ejection under one lock of the book: concurrent failures on
        // different endpoints cannot together exceed maxEjectionPercent.
        let mut book = self.ejections.lock();
        Self::forget_ended(&mut book, now);
        if !self.may_eject(all.len(), book.len()) {
            return false;
        }
        let mut h = endpoint.health.lock();
        if c.dry_run {
            // Would have been ejected: counted by the caller, and the count starts over so the
            // next run of errors is counted again.
            h.consecutive_5xx = 0;
            h.consecutive_gateway = 0;
            return true;
        }
        if matches!(h.ejected_until, Some(until) if now < until) {
            // Another failure of the same endpoint ejected it meanwhile.
            return false;
        }
        h.ejections = h.ejections.saturating_add(1);
        let time = c.base_ejection_time.get().saturating_mul(h.ejections);
        let cap = MAX_EJECTION.max(c.base_ejection_time.get());
        let time = time.min(cap);
        let until = now
            .checked_add(time)
            .or_else(|| now.checked_add(MAX_EJECTION))
            .unwrap_or(now);
        h.ejected_until = Some(until);
        h.consecutive_5xx = 0;
        h.consecutive_gateway = 0;
        // Healthy time, and so decay, starts when the ejection ends.
        h.last_decay = until;
        book.push(Reverse(until));
        true
    }

    /// Whether one more ejection stays within `maxEjectionPercent` (at least one endpoint may
    /// always be ejected when the percentage is above zero, as Envoy does; otherwise small
    /// services could never eject anything).
    fn may_eject(&self, endpoints: usize, ejected: usize) -> bool {
        let pct = self.config.max_ejection_percent.min(100) as usize;
        if pct == 0 {
            return false;
        }
        let allowed = (endpoints.saturating_mul(pct) / 100).max(1);
        ejected < allowed && ejected < endpoints
    }

    /// Every `interval` an endpoint that is not ejected earns back one ejection, so a flaky
    /// endpoint's ejections grow only while it keeps failing.
    fn decay(c: &OutlierDetection, h: &mut Health, now: Instant) {
        let interval = c.interval.get();
        if h.ejections == 0 || interval.is_zero() {
            h.last_decay = now;
            return;
        }
        if matches!(h.ejected_until, Some(until) if now < until) {
            return;
        }
        let periods = now.saturating_duration_since(h.last_decay).as_nanos() / interval.as_nanos();
        if periods > 0 {
            h.ejections = h
                .ejections
                .saturating_sub(periods.min(u128::from(u32::MAX)) as u32);
            h.last_decay = now;
        }
    }
}

/// Chooses an endpoint among a subset's healthy ones.
#[derive(Debug)]
pub struct Balancer {
    policy: LoadBalancerPolicy,
    next: AtomicUsize,
}

impl Balancer {
    pub fn new(policy: LoadBalancerPolicy) -> Self {
        Self {
            policy,
            next: AtomicUsize::new(fastrand::usize(..1024)),
        }
    }

    /// Picks an endpoint that is not ejected, or none when all are (or there are none). An
    /// endpoint avoided after a 429 is picked only when every one that is not ejected is.
    pub fn pick<'a>(
        &self,
        endpoints: &'a [Arc<Endpoint>],
        now: Instant,
    ) -> Option<&'a Arc<Endpoint>> {
        match endpoints.len() {
            0 => None,
            1 => endpoints
                .first()
                .filter(|e| e.standing(now) != Standing::Ejected),
            n => match self.policy {
                LoadBalancerPolicy::RoundRobin => {
                    let start = self.next.fetch_add(1, Ordering::Relaxed);
                    let ready = (0..n)
                        .map(|i| &endpoints[(start + i) % n])
                        .find(|e| e.standing(now) == Standing::Ready);
                    ready.or_else(|| Self::any_not_ejected(endpoints, start, now))
                }
                LoadBalancerPolicy::LeastRequest => {
                    Self::p2c(endpoints, now, |e| f64::from(e.in_flight()))
                }
                LoadBalancerPolicy::Ewma => Self::p2c(endpoints, now, |e| e.ewma_cost(now)),
            },
        }
    }

    fn any_not_ejected(
        endpoints: &[Arc<Endpoint>],
        start: usize,
        now: Instant,
    ) -> Option<&Arc<Endpoint>> {
        let n = endpoints.len();
        (0..n)
            .map(|i| &endpoints[(start + i) % n])
            .find(|e| e.standing(now) != Standing::Ejected)
    }

    fn p2c(
        endpoints: &[Arc<Endpoint>],
        now: Instant,
        cost: impl Fn(&Endpoint) -> f64,
    ) -> Option<&Arc<Endpoint>> {
        let n = endpoints.len();
        let a = fastrand::usize(..n);
        let b = (a + 1 + fastrand::usize(..n - 1)) % n;
        let (ea, eb) = (&endpoints[a], &endpoints[b]);
        match (ea.standing(now), eb.standing(now)) {
            (Standing::Ready, Standing::Ready) => Some(if cost(eb) < cost(ea) { eb } else { ea }),
            (Standing::Ready, _) => Some(ea),
            (_, Standing::Ready) => Some(eb),
            // Neither ready: fall back to a scan so a mostly-ejected (or mostly-avoided) subset
            // still finds its ready endpoints, and else any that is not ejected.
            _ => {
                let start = fastrand::usize(..n);
                (0..n)
                    .map(|i| &endpoints[(start + i) % n])
                    .find(|e| e.standing(now) == Standing::Ready)
                    .or_else(|| Self::any_not_ejected(endpoints, start, now))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proxy_api::Duration as D;

    fn endpoints(n: u16, now: Instant) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| {
                Arc::new(Endpoint::new(
                    SocketAddr::from(([127, 0, 0, 1], 9000 + i)),
                    now,
                ))
            })
            .collect()
    }

    fn detector(max_pct: u32) -> OutlierDetector {
        OutlierDetector::new(
            OutlierDetection {
                consecutive_5xx_errors: Some(3),
                consecutive_gateway_errors: Some(2),
                interval: D::from_secs(10),
                base_ejection_time: D::from_secs(30),
                max_ejection_percent: max_pct,
                dry_run: false,
            },
            &[],
            Instant::now(),
        )
    }

    #[test]
    fn ejects_on_the_threshold_and_grows_with_each_reejection() {
        let t0 = Instant::now();
        let all = endpoints(3, t0);
        let d = detector(50);
        assert!(!d.record(&all[0], &all, Outcome::ServerError, t0));
        assert!(!d.record(&all[0], &all, Outcome::ServerError, t0));
        assert!(d.record(&all[0], &all, Outcome::ServerError, t0));
        assert!(all[0].is_ejected(t0 + Duration::from_secs(29)));
        let t1 = t0 + Duration::from_secs(30);
        assert!(!all[0].is_ejected(t1));
        // Re-ejected at once: now twice the base time.
        d.record(&all[0], &all, Outcome::GatewayError, t1);
        assert!(d.record(&all[0], &all, Outcome::GatewayError, t1));
        assert!(all[0].is_ejected(t1 + Duration::from_secs(59)));
        assert!(!all[0].is_ejected(t1 + Duration::from_secs(60)));
    }

    #[test]
    fn max_ejection_percent_is_respected() {
        let t0 = Instant::now();
        let all = endpoints(3, t0);
        let d = detector(50);
        for _ in 0..2 {
            d.record(&all[0], &all, Outcome::GatewayError, t0);
            d.record(&all[1], &all, Outcome::GatewayError, t0);
        }
        assert!(all[0].is_ejected(t0));
        assert!(!all[1].is_ejected(t0), "50 % of 3 allows one ejection");
        let none = detector(0);
        let other = endpoints(2, t0);
        for _ in 0..5 {
            none.record(&other[0], &other, Outcome::GatewayError, t0);
        }
        assert!(!other[0].is_ejected(t0));
    }

    fn every_balancer() -> impl Iterator<Item = (LoadBalancerPolicy, Balancer)> {
        [
            LoadBalancerPolicy::RoundRobin,
            LoadBalancerPolicy::LeastRequest,
            LoadBalancerPolicy::Ewma,
        ]
        .map(|policy| (policy, Balancer::new(policy)))
        .into_iter()
    }

    #[test]
    fn balancers_skip_ejected_endpoints() {
        let t0 = Instant::now();
        let all = endpoints(3, t0);
        let d = detector(100);
        d.record(&all[1], &all, Outcome::GatewayError, t0);
        d.record(&all[1], &all, Outcome::GatewayError, t0);
        for (policy, b) in every_balancer() {
            for _ in 0..100 {
                assert_ne!(b.pick(&all, t0).unwrap().addr, all[1].addr, "{policy:?}");
            }
        }
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let t0 = Instant::now();
        let all = endpoints(2, t0);
        let _busy: Vec<_> = (0..5).map(|_| all[0].start()).collect();
        let b = Balancer::new(LoadBalancerPolicy::LeastRequest);
        for _ in 0..50 {
            assert_eq!(b.pick(&all, t0).unwrap().addr, all[1].addr);
        }
    }

    #[test]
    fn ewma_prefers_the_fast_endpoint() {
        let t0 = Instant::now();
        let all = endpoints(2, t0);
        all[0].observe_latency(Duration::from_millis(200), t0);
        all[1].observe_latency(Duration::from_millis(2), t0);
        let b = Balancer::new(LoadBalancerPolicy::Ewma);
        for _ in 0..50 {
            assert_eq!(b.pick(&all, t0).unwrap().addr, all[1].addr);
        }
    }

    #[test]
    fn max_ejection_percent_holds_under_concurrency() {
        // Ten endpoints, all failing at once from many threads: 50 % allows five ejections.
        for _ in 0..20 {
            let t0 = Instant::now();
            let all = Arc::new(endpoints(10, t0));
            let d = Arc::new(detector(50));
            let start = Arc::new(std::sync::Barrier::new(10));
            let threads: Vec<_> = (0..10)
                .map(|i| {
                    let (all, d, start) = (all.clone(), d.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        (0..4)
                            .filter(|_| d.record(&all[i], &all, Outcome::GatewayError, t0))
                            .count()
                    })
                })
                .collect();
            let ejected: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
            assert_eq!(ejected, 5);
            assert_eq!(d.ejected(t0), 5);
            assert_eq!(all.iter().filter(|e| e.is_ejected(t0)).count(), 5);
        }
    }

    #[test]
    fn the_ejected_count_is_kept_not_scanned_and_follows_the_clock() {
        let t0 = Instant::now();
        let all = endpoints(4, t0);
        let d = detector(100);
        for e in &all[..2] {
            d.record(e, &all, Outcome::GatewayError, t0);
            d.record(e, &all, Outcome::GatewayError, t0);
        }
        assert_eq!(d.ejected(t0), 2);
        assert_eq!(d.ejected(t0 + Duration::from_secs(29)), 2);
        assert_eq!(d.ejected(t0 + Duration::from_secs(30)), 0, "ejections end");
        // A detector made for a new config counts the ejections the endpoints carry over.
        let t1 = t0 + Duration::from_secs(10);
        let rebuilt = OutlierDetector::new(d.config.clone(), &all, t1);
        assert_eq!(rebuilt.ejected(t1), 2);
    }

    #[test]
    fn ejection_times_at_the_bounds_never_overflow() {
        let t0 = Instant::now();
        let all = endpoints(2, t0);
        for base in [D::from_millis(1), D::from_secs(86_400), D(Duration::MAX)] {
            let mut d = detector(100);
            d.config.base_ejection_time = base;
            d.config.interval = D(Duration::MAX);
            let mut now = t0;
            for _ in 0..50 {
                d.record(&all[0], &all, Outcome::GatewayError, now);
                d.record(&all[0], &all, Outcome::GatewayError, now);
                now += Duration::from_secs(400);
            }
            assert!(all[0].is_ejected(now - Duration::from_secs(400)));
        }
    }

    /// Sequential requests over two endpoints for `seconds`, one every 10 ms, each answered in
    /// `latency(endpoint, elapsed)`; returns how many each got in each second.
    async fn run_ewma(
        all: &[Arc<Endpoint>],
        seconds: u64,
        latency: impl Fn(usize, Duration) -> Duration,
    ) -> Vec<[u32; 2]> {
        let b = Balancer::new(LoadBalancerPolicy::Ewma);
        let t0 = Instant::now();
        let mut per_second = vec![[0; 2]; seconds as usize];
        while t0.elapsed() < Duration::from_secs(seconds) {
            let now = Instant::now();
            let e = b.pick(all, now).unwrap();
            let i = usize::from(e.addr == all[1].addr);
            per_second[t0.elapsed().as_secs() as usize][i] += 1;
            let took = latency(i, t0.elapsed());
            tokio::time::advance(took).await;
            e.observe_latency(took, Instant::now());
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        per_second
    }

    #[tokio::test(start_paused = true)]
    async fn ewma_gives_a_recovered_endpoint_its_share_back_within_ten_seconds() {
        // A slow spell 10,000 times slower than the other endpoint, for the first 2 s.
        let all = endpoints(2, Instant::now());
        let fast = Duration::from_micros(100);
        let per_second = run_ewma(&all, 20, |i, t| {
            if i == 0 && t < Duration::from_secs(2) {
                Duration::from_secs(1)
            } else {
                fast
            }
        })
        .await;
        // The slow one is shunned at first ...
        let early: u32 = per_second[2..5].iter().map(|s| s[0]).sum();
        assert!(early <= 2, "{per_second:?}");
        // ... and within about 10 s of recovering shares evenly again.
        for (second, [a, b]) in per_second.iter().enumerate().skip(13) {
            let share = f64::from(*a) / f64::from(a + b);
            assert!(
                (0.3..=0.7).contains(&share),
                "second {second}: {per_second:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ewma_estimates_decay_while_no_sample_comes() {
        let t0 = Instant::now();
        let all = endpoints(1, t0);
        all[0].observe_latency(Duration::from_millis(500), t0);
        let at = |s| all[0].latency_estimate(t0 + Duration::from_secs(s));
        assert_eq!(at(0), Duration::from_millis(500));
        assert!(at(1) < Duration::from_millis(200));
        assert!(at(10) < Duration::from_micros(30));
        // A far-future read and a stale sample are harmless.
        assert_eq!(at(86_400 * 365 * 1000), Duration::ZERO);
        all[0].observe_latency(Duration::MAX, t0 + Duration::from_secs(5));
        all[0].observe_latency(Duration::from_millis(1), t0);
        assert!(at(5) > Duration::from_secs(1));
    }

    #[test]
    fn an_avoided_endpoint_is_passed_over_while_another_can_serve() {
        let t0 = Instant::now();
        let all = endpoints(3, t0);
        all[0].avoid(Duration::from_secs(5), t0);
        for (policy, b) in every_balancer() {
            for _ in 0..200 {
                assert_ne!(b.pick(&all, t0).unwrap().addr, all[0].addr, "{policy:?}");
            }
            // Everyone avoided: used anyway.
            for e in &all[1..] {
                e.avoid(Duration::from_secs(5), t0);
            }
            assert!(b.pick(&all, t0).is_some(), "{policy:?}");
            for e in &all[1..] {
                e.health.lock().avoided_until = None;
            }
        }
        // Avoided, never ejected; and the wait ends (at most 30 s whatever was asked).
        assert_eq!(all[0].standing(t0), Standing::Avoided);
        assert_eq!(
            all[0].standing(t0 + Duration::from_secs(5)),
            Standing::Ready
        );
        all[1].avoid(Duration::from_secs(86_400), t0);
        assert_eq!(
            all[1].standing(t0 + Duration::from_secs(29)),
            Standing::Avoided
        );
        assert_eq!(
            all[1].standing(t0 + Duration::from_secs(30)),
            Standing::Ready
        );
        // A lone avoided endpoint is still used.
        let one = endpoints(1, t0);
        one[0].avoid(Duration::from_secs(1), t0);
        assert!(
            Balancer::new(LoadBalancerPolicy::LeastRequest)
                .pick(&one, t0)
                .is_some()
        );
    }

    #[test]
    fn a_dry_run_detector_counts_ejections_it_does_not_make() {
        let t0 = Instant::now();
        let all = endpoints(2, t0);
        let mut d = detector(50);
        d.config.dry_run = true;
        let mut would = 0;
        for _ in 0..6 {
            would += usize::from(d.record(&all[0], &all, Outcome::ServerError, t0));
        }
        assert_eq!(would, 2, "every third 5xx would eject");
        assert!(!all[0].is_ejected(t0));
        assert_eq!(d.ejected(t0), 0);
    }
}
