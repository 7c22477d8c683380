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

mod fake_api;
mod loopback;

use bytes::Bytes;
use fake_api::{FakeApi, Recorded};
use futures::StreamExt;
use http::Response;
use http_body_util::Full;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, watcher};
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

fn scale_path(deployment: &str) -> String {
    format!("/apis/apps/v1/namespaces/{NS}/deployments/{deployment}/scale")
}

fn status_path(autoscaler: &str) -> String {
    format!("/apis/weir.dev/v1alpha1/namespaces/{NS}/autoscalers/{autoscaler}/status")
}

fn deployment(name: &str, replicas: i64) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "app", "image": name}]}},
        },
        "status": {"replicas": replicas},
    })
}

fn pod(name: &str, app: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": app}},
        "spec": {"containers": [{"name": "app", "image": app}]},
        "status": {
            "phase": "Running", "podIP": ip, "startTime": "2025-01-01T00:00:00Z",
            "conditions": [{"type": "Ready", "status": "True",
                            "lastTransitionTime": "2025-01-01T00:00:10Z"}],
        },
    })
}

fn autoscaler(name: &str) -> Value {
    json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "Autoscaler",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": 1, "maxReplicas": 10,
            "metrics": [{"type": "Concurrency", "target": 10}],
        },
    })
}

/// The admin listener of a steady sidecar of `app`: `in_flight` inbound requests (one more
/// every other scrape), and each
/// scrape sees one more request served in under 50 ms, so Concurrency, RequestsPerSecond and
/// LatencyP99 are all known (and low unless `in_flight` is high).
fn steady_sidecar(listener: TcpListener, app: &'static str, in_flight: f64) -> JoinHandle<()> {
    let served = Arc::new(AtomicU64::new(0));
    loopback::serve(listener, move |_request| {
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

/// Listeners on one port at each of `hosts` (127.0.0.x): pods' admin listeners share the port.
async fn listeners(hosts: &[u8]) -> (u16, Vec<TcpListener>) {
    'port: for _ in 0..20 {
        let first = TcpListener::bind((Ipv4Addr::new(127, 0, 0, hosts[0]), 0))
            .await
            .expect("bind");
        let port = first.local_addr().unwrap().port();
        let mut all = vec![first];
        for host in &hosts[1..] {
            match TcpListener::bind((Ipv4Addr::new(127, 0, 0, *host), port)).await {
                Ok(listener) => all.push(listener),
                Err(_) => continue 'port,
            }
        }
        return (port, all);
    }
    panic!("no port free on every host");
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

struct Running {
    metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    _leader: watch::Sender<bool>,
    task: JoinHandle<Result<(), controller::Error>>,
}

impl Running {
    fn start(api: &FakeApi, settings: Settings) -> Self {
        let metrics = Arc::new(Metrics::new());
        let (leader, leader_rx) = watch::channel(true);
        let (stop, shutdown) = watch::channel(false);
        let (pods, pod_watch) = pod_store(api.client());
        let (client, for_run) = (api.client(), metrics.clone());
        let task = tokio::spawn(async move {
            let result =
                controller::run(client, settings, pods, for_run, leader_rx, shutdown).await;
            pod_watch.abort();
            result
        });
        Self {
            metrics,
            stop,
            _leader: leader,
            task,
        }
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("stops on shutdown")
            .expect("no panic")
            .expect("no error");
    }

    /// Whether the `weir_autoscaler_desired_replicas` series of `name` exists.
    fn has_gauge(&self, name: &str) -> bool {
        let text = String::from_utf8(self.metrics.encode()).unwrap();
        text.lines().any(|l| {
            l.starts_with("weir_autoscaler_desired_replicas{")
                && l.contains(&format!("name=\"{name}\""))
        })
    }

    fn reconciles(&self, result: &str) -> u64 {
        self.metrics
            .reconcile
            .with_label_values(&["Autoscaler", result])
            .get()
    }
}

fn settings(admin_port: u16, interval: Duration) -> Settings {
    let mut settings = Settings::new("weir-operator-0");
    settings.namespace = Some(NS.to_owned());
    settings.interval = interval;
    settings.admin_port = admin_port;
    settings
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

fn replicas(api: &FakeApi, deployment: &str) -> i64 {
    api.get("apps/v1", "Deployment", NS, deployment).unwrap()["spec"]["replicas"]
        .as_i64()
        .unwrap()
}

fn scale_reads(api: &FakeApi, deployment: &str) -> Vec<Recorded> {
    let path = scale_path(deployment);
    api.requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == path)
        .collect()
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
    let running = Running::start(&api, settings);

    // slow's first evaluation ends when its scrape times out and its status is written.
    eventually("slow's status", Duration::from_secs(30), || {
        api.requests()
            .iter()
            .any(|r| r.method == "PATCH" && r.path == status_path("slow"))
            .then_some(())
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
    assert!(
        meanwhile
            .iter()
            .any(|r| r.method == "PATCH" && r.path == scale_path("orders")),
        "orders was scaled while slow's scrape hung"
    );
    assert!(replicas(&api, "orders") > 2);
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn each_autoscaler_is_evaluated_once_per_interval() {
    let api = FakeApi::start().await;
    let (port, mut bound) = listeners(&[2]).await;
    let _sidecar = steady_sidecar(bound.pop().unwrap(), "orders", 5.0);
    api.put(deployment("orders", 2));
    api.put(pod("orders-a", "orders", "127.0.0.2"));
    api.put(autoscaler("orders"));
    let mut settings = settings(port, Duration::from_secs(10));
    settings.status_interval = Duration::from_secs(1);
    let running = Running::start(&api, settings);
    tokio::time::sleep(Duration::from_secs(65)).await;

    let reads = scale_reads(&api, "orders");
    assert!(reads.len() >= 6, "{} evaluations in 65 s", reads.len());
    // Each evaluation starts 10 s after the previous one started.
    for gap in gaps_ms(&reads) {
        assert!((10_000..10_100).contains(&gap), "{:?}", gaps_ms(&reads));
    }
    assert_eq!(running.reconciles("success"), reads.len() as u64);
    running.stop().await;
}

/// Real time: the watch events of the controller's own status writes must reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_writes_do_not_bring_evaluations_forward() {
    let api = FakeApi::start().await;
    let (port, mut bound) = listeners(&[2]).await;
    let _sidecar = steady_sidecar(bound.pop().unwrap(), "orders", 5.0);
    api.put(deployment("orders", 2));
    api.put(pod("orders-a", "orders", "127.0.0.2"));
    api.put(autoscaler("orders"));
    let mut settings = settings(port, Duration::from_millis(500));
    settings.status_interval = Duration::from_millis(1);
    let running = Running::start(&api, settings);
    eventually("status written 4 times", Duration::from_secs(30), || {
        let writes = api
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH" && r.path == status_path("orders"))
            .count();
        (writes >= 4).then_some(())
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
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn api_errors_are_retried_with_backoff() {
    let api = FakeApi::start().await;
    let (port, mut bound) = listeners(&[2]).await;
    let _sidecar = steady_sidecar(bound.pop().unwrap(), "orders", 5.0);
    api.put(deployment("orders", 2));
    api.put(pod("orders-a", "orders", "127.0.0.2"));
    api.put(autoscaler("orders"));
    // The scale cannot be read three times in a row.
    api.fail("GET", "/deployments/orders/scale", 500, "InternalError", 3);
    let running = Running::start(&api, settings(port, Duration::from_secs(1)));
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
    let failed_status = api.requests().into_iter().any(|r| {
        r.method == "PATCH"
            && r.path == status_path("orders")
            && r.body.to_string().contains("FailedGetScale")
    });
    assert!(
        failed_status,
        "AbleToScale=False FailedGetScale was written"
    );
    running.stop().await;
}

// Real time: the deletion reaches the Controller through the watch, whose events from the
// in-process fake do not arrive under tokio's paused clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_autoscaler_is_no_longer_evaluated() {
    let api = FakeApi::start().await;
    let (port, mut bound) = listeners(&[2]).await;
    let _sidecar = steady_sidecar(bound.pop().unwrap(), "orders", 5.0);
    api.put(deployment("orders", 2));
    api.put(pod("orders-a", "orders", "127.0.0.2"));
    api.put(autoscaler("orders"));
    let running = Running::start(&api, settings(port, Duration::from_secs(1)));
    eventually("three evaluations", Duration::from_secs(20), || {
        (scale_reads(&api, "orders").len() >= 3).then_some(())
    })
    .await;
    assert!(running.has_gauge("orders"));

    api.delete("weir.dev/v1alpha1", "Autoscaler", NS, "orders");
    // Its next scheduled evaluation finds it gone: forgotten, gauge series included.
    eventually("the gauge series to go", Duration::from_secs(10), || {
        (!running.has_gauge("orders")).then_some(())
    })
    .await;
    let after_delete = scale_reads(&api, "orders").len();
    // Five of its intervals.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(scale_reads(&api, "orders").len(), after_delete);
    running.stop().await;
}

/// The shop's orders Autoscaler exactly as `examples/shop/k8s/orders.yaml` has it.
fn shop_orders_autoscaler() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/shop/k8s/orders.yaml"
    );
    let text = std::fs::read_to_string(path).expect("the shop's orders manifests");
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| serde::Deserialize::deserialize(document).expect("YAML"))
        .find(|v: &Value| v["kind"] == "Autoscaler")
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
    api.fail(
        "GET",
        "/apis/metrics.k8s.io/v1beta1/namespaces/shop/pods",
        404,
        "NotFound",
        usize::MAX,
    );
    let (port, mut bound) = listeners(&[2, 3]).await;
    let _b = steady_sidecar(bound.pop().unwrap(), "orders", 1.0);
    let _a = steady_sidecar(bound.pop().unwrap(), "orders", 1.0);
    api.put(deployment("orders", 6));
    api.put(pod("orders-a", "orders", "127.0.0.2"));
    api.put(pod("orders-b", "orders", "127.0.0.3"));
    api.put(autoscaler);
    let running = Running::start(&api, settings(port, Duration::from_secs(2)));

    // 1 in flight per pod against a target of 10: down to minReplicas (2), as fast as its
    // behavior allows (a 300 s stabilization window, then at most half per 60 s).
    eventually("the scale-down to 2", Duration::from_secs(15 * 60), || {
        (replicas(&api, "orders") == 2).then_some(())
    })
    .await;
    let rescaled = api
        .objects("events.k8s.io/v1", "Event")
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
    running.stop().await;
}
