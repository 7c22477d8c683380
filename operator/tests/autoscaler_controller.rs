//! The Autoscaler controller through `kube::Client` against the in-process fake API server
//! (`fake_api`), with fake sidecars serving `/metrics` on loopback addresses as pod IPs:
//! scrape → decide → scale subresource, status, Events, the desired-replicas gauge, a
//! conflicting HPA, CPU from metrics.k8s.io (served and not), a bad spec, and leadership.

mod fake_api;
mod loopback;

use fake_api::FakeApi;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, watcher};
use loopback::serve_sidecar_metrics;
use serde_json::{Value, json};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use weir_operator::autoscaler::controller::{self, Settings};
use weir_operator::metrics::Metrics;

const NS: &str = "shop";
const SCALE_PATH: &str = "/apis/apps/v1/namespaces/shop/deployments/orders/scale";

fn deployment(replicas: i64) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "orders", "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "orders"}},
            "template": {"metadata": {"labels": {"app": "orders"}},
                         "spec": {"containers": [{"name": "app", "image": "orders"}]}},
        },
        "status": {"replicas": replicas},
    })
}

fn pod(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "orders"}},
        "spec": {"containers": [{"name": "app", "image": "orders",
                                 "resources": {"requests": {"cpu": "100m"}}}]},
        "status": {
            "phase": "Running", "podIP": ip, "startTime": "2025-01-01T00:00:00Z",
            "conditions": [{"type": "Ready", "status": "True",
                            "lastTransitionTime": "2025-01-01T00:00:10Z"}],
        },
    })
}

fn autoscaler(metrics: Value) -> Value {
    json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "Autoscaler",
        "metadata": {"name": "orders", "namespace": NS},
        "spec": {
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "orders"},
            "minReplicas": 1, "maxReplicas": 10,
            "metrics": metrics,
        },
    })
}

/// Fake sidecars on 127.0.0.2 and 127.0.0.3, one port: each reports `in_flight` inbound.
struct Sidecars {
    port: u16,
    in_flight: Arc<AtomicU64>,
    _tasks: Vec<JoinHandle<()>>,
}

impl Sidecars {
    async fn start(in_flight: f64) -> Self {
        let in_flight = Arc::new(AtomicU64::new(in_flight.to_bits()));
        for _ in 0..20 {
            let first = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 2), 0))
                .await
                .expect("bind 127.0.0.2");
            let port = first.local_addr().unwrap().port();
            let Ok(second) = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 3), port)).await else {
                continue;
            };
            let tasks = [first, second]
                .into_iter()
                .map(|listener| serve_sidecar_metrics(listener, in_flight.clone()))
                .collect();
            return Self {
                port,
                in_flight,
                _tasks: tasks,
            };
        }
        panic!("no port free on both 127.0.0.2 and 127.0.0.3");
    }

    fn set(&self, value: f64) {
        self.in_flight.store(value.to_bits(), Ordering::Relaxed);
    }
}

/// The operator's Pod store stands for the one `kubernetes::run` shares: a reflector of Pods.
fn pod_store(client: kube::Client) -> (Store<Pod>, JoinHandle<()>) {
    let (store, writer) = reflector::store();
    let task = tokio::spawn(async move {
        let stream = watcher(
            Api::<Pod>::namespaced(client, NS),
            watcher::Config::default(),
        )
        .reflect(writer);
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    (store, task)
}

struct Controller {
    metrics: Arc<Metrics>,
    leader: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), controller::Error>>,
}

impl Controller {
    fn start(api: &FakeApi, admin_port: u16, leader: bool) -> Self {
        let metrics = Arc::new(Metrics::new());
        let (leader, leader_rx) = watch::channel(leader);
        let (stop, shutdown) = watch::channel(false);
        let mut settings = Settings::new("weir-operator-0");
        settings.namespace = Some(NS.to_owned());
        settings.interval = Duration::from_millis(100);
        settings.admin_port = admin_port;
        settings.scrape_timeout = Duration::from_millis(500);
        settings.status_interval = Duration::from_millis(500);
        let (api_client, metrics_for_run) = (api.client(), metrics.clone());
        let (pods, pod_watch) = pod_store(api.client());
        let task = tokio::spawn(async move {
            let result = controller::run(
                api_client,
                settings,
                pods,
                metrics_for_run,
                leader_rx,
                shutdown,
            )
            .await;
            pod_watch.abort();
            result
        });
        Self {
            metrics,
            leader,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("stops on shutdown")
            .expect("no panic")
            .expect("no error");
    }

    fn desired_gauge(&self) -> i64 {
        self.metrics
            .autoscaler_desired_replicas
            .with_label_values(&[NS, "orders"])
            .get()
    }
}

async fn eventually<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn replicas(api: &FakeApi) -> i64 {
    api.get("apps/v1", "Deployment", NS, "orders").unwrap()["spec"]["replicas"]
        .as_i64()
        .unwrap()
}

fn status(api: &FakeApi) -> Value {
    api.get("weir.dev/v1alpha1", "Autoscaler", NS, "orders")
        .unwrap()
        .get("status")
        .cloned()
        .unwrap_or(Value::Null)
}

fn condition(status: &Value, type_: &str) -> Option<(String, String, String)> {
    status["conditions"].as_array()?.iter().find_map(|c| {
        (c["type"] == type_).then(|| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
                c["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
    })
}

fn seed(api: &FakeApi) {
    api.put(deployment(2));
    api.put(pod("orders-a", "127.0.0.2"));
    api.put(pod("orders-b", "127.0.0.3"));
}

fn scale_patches(api: &FakeApi) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path == SCALE_PATH)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_load_scales_the_deployment_with_status_event_and_gauge() {
    let api = FakeApi::start().await;
    seed(&api);
    api.put(autoscaler(json!([{"type": "Concurrency", "target": 10}])));
    // 40 in flight on each of 2 pods at a target of 10: 4× the target, so panic mode, at once
    // to ceil(2 × 40 / 10) = 8 (past the HPA's +4 / +100 % per 15 s).
    let sidecars = Sidecars::start(40.0).await;
    let controller = Controller::start(&api, sidecars.port, true);
    eventually("the scale-up", Duration::from_secs(10), || {
        (replicas(&api) == 8).then_some(())
    })
    .await;
    let status = eventually("the status", Duration::from_secs(10), || {
        let status = status(&api);
        (status["desiredReplicas"] == 8).then_some(status)
    })
    .await;
    assert_eq!(status["currentReplicas"], 2, "{status:#}"); // the Deployment's status says 2
    assert_eq!(
        status["currentMetrics"],
        json!([{"type": "Concurrency", "current": "40.0"}]),
        "{status:#}"
    );
    assert!(status["lastScaleTime"].is_string(), "{status:#}");
    assert_eq!(
        condition(&status, "Accepted").map(|c| c.0),
        Some("True".into())
    );
    let active = condition(&status, "ScalingActive").unwrap();
    assert_eq!(
        (active.0.as_str(), active.1.as_str()),
        ("True", "Panic"),
        "{active:?}"
    );
    let able = condition(&status, "AbleToScale").unwrap();
    assert_eq!(able.0, "True");
    assert!(condition(&status, "ScalingLimited").is_some());
    // The scale subresource was patched, not the Deployment.
    let patch = api
        .requests()
        .into_iter()
        .find(|r| r.method == "PATCH" && r.path == SCALE_PATH)
        .unwrap();
    assert_eq!(patch.body, json!({"spec": {"replicas": 8}}));
    assert_eq!(
        patch.param("fieldManager").as_deref(),
        Some("weir-operator"),
        "the scale patch names its field manager"
    );
    // An Event for the scale, naming the metric.
    let event = eventually("the Event", Duration::from_secs(5), || {
        api.objects("events.k8s.io/v1", "Event")
            .into_iter()
            .find(|e| e["reason"] == "SuccessfulRescale")
    })
    .await;
    let note = event["note"].as_str().unwrap();
    assert!(
        note.contains("New size: 8") && note.contains("Concurrency"),
        "{note}"
    );
    assert_eq!(event["regarding"]["kind"], "Autoscaler");
    assert_eq!(controller.desired_gauge(), 8);
    // Steady at 8: no more scale writes while the load holds.
    let before = scale_patches(&api);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(scale_patches(&api), before);
    sidecars.set(40.0);
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_scale_is_an_event_of_its_own() {
    let api = FakeApi::start().await;
    seed(&api);
    api.put(autoscaler(json!([{"type": "Concurrency", "target": 10}])));
    let sidecars = Sidecars::start(40.0).await;
    let controller = Controller::start(&api, sidecars.port, true);
    eventually("the first scale-up", Duration::from_secs(10), || {
        (replicas(&api) == 8).then_some(())
    })
    .await;
    // More load: the second scale, to the maximum.
    sidecars.set(100.0);
    eventually("the second scale-up", Duration::from_secs(10), || {
        (replicas(&api) == 10).then_some(())
    })
    .await;
    // Two Events, each saying its own change (kube-runtime's recorder would have folded the
    // second into the first as a series, keeping the first's note).
    let notes = eventually("two Events", Duration::from_secs(5), || {
        let notes: Vec<String> = api
            .objects("events.k8s.io/v1", "Event")
            .into_iter()
            .filter(|e| e["reason"] == "SuccessfulRescale")
            .map(|e| e["note"].as_str().unwrap_or_default().to_owned())
            .collect();
        (notes.len() == 2).then_some(notes)
    })
    .await;
    assert!(
        notes
            .iter()
            .any(|n| n.contains("New size: 8") && n.contains("2 → 8")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("New size: 10") && n.contains("8 → 10")),
        "{notes:?}"
    );
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_hpa_keeps_weir_off_the_scale() {
    let api = FakeApi::start().await;
    seed(&api);
    api.put(json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "orders-hpa", "namespace": NS},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "orders"},
                 "minReplicas": 1, "maxReplicas": 5},
    }));
    api.put(autoscaler(json!([{"type": "Concurrency", "target": 10}])));
    let sidecars = Sidecars::start(40.0).await;
    let controller = Controller::start(&api, sidecars.port, true);
    let able = eventually("AbleToScale=False", Duration::from_secs(10), || {
        condition(&status(&api), "AbleToScale").filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(able.1, "ConflictingHPA");
    assert!(able.2.contains("orders-hpa"), "{}", able.2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(replicas(&api), 2);
    assert_eq!(scale_patches(&api), 0);

    // The HPA goes: Weir takes over.
    api.delete(
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        NS,
        "orders-hpa",
    );
    eventually("the scale-up", Duration::from_secs(10), || {
        (replicas(&api) == 8).then_some(())
    })
    .await;
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_comes_from_metrics_k8s_io_when_served() {
    let api = FakeApi::start().await;
    seed(&api);
    // metrics.k8s.io is not served (no metrics-server): CPU is unknown, nothing moves.
    api.fail(
        "GET",
        "/apis/metrics.k8s.io/v1beta1/namespaces/shop/pods",
        404,
        "NotFound",
        usize::MAX,
    );
    api.put(autoscaler(json!([{"type": "Cpu", "target": 50}])));
    let controller = Controller::start(&api, 1, true);
    let active = eventually("ScalingActive=False", Duration::from_secs(10), || {
        condition(&status(&api), "ScalingActive").filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(active.1, "FailedGetMetrics");
    assert!(active.2.contains("Cpu"), "{}", active.2);
    assert_eq!(replicas(&api), 2);
    // Evaluated every 100 ms, but the absent API is asked again only after a pause (4 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let asked = api
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/apis/metrics.k8s.io/"))
        .count();
    assert_eq!(asked, 1, "probed once, then left alone for a while");
    controller.stop().await;

    // Served: 200m used of 100m requested = 200 % against 50 %: ratio 4 → 8 pods, but CPU
    // does not panic, so the HPA's default rate limit allows max(2 + 4, 2 × 2) = 6 first.
    let api = FakeApi::start().await;
    seed(&api);
    for name in ["orders-a", "orders-b"] {
        api.put(json!({
            "apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetrics",
            "metadata": {"name": name, "namespace": NS, "labels": {"app": "orders"}},
            "timestamp": k8s_openapi::jiff::Timestamp::now().to_string(),
            "window": "30s",
            "containers": [{"name": "app", "usage": {"cpu": "200m", "memory": "10Mi"}}],
        }));
    }
    api.put(autoscaler(json!([{"type": "Cpu", "target": 50}])));
    let controller = Controller::start(&api, 1, true);
    eventually("the scale-up", Duration::from_secs(10), || {
        (replicas(&api) == 6).then_some(())
    })
    .await;
    let status = eventually("the status", Duration::from_secs(10), || {
        let status = status(&api);
        (status["desiredReplicas"] == 6).then_some(status)
    })
    .await;
    assert_eq!(
        status["currentMetrics"],
        json!([{"type": "Cpu", "current": "200%"}])
    );
    let limited = condition(&status, "ScalingLimited").unwrap();
    assert_eq!(
        (limited.0.as_str(), limited.1.as_str()),
        ("True", "ScaleUpLimit")
    );
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_spec_is_refused_naming_the_field() {
    let api = FakeApi::start().await;
    seed(&api);
    // The API server's CEL rules refuse this; the operator does not rely on them.
    api.put(autoscaler(json!([{"type": "LatencyP99", "target": 250}])));
    let controller = Controller::start(&api, 1, true);
    let accepted = eventually("Accepted=False", Duration::from_secs(10), || {
        condition(&status(&api), "Accepted").filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(accepted.1, "Invalid");
    assert!(
        accepted.2.contains("spec.metrics[0].target"),
        "{}",
        accepted.2
    );
    assert_eq!(scale_patches(&api), 0);
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_scales_and_writes_status() {
    let api = FakeApi::start().await;
    seed(&api);
    api.put(autoscaler(json!([{"type": "Concurrency", "target": 10}])));
    let sidecars = Sidecars::start(40.0).await;
    let controller = Controller::start(&api, sidecars.port, false);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(replicas(&api), 2);
    assert_eq!(status(&api), Value::Null);
    assert!(
        api.requests()
            .iter()
            .all(|r| r.method == "GET" && !r.path.ends_with("/scale")),
        "a follower only watches"
    );
    controller.leader.send_replace(true);
    eventually("the scale-up", Duration::from_secs(10), || {
        (replicas(&api) == 8).then_some(())
    })
    .await;
    controller.stop().await;
}
