//! Endpoints, their health as outlier detection sees it, and the load balancers that choose
//! among the healthy ones.
//!
//! Our own balancers rather than `tower::balance::p2c`: tower's balancer needs a `Discover`
//! stream of per-endpoint services and hides which endpoint served a request, while outlier
//! detection needs to charge each outcome to its endpoint and to take ejected endpoints out of
//! the choice at once. The balancers themselves are a few lines each: round-robin, power of two
//! random choices over requests in flight (least-request), and power of two choices over a
//! peak-sensitive EWMA of latency weighted by load (Linkerd's default).

use http::uri::Authority;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use weir_proxy_api::{LoadBalancerPolicy, OutlierDetection};

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
    /// Peak-EWMA of response latency in microseconds.
    ewma_micros: f64,
    ewma_at: Instant,
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

/// Decay horizon of the latency average: a slow spell is forgotten in about ten seconds.
const EWMA_DECAY: Duration = Duration::from_secs(10);
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

    /// Feeds a latency sample into the peak-EWMA: a sample above the average replaces it at once
    /// (peak-sensitive), a lower one pulls it down with exponential decay.
    pub fn observe_latency(&self, latency: Duration, now: Instant) {
        let sample = latency.as_secs_f64() * 1e6;
        let mut h = self.health.lock();
        if sample > h.ewma_micros {
            h.ewma_micros = sample;
        } else {
            let elapsed = now.saturating_duration_since(h.ewma_at).as_secs_f64();
            let w = (-elapsed / EWMA_DECAY.as_secs_f64()).exp();
            h.ewma_micros = h.ewma_micros * w + sample * (1.0 - w);
        }
        h.ewma_at = now;
    }

    fn ewma_cost(&self) -> f64 {
        let ewma = self.health.lock().ewma_micros;
        ewma * f64::from(self.in_flight() + 1)
    }
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
}

/// Upper bound of an ejection, whatever the count: an endpoint is always reconsidered eventually.
const MAX_EJECTION: Duration = Duration::from_secs(300);

impl OutlierDetector {
    /// Charges `outcome` to `endpoint`; returns true when this outcome ejected it.
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
                    h.consecutive_5xx += 1;
                    h.consecutive_gateway = 0;
                }
                Outcome::GatewayError => {
                    h.consecutive_5xx += 1;
                    h.consecutive_gateway += 1;
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
        if !trip || !self.may_eject(all, now) {
            return false;
        }
        let mut h = endpoint.health.lock();
        h.ejections += 1;
        let time = c.base_ejection_time.get().saturating_mul(h.ejections);
        let cap = MAX_EJECTION.max(c.base_ejection_time.get());
        let until = now + time.min(cap);
        h.ejected_until = Some(until);
        h.consecutive_5xx = 0;
        h.consecutive_gateway = 0;
        // Healthy time, and so decay, starts when the ejection ends.
        h.last_decay = until;
        true
    }

    /// Whether one more ejection stays within `maxEjectionPercent` (at least one endpoint may
    /// always be ejected when the percentage is above zero, as Envoy does; otherwise small
    /// services could never eject anything).
    fn may_eject(&self, all: &[Arc<Endpoint>], now: Instant) -> bool {
        let pct = self.config.max_ejection_percent as usize;
        if pct == 0 {
            return false;
        }
        let allowed = (all.len() * pct / 100).max(1);
        let ejected = all.iter().filter(|e| e.is_ejected(now)).count();
        ejected < allowed && ejected < all.len()
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

    /// Picks an endpoint that is not ejected, or none when all are (or there are none).
    pub fn pick<'a>(
        &self,
        endpoints: &'a [Arc<Endpoint>],
        now: Instant,
    ) -> Option<&'a Arc<Endpoint>> {
        match endpoints.len() {
            0 => None,
            1 => endpoints.first().filter(|e| !e.is_ejected(now)),
            n => match self.policy {
                LoadBalancerPolicy::RoundRobin => {
                    let start = self.next.fetch_add(1, Ordering::Relaxed);
                    (0..n)
                        .map(|i| &endpoints[(start + i) % n])
                        .find(|e| !e.is_ejected(now))
                }
                LoadBalancerPolicy::LeastRequest => {
                    Self::p2c(endpoints, now, |e| f64::from(e.in_flight()))
                }
                LoadBalancerPolicy::Ewma => Self::p2c(endpoints, now, Endpoint::ewma_cost),
            },
        }
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
        match (ea.is_ejected(now), eb.is_ejected(now)) {
            (false, false) => Some(if cost(eb) < cost(ea) { eb } else { ea }),
            (false, true) => Some(ea),
            (true, false) => Some(eb),
            // Both ejected: fall back to a scan so a mostly-ejected subset still finds its
            // healthy endpoints.
            (true, true) => {
                let start = fastrand::usize(..n);
                (0..n)
                    .map(|i| &endpoints[(start + i) % n])
                    .find(|e| !e.is_ejected(now))
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
        OutlierDetector {
            config: OutlierDetection {
                consecutive_5xx_errors: Some(3),
                consecutive_gateway_errors: Some(2),
                interval: D::from_secs(10),
                base_ejection_time: D::from_secs(30),
                max_ejection_percent: max_pct,
            },
        }
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

    #[test]
    fn balancers_skip_ejected_endpoints() {
        let t0 = Instant::now();
        let all = endpoints(3, t0);
        let d = detector(100);
        d.record(&all[1], &all, Outcome::GatewayError, t0);
        d.record(&all[1], &all, Outcome::GatewayError, t0);
        for policy in [
            LoadBalancerPolicy::RoundRobin,
            LoadBalancerPolicy::LeastRequest,
            LoadBalancerPolicy::Ewma,
        ] {
            let b = Balancer::new(policy);
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
}
