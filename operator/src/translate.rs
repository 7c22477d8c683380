//! The translation from resources to proxy config: a pure function, tested without a cluster.
//!
//! Inputs are the custom resources, the Services that exist and their endpoints with the labels
//! of the pods behind them; the output is, per Service, the outbound config every caller's proxy
//! gets and the inbound policy its own proxies enforce, plus a status verdict for each resource.
//! A resource that fails semantic validation is refused (`Accepted=False` with a reason).
//!
//! # A refused TrafficSplit keeps its weights, never its endpoints
//!
//! A split that governs its Service (it is the oldest for it and the Service exists) but is
//! refused now (`NoEndpoints`: a weighted subset selects no ready endpoint; `Invalid`) keeps its
//! **last good weights** and nothing else: the subsets are the current spec's, each with the
//! endpoints its selector picks *now*, so a dead pod stops getting traffic and a new one gets it
//! while the refusal lasts. A subset the last good weights do not name gets weight 0; a subset
//! without endpoints gives its share to the others (the sidecar's rule); the spec's rules are
//! kept when they name one of the subsets. When no last good weights are known, or they leave
//! nothing valid (all zero, unknown names), the Service is routed as if it had no split: one
//! `default` subset of every ready endpoint.
//!
//! The last good weights are the split's weights *in force* as the verdict reports them
//! (`Verdict::weights`, the `v1=90,v2=10` summary the status writer records in
//! `status.weights`): the spec's weights when accepted, the kept ones while refused, none when
//! the split governs nothing. They are read from the previous translation when it judged the
//! same object (same namespace, name and uid), otherwise from the split's own
//! `status.weights`. So a restarted operator, which has no previous translation, reads back
//! exactly what it recorded and serves the same config from the same cluster state; nothing else
//! of the past is read for splits. (Local mode has no status: a restarted `weir-operator local`
//! routes a split refused from its start over the Service's plain endpoints.)
//!
//! A refused ResiliencePolicy still keeps the whole last good policy of its Service from the
//! previous translation.

use crate::snapshot::ServiceKey;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use weir_crds::{ResiliencePolicy, TrafficSplit};
use weir_proxy_api as api;

/// A Service that exists.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceInfo {
    pub key: ServiceKey,
    /// Where callers dial it (ClusterIP:port): intercepted connections are routed by these.
    pub addresses: Vec<SocketAddr>,
}

/// One endpoint of a Service, with the labels of the pod behind it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EndpointInfo {
    pub service: ServiceKey,
    pub address: SocketAddr,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Inputs<'a> {
    pub splits: &'a [TrafficSplit],
    pub policies: &'a [ResiliencePolicy],
    pub services: &'a [ServiceInfo],
    pub endpoints: &'a [EndpointInfo],
}

/// Which kind of resource a verdict is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    TrafficSplit,
    ResiliencePolicy,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TrafficSplit => "TrafficSplit",
            Self::ResiliencePolicy => "ResiliencePolicy",
        }
    }
}

/// Why a resource was refused: a CamelCase reason for the condition and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reason: &'static str,
    pub message: String,
}

/// The verdict on one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// The Service it is about (the split's `service`, the policy's `targetRef`).
    pub service: ServiceKey,
    /// The object's uid: a split deleted and created again under its name starts afresh.
    pub uid: Option<String>,
    pub generation: Option<i64>,
    pub accepted: Result<(), Refused>,
    /// TrafficSplit only: the weights in force as a `v1=90,v2=10` summary (the spec's when
    /// accepted, the last good ones while refused, `None` when the split routes nothing). What
    /// `status.weights` records, and what a refusal keeps.
    pub weights: Option<String>,
    /// TrafficSplit only: the ready endpoints each of the spec's backends selects now.
    pub backends: Vec<(String, i32)>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Translation {
    pub services: HashMap<ServiceKey, api::ServiceConfig>,
    pub inbound: HashMap<ServiceKey, api::InboundPolicy>,
    pub verdicts: Vec<Verdict>,
}

/// The name of the one subset of a Service without a TrafficSplit.
pub const DEFAULT_SUBSET: &str = "default";

/// Translates `inputs`; pieces refused now fall back to what `previous` had for that service.
pub fn translate(inputs: &Inputs<'_>, previous: &Translation) -> Translation {
    let existing: BTreeMap<&ServiceKey, ()> =
        inputs.services.iter().map(|s| (&s.key, ())).collect();
    let mut endpoints: HashMap<&ServiceKey, Vec<&EndpointInfo>> = HashMap::new();
    for e in inputs.endpoints {
        endpoints.entry(&e.service).or_default().push(e);
    }
    for list in endpoints.values_mut() {
        list.sort();
        list.dedup_by(|a, b| a.address == b.address);
    }
    let mut verdicts = Vec::new();

    // Oldest first (then by name): when two resources claim one Service, the first one wins,
    // whatever order the watch delivered them in.
    let mut splits: Vec<&TrafficSplit> = inputs.splits.iter().collect();
    splits.sort_by_key(|s| {
        (
            s.metadata.creation_timestamp.clone().map(|t| t.0),
            s.metadata.name.clone(),
        )
    });
    let mut policies: Vec<&ResiliencePolicy> = inputs.policies.iter().collect();
    policies.sort_by_key(|p| {
        (
            p.metadata.creation_timestamp.clone().map(|t| t.0),
            p.metadata.name.clone(),
        )
    });

    // Service → the subsets and rules of the split that governs it. A Service whose governing
    // split is refused without weights to keep is absent: it gets the default subset.
    let mut split_of: HashMap<ServiceKey, SplitParts> = HashMap::new();
    // Services some older split already governs (accepted or not).
    let mut claimed: HashSet<ServiceKey> = HashSet::new();
    for split in splits {
        let namespace = split.metadata.namespace.clone().unwrap_or_default();
        let name = split.metadata.name.clone().unwrap_or_default();
        let key = ServiceKey::new(&namespace, &split.spec.service);
        let mut verdict = Verdict {
            kind: Kind::TrafficSplit,
            namespace,
            name: name.clone(),
            service: key.clone(),
            uid: split.metadata.uid.clone(),
            generation: split.metadata.generation,
            accepted: Ok(()),
            weights: None,
            backends: Vec::new(),
        };
        if !existing.contains_key(&key) {
            verdict.accepted = Err(refused(
                "ServiceNotFound",
                format!(
                    "Service {} does not exist in namespace {}",
                    key.name, key.namespace
                ),
            ));
        } else if !claimed.insert(key.clone()) {
            verdict.accepted = Err(refused(
                "Conflict",
                format!(
                    "Service {} already has an older TrafficSplit; this one is ignored",
                    key.name
                ),
            ));
        } else {
            let endpoints = endpoints.get(&key).map(Vec::as_slice).unwrap_or_default();
            verdict.backends = split
                .spec
                .backends
                .iter()
                .map(|b| (b.subset.clone(), selected(b, endpoints).len() as i32))
                .collect();
            match split_subsets(split, endpoints) {
                Ok(parts) => {
                    verdict.weights = Some(weir_crds::weights_summary(&split.spec));
                    split_of.insert(key, parts);
                }
                Err(why) => {
                    verdict.accepted = Err(why);
                    let kept = last_good_weights(split, &verdict, previous)
                        .and_then(|weights| kept_split(split, endpoints, &weights));
                    if let Some(parts) = kept {
                        verdict.weights = Some(summary(&parts.0));
                        split_of.insert(key, parts);
                    }
                }
            }
        }
        verdicts.push(verdict);
    }

    let mut policy_of: HashMap<ServiceKey, Result<(api::Policy, api::InboundPolicy), ()>> =
        HashMap::new();
    for policy in policies {
        let namespace = policy.metadata.namespace.clone().unwrap_or_default();
        let name = policy.metadata.name.clone().unwrap_or_default();
        let target = &policy.spec.target_ref;
        let key = ServiceKey::new(&namespace, &target.name);
        let outcome = if target.kind != "Service" {
            Err(refused(
                "InvalidTarget",
                format!("targetRef.kind must be Service, not {:?}", target.kind),
            ))
        } else if !existing.contains_key(&key) {
            Err(refused(
                "TargetNotFound",
                format!(
                    "Service {} does not exist in namespace {}",
                    key.name, key.namespace
                ),
            ))
        } else if policy_of.contains_key(&key) {
            Err(refused(
                "Conflict",
                format!(
                    "Service {} already has an older ResiliencePolicy; this one is ignored",
                    key.name
                ),
            ))
        } else {
            convert_policy(&policy.spec)
        };
        let accepted = match outcome {
            Ok(converted) => {
                policy_of.insert(key.clone(), Ok(converted));
                Ok(())
            }
            Err(why) => {
                policy_of.entry(key.clone()).or_insert(Err(()));
                Err(why)
            }
        };
        verdicts.push(Verdict {
            kind: Kind::ResiliencePolicy,
            service: key.clone(),
            namespace,
            name,
            uid: policy.metadata.uid.clone(),
            generation: policy.metadata.generation,
            accepted,
            weights: None,
            backends: Vec::new(),
        });
    }

    let mut services = HashMap::new();
    let mut inbound = HashMap::new();
    for info in inputs.services {
        let key = &info.key;
        let old = previous.services.get(key);
        let (subsets, rules) = match split_of.get(key) {
            Some((subsets, rules)) => (subsets.clone(), rules.clone()),
            None => (
                vec![default_subset(
                    endpoints.get(key).map(Vec::as_slice).unwrap_or_default(),
                )],
                Vec::new(),
            ),
        };
        let (policy, inbound_policy) = match policy_of.get(key) {
            Some(Ok(converted)) => converted.clone(),
            Some(Err(())) => (
                old.map(|o| o.policy.clone()).unwrap_or_default(),
                previous.inbound.get(key).cloned().unwrap_or_default(),
            ),
            None => Default::default(),
        };
        services.insert(
            key.clone(),
            api::ServiceConfig {
                name: key.name.clone(),
                namespace: key.namespace.clone(),
                addresses: info.addresses.clone(),
                subsets,
                rules,
                policy,
            },
        );
        if inbound_policy != api::InboundPolicy::default() {
            inbound.insert(key.clone(), inbound_policy);
        }
    }
    verdicts.sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
    Translation {
        services,
        inbound,
        verdicts,
    }
}

fn refused(reason: &'static str, message: String) -> Refused {
    Refused { reason, message }
}

fn default_subset(endpoints: &[&EndpointInfo]) -> api::Subset {
    api::Subset {
        name: DEFAULT_SUBSET.to_owned(),
        weight: 1,
        endpoints: endpoints.iter().map(|e| e.address).collect(),
    }
}

type SplitParts = (Vec<api::Subset>, Vec<api::RouteRule>);

/// The addresses of the endpoints `backend`'s selector picks.
fn selected(
    backend: &weir_crds::TrafficSplitBackend,
    endpoints: &[&EndpointInfo],
) -> Vec<SocketAddr> {
    endpoints
        .iter()
        .filter(|e| {
            backend
                .selector
                .iter()
                .all(|(k, v)| e.labels.get(k) == Some(v))
        })
        .map(|e| e.address)
        .collect()
}

/// `subset=weight` joined by commas, as [`weir_crds::weights_summary`] writes a spec's.
fn summary(subsets: &[api::Subset]) -> String {
    subsets
        .iter()
        .map(|s| format!("{}={}", s.name, s.weight))
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads a `v1=90,v2=10` summary back; `None` when it is not one (hand-edited status).
pub fn parse_weights(summary: &str) -> Option<BTreeMap<String, u32>> {
    summary
        .split(',')
        .map(|pair| {
            let (name, weight) = pair.rsplit_once('=')?;
            (!name.is_empty()).then_some(())?;
            Some((name.to_owned(), weight.parse().ok()?))
        })
        .collect()
}

/// The weights a refused split keeps: those the previous translation had in force for this very
/// object, or, when it did not judge it (a fresh start), those its status records.
fn last_good_weights(
    split: &TrafficSplit,
    verdict: &Verdict,
    previous: &Translation,
) -> Option<BTreeMap<String, u32>> {
    let remembered = previous.verdicts.iter().find(|v| {
        v.kind == Kind::TrafficSplit
            && v.namespace == verdict.namespace
            && v.name == verdict.name
            && v.uid == verdict.uid
    });
    let recorded = match remembered {
        Some(v) => v.weights.as_deref(),
        None => split.status.as_ref().and_then(|s| s.weights.as_deref()),
    };
    recorded.and_then(parse_weights)
}

/// A refused split's routing: the spec's subsets with the endpoints they select now and the
/// `kept` weights (0 for a subset they do not name), and the rules that name one of them.
/// `None` when that is no valid config (e.g. every kept weight is 0 or names no subset).
fn kept_split(
    split: &TrafficSplit,
    endpoints: &[&EndpointInfo],
    kept: &BTreeMap<String, u32>,
) -> Option<SplitParts> {
    let subsets: Vec<api::Subset> = split
        .spec
        .backends
        .iter()
        .map(|backend| api::Subset {
            name: backend.subset.clone(),
            weight: kept.get(&backend.subset).copied().unwrap_or(0),
            endpoints: selected(backend, endpoints),
        })
        .collect();
    let rules: Vec<api::RouteRule> = route_rules(&split.spec)
        .into_iter()
        .filter(|r| subsets.iter().any(|s| s.name == r.subset))
        .collect();
    let valid = |rules: Vec<api::RouteRule>| {
        let config = api::ServiceConfig {
            name: split.spec.service.clone(),
            namespace: split.metadata.namespace.clone().unwrap_or_default(),
            addresses: Vec::new(),
            subsets: subsets.clone(),
            rules,
            policy: Default::default(),
        };
        config
            .validate()
            .is_ok()
            .then_some((config.subsets, config.rules))
    };
    // A rule the sidecar would refuse must not cost the weights.
    valid(rules).or_else(|| valid(Vec::new()))
}

fn route_rules(spec: &weir_crds::TrafficSplitSpec) -> Vec<api::RouteRule> {
    spec.rules
        .iter()
        .map(|r| api::RouteRule {
            matches: api::RouteMatch {
                headers: r.matches.headers.clone(),
                path_prefix: r.matches.path_prefix.clone(),
            },
            subset: r.subset.clone(),
        })
        .collect()
}

fn split_subsets(split: &TrafficSplit, endpoints: &[&EndpointInfo]) -> Result<SplitParts, Refused> {
    let spec = &split.spec;
    let mut subsets = Vec::new();
    for (i, backend) in spec.backends.iter().enumerate() {
        let weight = u32::try_from(backend.weight).map_err(|_| {
            refused(
                "Invalid",
                format!(
                    "spec.backends[{i}].weight: must not be negative ({})",
                    backend.weight
                ),
            )
        })?;
        let selected = selected(backend, endpoints);
        if selected.is_empty() && weight > 0 {
            return Err(refused(
                "NoEndpoints",
                format!(
                    "backend {:?} (spec.backends[{i}]) selects no endpoints of Service {}: no ready pod has the labels {}",
                    backend.subset,
                    spec.service,
                    backend
                        .selector
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            ));
        }
        subsets.push(api::Subset {
            name: backend.subset.clone(),
            weight,
            endpoints: selected,
        });
    }
    let rules = route_rules(spec);
    let config = api::ServiceConfig {
        name: spec.service.clone(),
        namespace: split.metadata.namespace.clone().unwrap_or_default(),
        addresses: Vec::new(),
        subsets,
        rules,
        policy: Default::default(),
    };
    config.validate().map_err(|e| {
        refused(
            "Invalid",
            format!("spec.{}: {}", spec_field(&e.field), e.message),
        )
    })?;
    Ok((config.subsets, config.rules))
}

/// Maps a ProxyConfig field path back to the resource's own (`subsets` → `backends`).
fn spec_field(field: &str) -> String {
    field.replace("subsets", "backends")
}

fn duration(field: &str, value: &Option<String>) -> Result<Option<api::Duration>, Refused> {
    value
        .as_deref()
        .map(|v| {
            v.parse::<api::Duration>()
                .map_err(|e| refused("Invalid", format!("spec.{field}: {e}")))
        })
        .transpose()
}

fn count(field: &str, value: i32) -> Result<u32, Refused> {
    u32::try_from(value).map_err(|_| {
        refused(
            "Invalid",
            format!("spec.{field}: must not be negative ({value})"),
        )
    })
}

fn convert_policy(
    spec: &weir_crds::ResiliencePolicySpec,
) -> Result<(api::Policy, api::InboundPolicy), Refused> {
    let timeouts = spec
        .timeouts
        .as_ref()
        .map(|t| -> Result<api::Timeouts, Refused> {
            Ok(api::Timeouts {
                request: duration("timeouts.request", &t.request)?,
                per_try: duration("timeouts.perTry", &t.per_try)?,
                connect: duration("timeouts.connect", &t.connect)?,
                idle: duration("timeouts.idle", &t.idle)?,
            })
        })
        .transpose()?;
    let retries = spec
        .retries
        .as_ref()
        .map(|r| -> Result<api::Retries, Refused> {
            let defaults = api::Backoff::default();
            let backoff = r.backoff.clone().unwrap_or_default();
            Ok(api::Retries {
                attempts: count("retries.attempts", r.attempts)?,
                retry_on: match &r.retry_on {
                    Some(classes) => classes.iter().map(|c| retry_on(*c)).collect(),
                    None => api::Retries::default_retry_on(),
                },
                backoff: api::Backoff {
                    base: duration("retries.backoff.base", &backoff.base)?.unwrap_or(defaults.base),
                    max: duration("retries.backoff.max", &backoff.max)?.unwrap_or(defaults.max),
                    multiplier: backoff.multiplier.unwrap_or(defaults.multiplier),
                    jitter: match backoff.jitter {
                        Some(weir_crds::Jitter::None) => api::Jitter::None,
                        _ => api::Jitter::Full,
                    },
                },
                budget: r
                    .budget
                    .as_ref()
                    .map(|b| -> Result<api::RetryBudget, Refused> {
                        Ok(api::RetryBudget {
                            ratio: b.ratio,
                            min_per_second: count("retries.budget.minPerSecond", b.min_per_second)?,
                        })
                    })
                    .transpose()?,
            })
        })
        .transpose()?;
    let circuit_breaker = spec
        .circuit_breaker
        .as_ref()
        .map(|cb| -> Result<api::CircuitBreaker, Refused> {
            Ok(api::CircuitBreaker {
                failure_threshold: count("circuitBreaker.failureThreshold", cb.failure_threshold)?,
                success_threshold: count(
                    "circuitBreaker.successThreshold",
                    cb.success_threshold.unwrap_or(1),
                )?,
                open_duration: duration("circuitBreaker.openDuration", &cb.open_duration)?
                    .unwrap_or(api::Duration::from_secs(30)),
            })
        })
        .transpose()?;
    let outlier_detection = spec
        .outlier_detection
        .as_ref()
        .map(|od| -> Result<api::OutlierDetection, Refused> {
            Ok(api::OutlierDetection {
                consecutive_5xx_errors: od
                    .consecutive_5xx_errors
                    .map(|n| count("outlierDetection.consecutive5xxErrors", n))
                    .transpose()?,
                consecutive_gateway_errors: od
                    .consecutive_gateway_errors
                    .map(|n| count("outlierDetection.consecutiveGatewayErrors", n))
                    .transpose()?,
                interval: duration("outlierDetection.interval", &od.interval)?
                    .unwrap_or(api::Duration::from_secs(10)),
                base_ejection_time: duration(
                    "outlierDetection.baseEjectionTime",
                    &od.base_ejection_time,
                )?
                .unwrap_or(api::Duration::from_secs(30)),
                max_ejection_percent: count(
                    "outlierDetection.maxEjectionPercent",
                    od.max_ejection_percent.unwrap_or(10),
                )?,
            })
        })
        .transpose()?;
    let policy = api::Policy {
        timeouts,
        retries,
        circuit_breaker,
        outlier_detection,
        load_balancer: spec.load_balancer.as_ref().map(|lb| api::LoadBalancer {
            policy: match lb.policy {
                Some(weir_crds::LoadBalancerPolicy::RoundRobin) => {
                    api::LoadBalancerPolicy::RoundRobin
                }
                Some(weir_crds::LoadBalancerPolicy::Ewma) => api::LoadBalancerPolicy::Ewma,
                Some(weir_crds::LoadBalancerPolicy::LeastRequest) | None => {
                    api::LoadBalancerPolicy::LeastRequest
                }
            },
        }),
        fallback: spec
            .fallback
            .as_ref()
            .map(|f| -> Result<api::Fallback, Refused> {
                Ok(api::Fallback {
                    status: u16::try_from(f.status).map_err(|_| {
                        refused(
                            "Invalid",
                            format!("spec.fallback.status: {} is not an HTTP status", f.status),
                        )
                    })?,
                    body: f.body.clone().unwrap_or_default(),
                    content_type: f
                        .content_type
                        .clone()
                        .unwrap_or_else(|| "text/plain".to_owned()),
                })
            })
            .transpose()?,
    };
    let inbound = api::InboundPolicy {
        subset: None,
        timeouts: spec.timeouts.as_ref().and_then(|_| {
            let t = policy.timeouts.as_ref()?;
            (t.request.is_some() || t.idle.is_some()).then_some(api::InboundTimeouts {
                request: t.request,
                idle: t.idle,
            })
        }),
        rate_limit: spec
            .rate_limit
            .as_ref()
            .map(|rl| -> Result<api::RateLimit, Refused> {
                Ok(api::RateLimit {
                    requests_per_second: f64::from(rl.requests_per_second),
                    burst: count("rateLimit.burst", rl.burst)?,
                    key: rl
                        .key
                        .as_deref()
                        .unwrap_or("none")
                        .parse()
                        .map_err(|e| refused("Invalid", format!("spec.rateLimit.key: {e}")))?,
                })
            })
            .transpose()?,
        bulkhead: spec
            .bulkhead
            .as_ref()
            .map(|b| -> Result<api::Bulkhead, Refused> {
                Ok(api::Bulkhead {
                    max_concurrent: count("bulkhead.maxConcurrent", b.max_concurrent)?,
                    max_queued: count("bulkhead.maxQueued", b.max_queued.unwrap_or(0))?,
                    queue_timeout: duration("bulkhead.queueTimeout", &b.queue_timeout)?
                        .unwrap_or(api::Duration::from_secs(1)),
                })
            })
            .transpose()?,
    };
    // The sidecar's own validation, so nothing the operator sends is refused by a proxy.
    let probe = api::ProxyConfig {
        version: 0,
        inbound: inbound.clone(),
        services: vec![api::ServiceConfig {
            name: "probe".into(),
            namespace: "probe".into(),
            addresses: Vec::new(),
            subsets: vec![api::Subset {
                name: "probe".into(),
                weight: 1,
                endpoints: Vec::new(),
            }],
            rules: Vec::new(),
            policy: policy.clone(),
        }],
        limits: Default::default(),
    };
    probe.validate().map_err(|e| {
        let field = e
            .field
            .trim_start_matches("services[0].policy.")
            .trim_start_matches("inbound.")
            .to_owned();
        refused("Invalid", format!("spec.{field}: {}", e.message))
    })?;
    Ok((policy, inbound))
}

fn retry_on(class: weir_crds::RetryOn) -> api::RetryOn {
    match class {
        weir_crds::RetryOn::ServerError => api::RetryOn::ServerError,
        weir_crds::RetryOn::GatewayError => api::RetryOn::GatewayError,
        weir_crds::RetryOn::ConnectFailure => api::RetryOn::ConnectFailure,
        weir_crds::RetryOn::Reset => api::RetryOn::Reset,
        weir_crds::RetryOn::Retriable4xx => api::RetryOn::Retriable4xx,
    }
}
