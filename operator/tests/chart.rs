//! The Helm chart: `helm lint`, and `helm template` with several value sets, every rendered
//! object parsed into its k8s-openapi type with unknown fields refused (so a typo fails), and
//! the chart's CRDs identical to the generated ones in `crds/`.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn chart() -> PathBuf {
    root().join("charts/weir")
}

fn helm() -> Option<Command> {
    match Command::new("helm").arg("version").output() {
        Ok(o) if o.status.success() => Some(Command::new("helm")),
        _ => {
            eprintln!("SKIPPED: helm is not installed (.ci/run installs it)");
            None
        }
    }
}

/// Parses `value` as `K`, failing on any field the type does not know.
fn strict<K: DeserializeOwned>(value: &serde_yaml::Value, what: &str) -> K {
    let mut unknown = Vec::new();
    let parsed: K =
        serde_ignored::deserialize(value.clone(), |path| unknown.push(path.to_string()))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(unknown.is_empty(), "{what}: unknown fields {unknown:?}");
    parsed
}

fn render(values: &[&str]) -> Vec<serde_yaml::Value> {
    let Some(mut helm) = helm() else {
        return Vec::new();
    };
    helm.args(["template", "weir"])
        .arg(chart())
        .args(["--namespace", "weir-system"]);
    for v in values {
        helm.args(["--set", v]);
    }
    let out = helm.output().unwrap();
    assert!(
        out.status.success(),
        "helm template {values:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_yaml::Value| !v.is_null())
        .collect()
}

/// Every object parses into its type; returns the kinds in order.
fn check(objects: &[serde_yaml::Value]) -> Vec<String> {
    let mut kinds = Vec::new();
    for object in objects {
        let kind = object["kind"].as_str().unwrap().to_owned();
        let what = format!(
            "{kind} {}",
            object["metadata"]["name"].as_str().unwrap_or("?")
        );
        match kind.as_str() {
            "Deployment" => {
                let d: Deployment = strict(object, &what);
                let pod = d.spec.unwrap().template.spec.unwrap();
                let c = &pod.containers[0];
                let sc = c.security_context.as_ref().unwrap();
                assert_eq!(sc.read_only_root_filesystem, Some(true));
                assert_eq!(sc.allow_privilege_escalation, Some(false));
                assert_eq!(
                    sc.capabilities.as_ref().unwrap().drop.as_deref(),
                    Some(&["ALL".to_owned()][..])
                );
                let psc = pod.security_context.unwrap();
                assert_eq!(psc.run_as_non_root, Some(true));
                assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
                assert!(c.liveness_probe.is_some() && c.readiness_probe.is_some());
                assert!(c.resources.is_some());
                assert_eq!(c.args.as_ref().unwrap()[0], "run");
            }
            "Service" => drop(strict::<Service>(object, &what)),
            "ServiceAccount" => drop(strict::<ServiceAccount>(object, &what)),
            "ClusterRole" => drop(strict::<ClusterRole>(object, &what)),
            "ClusterRoleBinding" => drop(strict::<ClusterRoleBinding>(object, &what)),
            "Role" => drop(strict::<Role>(object, &what)),
            "RoleBinding" => drop(strict::<RoleBinding>(object, &what)),
            "PodDisruptionBudget" => drop(strict::<PodDisruptionBudget>(object, &what)),
            "ConfigMap" => {
                let cm: ConfigMap = strict(object, &what);
                let json = &cm.data.unwrap()["weir.json"];
                let dashboard: serde_json::Value =
                    serde_json::from_str(json).expect("the dashboard is JSON");
                assert!(dashboard["panels"].as_array().unwrap().len() >= 7);
            }
            "Pod" => drop(strict::<Pod>(object, &what)),
            "MutatingWebhookConfiguration" => {
                drop(strict::<MutatingWebhookConfiguration>(object, &what))
            }
            "Issuer" | "Certificate" => {
                assert_eq!(object["apiVersion"].as_str(), Some("cert-manager.io/v1"));
            }
            "ServiceMonitor" => {
                assert_eq!(
                    object["apiVersion"].as_str(),
                    Some("monitoring.coreos.com/v1")
                );
                assert_eq!(
                    object["spec"]["endpoints"][0]["port"].as_str(),
                    Some("admin")
                );
            }
            other => panic!("unexpected kind {other} rendered"),
        }
        kinds.push(kind);
    }
    kinds
}

#[test]
fn helm_lint_passes() {
    let Some(mut helm) = helm() else { return };
    let out = helm.arg("lint").arg(chart()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn default_values_render_valid_objects() {
    let objects = render(&[]);
    if objects.is_empty() {
        return;
    }
    let kinds = check(&objects);
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "ConfigMap",
        "Pod",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "{kind} missing from {kinds:?}"
        );
    }
    // Least privilege: exactly the verbs the operator uses, and no wildcard.
    let role = objects.iter().find(|o| o["kind"] == "ClusterRole").unwrap();
    let role: ClusterRole = strict(role, "ClusterRole");
    for rule in role.rules.unwrap() {
        assert!(!rule.verbs.iter().any(|v| v == "*"), "{rule:?}");
        assert!(!rule.resources.unwrap_or_default().iter().any(|r| r == "*"));
    }
}

#[test]
fn other_value_sets_render_valid_objects() {
    for values in [
        &[
            "operator.watchNamespace=shop",
            "operator.leaderElection=false",
        ][..],
        &[
            "metrics.serviceMonitor.enabled=true",
            "grafana.dashboard.enabled=false",
            "operator.pdb.enabled=false",
        ][..],
        &[
            "operator.replicas=1",
            "operator.image.tag=dev",
            "operator.logLevel=debug",
            "metrics.podAnnotations=false",
        ][..],
        &[
            "webhook.certManager.enabled=true",
            "injection.nativeSidecars=false",
        ][..],
        &["injection.enabled=false"][..],
    ] {
        let objects = render(values);
        if objects.is_empty() {
            return;
        }
        check(&objects);
        if values.contains(&"operator.watchNamespace=shop") {
            // The injection webhook's ClusterRole (get/patch of its one, cluster-scoped,
            // MutatingWebhookConfiguration by name) is the only one a namespaced install has.
            assert!(
                !objects.iter().any(|o| o["kind"] == "ClusterRole"
                    && o["metadata"]["name"] != "weir-operator-webhook"),
                "a namespaced install needs no ClusterRole for its watches"
            );
        }
    }
}

#[test]
fn the_chart_ships_the_generated_crds() {
    let generated = root().join("crds");
    let shipped = chart().join("crds");
    let names = |dir: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&generated), names(&shipped));
    for name in names(&generated) {
        assert_eq!(
            std::fs::read_to_string(generated.join(&name)).unwrap(),
            std::fs::read_to_string(shipped.join(&name)).unwrap(),
            "charts/weir/crds/{name} differs from crds/{name}: copy it over"
        );
    }
}

/// The operator's webhook flags in a rendering: `--name=value` pairs.
fn webhook_flags(objects: &[serde_yaml::Value]) -> Vec<(String, String)> {
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("the operator Deployment");
    let d: Deployment = strict(deployment, "Deployment");
    let pod = d.spec.unwrap().template.spec.unwrap();
    pod.containers[0]
        .args
        .clone()
        .unwrap_or_default()
        .iter()
        .filter_map(|a| a.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn the_init_and_proxy_images_are_set_separately() {
    let objects = render(&[]);
    if objects.is_empty() {
        return;
    }
    let flags = webhook_flags(&objects);
    let flag = |name: &str| {
        flags
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} in {flags:?}"))
    };
    // The defaults are what `.ci/images` tags its archives as.
    assert_eq!(
        flag("--proxy-image"),
        "ghcr.io/weir-mesh/weir-sidecar:0.1.0"
    );
    assert_eq!(flag("--init-image"), "ghcr.io/weir-mesh/weir-init:0.1.0");

    let objects = render(&[
        "proxy.image.repository=registry.local/proxy",
        "proxy.image.tag=p1",
        "init.image.repository=registry.local/init",
        "init.image.tag=i1",
    ]);
    let flags = webhook_flags(&objects);
    assert!(flags.contains(&("--proxy-image".into(), "registry.local/proxy:p1".into())));
    assert!(flags.contains(&("--init-image".into(), "registry.local/init:i1".into())));
}

#[test]
fn helm_test_keeps_its_pod_for_the_logs() {
    let objects = render(&[]);
    if objects.is_empty() {
        return;
    }
    let test = objects
        .iter()
        .find(|o| o["metadata"]["annotations"]["helm.sh/hook"] == "test")
        .expect("a helm test pod");
    // `helm test --logs` reads the pod after it succeeded: hook-succeeded would delete it first.
    assert_eq!(
        test["metadata"]["annotations"]["helm.sh/hook-delete-policy"].as_str(),
        Some("before-hook-creation")
    );
}
