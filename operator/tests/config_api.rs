//! The config API end to end: the operator's server on a real socket, the real sidecar
//! (`weir_sidecar::start`, in process) as its client, and real upstream HTTP servers. Snapshots
//! are published the way the sources publish them, on a `watch` channel.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use weir_operator::config_api::{ConfigApi, ProxyStatus};
use weir_operator::metrics::Metrics;
use weir_operator::snapshot::{ServiceKey, Snapshot};
use weir_proxy_api::{ServiceConfig, Subset};
use weir_testkit::{Upstream, client, eventually, metric};

const PAYMENTS: &str = "service/shop/payments";

// ---- Fixtures ---------------------------------------------------------------------------------

/// A real HTTP server on loopback that answers 200 with its name and says who served.
async fn upstream(name: &'static str) -> Upstream {
    Upstream::fixed(200, name).await
}

/// The operator's config API on a loopback port, fed by a snapshot channel the test publishes to.
struct ControlPlane {
    api: Arc<ConfigApi>,
    metrics: Arc<Metrics>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ControlPlane {
    async fn start(snapshots: watch::Receiver<Arc<Snapshot>>) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), snapshots).await
    }

    async fn start_on(addr: SocketAddr, snapshots: watch::Receiver<Arc<Snapshot>>) -> Self {
        let metrics = Arc::new(Metrics::new());
        let api = ConfigApi::new(snapshots, metrics.clone());
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(api.clone().serve(listener, stopped));
        Self {
            api,
            metrics,
            addr,
            stop,
            task,
        }
    }

    fn url(&self) -> http::Uri {
        format!("http://{}", self.addr).parse().unwrap()
    }

    /// Stops serving and waits until the server is gone.
    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the config API stops within its drain timeout")
            .unwrap();
    }

    fn metrics(&self) -> String {
        String::from_utf8(self.metrics.encode()).unwrap()
    }

    fn proxy(&self) -> ProxyStatus {
        let proxies = self.api.proxies();
        assert_eq!(proxies.len(), 1, "{proxies:#?}");
        proxies.into_iter().next().unwrap()
    }
}

/// Publishes snapshots the way the sources do (`Snapshot::next`, no validation on the way).
struct Source {
    tx: watch::Sender<Arc<Snapshot>>,
}

impl Source {
    fn new() -> (Self, watch::Receiver<Arc<Snapshot>>) {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        (Self { tx }, rx)
    }

    /// Publishes `services` (everything else empty); returns the new snapshot's version.
    fn publish(&self, services: Vec<ServiceConfig>) -> u64 {
        self.publish_observed(services, None)
    }

    /// As `publish`, saying when the source observed the change.
    fn publish_observed(&self, services: Vec<ServiceConfig>, observed: Option<Instant>) -> u64 {
        let services: HashMap<ServiceKey, ServiceConfig> = services
            .into_iter()
            .map(|s| (ServiceKey::new(&s.namespace, &s.name), s))
            .collect();
        let next = self
            .tx
            .borrow()
            .next(&services, &HashMap::new())
            .expect("the test publishes changes");
        let next = Snapshot { observed, ..next };
        let version = next.version;
        self.tx.send_replace(Arc::new(next));
        version
    }
}

/// `payments` in `shop` with subsets (name, weight, endpoints).
fn payments(subsets: &[(&str, u32, &[SocketAddr])]) -> ServiceConfig {
    ServiceConfig {
        name: "payments".into(),
        namespace: "shop".into(),
        addresses: Vec::new(),
        subsets: subsets
            .iter()
            .map(|(name, weight, endpoints)| Subset {
                name: (*name).into(),
                weight: *weight,
                endpoints: endpoints.to_vec(),
            })
            .collect(),
        rules: Vec::new(),
        ports: Vec::new(),
        policy: Default::default(),
    }
}

/// A sidecar of `checkout` in `shop`, on free loopback ports, fed by the control plane.
async fn sidecar(url: http::Uri, pod: Option<String>) -> weir_sidecar::Running {
    let options = weir_sidecar::Options {
        config: None,
        control_plane: Some(url),
        service: "checkout".into(),
        namespace: "shop".into(),
        pod,
        outbound: "127.0.0.1:0".parse().unwrap(),
        inbound: "127.0.0.1:0".parse().unwrap(),
        app: "127.0.0.1:9".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        drain_timeout: Duration::from_secs(1),
        subscription_idle: Duration::from_secs(600),
        token_file: None,
        threads: 1,
    };
    weir_sidecar::start(options).await.unwrap()
}

/// A source that published `services` (if any), the config API serving it, and a ready sidecar
/// of checkout polling it; the version published.
async fn serving(
    services: Vec<ServiceConfig>,
) -> (Source, u64, ControlPlane, weir_sidecar::Running) {
    let (source, snapshots) = Source::new();
    let version = if services.is_empty() {
        0
    } else {
        source.publish(services)
    };
    let cp = ControlPlane::start(snapshots).await;
    let sidecar = ready_sidecar(cp.url()).await;
    (source, version, cp, sidecar)
}

async fn ready_sidecar(url: http::Uri) -> weir_sidecar::Running {
    let running = sidecar(url, None).await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            running.store.is_ready()
        })
        .await,
        "the sidecar did not become ready"
    );
    running
}

/// `GET /` with `Host: host` through `addr`: (status, headers, body).
async fn get(addr: SocketAddr, host: &str) -> (u16, http::HeaderMap, String) {
    weir_testkit::get(addr, "/", host).await
}

/// Asserts that 5 calls of payments through `sidecar` are answered 200 by upstream `a`, `why`.
async fn answers_by_a(sidecar: &weir_sidecar::Running, why: &str) {
    for i in 0..5 {
        let (status, _, body) = get(sidecar.outbound, "payments").await;
        assert_eq!((status, body.as_str()), (200, "a"), "call {i}: {why}");
    }
}

/// Waits (1 s at most) for the config API's first push latency sample; the seconds summed.
async fn push_seconds(cp: &ControlPlane) -> f64 {
    let sampled = eventually(Duration::from_secs(1), || async {
        metric(&cp.metrics(), "weir_config_push_seconds_count").is_some_and(|n| n >= 1.0)
    })
    .await;
    assert!(sampled, "no push latency sample:\n{}", cp.metrics());
    metric(&cp.metrics(), "weir_config_push_seconds_sum").unwrap()
}

fn holds(status: &ProxyStatus, resource: &str) -> Option<u64> {
    status.held.get(resource).copied().flatten()
}

/// Waits until the (single) proxy's last poll names `resource` at `version`.
async fn acknowledged(cp: &ControlPlane, resource: &str, version: u64) {
    let acked = eventually(Duration::from_secs(3), || async {
        cp.api
            .proxies()
            .iter()
            .any(|p| holds(p, resource) == Some(version))
    })
    .await;
    assert!(
        acked,
        "{resource} v{version} never acknowledged: {:#?}",
        cp.api.proxies()
    );
}

// ---- Tests ------------------------------------------------------------------------------------

#[tokio::test]
async fn a_sidecar_subscribes_to_its_inbound_policy_and_becomes_ready() {
    let (_source, _, cp, sidecar) = serving(Vec::new()).await;

    // No inbound policy published: the empty one at version 0, acknowledged by the next poll.
    acknowledged(&cp, "inbound", 0).await;
    let proxy = cp.proxy();
    assert_eq!(
        (proxy.node.namespace.as_str(), proxy.node.service.as_str()),
        ("shop", "checkout")
    );
    assert_eq!(
        proxy.held.keys().collect::<Vec<_>>(),
        ["inbound"],
        "only its own inbound policy"
    );
    assert!(proxy.polling, "its next poll is held");
    assert_eq!(metric(&cp.metrics(), "weir_connected_proxies"), Some(1.0));
    assert_eq!(
        sidecar.store.metrics.control_plane_connected.get(),
        1,
        "the sidecar says it is connected"
    );
}

#[tokio::test]
async fn the_first_call_is_answered_through_the_published_upstream() {
    let up = upstream("payments").await;
    let (_source, version, cp, sidecar) =
        serving(vec![payments(&[("default", 100, &[up.addr])])]).await;

    let (status, headers, body) = get(sidecar.outbound, "payments").await;
    assert_eq!((status, body.as_str()), (200, "payments"));
    assert_eq!(headers["x-served-by"], up.addr.to_string().as_str());
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);
    acknowledged(&cp, PAYMENTS, version).await;
    // The subscription abandoned a poll and opened a new connection: still one proxy.
    assert!(
        eventually(Duration::from_secs(2), || async {
            metric(&cp.metrics(), "weir_connected_proxies") == Some(1.0)
                && cp.api.proxies().len() == 1
        })
        .await,
        "{:#?}",
        cp.api.proxies()
    );
    assert_eq!(
        metric(&cp.metrics(), "weir_config_version"),
        Some(version as f64)
    );
}

#[tokio::test]
async fn a_weight_edit_shifts_traffic_within_a_second() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let (source, v1, cp, sidecar) = serving(vec![payments(&[
        ("v1", 100, &[a.addr]),
        ("v2", 0, &[b.addr]),
    ])])
    .await;
    for _ in 0..5 {
        assert_eq!(get(sidecar.outbound, "payments").await.2, "a");
    }
    acknowledged(&cp, PAYMENTS, v1).await;

    let changed = Instant::now();
    let v2 = source.publish(vec![payments(&[
        ("v1", 0, &[a.addr]),
        ("v2", 100, &[b.addr]),
    ])]);
    let moved = eventually(Duration::from_secs(2), || async {
        get(sidecar.outbound, "payments").await.2 == "b"
    })
    .await;
    let took = changed.elapsed();
    assert!(moved, "traffic never moved to v2");
    assert!(took <= Duration::from_secs(1), "the shift took {took:?}");
    for _ in 0..10 {
        assert_eq!(get(sidecar.outbound, "payments").await.2, "b");
    }
    acknowledged(&cp, PAYMENTS, v2).await;
    let seconds = push_seconds(&cp).await;
    println!(
        "weight edit: traffic shifted after {took:?}; server-side push latency {seconds:.4} s"
    );
    assert!(seconds < 1.0, "push took {seconds} s");
}

#[tokio::test]
async fn push_latency_counts_from_when_the_source_observed_the_change() {
    let a = upstream("a").await;
    let (source, v1, cp, sidecar) = serving(vec![payments(&[("v1", 1, &[a.addr])])]).await;
    assert_eq!(get(sidecar.outbound, "payments").await.2, "a");
    acknowledged(&cp, PAYMENTS, v1).await;

    // The source saw the change 300 ms before it published it (debounce, translation).
    let observed = Instant::now() - Duration::from_millis(300);
    let v2 = source.publish_observed(vec![payments(&[("v2", 1, &[a.addr])])], Some(observed));
    acknowledged(&cp, PAYMENTS, v2).await;
    let seconds = push_seconds(&cp).await;
    assert!(
        (0.3..1.0).contains(&seconds),
        "change observed → acknowledged: {seconds} s"
    );
}

#[tokio::test]
async fn an_unknown_service_gets_503_with_the_control_planes_message() {
    let (_source, _, cp, sidecar) = serving(Vec::new()).await;

    let (status, headers, body) = get(sidecar.outbound, "nosuch").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["x-weir-reason"], "no-healthy-endpoints");
    assert!(
        body.contains("service nosuch.shop is not known to the control plane"),
        "{body}"
    );
    // The proxy holds the not-found answer at version 0 and is not sent it again.
    acknowledged(&cp, "service/shop/nosuch", 0).await;
    let polls = cp.proxy().polls;
    assert_eq!(get(sidecar.outbound, "nosuch").await.0, 503);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(cp.proxy().polls, polls, "nothing to resend, nothing asked");
}

#[tokio::test]
async fn a_rejected_update_is_counted_not_resent_and_the_proxy_keeps_its_config() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let (source, good, cp, sidecar) = serving(vec![payments(&[("default", 100, &[a.addr])])]).await;
    assert_eq!(get(sidecar.outbound, "payments").await.2, "a");
    acknowledged(&cp, PAYMENTS, good).await;

    // Every weight 0: fails ServiceConfig::validate in the proxy.
    let bad_config = payments(&[("v1", 0, &[a.addr]), ("v2", 0, &[b.addr])]);
    assert!(bad_config.validate().is_err());
    let bad = source.publish(vec![bad_config]);
    let nacked = eventually(Duration::from_secs(2), || async {
        metric(
            &cp.metrics(),
            "weir_config_rejected_total{kind=\"service\"}",
        ) == Some(1.0)
    })
    .await;
    assert!(nacked, "no rejection counted:\n{}", cp.metrics());
    let proxy = cp.proxy();
    assert_eq!(proxy.rejected.get(PAYMENTS), Some(&bad), "{proxy:#?}");
    assert_eq!(
        holds(&proxy, PAYMENTS),
        Some(good),
        "it still runs the good version"
    );

    // Not resent in a loop: the proxy's poll stays held.
    let before = cp.proxy().polls;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let polls = cp.proxy().polls - before;
    assert!(polls < 10, "{polls} polls in 1 s after the rejection");
    println!("polls in the second after the rejection: {polls}");
    answers_by_a(&sidecar, "the last good config serves").await;
    assert_eq!(
        sidecar
            .store
            .metrics
            .config_rejected
            .with_label_values(&["control-plane"])
            .get(),
        1,
        "the proxy refused it once"
    );

    // A later good version is pushed and applied.
    let fixed = source.publish(vec![payments(&[("default", 100, &[b.addr])])]);
    assert!(
        eventually(Duration::from_secs(1), || async {
            get(sidecar.outbound, "payments").await.2 == "b"
        })
        .await
    );
    acknowledged(&cp, PAYMENTS, fixed).await;
    assert!(cp.proxy().rejected.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_proxies_acknowledge_a_weight_edit() {
    const PROXIES: usize = 100;
    const EDITS: usize = 20;
    let a = upstream("a").await;
    let b = upstream("b").await;
    let (source, snapshots) = Source::new();
    let mut version = source.publish(vec![payments(&[
        ("v1", 100, &[a.addr]),
        ("v2", 0, &[b.addr]),
    ])]);
    let cp = ControlPlane::start(snapshots).await;

    let mut sidecars = Vec::new();
    for i in 0..PROXIES {
        sidecars.push(sidecar(cp.url(), Some(format!("checkout-{i}"))).await);
    }
    let ready = eventually(Duration::from_secs(10), || async {
        sidecars.iter().all(|s| s.store.is_ready())
    })
    .await;
    assert!(ready, "not every sidecar became ready");
    // One call each subscribes every proxy to payments.
    let mut calls = JoinSet::new();
    for s in &sidecars {
        let outbound = s.outbound;
        calls.spawn(async move { get(outbound, "payments").await });
    }
    while let Some(call) = calls.join_next().await {
        let (status, _, body) = call.unwrap();
        assert_eq!((status, body.as_str()), (200, "a"));
    }

    let mut polls = cp.api.poll_counter();
    // Waits (on the server's poll notifications, not on sleeps) until every proxy names
    // payments at `version`.
    let all_acknowledged = |version: u64| {
        let proxies = cp.api.proxies();
        proxies.len() == PROXIES
            && proxies
                .iter()
                .all(|p| holds(p, PAYMENTS).is_some_and(|v| v >= version))
    };
    let subscribed = tokio::time::timeout(Duration::from_secs(10), async {
        while !all_acknowledged(version) {
            polls.changed().await.unwrap();
        }
    })
    .await;
    assert!(subscribed.is_ok(), "not every proxy subscribed");

    let mut took = Vec::new();
    for edit in 0..EDITS {
        let (w1, w2) = if edit.is_multiple_of(2) {
            (0, 100)
        } else {
            (100, 0)
        };
        polls.borrow_and_update();
        let changed = Instant::now();
        version = source.publish(vec![payments(&[
            ("v1", w1, &[a.addr]),
            ("v2", w2, &[b.addr]),
        ])]);
        let done = tokio::time::timeout(Duration::from_secs(10), async {
            while !all_acknowledged(version) {
                polls.changed().await.unwrap();
            }
        })
        .await;
        assert!(
            done.is_ok(),
            "edit {edit}: not all {PROXIES} proxies acknowledged v{version} within 10 s"
        );
        took.push(changed.elapsed());
    }
    took.sort();
    let at = |q: f64| took[((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1];
    let text = cp.metrics();
    let count = metric(&text, "weir_config_push_seconds_count").unwrap_or(0.0);
    let sum = metric(&text, "weir_config_push_seconds_sum").unwrap_or(0.0);
    println!(
        "{PROXIES} proxies, {EDITS} weight edits, change → all acknowledged: p50 {:?}, p99 {:?}, \
         max {:?}; server-side weir_config_push_seconds: {count} samples, mean {:.2} ms",
        at(0.5),
        at(0.99),
        took[took.len() - 1],
        if count > 0.0 {
            sum / count * 1000.0
        } else {
            0.0
        },
    );
    assert!(count >= EDITS as f64, "every edit observed once: {count}");

    // Traffic follows the last edit (v1 100 after an even number of edits).
    let (_, _, body) = get(sidecars[0].outbound, "payments").await;
    assert_eq!(body, if EDITS.is_multiple_of(2) { "a" } else { "b" });
    for s in sidecars {
        s.shutdown().await;
    }
    assert!(cp.api.proxies().len() <= PROXIES);
}

#[tokio::test]
async fn the_sidecar_survives_the_control_plane_going_away_and_resyncs() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let (source, snapshots) = Source::new();
    let v1 = source.publish(vec![payments(&[("default", 100, &[a.addr])])]);
    let cp = ControlPlane::start(snapshots.clone()).await;
    let addr = cp.addr;
    let sidecar = ready_sidecar(cp.url()).await;
    assert_eq!(get(sidecar.outbound, "payments").await.2, "a");
    acknowledged(&cp, PAYMENTS, v1).await;

    // Held polls are answered at once on shutdown: stopping does not wait for them.
    let stopping = Instant::now();
    cp.stop().await;
    let stopped = stopping.elapsed();
    assert!(
        stopped < Duration::from_secs(1),
        "stopping took {stopped:?}"
    );
    let disconnected = eventually(Duration::from_secs(2), || async {
        sidecar.store.metrics.control_plane_connected.get() == 0
    })
    .await;
    assert!(disconnected, "weir_control_plane_connected stayed 1");
    answers_by_a(&sidecar, "serving with what it holds").await;

    // Back on the same port (a restarted operator: no memory of the proxy).
    let cp = ControlPlane::start_on(addr, snapshots).await;
    let back = eventually(Duration::from_secs(6), || async {
        !cp.api.proxies().is_empty()
    })
    .await;
    assert!(back, "the sidecar did not come back");
    let proxy = cp.proxy();
    assert_eq!(holds(&proxy, "inbound"), Some(0), "{proxy:#?}");
    assert_eq!(
        holds(&proxy, PAYMENTS),
        Some(v1),
        "its first poll names what it holds"
    );
    // That first poll is answered at once (empty): the proxy knows it is connected again, and
    // its next poll is held since nothing changed.
    let resynced = eventually(Duration::from_secs(1), || async {
        sidecar.store.metrics.control_plane_connected.get() == 1
            && cp.proxy().polls == 2
            && cp.proxy().polling
    })
    .await;
    assert!(resynced, "{:#?}", cp.api.proxies());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(cp.proxy().polls, 2, "the second poll is held");
    assert_eq!(holds(&cp.proxy(), PAYMENTS), Some(v1));

    let v2 = source.publish(vec![payments(&[("default", 100, &[b.addr])])]);
    assert!(
        eventually(Duration::from_secs(1), || async {
            get(sidecar.outbound, "payments").await.2 == "b"
        })
        .await,
        "the change after the restart was not applied"
    );
    acknowledged(&cp, PAYMENTS, v2).await;
    assert_eq!(sidecar.store.metrics.control_plane_connected.get(), 1);
}

#[tokio::test]
async fn the_api_speaks_h2c_and_answers_bad_requests_with_json_errors() {
    let (_source, snapshots) = Source::new();
    let cp = ControlPlane::start(snapshots).await;
    let poll = r#"{"node": {"service": "checkout", "namespace": "shop", "pod": "p"},
                   "resources": [{"name": "inbound"}], "waitSeconds": 0}"#;
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let request = |method: &str, path: &str, body: &'static str| {
        Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", cp.addr))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    let response = h2
        .request(request("POST", "/v1/discovery", poll))
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["resources"][0]["name"], "inbound");
    assert_eq!(answer["resources"][0]["version"], 0);
    assert_eq!(
        answer["resources"][0]["content"],
        serde_json::json!({"inbound": {}})
    );

    for (method, path, body, status) in [
        ("POST", "/v1/discovery", "{\"node\": 1}", 400),
        ("POST", "/v1/discovery", "not json", 400),
        ("GET", "/v1/discovery", "", 405),
        ("POST", "/v2/discovery", poll, 404),
    ] {
        let response = client().request(request(method, path, body)).await.unwrap();
        assert_eq!(response.status(), status, "{method} {path} {body}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(error["error"].is_string(), "{error}");
    }
}
