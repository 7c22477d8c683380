//! The circuit breaker of one destination service.
//!
//! Closed → open after `failureThreshold` consecutive failed attempts; open refuses every call
//! with `circuit-open` for `openDuration`; then half-open lets up to `successThreshold` trial
//! calls through at once: `successThreshold` consecutive successes close it, one failure opens it
//! again. Our own rather than a crate's: none of the maintained ones keep this exact state machine
//! with a half-open probe limit, and the whole thing is one small mutex-guarded enum.

use parking_lot::Mutex;
use std::sync::Arc;
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
        Self {
            config,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
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
                if success {
                    *failures = 0;
                    None
                } else {
                    *failures += 1;
                    (config.failure_threshold.is_some_and(|n| *failures >= n)).then(|| {
                        *inner = Inner::Open {
                            until: crate::clock::deadline(now, config.open_duration.get()),
                        };
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
    use std::time::Duration;

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
}
