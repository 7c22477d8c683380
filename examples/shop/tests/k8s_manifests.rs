//! The shop's Kubernetes manifests (`examples/shop/k8s/`) and its local mesh
//! (`examples/shop/mesh/`) read with the real types — k8s-openapi for the built-in kinds,
//! weir-crds for Weir's — so that a typo fails CI: every document must deserialize into its
//! kind and survive a round trip without losing a field (the types ignore unknown fields, so a
//! misspelt one would otherwise pass unnoticed). Then what spans objects: Services select pods
//! with the ports they name, the TrafficSplit's subsets select one Deployment each, policies
//! and the Autoscaler target what exists, durations parse, and the cluster's mesh resources are
//! the ones local mode runs.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Service};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use weir_crds::{Autoscaler, LocalService, ResiliencePolicy, TrafficSplit};

/// One YAML document of a folder.
struct Document {
    /// `k8s/payments.yaml#2`, for messages.
    place: String,
    value: Value,
}

fn folder(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// Every document of every `*.yaml` in the folder, as JSON values.
fn documents(name: &str) -> Vec<Document> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder(name))
        .unwrap_or_else(|e| panic!("reading {name}/: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML files in {name}/");
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let file = format!("{name}/{}", path.file_name().unwrap().to_string_lossy());
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        for (i, value) in docs.into_iter().enumerate() {
            if value.is_null() {
                continue;
            }
            out.push(Document {
                place: format!("{file}#{}", i + 1),
                value,
            });
        }
    }
    out
}

/// The fields of `original` that `back` lacks or holds differently (numbers compared by value).
fn lost(original: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (original, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                match b.get(key) {
                    Some(w) => lost(value, w, &format!("{path}.{key}"), out),
                    None => out.push(format!("{path}.{key}")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                lost(x, y, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path} (was {a}, reads back as {b})")),
    }
}

/// `doc` as a `T`, failing when it does not parse or a field is dropped on the way.
fn typed<T: DeserializeOwned + Serialize>(doc: &Document) -> T {
    let typed: T =
        serde_json::from_value(doc.value.clone()).unwrap_or_else(|e| panic!("{}: {e}", doc.place));
    let back = serde_json::to_value(&typed).unwrap();
    let mut problems = Vec::new();
    lost(&doc.value, &back, "", &mut problems);
    assert!(
        problems.is_empty(),
        "{}: fields the type does not know (typos?): {}",
        doc.place,
        problems.join(", ")
    );
    typed
}

/// Every object of a folder, by kind.
#[derive(Default)]
struct Objects {
    namespaces: Vec<Namespace>,
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    claims: Vec<PersistentVolumeClaim>,
    splits: Vec<TrafficSplit>,
    policies: Vec<ResiliencePolicy>,
    autoscalers: Vec<Autoscaler>,
    local_services: Vec<LocalService>,
}

fn objects(name: &str) -> Objects {
    let mut o = Objects::default();
    for doc in documents(name) {
        let api = doc.value["apiVersion"].as_str().unwrap_or("");
        let kind = doc.value["kind"].as_str().unwrap_or("");
        match (api, kind) {
            ("v1", "Namespace") => o.namespaces.push(typed(&doc)),
            ("apps/v1", "Deployment") => o.deployments.push(typed(&doc)),
            ("v1", "Service") => o.services.push(typed(&doc)),
            ("v1", "PersistentVolumeClaim") => o.claims.push(typed(&doc)),
            ("weir.dev/v1alpha1", "TrafficSplit") => o.splits.push(typed(&doc)),
            ("weir.dev/v1alpha1", "ResiliencePolicy") => o.policies.push(typed(&doc)),
            ("weir.dev/v1alpha1", "Autoscaler") => o.autoscalers.push(typed(&doc)),
            ("weir.dev/v1alpha1", "LocalService") => o.local_services.push(typed(&doc)),
            _ => panic!("{}: unexpected kind {api:?} {kind:?}", doc.place),
        }
    }
    o
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("")
}

fn pod_labels(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// `d` read as the mesh reads it (Go syntax with units: a bare number is refused, as the API
/// server would).
fn duration(place: &str, d: &Option<String>) -> Option<Duration> {
    d.as_ref().map(|s| {
        s.parse::<weir_proxy_api::Duration>()
            .map(weir_proxy_api::Duration::get)
            .unwrap_or_else(|e| panic!("{place}: {s:?} is not a duration: {e}"))
    })
}

/// What every policy must satisfy wherever it is: a Service target, valid durations, a per-try
/// timeout inside the request timeout.
fn check_policy(p: &ResiliencePolicy, services: &[&str]) {
    let name = name_of(&p.metadata);
    assert_eq!(p.spec.target_ref.kind, "Service", "policy {name}");
    assert!(
        services.contains(&p.spec.target_ref.name.as_str()),
        "policy {name} targets {:?}, which is not a Service",
        p.spec.target_ref.name
    );
    if let Some(t) = &p.spec.timeouts {
        let place = format!("policy {name} timeouts");
        let request = duration(&place, &t.request);
        let per_try = duration(&place, &t.per_try);
        duration(&place, &t.connect);
        duration(&place, &t.idle);
        if let (Some(r), Some(p)) = (request, per_try) {
            assert!(p <= r, "{place}: perTry {p:?} longer than request {r:?}");
        }
    }
    if let Some(r) = &p.spec.retries {
        assert!(
            (0..=10).contains(&r.attempts),
            "policy {name} retries.attempts"
        );
        if let Some(b) = &r.backoff {
            let place = format!("policy {name} retries.backoff");
            if let (Some(base), Some(max)) = (duration(&place, &b.base), duration(&place, &b.max)) {
                assert!(base <= max, "{place}: base above max");
            }
        }
    }
    if let Some(o) = &p.spec.outlier_detection {
        let place = format!("policy {name} outlierDetection");
        duration(&place, &o.interval);
        duration(&place, &o.base_ejection_time);
    }
    if let Some(c) = &p.spec.circuit_breaker {
        duration(&format!("policy {name} circuitBreaker"), &c.open_duration);
    }
    if let Some(b) = &p.spec.bulkhead {
        duration(&format!("policy {name} bulkhead"), &b.queue_timeout);
    }
}

fn check_split(split: &TrafficSplit) {
    let name = name_of(&split.metadata);
    assert!(
        split.spec.backends.iter().any(|b| b.weight > 0),
        "split {name}: every weight is 0"
    );
    let mut subsets: Vec<&str> = split
        .spec
        .backends
        .iter()
        .map(|b| b.subset.as_str())
        .collect();
    subsets.sort();
    subsets.dedup();
    assert_eq!(
        subsets.len(),
        split.spec.backends.len(),
        "split {name}: subsets repeat"
    );
}

#[test]
fn kubernetes_manifests_parse_and_fit_together() {
    let k8s = objects("k8s");
    // The namespace, labelled for sidecar injection; everything else lives in it.
    assert_eq!(k8s.namespaces.len(), 1);
    let ns = &k8s.namespaces[0];
    assert_eq!(name_of(&ns.metadata), "shop");
    assert_eq!(
        ns.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("weir.dev/inject"))
            .map(String::as_str),
        Some("enabled"),
        "the shop namespace is labelled for injection"
    );
    let namespaced = k8s
        .deployments
        .iter()
        .map(|d| &d.metadata)
        .chain(k8s.services.iter().map(|s| &s.metadata))
        .chain(k8s.claims.iter().map(|c| &c.metadata))
        .chain(k8s.splits.iter().map(|s| &s.metadata))
        .chain(k8s.policies.iter().map(|p| &p.metadata))
        .chain(k8s.autoscalers.iter().map(|a| &a.metadata));
    for meta in namespaced {
        assert_eq!(meta.namespace.as_deref(), Some("shop"), "{}", name_of(meta));
    }

    // Deployments: a selector that matches their own pods, `app` and `version` labels, the
    // service's command line, a named http port and a probe on it, CPU requests (the
    // Autoscaler's Cpu metric is a share of them), and claims that exist.
    let claims: Vec<&str> = k8s.claims.iter().map(|c| name_of(&c.metadata)).collect();
    for d in &k8s.deployments {
        let name = name_of(&d.metadata);
        let spec = d.spec.as_ref().expect("a Deployment has a spec");
        let labels = pod_labels(d);
        let selector = spec.selector.match_labels.clone().unwrap_or_default();
        assert!(
            selects(&selector, &labels),
            "deployment {name}: selector misses its pods"
        );
        assert!(
            labels.contains_key("app") && labels.contains_key("version"),
            "deployment {name}"
        );
        let pod = spec.template.spec.as_ref().expect("a pod spec");
        for c in &pod.containers {
            let args = c.args.clone().unwrap_or_default();
            assert_eq!(
                args.first().map(String::as_str),
                labels.get("app").map(String::as_str),
                "deployment {name}: the container runs its service"
            );
            for flag in ["--listen", "--data", "--outbound"] {
                assert!(args.iter().any(|a| a == flag), "deployment {name}: {flag}");
            }
            let ports = c.ports.clone().unwrap_or_default();
            assert!(
                ports.iter().any(|p| p.name.as_deref() == Some("http")),
                "deployment {name}: a port named http"
            );
            assert!(
                c.readiness_probe.is_some(),
                "deployment {name}: readiness probe"
            );
            let cpu = c
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("cpu"));
            assert!(cpu.is_some(), "deployment {name}: a CPU request");
        }
        for v in pod.volumes.clone().unwrap_or_default() {
            if let Some(claim) = v.persistent_volume_claim {
                assert!(
                    claims.contains(&claim.claim_name.as_str()),
                    "deployment {name}: claim {}",
                    claim.claim_name
                );
            }
        }
    }

    // Services: each selects at least one Deployment's pods, whose containers have the port it
    // targets.
    let service_names: Vec<&str> = k8s.services.iter().map(|s| name_of(&s.metadata)).collect();
    for s in &k8s.services {
        let name = name_of(&s.metadata);
        let spec = s.spec.as_ref().expect("a Service has a spec");
        let selector = spec.selector.clone().unwrap_or_default();
        let backing: Vec<&Deployment> = k8s
            .deployments
            .iter()
            .filter(|d| selects(&selector, &pod_labels(d)))
            .collect();
        assert!(!backing.is_empty(), "service {name} selects no Deployment");
        for port in spec.ports.clone().unwrap_or_default() {
            if let Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(target)) =
                port.target_port
            {
                for d in &backing {
                    let has = d
                        .spec
                        .as_ref()
                        .unwrap()
                        .template
                        .spec
                        .as_ref()
                        .unwrap()
                        .containers
                        .iter()
                        .any(|c| {
                            c.ports
                                .clone()
                                .unwrap_or_default()
                                .iter()
                                .any(|p| p.name.as_deref() == Some(target.as_str()))
                        });
                    assert!(
                        has,
                        "service {name} targets port {target:?}, which {} lacks",
                        name_of(&d.metadata)
                    );
                }
            }
        }
    }
    for expected in ["gateway", "orders", "inventory", "payments", "shipping"] {
        assert!(service_names.contains(&expected), "no Service {expected}");
    }

    // The canary: payments v1 and v2 are two Deployments behind one Service, and each backend
    // of the split selects exactly one of them.
    assert_eq!(k8s.splits.len(), 1);
    let split = &k8s.splits[0];
    check_split(split);
    assert_eq!(split.spec.service, "payments");
    let payments = k8s
        .services
        .iter()
        .find(|s| name_of(&s.metadata) == "payments")
        .unwrap();
    let payments_selector = payments.spec.as_ref().unwrap().selector.clone().unwrap();
    for backend in &split.spec.backends {
        let matching: Vec<&str> = k8s
            .deployments
            .iter()
            .filter(|d| selects(&payments_selector, &pod_labels(d)))
            .filter(|d| selects(&backend.selector, &pod_labels(d)))
            .map(|d| name_of(&d.metadata))
            .collect();
        assert_eq!(
            matching,
            vec![format!("payments-{}", backend.subset).as_str()],
            "backend {} of the split",
            backend.subset
        );
    }

    // Policies and the Autoscaler target what exists.
    for p in &k8s.policies {
        check_policy(p, &service_names);
    }
    assert_eq!(k8s.autoscalers.len(), 1);
    let a = &k8s.autoscalers[0];
    assert_eq!(a.spec.target_ref.name, "orders");
    assert_eq!(a.spec.target_ref.kind, "Deployment");
    assert_eq!(a.spec.target_ref.api_version, "apps/v1");
    assert!(a.spec.min_replicas >= 1 && a.spec.min_replicas <= a.spec.max_replicas);
    assert!(
        k8s.deployments
            .iter()
            .any(|d| name_of(&d.metadata) == "orders"),
        "the Autoscaler's Deployment exists"
    );
}

/// `kubectl apply -f k8s/` applies the files in name order, each file's documents in order:
/// on a fresh cluster every namespaced object must come after its Namespace, or the first pass
/// fails. And nothing may wait on what a fresh cluster lacks: no claim (no StorageClass is
/// needed), no Cpu metric (no metrics-server is needed).
#[test]
fn kubernetes_manifests_apply_in_one_pass_in_file_order() {
    let docs = documents("k8s");
    assert_eq!(
        docs[0].value["kind"], "Namespace",
        "{} comes first: the namespace must",
        docs[0].place
    );
    let mut created: Vec<&str> = Vec::new();
    for doc in &docs {
        let kind = doc.value["kind"].as_str().unwrap_or_default();
        let meta = &doc.value["metadata"];
        if kind == "Namespace" {
            created.push(meta["name"].as_str().unwrap());
            continue;
        }
        let namespace = meta["namespace"].as_str().unwrap_or_default();
        assert!(
            created.contains(&namespace),
            "{} ({kind}) is applied before its namespace {namespace:?}",
            doc.place
        );
        assert_ne!(
            kind, "PersistentVolumeClaim",
            "{}: a claim needs a StorageClass a fresh cluster may lack",
            doc.place
        );
        if kind == "Autoscaler" {
            for metric in doc.value["spec"]["metrics"].as_array().unwrap() {
                assert_ne!(
                    metric["type"], "Cpu",
                    "{}: Cpu needs metrics-server; without it the Autoscaler never scales down",
                    doc.place
                );
            }
        }
    }
}

#[test]
fn local_mesh_parses_and_matches_the_cluster_one() {
    let local = objects("mesh");
    let k8s = objects("k8s");
    assert!(local.deployments.is_empty() && local.services.is_empty());
    let services: Vec<&str> = local
        .local_services
        .iter()
        .map(|s| name_of(&s.metadata))
        .collect();
    for expected in ["gateway", "orders", "inventory", "payments", "shipping"] {
        assert!(services.contains(&expected), "no LocalService {expected}");
    }
    for s in &local.local_services {
        assert_eq!(s.metadata.namespace.as_deref(), Some("shop"));
        assert!(!s.spec.endpoints.is_empty(), "{}", name_of(&s.metadata));
        for e in &s.spec.endpoints {
            let addr: std::net::SocketAddr = e.address.parse().unwrap_or_else(|_| {
                panic!("{}: {:?} is not IP:port", name_of(&s.metadata), e.address)
            });
            assert!(addr.ip().is_loopback());
        }
    }
    for p in &local.policies {
        check_policy(p, &services);
    }
    // The split's backends select exactly one endpoint each.
    assert_eq!(local.splits.len(), 1);
    let split = &local.splits[0];
    check_split(split);
    let payments = local
        .local_services
        .iter()
        .find(|s| name_of(&s.metadata) == "payments")
        .unwrap();
    for backend in &split.spec.backends {
        let n = payments
            .spec
            .endpoints
            .iter()
            .filter(|e| selects(&backend.selector, &e.labels))
            .count();
        assert_eq!(n, 1, "backend {} selects one endpoint", backend.subset);
    }

    // The cluster runs exactly the local mesh's split and policies.
    assert_eq!(local.splits[0].spec, k8s.splits[0].spec);
    let by_name = |ps: &[ResiliencePolicy]| -> BTreeMap<String, weir_crds::ResiliencePolicySpec> {
        ps.iter()
            .map(|p| (name_of(&p.metadata).to_owned(), p.spec.clone()))
            .collect()
    };
    assert_eq!(
        by_name(&local.policies),
        by_name(&k8s.policies),
        "k8s/mesh.yaml and mesh/policies.yaml must hold the same policies"
    );
}

#[test]
fn a_typo_is_caught() {
    let doc = Document {
        place: "test".into(),
        value: serde_json::json!({
            "apiVersion": "weir.dev/v1alpha1",
            "kind": "ResiliencePolicy",
            "metadata": {"name": "x", "namespace": "shop"},
            "spec": {"targetRef": {"kind": "Service", "name": "x"},
                     "retries": {"attempts": 1, "retyOn": ["5xx"]}}
        }),
    };
    let caught = std::panic::catch_unwind(|| typed::<ResiliencePolicy>(&doc));
    let message = *caught
        .expect_err("a misspelt field fails")
        .downcast::<String>()
        .unwrap();
    assert!(message.contains(".spec.retries.retyOn"), "{message}");
}
