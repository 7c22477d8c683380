//! The running state built from a [`ProxyConfig`]: per service its subsets, balancers, breaker,
//! retry budget and outlier detector; the inbound rate limiter and bulkhead.
//!
//! Building a table is pure apart from the clock; it reuses from the previous table every piece
//! of state whose config did not change — endpoint health and latency, a breaker's state, a
//! budget's balance, a limiter's tokens — so that a weight edit shifts traffic without resetting
//! protection.

use crate::breaker::Breaker;
use crate::bulkhead::Bulkhead;
use crate::endpoint::{Balancer, Endpoint, OutlierDetector};
use crate::rate_limit::RateLimiter;
use crate::retry_budget;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use weir_proxy_api::{
    InboundPolicy, LoadBalancerPolicy, Policy, ProxyConfig, RetryBudget, RouteRule, ServiceConfig,
};

/// Connect timeout when a policy sets none (also bounds the wait for a new subscription).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A service by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}

#[derive(Debug)]
pub struct Subset {
    pub name: String,
    pub weight: u32,
    pub endpoints: Vec<Arc<Endpoint>>,
    pub balancer: Balancer,
    /// Its outbound request series, resolved on first use.
    pub metrics: std::sync::OnceLock<crate::metrics::RequestMetrics>,
}

/// The retry budget and the policy it was made for.
#[derive(Debug)]
pub struct Budget {
    pub config: RetryBudget,
    pub budget: retry_budget::RetryBudget,
}

impl Budget {
    fn new(config: RetryBudget, now: Instant) -> Self {
        Self {
            budget: retry_budget::RetryBudget::new(&config, now),
            config,
        }
    }
}

#[derive(Debug)]
pub struct ServiceRoute {
    pub key: ServiceKey,
    pub config: ServiceConfig,
    pub subsets: Vec<Subset>,
    pub total_weight: u64,
    /// Rules with header names lower-cased, ready to match.
    pub rules: Vec<RouteRule>,
    /// Every distinct endpoint of the service: outlier detection's population.
    pub endpoints: Vec<Arc<Endpoint>>,
    pub breaker: Option<Arc<Breaker>>,
    pub budget: Arc<Budget>,
    pub outlier: Option<Arc<OutlierDetector>>,
    pub connect_timeout: Duration,
    /// Seconds since the table's epoch of the last request: idle subscriptions are dropped.
    pub last_used: AtomicU64,
}

impl ServiceRoute {
    pub fn policy(&self) -> &Policy {
        &self.config.policy
    }

    /// The subset for a request: the first matching rule, else a weighted random draw. A drawn
    /// subset with no endpoint left to send to (all ejected, or none at all) gives its share to
    /// the subsets that have one, as a canary should: an ejected canary's traffic goes to the
    /// stable version instead of failing. A rule's choice is kept whatever its state: it names
    /// the subset explicitly.
    pub fn choose_subset(&self, parts: &http::request::Parts, now: Instant) -> &Subset {
        for rule in &self.rules {
            if rule_matches(rule, parts)
                && let Some(s) = self.subsets.iter().find(|s| s.name == rule.subset)
            {
                return s;
            }
        }
        let drawn = weighted(self.subsets.iter(), self.total_weight).unwrap_or(&self.subsets[0]);
        if self.can_serve(drawn, now) {
            return drawn;
        }
        let serving: Vec<&Subset> = self
            .subsets
            .iter()
            .filter(|s| s.weight > 0 && self.can_serve(s, now))
            .collect();
        let total = serving.iter().map(|s| u64::from(s.weight)).sum();
        weighted(serving.into_iter(), total).unwrap_or(drawn)
    }

    /// Whether `subset` has an endpoint that is not ejected. Without outlier detection nothing is
    /// ever ejected, so only emptiness matters (and no endpoint is looked at).
    fn can_serve(&self, subset: &Subset, now: Instant) -> bool {
        if self.outlier.is_none() {
            return !subset.endpoints.is_empty();
        }
        subset.endpoints.iter().any(|e| !e.is_ejected(now))
    }
}

/// A weighted random draw; `None` when the weights add up to nothing.
fn weighted<'a>(subsets: impl Iterator<Item = &'a Subset>, total: u64) -> Option<&'a Subset> {
    if total == 0 {
        return None;
    }
    let mut draw = fastrand::u64(..total);
    for subset in subsets {
        let w = u64::from(subset.weight);
        if draw < w {
            return Some(subset);
        }
        draw -= w;
    }
    None
}

fn rule_matches(rule: &RouteRule, parts: &http::request::Parts) -> bool {
    let m = &rule.matches;
    if let Some(prefix) = &m.path_prefix
        && !parts.uri.path().starts_with(prefix.as_str())
    {
        return false;
    }
    m.headers.iter().all(|(name, value)| {
        parts
            .headers
            .get_all(name.as_str())
            .iter()
            .any(|v| v.as_bytes() == value.as_bytes())
    })
}

#[derive(Debug, Default)]
pub struct Inbound {
    pub policy: InboundPolicy,
    pub rate_limiter: Option<Arc<RateLimiter>>,
    pub bulkhead: Option<Arc<Bulkhead>>,
}

/// Keyed by namespace or service name, looked up on every request. The keys come from the config,
/// never from requests (which only look up), so a fast hasher is safe where SipHash would be
/// paid on each call.
type ByName<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// What the proxy runs now. Immutable; a new config makes a new table.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub config: Arc<ProxyConfig>,
    /// namespace → name → route; nested so that a lookup borrows the request's strings.
    services: ByName<ByName<Arc<ServiceRoute>>>,
    /// Services the control plane said it does not know, with its message.
    pub unknown: HashMap<ServiceKey, String>,
    pub inbound: Inbound,
    /// A service's address (ClusterIP and port) → the service: intercepted connections that
    /// name no service in Host are routed by where they were going.
    addresses: HashMap<SocketAddr, Arc<ServiceRoute>>,
}

impl RouteTable {
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<ServiceRoute>> {
        self.services.get(namespace)?.get(name)
    }

    /// The service whose address (ClusterIP and port) `addr` is.
    pub fn service_at(&self, addr: SocketAddr) -> Option<&Arc<ServiceRoute>> {
        self.addresses.get(&addr)
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<ServiceRoute>> {
        self.services.values().flat_map(|m| m.values())
    }

    /// Builds the table for `config`, carrying over state from `previous` where the config of
    /// that piece is unchanged.
    pub fn build(
        config: ProxyConfig,
        unknown: HashMap<ServiceKey, String>,
        previous: &RouteTable,
        now: Instant,
    ) -> Self {
        let mut services: ByName<ByName<Arc<ServiceRoute>>> = ByName::default();
        let mut addresses: HashMap<SocketAddr, Arc<ServiceRoute>> = HashMap::new();
        for service in &config.services {
            let old = previous.service(&service.namespace, &service.name);
            let route = Arc::new(build_route(service, old.map(Arc::as_ref), now));
            for address in &service.addresses {
                // Validation refuses an address claimed twice; were it not, the first would win.
                addresses.entry(*address).or_insert_with(|| route.clone());
            }
            services
                .entry(service.namespace.clone())
                .or_default()
                .insert(service.name.clone(), route);
        }
        let inbound = build_inbound(&config.inbound, &previous.inbound, now);
        Self {
            config: Arc::new(config),
            services,
            unknown,
            inbound,
            addresses,
        }
    }
}

fn build_route(service: &ServiceConfig, old: Option<&ServiceRoute>, now: Instant) -> ServiceRoute {
    let policy = &service.policy;
    let mut known: HashMap<SocketAddr, Arc<Endpoint>> = old
        .map(|o| o.endpoints.iter().map(|e| (e.addr, e.clone())).collect())
        .unwrap_or_default();
    let lb = policy
        .load_balancer
        .as_ref()
        .map(|l| l.policy)
        .unwrap_or(LoadBalancerPolicy::LeastRequest);
    let mut all: Vec<Arc<Endpoint>> = Vec::new();
    let subsets = service
        .subsets
        .iter()
        .map(|s| {
            let endpoints: Vec<Arc<Endpoint>> = s
                .endpoints
                .iter()
                .map(|addr| {
                    let e = known
                        .entry(*addr)
                        .or_insert_with(|| Arc::new(Endpoint::new(*addr, now)))
                        .clone();
                    if !all.iter().any(|a| a.addr == *addr) {
                        all.push(e.clone());
                    }
                    e
                })
                .collect();
            Subset {
                name: s.name.clone(),
                weight: s.weight,
                endpoints,
                balancer: Balancer::new(lb),
                metrics: std::sync::OnceLock::new(),
            }
        })
        .collect();
    let breaker = policy.circuit_breaker.as_ref().map(|cb| {
        old.and_then(|o| o.breaker.as_ref())
            .filter(|b| b.config() == cb)
            .cloned()
            .unwrap_or_else(|| Arc::new(Breaker::new(cb.clone())))
    });
    let budget_config = policy
        .retries
        .as_ref()
        .and_then(|r| r.budget.clone())
        .unwrap_or_default();
    let budget = old
        .map(|o| &o.budget)
        .filter(|b| b.config == budget_config)
        .cloned()
        .unwrap_or_else(|| Arc::new(Budget::new(budget_config, now)));
    let rules = service
        .rules
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.matches.headers = r
                .matches
                .headers
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            r
        })
        .collect();
    ServiceRoute {
        key: ServiceKey {
            namespace: service.namespace.clone(),
            name: service.name.clone(),
        },
        total_weight: service.subsets.iter().map(|s| u64::from(s.weight)).sum(),
        subsets,
        rules,
        breaker,
        budget,
        // Kept while its config and population stay the same: requests still running on the
        // previous table then share its book of ejections with the new one's.
        outlier: policy.outlier_detection.as_ref().map(|config| {
            old.filter(|o| same_endpoints(&o.endpoints, &all))
                .and_then(|o| o.outlier.as_ref())
                .filter(|d| d.config == *config)
                .cloned()
                .unwrap_or_else(|| Arc::new(OutlierDetector::new(config.clone(), &all, now)))
        }),
        connect_timeout: policy
            .timeouts
            .as_ref()
            .and_then(|t| t.connect)
            .map(|d| d.get())
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        last_used: AtomicU64::new(old.map_or(0, |o| o.last_used.load(Ordering::Relaxed))),
        config: service.clone(),
        endpoints: all,
    }
}

fn same_endpoints(a: &[Arc<Endpoint>], b: &[Arc<Endpoint>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
}

fn build_inbound(policy: &InboundPolicy, old: &Inbound, now: Instant) -> Inbound {
    Inbound {
        rate_limiter: policy.rate_limit.as_ref().map(|rl| {
            old.rate_limiter
                .as_ref()
                .filter(|o| o.config == *rl)
                .cloned()
                .unwrap_or_else(|| Arc::new(RateLimiter::new(rl.clone(), now)))
        }),
        bulkhead: policy.bulkhead.as_ref().map(|b| {
            old.bulkhead
                .as_ref()
                .filter(|o| o.config == *b)
                .cloned()
                .unwrap_or_else(|| Arc::new(Bulkhead::new(b.clone())))
        }),
        policy: policy.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(weights: (u32, u32)) -> ProxyConfig {
        ProxyConfig::from_json(config_text(weights).as_bytes()).unwrap()
    }

    fn config_text(weights: (u32, u32)) -> String {
        format!(
            r#"{{"services":[{{"name":"payments","namespace":"shop",
                "subsets":[{{"name":"v1","weight":{},"endpoints":["127.0.0.1:9101"]}},
                           {{"name":"v2","weight":{},"endpoints":["127.0.0.1:9102"]}}],
                "addresses":["10.96.0.12:8080"],
                "rules":[{{"match":{{"headers":{{"X-Canary":"true"}}}},"subset":"v2"}}],
                "policy":{{"circuitBreaker":{{"failureThreshold":5}}}}}}]}}"#,
            weights.0, weights.1
        )
    }

    fn parts(canary: bool) -> http::request::Parts {
        let mut b = http::Request::builder().uri("/pay");
        if canary {
            b = b.header("x-canary", "true");
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn weights_and_rules_choose_the_subset() {
        let now = Instant::now();
        let t = RouteTable::build(
            config((90, 10)),
            HashMap::new(),
            &RouteTable::default(),
            now,
        );
        let route = t.service("shop", "payments").unwrap();
        let plain = parts(false);
        let v2 = (0..10_000)
            .filter(|_| route.choose_subset(&plain, now).name == "v2")
            .count();
        assert!((800..=1200).contains(&v2), "{v2}");
        assert_eq!(route.choose_subset(&parts(true), now).name, "v2");
        assert!(t.service("shop", "nope").is_none());
        let by_address = t.service_at("10.96.0.12:8080".parse().unwrap()).unwrap();
        assert!(Arc::ptr_eq(by_address, route));
        assert!(t.service_at("10.96.0.12:8081".parse().unwrap()).is_none());
    }

    #[test]
    fn a_rebuild_keeps_endpoint_and_breaker_state() {
        let now = Instant::now();
        let t1 = RouteTable::build(
            config((90, 10)),
            HashMap::new(),
            &RouteTable::default(),
            now,
        );
        let t2 = RouteTable::build(config((50, 50)), HashMap::new(), &t1, now);
        let (r1, r2) = (
            t1.service("shop", "payments").unwrap(),
            t2.service("shop", "payments").unwrap(),
        );
        assert!(Arc::ptr_eq(&r1.endpoints[0], &r2.endpoints[0]));
        assert!(Arc::ptr_eq(
            r1.breaker.as_ref().unwrap(),
            r2.breaker.as_ref().unwrap()
        ));
        assert_eq!(r2.subsets[1].weight, 50);
    }

    #[test]
    fn a_rebuild_keeps_the_book_of_ejections_while_the_population_stays() {
        use crate::endpoint::Outcome;
        let now = Instant::now();
        let with = |weights: (u32, u32), endpoints: &str| {
            let text = config_text(weights)
                .replace(r#"["127.0.0.1:9102"]"#, endpoints)
                .replace(
                    r#""circuitBreaker":{"failureThreshold":5}"#,
                    r#""outlierDetection":{"consecutive5xxErrors":1,"maxEjectionPercent":50}"#,
                );
            ProxyConfig::from_json(text.as_bytes()).unwrap()
        };
        let t1 = RouteTable::build(
            with((90, 10), r#"["127.0.0.1:9102"]"#),
            HashMap::new(),
            &RouteTable::default(),
            now,
        );
        let r1 = t1.service("shop", "payments").unwrap();
        let d1 = r1.outlier.as_ref().unwrap();
        assert!(d1.record(&r1.endpoints[0], &r1.endpoints, Outcome::ServerError, now));
        // A weight edit keeps the detector; a new endpoint makes a new one that still counts
        // the ejection the endpoint carries.
        let t2 = RouteTable::build(
            with((50, 50), r#"["127.0.0.1:9102"]"#),
            HashMap::new(),
            &t1,
            now,
        );
        let r2 = t2.service("shop", "payments").unwrap();
        assert!(Arc::ptr_eq(d1, r2.outlier.as_ref().unwrap()));
        let t3 = RouteTable::build(
            with((50, 50), r#"["127.0.0.1:9102","127.0.0.1:9103"]"#),
            HashMap::new(),
            &t2,
            now,
        );
        let r3 = t3.service("shop", "payments").unwrap();
        let d3 = r3.outlier.as_ref().unwrap();
        assert!(!Arc::ptr_eq(d1, d3));
        assert_eq!(d3.ejected(now), 1);
        // 50 % of 3 endpoints: the one ejection is all that is allowed.
        assert!(!d3.record(&r3.endpoints[1], &r3.endpoints, Outcome::ServerError, now));
    }
}
