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
//! A refused ResiliencePolicy that governs its target keeps its last good blocks from the
//! previous translation (see [`precedence`] for how Service, Namespace and Mesh policies
//! combine).
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

mod policy;
pub mod precedence;
mod split;
mod verdict;

pub use policy::Blocks;
pub use precedence::Scope;
pub use split::parse_weights;
use split::{
    SplitParts, default_subset, kept_split, last_good_weights, selected, split_subsets, summary,
};
use verdict::refused;
pub use verdict::{Kind, Refused, Verdict, report_verdicts, sort_verdicts};

use crate::snapshot::ServiceKey;
use precedence::Level;
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
    /// The operator's namespace, the only one where a `kind: Mesh` policy is honoured;
    /// [`precedence::DEFAULT_OPERATOR_NAMESPACE`] when `None`.
    pub operator_namespace: Option<&'a str>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Translation {
    /// Shared with the snapshot made from it: the configs are held once, not twice.
    pub services: HashMap<ServiceKey, std::sync::Arc<api::ServiceConfig>>,
    pub inbound: HashMap<ServiceKey, api::InboundPolicy>,
    pub verdicts: Vec<Verdict>,
    /// The blocks of each governing ResiliencePolicy in force (accepted now, or kept from
    /// before while refused): what a refused one keeps next time.
    pub policies: HashMap<Scope, std::sync::Arc<policy::Blocks>>,
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
            message: None,
            effective_limits: None,
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

    let mut levels = precedence::Levels::default();
    // The verdicts of the governing policies that are accepted, by index in `verdicts`: their
    // status says how far they reach.
    let mut reach: HashMap<Scope, (usize, precedence::Reach)> = HashMap::new();
    let operator_namespace = inputs
        .operator_namespace
        .unwrap_or(precedence::DEFAULT_OPERATOR_NAMESPACE);
    for policy in policies {
        let namespace = policy.metadata.namespace.clone().unwrap_or_default();
        let name = policy.metadata.name.clone().unwrap_or_default();
        let (scope, service) = policy_scope(policy, &namespace, operator_namespace, &routes);
        let accepted = match scope {
            Err(why) => Err(why),
            Ok(scope) if levels.governing.contains_key(&scope) => Err(refused(
                "Conflict",
                match &scope {
                    Scope::Service(key) => format!(
                        "Service {} already has an older ResiliencePolicy; this one is ignored",
                        key.name
                    ),
                    Scope::Namespace(ns) => format!(
                        "namespace {ns} already has an older ResiliencePolicy of kind Namespace; this one is ignored"
                    ),
                    Scope::Mesh => "the mesh already has an older ResiliencePolicy of kind Mesh; this one is ignored".to_owned(),
                },
            )),
            Ok(scope) => match policy::convert_policy(&policy.spec) {
                Ok(blocks) => {
                    levels
                        .governing
                        .insert(scope.clone(), Some(std::sync::Arc::new(blocks)));
                    reach.insert(scope, (verdicts.len(), precedence::Reach::default()));
                    Ok(())
                }
                Err(why) => {
                    let kept = previous.policies.get(&scope).cloned();
                    levels.governing.insert(scope, kept);
                    Err(why)
                }
            },
        };
        verdicts.push(Verdict {
            kind: Kind::ResiliencePolicy,
            service,
            namespace,
            name,
            uid: policy.metadata.uid.clone(),
            generation: policy.metadata.generation,
            accepted,
            weights: None,
            backends: Vec::new(),
            message: None,
            effective_limits: None,
        });
    }

    let mut services = HashMap::new();
    let mut inbound = HashMap::new();
    for (key, slots) in &routes {
        let key = *key;
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
        let resolved = levels.resolve(key);
        count_reach(
            &mut reach,
            key,
            &resolved,
            endpoints.get(key).map(Vec::as_slice).unwrap_or_default(),
        );
        let (policy, inbound_policy) = (resolved.policy, resolved.inbound);
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
    for (scope, (index, reach)) in &reach {
        let verdict = &mut verdicts[*index];
        if let Some(Some(blocks)) = levels.governing.get(scope) {
            verdict.effective_limits =
                precedence::effective_limits(blocks, reach, !matches!(scope, Scope::Service(_)));
        }
        verdict.message = match scope {
            Scope::Service(_) => None,
            Scope::Namespace(ns) => Some(format!(
                "The spec is valid; it gives defaults to {} in namespace {ns}",
                services_count(reach.services)
            )),
            Scope::Mesh => Some(format!(
                "The spec is valid; it gives mesh-wide defaults to {}",
                services_count(reach.services)
            )),
        };
    }
    sort_verdicts(&mut verdicts);
    Translation {
        services,
        inbound,
        verdicts,
        policies: levels
            .governing
            .into_iter()
            .filter_map(|(scope, blocks)| Some((scope, blocks?)))
            .collect(),
    }
}

fn services_count(n: usize) -> String {
    format!("{n} service{}", if n == 1 { "" } else { "s" })
}

/// What `policy` targets (or why it cannot), and the Service its verdict is about (for a
/// Namespace or Mesh policy, its own namespace with no Service name).
fn policy_scope(
    policy: &ResiliencePolicy,
    namespace: &str,
    operator_namespace: &str,
    routes: &HashMap<&ServiceKey, Vec<Slot<'_>>>,
) -> (Result<Scope, Refused>, ServiceKey) {
    let target = &policy.spec.target_ref;
    if target.kind != weir_crds::TARGET_SERVICE {
        let scope = match target.kind.as_str() {
            weir_crds::TARGET_NAMESPACE if target.name != namespace => Err(refused(
                "InvalidTarget",
                format!(
                    "targetRef.name: a Namespace policy gives defaults to its own namespace only: \
                     must be {namespace}, not {:?}",
                    target.name
                ),
            )),
            weir_crds::TARGET_NAMESPACE => Ok(Scope::Namespace(namespace.to_owned())),
            weir_crds::TARGET_MESH if namespace != operator_namespace => Err(refused(
                "MeshOutsideOperatorNamespace",
                format!(
                    "a Mesh policy is honoured only in the operator's namespace \
                     {operator_namespace}, not in {namespace}"
                ),
            )),
            weir_crds::TARGET_MESH => Ok(Scope::Mesh),
            other => Err(refused(
                "InvalidTarget",
                format!("targetRef.kind must be Service, Namespace or Mesh, not {other:?}"),
            )),
        };
        let service = match scope {
            Ok(Scope::Mesh) => ServiceKey::new("", ""),
            _ => ServiceKey::new(namespace, ""),
        };
        return (scope, service);
    }
    let key = ServiceKey::new(namespace, &target.name);
    let scope = if target.name.is_empty() {
        Err(refused(
            "InvalidTarget",
            "targetRef.name: required for kind Service".to_owned(),
        ))
    } else if !routes.contains_key(&key) {
        Err(refused(
            "TargetNotFound",
            format!(
                "Service {} does not exist in namespace {}",
                key.name, key.namespace
            ),
        ))
    } else {
        Ok(Scope::Service(key.clone()))
    };
    (scope, key)
}

/// Counts `service` (with its `endpoints`) into the reach of each accepted policy whose scope
/// reaches it, and its pods into the limits that policy gave it.
fn count_reach(
    reach: &mut HashMap<Scope, (usize, precedence::Reach)>,
    service: &ServiceKey,
    resolved: &precedence::Resolved,
    endpoints: &[&EndpointInfo],
) {
    if reach.is_empty() {
        return;
    }
    let pods = precedence::pods(endpoints);
    for (level, scope) in [
        (Level::Service, Scope::Service(service.clone())),
        (
            Level::Namespace,
            Scope::Namespace(service.namespace.clone()),
        ),
        (Level::Mesh, Scope::Mesh),
    ] {
        let Some((_, r)) = reach.get_mut(&scope) else {
            continue;
        };
        r.services += 1;
        if resolved.rate_limit_from == Some(level) {
            r.rate_limited_pods += pods;
            r.rate_limited_services += 1;
        }
        if resolved.bulkhead_from == Some(level) {
            r.bulkhead_pods += pods;
            r.bulkhead_services += 1;
        }
    }
}
