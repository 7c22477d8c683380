//! How the Autoscaler controller schedules its evaluations (kube-runtime's `Controller`), against
//! the in-process fake API server (`fake_api`) and fake sidecars on loopback addresses used as
//! pod IPs: Autoscalers evaluated concurrently (a hung sidecar delays nobody else), each once per
//! interval whatever watch events its own status writes cause, API errors retried with backoff,
//! a deleted Autoscaler no longer evaluated, and the shop's orders Autoscaler scaling down
//! without metrics-server.
//!
//! Paused tokio time where the test is about durations: the fake API server, the sidecars and
//! the controller share the test's one thread, so every loopback exchange completes before the
//! runtime idles and the clock only jumps when everything waits for a timer. (Watch events of
//! the fake did not reach kube's watcher under paused time, whereas they do in real time: the
//! tests about watch events run in real time.)

mod cluster;
mod fake_api;

use bytes::Bytes;
use cluster::{
    AutoscalerController, NS, autoscaler_settings as settings, deployment, listeners, replicas,
};
use fake_api::{FakeApi, Recorded};
use http::Response;
use http_body_util::Full;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use weir_testkit::eventually_some;

/// How long stopping may take: 30 s (on the paused clock, a hung scrape runs out first).
const STOP: Duration = Duration::from_secs(30);

fn scale_path(deployment: &str) -> String {
    format!("/apis/apps/v1/namespaces/{NS}/deployments/{deployment}/scale")
}

fn status_path(autoscaler: &str) -> String {
    format!("/apis/weir.dev/v1alpha1/namespaces/{NS}/autoscalers/{autoscaler}/status")
}

fn pod(name: &str, app: &str, ip: &str) -> Value {
    cluster::running_pod(name, app, ip)
}

/// The Autoscaler `name` of the Deployment `name`: a Concurrency target of 10.
fn autoscaler(name: &str) -> Value {
    cluster::autoscaler(name, json!([{"type": "Concurrency", "target": 10}]))
}

/// The admin listener of a steady sidecar of `app`: `in_flight` inbound requests (one more
/// every other scrape), and each
/// scrape sees one more request served in under 50 ms, so Concurrency, RequestsPerSecond and
/// LatencyP99 are all known (and low unless `in_flight` is high).
fn steady_sidecar(listener: TcpListener, app: &'static str, in_flight: f64) -> JoinHandle<()> {
    let served = Arc::new(AtomicU64::new(0));
    weir_testkit::serve(listener, move |_request| {
        let n = served.fetch_add(1, Ordering::SeqCst) + 1;
        let labels = format!("direction=\"inbound\",service=\"{app}\"");
        // One more every other scrape: status values move, so status is rewritten.
        let in_flight = in_flight + (n % 2) as f64;
        let body = format!(
            "weir_in_flight_requests{{{labels}}} {in_flight}\n\
             weir_requests_total{{code=\"200\",{labels},subset=\"\"}} {n}\n\
             weir_request_duration_seconds_bucket{{{labels},subset=\"\",le=\"0.05\"}} {n}\n\
             weir_request_duration_seconds_bucket{{{labels},subset=\"\",le=\"+Inf\"}} {n}\n"
        );
        async move { Response::new(Full::new(Bytes::from(body))) }
    })
}

/// An admin listener that hangs: it accepts connections and never answers nor closes them.
fn hung_sidecar(listener: TcpListener) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    })
}

/// The leading controller with these settings.
fn start(
    api: &FakeApi,
    settings: weir_operator::autoscaler::controller::Settings,
) -> AutoscalerController {
    AutoscalerController::start(api, settings, true)
}

/// Whether the `weir_autoscaler_desired_replicas` series of `name` exists.
fn has_gauge(running: &AutoscalerController, name: &str) -> bool {
    let text = String::from_utf8(running.metrics.encode()).unwrap();
    text.lines().any(|l| {
        l.starts_with("weir_autoscaler_desired_replicas{")
            && l.contains(&format!("name=\"{name}\""))
    })
}

/// The fake API server with orders at 2 replicas, its one pod at 127.0.0.2 whose steady
/// sidecar reports 5 in flight on the returned admin port, and its Autoscaler.
async fn orders_at_5_in_flight() -> (FakeApi, u16, JoinHandle<()>) {
    let api = FakeApi::start().await;
    let (port, mut bound) = listeners(&[2]).await;
    let sidecar = steady_sidecar(bound.pop().unwrap(), "orders", 5.0);
    api.put(deployment("orders", 2));
    api.put(pod("orders-a", "orders", "127.0.0.2"));
    api.put(autoscaler("orders"));
    (api, port, sidecar)
}

/// The status writes of the Autoscaler `name` so far.
fn status_writes(api: &FakeApi, name: &str) -> Vec<Recorded> {
    api.requests_to("PATCH", &status_path(name))
}

fn scale_reads(api: &FakeApi, deployment: &str) -> Vec<Recorded> {
    api.requests_to("GET", &scale_path(deployment))
}

/// The gaps between consecutive requests, in milliseconds.
fn gaps_ms(requests: &[Recorded]) -> Vec<u128> {
    requests
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_millis())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_sidecar_delays_no_other_autoscaler() {
    let api = FakeApi::start().await;
    // orders' pod answers at 127.0.0.2 (40 in flight: a scale-up); slow's pod at 127.0.0.4
    // accepts the scrape and never answers, for 6 s, the scrape timeout (long enough for orders'
    // scale-up to land meanwhile even on a loaded machine; with 3 s it once did not).
    let (port, mut bound) = listeners(&[2, 4]).await;
    let _hung = hung_sidecar(bound.pop().unwrap());
    let _steady = steady_sidecar(bound.pop().unwrap(), "orders", 40.0);
    api.put(deployment("orders", 2));
    api.put(pod("orders-a", "orders", "127.0.0.2"));
    api.put(deployment("slow", 2));
    api.put(pod("slow-a", "slow", "127.0.0.4"));
    api.put(autoscaler("slow"));
    api.put(autoscaler("orders"));
    let mut settings = settings(port, Duration::from_millis(100));
    settings.scrape_timeout = Duration::from_secs(6);
    let running = start(&api, settings);

    // slow's first evaluation ends when its scrape times out and its status is written.
    eventually_some("slow's status", Duration::from_secs(30), || {
        (!status_writes(&api, "slow").is_empty()).then_some(())
    })
    .await;
    let log = api.requests();
    let first = |method: &str, path: &str| {
        log.iter()
            .position(|r| r.method == method && r.path == path)
            .unwrap()
    };
    let (began, ended) = (
        first("GET", &scale_path("slow")),
        first("PATCH", &status_path("slow")),
    );
    let meanwhile = &log[began..ended];
    let orders_evaluations = meanwhile
        .iter()
        .filter(|r| r.method == "GET" && r.path == scale_path("orders"))
        .count();
    // A serial loop would have evaluated orders at most once while slow's scrape hung.
    assert!(
        orders_evaluations >= 5,
        "orders was evaluated {orders_evaluations} times while slow's scrape hung"
    );
    // Scaled before slow's hung evaluation ended: while it hung, or before it began (the
    // controller may take orders first), never held up behind it.
    assert!(
        log[..ended]
            .iter()
            .any(|r| r.method == "PATCH" && r.path == scale_path("orders")),
        "orders was not scaled before slow's hung scrape ended"
    );
    assert!(replicas(&api, "orders") > 2);
    running.stop_within(STOP).await;
}

#[tokio::test(start_paused = true)]
async fn each_autoscaler_is_evaluated_once_per_interval() {
    let (api, port, _sidecar) = orders_at_5_in_flight().await;
    let mut settings = settings(port, Duration::from_secs(10));
    settings.status_interval = Duration::from_secs(1);
    let running = start(&api, settings);
    tokio::time::sleep(Duration::from_secs(65)).await;

    let reads = scale_reads(&api, "orders");
    assert!(reads.len() >= 6, "{} evaluations in 65 s", reads.len());
    // Each evaluation starts 10 s after the previous one started.
    for gap in gaps_ms(&reads) {
        assert!((10_000..10_100).contains(&gap), "{:?}", gaps_ms(&reads));
    }
    assert_eq!(running.reconciles("success"), reads.len() as u64);
    running.stop_within(STOP).await;
}

/// Real time: the watch events of the controller's own status writes must reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_writes_do_not_bring_evaluations_forward() {
    let (api, port, _sidecar) = orders_at_5_in_flight().await;
    let mut settings = settings(port, Duration::from_millis(500));
    settings.status_interval = Duration::from_millis(1);
    let running = start(&api, settings);
    eventually_some("status written 4 times", Duration::from_secs(30), || {
        (status_writes(&api, "orders").len() >= 4).then_some(())
    })
    .await;
    // Each status write is a watch event that reconciles the Autoscaler at once; that
    // reconcile keeps the schedule instead of evaluating again. (The lower bound allows for
    // the first request of one evaluation reaching the fake later than the next one's.)
    let reads = scale_reads(&api, "orders");
    assert!(reads.len() >= 4);
    for gap in gaps_ms(&reads) {
        assert!(gap >= 400, "{:?}", gaps_ms(&reads));
    }
    running.stop_within(STOP).await;
}

#[tokio::test(start_paused = true)]
async fn api_errors_are_retried_with_backoff() {
    let (api, port, _sidecar) = orders_at_5_in_flight().await;
    // The scale cannot be read three times in a row.
    api.fail("GET", "/deployments/orders/scale", 500, "InternalError", 3);
    let running = start(&api, settings(port, Duration::from_secs(1)));
    tokio::time::sleep(Duration::from_secs(20)).await;

    let reads = scale_reads(&api, "orders");
    let codes: Vec<u16> = reads.iter().map(|r| r.code).collect();
    assert_eq!(&codes[..4], [500, 500, 500, 200]);
    // 2 s, 4 s, 8 s after the failures, then back to the 1 s interval.
    let rounded: Vec<u128> = gaps_ms(&reads)
        .into_iter()
        .take(5)
        .map(|ms| (ms + 50) / 100 * 100)
        .collect();
    assert_eq!(rounded, [2_000, 4_000, 8_000, 1_000, 1_000]);
    assert_eq!(running.reconciles("error"), 3);
    // The status said why meanwhile.
    let failed_status = status_writes(&api, "orders")
        .iter()
        .any(|r| r.body.to_string().contains("FailedGetScale"));
    assert!(
        failed_status,
        "AbleToScale=False FailedGetScale was written"
    );
    running.stop_within(STOP).await;
}

// Real time: the deletion reaches the Controller through the watch, whose events from the
// in-process fake do not arrive under tokio's paused clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_autoscaler_is_no_longer_evaluated() {
    let (api, port, _sidecar) = orders_at_5_in_flight().await;
    let running = start(&api, settings(port, Duration::from_secs(1)));
    eventually_some("three evaluations", Duration::from_secs(20), || {
        (scale_reads(&api, "orders").len() >= 3).then_some(())
    })
    .await;
    assert!(has_gauge(&running, "orders"));

    api.delete("weir.dev/v1alpha1", "Autoscaler", NS, "orders");
    // Its next scheduled evaluation finds it gone: forgotten, gauge series included.
    eventually_some("the gauge series to go", Duration::from_secs(10), || {
        (!has_gauge(&running, "orders")).then_some(())
    })
    .await;
    let after_delete = scale_reads(&api, "orders").len();
    // Five of its intervals.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(scale_reads(&api, "orders").len(), after_delete);
    running.stop_within(STOP).await;
}

/// The shop's orders Autoscaler exactly as `examples/shop/k8s/orders.yaml` has it.
fn shop_orders_autoscaler() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/shop/k8s/orders.yaml"
    );
    let text = std::fs::read_to_string(path).expect("the shop's orders manifests");
    serde_saphyr::from_multiple::<Value>(&text)
        .expect("YAML")
        .into_iter()
        .find(|v| v["kind"] == "Autoscaler")
        .expect("an Autoscaler in orders.yaml")
}

#[tokio::test(start_paused = true)]
async fn the_shops_orders_autoscaler_scales_down_without_metrics_server() {
    let api = FakeApi::start().await;
    let autoscaler = shop_orders_autoscaler();
    let metrics: Vec<&str> = autoscaler["spec"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    assert!(
        !metrics.contains(&"Cpu"),
        "Cpu needs metrics-server: {metrics:?}"
    );
    // No metrics-server: metrics.k8s.io is not served.
    api.without_metrics_server();
    let (port, mut bound) = listeners(&[2, 3]).await;
    let _b = steady_sidecar(bound.pop().unwrap(), "orders", 1.0);
    let _a = steady_sidecar(bound.pop().unwrap(), "orders", 1.0);
    api.put(deployment("orders", 6));
    api.put(pod("orders-a", "orders", "127.0.0.2"));
    api.put(pod("orders-b", "orders", "127.0.0.3"));
    api.put(autoscaler);
    let running = start(&api, settings(port, Duration::from_secs(2)));

    // 1 in flight per pod against a target of 10: down to minReplicas (2), as fast as its
    // behavior allows (a 300 s stabilization window, then at most half per 60 s).
    eventually_some("the scale-down to 2", Duration::from_secs(15 * 60), || {
        (replicas(&api, "orders") == 2).then_some(())
    })
    .await;
    let rescaled = cluster::events(&api)
        .into_iter()
        .filter(|e| e["reason"] == "SuccessfulRescale")
        .count();
    assert!(rescaled >= 1);
    assert!(
        api.requests()
            .iter()
            .all(|r| !r.path.starts_with("/apis/metrics.k8s.io/")),
        "without a Cpu metric, metrics.k8s.io is never asked"
    );
    running.stop_within(STOP).await;
}
