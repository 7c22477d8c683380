//! The circuit breaker of one destination service.
//!
//! Closed → open after `failureThreshold` consecutive failed attempts, or once the share of
//! failed attempts over the sliding `window` reaches `failureRate` with at least `minRequests`
//! attempts in it (either trigger); open refuses every call with `circuit-open` for
//! `openDuration`; then half-open lets up to `successThreshold` trial
//! calls through at once: `successThreshold` consecutive successes close it, one failure opens it
//! again. Our own rather than a crate's: none of the maintained ones keep this exact state machine
//! with a half-open probe limit, and the whole thing is one small mutex-guarded enum.
//!
//! The failure-rate window is [`WINDOW_BUCKETS`] counters of `window / WINDOW_BUCKETS` each, not
//! a list of calls: its memory is fixed whatever the traffic, and a bucket leaves the window
//! whole (the window slides by a tenth of itself). It is emptied when the breaker opens, so the
//! closed breaker after a recovery judges only new calls.
//!
//! In dry run ([`Breaker::dry_run`]) the state machine runs as it would enforced — so
//! `weir_circuit_breaker_state` shows what the breaker would be — but the caller lets refused
//! calls through (counting them) instead of refusing them.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use weir_proxy_api::CircuitBreaker as Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// The value of `weir_circuit_breaker_state`.
    pub fn gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

/// Buckets of the failure-rate window.
pub const WINDOW_BUCKETS: usize = 10;

/// Attempts and failures over a sliding window, in fixed buckets.
#[derive(Debug)]
struct Window {
    /// Bucket width; never zero.
    width: Duration,
    origin: Instant,
    /// Per bucket: the bucket number (time since `origin` divided by `width`) it counts, its
    /// attempts and its failures. A slot holding an older number is stale and counts nothing.
    buckets: [(u64, u32, u32); WINDOW_BUCKETS],
}

impl Window {
    fn new(window: Duration, now: Instant) -> Self {
        let width = (window / WINDOW_BUCKETS as u32).max(Duration::from_millis(1));
        Self {
            width,
            origin: now,
            buckets: [(u64::MAX, 0, 0); WINDOW_BUCKETS],
        }
    }

    fn number(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin).as_nanos();
        (since / self.width.as_nanos()).min(u128::from(u64::MAX - 1)) as u64
    }

    /// Counts one attempt; returns the window's (attempts, failures) after it.
    fn record(&mut self, failed: bool, now: Instant) -> (u64, u64) {
        let number = self.number(now);
        let slot = &mut self.buckets[(number % WINDOW_BUCKETS as u64) as usize];
        if slot.0 != number {
            *slot = (number, 0, 0);
        }
        slot.1 = slot.1.saturating_add(1);
        slot.2 = slot.2.saturating_add(u32::from(failed));
        self.totals(number)
    }

    fn totals(&self, number: u64) -> (u64, u64) {
        self.buckets
            .iter()
            .filter(|(n, _, _)| *n <= number && number - n < WINDOW_BUCKETS as u64)
            .fold((0, 0), |(calls, failures), (_, c, f)| {
                (calls + u64::from(*c), failures + u64::from(*f))
            })
    }

    fn clear(&mut self) {
        self.buckets = [(u64::MAX, 0, 0); WINDOW_BUCKETS];
    }
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { successes: u32, probes: u32 },
}

#[derive(Debug)]
pub struct Breaker {
    config: Config,
    inner: Mutex<Inner>,
    /// Only with `failureRate` set.
    window: Option<Mutex<Window>>,
}

/// Admission to call through the breaker. Drop it without [`Permit::record`] and the call
/// counts as neither success nor failure (cancelled).
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
}

impl Breaker {
    pub fn new(config: Config) -> Self {
        let window = config
            .failure_rate
            .map(|_| Mutex::new(Window::new(config.window.get(), Instant::now())));
        Self {
            config,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
            window,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the breaker only watches: refused calls are let through and counted.
    pub fn dry_run(&self) -> bool {
        self.config.dry_run
    }

    /// Whether the failure-rate trigger fires after this attempt.
    fn rate_trips(&self, failed: bool, now: Instant) -> bool {
        let (Some(window), Some(rate)) = (&self.window, self.config.failure_rate) else {
            return false;
        };
        let (calls, failures) = window.lock().record(failed, now);
        failed
            && calls >= u64::from(self.config.min_requests)
            && failures as f64 >= rate * calls as f64
    }

    fn clear_window(&self) {
        if let Some(window) = &self.window {
            window.lock().clear();
        }
    }

    /// The state as of `now` (an expired open period reads as half-open).
    pub fn state(&self, now: Instant) -> State {
        match &*self.inner.lock() {
            Inner::Closed { .. } => State::Closed,
            Inner::Open { until } if now < *until => State::Open,
            Inner::Open { .. } | Inner::HalfOpen { .. } => State::HalfOpen,
        }
    }

    /// Lets a call through, or refuses it while open (or while half-open probes are all taken).
    pub fn admit(self: &Arc<Self>, now: Instant) -> Option<Permit> {
        let mut inner = self.inner.lock();
        let probe = match &mut *inner {
            Inner::Closed { .. } => false,
            Inner::Open { until } if now < *until => return None,
            Inner::Open { .. } => {
                *inner = Inner::HalfOpen {
                    successes: 0,
                    probes: 1,
                };
                true
            }
            Inner::HalfOpen { probes, .. } => {
                if *probes >= self.config.success_threshold {
                    return None;
                }
                *probes += 1;
                true
            }
        };
        Some(Permit {
            breaker: self.clone(),
            probe,
        })
    }
}

impl Permit {
    /// Records the outcome; returns the new state when it changed.
    pub fn record(mut self, success: bool, now: Instant) -> Option<State> {
        let breaker = self.breaker.clone();
        let config = &breaker.config;
        let mut inner = breaker.inner.lock();
        let probe = std::mem::replace(&mut self.probe, false);
        match &mut *inner {
            Inner::Closed { failures } => {
                let rate_trips = breaker.rate_trips(!success, now);
                if success {
                    *failures = 0;
                    None
                } else {
                    *failures = failures.saturating_add(1);
                    let consecutive = config.failure_threshold.is_some_and(|n| *failures >= n);
                    (consecutive || rate_trips).then(|| {
                        *inner = Inner::Open {
                            until: crate::clock::deadline(now, config.open_duration.get()),
                        };
                        breaker.clear_window();
                        State::Open
                    })
                }
            }
            Inner::HalfOpen { successes, probes } if probe => {
                *probes = probes.saturating_sub(1);
                if success {
                    *successes += 1;
                    (*successes >= config.success_threshold).then(|| {
                        *inner = Inner::Closed { failures: 0 };
                        State::Closed
                    })
                } else {
                    *inner = Inner::Open {
                        until: crate::clock::deadline(now, config.open_duration.get()),
                    };
                    Some(State::Open)
                }
            }
            // A call admitted while closed that ends after the breaker opened, or a non-probe
            // in half-open: the state already reflects newer evidence.
            _ => None,
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe
            && let Inner::HalfOpen { probes, .. } = &mut *self.breaker.inner.lock()
        {
            *probes = probes.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Arc<Breaker> {
        Arc::new(Breaker::new(Config {
            failure_threshold: Some(3),
            success_threshold: 2,
            open_duration: weir_proxy_api::Duration::from_secs(10),
            failure_rate: None,
            window: Config::default_window(),
            min_requests: Config::default_min_requests(),
            dry_run: false,
        }))
    }

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_successes() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..2 {
            assert_eq!(b.admit(t0).unwrap().record(false, t0), None);
        }
        // A success resets the count.
        b.admit(t0).unwrap().record(true, t0);
        for _ in 0..2 {
            b.admit(t0).unwrap().record(false, t0);
        }
        assert_eq!(b.admit(t0).unwrap().record(false, t0), Some(State::Open));
        assert!(b.admit(t0 + Duration::from_secs(9)).is_none());

        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.state(t1), State::HalfOpen);
        let p1 = b.admit(t1).unwrap();
        let p2 = b.admit(t1).unwrap();
        assert!(
            b.admit(t1).is_none(),
            "only successThreshold probes at once"
        );
        assert_eq!(p1.record(true, t1), None);
        assert_eq!(p2.record(true, t1), Some(State::Closed));
        assert_eq!(b.state(t1), State::Closed);
    }

    #[test]
    fn a_failed_probe_opens_again() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.admit(t0).unwrap().record(false, t0);
        }
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(b.admit(t1).unwrap().record(false, t1), Some(State::Open));
        assert!(b.admit(t1 + Duration::from_secs(5)).is_none());
        // A dropped (cancelled) probe frees its slot.
        let t2 = t1 + Duration::from_secs(10);
        drop(b.admit(t2).unwrap());
        assert!(b.admit(t2).is_some());
    }

    fn rate_breaker(rate: f64, min_requests: u32) -> Arc<Breaker> {
        Arc::new(Breaker::new(Config {
            failure_threshold: None,
            success_threshold: 1,
            open_duration: weir_proxy_api::Duration::from_secs(5),
            failure_rate: Some(rate),
            window: weir_proxy_api::Duration::from_secs(10),
            min_requests,
            dry_run: false,
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn the_failure_rate_opens_it_once_enough_calls_were_seen() {
        let b = rate_breaker(0.5, 10);
        let t0 = Instant::now();
        // Alternating failures: 50 %, but fewer than minRequests calls until the tenth.
        for i in 0..9 {
            assert_eq!(
                b.admit(t0).unwrap().record(i % 2 == 0, t0),
                None,
                "call {i}"
            );
        }
        assert_eq!(b.admit(t0).unwrap().record(false, t0), Some(State::Open));
        assert!(b.admit(t0).is_none());
        // Half-open as with the consecutive trigger; a success closes it, with an empty window.
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(b.admit(t1).unwrap().record(true, t1), Some(State::Closed));
        for _ in 0..4 {
            assert_eq!(b.admit(t1).unwrap().record(false, t1), None);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn old_calls_leave_the_window() {
        let b = rate_breaker(0.5, 4);
        let t0 = Instant::now();
        for _ in 0..3 {
            b.admit(t0).unwrap().record(false, t0);
        }
        // 11 s later those three failures are out of the 10 s window: one more failure among
        // four successes is 20 %.
        let t1 = t0 + Duration::from_secs(11);
        for _ in 0..4 {
            b.admit(t1).unwrap().record(true, t1);
        }
        assert_eq!(b.admit(t1).unwrap().record(false, t1), None);
        assert_eq!(b.state(t1), State::Closed);
        // Within the window they count: 3 failures of 5 calls is 60 %.
        let b = rate_breaker(0.5, 4);
        for _ in 0..3 {
            b.admit(t0).unwrap().record(false, t0);
        }
        let t2 = t0 + Duration::from_secs(8);
        b.admit(t2).unwrap().record(true, t2);
        assert_eq!(b.admit(t2).unwrap().record(false, t2), Some(State::Open));
    }

    #[tokio::test(start_paused = true)]
    async fn either_trigger_opens_it() {
        let b = Arc::new(Breaker::new(Config {
            failure_threshold: Some(3),
            failure_rate: Some(0.9),
            min_requests: 100,
            ..(*rate_breaker(0.9, 100)).config().clone()
        }));
        let t0 = Instant::now();
        b.admit(t0).unwrap().record(false, t0);
        b.admit(t0).unwrap().record(false, t0);
        assert_eq!(b.admit(t0).unwrap().record(false, t0), Some(State::Open));
    }

    #[test]
    fn the_window_has_fixed_memory_and_survives_absurd_times() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(1), t0);
        for i in 0..100_000u64 {
            w.record(i % 3 == 0, t0 + Duration::from_millis(i));
        }
        let (calls, _) = w.totals(w.number(t0 + Duration::from_millis(99_999)));
        assert!(calls <= 1_000, "only the last second counts: {calls}");
        let far = t0 + Duration::from_secs(86_400 * 365 * 100);
        assert_eq!(w.record(true, far), (1, 1));
        let mut tiny = Window::new(Duration::ZERO, t0);
        assert_eq!(tiny.record(false, t0), (1, 0));
        assert!(std::mem::size_of::<Window>() < 256);
    }
}
