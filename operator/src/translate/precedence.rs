//! Which ResiliencePolicy governs what, and the policy each Service ends up with.
//!
//! A policy targets one of three levels: a Service (`{kind: Service, name}`), a namespace's
//! Services (`{kind: Namespace, name: <its own namespace>}`) or every Service of the mesh
//! (`{kind: Mesh}`, honoured only in the operator's namespace, `weir-system` unless configured).
//! Per level and target, the oldest policy (creation time, then name) governs; a younger one is
//! refused as `Conflict`. A Service's policy is then built block by block: each block
//! (`timeouts`, `retries`, `circuitBreaker`, `outlierDetection`, `loadBalancer`, `fallback`,
//! `faults`, `rateLimit`, `bulkhead`) comes whole from the most specific level that sets it.
//! The inbound timeouts travel with `timeouts`: the level that gives a Service its timeouts
//! gives its sidecars theirs.
//!
//! A governing policy that is refused now keeps its last good blocks (from the previous
//! translation), at its own level: the levels above and below still change as theirs do.

use super::policy::Blocks;
use crate::snapshot::ServiceKey;
use std::collections::HashMap;
use std::sync::Arc;
use weir_proxy_api as api;

/// The operator's namespace unless configured: where a `kind: Mesh` policy is honoured.
pub const DEFAULT_OPERATOR_NAMESPACE: &str = "weir-system";

/// What a policy targets.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Service(ServiceKey),
    /// Every Service of this namespace.
    Namespace(String),
    /// Every Service.
    Mesh,
}

impl Scope {
    pub fn reaches(&self, service: &ServiceKey) -> bool {
        match self {
            Self::Service(key) => key == service,
            Self::Namespace(namespace) => &service.namespace == namespace,
            Self::Mesh => true,
        }
    }
}

/// The blocks in force at each scope that has a governing policy: what it converts to now, or
/// (refused) its last good blocks, or nothing when it never had any.
#[derive(Debug, Default)]
pub struct Levels {
    pub governing: HashMap<Scope, Option<Arc<Blocks>>>,
}

/// Which level gave a Service a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Service,
    Namespace,
    Mesh,
}

/// A Service's resolved policy, and where its per-pod limits came from (for the status'
/// effective limits).
#[derive(Debug, Default)]
pub struct Resolved {
    pub policy: api::Policy,
    pub inbound: api::InboundPolicy,
    pub rate_limit_from: Option<Level>,
    pub bulkhead_from: Option<Level>,
}

impl Levels {
    fn at(&self, scope: &Scope) -> Option<&Blocks> {
        self.governing.get(scope)?.as_deref()
    }

    /// `service`'s policy: per block, the most specific level that sets it.
    pub fn resolve(&self, service: &ServiceKey) -> Resolved {
        if self.governing.is_empty() {
            return Resolved::default();
        }
        let levels: [(Level, Option<&Blocks>); 3] = [
            (Level::Service, self.at(&Scope::Service(service.clone()))),
            (
                Level::Namespace,
                self.at(&Scope::Namespace(service.namespace.clone())),
            ),
            (Level::Mesh, self.at(&Scope::Mesh)),
        ];
        fn pick<'a, T: Clone + 'a>(
            levels: &[(Level, Option<&'a Blocks>)],
            block: impl Fn(&'a Blocks) -> Option<&'a T>,
        ) -> (Option<T>, Option<Level>) {
            levels
                .iter()
                .find_map(|(level, blocks)| Some((block((*blocks)?)?.clone(), *level)))
                .map_or((None, None), |(b, level)| (Some(b), Some(level)))
        }
        let (timeouts, timeouts_from) = pick(&levels, |b| b.policy.timeouts.as_ref());
        let inbound_timeouts = levels
            .iter()
            .find(|(level, _)| Some(*level) == timeouts_from)
            .and_then(|(_, blocks)| blocks.and_then(|b| b.inbound.timeouts.clone()));
        let (rate_limit, rate_limit_from) = pick(&levels, |b| b.inbound.rate_limit.as_ref());
        let (bulkhead, bulkhead_from) = pick(&levels, |b| b.inbound.bulkhead.as_ref());
        Resolved {
            policy: api::Policy {
                timeouts,
                retries: pick(&levels, |b| b.policy.retries.as_ref()).0,
                circuit_breaker: pick(&levels, |b| b.policy.circuit_breaker.as_ref()).0,
                outlier_detection: pick(&levels, |b| b.policy.outlier_detection.as_ref()).0,
                load_balancer: pick(&levels, |b| b.policy.load_balancer.as_ref()).0,
                fallback: pick(&levels, |b| b.policy.fallback.as_ref()).0,
                faults: pick(&levels, |b| b.policy.faults.as_ref()).0,
            },
            inbound: api::InboundPolicy {
                subset: None,
                timeouts: inbound_timeouts,
                rate_limit,
                bulkhead,
            },
            rate_limit_from,
            bulkhead_from,
        }
    }
}

/// The pods behind a Service: its most ready endpoints on any one port (a pod serves each port
/// of its Service once).
pub fn pods(endpoints: &[&super::EndpointInfo]) -> usize {
    let mut per_port: HashMap<Option<u16>, usize> = HashMap::new();
    for e in endpoints {
        *per_port.entry(e.port).or_default() += 1;
    }
    per_port.into_values().max().unwrap_or(0)
}

/// Sums, for one policy, the pods its rate limit and its bulkhead are in force on.
#[derive(Debug, Default, Clone, Copy)]
pub struct Reach {
    pub services: usize,
    pub rate_limited_pods: usize,
    pub rate_limited_services: usize,
    pub bulkhead_pods: usize,
    pub bulkhead_services: usize,
}

/// `100 rps per pod × 3 pods = 300 rps; bulkhead 10 per pod × 3 pods = 30` for `blocks` over
/// `reach` (`… × 7 pods of 3 services …` for a default policy). `None` without a rate limit or
/// bulkhead.
pub fn effective_limits(blocks: &Blocks, reach: &Reach, defaults: bool) -> Option<String> {
    let pods = |n: usize, services: usize| {
        let pods = format!("{n} pod{}", if n == 1 { "" } else { "s" });
        if defaults {
            format!(
                "{pods} of {services} service{}",
                if services == 1 { "" } else { "s" }
            )
        } else {
            pods
        }
    };
    let dry = |dry_run: bool| if dry_run { " (dry run)" } else { "" };
    let mut parts = Vec::new();
    if let Some(rl) = &blocks.inbound.rate_limit {
        let per_key = match rl.key {
            api::RateLimitKey::None => "",
            _ => " per key",
        };
        let total = rl.requests_per_second * reach.rate_limited_pods as f64;
        parts.push(format!(
            "{} rps{per_key} per pod × {} = {total} rps{per_key}{}",
            rl.requests_per_second,
            pods(reach.rate_limited_pods, reach.rate_limited_services),
            dry(rl.dry_run)
        ));
    }
    if let Some(b) = &blocks.inbound.bulkhead {
        let total = u64::from(b.max_concurrent) * reach.bulkhead_pods as u64;
        parts.push(format!(
            "bulkhead {} per pod × {} = {total}{}",
            b.max_concurrent,
            pods(reach.bulkhead_pods, reach.bulkhead_services),
            dry(b.dry_run)
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}
