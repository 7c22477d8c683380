//! The running state built from a [`ProxyConfig`]: per service its subsets, balancers, breaker,
//! retry budget and outlier detector; the inbound rate limiter and bulkhead.
//!
//! A multi-port service has one [`ServiceRoute`] per port — each with that port's subsets,
//! endpoints and rules — sharing the service's breaker, retry budget, outlier detector (over
//! the endpoints of every port) and last use: the policy is the service's, whichever port a
//! call takes. Which port a call names is settled by [`RouteTable::route`].
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
use std::borrow::Cow;
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

/// A service as a request names it: borrowed from the request where it can be (no allocation
/// on every request), made a [`ServiceKey`] only where it is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceName<'a> {
    pub namespace: Cow<'a, str>,
    pub name: Cow<'a, str>,
}

impl ServiceName<'_> {
    pub fn to_key(&self) -> ServiceKey {
        ServiceKey {
            namespace: self.namespace.clone().into_owned(),
            name: self.name.clone().into_owned(),
        }
    }
}

impl std::fmt::Display for ServiceName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
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
    /// The service port this route serves; `None` for a service routed as one on every port.
    pub port: Option<u16>,
    /// The whole service's config, shared by its ports' routes.
    pub config: Arc<ServiceConfig>,
    pub subsets: Vec<Subset>,
    pub total_weight: u64,
    /// Rules with header names lower-cased, ready to match.
    pub rules: Vec<RouteRule>,
    /// Every distinct endpoint of the service, of all its ports: outlier detection's
    /// population.
    pub endpoints: Vec<Arc<Endpoint>>,
    pub breaker: Option<Arc<Breaker>>,
    pub budget: Arc<Budget>,
    pub outlier: Option<Arc<OutlierDetector>>,
    pub connect_timeout: Duration,
    /// Seconds since the table's epoch of the last request to any port of the service: idle
    /// subscriptions are dropped.
    pub last_used: Arc<AtomicU64>,
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
    /// The inbound request series (of this proxy's service and the policy's subset), resolved
    /// on the first call rather than looked up by label on every one.
    pub metrics: std::sync::OnceLock<crate::metrics::RequestMetrics>,
}

/// Why a call's port has no route in a known service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortMiss {
    /// The call named a port the service does not have.
    Unknown { port: u16, ports: Vec<u16> },
    /// The call named no port, and the service has several, none of them 80.
    Ambiguous { ports: Vec<u16> },
}

impl std::fmt::Display for PortMiss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |ports: &[u16]| {
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Self::Unknown { port, ports } => {
                write!(f, "has no port {port} (its ports: {})", list(ports))
            }
            Self::Ambiguous { ports } => write!(
                f,
                "has ports {} and none is 80: name one in the Host or URI (NAME:PORT)",
                list(ports)
            ),
        }
    }
}

/// The routes of one service: one per port, by port, or a single one with no port.
#[derive(Debug)]
struct ServiceRoutes {
    routes: Vec<Arc<ServiceRoute>>,
}

impl ServiceRoutes {
    /// The route a call to `port` takes. Without a port a call means HTTP's default, 80; a
    /// service that has no port 80 but only one port is taken to mean that one (a caller that
    /// knows a single-port service by name should not have to know its number).
    fn route(&self, port: Option<u16>) -> Result<&Arc<ServiceRoute>, PortMiss> {
        let ports = || self.routes.iter().filter_map(|r| r.port).collect();
        match (self.routes.as_slice(), port) {
            ([only], _) if only.port.is_none() => Ok(only),
            (routes, Some(port)) => {
                routes
                    .iter()
                    .find(|r| r.port == Some(port))
                    .ok_or_else(|| PortMiss::Unknown {
                        port,
                        ports: ports(),
                    })
            }
            ([only], None) => Ok(only),
            (routes, None) => routes
                .iter()
                .find(|r| r.port == Some(80))
                .ok_or_else(|| PortMiss::Ambiguous { ports: ports() }),
        }
    }
}

/// Keyed by namespace or service name, looked up on every request. The keys come from the config,
/// never from requests (which only look up), so a fast hasher is safe where SipHash would be
/// paid on each call.
type ByName<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// What the proxy runs now. Immutable; a new config makes a new table.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub config: Arc<ProxyConfig>,
    /// namespace → name → routes; nested so that a lookup borrows the request's strings.
    services: ByName<ByName<ServiceRoutes>>,
    /// Services the control plane said it does not know, with its message.
    pub unknown: HashMap<ServiceKey, String>,
    pub inbound: Inbound,
    /// A service's address (ClusterIP and port) → that port's route: intercepted connections
    /// that name no service in Host are routed by where they were going.
    addresses: HashMap<SocketAddr, Arc<ServiceRoute>>,
}

impl RouteTable {
    /// A route of the service (its first): enough for what its ports share — policy state and
    /// last use.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<ServiceRoute>> {
        self.services.get(namespace)?.get(name)?.routes.first()
    }

    /// The route of a call to `port` of the service (`None`: the call named no port); `None`
    /// when the service is not in the table.
    pub fn route(
        &self,
        namespace: &str,
        name: &str,
        port: Option<u16>,
    ) -> Option<Result<&Arc<ServiceRoute>, PortMiss>> {
        Some(self.services.get(namespace)?.get(name)?.route(port))
    }

    /// The route of the service port whose address (ClusterIP and port) `addr` is.
    pub fn service_at(&self, addr: SocketAddr) -> Option<&Arc<ServiceRoute>> {
        self.addresses.get(&addr)
    }

    /// One route per service (see [`RouteTable::service`]).
    pub fn services(&self) -> impl Iterator<Item = &Arc<ServiceRoute>> {
        self.services
            .values()
            .flat_map(|m| m.values())
            .filter_map(|s| s.routes.first())
    }

    /// Builds the table for `config`, carrying over state from `previous` where the config of
    /// that piece is unchanged.
    pub fn build(
        config: ProxyConfig,
        unknown: HashMap<ServiceKey, String>,
        previous: &RouteTable,
        now: Instant,
    ) -> Self {
        let mut services: ByName<ByName<ServiceRoutes>> = ByName::default();
        let mut addresses: HashMap<SocketAddr, Arc<ServiceRoute>> = HashMap::new();
        for service in &config.services {
            let old = previous
                .services
                .get(&service.namespace)
                .and_then(|m| m.get(&service.name));
            let routes = build_routes(service, old, now);
            for (route, config) in routes.routes.iter().zip(service.routes()) {
                for address in config.addresses {
                    // Validation refuses an address claimed twice; were it not, the first
                    // would win.
                    addresses.entry(*address).or_insert_with(|| route.clone());
                }
            }
            services
                .entry(service.namespace.clone())
                .or_default()
                .insert(service.name.clone(), routes);
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

/// The routes of `service`, one per port (in the config's order), with the state they share.
fn build_routes(
    service: &ServiceConfig,
    old: Option<&ServiceRoutes>,
    now: Instant,
) -> ServiceRoutes {
    let policy = &service.policy;
    let old_first = old.and_then(|o| o.routes.first()).map(Arc::as_ref);
    let mut known: HashMap<SocketAddr, Arc<Endpoint>> = old_first
        .map(|o| o.endpoints.iter().map(|e| (e.addr, e.clone())).collect())
        .unwrap_or_default();
    let lb = policy
        .load_balancer
        .as_ref()
        .map(|l| l.policy)
        .unwrap_or(LoadBalancerPolicy::LeastRequest);
    let mut all: Vec<Arc<Endpoint>> = Vec::new();
    let configs = service.routes();
    let subsets_of_routes: Vec<Vec<Subset>> = configs
        .iter()
        .map(|route| {
            route
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
                .collect()
        })
        .collect();
    let breaker = policy.circuit_breaker.as_ref().map(|cb| {
        old_first
            .and_then(|o| o.breaker.as_ref())
            .filter(|b| b.config() == cb)
            .cloned()
            .unwrap_or_else(|| Arc::new(Breaker::new(cb.clone())))
    });
    let budget_config = policy
        .retries
        .as_ref()
        .and_then(|r| r.budget.clone())
        .unwrap_or_default();
    let budget = old_first
        .map(|o| &o.budget)
        .filter(|b| b.config == budget_config)
        .cloned()
        .unwrap_or_else(|| Arc::new(Budget::new(budget_config, now)));
    // Kept while its config and population stay the same: requests still running on the
    // previous table then share its book of ejections with the new one's.
    let outlier = policy.outlier_detection.as_ref().map(|config| {
        old_first
            .filter(|o| same_endpoints(&o.endpoints, &all))
            .and_then(|o| o.outlier.as_ref())
            .filter(|d| d.config == *config)
            .cloned()
            .unwrap_or_else(|| Arc::new(OutlierDetector::new(config.clone(), &all, now)))
    });
    let connect_timeout = policy
        .timeouts
        .as_ref()
        .and_then(|t| t.connect)
        .map(|d| d.get())
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let last_used = Arc::new(AtomicU64::new(
        old_first.map_or(0, |o| o.last_used.load(Ordering::Relaxed)),
    ));
    let key = ServiceKey {
        namespace: service.namespace.clone(),
        name: service.name.clone(),
    };
    let shared_config = Arc::new(service.clone());
    let routes = configs
        .iter()
        .zip(subsets_of_routes)
        .map(|(route, subsets)| {
            let rules = route
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
            Arc::new(ServiceRoute {
                key: key.clone(),
                port: route.port,
                total_weight: route.subsets.iter().map(|s| u64::from(s.weight)).sum(),
                subsets,
                rules,
                breaker: breaker.clone(),
                budget: budget.clone(),
                outlier: outlier.clone(),
                connect_timeout,
                last_used: last_used.clone(),
                config: shared_config.clone(),
                endpoints: all.clone(),
            })
        })
        .collect();
    ServiceRoutes { routes }
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
        metrics: std::sync::OnceLock::new(),
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

    /// The table `config` builds after `previous`, with no endpoint zones.
    fn built(config: ProxyConfig, previous: &RouteTable, now: Instant) -> RouteTable {
        RouteTable::build(config, HashMap::new(), previous, now)
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
        let t = built(config((90, 10)), &RouteTable::default(), now);
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

    fn two_ports() -> ProxyConfig {
        ProxyConfig::from_json(
            br#"{"services":[{"name":"payments","namespace":"shop",
                "ports":[
                  {"port":80,"addresses":["10.96.0.12:80"],
                   "subsets":[{"name":"default","weight":1,"endpoints":["127.0.0.1:9101"]}]},
                  {"port":81,"addresses":["10.96.0.12:81"],
                   "subsets":[{"name":"v1","weight":1,"endpoints":["127.0.0.1:9201"]},
                              {"name":"v2","weight":0,"endpoints":["127.0.0.1:9202"]}]}],
                "policy":{"circuitBreaker":{"failureThreshold":5}}},
               {"name":"admin","namespace":"shop",
                "ports":[{"port":81,"subsets":[{"name":"default","weight":1}]},
                         {"port":82,"subsets":[{"name":"default","weight":1}]}]}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn each_port_has_its_route_and_the_ports_share_the_policy_state() {
        let now = Instant::now();
        let t = built(two_ports(), &RouteTable::default(), now);
        let route = |port| t.route("shop", "payments", port).unwrap().unwrap();
        let (p80, p81) = (route(Some(80)), route(Some(81)));
        assert_eq!((p80.port, p81.port), (Some(80), Some(81)));
        assert_eq!(p80.subsets[0].endpoints[0].addr.port(), 9101);
        assert_eq!(p81.choose_subset(&parts(false), now).name, "v1");
        // No port: HTTP's default, 80.
        assert!(Arc::ptr_eq(route(None), p80));
        // Interception: each ClusterIP:port is its port's route.
        assert!(Arc::ptr_eq(
            t.service_at("10.96.0.12:81".parse().unwrap()).unwrap(),
            p81
        ));
        assert!(Arc::ptr_eq(
            t.service_at("10.96.0.12:80".parse().unwrap()).unwrap(),
            p80
        ));
        // One breaker, one budget, one last use, and every port's endpoints as the population.
        assert!(Arc::ptr_eq(
            p80.breaker.as_ref().unwrap(),
            p81.breaker.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(&p80.budget, &p81.budget));
        assert!(Arc::ptr_eq(&p80.last_used, &p81.last_used));
        assert_eq!(p81.endpoints.len(), 3);
        assert_eq!(
            t.route("shop", "payments", Some(8080))
                .unwrap()
                .unwrap_err(),
            PortMiss::Unknown {
                port: 8080,
                ports: vec![80, 81]
            }
        );
        let miss = t.route("shop", "admin", None).unwrap().unwrap_err();
        assert_eq!(
            miss,
            PortMiss::Ambiguous {
                ports: vec![81, 82]
            }
        );
        assert!(miss.to_string().contains("name one"), "{miss}");
        assert!(t.route("shop", "nope", None).is_none());
        assert_eq!(t.services().count(), 2);
    }

    #[test]
    fn a_single_port_service_answers_without_a_port_and_one_route_answers_every_port() {
        let now = Instant::now();
        let one = ProxyConfig::from_json(
            br#"{"services":[{"name":"payments","namespace":"shop",
                "ports":[{"port":8080,"subsets":[{"name":"default","weight":1}]}]}]}"#,
        )
        .unwrap();
        let t = built(one, &RouteTable::default(), now);
        assert_eq!(
            t.route("shop", "payments", None).unwrap().unwrap().port,
            Some(8080)
        );
        assert!(t.route("shop", "payments", Some(80)).unwrap().is_err());
        let t = built(config((1, 1)), &RouteTable::default(), now);
        for port in [None, Some(80), Some(81), Some(8080)] {
            assert_eq!(
                t.route("shop", "payments", port).unwrap().unwrap().port,
                None
            );
        }
    }

    #[test]
    fn a_rebuild_keeps_endpoint_and_breaker_state() {
        let now = Instant::now();
        let t1 = built(config((90, 10)), &RouteTable::default(), now);
        let t2 = built(config((50, 50)), &t1, now);
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
        let t1 = built(
            with((90, 10), r#"["127.0.0.1:9102"]"#),
            &RouteTable::default(),
            now,
        );
        let r1 = t1.service("shop", "payments").unwrap();
        let d1 = r1.outlier.as_ref().unwrap();
        assert!(d1.record(&r1.endpoints[0], &r1.endpoints, Outcome::ServerError, now));
        // A weight edit keeps the detector; a new endpoint makes a new one that still counts
        // the ejection the endpoint carries.
        let t2 = built(with((50, 50), r#"["127.0.0.1:9102"]"#), &t1, now);
        let r2 = t2.service("shop", "payments").unwrap();
        assert!(Arc::ptr_eq(d1, r2.outlier.as_ref().unwrap()));
        let t3 = built(
            with((50, 50), r#"["127.0.0.1:9102","127.0.0.1:9103"]"#),
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
