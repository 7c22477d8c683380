//! What the dashboard and the report show of the mesh, computed from the sidecars' `/metrics`
//! (the metric names of the sidecar contract): snapshots every second, and figures over any two
//! of them — counters as differences, histograms as bucket differences, gauges as the later
//! value (and the worst value seen in between).

use super::prom::{self, Sample};
use super::topology::{self, INSTANCES, Instance, ORDERS};
use super::web::{self, Client};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// One scrape of every sidecar and the control plane.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Since the start of the run.
    pub at: Duration,
    /// Per instance of [`INSTANCES`], its sidecar's samples; `None` when it did not answer.
    pub sidecars: Vec<Option<Vec<Sample>>>,
    /// The control plane's samples.
    pub operator: Option<Vec<Sample>>,
    /// The payments weights the orders sidecar runs now (from its `/config`), by subset.
    pub weights: Option<BTreeMap<String, u64>>,
    /// The sidecars of the orders instances the autoscaler added (replica 2 and up) that
    /// answered, by replica: the figures of orders add them up.
    pub orders_replicas: BTreeMap<u8, Vec<Sample>>,
    /// The payments canary analysis as the control plane's `/status` shows it, when there is one.
    pub rollout: Option<Rollout>,
    /// The mesh resources the control plane refused, with its reason (see [`refusals`]).
    pub refusals: Vec<String>,
}

impl Snapshot {
    /// The samples of instance `index` of [`INSTANCES`] — for orders, of every orders instance
    /// in `replicas` too (those of the later snapshot of a pair, so that an instance gone in
    /// between counts in neither and one new in between counts from zero).
    fn samples_of(&self, index: usize, replicas: &[u8]) -> Option<Vec<Sample>> {
        let mut samples = self.sidecars.get(index)?.clone()?;
        if INSTANCES.get(index) == Some(&ORDERS) {
            for replica in replicas {
                if let Some(extra) = self.orders_replicas.get(replica) {
                    samples.extend(extra.iter().cloned());
                }
            }
        }
        Some(samples)
    }
}

/// Scrapes everything at once, each within `timeout`; `extra_orders`: the orders instances
/// beyond the first that run now.
pub async fn scrape(
    client: &Client,
    at: Duration,
    timeout: Duration,
    extra_orders: &[Instance],
) -> Snapshot {
    let metrics = |addr| {
        let client = client.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, web::get(&client, addr, "/metrics")).await {
                Ok(Ok(a)) if a.status == 200 => {
                    let mut samples = prom::parse(&String::from_utf8_lossy(&a.body));
                    // Only what the figures read: snapshots are kept for a whole scenario.
                    samples.retain(|s| USED.contains(&s.name.as_str()));
                    Some(samples)
                }
                _ => None,
            }
        })
    };
    let sidecars: Vec<_> = INSTANCES.iter().map(|i| metrics(i.admin_addr())).collect();
    let replicas: Vec<_> = extra_orders
        .iter()
        .map(|i| (i.replica, metrics(i.admin_addr())))
        .collect();
    let operator = metrics(topology::control_plane_admin());
    let config = {
        let client = client.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, web::get(&client, ORDERS.admin_addr(), "/config"))
                .await
            {
                Ok(Ok(a)) if a.status == 200 => a.json().and_then(|c| payments_weights(&c)),
                _ => None,
            }
        })
    };
    let status = {
        let client = client.clone();
        tokio::spawn(async move {
            let admin = topology::control_plane_admin();
            match tokio::time::timeout(timeout, web::get(&client, admin, "/status")).await {
                Ok(Ok(a)) if a.status == 200 => {
                    a.json().map(|s| (Rollout::from_status(&s), refusals(&s)))
                }
                _ => None,
            }
        })
    };
    let mut snapshot = Snapshot {
        at,
        ..Snapshot::default()
    };
    for handle in sidecars {
        snapshot.sidecars.push(handle.await.ok().flatten());
    }
    for (replica, handle) in replicas {
        if let Some(samples) = handle.await.ok().flatten() {
            snapshot.orders_replicas.insert(replica, samples);
        }
    }
    snapshot.operator = operator.await.ok().flatten();
    snapshot.weights = config.await.ok().flatten();
    if let Some((rollout, refused)) = status.await.ok().flatten() {
        snapshot.rollout = rollout;
        snapshot.refusals = refused;
    }
    snapshot
}

/// Every TrafficSplit and ResiliencePolicy whose `Accepted` condition is `False` in a `/status`
/// answer, as one line each with the control plane's reason and message: an edit of the mesh
/// folder that was refused (its last good version stays in force, so the figures alone would
/// not show that the edit did nothing).
pub fn refusals(status: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for (list, kind) in [
        ("trafficSplits", "TrafficSplit"),
        ("resiliencePolicies", "ResiliencePolicy"),
    ] {
        for resource in status[list].as_array().into_iter().flatten() {
            let refused = resource["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Accepted" && c["status"] == "False");
            if let Some(c) = refused {
                out.push(format!(
                    "{kind} {}/{} refused ({}): {}; its last good version stays in force",
                    resource["namespace"].as_str().unwrap_or("?"),
                    resource["name"].as_str().unwrap_or("?"),
                    c["reason"].as_str().unwrap_or("no reason given"),
                    c["message"].as_str().unwrap_or_default(),
                ));
            }
        }
    }
    out
}

/// The weights of the payments subsets in a ProxyConfig (`services[].subsets[]`).
pub fn payments_weights(config: &serde_json::Value) -> Option<BTreeMap<String, u64>> {
    let service = config
        .get("services")?
        .as_array()?
        .iter()
        .find(|s| s.get("name").and_then(|n| n.as_str()) == Some("payments"))?;
    let mut out = BTreeMap::new();
    for subset in service.get("subsets")?.as_array()? {
        let name = subset.get("name")?.as_str()?.to_owned();
        let weight = subset.get("weight").and_then(|w| w.as_u64()).unwrap_or(0);
        out.insert(name, weight);
    }
    Some(out)
}

/// One service's inbound figures: what its own sidecar saw of the calls to it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceFigures {
    /// `gateway`, `payments v1` …
    pub name: String,
    pub requests: u64,
    pub requests_per_second: f64,
    /// The share of answers that were neither 5xx nor 429, in percent.
    pub success_percent: Option<f64>,
    pub server_errors: u64,
    /// 429 answers of its sidecar's rate limit.
    pub rate_limited: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Whether its sidecar answered the last scrape.
    pub up: bool,
}

/// The canary split the orders sidecar actually made: its outbound calls to payments by subset.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SplitFigures {
    pub total: u64,
    /// Calls per subset.
    pub counts: BTreeMap<String, u64>,
    /// Share per subset, in percent (absent without calls).
    pub percent: BTreeMap<String, f64>,
    /// The weights the orders sidecar runs at the end of the window.
    pub configured: Option<BTreeMap<String, u64>>,
}

impl SplitFigures {
    /// The share per subset as one line, `v1 90.0 % / v2 10.0 %`, with `decimals` digits
    /// after the point; empty without calls.
    pub fn percent_line(&self, decimals: usize) -> String {
        self.percent
            .iter()
            .map(|(k, v)| format!("{k} {v:.decimals$} %"))
            .collect::<Vec<_>>()
            .join(" / ")
    }
}

/// Calls from one service to another, seen by the caller's sidecar (where retries, timeouts,
/// the breaker and outlier detection act).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CallFigures {
    pub caller: String,
    pub service: String,
    pub requests: u64,
    /// Answers that were not 2xx–4xx (5xx, refusals of this sidecar included).
    pub failed: u64,
    pub retries: u64,
    pub timeouts: u64,
    pub retry_budget_exhausted: u64,
    /// The breaker at the end of the window: `closed`, `open`, `half-open`, or `-` (no breaker).
    pub breaker: String,
    /// The worst state seen in any snapshot of the window.
    pub breaker_worst: String,
    /// Ejections by outlier detection during the window.
    pub ejections: u64,
    /// Endpoints ejected at the end of the window.
    pub endpoints_ejected: u64,
    /// The most endpoints ejected at once in any snapshot of the window.
    pub endpoints_ejected_max: u64,
}

/// Everything of the mesh over a window.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeshFigures {
    pub seconds: f64,
    pub services: Vec<ServiceFigures>,
    pub split: SplitFigures,
    pub calls: Vec<CallFigures>,
    /// 429s made by rate limits, per service whose sidecar made them.
    pub rate_limited: BTreeMap<String, u64>,
    /// Bulkhead refusals, per service.
    pub bulkhead_rejected: BTreeMap<String, u64>,
    /// The control plane's config version and connected proxies at the end.
    pub config_version: Option<u64>,
    pub connected_proxies: Option<u64>,
}

const REQUESTS: &str = "weir_requests_total";
const DURATION: &str = "weir_request_duration_seconds";

/// The metrics the figures read (of the sidecars' and the control plane's).
const USED: [&str; 12] = [
    REQUESTS,
    "weir_request_duration_seconds_bucket",
    "weir_retries_total",
    "weir_timeouts_total",
    "weir_retry_budget_exhausted_total",
    "weir_circuit_breaker_state",
    "weir_outlier_ejections_total",
    "weir_endpoints_ejected",
    "weir_rate_limited_total",
    "weir_bulkhead_rejected_total",
    "weir_config_version",
    "weir_connected_proxies",
];

/// The figures between the first and the last of `snapshots` (gauges: the last, and the worst
/// over all of them).
pub fn mesh_figures(snapshots: &[Snapshot]) -> MeshFigures {
    let (Some(first), Some(last)) = (snapshots.first(), snapshots.last()) else {
        return MeshFigures::default();
    };
    let seconds = last.at.saturating_sub(first.at).as_secs_f64();
    let replicas: Vec<u8> = last.orders_replicas.keys().copied().collect();
    let of = |snap: &'_ Snapshot, i: usize| -> Vec<Sample> {
        snap.samples_of(i, &replicas).unwrap_or_default()
    };
    let mut figures = MeshFigures {
        seconds,
        ..MeshFigures::default()
    };
    for (i, instance) in INSTANCES.iter().enumerate() {
        let (a, b) = (of(first, i), of(last, i));
        let mut service = service_figures(
            instance,
            &a,
            &b,
            seconds,
            last.sidecars.get(i).is_some_and(|s| s.is_some()),
        );
        if *instance == ORDERS && !replicas.is_empty() {
            // The figures of every orders instance that answered, added up.
            service.name = format!("{} ×{}", service.name, replicas.len() + 1);
        }
        figures.services.push(service);
        for (service, n) in prom::sum_by(&b, "weir_rate_limited_total", &[], "service") {
            let before = prom::sum(&a, "weir_rate_limited_total", &[("service", &service)]);
            *figures.rate_limited.entry(service).or_default() +=
                prom::counter_delta(n, before) as u64;
        }
        for (service, n) in prom::sum_by(&b, "weir_bulkhead_rejected_total", &[], "service") {
            let before = prom::sum(&a, "weir_bulkhead_rejected_total", &[("service", &service)]);
            *figures.bulkhead_rejected.entry(service).or_default() +=
                prom::counter_delta(n, before) as u64;
        }
        figures
            .calls
            .extend(call_figures(instance, i, &replicas, snapshots));
    }
    let orders = INSTANCES
        .iter()
        .position(|i| *i == ORDERS)
        .expect("orders is an instance");
    figures.split = split_figures(&of(first, orders), &of(last, orders));
    figures.split.configured = last.weights.clone();
    if let Some(op) = &last.operator {
        figures.config_version = Some(prom::sum(op, "weir_config_version", &[]) as u64);
        figures.connected_proxies = Some(prom::sum(op, "weir_connected_proxies", &[]) as u64);
    }
    figures
}

fn service_figures(
    instance: &Instance,
    a: &[Sample],
    b: &[Sample],
    seconds: f64,
    up: bool,
) -> ServiceFigures {
    let inbound = [("direction", "inbound")];
    let mut requests = 0.0;
    let mut server_errors = 0.0;
    let mut rate_limited = 0.0;
    for (code, n) in prom::sum_by(b, REQUESTS, &inbound, "code") {
        let before = prom::sum(
            a,
            REQUESTS,
            &[("direction", "inbound"), ("code", code.as_str())],
        );
        let delta = prom::counter_delta(n, before);
        requests += delta;
        match code.parse::<u16>() {
            Ok(500..=599) => server_errors += delta,
            Ok(429) => rate_limited += delta,
            _ => {}
        }
    }
    let hist = prom::bucket_delta(
        &prom::buckets(b, DURATION, &inbound),
        &prom::buckets(a, DURATION, &inbound),
    );
    let ms = |q| prom::quantile(&hist, q).map(|s| s * 1000.0);
    ServiceFigures {
        name: instance.label(),
        requests: requests as u64,
        requests_per_second: if seconds > 0.0 {
            requests / seconds
        } else {
            0.0
        },
        success_percent: (requests > 0.0)
            .then(|| 100.0 * (requests - server_errors - rate_limited) / requests),
        server_errors: server_errors as u64,
        rate_limited: rate_limited as u64,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        up,
    }
}

fn split_figures(a: &[Sample], b: &[Sample]) -> SplitFigures {
    let filter = [("direction", "outbound"), ("service", "payments")];
    let mut split = SplitFigures::default();
    for (subset, n) in prom::sum_by(b, REQUESTS, &filter, "subset") {
        if subset.is_empty() {
            continue; // refused before a subset was chosen
        }
        let before = prom::sum(
            a,
            REQUESTS,
            &[
                ("direction", "outbound"),
                ("service", "payments"),
                ("subset", subset.as_str()),
            ],
        );
        let delta = prom::counter_delta(n, before) as u64;
        split.total += delta;
        split.counts.insert(subset, delta);
    }
    if split.total > 0 {
        for (subset, n) in &split.counts {
            split
                .percent
                .insert(subset.clone(), 100.0 * *n as f64 / split.total as f64);
        }
    }
    split
}

fn breaker_name(state: Option<f64>) -> String {
    match state.map(|s| s as i64) {
        None => "-".to_owned(),
        Some(0) => "closed".to_owned(),
        Some(1) => "open".to_owned(),
        Some(2) => "half-open".to_owned(),
        Some(other) => other.to_string(),
    }
}

/// The outbound calls of one caller, per service it called.
fn call_figures(
    caller: &Instance,
    index: usize,
    replicas: &[u8],
    snapshots: &[Snapshot],
) -> Vec<CallFigures> {
    let samples = |s: &Snapshot| s.samples_of(index, replicas);
    let (Some(b), a) = (
        snapshots.last().and_then(samples),
        snapshots.first().and_then(samples).unwrap_or_default(),
    ) else {
        return Vec::new();
    };
    let outbound = [("direction", "outbound")];
    let mut services: Vec<String> = prom::sum_by(&b, REQUESTS, &outbound, "service")
        .into_iter()
        .map(|(s, _)| s)
        .filter(|s| !s.is_empty())
        .collect();
    services.sort();
    let delta = |name: &str, filter: &[(&str, &str)]| {
        prom::counter_delta(prom::sum(&b, name, filter), prom::sum(&a, name, filter)) as u64
    };
    let gauge = |samples: &[Sample], name: &str, service: &str| {
        samples
            .iter()
            .find(|s| s.name == name && s.label("service") == Some(service))
            .map(|s| s.value)
    };
    services
        .into_iter()
        .map(|service| {
            let s = service.as_str();
            let filter = [("direction", "outbound"), ("service", s)];
            let mut failed = 0;
            for (code, _) in prom::sum_by(&b, REQUESTS, &filter, "code") {
                if code.starts_with('5') {
                    failed += delta(
                        REQUESTS,
                        &[
                            ("direction", "outbound"),
                            ("service", s),
                            ("code", code.as_str()),
                        ],
                    );
                }
            }
            // Worst over the window: open (1) is worse than half-open (2), which is worse than
            // closed (0).
            let rank = |state: f64| match state as i64 {
                1 => 2,
                2 => 1,
                _ => 0,
            };
            let mut worst: Option<f64> = None;
            let mut ejected_max = 0u64;
            for snap in snapshots {
                let Some(samples) = samples(snap) else {
                    continue;
                };
                if let Some(state) = gauge(&samples, "weir_circuit_breaker_state", s)
                    && worst.is_none_or(|w| rank(state) > rank(w))
                {
                    worst = Some(state);
                }
                if let Some(n) = gauge(&samples, "weir_endpoints_ejected", s) {
                    ejected_max = ejected_max.max(n as u64);
                }
            }
            CallFigures {
                caller: caller.label(),
                service: service.clone(),
                requests: delta(REQUESTS, &filter),
                failed,
                retries: delta("weir_retries_total", &[("service", s)]),
                timeouts: delta("weir_timeouts_total", &[("service", s)]),
                retry_budget_exhausted: delta(
                    "weir_retry_budget_exhausted_total",
                    &[("service", s)],
                ),
                breaker: breaker_name(gauge(&b, "weir_circuit_breaker_state", s)),
                breaker_worst: breaker_name(worst),
                ejections: delta("weir_outlier_ejections_total", &[("service", s)]),
                endpoints_ejected: gauge(&b, "weir_endpoints_ejected", s).unwrap_or(0.0) as u64,
                endpoints_ejected_max: ejected_max,
            }
        })
        .collect()
}

/// Where the payments rollout stood at the end of a run (from the control plane's `/status`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    pub phase: String,
    pub step: i64,
    pub canary_weight: i64,
    pub message: String,
    /// The last judgement as `/status` shows it.
    pub last_judgement: serde_json::Value,
}

impl Rollout {
    /// The payments split's `status.analysis` in a `/status` answer.
    pub fn from_status(status: &serde_json::Value) -> Option<Self> {
        let analysis = status["trafficSplits"]
            .as_array()?
            .iter()
            .find(|s| s["namespace"] == "shop" && s["name"] == "payments")?
            .get("status")?
            .get("analysis")?;
        Some(Self {
            phase: analysis["phase"].as_str()?.to_owned(),
            step: analysis["step"].as_i64()?,
            canary_weight: analysis["canaryWeight"].as_i64()?,
            message: analysis["message"].as_str().unwrap_or_default().to_owned(),
            last_judgement: analysis["lastJudgement"].clone(),
        })
    }
}

impl Rollout {
    /// `Progressing, step 2, canary 50 %; last judgement Passed on 24 requests (success
    /// 100.0 %, p99 12ms)`: the dashboard's line.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{}, step {}, canary {} %",
            self.phase, self.step, self.canary_weight
        );
        let j = &self.last_judgement;
        if let Some(result) = j["result"].as_str() {
            out.push_str(&format!(
                "; last judgement {result} on {} requests",
                j["requests"].as_i64().unwrap_or(0)
            ));
            let mut figures = Vec::new();
            if let Some(rate) = j["successRate"].as_f64() {
                figures.push(format!("success {:.1} %", rate * 100.0));
            }
            if let Some(p99) = j["latencyP99"].as_str() {
                figures.push(format!("p99 {p99}"));
            }
            if !figures.is_empty() {
                out.push_str(&format!(" ({})", figures.join(", ")));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The progress line rounds the split to whole percent, the report to tenths.
    #[test]
    fn the_split_reads_as_one_line_at_either_precision() {
        let mut split = SplitFigures::default();
        assert_eq!(split.percent_line(1), "");
        split.percent = [("v1".into(), 66.66), ("v2".into(), 33.34)].into();
        assert_eq!(split.percent_line(0), "v1 67 % / v2 33 %");
        assert_eq!(split.percent_line(1), "v1 66.7 % / v2 33.3 %");
    }

    fn snap(at: u64, orders: &str, payments_v1: &str) -> Snapshot {
        let mut sidecars = vec![None; INSTANCES.len()];
        sidecars[1] = Some(prom::parse(orders));
        sidecars[3] = Some(prom::parse(payments_v1));
        Snapshot {
            at: Duration::from_secs(at),
            sidecars,
            operator: None,
            weights: None,
            orders_replicas: BTreeMap::new(),
            rollout: None,
            refusals: Vec::new(),
        }
    }

    #[test]
    fn refused_resources_are_named_with_the_reason() {
        let status = serde_json::json!({
            "trafficSplits": [
                {"namespace": "shop", "name": "payments", "status": {"conditions": [
                    {"type": "Accepted", "status": "False", "reason": "Invalid",
                     "message": "spec.backends[1].weight: must be between 0 and 100"},
                    {"type": "Programmed", "status": "True", "reason": "Programmed", "message": ""}
                ]}},
                {"namespace": "shop", "name": "fine", "status": {"conditions": [
                    {"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""}
                ]}}
            ],
            "resiliencePolicies": [
                {"namespace": "shop", "name": "orders", "status": {"conditions": [
                    {"type": "Accepted", "status": "False", "reason": "TargetNotFound",
                     "message": "no Service orders"}
                ]}}
            ],
            "autoscalers": []
        });
        assert_eq!(
            refusals(&status),
            vec![
                "TrafficSplit shop/payments refused (Invalid): spec.backends[1].weight: must be \
                 between 0 and 100; its last good version stays in force",
                "ResiliencePolicy shop/orders refused (TargetNotFound): no Service orders; its \
                 last good version stays in force",
            ]
        );
        assert!(refusals(&serde_json::json!({})).is_empty());
        assert!(refusals(&serde_json::json!({"trafficSplits": 3})).is_empty());
    }

    #[test]
    fn split_breakers_and_services_from_two_snapshots() {
        let a = snap(
            0,
            r#"weir_requests_total{code="200",direction="outbound",service="payments",subset="v1"} 100
weir_requests_total{code="200",direction="outbound",service="payments",subset="v2"} 10
weir_circuit_breaker_state{service="payments"} 0
"#,
            r#"weir_requests_total{code="200",direction="inbound",service="payments",subset=""} 100
weir_request_duration_seconds_bucket{direction="inbound",service="payments",subset="",le="0.01"} 100
weir_request_duration_seconds_bucket{direction="inbound",service="payments",subset="",le="+Inf"} 100
"#,
        );
        let mid = snap(
            1,
            r#"weir_circuit_breaker_state{service="payments"} 1
weir_endpoints_ejected{service="payments"} 1
"#,
            "",
        );
        let b = snap(
            2,
            r#"weir_requests_total{code="200",direction="outbound",service="payments",subset="v1"} 150
weir_requests_total{code="200",direction="outbound",service="payments",subset="v2"} 60
weir_requests_total{code="503",direction="outbound",service="payments",subset="v2"} 2
weir_circuit_breaker_state{service="payments"} 0
weir_outlier_ejections_total{service="payments"} 1
weir_endpoints_ejected{service="payments"} 0
"#,
            r#"weir_requests_total{code="200",direction="inbound",service="payments",subset=""} 140
weir_requests_total{code="500",direction="inbound",service="payments",subset=""} 10
weir_request_duration_seconds_bucket{direction="inbound",service="payments",subset="",le="0.01"} 120
weir_request_duration_seconds_bucket{direction="inbound",service="payments",subset="",le="+Inf"} 150
"#,
        );
        let f = mesh_figures(&[a, mid, b]);
        assert_eq!(f.seconds, 2.0);
        assert_eq!(f.split.total, 102);
        assert_eq!(f.split.counts["v1"], 50);
        assert_eq!(f.split.counts["v2"], 52);
        let payments = &f.services[3];
        assert_eq!(payments.name, "payments v1");
        assert_eq!(payments.requests, 50);
        assert_eq!(payments.requests_per_second, 25.0);
        assert_eq!(payments.server_errors, 10);
        assert_eq!(payments.success_percent, Some(80.0));
        // 20 of 50 in the first bucket: the median is above it, in the +Inf bucket.
        assert_eq!(payments.p50_ms, Some(10.0));
        let call = f
            .calls
            .iter()
            .find(|c| c.caller == "orders" && c.service == "payments")
            .unwrap();
        assert_eq!(call.requests, 102);
        assert_eq!(call.failed, 2);
        assert_eq!(call.breaker, "closed");
        assert_eq!(call.breaker_worst, "open");
        assert_eq!(call.ejections, 1);
        assert_eq!(call.endpoints_ejected, 0);
        assert_eq!(call.endpoints_ejected_max, 1);
    }

    #[test]
    fn orders_figures_add_up_its_instances() {
        let inbound = |n: u32| {
            format!(
                "weir_requests_total{{code=\"201\",direction=\"inbound\",service=\"orders\",subset=\"\"}} {n}\n"
            )
        };
        let mut a = snap(0, &inbound(100), "");
        // Replica 2 ran at the start and is gone at the end; replica 3 is new.
        a.orders_replicas.insert(2, prom::parse(&inbound(50)));
        let mut b = snap(10, &inbound(130), "");
        b.orders_replicas.insert(3, prom::parse(&inbound(20)));
        let f = mesh_figures(&[a, b]);
        let orders = f.services.iter().find(|s| s.name == "orders ×2").unwrap();
        // 30 more on replica 1, 20 on the new replica 3; the departed replica 2 counts in
        // neither snapshot rather than as a negative.
        assert_eq!(orders.requests, 50);
        assert_eq!(orders.requests_per_second, 5.0);
    }

    #[test]
    fn weights_from_a_proxy_config() {
        let config = serde_json::json!({
            "version": 3,
            "services": [{"name": "payments", "namespace": "shop",
                "subsets": [{"name": "v1", "weight": 50, "endpoints": []},
                            {"name": "v2", "weight": 50, "endpoints": []}]}]
        });
        let w = payments_weights(&config).unwrap();
        assert_eq!(w["v1"], 50);
        assert_eq!(w["v2"], 50);
        assert_eq!(payments_weights(&serde_json::json!({"services": []})), None);
    }
}
