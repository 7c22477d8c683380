//! One scrape of a sidecar's `/metrics`, reduced to the series the graph reads.
//!
//! Only the series of the sidecar contract that the graph shows are kept (requests by code,
//! the duration histogram, breaker state, ejected endpoints, rate-limited and bulkhead
//! refusals), and at most [`MAX_SERIES`] of them: a scrape is held per connected proxy, so its
//! size must not depend on what a sidecar chooses to export.
//!
//! The lines are read by the sidecar API's [`metrics_text`], as the Autoscaler's and the demo's
//! are.

use std::collections::BTreeMap;
use std::time::Duration;
use weir_proxy_api::metrics_text;

/// The most series kept from one scrape; a sidecar exporting more is reported (its scrape is
/// refused) rather than held.
pub const MAX_SERIES: usize = 20_000;

/// `direction` of a request series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Calls the proxy's app made (the caller's view).
    Outbound,
    /// Calls to the proxy's app (the target's view).
    Inbound,
}

/// A request series without its code: direction, service label, subset label.
pub type Route = (Direction, String, String);

/// What one scrape says, at `at` (on the scraper's clock).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub at: Duration,
    /// `weir_requests_total` per route and status code.
    pub requests: BTreeMap<(Route, String), f64>,
    /// `weir_request_duration_seconds_bucket` per route: cumulative counts by upper bound
    /// (`+Inf` as infinity), ascending.
    pub durations: BTreeMap<Route, Vec<(f64, f64)>>,
    /// `weir_circuit_breaker_state` per called service (0 closed, 1 open, 2 half-open).
    pub breaker: BTreeMap<String, f64>,
    /// `weir_endpoints_ejected` per called service.
    pub endpoints_ejected: BTreeMap<String, f64>,
    /// `weir_rate_limited_total` per service (refusals this proxy made).
    pub rate_limited: BTreeMap<String, f64>,
    /// `weir_bulkhead_rejected_total` per service (refusals this proxy made).
    pub bulkhead_rejected: BTreeMap<String, f64>,
}

/// Why a scrape was not kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScrapeError {
    #[error("more than {MAX_SERIES} series of the metrics the dashboard reads")]
    TooManySeries,
}

impl Scrape {
    /// Reads the Prometheus text format; lines that do not parse are skipped.
    pub fn parse(text: &str, at: Duration) -> Result<Self, ScrapeError> {
        let mut scrape = Scrape {
            at,
            ..Scrape::default()
        };
        let mut buckets: BTreeMap<Route, metrics_text::Buckets> = BTreeMap::new();
        let mut kept = 0usize;
        for sample in metrics_text::samples(text) {
            let value = sample.value;
            if !value.is_finite() {
                continue;
            }
            let label = |key: &str| sample.label(key).unwrap_or_default().to_owned();
            let route = || {
                let direction = match label("direction").as_str() {
                    "inbound" => Direction::Inbound,
                    "outbound" => Direction::Outbound,
                    _ => return None,
                };
                Some((direction, label("service"), label("subset")))
            };
            match sample.name.as_str() {
                "weir_requests_total" => {
                    let Some(route) = route() else { continue };
                    *scrape.requests.entry((route, label("code"))).or_default() += value;
                }
                "weir_request_duration_seconds_bucket" => {
                    let Some(route) = route() else { continue };
                    let Some(le) = sample
                        .label("le")
                        .and_then(metrics_text::number)
                        .filter(|le| *le >= 0.0)
                    else {
                        continue;
                    };
                    buckets.entry(route).or_default().add(le, value);
                }
                "weir_circuit_breaker_state" => {
                    scrape.breaker.insert(label("service"), value);
                }
                "weir_endpoints_ejected" => {
                    *scrape
                        .endpoints_ejected
                        .entry(label("service"))
                        .or_default() += value;
                }
                "weir_rate_limited_total" => {
                    *scrape.rate_limited.entry(label("service")).or_default() += value;
                }
                "weir_bulkhead_rejected_total" => {
                    *scrape
                        .bulkhead_rejected
                        .entry(label("service"))
                        .or_default() += value;
                }
                _ => continue,
            }
            kept += 1;
            if kept > MAX_SERIES {
                return Err(ScrapeError::TooManySeries);
            }
        }
        scrape.durations = buckets
            .into_iter()
            .map(|(route, bounds)| (route, bounds.to_vec()))
            .collect();
        Ok(scrape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_series_the_graph_reads() {
        let text = r#"# HELP weir_requests_total Requests.
weir_requests_total{code="200",direction="outbound",service="payments",subset="v1"} 45
weir_requests_total{code="200",direction="outbound",service="payments",subset="v2"} 5
weir_requests_total{code="429",direction="inbound",service="orders",subset=""} 3
weir_requests_total{code="200",direction="sideways",service="orders",subset=""} 3
weir_request_duration_seconds_bucket{direction="inbound",service="orders",subset="",le="0.1"} 2
weir_request_duration_seconds_bucket{direction="inbound",service="orders",subset="",le="+Inf"} 3
weir_request_duration_seconds_bucket{direction="inbound",service="orders",subset="",le="-1"} 3
weir_circuit_breaker_state{service="payments"} 1
weir_endpoints_ejected{service="payments"} 1
weir_rate_limited_total{service="orders"} 3
weir_bulkhead_rejected_total{service="orders"} 0
weir_config_version 7
odd{msg="a \"quoted\" } value, with, commas"} 1.5 1700000000
weir_requests_total{code="500",direction="inbound",service="orders",subset=""} NaN
garbage line
"#;
        let s = Scrape::parse(text, Duration::from_secs(3)).unwrap();
        assert_eq!(s.at, Duration::from_secs(3));
        assert_eq!(s.requests.len(), 3, "{:?}", s.requests);
        let route = (Direction::Outbound, "payments".into(), "v2".into());
        assert_eq!(s.requests[&(route, "200".into())], 5.0);
        let inbound = (Direction::Inbound, "orders".into(), String::new());
        assert_eq!(
            s.durations[&inbound],
            vec![(0.1, 2.0), (f64::INFINITY, 3.0)]
        );
        assert_eq!(s.breaker["payments"], 1.0);
        assert_eq!(s.endpoints_ejected["payments"], 1.0);
        assert_eq!(s.rate_limited["orders"], 3.0);
        assert_eq!(s.bulkhead_rejected["orders"], 0.0);
    }

    #[test]
    fn a_sidecar_exporting_absurdly_many_series_is_refused() {
        let mut text = String::new();
        for i in 0..=MAX_SERIES {
            text.push_str(&format!("weir_rate_limited_total{{service=\"s{i}\"}} 1\n"));
        }
        assert_eq!(
            Scrape::parse(&text, Duration::ZERO),
            Err(ScrapeError::TooManySeries)
        );
    }
}
