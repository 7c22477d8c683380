//! The checks of TrafficSplits, ResiliencePolicies and Autoscalers that a cluster and a folder
//! share. The verdicts are the translation's own ([`crate::translate::translate`], run from an
//! empty past so nothing kept from before hides a problem): `check` only words them as findings
//! and adds the hint, which differs between a cluster (kubectl) and a folder (LocalServices).

use super::{Finding, Group, Severity};
use crate::translate::{Kind, Translation, Verdict};
use std::collections::BTreeMap;
use weir_crds::{Autoscaler, TrafficSplit};

/// Where the resources live, for the hints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Cluster,
    Local,
}

fn subject(verdict: &Verdict) -> String {
    format!(
        "{} {}/{}",
        verdict.kind.as_str(),
        verdict.namespace,
        verdict.name
    )
}

fn short(kind: Kind) -> &'static str {
    match kind {
        Kind::TrafficSplit => "ts",
        Kind::ResiliencePolicy => "rp",
    }
}

/// The findings of one translation: each refused resource (target missing, no endpoints,
/// invalid), each group of conflicting resources (one finding per Service, naming the one in
/// force and the ignored ones), and each subset of an accepted split that selects nothing.
pub fn translation_findings(
    translation: &Translation,
    splits: &[TrafficSplit],
    mode: Mode,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    // (kind, service) → the names of the resources the translation ignored as conflicting.
    let mut conflicts: BTreeMap<(Kind, String, String), Vec<&Verdict>> = BTreeMap::new();
    for verdict in &translation.verdicts {
        let service = &verdict.service;
        let Err(refused) = &verdict.accepted else {
            if verdict.kind == Kind::TrafficSplit {
                findings.extend(empty_subsets(verdict, splits, mode));
            }
            continue;
        };
        let (code, hint) = match refused.reason {
            "ServiceNotFound" | "TargetNotFound" => (
                "TargetNotFound",
                match mode {
                    Mode::Cluster => format!(
                        "create Service {} in namespace {}, or name an existing one (kubectl -n {} get services)",
                        service.name, service.namespace, service.namespace
                    ),
                    Mode::Local => format!(
                        "add a LocalService named {} in namespace {} to the folder, or name an existing one",
                        service.name, service.namespace
                    ),
                },
            ),
            "NoEndpoints" => ("NoEndpoints", no_endpoints_hint(verdict, splits, mode)),
            "Conflict" => {
                conflicts
                    .entry((
                        verdict.kind,
                        service.namespace.clone(),
                        service.name.clone(),
                    ))
                    .or_default()
                    .push(verdict);
                continue;
            }
            _ => (
                "Invalid",
                match mode {
                    Mode::Cluster => format!(
                        "fix the field the message names (kubectl -n {} edit {} {})",
                        verdict.namespace,
                        short(verdict.kind),
                        verdict.name
                    ),
                    Mode::Local => "fix the field the message names in its file".to_owned(),
                },
            ),
        };
        findings.push(Finding::new(
            Severity::Error,
            Group::Resources,
            code,
            subject(verdict),
            refused.message.clone(),
            hint,
        ));
    }
    for ((kind, namespace, service), ignored) in conflicts {
        let in_force = translation.verdicts.iter().find(|v| {
            v.kind == kind
                && v.service.namespace == namespace
                && v.service.name == service
                && v.accepted
                    .as_ref()
                    .err()
                    .is_none_or(|r| r.reason != "Conflict")
        });
        let ignored_names: Vec<&str> = ignored.iter().map(|v| v.name.as_str()).collect();
        // What they all target: a Service, or (ResiliencePolicy defaults) a namespace or the mesh.
        let target = match (namespace.is_empty(), service.is_empty()) {
            (true, true) => "the mesh".to_owned(),
            (false, true) => format!("namespace {namespace}"),
            _ => format!("Service {service}"),
        };
        let plural = match kind {
            Kind::TrafficSplit => "TrafficSplits",
            Kind::ResiliencePolicy => "ResiliencePolicies",
        };
        let (subject, message) = match in_force {
            Some(first) => (
                subject(first),
                format!(
                    "{plural} {} and {} {} target {target}: only {} (the oldest) is in force, {} ignored",
                    first.name,
                    ignored_names.join(", "),
                    if ignored_names.len() == 1 {
                        "both"
                    } else {
                        "all"
                    },
                    first.name,
                    if ignored_names.len() == 1 {
                        "the other is"
                    } else {
                        "the others are"
                    },
                ),
            ),
            None => (
                format!("Service {namespace}/{service}"),
                format!(
                    "{plural} {} all target {target}; they are ignored",
                    ignored_names.join(", ")
                ),
            ),
        };
        let keep = match (namespace.is_empty(), service.is_empty()) {
            (true, true) => "keep one for the mesh",
            (false, true) => "keep one per namespace",
            _ => "keep one per Service",
        };
        // The policies' own namespace: a Mesh default's target names none.
        let own_namespace = ignored
            .first()
            .map_or(namespace.as_str(), |v| v.namespace.as_str());
        let hint = match mode {
            Mode::Cluster => format!(
                "{keep}: merge them, then delete the others (kubectl -n {own_namespace} delete {} {})",
                short(kind),
                ignored_names.join(" ")
            ),
            Mode::Local => format!("{keep}: merge them, then delete the others from the folder"),
        };
        findings.push(Finding::new(
            Severity::Error,
            Group::Resources,
            "Conflict",
            subject,
            message,
            hint,
        ));
    }
    findings
}

fn split_of<'a>(verdict: &Verdict, splits: &'a [TrafficSplit]) -> Option<&'a TrafficSplit> {
    splits.iter().find(|s| {
        s.metadata.name.as_deref() == Some(verdict.name.as_str())
            && s.metadata.namespace.as_deref().unwrap_or("default") == verdict.namespace
    })
}

fn selector_text(split: &TrafficSplit, subset: &str) -> String {
    split
        .spec
        .backends
        .iter()
        .find(|b| b.subset == subset)
        .map(|b| {
            b.selector
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn subset_hint(
    verdict: &Verdict,
    split: Option<&TrafficSplit>,
    subset: &str,
    mode: Mode,
) -> String {
    let selector = split.map(|s| selector_text(s, subset)).unwrap_or_default();
    let service = &verdict.service;
    match mode {
        Mode::Cluster => format!(
            "compare the selector with the pods' labels (kubectl -n {} get pods -l {selector} --show-labels); \
             the pods must be ready and behind Service {}",
            service.namespace, service.name
        ),
        Mode::Local => format!(
            "give an endpoint of LocalService {} the labels {selector}, or fix the backend's selector",
            service.name
        ),
    }
}

fn no_endpoints_hint(verdict: &Verdict, splits: &[TrafficSplit], mode: Mode) -> String {
    let split = split_of(verdict, splits);
    let empty = verdict
        .backends
        .iter()
        .find(|(_, count)| *count == 0)
        .map(|(subset, _)| subset.as_str())
        .unwrap_or_default();
    format!(
        "{}; or set that backend's weight to 0",
        subset_hint(verdict, split, empty, mode)
    )
}

/// An accepted split's backends that select no endpoint (weight 0, or the translation would
/// have refused it): harmless now, a surprise when the weight is raised.
fn empty_subsets(verdict: &Verdict, splits: &[TrafficSplit], mode: Mode) -> Vec<Finding> {
    let split = split_of(verdict, splits);
    verdict
        .backends
        .iter()
        .filter(|(_, count)| *count == 0)
        .map(|(subset, _)| {
            Finding::new(
                Severity::Warning,
                Group::Resources,
                "SubsetEmpty",
                subject(verdict),
                format!(
                    "backend {subset:?} selects no endpoint of Service {} (its weight is 0, so nothing breaks until it is raised)",
                    verdict.service.name
                ),
                subset_hint(verdict, split, subset, mode),
            )
        })
        .collect()
}

/// Each Autoscaler whose spec the autoscaler refuses (the same parser as the controller's).
pub fn autoscaler_spec_findings(autoscalers: &[Autoscaler], mode: Mode) -> Vec<Finding> {
    autoscalers
        .iter()
        .filter_map(|autoscaler| {
            let error = crate::autoscaler::algorithm::Spec::from_crd(&autoscaler.spec).err()?;
            Some(Finding::new(
                Severity::Error,
                Group::Autoscalers,
                "Invalid",
                autoscaler_subject(autoscaler),
                error.to_string(),
                match mode {
                    Mode::Cluster => format!(
                        "fix the field (kubectl -n {} edit as {})",
                        namespace_of(autoscaler),
                        autoscaler.metadata.name.as_deref().unwrap_or_default()
                    ),
                    Mode::Local => "fix the field in its file".to_owned(),
                },
            ))
        })
        .collect()
}

pub fn autoscaler_subject(autoscaler: &Autoscaler) -> String {
    format!(
        "Autoscaler {}/{}",
        namespace_of(autoscaler),
        autoscaler.metadata.name.as_deref().unwrap_or_default()
    )
}

fn namespace_of(autoscaler: &Autoscaler) -> &str {
    autoscaler
        .metadata
        .namespace
        .as_deref()
        .unwrap_or("default")
}
