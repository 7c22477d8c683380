//! A TrafficSplit's subsets and rules: from its spec when it is accepted, from its last good
//! weights while it is refused (see the parent module's doc for why weights and never
//! endpoints are kept).

use super::{DEFAULT_SUBSET, EndpointInfo, Kind, Refused, Translation, Verdict, refused};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use weir_crds::TrafficSplit;
use weir_proxy_api as api;

pub(super) fn default_subset(endpoints: &[&EndpointInfo]) -> api::Subset {
    api::Subset {
        name: DEFAULT_SUBSET.to_owned(),
        weight: 1,
        endpoints: endpoints.iter().map(|e| e.address).collect(),
    }
}

pub(super) type SplitParts = (Vec<api::Subset>, Vec<api::RouteRule>);

/// The addresses of the endpoints `backend`'s selector picks.
pub(super) fn selected(
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
pub(super) fn summary(subsets: &[api::Subset]) -> String {
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
pub(super) fn last_good_weights(
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
pub(super) fn kept_split(
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

pub(super) fn route_rules(spec: &weir_crds::TrafficSplitSpec) -> Vec<api::RouteRule> {
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

pub(super) fn split_subsets(
    split: &TrafficSplit,
    endpoints: &[&EndpointInfo],
) -> Result<SplitParts, Refused> {
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
pub(super) fn spec_field(field: &str) -> String {
    field.replace("subsets", "backends")
}
