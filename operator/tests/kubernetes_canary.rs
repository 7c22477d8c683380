//! Canary analysis in cluster mode against the in-process fake API server: the leader judges
//! the rollout from the callers' `/metrics` (stand-in admin listeners of a proxy connected to
//! the config API, or of the mesh's pods listed in the Pod store only), writes `status.analysis` with the field manager `weir-operator`, records
//! Events and routes by the rollout's weights; a restarted operator resumes from status, and a
//! spec edit starts over at step 1.

mod cluster;
mod fake_api;

use cluster::{NS, Operator, condition, payments_slice, with_lease};
use fake_api::FakeApi;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_operator::config_api::ConfigApi;
use weir_operator::kubernetes::Settings;
use weir_testkit::eventually_some;

const SPLIT: &str = "payments-canary";

/// payments with a v1 and a v2 pod, split 90/10 with this `analysis` (and `status`, as a
/// previous leader recorded it).
fn seed(api: &FakeApi, analysis: Value, status: Option<Value>) {
    api.put(cluster::service("payments"));
    for (pod, version) in [("payments-v1-a", "v1"), ("payments-v2-a", "v2")] {
        api.put(cluster::pod(pod, json!({"version": version})));
    }
    api.put(payments_slice(
        json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
        [
            ("10.0.0.1", "payments-v1-a", true),
            ("10.0.0.2", "payments-v2-a", true),
        ],
    ));
    let mut split = cluster::payments_split(SPLIT, &[("v1", "v1", 90), ("v2", "v2", 10)]);
    split["spec"]["analysis"] = analysis;
    if let Some(status) = status {
        split["status"] = status;
    }
    api.put(split);
}

/// A rollout to `v2` by these `steps`, judged every second on at least 5 requests (and a
/// success rate of 0.9 when `strict`).
fn rollout(steps: &[u32], strict: bool) -> Value {
    let mut analysis = json!({"canary": "v2", "steps": steps, "interval": "1s", "minRequests": 5});
    if strict {
        analysis["successRate"] = json!(0.9);
    }
    analysis
}

/// The fake API server seeded by [`seed`] (no status yet) with this `analysis`.
async fn seeded(analysis: Value) -> FakeApi {
    let api = FakeApi::start().await;
    seed(&api, analysis, None);
    api
}

/// The one operator replica (no leader election).
fn start(api: &FakeApi) -> Operator {
    Operator::start(api, Settings::new("operator-a"))
}

/// A replica `identity` taking part in leader election (a 2 s Lease).
fn replica(api: &FakeApi, identity: &str) -> Operator {
    Operator::start(api, with_lease(identity, 2))
}

/// payments' subset weights in `operator`'s published config.
fn weights(operator: &Operator) -> Vec<(String, u32)> {
    let subsets = operator.subsets_of("payments").unwrap_or_default();
    subsets
        .into_iter()
        .map(|(name, weight, _)| (name, weight))
        .collect()
}

/// Waits (5 s at most) until `operator` routes `v1` and `v2` payments' share by these weights.
async fn routed(operator: &Operator, what: &str, v1: u32, v2: u32) {
    let want = [("v1".to_owned(), v1), ("v2".to_owned(), v2)];
    eventually_some(what, Duration::from_secs(5), || {
        (weights(operator) == want).then_some(())
    })
    .await;
}

/// Waits until the rollout's phase is `phase`; the split's status then.
async fn phase(api: &FakeApi, phase: &str, within: Duration) -> Value {
    eventually_some(phase, within, || {
        let s = status(api);
        (s["analysis"]["phase"] == phase).then_some(s)
    })
    .await
}

/// A caller's admin listener: `/metrics` with payments' v2 outbound counters, `served`
/// successful canary answers so far (each scrape adds 100, as live traffic would).
async fn caller_admin(served: Arc<AtomicU64>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    weir_testkit::serve(listener, move |_| {
        let n = served.fetch_add(100, Ordering::SeqCst) + 100;
        async move {
            http::Response::new(http_body_util::Full::new(bytes::Bytes::from(format!(
                "weir_requests_total{{code=\"200\",direction=\"outbound\",service=\"payments\",subset=\"v2\"}} {n}\n\
                 weir_request_duration_seconds_bucket{{direction=\"outbound\",service=\"payments\",subset=\"v2\",le=\"0.05\"}} {n}\n\
                 weir_request_duration_seconds_bucket{{direction=\"outbound\",service=\"payments\",subset=\"v2\",le=\"+Inf\"}} {n}\n"
            ))))
        }
    });
    addr
}

/// Keeps a caller of payments connected to `config_api`, naming `admin` as its admin listener.
fn keep_polling(config_api: Arc<ConfigApi>, admin: SocketAddr) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let body = json!({
                "node": {"service": "checkout", "namespace": NS, "pod": "checkout-1",
                         "inbound": "127.0.0.1:1", "admin": admin.to_string()},
                "resources": [{"name": "service/shop/payments", "version": null}],
                "waitSeconds": 0,
            });
            let request = http::Request::post("/v1/discovery")
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    body.to_string(),
                )))
                .unwrap();
            let _ = config_api
                .handle("127.0.0.1:40000".parse().unwrap(), request)
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

fn status(api: &FakeApi) -> Value {
    cluster::weir_status(api, "TrafficSplit", NS, SPLIT)
}

fn event_reasons(api: &FakeApi) -> Vec<String> {
    api.objects("events.k8s.io/v1", "Event")
        .iter()
        .filter(|e| e["regarding"]["kind"] == "TrafficSplit")
        .filter_map(|e| e["reason"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_promotes_from_caller_telemetry_and_records_status_and_events() {
    let api = seeded(rollout(&[20, 100], true)).await;
    let operator = start(&api);
    let admin = caller_admin(Arc::new(AtomicU64::new(0))).await;
    let poller = keep_polling(operator.config_api.clone(), admin);

    // Step 1 is recorded and routed at once: 20 % to the canary, 80 % to v1.
    eventually_some("step 1 recorded", Duration::from_secs(10), || {
        (status(&api)["analysis"]["step"] == 1).then_some(())
    })
    .await;
    routed(&operator, "step 1 routed", 800_000, 200_000).await;
    let done = phase(&api, "Succeeded", Duration::from_secs(20)).await;
    poller.abort();
    assert_eq!(done["analysis"]["canaryWeight"], 100);
    assert_eq!(done["analysis"]["lastJudgement"]["result"], "Passed");
    assert!(
        done["analysis"]["lastJudgement"]["requests"]
            .as_i64()
            .unwrap()
            >= 5
    );
    assert_eq!(condition(&done, "Analysis")["reason"], "Succeeded");
    assert_eq!(done["conditions"][0]["type"], "Accepted", "{done:#}");
    routed(&operator, "everything to the canary", 0, 1_000_000).await;
    // Every status write names the field manager.
    let patches: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "PATCH" && r.path.ends_with("/trafficsplits/payments-canary/status")
        })
        .collect();
    assert!(!patches.is_empty());
    for patch in &patches {
        assert_eq!(
            patch.param("fieldManager").as_deref(),
            Some("weir-operator")
        );
    }
    // An Event for the start, each promotion and the success.
    let reasons = eventually_some("events", Duration::from_secs(5), || {
        let reasons = event_reasons(&api);
        reasons
            .contains(&"RolloutSucceeded".to_owned())
            .then_some(reasons)
    })
    .await;
    for reason in ["RolloutStarted", "StepPromoted", "RolloutSucceeded"] {
        assert!(
            reasons.contains(&reason.to_owned()),
            "{reason} missing in {reasons:?}"
        );
    }
    assert_eq!(
        operator
            .metrics
            .canary_weight
            .with_label_values(&[NS, SPLIT])
            .get(),
        100
    );
    assert_eq!(
        operator
            .metrics
            .analysis_judgements
            .with_label_values(&[NS, SPLIT, "Passed"])
            .get(),
        2
    );
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_operator_resumes_from_status_and_a_spec_edit_starts_over() {
    let api = FakeApi::start().await;
    let analysis = rollout(&[20, 50, 100], false);
    // What the previous leader recorded: step 2 of generation 1, one failure so far.
    seed(
        &api,
        analysis.clone(),
        Some(json!({"analysis": {
            "phase": "Progressing", "step": 2, "canaryWeight": 50, "failures": 1,
            "observedGeneration": 1, "message": "step 2 of 3: canary at 50%",
        }})),
    );
    let split = api
        .get("weir.dev/v1alpha1", "TrafficSplit", NS, SPLIT)
        .unwrap();
    assert_eq!(split["metadata"]["generation"], 1);
    let operator = start(&api);
    // Routed at the recorded step at once, never at step 1 first.
    eventually_some("step 2 routed", Duration::from_secs(10), || {
        let weights = weights(&operator);
        assert_ne!(
            weights,
            [("v1".to_owned(), 800_000), ("v2".to_owned(), 200_000)]
        );
        (weights == [("v1".to_owned(), 500_000), ("v2".to_owned(), 500_000)]).then_some(())
    })
    .await;
    // No caller: the step is judged inconclusive and held, never promoted.
    let held = eventually_some("an inconclusive judgement", Duration::from_secs(10), || {
        let s = status(&api);
        (s["analysis"]["lastJudgement"]["result"] == "Inconclusive").then_some(s)
    })
    .await;
    assert_eq!(held["analysis"]["step"], 2);
    assert_eq!(held["analysis"]["failures"], 1);
    assert_eq!(held["analysis"]["phase"], "Progressing");
    assert!(!event_reasons(&api).contains(&"RolloutStarted".to_owned()));

    // A spec edit (a longer interval) is a new generation: step 1 again.
    let mut edited = split.clone();
    edited["spec"]["analysis"]["interval"] = json!("2s");
    edited.as_object_mut().unwrap().remove("status");
    api.put(edited);
    let restarted = eventually_some("restarted at step 1", Duration::from_secs(10), || {
        let s = status(&api);
        (s["analysis"]["observedGeneration"] == 2).then_some(s)
    })
    .await;
    assert_eq!(restarted["analysis"]["step"], 1);
    assert_eq!(restarted["analysis"]["failures"], 0);
    routed(&operator, "step 1 routed", 800_000, 200_000).await;
    operator.stop().await;
}

/// Events on the split by reason, with the replica that recorded each.
fn events_by(api: &FakeApi) -> Vec<(String, String)> {
    api.objects("events.k8s.io/v1", "Event")
        .iter()
        .filter(|e| e["regarding"]["kind"] == "TrafficSplit")
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_owned(),
                e["reportingInstance"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_judges_every_replica_routes_alike_and_a_new_leader_resumes() {
    let api = seeded(rollout(&[10, 20, 30, 40, 50, 100], false)).await;
    let a = replica(&api, "operator-a");
    // A holds the Lease before B starts.
    eventually_some("a leads", Duration::from_secs(10), || {
        (status(&api)["analysis"]["step"] == 1).then_some(())
    })
    .await;
    let b = replica(&api, "operator-b");
    // The callers poll A only: A's telemetry promotes the canary.
    let admin = caller_admin(Arc::new(AtomicU64::new(0))).await;
    let poller = keep_polling(a.config_api.clone(), admin);
    let recorded = eventually_some("step 3 recorded", Duration::from_secs(20), || {
        let s = status(&api);
        (s["analysis"]["step"].as_i64() >= Some(3)).then_some(s)
    })
    .await;
    // The standby routes by what the leader recorded, and judges nothing.
    let step = recorded["analysis"]["step"].as_i64().unwrap();
    let weight = u32::try_from(recorded["analysis"]["canaryWeight"].as_i64().unwrap()).unwrap();
    eventually_some("the standby follows", Duration::from_secs(5), || {
        let w = weights(&b);
        (w.iter().find(|(s, _)| s == "v2").map(|(_, w)| *w) >= Some(weight * 10_000)).then_some(())
    })
    .await;
    for result in ["Passed", "Failed", "Inconclusive"] {
        assert_eq!(
            b.metrics
                .analysis_judgements
                .with_label_values(&[NS, SPLIT, result])
                .get(),
            0,
            "the standby judged"
        );
    }
    assert!(
        events_by(&api).iter().all(|(_, who)| who == "operator-a"),
        "{:?}",
        events_by(&api)
    );
    // A stops (releasing the Lease); B takes over at the recorded step, without starting over.
    poller.abort();
    a.stop().await;
    let taken = eventually_some("b judges", Duration::from_secs(15), || {
        (b.metrics
            .analysis_judgements
            .with_label_values(&[NS, SPLIT, "Inconclusive"])
            .get()
            > 0)
        .then(|| status(&api))
    })
    .await;
    assert!(
        taken["analysis"]["step"].as_i64().unwrap() >= step,
        "went back: {taken:#}"
    );
    assert_eq!(taken["analysis"]["phase"], "Progressing");
    assert!(
        !events_by(&api).contains(&("RolloutStarted".to_owned(), "operator-b".to_owned())),
        "{:?}",
        events_by(&api)
    );
    b.stop().await;
}

/// A sidecar's admin listener on loopback: `/metrics` with payments' v2 outbound counters,
/// which grow by `per_scrape` answers of `code` at every scrape, as live traffic would. Counts
/// its scrapes in `scrapes`.
async fn sidecar_admin(code: u16, per_scrape: u64, scrapes: Arc<AtomicU64>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicU64::new(0));
    weir_testkit::serve(listener, move |_| {
        scrapes.fetch_add(1, Ordering::SeqCst);
        let n = served.fetch_add(per_scrape, Ordering::SeqCst) + per_scrape;
        async move {
            http::Response::new(http_body_util::Full::new(bytes::Bytes::from(format!(
                "# TYPE weir_requests_total counter\n\
                 weir_requests_total{{code=\"{code}\",direction=\"outbound\",service=\"payments\",subset=\"v2\"}} {n}\n\
                 weir_requests_total{{code=\"200\",direction=\"inbound\",service=\"checkout\",subset=\"\"}} 7\n\
                 weir_request_duration_seconds_bucket{{direction=\"outbound\",service=\"payments\",subset=\"v2\",le=\"0.05\"}} {n}\n\
                 weir_request_duration_seconds_bucket{{direction=\"outbound\",service=\"payments\",subset=\"v2\",le=\"+Inf\"}} {n}\n"
            ))))
        }
    });
    addr
}

/// A loopback port nothing listens on any more: a sidecar that is gone.
async fn gone_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// A pod of checkout, a caller of payments, with the injected sidecar (as a native sidecar
/// when `native`) whose admin listener is `127.0.0.1:port`, as the webhook declares it.
fn mesh_pod(api: &FakeApi, name: &str, port: u16, ready: bool, native: bool) {
    let proxy = json!({"name": "weir-proxy", "image": "weir-proxy",
                       "ports": [{"name": "weir-admin", "containerPort": port, "protocol": "TCP"}]});
    let mut spec = json!({"containers": [{"name": "app", "image": "checkout"}]});
    if native {
        let mut proxy = proxy;
        proxy["restartPolicy"] = json!("Always");
        spec["initContainers"] = json!([proxy]);
    } else {
        spec["containers"].as_array_mut().unwrap().push(proxy);
    }
    api.put(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "front", "labels": {"app": "checkout"}},
        "spec": spec,
        "status": {"phase": "Running", "podIP": "127.0.0.1",
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
    }));
}

fn judgements(operator: &Operator, split: &str, result: &str) -> u64 {
    operator
        .metrics
        .analysis_judgements
        .with_label_values(&[NS, split, result])
        .get()
}

/// The leader judges from every sidecar of the mesh listed in the Pod store — here with no
/// proxy connected to its config API at all, as when the callers poll the other replica:
/// both callers' answers are summed (either alone is under `minRequests`), a sidecar that is
/// gone counts nothing without holding the step, an unready pod is not read, and each sidecar
/// is read once per round for every rollout due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_is_promoted_from_the_sidecars_of_the_pod_store_alone() {
    let api = seeded(rollout(&[20, 100], true)).await;
    // A second rollout, of a Service nobody calls: due at the same ticks as payments'.
    api.put(json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "TrafficSplit",
        "metadata": {"name": "shipping-canary", "namespace": NS},
        "spec": {"service": "shipping", "backends": [
            {"subset": "v1", "selector": {"version": "v1"}, "weight": 90},
            {"subset": "v2", "selector": {"version": "v2"}, "weight": 10},
        ], "analysis": {"canary": "v2", "steps": [50], "interval": "1s", "minRequests": 5}},
    }));
    let scrapes_a = Arc::new(AtomicU64::new(0));
    let a = sidecar_admin(200, 3, scrapes_a.clone()).await;
    let b = sidecar_admin(200, 3, Arc::new(AtomicU64::new(0))).await;
    let unready_scrapes = Arc::new(AtomicU64::new(0));
    let unready = sidecar_admin(500, 1000, unready_scrapes.clone()).await;
    mesh_pod(&api, "checkout-a", a.port(), true, false);
    mesh_pod(&api, "checkout-b", b.port(), true, true);
    mesh_pod(&api, "checkout-gone", gone_port().await, true, false);
    mesh_pod(&api, "checkout-starting", unready.port(), false, false);
    let operator = start(&api);

    let done = phase(&api, "Succeeded", Duration::from_secs(20)).await;
    assert_eq!(done["analysis"]["canaryWeight"], 100);
    assert_eq!(done["analysis"]["step"], 2);
    // 3 per sidecar per round, two sidecars: each read once per interval, none left out,
    // the unready one not read.
    assert_eq!(done["analysis"]["lastJudgement"]["requests"], 6, "{done:#}");
    assert_eq!(done["analysis"]["lastJudgement"]["result"], "Passed");
    assert_eq!(judgements(&operator, SPLIT, "Inconclusive"), 0);
    assert_eq!(unready_scrapes.load(Ordering::SeqCst), 0);
    routed(&operator, "everything to the canary", 0, 1_000_000).await;
    // Rounds so far: one per judgement of shipping's rollout (held on silence) and the first.
    // Had each rollout read the sidecars on its own, payments' 3 rounds would read them 3 more
    // times.
    let scrapes = scrapes_a.load(Ordering::SeqCst);
    let rounds = judgements(&operator, "shipping-canary", "Inconclusive") + 1;
    assert!(
        scrapes <= rounds + 1,
        "{scrapes} reads of one sidecar in {rounds} rounds"
    );
    assert!(operator.config_api.proxies().is_empty());
    // The dashboard of this replica shows the rollout's progress on payments.
    let (_autoscalers, autoscalers) = watch::channel(Arc::default());
    let dashboard = weir_operator::dashboard::Dashboard::start(
        operator.config_api.clone(),
        autoscalers,
        operator.metrics.clone(),
        weir_operator::dashboard::Settings::default(),
        operator.shutdown(),
    );
    dashboard.follow_rollouts(operator.rollouts.clone(), operator.shutdown());
    // The dashboard follows the rollouts from a task of its own: the first graph may come
    // before it has read them.
    let mut graph = Value::Null;
    for _ in 0..100 {
        graph = serde_json::from_slice(&dashboard.graph().await).unwrap();
        if graph["services"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["id"] == "payments.shop"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let payments = graph["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "payments.shop")
        .unwrap_or_else(|| panic!("{graph:#}"));
    let canary = &payments["canary"];
    assert_eq!(
        (
            canary["split"].as_str(),
            canary["phase"].as_str(),
            canary["step"].as_i64(),
            canary["steps"].as_i64(),
            canary["canaryWeight"].as_i64(),
        ),
        (Some(SPLIT), Some("Succeeded"), Some(2), Some(2), Some(100)),
        "{graph:#}"
    );
    assert_eq!(canary["lastJudgement"]["requests"], 6);
    operator.stop().await;
}

/// Sidecars of the mesh that see no canary traffic hold the step: never promoted on silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_sidecars_without_canary_traffic_hold_the_step() {
    let api = seeded(rollout(&[20, 100], false)).await;
    let scrapes = Arc::new(AtomicU64::new(0));
    let quiet = sidecar_admin(200, 0, scrapes.clone()).await;
    mesh_pod(&api, "checkout-a", quiet.port(), true, false);
    let operator = start(&api);
    eventually_some(
        "two inconclusive judgements",
        Duration::from_secs(15),
        || (judgements(&operator, SPLIT, "Inconclusive") >= 2).then_some(()),
    )
    .await;
    let held = status(&api);
    assert_eq!(held["analysis"]["phase"], "Progressing", "{held:#}");
    assert_eq!(held["analysis"]["step"], 1);
    assert_eq!(held["analysis"]["canaryWeight"], 20);
    assert_eq!(judgements(&operator, SPLIT, "Passed"), 0);
    assert!(scrapes.load(Ordering::SeqCst) >= 2, "the sidecar was read");
    operator.stop().await;
}

/// Failures seen by the mesh's sidecars roll the canary back, with no proxy connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_seen_by_mesh_sidecars_roll_the_canary_back() {
    let api = seeded(rollout(&[20, 50, 100], true)).await;
    let failing = sidecar_admin(503, 10, Arc::new(AtomicU64::new(0))).await;
    mesh_pod(&api, "checkout-a", failing.port(), true, true);
    let operator = start(&api);
    let done = phase(&api, "RolledBack", Duration::from_secs(20)).await;
    assert_eq!(done["analysis"]["canaryWeight"], 0);
    assert_eq!(done["analysis"]["lastJudgement"]["result"], "Failed");
    assert_eq!(done["analysis"]["lastJudgement"]["requests"], 10);
    routed(&operator, "nothing to the canary", 1_000_000, 0).await;
    eventually_some("the rollback's Event", Duration::from_secs(5), || {
        event_reasons(&api)
            .contains(&"RolledBack".to_owned())
            .then_some(())
    })
    .await;
    operator.stop().await;
}

/// A sidecar admin listener that accepts and never answers; counts what it accepted.
async fn hung_admin(accepted: Arc<AtomicU64>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    addr
}

/// A mesh whose sidecars all hang makes a round of many seconds (32 read at once, each given
/// up after 1 s): stopping the operator does not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_does_not_wait_for_a_round_of_hung_sidecars() {
    let api = seeded(rollout(&[20, 100], false)).await;
    let accepted = Arc::new(AtomicU64::new(0));
    // 20 batches of 32: a round of about 20 s, twice what `stop` allows.
    for i in 0..640 {
        let admin = hung_admin(accepted.clone()).await;
        mesh_pod(&api, &format!("checkout-{i}"), admin.port(), true, false);
    }
    let operator = start(&api);
    eventually_some("a round under way", Duration::from_secs(15), || {
        (accepted.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    operator.stop().await;
}
