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
//!
//! # Ports
//!
//! A Service is routed per port ([`Ports::Each`]: every Kubernetes Service, a LocalService with
//! `ports`): each port gets its own subsets over the endpoints that serve it (their addresses at
//! the port's target port) and its ClusterIP addresses. A split with `spec.port` governs that
//! port only, and is refused (`PortNotFound`, naming `spec.port`) when the Service has no such
//! port; a split without `port` governs every port no split names. So the more specific split
//! wins its port whatever the ages, and among splits of the same reach (the same port, or both
//! without one) the oldest wins and the others are refused as `Conflict`, as two splits of one
//! Service always were. A split governing several ports is judged on each (accepted only when
//! every port can be served) and, refused, keeps its weights on each. A LocalService with a
//! single `endpoints` list is routed as one whatever the port callers use ([`Ports::One`]);
//! its `port` only lets a split name it.

use crate::snapshot::ServiceKey;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use weir_crds::{ResiliencePolicy, TrafficSplit};
use weir_proxy_api as api;

/// A Service that exists.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceInfo {
    pub key: ServiceKey,
    pub ports: Ports,
}

impl ServiceInfo {
    /// A service routed as one on every port, with no port to name (a LocalService without
    /// `port`).
    pub fn routed_as_one(key: ServiceKey) -> Self {
        Self {
            key,
            ports: Ports::One { port: None },
        }
    }
}

/// How a Service's calls are routed by the port they name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ports {
    /// One route whatever the port (a LocalService with one `endpoints` list); `port`, when
    /// declared, is the one a split may name. Its endpoints have no `port`.
    One { port: Option<u16> },
    /// One route per port, each over the endpoints whose `port` is that port's. A Service
    /// without ports has no endpoints and is routed as one.
    Each(Vec<ServicePort>),
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServicePort {
    /// The port's name in the Service (empty when unnamed).
    pub name: String,
    /// The port callers use (`payments:81`).
    pub port: u16,
    /// Where callers dial it (ClusterIP:port): intercepted connections are routed by these.
    pub addresses: Vec<SocketAddr>,
}

/// One endpoint of a Service, with the labels of the pod behind it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EndpointInfo {
    pub service: ServiceKey,
    /// The Service port it serves (its `address` is at that port's target port); `None` for a
    /// service routed as one.
    pub port: Option<u16>,
    pub address: SocketAddr,
    /// Shared: many endpoints carry the same labels (one map per distinct set, not per endpoint,
    /// is what keeps a 10,000-service local mode small).
    pub labels: std::sync::Arc<BTreeMap<String, String>>,
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
    /// Shared with the snapshot made from it: the configs are held once, not twice.
    pub services: HashMap<ServiceKey, std::sync::Arc<api::ServiceConfig>>,
    pub inbound: HashMap<ServiceKey, api::InboundPolicy>,
    pub verdicts: Vec<Verdict>,
}

/// The name of the one subset of a Service without a TrafficSplit.
pub const DEFAULT_SUBSET: &str = "default";

/// One route of a Service in the making: a port (or the whole Service routed as one) with the
/// endpoints that serve it.
struct Slot<'a> {
    /// The port a split names to govern this route.
    port: Option<u16>,
    /// `None` when the Service is routed as one.
    config: Option<&'a ServicePort>,
    endpoints: Vec<&'a EndpointInfo>,
}

/// The routes of `info`, by port.
fn slots<'a>(info: &'a ServiceInfo, endpoints: &[&'a EndpointInfo]) -> Vec<Slot<'a>> {
    match &info.ports {
        Ports::Each(ports) if !ports.is_empty() => ports
            .iter()
            .map(|p| Slot {
                port: Some(p.port),
                config: Some(p),
                endpoints: endpoints
                    .iter()
                    .copied()
                    .filter(|e| e.port == Some(p.port))
                    .collect(),
            })
            .collect(),
        Ports::Each(_) => vec![Slot {
            port: None,
            config: None,
            endpoints: endpoints.to_vec(),
        }],
        Ports::One { port } => vec![Slot {
            port: *port,
            config: None,
            endpoints: endpoints.to_vec(),
        }],
    }
}

/// Translates `inputs`; pieces refused now fall back to what `previous` had for that service.
pub fn translate(inputs: &Inputs<'_>, previous: &Translation) -> Translation {
    let mut endpoints: HashMap<&ServiceKey, Vec<&EndpointInfo>> = HashMap::new();
    for e in inputs.endpoints {
        endpoints.entry(&e.service).or_default().push(e);
    }
    for list in endpoints.values_mut() {
        list.sort();
        list.dedup_by(|a, b| a.port == b.port && a.address == b.address);
    }
    // Service → its routes. The first ServiceInfo of a key wins (the inputs never hold two).
    let mut routes: HashMap<&ServiceKey, Vec<Slot<'_>>> = HashMap::new();
    for info in inputs.services {
        let list = endpoints
            .get(&info.key)
            .map(Vec::as_slice)
            .unwrap_or_default();
        routes.entry(&info.key).or_insert_with(|| slots(info, list));
    }
    let mut verdicts = Vec::new();

    // A split naming a port first, so that it takes its port from one that names none (see
    // the module doc); then oldest first (then by name): when two resources claim one route,
    // the first one wins, whatever order the watch delivered them in.
    let mut splits: Vec<&TrafficSplit> = inputs.splits.iter().collect();
    splits.sort_by_key(|s| {
        (
            s.spec.port.is_none(),
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

    // (Service, route index) → the subsets and rules of the split that governs that route. A
    // route whose governing split is refused without weights to keep is absent: it gets the
    // default subset.
    let mut split_of: HashMap<(ServiceKey, usize), SplitParts> = HashMap::new();
    // Routes some split already governs (accepted or not).
    let mut claimed: HashSet<(ServiceKey, usize)> = HashSet::new();
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
        let Some(slots) = routes.get(&key) else {
            verdict.accepted = Err(refused(
                "ServiceNotFound",
                format!(
                    "Service {} does not exist in namespace {}",
                    key.name, key.namespace
                ),
            ));
            verdicts.push(verdict);
            continue;
        };
        let governed: Vec<usize> = match split.spec.port {
            Some(port) => {
                let Some(index) = slots
                    .iter()
                    .position(|slot| slot.port.is_some_and(|p| i32::from(p) == port))
                else {
                    let ports: Vec<String> = slots
                        .iter()
                        .filter_map(|slot| slot.port.map(|p| p.to_string()))
                        .collect();
                    verdict.accepted = Err(refused(
                        "PortNotFound",
                        format!(
                            "spec.port: Service {} has no port {port} (its ports: {})",
                            key.name,
                            if ports.is_empty() {
                                "none declared".to_owned()
                            } else {
                                ports.join(", ")
                            }
                        ),
                    ));
                    verdicts.push(verdict);
                    continue;
                };
                if claimed.insert((key.clone(), index)) {
                    vec![index]
                } else {
                    Vec::new()
                }
            }
            None => (0..slots.len())
                .filter(|&index| claimed.insert((key.clone(), index)))
                .collect(),
        };
        if governed.is_empty() {
            verdict.accepted = Err(refused(
                "Conflict",
                match split.spec.port {
                    Some(port) => format!(
                        "port {port} of Service {} already has an older TrafficSplit; this one is ignored",
                        key.name
                    ),
                    None => format!(
                        "Service {} already has an older TrafficSplit; this one is ignored",
                        key.name
                    ),
                },
            ));
            verdicts.push(verdict);
            continue;
        }
        // Several ports: the most endpoints a backend selects on one of them.
        verdict.backends = split
            .spec
            .backends
            .iter()
            .map(|b| {
                let most = governed
                    .iter()
                    .map(|&i| selected(b, &slots[i].endpoints).len())
                    .max()
                    .unwrap_or(0);
                (b.subset.clone(), most as i32)
            })
            .collect();
        let judged: Result<Vec<SplitParts>, Refused> = governed
            .iter()
            .map(|&i| {
                split_subsets(split, &slots[i].endpoints).map_err(|why| match slots[i].port {
                    Some(port) if slots.len() > 1 => Refused {
                        reason: why.reason,
                        message: format!("port {port}: {}", why.message),
                    },
                    _ => why,
                })
            })
            .collect();
        match judged {
            Ok(parts) => {
                verdict.weights = Some(weir_crds::weights_summary(&split.spec));
                for (&index, parts) in governed.iter().zip(parts) {
                    split_of.insert((key.clone(), index), parts);
                }
            }
            Err(why) => {
                verdict.accepted = Err(why);
                if let Some(weights) = last_good_weights(split, &verdict, previous) {
                    for &index in &governed {
                        if let Some(parts) = kept_split(split, &slots[index].endpoints, &weights) {
                            verdict.weights.get_or_insert_with(|| summary(&parts.0));
                            split_of.insert((key.clone(), index), parts);
                        }
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
        } else if !routes.contains_key(&key) {
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
    for (key, slots) in &routes {
        let key = *key;
        let old = previous.services.get(key);
        let mut routed: Vec<(&Slot<'_>, SplitParts)> = slots
            .iter()
            .enumerate()
            .map(|(index, slot)| {
                let parts = split_of
                    .remove(&(key.clone(), index))
                    .unwrap_or_else(|| (vec![default_subset(&slot.endpoints)], Vec::new()));
                (slot, parts)
            })
            .collect();
        let (policy, inbound_policy) = match policy_of.get(key) {
            Some(Ok(converted)) => converted.clone(),
            Some(Err(())) => (
                old.map(|o| o.policy.clone()).unwrap_or_default(),
                previous.inbound.get(key).cloned().unwrap_or_default(),
            ),
            None => Default::default(),
        };
        let mut config = api::ServiceConfig {
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            addresses: Vec::new(),
            subsets: Vec::new(),
            rules: Vec::new(),
            ports: Vec::new(),
            policy,
        };
        match routed.as_slice() {
            [(slot, _)] if slot.config.is_none() => {
                let (_, (subsets, rules)) = routed.remove(0);
                config.subsets = subsets;
                config.rules = rules;
            }
            _ => {
                config.ports = routed
                    .into_iter()
                    .filter_map(|(slot, (subsets, rules))| {
                        let port = slot.config?;
                        Some(api::PortConfig {
                            port: port.port,
                            name: (!port.name.is_empty()).then(|| port.name.clone()),
                            addresses: port.addresses.clone(),
                            subsets,
                            rules,
                        })
                    })
                    .collect();
            }
        }
        services.insert(key.clone(), std::sync::Arc::new(config));
        if inbound_policy != api::InboundPolicy::default() {
            inbound.insert(key.clone(), inbound_policy);
        }
    }
    sort_verdicts(&mut verdicts);
    Translation {
        services,
        inbound,
        verdicts,
    }
}

/// Verdicts in their one order: by kind, namespace and name (what a status lookup searches by),
/// then by the Service they are about, so that two resources of one name (in two files) keep
/// one order however the translation was put together ([`crate::incremental`]).
/// The rest of the fields break the remaining ties, so only equal verdicts compare equal and an
/// unstable sort (no scratch copy of 20,000 verdicts) gives one order.
pub fn sort_verdicts(verdicts: &mut [Verdict]) {
    fn key(v: &Verdict) -> impl Ord + '_ {
        (
            (v.kind, &v.namespace, &v.name, &v.service),
            (&v.uid, v.generation, &v.weights, &v.backends),
            v.accepted.as_ref().err().map(|r| (r.reason, &r.message)),
        )
    }
    verdicts.sort_unstable_by(|a, b| key(a).cmp(&key(b)));
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
            ports: Vec::new(),
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
        ports: Vec::new(),
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
                dry_run: false,
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
                dry_run: false,
            })
        })
        .transpose()?;
    let circuit_breaker = spec
        .circuit_breaker
        .as_ref()
        .map(|cb| -> Result<api::CircuitBreaker, Refused> {
            Ok(api::CircuitBreaker {
                failure_threshold: Some(count(
                    "circuitBreaker.failureThreshold",
                    cb.failure_threshold,
                )?),
                failure_rate: None,
                window: api::CircuitBreaker::default_window(),
                min_requests: api::CircuitBreaker::default_min_requests(),
                dry_run: false,
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
                dry_run: false,
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
        faults: None,
    };
    let inbound = api::InboundPolicy {
        subset: None,
        timeouts: spec.timeouts.as_ref().and_then(|_| {
            let t = policy.timeouts.as_ref()?;
            (t.request.is_some() || t.idle.is_some()).then_some(api::InboundTimeouts {
                request: t.request,
                idle: t.idle,
                dry_run: false,
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
                    dry_run: false,
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
                    dry_run: false,
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
            ports: Vec::new(),
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
