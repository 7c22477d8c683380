//! Reading a sidecar's admin `/metrics` into autoscaler samples.
//!
//! **Why scraping rather than reports on the config connection:** the sidecar already exports
//! everything the autoscaler needs in the Prometheus text format (the design's metric contract),
//! so scraping needs no change to the sidecar or to the config API's protocol, works with any
//! sidecar version that honours the contract, keeps the config API a pure push of config, and
//! lets anyone reproduce what the autoscaler saw with `curl POD:15020/metrics`. The cost — one
//! HTTP GET per pod every 2 s, a few kB each — is small next to the traffic being measured.
//!
//! From one scrape of a pod (inbound direction only: the load the pod's app receives; series
//! summed over `service`/`subset`/`code`):
//! - **Concurrency** = `weir_in_flight_requests{direction="inbound"}` now;
//! - **RequestsPerSecond** = the increase of `weir_requests_total{direction="inbound"}` since the
//!   previous scrape of the same pod, divided by the seconds between them;
//! - **LatencyP99** = the 99th percentile of the requests finished between the two scrapes, from
//!   the increase of each `weir_request_duration_seconds_bucket{direction="inbound"}`
//!   (linear within the bucket, as PromQL's `histogram_quantile`); 0 when none finished (an idle
//!   pod is under no latency pressure).
//!
//! The first scrape of a pod, and one after a counter went backwards (the sidecar restarted),
//! yields no rate or latency: there is nothing to take a difference from.

use super::algorithm::Sample;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use weir_crds::MetricType;
use weir_proxy_api::metrics_text;

/// The sidecar admin listener's port (`weir-sidecar --admin`).
pub const ADMIN_PORT: u16 = 15020;

/// The largest `/metrics` body read.
const MAX_BODY: usize = 4 << 20;

/// What one scrape says, inbound only, summed over the other labels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SidecarMetrics {
    pub in_flight: f64,
    pub requests_total: f64,
    /// Cumulative counts per upper bound (`+Inf` as `f64::INFINITY`), ascending.
    pub duration_buckets: Vec<(f64, f64)>,
}

/// Reads the sidecar's `/metrics` ([`weir_proxy_api::metrics_text`]): its inbound series.
pub fn parse(text: &str) -> SidecarMetrics {
    let mut metrics = SidecarMetrics::default();
    let mut buckets = metrics_text::Buckets::default();
    for sample in metrics_text::samples(text) {
        if sample.label("direction") != Some("inbound") {
            continue;
        }
        match sample.name.as_str() {
            "weir_in_flight_requests" => metrics.in_flight += sample.value,
            "weir_requests_total" => metrics.requests_total += sample.value,
            "weir_request_duration_seconds_bucket" => {
                let Some(le) = sample.label("le").and_then(metrics_text::number) else {
                    continue;
                };
                buckets.add(le, sample.value);
            }
            _ => {}
        }
    }
    metrics.duration_buckets = buckets.to_vec();
    metrics
}

/// The `q` quantile of the observations between two cumulative bucket sets (`histogram_quantile`
/// of the increase): `None` after a reset (a count went down), 0 when nothing was observed.
pub fn quantile_between(q: f64, before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, count)| {
            let old = before
                .iter()
                .find(|(b, _)| b == le)
                .map(|(_, c)| *c)
                .unwrap_or(0.0);
            (*le, count - old)
        })
        .collect();
    let total = delta.last().map(|(_, c)| *c)?;
    if total < 0.0 || delta.iter().any(|(_, c)| *c < 0.0) {
        return None; // a reset
    }
    if total == 0.0 {
        return Some(0.0);
    }
    metrics_text::quantile(&delta, q)
}

#[derive(Debug, Clone)]
struct Previous {
    at: Duration,
    metrics: SidecarMetrics,
}

/// Scrapes sidecars and remembers each pod's counters for the next rates.
#[derive(Debug, Clone)]
pub struct Scraper {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
    previous: HashMap<String, Previous>,
}

impl Default for Scraper {
    fn default() -> Self {
        Self::new(Duration::from_secs(1))
    }
}

impl Scraper {
    /// Each scrape gives up after `timeout` (the pod then counts as missing).
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            timeout,
            previous: HashMap::new(),
        }
    }

    /// GET `http://addr/metrics`.
    pub async fn fetch(&self, addr: SocketAddr) -> anyhow::Result<String> {
        let uri: http::Uri = format!("http://{addr}/metrics").parse()?;
        let request = http::Request::get(uri)
            .header("accept", "text/plain")
            .body(Empty::<Bytes>::new())?;
        let response = tokio::time::timeout(self.timeout, async {
            let response = self.client.request(request).await?;
            if !response.status().is_success() {
                anyhow::bail!("/metrics answered {}", response.status());
            }
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("reading /metrics: {e}"))?
                .to_bytes();
            Ok(String::from_utf8_lossy(&body).into_owned())
        })
        .await
        .map_err(|_| anyhow::anyhow!("/metrics did not answer within {:?}", self.timeout))??;
        Ok(response)
    }

    /// Scrapes `pod` at `addr` and returns its samples of the `wanted` metrics.
    pub async fn scrape(
        &mut self,
        pod: &str,
        addr: SocketAddr,
        now: Duration,
        wanted: &[MetricType],
    ) -> anyhow::Result<Vec<Sample>> {
        let text = self.fetch(addr).await?;
        Ok(self.samples(pod, now, &text, wanted))
    }

    /// Turns one scrape's text into samples (and remembers it for the next rates).
    pub fn samples(
        &mut self,
        pod: &str,
        now: Duration,
        text: &str,
        wanted: &[MetricType],
    ) -> Vec<Sample> {
        let metrics = parse(text);
        let previous = self.previous.insert(
            pod.to_owned(),
            Previous {
                at: now,
                metrics: metrics.clone(),
            },
        );
        let sample = |metric, value| Sample {
            pod: pod.to_owned(),
            metric,
            at: now,
            window: Duration::ZERO,
            value,
        };
        let mut out = Vec::new();
        for kind in wanted {
            match kind {
                MetricType::Concurrency => out.push(sample(*kind, metrics.in_flight)),
                MetricType::RequestsPerSecond => {
                    if let Some(previous) = &previous
                        && now > previous.at
                        && metrics.requests_total >= previous.metrics.requests_total
                    {
                        let elapsed = (now - previous.at).as_secs_f64();
                        let mut s = sample(
                            *kind,
                            (metrics.requests_total - previous.metrics.requests_total) / elapsed,
                        );
                        s.window = now - previous.at;
                        out.push(s);
                    }
                }
                MetricType::LatencyP99 => {
                    if let Some(previous) = &previous
                        && now > previous.at
                        && let Some(p99) = quantile_between(
                            0.99,
                            &previous.metrics.duration_buckets,
                            &metrics.duration_buckets,
                        )
                    {
                        let mut s = sample(*kind, p99);
                        s.window = now - previous.at;
                        out.push(s);
                    }
                }
                MetricType::Cpu => {}
            }
        }
        out
    }

    /// Forgets pods not in `keep` (deleted pods).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.previous.retain(|pod, _| keep(pod));
    }
}

/// One sidecar's `/metrics`, as the tests of its readers (this module's, canary analysis's)
/// read it: the `orders` sidecar, receiving calls (and some for `payments`, a second Service
/// selecting its pod) and calling `payments`' subsets v1 and v2.
#[cfg(test)]
pub(crate) const SIDECAR_METRICS: &str = r#"# HELP weir_in_flight_requests In flight.
# TYPE weir_in_flight_requests gauge
weir_in_flight_requests{direction="inbound",service="orders"} 7
weir_in_flight_requests{direction="outbound",service="payments"} 3
weir_requests_total{code="200",direction="inbound",service="orders",subset=""} 100
weir_requests_total{code="503",direction="inbound",service="orders",subset=""} 20
weir_requests_total{code="500",direction="inbound",service="payments",subset="v2"} 30
weir_requests_total{code="200",direction="outbound",service="payments",subset="v2"} 90
weir_requests_total{code="503",direction="outbound",service="payments",subset="v2"} 7
weir_requests_total{code="502",direction="outbound",service="payments",subset="v2"} 3
weir_requests_total{code="404",direction="outbound",service="payments",subset="v2"} 10
weir_requests_total{code="200",direction="outbound",service="payments",subset="v1"} 5000
weir_requests_total{code="500",direction="outbound",service="orders",subset="v2"} 999
weir_request_duration_seconds_bucket{direction="inbound",service="orders",subset="",le="0.1"} 50
weir_request_duration_seconds_bucket{direction="inbound",service="orders",subset="",le="0.5"} 110
weir_request_duration_seconds_bucket{direction="inbound",service="orders",subset="",le="1"} 120
weir_request_duration_seconds_bucket{direction="inbound",service="orders",subset="",le="+Inf"} 120
weir_request_duration_seconds_bucket{direction="outbound",service="payments",subset="v2",le="0.1"} 100
weir_request_duration_seconds_bucket{direction="outbound",service="payments",subset="v2",le="0.5"} 110
weir_request_duration_seconds_bucket{direction="outbound",service="payments",subset="v2",le="+Inf"} 110
weir_request_duration_seconds_bucket{direction="outbound",service="payments",subset="v1",le="+Inf"} 5000
"#;

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = SIDECAR_METRICS;

    #[test]
    fn parses_inbound_series_only() {
        let m = parse(TEXT);
        assert_eq!(m.in_flight, 7.0);
        // Every inbound series, whatever Service it names: 100 + 20 + 30.
        assert_eq!(m.requests_total, 150.0);
        assert_eq!(
            m.duration_buckets,
            vec![
                (0.1, 50.0),
                (0.5, 110.0),
                (1.0, 120.0),
                (f64::INFINITY, 120.0)
            ]
        );
    }

    #[test]
    fn rates_and_p99_come_from_differences() {
        let mut scraper = Scraper::default();
        let wanted = [
            MetricType::Concurrency,
            MetricType::RequestsPerSecond,
            MetricType::LatencyP99,
        ];
        let first = scraper.samples("p", Duration::from_secs(10), TEXT, &wanted);
        // The first scrape has nothing to take differences from.
        assert_eq!(first.len(), 1);
        let later = TEXT
            .replace("subset=\"\"} 100\n", "subset=\"\"} 300\n")
            .replace("subset=\"\",le=\"0.1\"} 50", "subset=\"\",le=\"0.1\"} 150")
            .replace("subset=\"\",le=\"0.5\"} 110", "subset=\"\",le=\"0.5\"} 310")
            .replace("subset=\"\",le=\"1\"} 120", "subset=\"\",le=\"1\"} 320")
            .replace(
                "subset=\"\",le=\"+Inf\"} 120",
                "subset=\"\",le=\"+Inf\"} 320",
            );
        let second = scraper.samples("p", Duration::from_secs(12), &later, &wanted);
        let value = |kind| second.iter().find(|s| s.metric == kind).unwrap().value;
        assert_eq!(value(MetricType::RequestsPerSecond), 100.0); // +200 in 2 s
        // 200 new: 100 ≤ 0.1 s, 100 in (0.1, 0.5]; rank 198 → 0.1 + 0.4 × 98/100.
        assert!((value(MetricType::LatencyP99) - 0.492).abs() < 1e-9);
        // A restart (counters down) gives no rate.
        let third = scraper.samples("p", Duration::from_secs(14), TEXT, &wanted);
        assert_eq!(third.len(), 1);
    }

    #[test]
    fn idle_pod_has_zero_latency() {
        assert_eq!(
            quantile_between(
                0.99,
                &[(1.0, 5.0), (f64::INFINITY, 5.0)],
                &[(1.0, 5.0), (f64::INFINITY, 5.0)]
            ),
            Some(0.0)
        );
        // Everything beyond the last finite bound: that bound.
        assert_eq!(
            quantile_between(0.99, &[], &[(1.0, 0.0), (f64::INFINITY, 5.0)]),
            Some(1.0)
        );
    }
}
