//! The data plane and the resources: pods that should carry the sidecar, sidecars the operator
//! does not know or that run another proxy image, TrafficSplits, ResiliencePolicies and
//! Autoscalers.
//!
//! Whether a pod should carry the sidecar is the webhook's own decision
//! ([`crate::webhook::plan`]) on the pod and its namespace's labels, so the check cannot drift
//! from what injection does. Which sidecars are connected is what the operator's admin
//! `/proxies` lists, asked of every ready replica through the API server's pod proxy (each
//! replica knows only the proxies polling it); when one replica cannot be asked, no sidecar is
//! called unconnected.

use super::{CallError, Cluster, Operator, unchecked};
use crate::check::resources::{
    Mode, autoscaler_spec_findings, autoscaler_subject, translation_findings,
};
use crate::check::{Finding, Group, Severity};
use crate::webhook::inject::PROXY_CONTAINER;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use weir_crds::{Autoscaler, ResiliencePolicy, ScaleTargetRef, TrafficSplit};

/// At most this many pod names are listed in one finding.
const NAMES_SHOWN: usize = 5;

pub(super) async fn check(
    cluster: &Cluster,
    namespace: Option<&str>,
    operators: &[Operator],
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let pods: Api<Pod> = cluster.api(namespace);
    let pods = match cluster.list(&pods, "").await {
        Ok(pods) => pods,
        Err(e) => {
            findings.push(unchecked(Group::Injection, "pods", &e));
            findings.push(unchecked(Group::Proxies, "pods", &e));
            findings.push(unchecked(Group::Resources, "pods", &e));
            findings.extend(autoscalers(cluster, namespace).await);
            return findings;
        }
    };
    findings.extend(injection(cluster, namespace, operators, &pods).await);
    findings.extend(proxies(cluster, operators, &pods).await);
    findings.extend(resources(cluster, namespace, &pods).await);
    findings.extend(autoscalers(cluster, namespace).await);
    findings
}

fn has_sidecar(pod: &Pod) -> bool {
    proxy_container_image(pod).is_some()
}

/// The image of the pod's `weir-proxy` container (a container or a native sidecar).
fn proxy_container_image(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == PROXY_CONTAINER)
        .map(|c| c.image.clone().unwrap_or_default())
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// The workload a pod belongs to, for the hint: (kind, name). A ReplicaSet's pods belong to its
/// Deployment (the ReplicaSet's name less its hash).
fn workload(pod: &Pod) -> (String, String) {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    match owner {
        Some(o) if o.kind == "ReplicaSet" => match o.name.rsplit_once('-') {
            Some((deployment, _)) => ("Deployment".to_owned(), deployment.to_owned()),
            None => ("ReplicaSet".to_owned(), o.name.clone()),
        },
        Some(o) => (o.kind.clone(), o.name.clone()),
        None => (
            "Pod".to_owned(),
            pod.metadata.name.clone().unwrap_or_default(),
        ),
    }
}

/// Pods grouped by (namespace, workload), each group with its pods' names.
type ByWorkload = BTreeMap<(String, String, String), Vec<String>>;

fn group<'a>(pods: impl Iterator<Item = &'a Pod>) -> ByWorkload {
    let mut grouped = ByWorkload::new();
    for pod in pods {
        let (kind, name) = workload(pod);
        grouped
            .entry((
                pod.metadata.namespace.clone().unwrap_or_default(),
                kind,
                name,
            ))
            .or_default()
            .push(pod.metadata.name.clone().unwrap_or_default());
    }
    grouped
}

fn names(pods: &[String]) -> String {
    let mut text = pods
        .iter()
        .take(NAMES_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if pods.len() > NAMES_SHOWN {
        text.push_str(&format!(" and {} more", pods.len() - NAMES_SHOWN));
    }
    text
}

fn restart_hint(namespace: &str, kind: &str, name: &str) -> String {
    match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" => format!(
            "kubectl -n {namespace} rollout restart {} {name}",
            kind.to_lowercase()
        ),
        _ => format!("delete the pod and create it again (kubectl -n {namespace} delete pod …)"),
    }
}

/// Running pods that the webhook would inject but that have no `weir-proxy` container: made
/// before their namespace was labelled, or while the webhook was down with
/// `failurePolicy: Ignore`. The operator's own namespaces and kube-system are never injected.
async fn injection(
    cluster: &Cluster,
    namespace: Option<&str>,
    operators: &[Operator],
    pods: &[Pod],
) -> Vec<Finding> {
    let api: Api<Namespace> = Api::all(cluster.client.clone());
    let namespaces: Vec<Namespace> = match namespace {
        Some(name) => match cluster.bounded(api.get(name)).await {
            Ok(found) => vec![found],
            Err(CallError::NotFound) => {
                return vec![Finding::new(
                    Severity::Warning,
                    Group::Injection,
                    "NamespaceMissing",
                    format!("Namespace {name}"),
                    "does not exist, so nothing in it was checked",
                    "kubectl get namespaces (and check the spelling of --namespace)",
                )];
            }
            Err(e) => return vec![unchecked(Group::Injection, "namespaces", &e)],
        },
        None => match cluster.list(&api, "").await {
            Ok(found) => found,
            Err(e) => return vec![unchecked(Group::Injection, "namespaces", &e)],
        },
    };
    let labels: HashMap<String, BTreeMap<String, String>> = namespaces
        .into_iter()
        .map(|n| {
            (
                n.metadata.name.unwrap_or_default(),
                n.metadata.labels.unwrap_or_default(),
            )
        })
        .collect();
    let never = never_injected(cluster).await;
    let excluded: BTreeSet<&str> = operators
        .iter()
        .map(|o| o.namespace.as_str())
        .chain(never.iter().map(String::as_str))
        .chain(["kube-system"])
        .collect();
    // Only the decision matters here; the images and address are never used.
    let settings = crate::webhook::InjectionSettings::new("-", "-", "-");
    let empty = BTreeMap::new();
    let lacking = pods.iter().filter(|pod| {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        !excluded.contains(namespace)
            && matches!(phase(pod), "Pending" | "Running")
            && !has_sidecar(pod)
            && !matches!(
                crate::webhook::plan(pod, labels.get(namespace).unwrap_or(&empty), &settings),
                Ok(crate::webhook::Outcome::Skip(_))
            )
    });
    group(lacking)
        .into_iter()
        .map(|((namespace, kind, name), pods)| {
            Finding::new(
                Severity::Error,
                Group::Injection,
                "PodWithoutSidecar",
                format!("{kind} {namespace}/{name}"),
                format!(
                    "{} without the weir-proxy container, though injection is asked for: {}",
                    if pods.len() == 1 {
                        "1 pod".to_owned()
                    } else {
                        format!("{} pods", pods.len())
                    },
                    names(&pods)
                ),
                format!(
                    "pods made before the namespace was labelled (or while the webhook was down) keep running without it: {}",
                    restart_hint(&namespace, &kind, &name)
                ),
            )
        })
        .collect()
}

/// The namespaces the webhook configuration never sends to the webhook (the chart's
/// `kubernetes.io/metadata.name NotIn [...]`, from `injection.excludeNamespaces`); none when it
/// cannot be read (the webhook group says why).
async fn never_injected(cluster: &Cluster) -> Vec<String> {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let api: Api<MutatingWebhookConfiguration> = Api::all(cluster.client.clone());
    let configs = cluster.list(&api, "").await.unwrap_or_default();
    configs
        .iter()
        .flat_map(|c| c.webhooks.iter().flatten())
        .filter(|w| w.name.ends_with(".inject.weir.dev"))
        .flat_map(|w| {
            w.namespace_selector
                .iter()
                .flat_map(|s| s.match_expressions.iter().flatten())
        })
        .filter(|e| e.key == "kubernetes.io/metadata.name" && e.operator == "NotIn")
        .flat_map(|e| e.values.iter().flatten().cloned())
        .collect()
}

/// Running sidecars must be connected to the operator and run the proxy image it injects now.
async fn proxies(cluster: &Cluster, operators: &[Operator], pods: &[Pod]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let running: Vec<&Pod> = pods
        .iter()
        .filter(|p| has_sidecar(p) && phase(p) == "Running")
        .collect();
    let Some(operator) = operators.first() else {
        return findings; // OperatorMissing says it already
    };
    if let Some(expected) = operator.setting("--proxy-image", "WEIR_PROXY_IMAGE") {
        let mut by_image: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
        for pod in &running {
            let image = proxy_container_image(pod).unwrap_or_default();
            if image != expected {
                by_image.entry(image).or_default().push(pod);
            }
        }
        for (image, pods) in by_image {
            for ((namespace, kind, name), pods) in group(pods.into_iter()) {
                findings.push(Finding::new(
                    Severity::Warning,
                    Group::Proxies,
                    "ProxyVersionMismatch",
                    format!("{kind} {namespace}/{name}"),
                    format!(
                        "its proxy runs {image}, the operator injects {expected}: {}",
                        names(&pods)
                    ),
                    format!(
                        "restart it to get the current proxy: {}",
                        restart_hint(&namespace, &kind, &name)
                    ),
                ));
            }
        }
    }
    let Some(connected) = connected_proxies(cluster, operators, &mut findings).await else {
        return findings;
    };
    let unconnected = running.iter().copied().filter(|pod| {
        !connected.contains(&(
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        ))
    });
    for ((namespace, kind, name), pods) in group(unconnected) {
        findings.push(Finding::new(
            Severity::Error,
            Group::Proxies,
            "ProxyNotConnected",
            format!("{kind} {namespace}/{name}"),
            format!(
                "its sidecars are not polling the operator's config API, so they get no config: {}",
                names(&pods)
            ),
            format!(
                "kubectl -n {namespace} logs {} -c {PROXY_CONTAINER} (look for the control plane address and errors; a pod that just started may not have polled yet)",
                pods[0]
            ),
        ));
    }
    findings
}

/// (namespace, pod) of every proxy the operator's ready replicas list on `/proxies`; `None`
/// when some replica could not be asked (then nobody can be called unconnected).
async fn connected_proxies(
    cluster: &Cluster,
    operators: &[Operator],
    findings: &mut Vec<Finding>,
) -> Option<BTreeSet<(String, String)>> {
    let mut connected = BTreeSet::new();
    let mut complete = true;
    let mut asked = 0;
    for operator in operators {
        let selector = operator.pod_selector();
        if selector.is_empty() {
            continue;
        }
        let api: Api<Pod> = Api::namespaced(cluster.client.clone(), &operator.namespace);
        let replicas = match cluster.list(&api, &selector).await {
            Ok(replicas) => replicas,
            Err(e) => {
                findings.push(unchecked(
                    Group::Proxies,
                    &format!(
                        "pods of Deployment {}/{}",
                        operator.namespace, operator.name
                    ),
                    &e,
                ));
                complete = false;
                continue;
            }
        };
        let port = operator.admin_port();
        for replica in replicas.iter().filter(|p| ready(p)) {
            let name = replica.metadata.name.clone().unwrap_or_default();
            asked += 1;
            let uri = format!(
                "/api/v1/namespaces/{}/pods/{name}:{port}/proxy/proxies",
                operator.namespace
            );
            let request = match http::Request::get(uri).body(Vec::new()) {
                Ok(request) => request,
                Err(_) => continue,
            };
            match cluster
                .bounded(cluster.client.request::<Vec<serde_json::Value>>(request))
                .await
            {
                Ok(proxies) => {
                    for proxy in proxies {
                        let node = &proxy["node"];
                        if let (Some(namespace), Some(pod)) =
                            (node["namespace"].as_str(), node["pod"].as_str())
                        {
                            connected.insert((namespace.to_owned(), pod.to_owned()));
                        }
                    }
                }
                Err(e) => {
                    complete = false;
                    findings.push(Finding::new(
                        Severity::Warning,
                        Group::Proxies,
                        "AdminUnreachable",
                        format!("Pod {}/{name}", operator.namespace),
                        format!("its admin /proxies could not be read through the API server ({e}), so which sidecars are connected was not checked"),
                        format!("kubectl -n {} port-forward pod/{name} {port} & curl localhost:{port}/proxies", operator.namespace),
                    ));
                }
            }
        }
    }
    (complete && asked > 0).then_some(connected)
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The TrafficSplits and ResiliencePolicies, judged by the translation over the cluster's
/// Services, EndpointSlices and pod labels — exactly what `run` translates.
async fn resources(cluster: &Cluster, namespace: Option<&str>, pods: &[Pod]) -> Vec<Finding> {
    let splits: Api<TrafficSplit> = cluster.api(namespace);
    let policies: Api<ResiliencePolicy> = cluster.api(namespace);
    let services: Api<Service> = cluster.api(namespace);
    let slices: Api<EndpointSlice> = cluster.api(namespace);
    let (splits, policies, services, slices) = match (
        cluster.list(&splits, "").await,
        cluster.list(&policies, "").await,
        cluster.list(&services, "").await,
        cluster.list(&slices, "").await,
    ) {
        (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
        (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => {
            return vec![unchecked(
                Group::Resources,
                "TrafficSplits, ResiliencePolicies, Services or EndpointSlices",
                &e,
            )];
        }
    };
    let labels: HashMap<(&str, &str), &BTreeMap<String, String>> = pods
        .iter()
        .filter_map(|p| {
            Some((
                (
                    p.metadata.namespace.as_deref()?,
                    p.metadata.name.as_deref()?,
                ),
                p.metadata.labels.as_ref()?,
            ))
        })
        .collect();
    let (services, endpoints) =
        crate::kubernetes::inputs::services_and_endpoints(&services, &slices, |ns, name| {
            labels.get(&(ns, name)).map(|l| (*l).clone())
        });
    let translation = crate::translate::translate(
        &crate::translate::Inputs {
            splits: &splits,
            policies: &policies,
            services: &services,
            endpoints: &endpoints,
            operator_namespace: None,
        },
        &crate::translate::Translation::default(),
    );
    translation_findings(&translation, &splits, Mode::Cluster)
}

/// Autoscalers: a valid spec, a target Deployment that exists, and no HorizontalPodAutoscaler
/// on the same target (two autoscalers would fight over the replicas).
async fn autoscalers(cluster: &Cluster, namespace: Option<&str>) -> Vec<Finding> {
    let autoscalers: Api<Autoscaler> = cluster.api(namespace);
    let autoscalers = match cluster.list(&autoscalers, "").await {
        Ok(found) => found,
        Err(e) => return vec![unchecked(Group::Autoscalers, "Autoscalers", &e)],
    };
    if autoscalers.is_empty() {
        return Vec::new();
    }
    let mut findings = autoscaler_spec_findings(&autoscalers, Mode::Cluster);
    for check in [
        against_each(cluster, namespace, &autoscalers, conflicting_hpas).await,
        against_each(cluster, namespace, &autoscalers, missing_target).await,
    ] {
        findings.extend(check);
    }
    findings
}

/// `ConflictingHPA`: a HorizontalPodAutoscaler scales the same target as `autoscaler`.
fn conflicting_hpas(
    autoscaler: &Autoscaler,
    namespace: &str,
    target: &ScaleTargetRef,
    hpas: &[HorizontalPodAutoscaler],
) -> Vec<Finding> {
    hpas.iter()
        .filter(|hpa| {
            hpa.metadata.namespace.as_deref() == Some(namespace)
                && hpa.spec.as_ref().is_some_and(|s| {
                    s.scale_target_ref.kind == target.kind
                        && s.scale_target_ref.name == target.name
                })
        })
        .map(|hpa| {
            let hpa_name = hpa.metadata.name.clone().unwrap_or_default();
            Finding::new(
                Severity::Error,
                Group::Autoscalers,
                "ConflictingHPA",
                autoscaler_subject(autoscaler),
                format!(
                    "HorizontalPodAutoscaler {hpa_name} also scales {} {}: Weir leaves the scale alone while it exists",
                    target.kind, target.name
                ),
                format!(
                    "keep one autoscaler: kubectl -n {namespace} delete hpa {hpa_name} (or delete the Autoscaler)"
                ),
            )
        })
        .collect()
}

/// `TargetNotFound`: `autoscaler` scales a Deployment that does not exist.
fn missing_target(
    autoscaler: &Autoscaler,
    namespace: &str,
    target: &ScaleTargetRef,
    deployments: &[Deployment],
) -> Vec<Finding> {
    let exists = deployments.iter().any(|d| {
        d.metadata.namespace.as_deref() == Some(namespace)
            && d.metadata.name.as_deref() == Some(target.name.as_str())
    });
    if target.kind != "Deployment" || exists {
        return Vec::new();
    }
    vec![Finding::new(
        Severity::Error,
        Group::Autoscalers,
        "TargetNotFound",
        autoscaler_subject(autoscaler),
        format!("Deployment {namespace}/{} does not exist", target.name),
        format!(
            "create it, or name an existing one in spec.targetRef (kubectl -n {namespace} get deployments)"
        ),
    )]
}

/// Lists the `K`s in `namespace` and asks `check` what each Autoscaler (with its namespace and
/// its target) is found to have against them; a list that fails is one `unchecked` finding
/// about the `K`s (their kind in the plural: `Deployments`).
async fn against_each<K>(
    cluster: &Cluster,
    namespace: Option<&str>,
    autoscalers: &[Autoscaler],
    check: impl Fn(&Autoscaler, &str, &ScaleTargetRef, &[K]) -> Vec<Finding>,
) -> Vec<Finding>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    <K as kube::Resource>::DynamicType: Default,
{
    let api: Api<K> = cluster.api(namespace);
    match cluster.list(&api, "").await {
        Ok(found) => autoscalers
            .iter()
            .flat_map(|autoscaler| {
                let namespace = autoscaler.metadata.namespace.as_deref().unwrap_or_default();
                check(autoscaler, namespace, &autoscaler.spec.target_ref, &found)
            })
            .collect(),
        Err(e) => {
            let what = format!("{}s", K::kind(&Default::default()));
            vec![unchecked(Group::Autoscalers, &what, &e)]
        }
    }
}
