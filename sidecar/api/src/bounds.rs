//! The one table of ranges (DESIGN.md, "Bounds"), enforced in three places from these constants:
//! the CRD schemas (`weir-crds` puts them into `minimum`/`maximum` and the duration CEL rules),
//! the operator's translation (which runs [`ProxyConfig::validate`](crate::ProxyConfig::validate)
//! on what it builds) and the sidecar's own validation (file and control-plane mode).
//!
//! Every number a config carries has a range, so that nothing a schema admits can panic, overflow
//! or assert later: the largest duration (24 h) added to any clock reading, the largest rate or
//! count multiplied by any other, stays far inside the integer and float types the proxy uses.

use std::fmt;

/// An inclusive range `min..=max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bound<T> {
    pub min: T,
    pub max: T,
}

impl<T: PartialOrd + Copy> Bound<T> {
    pub fn contains(&self, value: T) -> bool {
        self.min <= value && value <= self.max
    }
}

impl Bound<f64> {
    /// NaN and the infinities are outside every float bound.
    pub fn contains_f64(&self, value: f64) -> bool {
        value.is_finite() && self.contains(value)
    }
}

impl<T: fmt::Display> Bound<T> {
    /// The refusal text: `must be between 0 and 1000000`.
    pub fn message(&self) -> String {
        format!("must be between {} and {}", self.min, self.max)
    }
}

impl<T> Bound<T> {
    pub const fn new(min: T, max: T) -> Self {
        Self { min, max }
    }
}

/// The top of most counts and rates: large enough for any real setting, small enough that
/// products of two stay exact.
const MILLION: u32 = 1_000_000;

/// The longest duration anywhere in a config.
const DAY: std::time::Duration = ms(24 * 3_600_000);

const fn ms(n: u64) -> std::time::Duration {
    std::time::Duration::from_millis(n)
}

/// Every duration of a policy: timeouts, backoff, open duration, ejection times, queue timeout.
pub const DURATION: Bound<std::time::Duration> = Bound::new(ms(1), DAY);
/// `retries.attempts`: retries after the first try.
pub const RETRY_ATTEMPTS: Bound<u32> = Bound::new(0, 10);
/// `retries.backoff.multiplier`.
pub const BACKOFF_MULTIPLIER: Bound<f64> = Bound::new(1.0, 10.0);
/// `retries.budget.ratio` (the design gives the same range to every share, such as a success rate).
pub const RATIO: Bound<f64> = Bound::new(0.0, 1.0);
/// `retries.budget.minPerSecond`.
pub const MIN_PER_SECOND: Bound<u32> = Bound::new(0, MILLION);
/// Breaker and outlier-detection counts (`failureThreshold`, `successThreshold`,
/// `consecutive5xxErrors`, `consecutiveGatewayErrors`).
pub const COUNT: Bound<u32> = Bound::new(1, MILLION);
/// `outlierDetection.maxEjectionPercent`.
pub const PERCENT: Bound<u32> = Bound::new(0, 100);
/// `bulkhead.maxConcurrent`.
pub const MAX_CONCURRENT: Bound<u32> = Bound::new(1, MILLION);
/// `bulkhead.maxQueued`.
pub const MAX_QUEUED: Bound<u32> = Bound::new(0, MILLION);
/// `rateLimit.requestsPerSecond` (a number in a ProxyConfig, an integer in the CRD).
pub const REQUESTS_PER_SECOND: Bound<f64> = Bound::new(1.0, 1_000_000.0);
/// `rateLimit.burst`.
pub const BURST: Bound<u32> = Bound::new(1, MILLION);
/// A subset's (a TrafficSplit backend's) weight, as Gateway API's.
pub const WEIGHT: Bound<u32> = Bound::new(0, MILLION);
/// A TrafficSplit analysis's `interval`: how long each step runs before it is judged. At least a
/// second, as a breaker's `window`: a shorter step could not gather a meaningful sample.
pub const ANALYSIS_INTERVAL: Bound<std::time::Duration> = Bound::new(ms(1_000), DAY);
/// `circuitBreaker.window`: the failure rate's sliding window, at least a second as an analysis
/// interval.
pub const BREAKER_WINDOW: Bound<std::time::Duration> = ANALYSIS_INTERVAL;
/// A fault's `percent` (fractions allowed).
pub const FAULT_PERCENT: Bound<f64> = Bound::new(0.0, 100.0);
/// A fault abort's `status`: an answer, not an informational status.
pub const FAULT_ABORT_STATUS: Bound<u32> = Bound::new(200, 599);
/// A TrafficSplit analysis's `steps`: the canary's share of traffic in percent at each step.
pub const ANALYSIS_STEP: Bound<u32> = Bound::new(1, 100);
/// The most steps a rollout has (they are strictly increasing percentages).
pub const ANALYSIS_MAX_STEPS: usize = 100;
/// A TrafficSplit analysis's `minRequests` and `maxFailures`.
pub const ANALYSIS_COUNT: Bound<u32> = Bound::new(1, MILLION);
/// `fallback.body`, in characters: the API server's `maxLength` counts characters, and the two
/// must agree (an ASCII body of 64 KiB is the largest ASCII one).
pub const FALLBACK_BODY_MAX_CHARS: usize = 64 * 1024;
/// The largest ProxyConfig document (a `--config` file, a config API answer), in bytes.
pub const CONFIG_MAX_BYTES: usize = 16 * 1024 * 1024;
/// The most services one proxy config holds.
pub const MAX_SERVICES: usize = 10_000;

/// The duration bound's refusal text, in the units users write: `must be between 1ms and 24h`.
pub fn duration_message(bound: &Bound<std::time::Duration>) -> String {
    format!(
        "must be between {} and {}",
        crate::Duration(bound.min),
        crate::Duration(bound.max)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_as_the_design_writes_them() {
        assert_eq!(MIN_PER_SECOND.message(), "must be between 0 and 1000000");
        assert_eq!(BACKOFF_MULTIPLIER.message(), "must be between 1 and 10");
        assert_eq!(duration_message(&DURATION), "must be between 1ms and 24h");
        assert_eq!(
            duration_message(&ANALYSIS_INTERVAL),
            "must be between 1s and 24h"
        );
    }

    #[test]
    fn floats_outside_or_not_numbers_are_refused() {
        assert!(RATIO.contains_f64(0.0) && RATIO.contains_f64(1.0));
        for bad in [f64::NAN, f64::INFINITY, -0.1, 1.000_001] {
            assert!(!RATIO.contains_f64(bad), "{bad}");
        }
        assert!(!REQUESTS_PER_SECOND.contains_f64(1e-300));
    }
}
