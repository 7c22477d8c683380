//! The sidecar injection webhook, end to end: AdmissionReview v1 JSON as the API server sends
//! it goes in, the JSONPatch that comes out is applied to the real pod JSON with the
//! `json-patch` crate and the result parsed back into k8s-openapi's `Pod` (unknown fields
//! refused); the HTTPS server over loopback with a client that trusts only the webhook's CA;
//! the self-managed CA kept in a Secret and the caBundle against a small fake API server; and
//! the chart's webhook objects in both TLS modes.

mod helm;
use helm::find;
use weir_testkit::serve;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Container, Pod, Service};
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use weir_operator::webhook::certs::{self, Plan};
use weir_operator::webhook::secret::{SecretKeeper, Synced};
use weir_operator::webhook::tls::ServingCert;
use weir_operator::webhook::{self, InjectionSettings, admission};

const IMAGE: &str = "ghcr.io/weir-mesh/weir-sidecar:0.1.0";
const INIT_IMAGE: &str = "ghcr.io/weir-mesh/weir-init:0.1.0";
const CONTROL_PLANE: &str = "http://weir-operator.weir-system.svc:15010";
const SERVICE_DNS: &str = "weir-operator-webhook.weir-system.svc";

fn settings(native: bool) -> InjectionSettings {
    let mut settings = InjectionSettings::new(IMAGE, INIT_IMAGE, CONTROL_PLANE);
    settings.native_sidecars = native;
    settings
}

/// Parses `value` as `K`, failing on any field the type does not know (a misspelt field in a
/// patch would otherwise vanish silently).
fn strict<K: DeserializeOwned>(value: &Value) -> K {
    helm::strict(value, value["kind"].as_str().unwrap_or("the object"))
}

/// The webhook's command-line flags, as `weir-operator run` takes them.
#[derive(Debug, clap::Parser)]
struct Cli {
    #[command(flatten)]
    webhook: webhook::WebhookArgs,
}

impl Cli {
    fn parse<T: Into<std::ffi::OsString> + Clone>(args: impl IntoIterator<Item = T>) -> Self {
        clap::Parser::try_parse_from(args).unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// Pods as the API server hands them to a mutating webhook: defaulted, with the service account
// token volume the built-in admission plugins added, no name yet for controller-made pods.

/// `pod` as the API server defaults it before admission: the service account token volume
/// (mounted in the app's containers), every container's termination message, pull policy and
/// resources, the pod's DNS, scheduling, priority and service account fields.
fn defaulted(mut pod: Value) -> Value {
    pod["kind"] = json!("Pod");
    pod["apiVersion"] = json!("v1");
    pod["metadata"]["creationTimestamp"] = Value::Null;
    pod["status"] = json!({});
    let spec = pod["spec"].as_object_mut().unwrap();
    spec.insert("volumes".into(), json!([{"name": "kube-api-access-8x2lq", "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
    ]}}]));
    for (list, app) in [("initContainers", false), ("containers", true)] {
        for container in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            container["resources"] = json!({});
            container["terminationMessagePath"] = json!("/dev/termination-log");
            container["terminationMessagePolicy"] = json!("File");
            container["imagePullPolicy"] = json!("IfNotPresent");
            if app {
                container["volumeMounts"] = json!([{"name": "kube-api-access-8x2lq", "readOnly": true,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]);
            }
        }
    }
    let defaults = json!({
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "serviceAccount": "default",
        "schedulerName": "default-scheduler",
        "tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        ],
        "priority": 0,
        "enableServiceLinks": true,
        "preemptionPolicy": "PreemptLowerPriority"
    });
    for (key, value) in defaults.as_object().unwrap() {
        spec.insert(key.clone(), value.clone());
    }
    pod
}

/// A pod made by the ReplicaSet of Deployment `orders`: no labels naming the app, so the
/// service name comes from the owner.
fn deployment_pod() -> Value {
    defaulted(json!({
        "metadata": {
            "generateName": "orders-7d4b9c6f5-",
            "namespace": "shop",
            "labels": {"pod-template-hash": "7d4b9c6f5", "version": "v1"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "orders-7d4b9c6f5", "uid": "0b6f8a52-5b1e-4bd1-9a8e-3f6f0c2d1a10",
                "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "containers": [{
                "name": "orders",
                "image": "ghcr.io/weir-mesh/shop-orders:0.1.0",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "readinessProbe": {"httpGet": {"path": "/health", "port": "http", "scheme": "HTTP"},
                    "timeoutSeconds": 2, "periodSeconds": 5, "successThreshold": 1, "failureThreshold": 3},
                "livenessProbe": {"tcpSocket": {"port": 8080},
                    "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3},
                "securityContext": {"allowPrivilegeEscalation": false}
            }],
            "restartPolicy": "Always",
            "securityContext": {"runAsNonRoot": true}
        }
    }))
}

/// A pod of Job `migrate`, with an init container of its own and proxy annotations.
fn job_pod() -> Value {
    let job_uid = "5f3c1e0a-8d44-4d0b-9f55-1c2b3a4d5e6f";
    defaulted(json!({
        "metadata": {
            "generateName": "migrate-",
            "namespace": "shop",
            "labels": {
                "batch.kubernetes.io/controller-uid": job_uid,
                "batch.kubernetes.io/job-name": "migrate",
                "controller-uid": job_uid,
                "job-name": "migrate"
            },
            "annotations": {
                "weir.dev/proxy-cpu": "50m",
                "weir.dev/proxy-memory": "32Mi",
                "weir.dev/proxy-cpu-limit": "500m",
                "weir.dev/proxy-memory-limit": "128Mi",
                "weir.dev/proxy-log-level": "weir_sidecar=debug,info",
                "weir.dev/proxy-threads": "2",
                "weir.dev/exclude-outbound-ports": "5432, 6379",
                "weir.dev/exclude-inbound-ports": "22",
                "weir.dev/exclude-outbound-cidrs": "169.254.169.254,10.96.0.0/12"
            },
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "migrate",
                "uid": job_uid, "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "initContainers": [{
                "name": "wait-db",
                "image": "busybox:1.36",
                "command": ["sh", "-c", "until nc -z db 5432; do sleep 1; done"]
            }],
            "containers": [{
                "name": "migrate",
                "image": "ghcr.io/weir-mesh/shop-orders:0.1.0",
                "args": ["migrate"]
            }],
            "restartPolicy": "Never",
            "securityContext": {}
        }
    }))
}

fn with_annotation(mut pod: Value, key: &str, value: &str) -> Value {
    let meta = pod["metadata"].as_object_mut().unwrap();
    let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
    annotations[key] = json!(value);
    pod
}

/// An AdmissionReview v1 as the API server sends it for `kubectl apply` / a controller.
fn review_of(pod: &Value, namespace: &str, uid: &str) -> Value {
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"]["name"].as_str().unwrap_or(""),
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "2a3c6f1e-0000-4000-8000-000000000001",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
            },
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

/// What came back for one review: the response, and the pod with the patch applied.
struct Admitted {
    response: Value,
    pod: Value,
    patched: bool,
}

impl Admitted {
    fn pod(&self) -> Pod {
        strict(&self.pod)
    }
}

fn decode_response(wire: &[u8], request: &Value, pod: &Value) -> Admitted {
    let wire: Value = serde_json::from_slice(wire).expect("the answer is JSON");
    assert_eq!(wire["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(wire["kind"], "AdmissionReview");
    let response = wire["response"].clone();
    assert_eq!(
        response["uid"], request["request"]["uid"],
        "the uid is echoed"
    );
    let mut patched_pod = pod.clone();
    let patched = match response.get("patch") {
        Some(Value::String(_)) => {
            assert_eq!(response["patchType"], "JSONPatch");
            // base64 on the wire, as Go's []byte
            let bytes: ByteString = serde_json::from_value(response["patch"].clone()).unwrap();
            let patch: json_patch::Patch = serde_json::from_slice(&bytes.0).unwrap();
            json_patch::patch(&mut patched_pod, &patch).expect("the patch applies to the pod");
            true
        }
        None => false,
        Some(other) => panic!("patch is not a base64 string: {other}"),
    };
    Admitted {
        response,
        pod: patched_pod,
        patched,
    }
}

fn admit(pod: &Value, settings: &InjectionSettings) -> Admitted {
    let request = review_of(pod, "shop", "705ab4f5-6393-11e8-b7cc-42010a800002");
    let body = serde_json::to_vec(&request).unwrap();
    let review = admission::review(&body, settings).expect("a well-formed review");
    let wire = admission::to_wire(&review).unwrap();
    decode_response(&wire, &request, pod)
}

fn container<'a>(list: &'a [Container], name: &str) -> &'a Container {
    list.iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn args(c: &Container) -> Vec<String> {
    c.args.clone().unwrap_or_default()
}

/// The value after `flag` in `args`.
fn flag<'a>(args: &'a [String], flag: &str) -> &'a str {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    &args[i + 1]
}

/// Asserts each (flag, value) of `want` in `args`, naming the flag that differs.
fn assert_flags(args: &[String], want: &[(&str, &str)]) {
    for (name, value) in want {
        assert_eq!(flag(args, name), *value, "{name} in {args:?}");
    }
}

fn names(list: &[Container]) -> Vec<&str> {
    list.iter().map(|c| c.name.as_str()).collect()
}

/// Asserts `c`'s resources: (`requests` or `limits`, resource, quantity) per row.
fn assert_resources(c: &Container, want: &[(&str, &str, &str)]) {
    for (which, resource, quantity_) in want {
        assert_eq!(
            quantity(c, which, resource).as_deref(),
            Some(*quantity_),
            "{which}.{resource} of {}",
            c.name
        );
    }
}

fn quantity(c: &Container, which: &str, resource: &str) -> Option<String> {
    let resources = c.resources.as_ref()?;
    let map = if which == "requests" {
        resources.requests.as_ref()
    } else {
        resources.limits.as_ref()
    }?;
    map.get(resource).map(|q| q.0.clone())
}

// ---------------------------------------------------------------------------------------------
// The patch.

#[test]
fn a_deployment_pod_gets_a_native_sidecar_and_the_init_step() {
    let admitted = admit(&deployment_pod(), &settings(true));
    assert_eq!(admitted.response["allowed"], true);
    assert!(admitted.patched);
    let pod = admitted.pod();
    let spec = pod.spec.as_ref().unwrap();
    let init = spec.init_containers.as_deref().unwrap();
    // weir-init installs interception, then the native sidecar starts before the app.
    assert_eq!(names(init), ["weir-init", "weir-proxy"]);
    assert_eq!(names(&spec.containers), ["orders"]);
    // The app is untouched but for its probes, which now ask the proxy's admin listener.
    let original = strict::<Pod>(&deployment_pod()).spec.unwrap().containers[0].clone();
    let app = &spec.containers[0];
    assert_eq!(
        Container {
            readiness_probe: None,
            liveness_probe: None,
            ..app.clone()
        },
        Container {
            readiness_probe: None,
            liveness_probe: None,
            ..original.clone()
        }
    );
    for (probe, was, kind) in [
        (&app.readiness_probe, &original.readiness_probe, "readiness"),
        (&app.liveness_probe, &original.liveness_probe, "liveness"),
    ] {
        let (probe, was) = (probe.as_ref().unwrap(), was.as_ref().unwrap());
        let get = probe.http_get.as_ref().unwrap();
        assert_eq!(
            get.path.as_deref(),
            Some(&*format!("/app-health/orders/{kind}"))
        );
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(15020)
        );
        assert!(probe.tcp_socket.is_none());
        // The kubelet's timing stays.
        assert_eq!(
            (
                probe.period_seconds,
                probe.timeout_seconds,
                probe.failure_threshold
            ),
            (
                was.period_seconds,
                was.timeout_seconds,
                was.failure_threshold
            )
        );
    }

    let weir_init = &init[0];
    assert_eq!(
        weir_init.restart_policy, None,
        "weir-init runs to completion"
    );
    let sc = weir_init.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(0));
    assert_eq!(
        sc.run_as_non_root,
        Some(false),
        "overrides the pod's runAsNonRoot"
    );
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.add.as_deref().unwrap(), ["NET_ADMIN", "NET_RAW"]);
    assert_eq!(caps.drop.as_deref().unwrap(), ["ALL"]);
    let init_args = args(weir_init);
    // Its own image (the one with iptables) and an explicit command: nothing depends on an
    // image's entrypoint.
    assert_eq!(weir_init.image.as_deref(), Some(INIT_IMAGE));
    assert_eq!(
        weir_init.command.as_deref().unwrap(),
        ["/weir-sidecar", "init"]
    );
    assert_eq!(flag(&init_args, "--proxy-uid"), "1337");
    let lock = weir_init.env.as_deref().unwrap();
    assert_eq!(
        (lock[0].name.as_str(), lock[0].value.as_deref()),
        ("XTABLES_LOCKFILE", Some("/dev/shm/xtables.lock")),
        "read-only root: the legacy lock goes to tmpfs"
    );
    assert_flags(
        &init_args,
        &[
            ("--admin-port", "15020"),
            ("--inbound-port", "15006"),
            ("--outbound-port", "15001"),
        ],
    );
    // The admin port is left alone by --admin-port, not a second time as an excluded port.
    assert!(!init_args.contains(&"--exclude-inbound-ports".to_owned()));
    assert!(!init_args.contains(&"--exclude-outbound-cidrs".to_owned()));

    let proxy = &init[1];
    assert_eq!(
        proxy.restart_policy.as_deref(),
        Some("Always"),
        "a native sidecar"
    );
    assert_flags(
        &args(proxy),
        &[
            ("--control-plane", CONTROL_PLANE),
            // The Deployment's name, from the ReplicaSet.
            ("--service", "orders"),
            ("--namespace", "$(POD_NAMESPACE)"),
            ("--pod", "$(POD_NAME)"),
            // The first container port.
            ("--app", "127.0.0.1:8080"),
            ("--inbound", "0.0.0.0:15006"),
            ("--admin", "0.0.0.0:15020"),
            ("--threads", "1"),
        ],
    );
    let env = proxy.env.as_deref().unwrap();
    let field_path = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref())
            .and_then(|f| f.field_ref.as_ref())
            .map(|f| f.field_path.clone())
    };
    assert_eq!(field_path("POD_NAME").as_deref(), Some("metadata.name"));
    assert_eq!(
        field_path("POD_NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );
    let ready = proxy
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(ready.path.as_deref(), Some("/ready"));
    assert_eq!(
        ready.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(15020)
    );
    assert!(
        proxy.startup_probe.is_some(),
        "the app waits for the proxy to listen"
    );
    assert_resources(
        proxy,
        &[
            ("requests", "cpu", "10m"),
            ("requests", "memory", "16Mi"),
            ("limits", "memory", "64Mi"),
        ],
    );
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(1337));
    assert_eq!(sc.run_as_group, Some(1337));
    assert_eq!(proxy.image.as_deref(), Some(IMAGE));
    assert_eq!(proxy.command.as_deref().unwrap(), ["/weir-sidecar"]);
    // The original probe targets, for the proxy to forward to.
    let probes = env
        .iter()
        .find(|e| e.name == "WEIR_APP_PROBES")
        .and_then(|e| e.value.clone())
        .expect("WEIR_APP_PROBES");
    assert_eq!(
        serde_json::from_str::<Value>(&probes).unwrap(),
        json!({
            "orders/readiness": {"http": {"port": 8080, "path": "/health"}, "timeoutSeconds": 2},
            "orders/liveness": {"tcp": {"port": 8080}, "timeoutSeconds": 1},
        })
    );
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref().unwrap(),
        ["ALL"]
    );
    assert!(sc.capabilities.as_ref().unwrap().add.is_none());

    let annotations = pod.metadata.annotations.unwrap();
    assert_eq!(annotations["weir.dev/injected"], "true");
    assert_eq!(pod.metadata.owner_references.unwrap().len(), 1);
}

#[test]
fn injecting_an_injected_pod_again_changes_nothing() {
    let first = admit(&deployment_pod(), &settings(true));
    assert!(first.patched);
    let again = admit(&first.pod, &settings(true));
    assert_eq!(again.response["allowed"], true);
    assert!(!again.patched, "{:#}", again.response);
    // Both marks count on their own: the annotation, and a weir-proxy container.
    let marked = with_annotation(deployment_pod(), "weir.dev/injected", "true");
    assert!(!admit(&marked, &settings(true)).patched);
    let plain = admit(&deployment_pod(), &settings(false));
    let mut unmarked = plain.pod.clone();
    unmarked["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove("weir.dev/injected");
    assert!(!admit(&unmarked, &settings(false)).patched);
    // The pure function says the same.
    let pod: Pod = strict(&first.pod);
    let selected = BTreeMap::from([("weir.dev/inject".to_owned(), "enabled".to_owned())]);
    assert_eq!(webhook::inject(&pod, &selected, &settings(true)), Ok(None));
}

#[test]
fn a_job_pod_gets_its_annotations_and_keeps_its_init_container_after_the_proxy() {
    let admitted = admit(&job_pod(), &settings(true));
    assert!(admitted.patched, "{:#}", admitted.response);
    let pod = admitted.pod();
    let spec = pod.spec.as_ref().unwrap();
    let init = spec.init_containers.as_deref().unwrap();
    // The Job's own init container runs with the proxy up; the Job completes because the
    // native sidecar stops after its container.
    assert_eq!(names(init), ["weir-init", "weir-proxy", "wait-db"]);
    assert_eq!(names(&spec.containers), ["migrate"]);
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    let proxy = container(init, "weir-proxy");
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    assert_resources(
        proxy,
        &[
            ("requests", "cpu", "50m"),
            ("requests", "memory", "32Mi"),
            ("limits", "cpu", "500m"),
            ("limits", "memory", "128Mi"),
        ],
    );
    let a = args(proxy);
    assert_eq!(flag(&a, "--service"), "migrate", "the Job's name");
    assert_eq!(flag(&a, "--threads"), "2");
    assert!(
        !a.contains(&"--app".to_owned()),
        "no declared port: the sidecar's default"
    );
    let log = proxy
        .env
        .as_deref()
        .unwrap()
        .iter()
        .find(|e| e.name == "WEIR_LOG")
        .unwrap();
    assert_eq!(log.value.as_deref(), Some("weir_sidecar=debug,info"));
    let init_args = args(container(init, "weir-init"));
    assert_eq!(flag(&init_args, "--exclude-inbound-ports"), "22");
    assert_eq!(flag(&init_args, "--exclude-outbound-ports"), "5432,6379");
    assert_eq!(
        flag(&init_args, "--exclude-outbound-cidrs"),
        "169.254.169.254/32,10.96.0.0/12"
    );
    let annotations = pod.metadata.annotations.unwrap();
    assert_eq!(annotations["weir.dev/injected"], "true");
    assert_eq!(
        annotations["weir.dev/proxy-cpu"], "50m",
        "the pod's own annotations stay"
    );
}

/// The uid a container runs as, as the kubelet determines it (container, else pod).
fn effective_uid(pod: &Pod, c: &Container) -> Option<i64> {
    c.security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
        .or_else(|| pod.spec.as_ref()?.security_context.as_ref()?.run_as_user)
}

#[test]
fn the_proxy_alone_mounts_a_projected_token_for_the_config_api() {
    let no_volumes = {
        let mut pod = deployment_pod();
        pod["spec"].as_object_mut().unwrap().remove("volumes");
        pod["spec"]["containers"][0]
            .as_object_mut()
            .unwrap()
            .remove("volumeMounts");
        pod
    };
    // The app's uid and fsGroup must not matter: an app running as 1337 itself, one with an
    // fsGroup, one as root.
    let mut app_as_1337 = deployment_pod();
    app_as_1337["spec"]["securityContext"] =
        json!({"runAsUser": 1337, "runAsGroup": 1337, "fsGroup": 2000});
    let mut app_as_root = job_pod();
    app_as_root["spec"]["securityContext"] = json!({"runAsUser": 0});
    for (what, pod, native) in [
        ("deployment pod", deployment_pod(), true),
        ("job pod", job_pod(), true),
        ("pod without volumes", no_volumes, true),
        ("app as 1337 with fsGroup", app_as_1337, true),
        ("app as root", app_as_root.clone(), true),
        ("without native sidecars", app_as_root, false),
    ] {
        let before = strict::<Pod>(&pod);
        let pod = admit(&pod, &settings(native)).pod();
        let spec = pod.spec.as_ref().unwrap();
        let volumes = spec.volumes.as_deref().unwrap();
        // The pod's own volumes stay, and ours is added once.
        let kept = before.spec.unwrap().volumes.unwrap_or_default();
        assert_eq!(volumes[..kept.len()], kept[..], "{what}");
        let tokens: Vec<_> = volumes.iter().filter(|v| v.name == "weir-token").collect();
        assert_eq!(tokens.len(), 1, "{what}");
        let projected = tokens[0].projected.as_ref().unwrap();
        let sources = projected.sources.as_deref().unwrap();
        assert_eq!(sources.len(), 1, "{what}: the token alone");
        let token = sources[0].service_account_token.as_ref().unwrap();
        assert_eq!(token.audience.as_deref(), Some("weir"), "{what}");
        assert_eq!(token.expiration_seconds, Some(3600), "{what}");
        assert_eq!(token.path, "token");

        let all: Vec<&Container> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .collect();
        let proxy = all.iter().find(|c| c.name == "weir-proxy").unwrap();
        let mounts = proxy.volume_mounts.as_deref().unwrap();
        assert_eq!(mounts.len(), 1, "{what}");
        assert_eq!(mounts[0].name, "weir-token");
        assert_eq!(mounts[0].read_only, Some(true));
        let file = proxy
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "WEIR_TOKEN_FILE")
            .and_then(|e| e.value.clone())
            .expect("WEIR_TOKEN_FILE");
        assert_eq!(file, format!("{}/token", mounts[0].mount_path), "{what}");
        // Nobody else sees it: not the app, not weir-init.
        for other in all.iter().filter(|c| c.name != "weir-proxy") {
            assert!(
                other
                    .volume_mounts
                    .iter()
                    .flatten()
                    .all(|m| m.name != "weir-token"),
                "{what}: {} mounts the proxy's token",
                other.name
            );
        }

        // Readable by the proxy (1337) whoever owns it. The kubelet writes the file 0600 for
        // its FsUser, set only when every container runs as one uid: here 0 and 1337 always
        // differ, so the volume's defaultMode applies, and it lets others read.
        let uids: std::collections::BTreeSet<Option<i64>> =
            all.iter().map(|c| effective_uid(&pod, c)).collect();
        assert!(
            uids.contains(&Some(0)) && uids.contains(&Some(1337)),
            "{what}: {uids:?}"
        );
        assert_eq!(
            projected.default_mode.map(|m| m & 0o004),
            Some(0o004),
            "{what}"
        );
    }
}

#[test]
fn without_native_sidecars_the_proxy_is_the_first_container() {
    let admitted = admit(&job_pod(), &settings(false));
    let pod = admitted.pod();
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(names(&spec.containers), ["weir-proxy", "migrate"]);
    assert_eq!(spec.containers[0].restart_policy, None);
    assert!(spec.containers[0].startup_probe.is_none());
    // No proxy runs during the init phase: interception is installed last.
    assert_eq!(
        names(spec.init_containers.as_deref().unwrap()),
        ["wait-db", "weir-init"]
    );
    let annotations = pod.metadata.annotations.unwrap();
    assert_eq!(
        annotations["kubectl.kubernetes.io/default-container"], "migrate",
        "kubectl logs/exec still reach the app"
    );

    let deployment = admit(&deployment_pod(), &settings(false)).pod();
    let spec = deployment.spec.unwrap();
    assert_eq!(
        names(spec.init_containers.as_deref().unwrap()),
        ["weir-init"]
    );
    assert_eq!(names(&spec.containers), ["weir-proxy", "orders"]);
    // The probe rewrites were applied to the app before the proxy took index 0.
    let app = &spec.containers[1];
    for probe in [&app.readiness_probe, &app.liveness_probe] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert!(
            get.path
                .as_deref()
                .unwrap()
                .starts_with("/app-health/orders/")
        );
    }
    assert_eq!(
        spec.containers[0]
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/ready"),
        "the proxy's own probes are its own"
    );
}

/// The deployment pod annotated `key: value`, admitted with native sidecars.
fn admit_annotated(key: &str, value: &str) -> Admitted {
    admit(
        &with_annotation(deployment_pod(), key, value),
        &settings(true),
    )
}

/// The message of a denied admission.
fn denial(admitted: &Admitted) -> String {
    assert_eq!(
        admitted.response["allowed"], false,
        "{:#}",
        admitted.response
    );
    assert!(!admitted.patched, "never a half-patched pod");
    admitted.response["status"]["message"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn a_bad_annotation_is_denied_by_name_and_nothing_is_patched() {
    let admitted = admit_annotated("weir.dev/proxy-memory", "lots");
    let message = denial(&admitted);
    assert!(message.contains("weir.dev/proxy-memory"), "{message}");
    assert!(message.contains("\"lots\""), "{message}");
    assert!(message.contains("quantity"), "{message}");
    assert_eq!(admitted.response["status"]["code"], 400);

    // Every bad annotation is named at once.
    let pod = with_annotation(job_pod(), "weir.dev/proxy-threads", "0");
    let pod = with_annotation(pod, "weir.dev/exclude-outbound-cidrs", "10.0.0.1/8");
    let pod = with_annotation(pod, "weir.dev/exclude-inbound-ports", "ssh");
    let message = denial(&admit(&pod, &settings(true)));
    for key in [
        "weir.dev/proxy-threads",
        "weir.dev/exclude-outbound-cidrs",
        "weir.dev/exclude-inbound-ports",
    ] {
        assert!(message.contains(key), "{key} not named in {message}");
    }
    assert!(message.contains("host bits"), "{message}");

    // A request above its limit would be refused by the API server without naming us.
    // And a value the annotation does not take is named with the ones it does.
    for (key, value, said) in [
        ("weir.dev/proxy-memory-limit", "8Mi", "16Mi"),
        ("weir.dev/inject", "yes", "enabled"),
    ] {
        let message = denial(&admit_annotated(key, value));
        assert!(
            message.contains(key) && message.contains(said),
            "{key}: {value}: {message}"
        );
    }
}

#[test]
fn outcomes_are_named_for_the_admissions_metric() {
    let outcome = |pod: &Value| {
        let request = review_of(pod, "shop", "705ab4f5-6393-11e8-b7cc-42010a800003");
        let body = serde_json::to_vec(&request).unwrap();
        admission::outcome_of(&admission::review(&body, &settings(true)).unwrap())
    };
    assert_eq!(outcome(&deployment_pod()), "injected");
    assert_eq!(
        outcome(&with_annotation(
            deployment_pod(),
            "weir.dev/inject",
            "disabled"
        )),
        "skipped"
    );
    assert_eq!(
        outcome(&with_annotation(deployment_pod(), "weir.dev/inject", "yes")),
        "denied"
    );
}

#[test]
fn opted_out_pods_are_allowed_unchanged() {
    let by_annotation = with_annotation(deployment_pod(), "weir.dev/inject", "disabled");
    let admitted = admit(&by_annotation, &settings(true));
    assert_eq!(admitted.response["allowed"], true);
    assert!(!admitted.patched);
    assert_eq!(admitted.pod, by_annotation);
    // Opted out, so its proxy annotations are not judged.
    let with_junk = with_annotation(by_annotation, "weir.dev/proxy-memory", "lots");
    assert_eq!(admit(&with_junk, &settings(true)).response["allowed"], true);

    let mut by_label = deployment_pod();
    by_label["metadata"]["labels"]["weir.dev/inject"] = json!("disabled");
    assert!(!admit(&by_label, &settings(true)).patched);

    // A pod on the node's network is never injected: the rules would apply to the node.
    let mut host = with_annotation(deployment_pod(), "weir.dev/inject", "enabled");
    host["spec"]["hostNetwork"] = json!(true);
    let admitted = admit(&host, &settings(true));
    assert_eq!(
        (&admitted.response["allowed"], admitted.patched),
        (&json!(true), false)
    );
}

#[test]
fn the_decision_follows_namespace_label_pod_annotation_and_pod_label() {
    let settings = settings(true);
    let pod: Pod = strict(&deployment_pod());
    let unlabelled = BTreeMap::new();
    let enabled = BTreeMap::from([("weir.dev/inject".to_owned(), "enabled".to_owned())]);
    assert_eq!(webhook::inject(&pod, &unlabelled, &settings), Ok(None));
    let annotated: Pod = strict(&with_annotation(
        deployment_pod(),
        "weir.dev/inject",
        "enabled",
    ));
    let mut labelled = deployment_pod();
    labelled["metadata"]["labels"]["weir.dev/inject"] = json!("enabled");
    let labelled: Pod = strict(&labelled);
    for (why, pod, namespace_labels) in [
        ("the namespace's label", &pod, &enabled),
        ("the pod's annotation", &annotated, &unlabelled),
        ("the pod's label", &labelled, &unlabelled),
    ] {
        let injected = webhook::inject(pod, namespace_labels, &settings).unwrap();
        assert!(injected.is_some(), "not injected by {why}");
    }
    // app.kubernetes.io/name wins over the owner for the service name.
    let mut named = deployment_pod();
    named["metadata"]["labels"]["app.kubernetes.io/name"] = json!("orders-api");
    let pod = admit(&named, &settings).pod();
    let proxy = container(
        pod.spec
            .as_ref()
            .unwrap()
            .init_containers
            .as_deref()
            .unwrap(),
        "weir-proxy",
    );
    assert_eq!(flag(&args(proxy), "--service"), "orders-api");
    // An unknown weir.dev/proxy-* annotation is a warning, not a denial.
    let typo = with_annotation(deployment_pod(), "weir.dev/proxy-mem", "1Gi");
    let admitted = admit(&typo, &settings);
    assert!(admitted.patched);
    let warnings = admitted.response["warnings"].as_array().unwrap();
    assert!(warnings[0].as_str().unwrap().contains("weir.dev/proxy-mem"));
}

#[test]
fn malformed_or_foreign_requests() {
    let settings = settings(true);
    let err = admission::review(b"not json", &settings).unwrap_err();
    assert!(err.contains("AdmissionReview"), "{err}");
    let err = admission::review(
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
        &settings,
    )
    .unwrap_err();
    assert!(err.contains("no request"), "{err}");
    let mut v1beta1 = review_of(&deployment_pod(), "shop", "u1");
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let err = admission::review(&serde_json::to_vec(&v1beta1).unwrap(), &settings).unwrap_err();
    assert!(err.contains("admission.k8s.io/v1"), "{err}");
    // A truncated body, a request with a wrong field type: errors, never a panic.
    let full = serde_json::to_vec(&review_of(&deployment_pod(), "shop", "u2")).unwrap();
    assert!(admission::review(&full[..full.len() / 2], &settings).is_err());
    let mut wrong = review_of(&deployment_pod(), "shop", "u3");
    wrong["request"]["operation"] = json!(17);
    assert!(admission::review(&serde_json::to_vec(&wrong).unwrap(), &settings).is_err());

    // An UPDATE, or another kind, is allowed untouched.
    let mut update = review_of(&deployment_pod(), "shop", "u4");
    update["request"]["operation"] = json!("UPDATE");
    update["request"]["oldObject"] = deployment_pod();
    let review = admission::review(&serde_json::to_vec(&update).unwrap(), &settings).unwrap();
    let response = review.response.unwrap();
    assert!(response.allowed && response.patch.is_none());
    // A pod object that does not parse as a Pod is denied with the reason.
    let mut broken = review_of(&deployment_pod(), "shop", "u5");
    broken["request"]["object"]["spec"]["containers"] = json!("orders");
    let review = admission::review(&serde_json::to_vec(&broken).unwrap(), &settings).unwrap();
    let response = review.response.unwrap();
    assert!(!response.allowed);
    assert!(
        response.result.message.contains("does not parse"),
        "{}",
        response.result.message
    );
}

// ---------------------------------------------------------------------------------------------
// HTTPS over loopback.

/// The client's clock: the tests that travel in time verify certificates at that time.
#[derive(Debug)]
struct Clock(SystemTime);

impl rustls::time_provider::TimeProvider for Clock {
    fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
        Some(rustls::pki_types::UnixTime::since_unix_epoch(
            self.0.duration_since(std::time::UNIX_EPOCH).ok()?,
        ))
    }
}

fn client_config(ca_pem: &str, at: SystemTime) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_details(
        Arc::new(rustls::crypto::ring::default_provider()),
        Arc::new(Clock(at)),
    )
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(config)
}

/// The API server's side of the webhook: HTTPS to `addr`, verifying the server as
/// `SERVICE_DNS` against `ca` (PEM), its clock at `at`.
struct ApiServer<'a> {
    at: SystemTime,
    addr: SocketAddr,
    ca: &'a str,
}

impl<'a> ApiServer<'a> {
    fn now(addr: SocketAddr, ca: &'a str) -> Self {
        Self::at(SystemTime::now(), addr, ca)
    }

    fn at(at: SystemTime, addr: SocketAddr, ca: &'a str) -> Self {
        Self { at, addr, ca }
    }

    /// `POST /inject` with `body`.
    async fn inject(&self, body: Vec<u8>) -> Result<(StatusCode, Bytes), String> {
        self.call(Method::POST, "/inject", body).await
    }

    /// One request.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), String> {
        let (at, addr, ca_pem) = (self.at, self.addr, self.ca);
        let connector = tokio_rustls::TlsConnector::from(client_config(ca_pem, at));
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from(SERVICE_DNS).unwrap();
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, SERVICE_DNS)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Ok((status, body))
    }
}

fn dns_names() -> Vec<String> {
    SecretKeeper::dns_names_for("weir-operator-webhook", "weir-system")
}

/// A serving certificate for the webhook's Service, of a CA of its own.
fn test_pair() -> certs::Bundle {
    certs::issue(
        &Plan::Ca("test".into()),
        None,
        SystemTime::now(),
        &dns_names(),
    )
    .unwrap()
}

/// An admission request for [`deployment_pod`] with this `uid`, and its body.
fn review(uid: &str) -> (Value, Vec<u8>) {
    let request = review_of(&deployment_pod(), "shop", uid);
    let body = serde_json::to_vec(&request).unwrap();
    (request, body)
}

/// `webhook::serve` on a loopback port with `cert`, counting admissions in `metrics` if given.
struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl Server {
    async fn start(
        cert: &Arc<ServingCert>,
        metrics: Option<&weir_operator::metrics::Metrics>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        let serve = webhook::serve(
            listener,
            cert.clone(),
            Arc::new(settings(true)),
            metrics.map(|m| m.webhook_admissions.clone()),
            stopped,
        );
        let task = tokio::spawn(async move { serve.await.map_err(|e| e.to_string()) });
        Self { addr, stop, task }
    }
}

/// Asks `task` to stop and waits (10 s at most) for it to end without error.
async fn stop_cleanly<E: std::fmt::Debug>(
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), E>>,
) {
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("it stops on shutdown")
        .unwrap()
        .unwrap();
}

/// `webhook::run` as `weir-operator run` calls it, with these flags: whether it counts as
/// serving, its stop signal, its task.
fn start_run(
    api: &FakeApi,
    args: &[String],
) -> (
    Arc<std::sync::atomic::AtomicBool>,
    watch::Sender<bool>,
    tokio::task::JoinHandle<Result<(), String>>,
) {
    let cli = Cli::parse(std::iter::once("weir-operator".to_owned()).chain(args.iter().cloned()));
    let (stop, stopped) = watch::channel(false);
    let serving = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let run = webhook::run(
        api.client(),
        cli.webhook,
        None,
        serving.clone(),
        None,
        stopped,
    );
    let task = tokio::spawn(async move { run.await.map_err(|e| e.to_string()) });
    (serving, stop, task)
}

#[tokio::test]
async fn the_webhook_serves_https_and_switches_certificates_without_a_restart() {
    let first = test_pair();
    let cert = ServingCert::new();
    cert.set_pem(first.tls_crt.as_bytes(), first.tls_key.as_bytes())
        .unwrap();
    let metrics = weir_operator::metrics::Metrics::new();
    let server = Server::start(&cert, Some(&metrics)).await;
    let addr = server.addr;

    let (request, body) = review("d2b7c8a4-0000-4000-8000-00000000000a");
    let trusting_first = ApiServer::now(addr, &first.ca_crt);
    let (status, answer) = trusting_first.inject(body.clone()).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let admitted = decode_response(&answer, &request, &deployment_pod());
    assert!(admitted.patched);
    assert_eq!(
        names(
            admitted
                .pod()
                .spec
                .unwrap()
                .init_containers
                .as_deref()
                .unwrap()
        ),
        ["weir-init", "weir-proxy"]
    );

    let (status, answer) = trusting_first.inject(b"{\"kind\":".to_vec()).await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&answer).contains("AdmissionReview"));
    let (status, _) = trusting_first
        .call(Method::GET, "/inject", Vec::new())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = trusting_first
        .call(Method::POST, "/mutate", body.clone())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A client that trusts another CA refuses the server.
    let other = test_pair();
    let trusting_other = ApiServer::now(addr, &other.ca_crt);
    let refused = trusting_other.inject(body.clone()).await;
    assert!(refused.unwrap_err().contains("TLS"));
    // Swap in the other certificate: the next connection gets it, no restart.
    assert!(
        cert.set_pem(other.tls_crt.as_bytes(), other.tls_key.as_bytes())
            .unwrap()
    );
    let (status, _) = trusting_other.inject(body.clone()).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(trusting_first.inject(body).await.is_err());
    // A pair that does not fit keeps the current one serving.
    assert!(
        cert.set_pem(first.tls_crt.as_bytes(), other.tls_key.as_bytes())
            .is_err()
    );
    assert_eq!(cert.cert_pem().unwrap(), other.tls_crt.as_bytes());
    // Two pods injected, one malformed body; wrong method or path is no admission request.
    let counted = |result: &str| {
        metrics
            .webhook_admissions
            .with_label_values(&[result])
            .get()
    };
    assert_eq!(counted("injected"), 2);
    assert_eq!(counted("malformed"), 1);
    assert_eq!(counted("skipped") + counted("denied"), 0);
    let text = String::from_utf8(metrics.encode()).unwrap();
    assert!(
        text.contains("weir_webhook_admissions_total{result=\"injected\"} 2"),
        "{text}"
    );

    stop_cleanly(server.stop, server.task).await;
}

#[tokio::test]
async fn readiness_waits_for_a_certificate() {
    let cert = ServingCert::new();
    let mut loaded = cert.loaded();
    assert!(!*loaded.borrow(), "nothing to serve yet");
    let pair = test_pair();
    cert.set_pem(pair.tls_crt.as_bytes(), pair.tls_key.as_bytes())
        .unwrap();
    tokio::time::timeout(Duration::from_secs(1), loaded.wait_for(|l| *l))
        .await
        .expect("the first certificate is announced")
        .unwrap();

    // Without --webhook-listen there is nothing to wait for.
    let api = FakeApi::start().await;
    let (serving, _stop, task) = start_run(&api, &[]);
    task.await.unwrap().unwrap();
    assert!(serving.load(std::sync::atomic::Ordering::Acquire));
}

#[tokio::test]
async fn a_mounted_certificate_is_reloaded_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let first = test_pair();
    std::fs::write(dir.join("tls.crt"), &first.tls_crt).unwrap();
    std::fs::write(dir.join("tls.key"), &first.tls_key).unwrap();
    let cert = ServingCert::new();
    assert!(webhook::tls::load_dir(dir, &cert).unwrap());
    assert!(!webhook::tls::load_dir(dir, &cert).unwrap(), "unchanged");
    let second = test_pair();
    std::fs::write(dir.join("tls.crt"), &second.tls_crt).unwrap();
    // Half-written (the key not yet swapped): refused, the first keeps serving.
    assert!(webhook::tls::load_dir(dir, &cert).is_err());
    assert_eq!(cert.cert_pem().unwrap(), first.tls_crt.as_bytes());
    std::fs::write(dir.join("tls.key"), &second.tls_key).unwrap();
    assert!(webhook::tls::load_dir(dir, &cert).unwrap());
    assert_eq!(cert.cert_pem().unwrap(), second.tls_crt.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// The self-managed CA against a small fake API server: Secrets (get, create, replace with the
// resourceVersion precondition) and the MutatingWebhookConfiguration (get, JSON patch).

#[derive(Debug, Default)]
struct FakeState {
    rv: u64,
    secrets: BTreeMap<String, Value>,
    configs: BTreeMap<String, Value>,
    writes: Vec<String>,
}

#[derive(Debug, Clone)]
struct FakeApi {
    state: Arc<Mutex<FakeState>>,
    url: String,
}

fn status(code: u16, reason: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": reason, "reason": reason, "code": code}),
    )
}

impl FakeApi {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let api = FakeApi {
            state: Arc::default(),
            url,
        };
        let served = api.clone();
        serve(listener, move |request| {
            let api = served.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let (code, value) = api.serve(&parts.method, parts.uri.path(), body);
                let mut response = http::Response::new(Full::new(Bytes::from(
                    serde_json::to_vec(&value).unwrap(),
                )));
                *response.status_mut() = StatusCode::from_u16(code).unwrap();
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                response
            }
        });
        api
    }

    fn client(&self) -> kube::Client {
        kube::Client::try_from(kube::Config::new(self.url.parse().unwrap())).unwrap()
    }

    fn serve(&self, method: &Method, path: &str, body: Value) -> (u16, Value) {
        const SECRETS: &str = "/api/v1/namespaces/weir-system/secrets";
        const CONFIGS: &str =
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/";
        if path == "/version" {
            return (
                200,
                json!({"major": "1", "minor": "30", "gitVersion": "v1.30.2",
                       "gitCommit": "3968350", "gitTreeState": "clean",
                       "buildDate": "2024-06-11T20:20:18Z", "goVersion": "go1.22.4",
                       "compiler": "gc", "platform": "linux/amd64"}),
            );
        }
        let mut state = self.state.lock();
        if let Some(name) = path.strip_prefix(CONFIGS) {
            let Some(config) = state.configs.get(name).cloned() else {
                return status(404, "NotFound");
            };
            return match *method {
                Method::GET => (200, config),
                Method::PATCH => {
                    let patch: json_patch::Patch = serde_json::from_value(body).unwrap();
                    let mut patched = config;
                    if json_patch::patch(&mut patched, &patch).is_err() {
                        return status(422, "Invalid");
                    }
                    state.rv += 1;
                    patched["metadata"]["resourceVersion"] = json!(state.rv.to_string());
                    state.writes.push(format!("PATCH config {name}"));
                    state.configs.insert(name.to_owned(), patched.clone());
                    (200, patched)
                }
                _ => status(405, "MethodNotAllowed"),
            };
        }
        if path == SECRETS && *method == Method::POST {
            let name = body["metadata"]["name"].as_str().unwrap().to_owned();
            if state.secrets.contains_key(&name) {
                return status(409, "AlreadyExists");
            }
            state.rv += 1;
            let mut secret = body;
            secret["metadata"]["resourceVersion"] = json!(state.rv.to_string());
            state.writes.push(format!("POST secret {name}"));
            state.secrets.insert(name, secret.clone());
            return (201, secret);
        }
        if let Some(name) = path.strip_prefix(SECRETS).and_then(|p| p.strip_prefix('/')) {
            return match *method {
                Method::GET => match state.secrets.get(name) {
                    Some(secret) => (200, secret.clone()),
                    None => status(404, "NotFound"),
                },
                Method::PUT => {
                    let Some(current) = state.secrets.get(name) else {
                        return status(404, "NotFound");
                    };
                    if current["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"]
                    {
                        return status(409, "Conflict");
                    }
                    state.rv += 1;
                    let mut secret = body;
                    secret["metadata"]["resourceVersion"] = json!(state.rv.to_string());
                    state.writes.push(format!("PUT secret {name}"));
                    state.secrets.insert(name.to_owned(), secret.clone());
                    (200, secret)
                }
                _ => status(405, "MethodNotAllowed"),
            };
        }
        status(404, "NotFound")
    }

    fn secret_ca(&self) -> String {
        let secret = self.state.lock().secrets["weir-webhook-tls"].clone();
        let ca: ByteString = serde_json::from_value(secret["data"]["ca.crt"].clone()).unwrap();
        String::from_utf8(ca.0).unwrap()
    }

    fn ca_bundles(&self) -> Vec<Option<String>> {
        let config = self.state.lock().configs["weir-sidecar-injector"].clone();
        let config: MutatingWebhookConfiguration = serde_json::from_value(config).unwrap();
        config
            .webhooks
            .unwrap()
            .into_iter()
            .map(|w| {
                w.client_config
                    .ca_bundle
                    .map(|b| String::from_utf8(b.0).unwrap())
            })
            .collect()
    }
}

fn keeper(api: &FakeApi, leader: Option<watch::Receiver<bool>>) -> SecretKeeper {
    SecretKeeper {
        client: api.client(),
        namespace: "weir-system".to_owned(),
        secret: "weir-webhook-tls".to_owned(),
        webhook_config: "weir-sidecar-injector".to_owned(),
        dns_names: dns_names(),
        leader,
    }
}

fn seed_config(api: &FakeApi) {
    let entry = |name: &str| {
        json!({"name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None",
               "clientConfig": {"service": {"name": "weir-operator-webhook",
                   "namespace": "weir-system", "path": "/inject", "port": 443}}})
    };
    api.state.lock().configs.insert(
        "weir-sidecar-injector".to_owned(),
        json!({"apiVersion": "admissionregistration.k8s.io/v1",
               "kind": "MutatingWebhookConfiguration",
               "metadata": {"name": "weir-sidecar-injector", "resourceVersion": "1"},
               "webhooks": [entry("namespace.inject.weir.dev"), entry("pod.inject.weir.dev")]}),
    );
}

#[tokio::test]
async fn replicas_share_one_ca_kept_in_a_secret_and_in_the_ca_bundle() {
    let api = FakeApi::start().await;
    seed_config(&api);
    let now = SystemTime::now();
    let (a, b) = (keeper(&api, None), keeper(&api, None));
    let (cert_a, cert_b) = (ServingCert::new(), ServingCert::new());
    // Two replicas start together: one creates the Secret, the other serves what it wrote.
    let (synced_a, synced_b) = tokio::join!(a.sync(&cert_a, now), b.sync(&cert_b, now));
    let outcomes = [synced_a.unwrap(), synced_b.unwrap()];
    assert_eq!(
        outcomes
            .iter()
            .filter(|s| matches!(s, Synced::Issued(_)))
            .count(),
        1,
        "{outcomes:?}"
    );
    let ca = api.secret_ca();
    assert_eq!(
        cert_a.cert_pem(),
        cert_b.cert_pem(),
        "both serve the same certificate"
    );
    assert_eq!(api.ca_bundles(), vec![Some(ca.clone()), Some(ca.clone())]);

    // The API server's view: trust the caBundle, call the Service's name, over HTTPS.
    let server = Server::start(&cert_b, None).await;
    let addr = server.addr;
    let bundle = api.ca_bundles()[0].clone().unwrap();
    let (_, body) = review("c0ffee00-0000-4000-8000-000000000001");
    let (status, _) = ApiServer::now(addr, &bundle)
        .inject(body.clone())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);

    // A sync that finds everything in order writes nothing.
    let writes = api.state.lock().writes.len();
    assert!(matches!(
        a.sync(&cert_a, now).await.unwrap(),
        Synced::Kept { .. }
    ));
    assert_eq!(api.state.lock().writes.len(), writes);

    // 250 days on, the serving certificate is renewed under the same CA; the other replica
    // picks it up at its next read.
    let before = cert_b.cert_pem().unwrap();
    let later = now + Duration::from_secs(250 * 24 * 3600);
    assert!(matches!(
        a.sync(&cert_a, later).await.unwrap(),
        Synced::Issued(_)
    ));
    assert_eq!(api.secret_ca(), ca, "same CA");
    assert!(matches!(
        b.sync(&cert_b, later).await.unwrap(),
        Synced::Kept { .. }
    ));
    assert_eq!(cert_a.cert_pem(), cert_b.cert_pem());
    assert_ne!(
        cert_b.cert_pem().unwrap(),
        before,
        "b serves the renewed certificate"
    );

    // Someone blanks the caBundle (an upgrade applying the bare manifest): the next sync fixes it.
    api.state
        .lock()
        .configs
        .get_mut("weir-sidecar-injector")
        .unwrap()["webhooks"][1]["clientConfig"]
        .as_object_mut()
        .unwrap()
        .remove("caBundle");
    b.sync(&cert_b, later).await.unwrap();
    assert_eq!(api.ca_bundles()[1], Some(ca.clone()));

    // At 2/3 of the CA's life a new CA comes; the old one stays in the bundle meanwhile, so a
    // replica still serving a certificate of the old CA stays trusted.
    // Shortly before that, b serves a fresh certificate of the old CA.
    let before_rotation = now + Duration::from_secs(2400 * 24 * 3600);
    assert!(matches!(
        a.sync(&cert_a, before_rotation).await.unwrap(),
        Synced::Issued(_)
    ));
    b.sync(&cert_b, before_rotation).await.unwrap();
    assert_eq!(api.secret_ca(), ca, "still the first CA");
    let much_later = now + Duration::from_secs(2500 * 24 * 3600);
    assert!(
        matches!(a.sync(&cert_a, much_later).await.unwrap(), Synced::Issued(ref why) if why.contains("CA"))
    );
    let rotated = api.secret_ca();
    assert_ne!(rotated, ca);
    assert!(
        rotated.ends_with(&ca),
        "new CA first, then the previous one"
    );
    assert_eq!(
        api.ca_bundles(),
        vec![Some(rotated.clone()), Some(rotated.clone())]
    );
    let (status, _) = ApiServer::at(much_later, addr, &rotated)
        .inject(body.clone())
        .await
        .unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "b's certificate of the old CA is still trusted"
    );
    b.sync(&cert_b, much_later).await.unwrap();
    let new_ca_only = rotated.strip_suffix(&ca).unwrap();
    let (status, _) = ApiServer::at(much_later, addr, new_ca_only)
        .inject(body)
        .await
        .unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "b now serves a certificate of the new CA"
    );

    stop_cleanly(server.stop, server.task).await;
}

/// `webhook::run` as `weir-operator run` calls it: flags in, native sidecars from the API
/// server's version, its own CA stored and patched in, HTTPS served with it.
#[tokio::test]
async fn run_wires_flags_version_certificates_and_server_together() {
    let api = FakeApi::start().await;
    seed_config(&api);
    // A free port: bind, read it, release it for run() to bind.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (serving, stop, task) = start_run(
        &api,
        &[
            format!("--webhook-listen={addr}"),
            "--webhook-namespace=weir-system".to_owned(),
            "--native-sidecars=auto".to_owned(),
            "--proxy-memory=24Mi".to_owned(),
        ],
    );
    let (request, body) = review("a11ce000-0000-4000-8000-000000000001");
    let mut answer = None;
    for _ in 0..100 {
        if let Some(bundle) = api.ca_bundles()[0].clone()
            && let Ok(reply) = ApiServer::now(addr, &bundle).inject(body.clone()).await
        {
            answer = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, answer) = answer.expect("the webhook serves with its own CA");
    assert_eq!(status, StatusCode::OK);
    assert!(
        serving.load(std::sync::atomic::Ordering::Acquire),
        "serving a certificate makes the webhook count as ready"
    );
    let pod = decode_response(&answer, &request, &deployment_pod()).pod();
    let init = pod.spec.unwrap().init_containers.unwrap();
    // The API server says 1.30: a native sidecar, with the flag's default memory.
    let proxy = container(&init, "weir-proxy");
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    assert_resources(proxy, &[("requests", "memory", "24Mi")]);
    assert_eq!(
        flag(&args(proxy), "--control-plane"),
        "http://weir-operator.weir-system.svc:15010"
    );
    stop_cleanly(stop, task).await;
}

#[tokio::test]
async fn only_the_leader_writes_when_a_leadership_channel_is_given() {
    let api = FakeApi::start().await;
    seed_config(&api);
    let (leads, leadership) = watch::channel(false);
    let follower = keeper(&api, Some(leadership));
    let cert = ServingCert::new();
    let synced = follower.sync(&cert, SystemTime::now()).await.unwrap();
    assert!(matches!(synced, Synced::WaitingForLeader(_)), "{synced:?}");
    assert!(api.state.lock().writes.is_empty());
    assert!(!cert.is_loaded());
    leads.send_replace(true);
    assert!(matches!(
        follower.sync(&cert, SystemTime::now()).await.unwrap(),
        Synced::Issued(_)
    ));
    assert!(cert.is_loaded());
    assert_eq!(api.ca_bundles()[0], Some(api.secret_ca()));
}

// ---------------------------------------------------------------------------------------------
// The chart.

/// The chart's MutatingWebhookConfiguration in `objects`.
fn injector(objects: &[Value]) -> MutatingWebhookConfiguration {
    strict(
        find(
            objects,
            "MutatingWebhookConfiguration",
            "weir-sidecar-injector",
        )
        .unwrap(),
    )
}

fn expressions(
    selector: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> Vec<(String, String, Vec<String>)> {
    selector
        .as_ref()
        .and_then(|s| s.match_expressions.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.key, e.operator, e.values.unwrap_or_default()))
        .collect()
}

#[test]
fn the_chart_renders_the_webhook_with_its_own_ca() {
    let Some(objects) = helm::template(&[]) else {
        return;
    };
    let config: MutatingWebhookConfiguration = injector(&objects);
    assert!(
        config
            .metadata
            .annotations
            .is_none_or(|a| !a.contains_key("cert-manager.io/inject-ca-from"))
    );
    let webhooks = config.webhooks.unwrap();
    assert_eq!(
        webhooks.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(),
        ["namespace.inject.weir.dev", "pod.inject.weir.dev"]
    );
    let service: Service = strict(find(&objects, "Service", "weir-operator-webhook").unwrap());
    let port = &service.spec.unwrap().ports.unwrap()[0];
    assert_eq!(port.port, 443);
    for w in &webhooks {
        assert_eq!(w.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(w.side_effects, "None");
        assert_eq!(w.admission_review_versions, ["v1"]);
        assert_eq!(w.timeout_seconds, Some(5));
        let target = w.client_config.service.as_ref().unwrap();
        assert_eq!(
            (
                target.name.as_str(),
                target.namespace.as_str(),
                target.path.as_deref(),
                target.port
            ),
            (
                "weir-operator-webhook",
                "weir-system",
                Some("/inject"),
                Some(443)
            )
        );
        let rule = &w.rules.as_ref().unwrap()[0];
        assert_eq!(rule.operations.as_deref().unwrap(), ["CREATE"]);
        assert_eq!(rule.resources.as_deref().unwrap(), ["pods"]);
        let excluded = expressions(&w.namespace_selector);
        let names = excluded
            .iter()
            .find(|(k, op, _)| k == "kubernetes.io/metadata.name" && op == "NotIn")
            .map(|(_, _, v)| v.clone())
            .unwrap();
        assert!(
            names.contains(&"weir-system".to_owned()) && names.contains(&"kube-system".to_owned())
        );
    }
    assert!(expressions(&webhooks[0].namespace_selector).contains(&(
        "weir.dev/inject".into(),
        "In".into(),
        vec!["enabled".into()]
    )));
    assert!(expressions(&webhooks[0].object_selector).contains(&(
        "weir.dev/inject".into(),
        "NotIn".into(),
        vec!["disabled".into()]
    )));
    assert!(expressions(&webhooks[1].namespace_selector).contains(&(
        "weir.dev/inject".into(),
        "NotIn".into(),
        vec!["enabled".into(), "disabled".into()]
    )));
    assert_eq!(
        webhooks[1]
            .object_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["weir.dev/inject"],
        "enabled"
    );
    // The operator may touch exactly its configuration and its Secret.
    let role: ClusterRole = strict(find(&objects, "ClusterRole", "weir-operator-webhook").unwrap());
    let rule = &role.rules.unwrap()[0];
    assert_eq!(
        rule.resource_names.as_deref().unwrap(),
        ["weir-sidecar-injector"]
    );
    assert_eq!(rule.verbs, ["get", "patch"]);
    let role: Role = strict(find(&objects, "Role", "weir-operator-webhook").unwrap());
    let rules = role.rules.unwrap();
    assert_eq!(
        rules[0].resource_names.as_deref().unwrap(),
        ["weir-webhook-tls"]
    );
    assert!(
        !objects
            .iter()
            .any(|o| o["apiVersion"] == "cert-manager.io/v1")
    );
}

#[test]
fn the_chart_renders_the_webhook_with_cert_manager() {
    let Some(objects) = helm::template(&[
        "webhook.certManager.enabled=true",
        "webhook.failurePolicy=Ignore",
    ]) else {
        return;
    };
    let config: MutatingWebhookConfiguration = injector(&objects);
    let annotations = config.metadata.annotations.unwrap();
    assert_eq!(
        annotations["cert-manager.io/inject-ca-from"],
        "weir-system/weir-webhook"
    );
    for w in config.webhooks.unwrap() {
        assert_eq!(w.failure_policy.as_deref(), Some("Ignore"));
        assert!(
            w.client_config.ca_bundle.is_none(),
            "cert-manager's injector fills it"
        );
    }
    let certificate = find(&objects, "Certificate", "weir-webhook").unwrap();
    assert_eq!(certificate["spec"]["secretName"], "weir-webhook-tls");
    let dns: Vec<String> = serde_json::from_value(certificate["spec"]["dnsNames"].clone()).unwrap();
    assert!(dns.contains(&SERVICE_DNS.to_owned()));
    assert_eq!(certificate["spec"]["issuerRef"]["name"], "weir-webhook-ca");
    assert!(find(&objects, "Issuer", "weir-selfsigned").is_some());
    assert!(find(&objects, "Issuer", "weir-webhook-ca").is_some());
    assert_eq!(
        find(&objects, "Certificate", "weir-webhook-ca").unwrap()["spec"]["isCA"],
        true
    );
    // No Secret writes or caBundle patches to allow in this mode.
    assert!(find(&objects, "ClusterRole", "weir-operator-webhook").is_none());
    assert!(find(&objects, "Role", "weir-operator-webhook").is_none());

    // An issuer of the user's own replaces the chart's self-signed CA.
    let Some(objects) = helm::template(&[
        "webhook.certManager.enabled=true",
        "webhook.certManager.issuerRef.name=corp-ca",
        "webhook.certManager.issuerRef.kind=ClusterIssuer",
    ]) else {
        return;
    };
    let certificate = find(&objects, "Certificate", "weir-webhook").unwrap();
    assert_eq!(
        certificate["spec"]["issuerRef"],
        json!({"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
    assert!(find(&objects, "Issuer", "weir-selfsigned").is_none());
}

#[test]
fn the_chart_can_leave_injection_out_and_follows_a_watched_namespace() {
    let Some(objects) = helm::template(&["injection.enabled=false"]) else {
        return;
    };
    assert!(
        !objects
            .iter()
            .any(|o| o["kind"] == "MutatingWebhookConfiguration")
    );
    assert!(find(&objects, "Service", "weir-operator-webhook").is_none());
    assert!(find(&objects, "ClusterRole", "weir-operator-webhook").is_none());

    let Some(objects) = helm::template(&["operator.watchNamespace=shop"]) else {
        return;
    };
    let config: MutatingWebhookConfiguration = injector(&objects);
    for w in config.webhooks.unwrap() {
        assert!(expressions(&w.namespace_selector).contains(&(
            "kubernetes.io/metadata.name".into(),
            "In".into(),
            vec!["shop".into()]
        )));
    }
}

#[test]
fn the_flags_are_checked_like_the_annotations() {
    let cli = Cli::parse([
        "weir-operator",
        "--webhook-listen=0.0.0.0:9443",
        "--webhook-config=weir-sidecar-injector",
        "--webhook-service=weir-operator-webhook",
        "--webhook-secret=weir-webhook-tls",
        "--native-sidecars=auto",
        "--proxy-image=ghcr.io/weir-mesh/weir-sidecar:0.1.0",
        "--init-image=ghcr.io/weir-mesh/weir-init:0.1.0",
        "--proxy-control-plane=http://weir-operator.weir-system.svc:15010",
        "--proxy-cpu=10m",
        "--proxy-memory=16Mi",
        "--proxy-cpu-limit=",
        "--proxy-memory-limit=64Mi",
        "--proxy-threads=1",
        "--proxy-log-level=info",
    ]);
    let settings = cli.webhook.injection_settings(true, "weir-system").unwrap();
    assert_eq!(settings.proxy.cpu_limit, None);
    assert_eq!(settings.proxy_image, IMAGE);
    assert_eq!(settings.init_image, INIT_IMAGE);
    assert_eq!(settings.control_plane, CONTROL_PLANE);
    let bad = Cli::parse(["weir-operator", "--proxy-memory=lots"]);
    let err = bad
        .webhook
        .injection_settings(true, "weir-system")
        .unwrap_err();
    assert!(err.to_string().contains("--proxy-memory"), "{err}");
    assert_eq!(
        webhook::supports_native_sidecars(&k8s_openapi::apimachinery::pkg::version::Info {
            major: "1".into(),
            minor: "29+".into(),
            git_version: "v1.29.4-gke.1043002".into(),
            ..Default::default()
        }),
        Some(true)
    );
    assert_eq!(
        webhook::supports_native_sidecars(&k8s_openapi::apimachinery::pkg::version::Info {
            major: String::new(),
            minor: String::new(),
            git_version: "v1.28.9".into(),
            ..Default::default()
        }),
        Some(false)
    );
}
