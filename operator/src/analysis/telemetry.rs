//! What the callers' sidecars saw of a canary: their outbound counters for the canary subset,
//! read from each caller's admin `/metrics`, turned into one interval's figures.
//!
//! From one caller's `/metrics` ([`parse`]), outbound series of one service and subset only:
//! `weir_requests_total{direction="outbound",service,subset,code}` summed over `code` (and
//! those with a 5xx `code` apart: the app's 5xx and Weir's own refusals alike — `bulkhead-full`,
//! `circuit-open`, `no-healthy-endpoints` 503, connect failures and resets 502, timeouts 504 —
//! since the sidecar counts a refusal under the subset it had picked), and the cumulative
//! buckets of `weir_request_duration_seconds`.
//!
//! An interval's figures ([`Window::measure`]) are the increases since the interval started,
//! per caller, then summed:
//! - a caller whose counters went down (any of them) restarted: its increase is what it counted
//!   since the restart — its counters now — never a negative figure;
//! - a caller not seen at the start of the interval has no known starting point: it is counted
//!   from the next interval on (taking its whole history would inflate the figure with traffic
//!   from before the step; the sidecar has no start-time metric to tell them apart);
//! - a caller gone since the start counts nothing (what it saw is lost with it).
//!
//! The lines are read by the sidecar API's [`metrics_text`], as the autoscaler's and the
//! dashboard's are.

use std::collections::HashMap;
use std::time::Duration;
use weir_proxy_api::metrics_text;

/// One caller's cumulative counters for the canary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub requests: f64,
    /// Of those, 5xx answers.
    pub failures: f64,
    /// Cumulative counts per upper bound (`+Inf` as infinity), ascending.
    pub buckets: Vec<(f64, f64)>,
}

impl Counters {
    /// Whether any counter is below `earlier`'s: the caller restarted in between.
    fn went_down_from(&self, earlier: &Counters) -> bool {
        self.requests < earlier.requests
            || self.failures < earlier.failures
            || earlier.buckets.iter().any(|(le, before)| {
                let now = self
                    .buckets
                    .iter()
                    .find(|(b, _)| b == le)
                    .map_or(0.0, |(_, c)| *c);
                now < *before
            })
    }

    /// The increase since `earlier` (all of `self` after a restart).
    fn since(&self, earlier: Option<&Counters>) -> Counters {
        match earlier {
            Some(earlier) if !self.went_down_from(earlier) => Counters {
                requests: self.requests - earlier.requests,
                failures: self.failures - earlier.failures,
                buckets: self
                    .buckets
                    .iter()
                    .map(|(le, count)| {
                        let before = earlier
                            .buckets
                            .iter()
                            .find(|(b, _)| b == le)
                            .map_or(0.0, |(_, c)| *c);
                        (*le, count - before)
                    })
                    .collect(),
            },
            _ => self.clone(),
        }
    }
}

/// Reads the outbound counters of `service`'s `subset` from a caller's `/metrics` text.
pub fn parse(text: &str, service: &str, subset: &str) -> Counters {
    let mut counters = Counters::default();
    let mut buckets = metrics_text::Buckets::default();
    let route = [
        ("direction", "outbound"),
        ("service", service),
        ("subset", subset),
    ];
    for sample in metrics_text::samples(text) {
        let value = sample.value;
        if !(value.is_finite() && value >= 0.0 && sample.matches(&route)) {
            continue;
        }
        match sample.name.as_str() {
            "weir_requests_total" => {
                counters.requests += value;
                if sample
                    .label("code")
                    .is_some_and(|code| code.starts_with('5'))
                {
                    counters.failures += value;
                }
            }
            "weir_request_duration_seconds_bucket" => {
                if let Some(le) = sample
                    .label("le")
                    .and_then(metrics_text::number)
                    .filter(|le| *le >= 0.0)
                {
                    buckets.add(le, value);
                }
            }
            _ => {}
        }
    }
    counters.buckets = buckets.to_vec();
    counters
}

/// The callers' counters at the start of an interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    start: HashMap<String, Counters>,
}

impl Window {
    /// An interval starting with these counters, per caller (any stable name: its admin address).
    pub fn start(callers: HashMap<String, Counters>) -> Self {
        Self { start: callers }
    }

    /// Whether no caller was seen at the start.
    pub fn is_empty(&self) -> bool {
        self.start.is_empty()
    }

    /// The interval's figures from the callers' counters now (see the module docs).
    pub fn measure(&self, now: &HashMap<String, Counters>) -> super::Measured {
        let mut requests = 0.0;
        let mut failures = 0.0;
        let mut buckets = metrics_text::Buckets::default();
        for (caller, counters) in now {
            let Some(start) = self.start.get(caller) else {
                continue;
            };
            let delta = counters.since(Some(start));
            requests += delta.requests;
            failures += delta.failures.min(delta.requests);
            for (le, count) in delta.buckets {
                buckets.add(le, count.max(0.0));
            }
        }
        let buckets = buckets.to_vec();
        let latency_p99 = if buckets.last().is_some_and(|(_, total)| *total > 0.0) {
            crate::autoscaler::scrape::quantile_between(0.99, &[], &buckets)
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
        } else {
            None
        };
        super::Measured {
            requests: requests.max(0.0).min(u64::MAX as f64) as u64,
            failures: failures.max(0.0).min(u64::MAX as f64) as u64,
            latency_p99,
        }
    }
}
