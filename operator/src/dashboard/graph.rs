//! The service graph from the proxies' scrapes and the config: a pure function
//! ([`graph`]) of what was scraped, what the config API serves and what the Autoscalers
//! decided, so every figure of `/api/graph` is tested without a socket.
//!
//! Rules (the same as the demo's terminal dashboard):
//! - A rate is the increase of a counter between a proxy's two latest scrapes over the seconds
//!   between them, summed over the proxies. A counter that went down (the sidecar restarted)
//!   counts from zero, so a restart never shows a negative rate; a series new in the later
//!   scrape counts from zero too.
//! - Success = neither 5xx nor 429 (a rate-limited call did not get what it asked for).
//! - p50/p99 come from the increase of each duration bucket, interpolated within the bucket as
//!   PromQL's `histogram_quantile`; beyond the last finite bound, that bound (the sidecar API's
//!   [`quantile`], as the autoscaler's).
//! - A proxy whose latest scrape failed is **stale**: its last known figures stay in, and the
//!   services and edges it contributes to say `stale`.

use super::series::{Direction, Route, Scrape};
use crate::snapshot::{ServiceKey, Snapshot};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use weir_proxy_api::metrics_text::{Buckets, quantile};

/// One connected proxy and what was scraped of it.
#[derive(Debug, Clone, Default)]
pub struct ProxyScrapes {
    pub namespace: String,
    pub service: String,
    pub pod: Option<String>,
    /// The admin listener scraped.
    pub admin: Option<SocketAddr>,
    /// The services whose config it holds (the ones it calls): how the namespace of an
    /// outbound series' `service` label is found.
    pub calls: Vec<ServiceKey>,
    /// The scrape before the latest.
    pub previous: Option<Arc<Scrape>>,
    /// The latest successful scrape.
    pub latest: Option<Arc<Scrape>>,
    /// Why the latest attempt failed (the proxy is then stale).
    pub error: Option<String>,
    /// How long ago the latest successful scrape was taken.
    pub scraped_ago: Option<Duration>,
}

/// An Autoscaler as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerFigures {
    pub namespace: String,
    pub name: String,
    /// What it scales (a Deployment; a LocalService in local mode); empty when unknown.
    pub target: String,
    pub desired_replicas: Option<i32>,
    pub current_replicas: Option<i32>,
}

/// What [`graph`] reads besides the scrapes.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// What the config API serves: the subsets and their desired weights.
    pub config: Arc<Snapshot>,
    pub autoscalers: Vec<AutoscalerFigures>,
    /// A TrafficSplit's `status.analysis`, by its Service, where canary analysis runs.
    pub canaries: BTreeMap<ServiceKey, serde_json::Value>,
}

/// The body of `GET /api/graph`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Graph {
    pub services: Vec<ServiceNode>,
    pub edges: Vec<Edge>,
    pub autoscalers: Vec<AutoscalerFigures>,
    pub proxies: Vec<ProxyState>,
}

/// Request figures over the latest window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Traffic {
    pub requests_per_second: f64,
    /// Share of answers that were neither 5xx nor 429; `None` without requests.
    pub success_percent: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// A service of the mesh.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceNode {
    /// `name.namespace`: what edges name.
    pub id: String,
    pub namespace: String,
    pub name: String,
    /// Its connected proxies, and how many of them are stale.
    pub proxies: usize,
    pub stale_proxies: usize,
    pub stale: bool,
    /// The calls it received, as its own proxies saw them.
    pub inbound: Traffic,
    pub subsets: Vec<SubsetFigures>,
    /// The worst breaker state its callers hold for it: `closed`, `half-open`, `open`; `None`
    /// when no caller reports one.
    pub breaker: Option<String>,
    /// Its endpoints ejected by outlier detection, the most any caller has ejected now.
    pub endpoints_ejected: u64,
    /// 429s its proxies' rate limits answered: per second, and since the proxies started.
    pub rate_limited_per_second: f64,
    pub rate_limited_total: u64,
    /// Bulkhead refusals of its proxies: per second, and since the proxies started.
    pub bulkhead_rejected_per_second: f64,
    pub bulkhead_rejected_total: u64,
    /// The TrafficSplit's `status.analysis` when a canary analysis runs on it.
    pub canary: Option<serde_json::Value>,
}

/// One subset: its share by the config vs the share its callers actually sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubsetFigures {
    pub name: String,
    /// Its weight in the config; `None` for a subset only seen in traffic.
    pub desired_weight: Option<u32>,
    pub desired_percent: Option<f64>,
    /// Its share of the calls its callers sent to a subset of the service; `None` without calls.
    pub observed_percent: Option<f64>,
    pub requests_per_second: f64,
    /// Endpoints in the config.
    pub endpoints: usize,
}

/// Calls from one service to another, as the callers' proxies saw them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    pub from: String,
    pub to: String,
    #[serde(flatten)]
    pub traffic: Traffic,
    /// The worst breaker state the callers hold for the target.
    pub breaker: Option<String>,
    /// The most endpoints of the target a caller has ejected now.
    pub endpoints_ejected: u64,
    /// Whether a caller's proxy behind these figures is stale.
    pub stale: bool,
}

/// One proxy's scraping.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyState {
    pub namespace: String,
    pub service: String,
    pub pod: Option<String>,
    pub admin: Option<SocketAddr>,
    pub stale: bool,
    pub error: Option<String>,
    pub scraped_ms_ago: Option<u64>,
}

/// Counts over a window: requests, failures, duration buckets, and the rate.
#[derive(Debug, Clone, Default)]
struct Tally {
    per_second: f64,
    requests: f64,
    failures: f64,
    /// Bucket increases by bound.
    buckets: Buckets,
    stale: bool,
}

impl Tally {
    fn traffic(&self) -> Traffic {
        let cumulative = self.buckets.to_vec();
        Traffic {
            requests_per_second: round(self.per_second),
            success_percent: (self.requests > 0.0)
                .then(|| round(100.0 * (self.requests - self.failures) / self.requests)),
            p50_ms: quantile(&cumulative, 0.5).map(|s| round(s * 1000.0)),
            p99_ms: quantile(&cumulative, 0.99).map(|s| round(s * 1000.0)),
        }
    }
}

/// The two scrapes of a proxy that rates come from.
struct Window<'a> {
    before: &'a Scrape,
    after: &'a Scrape,
    seconds: f64,
}

impl<'a> Window<'a> {
    fn of(proxy: &'a ProxyScrapes) -> Option<Self> {
        let (before, after) = (proxy.previous.as_deref()?, proxy.latest.as_deref()?);
        let seconds = after.at.checked_sub(before.at)?.as_secs_f64();
        (seconds > 0.0).then_some(Self {
            before,
            after,
            seconds,
        })
    }

    /// Adds the requests and durations of the routes `pick` accepts.
    fn add(&self, tally: &mut Tally, pick: impl Fn(&Route) -> bool) {
        for ((route, code), &now) in &self.after.requests {
            if !pick(route) {
                continue;
            }
            let key = (route.clone(), code.clone());
            let n = increase(now, self.before.requests.get(&key).copied());
            tally.requests += n;
            tally.per_second += n / self.seconds;
            if failed(code) {
                tally.failures += n;
            }
        }
        for (route, after) in &self.after.durations {
            if !pick(route) {
                continue;
            }
            let before = self.before.durations.get(route);
            // One bucket down means the whole histogram restarted: count it from zero.
            let restarted = before.is_some_and(|before| {
                after.iter().any(|(le, count)| {
                    before
                        .iter()
                        .any(|(b, old)| b.to_bits() == le.to_bits() && old > count)
                })
            });
            for &(le, count) in after {
                let old = match (restarted, before) {
                    (false, Some(before)) => before
                        .iter()
                        .find(|(b, _)| b.to_bits() == le.to_bits())
                        .map(|(_, c)| *c),
                    _ => None,
                };
                tally.buckets.add(le, increase(count, old));
            }
        }
    }

    fn counter_rate(&self, of: impl Fn(&Scrape) -> Option<f64>) -> f64 {
        of(self.after).map_or(0.0, |now| increase(now, of(self.before)) / self.seconds)
    }
}

/// A counter's increase from `before` to `now`; a decrease is a restart from zero.
fn increase(now: f64, before: Option<f64>) -> f64 {
    let now = if now.is_finite() { now.max(0.0) } else { 0.0 };
    match before {
        Some(before) if before <= now => now - before,
        _ => now,
    }
}

/// 5xx and 429 are failures; anything else (a code that is no number too) is not.
fn failed(code: &str) -> bool {
    matches!(code.parse::<u16>(), Ok(429 | 500..=599))
}

fn round(x: f64) -> f64 {
    if x.is_finite() {
        (x * 1000.0).round() / 1000.0
    } else {
        0.0
    }
}

/// `closed`, `open`, `half-open`, and how bad each is.
fn breaker(state: f64) -> (u8, &'static str) {
    match state as i64 {
        1 => (2, "open"),
        2 => (1, "half-open"),
        _ => (0, "closed"),
    }
}

/// The service an outbound series of `proxy` names by `label`: the one it holds config for
/// (its own namespace's first when several namespaces have one), else in its own namespace.
fn callee(proxy: &ProxyScrapes, label: &str) -> ServiceKey {
    let mut found = proxy.calls.iter().filter(|k| k.name == label);
    let first = found.next();
    match first {
        Some(key) if found.next().is_none() => key.clone(),
        _ => ServiceKey::new(proxy.namespace.clone(), label),
    }
}

#[derive(Default)]
struct NodeTally {
    proxies: usize,
    stale_proxies: usize,
    inbound: Tally,
    subsets: BTreeMap<String, f64>,
    breaker: Option<(u8, &'static str)>,
    endpoints_ejected: u64,
    rate_limited_per_second: f64,
    rate_limited_total: f64,
    bulkhead_per_second: f64,
    bulkhead_total: f64,
}

#[derive(Default)]
struct EdgeTally {
    traffic: Tally,
    breaker: Option<(u8, &'static str)>,
    endpoints_ejected: u64,
}

fn worse(a: Option<(u8, &'static str)>, b: (u8, &'static str)) -> Option<(u8, &'static str)> {
    Some(a.map_or(b, |a| if b.0 > a.0 { b } else { a }))
}

/// The graph of the services the proxies belong to and call.
pub fn graph(proxies: &[ProxyScrapes], context: &Context) -> Graph {
    let mut nodes: BTreeMap<ServiceKey, NodeTally> = BTreeMap::new();
    let mut edges: BTreeMap<(ServiceKey, ServiceKey), EdgeTally> = BTreeMap::new();
    let mut states = Vec::with_capacity(proxies.len());
    for proxy in proxies {
        let stale = proxy.error.is_some();
        states.push(ProxyState {
            namespace: proxy.namespace.clone(),
            service: proxy.service.clone(),
            pod: proxy.pod.clone(),
            admin: proxy.admin,
            stale,
            error: proxy.error.clone(),
            scraped_ms_ago: proxy
                .scraped_ago
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        });
        let own = ServiceKey::new(proxy.namespace.clone(), proxy.service.clone());
        let node = nodes.entry(own.clone()).or_default();
        node.proxies += 1;
        if stale {
            node.stale_proxies += 1;
            node.inbound.stale = true;
        }
        if let Some(latest) = proxy.latest.as_deref() {
            node.rate_limited_total += latest.rate_limited.values().sum::<f64>();
            node.bulkhead_total += latest.bulkhead_rejected.values().sum::<f64>();
        }
        let Some(window) = Window::of(proxy) else {
            continue;
        };
        window.add(&mut node.inbound, |(direction, _, _)| {
            *direction == Direction::Inbound
        });
        let sum = |map: fn(&Scrape) -> &BTreeMap<String, f64>| {
            move |s: &Scrape| {
                let m = map(s);
                (!m.is_empty()).then(|| m.values().sum::<f64>())
            }
        };
        node.rate_limited_per_second += window.counter_rate(sum(|s| &s.rate_limited));
        node.bulkhead_per_second += window.counter_rate(sum(|s| &s.bulkhead_rejected));

        // Outbound: one edge per service called.
        let called: BTreeSet<&str> = window
            .after
            .requests
            .keys()
            .filter(|((direction, service, _), _)| {
                *direction == Direction::Outbound
                    && !service.is_empty()
                    && service != crate::dashboard::UNKNOWN_SERVICE
            })
            .map(|((_, service, _), _)| service.as_str())
            .collect();
        for label in called {
            let target = callee(proxy, label);
            let edge = edges.entry((own.clone(), target.clone())).or_default();
            if stale {
                edge.traffic.stale = true;
            }
            window.add(&mut edge.traffic, |(direction, service, _)| {
                *direction == Direction::Outbound && service == label
            });
            if let Some(&state) = window.after.breaker.get(label) {
                edge.breaker = worse(edge.breaker, breaker(state));
            }
            if let Some(&n) = window.after.endpoints_ejected.get(label) {
                edge.endpoints_ejected = edge.endpoints_ejected.max(n.max(0.0) as u64);
            }
            let node = nodes.entry(target).or_default();
            for ((route, code), &now) in &window.after.requests {
                let (direction, service, subset) = route;
                if *direction != Direction::Outbound || service != label || subset.is_empty() {
                    continue;
                }
                let n = increase(
                    now,
                    window
                        .before
                        .requests
                        .get(&(route.clone(), code.clone()))
                        .copied(),
                );
                *node.subsets.entry(subset.clone()).or_default() += n / window.seconds;
            }
        }
    }
    // A service under canary analysis shows even while nothing calls it: a rollout held for
    // want of traffic is worth seeing.
    for key in context.canaries.keys() {
        nodes.entry(key.clone()).or_default();
    }
    // The breaker and ejections of a service are what its callers hold.
    for ((_, to), edge) in &edges {
        if let Some(node) = nodes.get_mut(to) {
            if let Some(b) = edge.breaker {
                node.breaker = worse(node.breaker, b);
            }
            node.endpoints_ejected = node.endpoints_ejected.max(edge.endpoints_ejected);
        }
    }

    let services = nodes
        .into_iter()
        .map(|(key, node)| {
            let config = context.config.services.get(&key);
            // The metrics carry no port, so a multi-port service shows its first port's split
            // (a split without `port` gives every port the same weights).
            let configured: Vec<(String, u32, usize)> = config
                .and_then(|c| {
                    c.value.routes().first().map(|route| {
                        route
                            .subsets
                            .iter()
                            .map(|s| (s.name.clone(), s.weight, s.endpoints.len()))
                            .collect()
                    })
                })
                .unwrap_or_default();
            let weight_sum: f64 = configured.iter().map(|(_, w, _)| f64::from(*w)).sum();
            let observed_sum: f64 = node.subsets.values().sum();
            let mut subsets: Vec<SubsetFigures> = configured
                .iter()
                .map(|(name, weight, endpoints)| SubsetFigures {
                    name: name.clone(),
                    desired_weight: Some(*weight),
                    desired_percent: (weight_sum > 0.0)
                        .then(|| round(100.0 * f64::from(*weight) / weight_sum)),
                    observed_percent: None,
                    requests_per_second: 0.0,
                    endpoints: *endpoints,
                })
                .collect();
            for (name, rate) in &node.subsets {
                let figures = match subsets.iter_mut().find(|s| &s.name == name) {
                    Some(s) => s,
                    None => {
                        subsets.push(SubsetFigures {
                            name: name.clone(),
                            ..SubsetFigures::default()
                        });
                        subsets.last_mut().expect("just pushed")
                    }
                };
                figures.requests_per_second = round(*rate);
            }
            if observed_sum > 0.0 {
                for s in &mut subsets {
                    s.observed_percent = Some(round(
                        100.0 * node.subsets.get(&s.name).copied().unwrap_or(0.0) / observed_sum,
                    ));
                }
            }
            ServiceNode {
                id: key.to_string(),
                canary: context.canaries.get(&key).cloned(),
                namespace: key.namespace,
                name: key.name,
                proxies: node.proxies,
                stale_proxies: node.stale_proxies,
                stale: node.stale_proxies > 0,
                inbound: node.inbound.traffic(),
                subsets,
                breaker: node.breaker.map(|(_, name)| name.to_owned()),
                endpoints_ejected: node.endpoints_ejected,
                rate_limited_per_second: round(node.rate_limited_per_second),
                rate_limited_total: node.rate_limited_total as u64,
                bulkhead_rejected_per_second: round(node.bulkhead_per_second),
                bulkhead_rejected_total: node.bulkhead_total as u64,
            }
        })
        .collect();
    let edges = edges
        .into_iter()
        .map(|((from, to), edge)| Edge {
            from: from.to_string(),
            to: to.to_string(),
            traffic: edge.traffic.traffic(),
            breaker: edge.breaker.map(|(_, name)| name.to_owned()),
            endpoints_ejected: edge.endpoints_ejected,
            stale: edge.traffic.stale,
        })
        .collect();
    Graph {
        services,
        edges,
        autoscalers: context.autoscalers.clone(),
        proxies: states,
    }
}

#[cfg(test)]
mod tests;
