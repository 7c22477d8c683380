//! `weir-operator check` against the in-process fake API server: a healthy mesh reports nothing,
//! then each problem is made on its own and must be the one finding. The operator's admin
//! listener (with a real config API a sidecar polled) and the injection webhook (HTTPS with a
//! certificate of the webhook's own CA) are real servers on loopback, reached through the fake's
//! pod and service proxies as a real API server would reach them.

mod fake_api;
mod helm;

use bytes::Bytes;
use fake_api::FakeApi;
use http_body_util::Full;
use k8s_openapi::ByteString;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::watch;
use weir_operator::admin::{Admin, Readiness};
use weir_operator::check::cluster::{Settings, check_with_config};
use weir_operator::check::{Finding, Report, Severity};
use weir_operator::config_api::ConfigApi;
use weir_operator::metrics::Metrics;
use weir_operator::snapshot::Snapshot;
use weir_operator::webhook::certs::{self, Plan};
use weir_operator::webhook::secret::SecretKeeper;
use weir_operator::webhook::tls::ServingCert;

const PROXY_IMAGE: &str = "ghcr.io/weir-mesh/weir-sidecar:0.1.0";
const OPERATOR_NS: &str = "weir-system";

/// A healthy mesh: the fake API server with every object, and the real servers behind it.
struct Mesh {
    api: FakeApi,
    ca: String,
    admin_port: u16,
    webhook_port: u16,
    config_api: Arc<ConfigApi>,
    _stop: watch::Sender<bool>,
}

fn b64(text: &str) -> Value {
    serde_json::to_value(ByteString(text.as_bytes().to_vec())).unwrap()
}

fn now_micro(offset_seconds: i64) -> Value {
    let now = k8s_openapi::jiff::Timestamp::now()
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(offset_seconds))
        .unwrap();
    serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        now,
    ))
    .unwrap()
}

fn sidecar_pod(name: &str, owner: &str, ip: &str, version: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop",
            "labels": {"app": "payments", "version": version},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner,
                "uid": "rs", "controller": true}]},
        "spec": {"containers": [{"name": "payments", "image": "shop:1"}],
            "initContainers": [{"name": "weir-proxy", "image": PROXY_IMAGE, "restartPolicy": "Always"}]},
        "status": {"phase": "Running", "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

impl Mesh {
    async fn start() -> Self {
        let api = FakeApi::start().await;
        let (stop, stopped) = watch::channel(false);

        // The CRDs as this binary compiles them, established.
        for crd in weir_crds::crds() {
            let mut crd = serde_json::to_value(&crd).unwrap();
            crd["metadata"]["namespace"] = json!("");
            crd["status"] = json!({"conditions": [{"type": "Established", "status": "True"}]});
            api.put(crd);
        }

        // The operator's admin listener, with a config API one sidecar has polled.
        let metrics = Arc::new(Metrics::new());
        let (_snapshots, snapshot_rx) = watch::channel(Arc::new(Snapshot::starting_now()));
        let config_api = ConfigApi::new(snapshot_rx, metrics.clone());
        let admin = Admin {
            metrics,
            readiness: Arc::new(Readiness::default()),
            config_api: config_api.clone(),
            autoscalers: watch::channel(Default::default()).1,
            status: weir_operator::admin::StatusFeeds::channels().1,
        };
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_port = admin_listener.local_addr().unwrap().port();
        tokio::spawn(admin.serve(admin_listener, stopped.clone()));

        // The webhook, serving a certificate of its own CA for the Service's name.
        let names = SecretKeeper::dns_names_for("weir-operator-webhook", OPERATOR_NS);
        let bundle =
            certs::issue(&Plan::Ca("test".into()), None, SystemTime::now(), &names).unwrap();
        let cert = ServingCert::new();
        cert.set_pem(bundle.tls_crt.as_bytes(), bundle.tls_key.as_bytes())
            .unwrap();
        let webhook_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let webhook_port = webhook_listener.local_addr().unwrap().port();
        let settings = weir_operator::webhook::InjectionSettings::new(
            PROXY_IMAGE,
            "ghcr.io/weir-mesh/weir-init:0.1.0",
            "http://weir-operator.weir-system.svc:15010",
        );
        tokio::spawn(weir_operator::webhook::serve(
            webhook_listener,
            cert,
            Arc::new(settings),
            None,
            stopped.clone(),
        ));

        let selector = json!({"app.kubernetes.io/name": "weir", "app.kubernetes.io/instance": "weir",
            "app.kubernetes.io/component": "operator"});
        api.put(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "weir-operator", "namespace": OPERATOR_NS, "labels": selector},
            "spec": {"replicas": 1, "selector": {"matchLabels": selector},
                "template": {"metadata": {"labels": selector}, "spec": {"containers": [{
                    "name": "operator", "image": "ghcr.io/weir-mesh/weir-operator:0.1.0",
                    "args": ["run", "--admin=0.0.0.0:15011", "--leader-election=true",
                        "--webhook-listen=0.0.0.0:9443", "--webhook-config=weir-sidecar-injector",
                        "--webhook-service=weir-operator-webhook", "--webhook-secret", "weir-webhook-tls",
                        format!("--proxy-image={PROXY_IMAGE}")],
                    "ports": [{"name": "admin", "containerPort": admin_port}],
                }]}}},
            "status": {"replicas": 1, "readyReplicas": 1},
        }));
        api.put(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "weir-operator-5c4d-x1", "namespace": OPERATOR_NS, "labels": selector},
            "spec": {"containers": [{"name": "operator", "image": "ghcr.io/weir-mesh/weir-operator:0.1.0"}]},
            "status": {"phase": "Running", "podIP": "127.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}]},
        }));
        api.put(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "weir-operator", "namespace": OPERATOR_NS},
            "spec": {"holderIdentity": "weir-operator-5c4d-x1", "leaseDurationSeconds": 15,
                "renewTime": now_micro(-2)},
        }));
        api.put(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "weir-operator-webhook", "namespace": OPERATOR_NS},
            "spec": {"ports": [{"name": "webhook", "port": 443, "targetPort": webhook_port}]},
        }));
        api.put(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "weir-operator-webhook-1", "namespace": OPERATOR_NS,
                "labels": {"kubernetes.io/service-name": "weir-operator-webhook"}},
            "addressType": "IPv4",
            "ports": [{"name": "webhook", "port": webhook_port}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
        }));
        api.put(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "weir-webhook-tls", "namespace": OPERATOR_NS},
            "data": {"ca.crt": b64(&bundle.ca_crt), "tls.crt": b64(&bundle.tls_crt)},
        }));
        let entry = |name: &str| {
            json!({"name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "clientConfig": {"caBundle": b64(&bundle.ca_crt),
                    "service": {"name": "weir-operator-webhook", "namespace": OPERATOR_NS,
                        "path": "/inject", "port": 443}}})
        };
        api.put(json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "weir-sidecar-injector", "namespace": ""},
            "webhooks": [entry("namespace.inject.weir.dev"), entry("pod.inject.weir.dev")],
        }));

        // The shop: a labelled namespace, an injected pod whose sidecar polled, its Service,
        // a split, a policy and an Autoscaler.
        api.put(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "namespace": "", "labels": {"weir.dev/inject": "enabled"}},
        }));
        api.put(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": OPERATOR_NS, "namespace": ""},
        }));
        api.put(sidecar_pod(
            "payments-v1-7d9f8-abcde",
            "payments-v1-7d9f8",
            "10.0.0.5",
            "v1",
        ));
        api.put(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "payments", "namespace": "shop"},
            "spec": {"ports": [{"name": "http", "port": 8080}], "clusterIP": "10.96.0.10"},
        }));
        api.put(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "payments-1", "namespace": "shop",
                "labels": {"kubernetes.io/service-name": "payments"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": true},
                "targetRef": {"kind": "Pod", "name": "payments-v1-7d9f8-abcde", "namespace": "shop"}}],
        }));
        api.put(json!({
            "apiVersion": "weir.dev/v1alpha1", "kind": "TrafficSplit",
            "metadata": {"name": "payments", "namespace": "shop"},
            "spec": {"service": "payments", "backends": [
                {"subset": "v1", "selector": {"version": "v1"}, "weight": 100}]},
        }));
        api.put(json!({
            "apiVersion": "weir.dev/v1alpha1", "kind": "ResiliencePolicy",
            "metadata": {"name": "payments", "namespace": "shop"},
            "spec": {"targetRef": {"kind": "Service", "name": "payments"}, "retries": {"attempts": 2}},
        }));
        api.put(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "payments-v1", "namespace": "shop"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "payments"}},
                "template": {"metadata": {"labels": {"app": "payments"}}, "spec": {"containers": []}}},
        }));
        api.put(json!({
            "apiVersion": "weir.dev/v1alpha1", "kind": "Autoscaler",
            "metadata": {"name": "payments", "namespace": "shop"},
            "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "payments-v1"},
                "minReplicas": 1, "maxReplicas": 4, "metrics": [{"type": "Concurrency", "target": 10}]},
        }));
        let mesh = Self {
            api,
            ca: bundle.ca_crt,
            admin_port,
            webhook_port,
            config_api,
            _stop: stop,
        };
        mesh.poll("payments-v1-7d9f8-abcde").await;
        mesh
    }

    /// The sidecar of `pod` (namespace shop) polls the config API once.
    async fn poll(&self, pod: &str) {
        let body = json!({"node": {"service": "payments", "namespace": "shop", "pod": pod},
            "resources": [{"name": "inbound"}], "waitSeconds": 0});
        let request = http::Request::post("/v1/discovery")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let peer: SocketAddr = "10.0.0.5:40000".parse().unwrap();
        let response = self.config_api.handle(peer, request).await;
        assert_eq!(response.status(), 200);
    }

    async fn check(&self) -> Report {
        self.check_with(&Settings::default()).await
    }

    async fn check_with(&self, settings: &Settings) -> Report {
        check_with_config(Ok::<_, String>(self.api.config()), settings).await
    }

    /// Edits the operator's Deployment.
    fn edit_operator(&self, change: impl FnOnce(&mut Value)) {
        self.edit(
            "apps/v1",
            "Deployment",
            OPERATOR_NS,
            "weir-operator",
            change,
        );
    }

    /// Edits the operator's leader-election Lease.
    fn edit_lease(&self, change: impl FnOnce(&mut Value)) {
        self.edit(
            "coordination.k8s.io/v1",
            "Lease",
            OPERATOR_NS,
            "weir-operator",
            change,
        );
    }

    /// Edits every entry of the webhook configuration `weir-sidecar-injector`.
    fn edit_webhooks(&self, change: impl Fn(&mut Value)) {
        let kind = "MutatingWebhookConfiguration";
        self.edit(
            "admissionregistration.k8s.io/v1",
            kind,
            "",
            "weir-sidecar-injector",
            |c| {
                c["webhooks"]
                    .as_array_mut()
                    .unwrap()
                    .iter_mut()
                    .for_each(change);
            },
        );
    }

    /// Edits the CRD `name`.
    fn edit_crd(&self, name: &str, change: impl FnOnce(&mut Value)) {
        let kind = "CustomResourceDefinition";
        self.edit("apiextensions.k8s.io/v1", kind, "", name, change);
    }

    /// Edits the TrafficSplit `shop/payments`.
    fn edit_split(&self, change: impl FnOnce(&mut Value)) {
        self.edit(
            "weir.dev/v1alpha1",
            "TrafficSplit",
            "shop",
            "payments",
            change,
        );
    }

    /// The one finding of a check now, which must have `code`.
    async fn only(&self, code: &str) -> Finding {
        only(&self.check().await, code)
    }

    /// The one finding, which must have `code`, of a fresh mesh after `change`: how each broken
    /// part is shown to be found alone.
    async fn only_after(code: &str, change: impl FnOnce(&Mesh)) -> Finding {
        let mesh = Mesh::start().await;
        change(&mesh);
        mesh.only(code).await
    }

    /// Edits one stored object.
    fn edit(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) {
        let mut object = self
            .api
            .get(api_version, kind, namespace, name)
            .unwrap_or_else(|| panic!("{kind} {namespace}/{name}"));
        change(&mut object);
        self.api.put(object);
    }
}

/// Asserts that `text` (a finding's message or hint) ends withs `part`.
fn ends(text: &str, part: &str) {
    assert!(text.ends_with(part), "{text:?} does not ends with {part:?}");
}

/// Asserts that `text` (a finding's message or hint) says `part`.
fn says(text: &str, part: &str) {
    assert!(text.contains(part), "{part:?} not in {text:?}");
}

/// Asserts that `report` has a finding of `code` (among others).
fn has(report: &Report, code: &str) {
    assert!(
        report.findings.iter().any(|f| f.code == code),
        "no {code} in {}",
        report.text(false)
    );
}

/// The one finding of `report`, which must have `code`.
fn only(report: &Report, code: &str) -> Finding {
    assert_eq!(report.findings.len(), 1, "{}", report.text(false));
    assert_eq!(report.findings[0].code, code, "{}", report.text(false));
    report.findings[0].clone()
}

#[tokio::test]
async fn a_healthy_mesh_reports_nothing_and_exits_zero() {
    let mesh = Mesh::start().await;
    let report = mesh.check().await;
    assert_eq!(report.findings, [], "{}", report.text(false));
    assert_eq!(report.exit_code(), 0);
    assert_eq!(report.checked.len(), 8);
    let text = report.text(false);
    assert!(text.contains("Injection webhook: ok\n"), "{text}");
    assert!(text.ends_with("no problems found\n"), "{text}");
}

#[tokio::test]
async fn an_unreachable_api_server_is_the_one_finding() {
    let mesh = Mesh::start().await;
    mesh.api.go_away();
    let settings = Settings {
        timeout: Duration::from_secs(2),
        ..Settings::default()
    };
    let report = mesh.check_with(&settings).await;
    only(&report, "ApiUnreachable");
    assert_eq!(report.exit_code(), 1);
}

/// An API server that accepts connections and never answers: the check ends, at the timeout.
#[tokio::test(start_paused = true)]
async fn a_silent_api_server_is_reported_after_the_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    let settings = Settings {
        timeout: Duration::from_secs(3),
        ..Settings::default()
    };
    let started = tokio::time::Instant::now();
    let report = check_with_config(
        Ok::<_, String>(kube::Config::new(url.parse().unwrap())),
        &settings,
    )
    .await;
    let finding = only(&report, "ApiUnreachable");
    says(&finding.message, "no answer within 3s");
    assert!(started.elapsed() <= Duration::from_secs(4));
    held.abort();
}

#[tokio::test]
async fn a_missing_or_stale_crd() {
    let mesh = Mesh::start().await;
    mesh.api.delete(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "",
        "autoscalers.weir.dev",
    );
    let report = mesh.check().await;
    // Listing Autoscalers fails too without their CRD: said as "not checked", not as "ok".
    let missing: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.code == "CrdMissing")
        .collect();
    assert_eq!(missing.len(), 1, "{}", report.text(false));
    assert_eq!(missing[0].subject, "CRD autoscalers.weir.dev");
    assert!(
        missing[0].hint.contains("kubectl apply"),
        "{}",
        missing[0].hint
    );
    assert_eq!(report.exit_code(), 1);

    let finding = Mesh::only_after("CrdStale", |mesh| {
        mesh.edit_crd("trafficsplits.weir.dev", |crd| {
            crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
                .as_object_mut()
                .unwrap()
                .remove("port");
        });
    })
    .await;
    assert_eq!(finding.subject, "CRD trafficsplits.weir.dev");
    ends(
        &finding.message,
        "version v1alpha1: the schema differs at schema.openAPIV3Schema.properties.spec.properties.port",
    );

    let finding = Mesh::only_after("CrdNotEstablished", |mesh| {
        mesh.edit_crd("resiliencepolicies.weir.dev", |crd| {
            crd["status"]["conditions"][0] =
                json!({"type": "Established", "status": "False", "message": "not yet"});
        });
    })
    .await;
    assert_eq!(finding.message, "is not established: not yet");
}

#[tokio::test]
async fn an_operator_not_ready_or_without_leader() {
    let mesh = Mesh::start().await;
    mesh.edit_operator(|d| {
        d["status"]["readyReplicas"] = json!(0);
        d["spec"]["replicas"] = json!(2);
    });
    let finding = mesh.only("OperatorNotReady").await;
    assert_eq!(finding.message, "0 of 2 replicas ready");
    mesh.edit_operator(|d| {
        d["spec"]["replicas"] = json!(0);
    });
    let report = mesh.check().await;
    has(&report, "OperatorScaledDown");

    let mesh = Mesh::start().await;
    mesh.edit_lease(|l| {
        l["spec"]["renewTime"] = now_micro(-60);
    });
    let finding = mesh.only("LeaseExpired").await;
    says(
        &finding.message,
        "held by weir-operator-5c4d-x1 but last renewed",
    );

    mesh.edit_lease(|l| {
        l["spec"]["holderIdentity"] = json!("");
    });
    let finding = mesh.only("NoLeader").await;
    assert_eq!(finding.subject, "Lease weir-system/weir-operator");
    says(&finding.message, "is held by no replica");
    says(&finding.hint, "logs deployment/weir-operator");

    mesh.api.delete(
        "coordination.k8s.io/v1",
        "Lease",
        OPERATOR_NS,
        "weir-operator",
    );
    let finding = mesh.only("NoLeader").await;
    assert_eq!(finding.subject, "Lease weir-system/weir-operator");
    says(&finding.message, "does not exist");

    // Without leader election no Lease is expected.
    mesh.edit_operator(|d| {
        let args = &mut d["spec"]["template"]["spec"]["containers"][0]["args"];
        args[2] = json!("--leader-election=false");
    });
    assert_eq!(mesh.check().await.findings, []);

    mesh.api
        .delete("apps/v1", "Deployment", OPERATOR_NS, "weir-operator");
    let report = mesh.check().await;
    has(&report, "OperatorMissing");
}

#[tokio::test]
async fn a_webhook_whose_ca_bundle_does_not_verify_its_certificate() {
    let names = SecretKeeper::dns_names_for("weir-operator-webhook", OPERATOR_NS);
    let other = certs::issue(&Plan::Ca("other".into()), None, SystemTime::now(), &names).unwrap();
    let finding = Mesh::only_after("WebhookCertInvalid", |mesh| {
        mesh.edit_webhooks(|entry| {
            entry["clientConfig"]["caBundle"] = b64(&other.ca_crt);
        });
    })
    .await;
    says(&finding.message, "weir-operator-webhook.weir-system.svc");
    says(&finding.hint, "delete secret weir-webhook-tls");

    // A certificate for another Service name.
    let wrong = certs::issue(
        &Plan::Ca("wrong".into()),
        None,
        SystemTime::now(),
        &SecretKeeper::dns_names_for("elsewhere", OPERATOR_NS),
    )
    .unwrap();
    let finding = Mesh::only_after("WebhookCertInvalid", |mesh| {
        mesh.edit("v1", "Secret", OPERATOR_NS, "weir-webhook-tls", |s| {
            s["data"]["tls.crt"] = b64(&wrong.tls_crt);
        });
        mesh.edit_webhooks(|entry| {
            entry["clientConfig"]["caBundle"] = b64(&wrong.ca_crt);
        });
    })
    .await;
    says(&finding.message, "not valid for name");
}

/// cert-manager mode: the certificate is the Secret mounted at `--webhook-cert-dir`.
#[tokio::test]
async fn the_certificate_of_cert_manager_mode_is_the_mounted_secret() {
    let mesh = Mesh::start().await;
    let mount = |secret: &str| {
        let secret = secret.to_owned();
        move |d: &mut Value| {
            let pod = &mut d["spec"]["template"]["spec"];
            pod["volumes"] = json!([{"name": "webhook-tls", "secret": {"secretName": secret}}]);
            let container = &mut pod["containers"][0];
            container["volumeMounts"] = json!([{"name": "webhook-tls", "mountPath": "/etc/weir/webhook-tls", "readOnly": true}]);
            let args = container["args"].as_array_mut().unwrap();
            args.retain(|a| a != "--webhook-secret" && a != "weir-webhook-tls");
            args.push(json!("--webhook-cert-dir=/etc/weir/webhook-tls"));
        }
    };
    mesh.edit_operator(mount("weir-webhook-tls"));
    assert_eq!(mesh.check().await.findings, []);
    mesh.edit_operator(mount("weir-webhook-cm"));
    assert_eq!(
        mesh.only("WebhookCertMissing").await.subject,
        "Secret weir-system/weir-webhook-cm"
    );
}

#[tokio::test]
async fn a_webhook_without_ca_bundle_endpoints_or_answer() {
    Mesh::only_after("WebhookNoCaBundle", |mesh| {
        mesh.edit_webhooks(|entry| {
            entry["clientConfig"]
                .as_object_mut()
                .unwrap()
                .remove("caBundle");
        });
    })
    .await;

    Mesh::only_after("WebhookNoEndpoints", |mesh| {
        mesh.edit(
            "discovery.k8s.io/v1",
            "EndpointSlice",
            OPERATOR_NS,
            "weir-operator-webhook-1",
            |s| {
                s["endpoints"][0]["conditions"]["ready"] = json!(false);
            },
        );
    })
    .await;

    // The Service's targetPort points where nothing listens: the API server's proxy says so.
    let mesh = Mesh::start().await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    assert_ne!(closed_port, mesh.webhook_port);
    mesh.edit("v1", "Service", OPERATOR_NS, "weir-operator-webhook", |s| {
        s["spec"]["ports"][0]["targetPort"] = json!(closed_port);
    });
    let finding = mesh.only("WebhookUnreachable").await;
    says(&finding.message, "503");

    Mesh::only_after("WebhookServiceMissing", |mesh| {
        mesh.api
            .delete("v1", "Service", OPERATOR_NS, "weir-operator-webhook");
    })
    .await;

    let finding = Mesh::only_after("WebhookCertMissing", |mesh| {
        mesh.api
            .delete("v1", "Secret", OPERATOR_NS, "weir-webhook-tls");
    })
    .await;
    assert_eq!(finding.subject, "Secret weir-system/weir-webhook-tls");

    let mesh = Mesh::start().await;
    mesh.api.delete(
        "admissionregistration.k8s.io/v1",
        "MutatingWebhookConfiguration",
        "",
        "weir-sidecar-injector",
    );
    let report = mesh.check().await;
    assert_eq!(only(&report, "WebhookMissing").severity, Severity::Warning);
    assert_eq!(report.exit_code(), 0);
}

#[tokio::test]
async fn pods_of_a_labelled_namespace_without_the_sidecar() {
    let mesh = Mesh::start().await;
    for name in ["orders-6b7c9-aaaaa", "orders-6b7c9-bbbbb"] {
        mesh.api.put(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": "orders"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "orders-6b7c9", "uid": "rs2", "controller": true}]},
            "spec": {"containers": [{"name": "orders", "image": "shop:1"}]},
            "status": {"phase": "Running"},
        }));
    }
    // Opted out, host network, finished, or in a namespace that asked nothing: no finding.
    for (name, namespace, labels, spec_extra, phase) in [
        (
            "opted-out",
            "shop",
            json!({"weir.dev/inject": "disabled"}),
            json!({}),
            "Running",
        ),
        (
            "host",
            "shop",
            json!({}),
            json!({"hostNetwork": true}),
            "Running",
        ),
        ("done", "shop", json!({}), json!({}), "Succeeded"),
        ("plain", "other", json!({}), json!({}), "Running"),
    ] {
        let mut spec = json!({"containers": [{"name": "app", "image": "x"}]});
        spec.as_object_mut()
            .unwrap()
            .extend(spec_extra.as_object().unwrap().clone());
        mesh.api.put(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": spec, "status": {"phase": phase},
        }));
    }
    // A labelled namespace the webhook configuration excludes is never injected.
    mesh.api.put(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "kube-public", "namespace": "", "labels": {"weir.dev/inject": "enabled"}},
    }));
    mesh.api.put(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "public", "namespace": "kube-public"},
        "spec": {"containers": [{"name": "app", "image": "x"}]}, "status": {"phase": "Running"},
    }));
    mesh.edit_webhooks(|entry| {
        entry["namespaceSelector"] = json!({"matchExpressions": [{
                    "key": "kubernetes.io/metadata.name", "operator": "NotIn",
                    "values": ["weir-system", "kube-system", "kube-public"]}]});
    });
    let finding = mesh.only("PodWithoutSidecar").await;
    assert_eq!(finding.subject, "Deployment shop/orders");
    says(&finding.message, "orders-6b7c9-aaaaa, orders-6b7c9-bbbbb");
    assert_eq!(
        finding.hint.rsplit(": ").next(),
        Some("kubectl -n shop rollout restart deployment orders")
    );
}

/// The mesh with one injected payments-v1 pod, `payments-v1-7d9f8-fghij`, whose proxy has not
/// polled yet.
async fn with_one_sidecar() -> Mesh {
    let mesh = Mesh::start().await;
    mesh.api.put(sidecar_pod(
        "payments-v1-7d9f8-fghij",
        "payments-v1-7d9f8",
        "10.0.0.6",
        "v1",
    ));
    mesh
}

#[tokio::test]
async fn sidecars_not_connected_or_on_another_proxy_image() {
    let mesh = with_one_sidecar().await;
    let finding = mesh.only("ProxyNotConnected").await;
    assert_eq!(finding.subject, "Deployment shop/payments-v1");
    ends(&finding.message, ": payments-v1-7d9f8-fghij");
    mesh.poll("payments-v1-7d9f8-fghij").await;
    assert_eq!(mesh.check().await.findings, []);

    mesh.edit("v1", "Pod", "shop", "payments-v1-7d9f8-fghij", |p| {
        p["spec"]["initContainers"][0]["image"] = json!("ghcr.io/weir-mesh/weir-sidecar:0.0.9");
    });
    let finding = mesh.only("ProxyVersionMismatch").await;
    assert!(
        finding.message.starts_with(&format!(
            "its proxy runs ghcr.io/weir-mesh/weir-sidecar:0.0.9, the operator injects {PROXY_IMAGE}"
        )),
        "{}",
        finding.message
    );
    assert_eq!(finding.severity, Severity::Warning);
}

#[tokio::test]
async fn an_admin_listener_that_cannot_be_asked_calls_nobody_unconnected() {
    let mesh = with_one_sidecar().await;
    mesh.edit_operator(|d| {
        let closed = 1; // nothing listens on port 1
        d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(closed);
    });
    let report = mesh.check().await;
    let finding = only(&report, "AdminUnreachable");
    assert_eq!(finding.subject, "Pod weir-system/weir-operator-5c4d-x1");
    assert_eq!(report.exit_code(), 0);
}

#[tokio::test]
async fn splits_and_policies_with_missing_targets_empty_subsets_or_conflicts() {
    let finding = Mesh::only_after("TargetNotFound", |mesh| {
        mesh.edit_split(|s| {
            s["spec"]["service"] = json!("ledger");
        });
    })
    .await;
    assert_eq!(finding.subject, "TrafficSplit shop/payments");
    says(&finding.hint, "kubectl -n shop get services");

    let finding = Mesh::only_after("NoEndpoints", |mesh| {
        mesh.edit_split(|s| {
            s["spec"]["backends"] = json!([
                {"subset": "v1", "selector": {"version": "v1"}, "weight": 90},
                {"subset": "v2", "selector": {"version": "v2"}, "weight": 10}]);
        });
    })
    .await;
    says(&finding.hint, "kubectl -n shop get pods -l version=v2");

    let mesh = Mesh::start().await;
    mesh.api.put(json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "ResiliencePolicy",
        "metadata": {"name": "payments-strict", "namespace": "shop"},
        "spec": {"targetRef": {"kind": "Service", "name": "payments"}, "retries": {"attempts": 0}},
    }));
    let finding = mesh.only("Conflict").await;
    assert_eq!(finding.subject, "ResiliencePolicy shop/payments");
    ends(&finding.hint, "kubectl -n shop delete rp payments-strict)");

    // --namespace limits the resources looked at.
    let settings = Settings {
        namespace: Some(OPERATOR_NS.into()),
        ..Settings::default()
    };
    assert_eq!(mesh.check_with(&settings).await.findings, []);
    let settings = Settings {
        namespace: Some("nowhere".into()),
        ..Settings::default()
    };
    let report = mesh.check_with(&settings).await;
    assert_eq!(
        only(&report, "NamespaceMissing").subject,
        "Namespace nowhere"
    );
}

#[tokio::test]
async fn an_autoscaler_with_an_hpa_on_its_target() {
    let finding = Mesh::only_after("ConflictingHPA", |mesh| {
        mesh.api.put(json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "payments-cpu", "namespace": "shop"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "payments-v1"},
                "minReplicas": 1, "maxReplicas": 3},
        }));
    })
    .await;
    assert_eq!(finding.subject, "Autoscaler shop/payments");
    says(&finding.hint, "kubectl -n shop delete hpa payments-cpu");

    Mesh::only_after("TargetNotFound", |mesh| {
        mesh.api
            .delete("apps/v1", "Deployment", "shop", "payments-v1");
    })
    .await;
}

#[tokio::test]
async fn what_cannot_be_read_is_a_warning_not_an_ok() {
    let mesh = Mesh::start().await;
    mesh.api
        .fail("GET", "/secrets/weir-webhook-tls", 403, "Forbidden", 1);
    let report = mesh.check().await;
    let finding = only(&report, "NotChecked");
    assert_eq!(finding.subject, "Secret weir-system/weir-webhook-tls");
    assert_eq!(finding.severity, Severity::Warning);
    says(&finding.message, "forbidden");

    // The lists an Autoscaler is checked against: a refused one is named in the plural.
    for (path, subject) in [
        ("/horizontalpodautoscalers", "HorizontalPodAutoscalers"),
        ("/deployments", "Deployments"),
    ] {
        let mesh = Mesh::start().await;
        mesh.api.fail("GET", path, 403, "Forbidden", 100);
        let report = mesh.check().await;
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.code == "NotChecked" && f.subject == subject),
            "{path}: no NotChecked {subject} in {report:#?}"
        );
    }
}

/// The operator Deployment, webhook Service and MutatingWebhookConfiguration exactly as the
/// chart renders them (ports set to the test's servers): found, and judged healthy.
#[tokio::test]
async fn the_charts_own_objects_are_found_and_understood() {
    let mesh = Mesh::start().await;
    let Some(objects) = helm::template(&[
        &format!("operator.adminPort={}", mesh.admin_port),
        &format!("webhook.port={}", mesh.webhook_port),
    ]) else {
        return;
    };
    let mut found = 0;
    for mut object in objects {
        match (object["kind"].as_str(), object["metadata"]["name"].as_str()) {
            (Some("Deployment"), Some("weir-operator")) => {
                object["status"] = json!({"replicas": 2, "readyReplicas": 2});
            }
            (Some("Service"), Some("weir-operator-webhook")) => {}
            (Some("MutatingWebhookConfiguration"), Some("weir-sidecar-injector")) => {
                // The operator patches the caBundle in at start.
                object["metadata"]["namespace"] = json!("");
                for entry in object["webhooks"].as_array_mut().unwrap() {
                    entry["clientConfig"]["caBundle"] = b64(&mesh.ca);
                }
            }
            _ => continue,
        }
        found += 1;
        mesh.api.put(object);
    }
    assert_eq!(
        found, 3,
        "the operator's Deployment, webhook Service and configuration"
    );
    let report = mesh.check().await;
    assert_eq!(report.findings, [], "{}", report.text(false));
}
