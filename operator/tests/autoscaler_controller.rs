//! The Autoscaler controller through `kube::Client` against the in-process fake API server
//! (`fake_api`), with fake sidecars serving `/metrics` on loopback addresses as pod IPs:
//! scrape → decide → scale subresource, status, Events, the desired-replicas gauge, a
//! conflicting HPA, CPU from metrics.k8s.io (served and not), a bad spec, and leadership.

mod cluster;
mod fake_api;
mod loopback;

use cluster::{AutoscalerController, NS, autoscaler_settings, listeners, replicas};
use fake_api::FakeApi;
use loopback::orders_in_flight;
use serde_json::{Value, json};
use std::time::Duration;
use weir_testkit::FakeAdmin;
use weir_testkit::eventually_some;

const SCALE_PATH: &str = "/apis/apps/v1/namespaces/shop/deployments/orders/scale";

/// An orders pod at `ip`, asking for 100m of CPU (what a CPU utilization is a share of).
fn pod(name: &str, ip: &str) -> Value {
    let mut pod = cluster::running_pod(name, "orders", ip);
    pod["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "100m"}});
    pod
}

fn autoscaler(metrics: Value) -> Value {
    cluster::autoscaler("orders", metrics)
}

/// Fake sidecars on 127.0.0.2 and 127.0.0.3, one port: each reports `in_flight` inbound.
struct Sidecars {
    port: u16,
    admins: Vec<FakeAdmin>,
}

impl Sidecars {
    async fn start(in_flight: f64) -> Self {
        let (port, bound) = listeners(&[2, 3]).await;
        let admins = bound
            .into_iter()
            .map(|listener| FakeAdmin::start_on(listener, orders_in_flight(in_flight)))
            .collect();
        Self { port, admins }
    }

    fn set(&self, value: f64) {
        for admin in &self.admins {
            admin.set(orders_in_flight(value));
        }
    }
}

/// The controller evaluating every 100 ms, scraping `admin_port`, as the leader or not.
fn start(api: &FakeApi, admin_port: u16, leader: bool) -> AutoscalerController {
    let mut settings = autoscaler_settings(admin_port, Duration::from_millis(100));
    settings.scrape_timeout = Duration::from_millis(500);
    settings.status_interval = Duration::from_millis(500);
    AutoscalerController::start(api, settings, leader)
}

fn desired_gauge(controller: &AutoscalerController) -> i64 {
    controller
        .metrics
        .autoscaler_desired_replicas
        .with_label_values(&[NS, "orders"])
        .get()
}

/// Waits (10 s at most) until orders asks for `want` replicas.
async fn scaled_to(api: &FakeApi, what: &str, want: i64) {
    eventually_some(what, Duration::from_secs(10), || {
        (replicas(api, "orders") == want).then_some(())
    })
    .await;
}

/// Waits (10 s at most) until orders' status says `want` desired replicas; that status.
async fn desired(api: &FakeApi, want: i64) -> Value {
    eventually_some("the status", Duration::from_secs(10), || {
        let status = status(api);
        (status["desiredReplicas"] == want).then_some(status)
    })
    .await
}

fn status(api: &FakeApi) -> Value {
    cluster::weir_status(api, "Autoscaler", NS, "orders")
}

/// The condition `type_` of `status`: (status, reason, message).
fn condition(status: &Value, type_: &str) -> Option<(String, String, String)> {
    let c = cluster::condition(status, type_);
    let text = |field: &str| c[field].as_str().unwrap_or_default().to_owned();
    (!c.is_null()).then(|| (text("status"), text("reason"), text("message")))
}

/// Waits (10 s at most) until orders' condition `type_` is False; (status, reason, message).
async fn turned_false(api: &FakeApi, type_: &str) -> (String, String, String) {
    eventually_some(&format!("{type_}=False"), Duration::from_secs(10), || {
        condition(&status(api), type_).filter(|c| c.0 == "False")
    })
    .await
}

/// orders' Deployment at 2 replicas with its two pods (at 127.0.0.2 and .3), and an
/// Autoscaler of it on `metrics`.
async fn seeded(metrics: Value) -> FakeApi {
    let api = FakeApi::start().await;
    api.put(cluster::deployment("orders", 2));
    api.put(pod("orders-a", "127.0.0.2"));
    api.put(pod("orders-b", "127.0.0.3"));
    api.put(autoscaler(metrics));
    api
}

/// orders with a Concurrency target of 10, its sidecars at 40 in flight each, and the
/// controller started (as the leader or not) once `more` is in the fake too.
async fn loaded(
    leader: bool,
    more: impl FnOnce(&FakeApi),
) -> (FakeApi, Sidecars, AutoscalerController) {
    let api = seeded(json!([{"type": "Concurrency", "target": 10}])).await;
    more(&api);
    let sidecars = Sidecars::start(40.0).await;
    let controller = start(&api, sidecars.port, leader);
    (api, sidecars, controller)
}

fn scale_patches(api: &FakeApi) -> usize {
    api.requests_to("PATCH", SCALE_PATH).len()
}

/// The notes of the `SuccessfulRescale` Events so far.
fn rescale_notes(api: &FakeApi) -> Vec<String> {
    cluster::events(api)
        .into_iter()
        .filter(|e| e["reason"] == "SuccessfulRescale")
        .map(|e| e["note"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_load_scales_the_deployment_with_status_event_and_gauge() {
    // 40 in flight on each of 2 pods at a target of 10: 4× the target, so panic mode, at once
    // to ceil(2 × 40 / 10) = 8 (past the HPA's +4 / +100 % per 15 s).
    let (api, sidecars, controller) = loaded(true, |_| {}).await;
    scaled_to(&api, "the scale-up", 8).await;
    let status = desired(&api, 8).await;
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
    let event = eventually_some("the Event", Duration::from_secs(5), || {
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
    assert_eq!(desired_gauge(&controller), 8);
    // Steady at 8: no more scale writes while the load holds.
    let before = scale_patches(&api);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(scale_patches(&api), before);
    sidecars.set(40.0);
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_scale_is_an_event_of_its_own() {
    let (api, sidecars, controller) = loaded(true, |_| {}).await;
    scaled_to(&api, "the first scale-up", 8).await;
    // More load: the second scale, to the maximum.
    sidecars.set(100.0);
    scaled_to(&api, "the second scale-up", 10).await;
    // Two Events, each saying its own change (kube-runtime's recorder would have folded the
    // second into the first as a series, keeping the first's note).
    let notes = eventually_some("two Events", Duration::from_secs(5), || {
        let notes = rescale_notes(&api);
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
    let (api, _sidecars, controller) = loaded(true, |api| {
        api.put(json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "orders-hpa", "namespace": NS},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "orders"},
                 "minReplicas": 1, "maxReplicas": 5},
    }));
    })
    .await;
    let able = turned_false(&api, "AbleToScale").await;
    assert_eq!(able.1, "ConflictingHPA");
    assert!(able.2.contains("orders-hpa"), "{}", able.2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(replicas(&api, "orders"), 2);
    assert_eq!(scale_patches(&api), 0);

    // The HPA goes: Weir takes over.
    api.delete(
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        NS,
        "orders-hpa",
    );
    scaled_to(&api, "the scale-up", 8).await;
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_comes_from_metrics_k8s_io_when_served() {
    // metrics.k8s.io is not served (no metrics-server): CPU is unknown, nothing moves.
    let api = seeded(json!([{"type": "Cpu", "target": 50}])).await;
    api.without_metrics_server();
    let controller = start(&api, 1, true);
    let active = turned_false(&api, "ScalingActive").await;
    assert_eq!(active.1, "FailedGetMetrics");
    assert!(active.2.contains("Cpu"), "{}", active.2);
    assert_eq!(replicas(&api, "orders"), 2);
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
    let api = seeded(json!([{"type": "Cpu", "target": 50}])).await;
    for name in ["orders-a", "orders-b"] {
        api.put(json!({
            "apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetrics",
            "metadata": {"name": name, "namespace": NS, "labels": {"app": "orders"}},
            "timestamp": k8s_openapi::jiff::Timestamp::now().to_string(),
            "window": "30s",
            "containers": [{"name": "app", "usage": {"cpu": "200m", "memory": "10Mi"}}],
        }));
    }
    let controller = start(&api, 1, true);
    scaled_to(&api, "the scale-up", 6).await;
    let status = desired(&api, 6).await;
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
    // The API server's CEL rules refuse this; the operator does not rely on them.
    let api = seeded(json!([{"type": "LatencyP99", "target": 250}])).await;
    let controller = start(&api, 1, true);
    let accepted = turned_false(&api, "Accepted").await;
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
    let (api, _sidecars, controller) = loaded(false, |_| {}).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(replicas(&api, "orders"), 2);
    assert_eq!(status(&api), Value::Null);
    assert!(
        api.requests()
            .iter()
            .all(|r| r.method == "GET" && !r.path.ends_with("/scale")),
        "a follower only watches"
    );
    controller.leader.send_replace(true);
    scaled_to(&api, "the scale-up", 8).await;
    controller.stop().await;
}
