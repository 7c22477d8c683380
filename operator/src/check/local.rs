//! `weir-operator check --dir DIR`: the folder `weir-operator local` reads, judged as local mode
//! would judge it, but every problem at once instead of one log line per change.
//!
//! 1. Every `*.yaml`/`*.yml` under DIR (local mode's own walk) parses and validates as local
//!    mode parses it ([`crate::local::parse_file`]: apiVersion, kind, strict fields, names); a
//!    file over the design's 16 MiB bound is refused unread.
//! 2. A resource defined twice (same kind, namespace and name) is an error: local mode would load
//!    both and route by whichever the translation sorts first.
//! 3. Each LocalService's endpoints are addresses ([`crate::local::services_and_endpoints`]);
//!    local mode refuses the whole folder while one is not, so it is an error.
//! 4. The translation of the good resources: targets, subsets' endpoints, conflicts, invalid
//!    values ([`super::resources`]).
//! 5. Autoscalers: the spec as the autoscaler parses it, and the LocalService it names.

use super::resources::{Mode, autoscaler_spec_findings, autoscaler_subject, translation_findings};
use super::{Finding, Group, Report, Severity};
use crate::local::{Resources, collect_yaml, parse_file, services_and_endpoints};
use kube::api::ObjectMeta;
use std::collections::BTreeMap;
use std::path::Path;

/// A local YAML file may hold at most this much (DESIGN's Bounds).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Checks the folder `dir`.
pub fn check(dir: &Path) -> Report {
    let checked = vec![Group::Files, Group::Resources, Group::Autoscalers];
    let mut findings = Vec::new();
    let mut files = Vec::new();
    collect_yaml(dir, &mut files);
    if files.is_empty() {
        // Nothing to judge, and the one finding says why: local mode cannot start without its
        // folder, but starts with an empty mesh from an empty one. What follows finds nothing in
        // no files.
        let (severity, code, message, hint) = if dir.is_dir() {
            (
                Severity::Warning,
                "NoFiles",
                "holds no *.yaml or *.yml file",
                "put the LocalServices, TrafficSplits, ResiliencePolicies and Autoscalers there (see examples/shop/mesh)",
            )
        } else {
            (
                Severity::Error,
                "NotAFolder",
                "is not a folder",
                "pass the folder `weir-operator local --dir` reads",
            )
        };
        let subject = format!("folder {}", dir.display());
        findings.push(Finding::new(
            severity,
            Group::Files,
            code,
            subject,
            message,
            hint,
        ));
    }
    let mut all = Resources::default();
    // (kind, namespace, name) → the files defining it.
    let mut defined: BTreeMap<(&'static str, String, String), Vec<String>> = BTreeMap::new();
    for path in &files {
        let name = path.strip_prefix(dir).unwrap_or(path).display().to_string();
        let subject = format!("file {name}");
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if size > MAX_FILE_BYTES {
            findings.push(Finding::new(
                Severity::Error,
                Group::Files,
                "FileTooLarge",
                subject,
                format!("{size} bytes: over the 16 MiB a local file may hold"),
                "split it into several files",
            ));
            continue;
        }
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                findings.push(Finding::new(
                    Severity::Error,
                    Group::Files,
                    "FileUnreadable",
                    subject,
                    e.to_string(),
                    "make it readable UTF-8 text",
                ));
                continue;
            }
        };
        match parse_file(&name, &text) {
            Ok(resources) => {
                let mut note = |kind: &'static str, meta: &ObjectMeta| {
                    defined
                        .entry((
                            kind,
                            meta.namespace.clone().unwrap_or_default(),
                            meta.name.clone().unwrap_or_default(),
                        ))
                        .or_default()
                        .push(name.clone());
                };
                let every = named("TrafficSplit", &resources.splits)
                    .chain(named("ResiliencePolicy", &resources.policies))
                    .chain(named("Autoscaler", &resources.autoscalers))
                    .chain(named("LocalService", &resources.local_services));
                for (kind, meta) in every {
                    note(kind, meta);
                }
                // A second definition is reported as `Duplicate` below and left out here, so
                // it does not also show up as a conflict with itself.
                let first = |kind: &'static str, meta: &ObjectMeta| {
                    defined
                        .get(&(
                            kind,
                            meta.namespace.clone().unwrap_or_default(),
                            meta.name.clone().unwrap_or_default(),
                        ))
                        .is_some_and(|files| files.first() == Some(&name))
                };
                let mut seen_here = std::collections::HashSet::new();
                let mut once = |kind: &'static str, meta: &ObjectMeta| {
                    first(kind, meta)
                        && seen_here.insert((kind, meta.namespace.clone(), meta.name.clone()))
                };
                keep(&mut all.splits, resources.splits, "TrafficSplit", &mut once);
                keep(&mut all.policies, resources.policies, "ResiliencePolicy", &mut once);
                keep(&mut all.autoscalers, resources.autoscalers, "Autoscaler", &mut once);
                keep(&mut all.local_services, resources.local_services, "LocalService", &mut once);
            }
            Err(e) => findings.push(Finding::new(
                Severity::Error,
                Group::Files,
                "FileInvalid",
                subject,
                format!(
                    "document {}: {}{}",
                    e.document, e.field, e.message
                ),
                "fix it; meanwhile `weir-operator local` keeps this file's last good resources (none if it never loaded)",
            )),
        }
    }
    for ((kind, namespace, name), files) in defined {
        if files.len() > 1 {
            findings.push(Finding::new(
                Severity::Error,
                Group::Files,
                "Duplicate",
                format!("{kind} {namespace}/{name}"),
                {
                    let mut places = files.clone();
                    places.dedup();
                    format!("defined {} times, in {}", files.len(), places.join(", "))
                },
                "keep one definition",
            ));
        }
    }
    let mut good_services = Vec::new();
    for service in &all.local_services {
        match services_and_endpoints(std::iter::once(service)) {
            Ok(_) => good_services.push(service.clone()),
            Err(message) => findings.push(Finding::new(
                Severity::Error,
                Group::Files,
                "LocalServiceInvalid",
                format!(
                    "LocalService {}/{}",
                    service.metadata.namespace.as_deref().unwrap_or_default(),
                    service.metadata.name.as_deref().unwrap_or_default()
                ),
                message,
                "write each endpoint's address (and admin) as IP:port; `weir-operator local` keeps its last good state until every LocalService is valid",
            )),
        }
    }
    let (services, endpoints) =
        services_and_endpoints(&good_services).unwrap_or_else(|_| (Vec::new(), Vec::new()));
    let translation = crate::translate::translate(
        &crate::local::inputs_of(&all, &services, &endpoints),
        &crate::translate::Translation::default(),
    );
    findings.extend(translation_findings(&translation, &all.splits, Mode::Local));
    findings.extend(autoscaler_spec_findings(&all.autoscalers, Mode::Local));
    for autoscaler in &all.autoscalers {
        let namespace = autoscaler.metadata.namespace.as_deref().unwrap_or_default();
        let target = &autoscaler.spec.target_ref.name;
        let exists = all.local_services.iter().any(|s| {
            s.metadata.namespace.as_deref() == Some(namespace)
                && s.metadata.name.as_deref() == Some(target.as_str())
        });
        if !exists {
            findings.push(Finding::new(
                Severity::Error,
                Group::Autoscalers,
                "TargetNotFound",
                autoscaler_subject(autoscaler),
                format!(
                    "LocalService {namespace}/{target} does not exist (in local mode spec.targetRef.name names a LocalService)"
                ),
                format!("add a LocalService named {target} in namespace {namespace}, or name an existing one"),
            ));
        }
    }
    Report::new(checked, findings)
}

/// Each resource of `found` by its kind and its metadata.
fn named<'a, K: kube::Resource>(
    kind: &'static str,
    found: &'a [K],
) -> impl Iterator<Item = (&'static str, &'a ObjectMeta)> {
    found.iter().map(move |r| (kind, r.meta()))
}

/// Adds to `all` the resources of one kind in `found` that `once` keeps.
fn keep<K: kube::Resource>(
    all: &mut Vec<K>,
    found: Vec<K>,
    kind: &'static str,
    once: &mut impl FnMut(&'static str, &ObjectMeta) -> bool,
) {
    all.extend(found.into_iter().filter(|r| once(kind, r.meta())));
}
