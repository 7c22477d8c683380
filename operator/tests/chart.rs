//! The Helm chart: `helm lint`, and `helm template` with several value sets, every rendered
//! object parsed into its k8s-openapi type with unknown fields refused (so a typo fails), and
//! the chart's CRDs identical to the generated ones in `crds/`.

use helm::{chart, find as named, helm, root, strict, template, template_error};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde_json::Value;
use std::path::Path;

mod helm;

/// Every object parses into its type; returns the kinds in order.
fn check(objects: &[Value]) -> Vec<String> {
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
    let Some(objects) = template(&[]) else {
        return;
    };
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
        let Some(objects) = template(values) else {
            return;
        };
        check(&objects);
        if values.contains(&"operator.watchNamespace=shop") {
            // The injection webhook's ClusterRole (get/patch of its one, cluster-scoped,
            // MutatingWebhookConfiguration by name) and the token review's (create on the
            // cluster-scoped tokenreviews) are the only ones a namespaced install has.
            assert!(
                !objects.iter().any(|o| o["kind"] == "ClusterRole"
                    && o["metadata"]["name"] != "weir-operator-webhook"
                    && o["metadata"]["name"] != "weir-operator-token-review"),
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
fn webhook_flags(objects: &[Value]) -> Vec<(String, String)> {
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
    let Some(objects) = template(&[]) else {
        return;
    };
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

    let objects = template(&[
        "proxy.image.repository=registry.local/proxy",
        "proxy.image.tag=p1",
        "init.image.repository=registry.local/init",
        "init.image.tag=i1",
    ])
    .unwrap();
    let flags = webhook_flags(&objects);
    assert!(flags.contains(&("--proxy-image".into(), "registry.local/proxy:p1".into())));
    assert!(flags.contains(&("--init-image".into(), "registry.local/init:i1".into())));
}

#[test]
fn helm_test_keeps_its_pod_for_the_logs() {
    let Some(objects) = template(&[]) else {
        return;
    };
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

#[test]
fn the_config_api_checks_tokens_by_default_with_a_cluster_role_for_token_reviews_alone() {
    for (values, scope) in [
        (&[][..], "ClusterRole"),
        // TokenReview is cluster-scoped: a ClusterRole even when one namespace is watched.
        (&["operator.watchNamespace=shop"][..], "Role"),
    ] {
        let Some(objects) = template(values) else {
            return;
        };
        check(&objects);
        let flags = webhook_flags(&objects);
        assert!(
            flags.contains(&("--config-api-auth".into(), "token-review".into())),
            "{values:?}: {flags:?}"
        );
        let role: ClusterRole = strict(
            named(&objects, "ClusterRole", "weir-operator-token-review").expect("the role"),
            "token-review role",
        );
        let rules = role.rules.unwrap();
        assert_eq!(rules.len(), 1, "{values:?}: tokenreviews alone");
        assert_eq!(
            rules[0].api_groups.as_deref(),
            Some(&["authentication.k8s.io".to_owned()][..])
        );
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["tokenreviews".to_owned()][..])
        );
        assert_eq!(rules[0].verbs, ["create"]);
        let binding: ClusterRoleBinding = strict(
            named(&objects, "ClusterRoleBinding", "weir-operator-token-review")
                .expect("the binding"),
            "token-review binding",
        );
        assert_eq!(binding.role_ref.kind, "ClusterRole");
        assert_eq!(binding.role_ref.name, "weir-operator-token-review");
        let subjects = binding.subjects.unwrap();
        assert_eq!(
            (
                subjects[0].kind.as_str(),
                subjects[0].name.as_str(),
                subjects[0].namespace.as_deref()
            ),
            ("ServiceAccount", "weir-operator", Some("weir-system"))
        );
        // The rest of the operator's rights keep their scope.
        assert!(
            named(&objects, scope, "weir-operator").is_some(),
            "{values:?}"
        );
    }

    let objects = template(&["operator.configApiAuth=none"]).unwrap();
    check(&objects);
    assert!(webhook_flags(&objects).contains(&("--config-api-auth".into(), "none".into())));
    assert!(named(&objects, "ClusterRole", "weir-operator-token-review").is_none());
    assert!(named(&objects, "ClusterRoleBinding", "weir-operator-token-review").is_none());

    let error = template_error(&["operator.configApiAuth=tokens"]).unwrap();
    assert!(error.contains("operator.configApiAuth"), "{error}");
}

#[test]
fn helm_test_runs_the_operator_image_with_a_token_and_pulls_nothing_else() {
    for (auth, token) in [("token-review", true), ("none", false)] {
        let Some(objects) = template(&[
            &format!("operator.configApiAuth={auth}"),
            "operator.image.repository=registry.local/operator",
            "operator.image.tag=t1",
        ]) else {
            return;
        };
        // No public image anywhere: every image is the chart's own.
        let text = serde_json::to_string(&objects).unwrap();
        assert!(!text.contains("busybox"), "{auth}");
        let test = objects
            .iter()
            .find(|o| o["metadata"]["annotations"]["helm.sh/hook"] == "test")
            .expect("a helm test pod");
        let pod: Pod = strict(test, "test pod");
        let spec = pod.spec.unwrap();
        let c = &spec.containers[0];
        assert_eq!(c.image.as_deref(), Some("registry.local/operator:t1"));
        assert_eq!(
            c.command.as_deref().unwrap(),
            ["/weir-operator", "test-connection"]
        );
        let args = c.args.clone().unwrap();
        assert!(args.contains(&"--admin=http://weir-operator.weir-system.svc:15011".to_owned()));
        assert!(
            args.contains(&"--config-api=http://weir-operator.weir-system.svc:15010".to_owned())
        );
        let token_arg = args.iter().find_map(|a| a.strip_prefix("--token-file="));
        assert_eq!(token_arg.is_some(), token, "{auth}: {args:?}");
        if let Some(file) = token_arg {
            let mount = &c.volume_mounts.as_deref().unwrap()[0];
            assert_eq!(file, format!("{}/token", mount.mount_path));
            let volume = spec
                .volumes
                .as_deref()
                .unwrap()
                .iter()
                .find(|v| v.name == mount.name)
                .unwrap();
            let sources = volume
                .projected
                .as_ref()
                .unwrap()
                .sources
                .as_deref()
                .unwrap();
            let projection = sources[0].service_account_token.as_ref().unwrap();
            assert_eq!(projection.audience.as_deref(), Some("weir"));
            assert_eq!(projection.path, "token");
        } else {
            assert!(spec.volumes.is_none(), "{auth}");
        }
    }
}
