//! The Kubernetes source driven through `kube::Client` against an in-process fake of the API
//! server (`fake_api`): watch → translate → publish → status patch, Events, conflicts, errors
//! and leader election, without a cluster. Real time and real sockets: the debounce is 75 ms
//! and the Lease manager reads the wall clock.

mod cluster;
mod fake_api;
mod loopback;

use cluster::{
    NS, Operator, WAIT, condition, events, payments_slice, service, weir_status, with_lease,
};
use fake_api::{FakeApi, Recorded};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use weir_operator::config_api::ConfigApi;
use weir_operator::kubernetes::Settings;
use weir_operator::snapshot::ServiceKey;
use weir_testkit::eventually_some;

const SPLIT: &str = "payments-canary";
const SPLIT_STATUS_PATH: &str =
    "/apis/weir.dev/v1alpha1/namespaces/shop/trafficsplits/payments-canary/status";

// ---------------------------------------------------------------- fixtures

fn pod(name: &str, version: &str) -> Value {
    cluster::pod(name, json!({"app": "payments", "version": version}))
}

/// payments' pods, by the end of their name (`payments-v1-a`), and their IPs.
const PODS: [(&str, &str); 5] = [
    ("v1-a", "10.0.0.1"),
    ("v1-b", "10.0.0.2"),
    ("v2-a", "10.0.0.3"),
    ("v2-b", "10.0.0.4"),
    ("v1-c", "10.0.0.5"),
];

/// An EndpointSlice of `payments` with the pods `ready` (by the end of their name, as in
/// [`PODS`]) ready and then `unready` not; port `http` → 8080, and an unrelated `metrics` port
/// first so the port is chosen by name, not position.
fn slice(ready: &[&str], unready: &[&str]) -> Value {
    let endpoint = |pod: &&str, ready| {
        let ip = PODS
            .iter()
            .find(|(name, _)| name == pod)
            .expect("a known pod")
            .1;
        (ip, format!("payments-{pod}"), ready)
    };
    let endpoints = (ready.iter().map(|pod| endpoint(pod, true)))
        .chain(unready.iter().map(|pod| endpoint(pod, false)));
    let ports = json!([{"name": "metrics", "port": 9090}, {"name": "http", "port": 8080, "protocol": "TCP"}]);
    payments_slice(ports, endpoints)
}

/// The canary split of `payments`: (subset, version label, weight) per backend.
fn split(backends: &[(&str, &str, i32)]) -> Value {
    cluster::payments_split(SPLIT, backends)
}

fn policy() -> Value {
    let spec =
        json!({"targetRef": {"kind": "Service", "name": "payments"}, "retries": {"attempts": 2}});
    cluster::policy(NS, "payments", spec)
}

/// payments with two v1 pods, a ready v2 pod and a not-ready v2 pod, a 90/10 split, a
/// policy, and an `orders` Service nobody splits.
fn seed(api: &FakeApi) {
    api.put(service("payments"));
    api.put(service("orders"));
    api.put(pod("payments-v1-a", "v1"));
    api.put(pod("payments-v1-b", "v1"));
    api.put(pod("payments-v2-a", "v2"));
    api.put(pod("payments-v2-b", "v2"));
    api.put(slice(&["v1-a", "v1-b", "v2-a"], &["v2-b"]));
    api.put(split(&[("v1", "v1", 90), ("v2", "v2", 10)]));
    api.put(policy());
}

/// The fake API server seeded by [`seed`] (and `more`), and an operator started on it.
async fn seeded(settings: Settings, more: impl FnOnce(&FakeApi)) -> (FakeApi, Operator) {
    let api = FakeApi::start().await;
    seed(&api);
    more(&api);
    let operator = Operator::start(&api, settings);
    (api, operator)
}

/// A proxy polling the config API in-process: `checkout` in `shop`, pod `pod`.
struct Proxy {
    api: Arc<ConfigApi>,
    pod: &'static str,
    peer: SocketAddr,
}

impl Proxy {
    /// Polls holding payments' config at `held` (and reporting `rejected`: version, message);
    /// returns the version it was answered with, if any.
    async fn poll(&self, held: Option<u64>, rejected: Option<(u64, &str)>) -> Option<u64> {
        let mut body = json!({
            "node": {"service": "checkout", "namespace": NS, "pod": self.pod},
            "resources": [{"name": "service/shop/payments", "version": held}],
            "waitSeconds": 0,
        });
        if let Some((version, message)) = rejected {
            body["rejected"] =
                json!([{"name": "service/shop/payments", "version": version, "message": message}]);
        }
        let request = http::Request::post("/v1/discovery")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .unwrap();
        let response = self.api.handle(self.peer, request).await;
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let answer: Value = serde_json::from_slice(&body).unwrap();
        answer["resources"]
            .as_array()?
            .iter()
            .find(|r| r["name"] == "service/shop/payments")?["version"]
            .as_u64()
    }
}

type Subsets = Vec<(String, u32, Vec<SocketAddr>)>;

/// payments' subsets as `operator` publishes them now: (name, weight, endpoints).
fn payments(operator: &Operator) -> Option<Subsets> {
    operator.subsets_of("payments")
}

/// Waits until `operator` publishes payments with both subsets; those.
async fn both_subsets(operator: &Operator, what: &str) -> Subsets {
    eventually_some(what, WAIT, || payments(operator).filter(|s| s.len() == 2)).await
}

/// Waits until `operator` publishes payments' subsets as `want`.
async fn subsets_become(operator: &Operator, what: &str, want: &[(&str, u32, &[&str])]) {
    let want = subsets(want);
    eventually_some(what, WAIT, || (payments(operator)? == want).then_some(())).await;
}

/// Waits until payments' split weighs `want` (one weight per subset) in `operator`'s config.
async fn weights_become(operator: &Operator, what: &str, within: Duration, want: &[u32]) {
    eventually_some(what, within, || {
        let weights: Vec<u32> = payments(operator)?.iter().map(|s| s.1).collect();
        (weights == want).then_some(())
    })
    .await;
}

fn addr(ip: &str) -> SocketAddr {
    format!("{ip}:8080").parse().unwrap()
}

fn subsets(spec: &[(&str, u32, &[&str])]) -> Subsets {
    spec.iter()
        .map(|(name, weight, ips)| {
            (
                name.to_string(),
                *weight,
                ips.iter().map(|ip| addr(ip)).collect(),
            )
        })
        .collect()
}

fn split_status(api: &FakeApi) -> Value {
    weir_status(api, "TrafficSplit", NS, SPLIT)
}

/// Waits until the split's `Accepted` condition says `accepted` ("True", "False"); its status.
async fn split_accepted(api: &FakeApi, what: &str, accepted: &str) -> Value {
    eventually_some(what, WAIT, || {
        let status = split_status(api);
        (condition(&status, "Accepted")["status"] == accepted).then_some(status)
    })
    .await
}

/// Waits until `operator` publishes payments' subsets as `want` and the split's status counts
/// `backends` endpoints per subset.
async fn reprogrammed(
    operator: &Operator,
    api: &FakeApi,
    what: &str,
    want: &[(&str, u32, &[&str])],
    backends: Value,
) {
    subsets_become(operator, what, want).await;
    backends_become(api, &format!("the endpoint counts after {what}"), backends).await;
}

/// Waits until the split's status counts `backends` endpoints per subset.
async fn backends_become(api: &FakeApi, what: &str, backends: Value) {
    eventually_some(what, WAIT, || {
        (split_status(api)["backends"] == backends).then_some(())
    })
    .await;
}

/// Successful status patches of the split.
fn split_status_patches(api: &FakeApi) -> Vec<Recorded> {
    api.requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path == SPLIT_STATUS_PATH && r.code == 200)
        .collect()
}

/// Waits until an Event of `reason` is recorded; the first such.
async fn event(api: &FakeApi, what: &str, reason: &str) -> Value {
    eventually_some(what, WAIT, || {
        events(api).into_iter().find(|e| e["reason"] == reason)
    })
    .await
}

fn micro_time(at: Timestamp) -> Value {
    serde_json::to_value(MicroTime(at)).unwrap()
}

fn lease(holder: &str, duration_seconds: i64) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "weir-operator", "namespace": "weir-system"},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration_seconds,
            "acquireTime": micro_time(Timestamp::now()),
            "renewTime": micro_time(Timestamp::now()),
        },
    })
}

/// The holder of the operator's Lease (null when released), None while there is no Lease.
fn lease_holder(api: &FakeApi) -> Option<Value> {
    let lease = api.get(
        "coordination.k8s.io/v1",
        "Lease",
        "weir-system",
        "weir-operator",
    )?;
    Some(lease["spec"]["holderIdentity"].clone())
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_is_published_with_its_subsets_and_its_status_written() {
    let (api, operator) = seeded(Settings::new("weir-0"), |_| {}).await;

    let published = both_subsets(&operator, "the split in a snapshot").await;
    assert_eq!(
        published,
        subsets(&[
            ("v1", 90, &["10.0.0.1", "10.0.0.2"]),
            ("v2", 10, &["10.0.0.3"])
        ]),
        "subsets select by pod labels; the not-ready endpoint is left out; the port is the slice's `http`"
    );
    let snapshot = operator.snapshot();
    let orders = &snapshot.services[&ServiceKey::new(NS, "orders")];
    assert_eq!(
        orders.value.routes()[0].subsets.len(),
        1,
        "a Service without a split has one default subset"
    );
    assert!(
        snapshot.services[&ServiceKey::new(NS, "payments")]
            .value
            .policy
            .retries
            .is_some(),
        "the ResiliencePolicy is in payments' config"
    );

    let status = eventually_some("the split's status", WAIT, || {
        let status = split_status(&api);
        (condition(&status, "Programmed")["status"] == "True").then_some(status)
    })
    .await;
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["weights"], "v1=90,v2=10");
    assert_eq!(
        status["backends"],
        json!([{"subset": "v1", "endpoints": 2}, {"subset": "v2", "endpoints": 1}])
    );
    let accepted = condition(&status, "Accepted");
    assert_eq!(accepted["status"], "True");
    assert_eq!(accepted["reason"], "Accepted");
    assert_eq!(accepted["observedGeneration"], 1);
    assert!(accepted["lastTransitionTime"].is_string());

    let patch = split_status_patches(&api).remove(0);
    assert_eq!(
        patch.content_type, "application/apply-patch+yaml",
        "server-side apply"
    );
    assert_eq!(
        patch.param("fieldManager").as_deref(),
        Some("weir-operator")
    );
    assert_eq!(patch.param("force").as_deref(), Some("true"));
    assert_eq!(patch.body["apiVersion"], "weir.dev/v1alpha1");
    assert_eq!(patch.body["kind"], "TrafficSplit");

    let policy_status = eventually_some("the policy's status", WAIT, || {
        let status =
            api.get("weir.dev/v1alpha1", "ResiliencePolicy", NS, "payments")?["status"].clone();
        (condition(&status, "Accepted")["status"] == "True").then_some(status)
    })
    .await;
    assert_eq!(condition(&policy_status, "Programmed")["status"], "True");

    // Its own status write is seen by the watch, but writes nothing more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(split_status_patches(&api).len(), 1, "no write loop");
    assert!(operator.reconciles("TrafficSplit", "success") >= 1);
    assert_eq!(operator.reconciles("TrafficSplit", "error"), 0);
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_edit_is_published_within_a_second() {
    let (api, operator) = seeded(Settings::new("weir-0"), |_| {}).await;
    split_accepted(&api, "the first status", "True").await;
    let before = operator.snapshot();

    let edited = Instant::now();
    api.put(split(&[("v1", "v1", 50), ("v2", "v2", 50)]));
    weights_become(
        &operator,
        "the new weights",
        Duration::from_secs(1),
        &[50, 50],
    )
    .await;
    let took = edited.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");

    let after = operator.snapshot();
    let payments = ServiceKey::new(NS, "payments");
    let orders = ServiceKey::new(NS, "orders");
    assert!(after.version > before.version);
    assert_eq!(
        after.services[&payments].version, after.version,
        "payments' piece moved"
    );
    assert_eq!(
        after.services[&orders].version, before.services[&orders].version,
        "orders' did not"
    );

    let status = eventually_some("the new status", WAIT, || {
        let status = split_status(&api);
        (status["observedGeneration"] == 2).then_some(status)
    })
    .await;
    assert_eq!(status["weights"], "v1=50,v2=50");
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slice_and_pod_changes_reprogram_the_split_of_their_service() {
    let (api, operator) = seeded(Settings::new("weir-0"), |_| {}).await;
    both_subsets(&operator, "the first snapshot").await;

    // The not-ready v2 pod becomes ready.
    api.put(slice(&["v1-a", "v1-b", "v2-a", "v2-b"], &[]));
    reprogrammed(
        &operator,
        &api,
        "the slice change",
        &[
            ("v1", 90, &["10.0.0.1", "10.0.0.2"]),
            ("v2", 10, &["10.0.0.3", "10.0.0.4"]),
        ],
        json!([{"subset": "v1", "endpoints": 2}, {"subset": "v2", "endpoints": 2}]),
    )
    .await;

    // A v1 pod is relabelled v2: only the Pod changed.
    api.put(pod("payments-v1-b", "v2"));
    reprogrammed(
        &operator,
        &api,
        "the pod label change",
        &[
            ("v1", 90, &["10.0.0.1"]),
            ("v2", 10, &["10.0.0.2", "10.0.0.3", "10.0.0.4"]),
        ],
        json!([{"subset": "v1", "endpoints": 1}, {"subset": "v2", "endpoints": 3}]),
    )
    .await;
    assert_eq!(
        split_status(&api)["observedGeneration"],
        1,
        "the split itself did not change"
    );
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_split_keeps_the_last_good_config_and_raises_an_event() {
    let (api, operator) = seeded(Settings::new("weir-0"), |_| {}).await;
    split_accepted(&api, "the first status", "True").await;
    let good = operator.snapshot().services[&ServiceKey::new(NS, "payments")].clone();
    event(&api, "the Accepted event", "Accepted").await;

    // v2 now selects pods that do not exist.
    api.put(split(&[("v1", "v1", 90), ("v2", "v3", 10)]));
    let status = split_accepted(&api, "the refusal", "False").await;
    let accepted = condition(&status, "Accepted");
    assert_eq!(accepted["reason"], "NoEndpoints");
    assert!(
        accepted["message"].as_str().unwrap().contains("version=v3"),
        "{accepted}"
    );
    assert_eq!(accepted["observedGeneration"], 2);
    let programmed = condition(&status, "Programmed");
    assert_eq!(programmed["status"], "False");
    assert_eq!(programmed["reason"], "NotAccepted");
    assert_eq!(status["observedGeneration"], 2);

    let kept = operator.snapshot().services[&ServiceKey::new(NS, "payments")].clone();
    assert_eq!(
        payments(&operator).unwrap(),
        subsets(&[("v1", 90, &["10.0.0.1", "10.0.0.2"]), ("v2", 10, &[])]),
        "the last good weights stay in force; v2 now selects v3 pods, which do not exist"
    );
    assert!(kept.version > good.version);
    assert_eq!(status["weights"], "v1=90,v2=10", "the weights in force");

    let warning = event(&api, "the NoEndpoints event", "NoEndpoints").await;
    assert_eq!(warning["type"], "Warning");
    assert_eq!(warning["regarding"]["kind"], "TrafficSplit");
    assert_eq!(warning["regarding"]["name"], SPLIT);
    assert_eq!(warning["reportingController"], "weir-operator");
    assert_eq!(warning["reportingInstance"], "weir-0");
    assert!(
        warning["note"]
            .as_str()
            .unwrap()
            .contains("selects no endpoints")
    );

    // Fixed again: accepted, with a new transition time, and an event saying so.
    let event_requests = api
        .requests()
        .iter()
        .filter(|r| r.path.contains("/events"))
        .count();
    api.put(split(&[("v1", "v1", 90), ("v2", "v2", 10)]));
    let status = eventually_some("acceptance again", WAIT, || {
        let status = split_status(&api);
        (condition(&status, "Accepted")["status"] == "True" && status["observedGeneration"] == 3)
            .then_some(status)
    })
    .await;
    assert_eq!(condition(&status, "Programmed")["status"], "True");
    eventually_some("the second Accepted event", WAIT, || {
        (api.requests()
            .iter()
            .filter(|r| r.path.contains("/events"))
            .count()
            > event_requests)
            .then_some(())
    })
    .await;
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_split_never_freezes_endpoints_and_survives_a_restart_unchanged() {
    let (api, operator) = seeded(Settings::new("weir-0"), |_| {}).await;
    split_accepted(&api, "the first status", "True").await;

    // The canary's only ready pod dies: refused (NoEndpoints). Meanwhile a v1 pod dies and a
    // new v1 pod comes up.
    api.put(pod("payments-v1-c", "v1"));
    api.put(slice(&["v1-b", "v1-c"], &["v2-b"]));
    subsets_become(
        &operator,
        "the endpoint change of a refused split",
        &[("v1", 90, &["10.0.0.2", "10.0.0.5"]), ("v2", 10, &[])],
    )
    .await;
    let status = eventually_some("the refusal", WAIT, || {
        let status = split_status(&api);
        (condition(&status, "Accepted")["reason"] == "NoEndpoints").then_some(status)
    })
    .await;
    assert_eq!(status["weights"], "v1=90,v2=10");
    assert_eq!(
        status["backends"],
        json!([{"subset": "v1", "endpoints": 2}, {"subset": "v2", "endpoints": 0}])
    );
    // Another change while refused: still followed.
    api.put(slice(&["v1-c"], &["v2-b"]));
    subsets_become(
        &operator,
        "the second endpoint change",
        &[("v1", 90, &["10.0.0.5"]), ("v2", 10, &[])],
    )
    .await;
    eventually_some("the new counts", WAIT, || {
        (split_status(&api)["backends"][0]["endpoints"] == 1).then_some(())
    })
    .await;
    let before = operator.snapshot().services[&ServiceKey::new(NS, "payments")]
        .value
        .clone();
    operator.stop().await;

    // A new operator on the same cluster state serves the same config.
    let restarted = Operator::start(&api, Settings::new("weir-1"));
    let after = eventually_some("the restarted operator's snapshot", WAIT, || {
        restarted
            .snapshot()
            .services
            .get(&ServiceKey::new(NS, "payments"))
            .cloned()
    })
    .await;
    assert_eq!(
        *after.value, *before,
        "the same inputs give the same config"
    );

    // The canary comes back: accepted again, with its spec's weights.
    api.put(slice(&["v1-c", "v2-b"], &[]));
    subsets_become(
        &restarted,
        "the canary back",
        &[("v1", 90, &["10.0.0.5"]), ("v2", 10, &["10.0.0.4"])],
    )
    .await;
    split_accepted(&api, "acceptance again", "True").await;
    restarted.stop().await;
}

/// How long the API server is away in the recovery test: as long as the restart that took the
/// operator 44 s to get over with kube-runtime's default backoff.
const OUTAGE: Duration = Duration::from_secs(28);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resume_within_five_seconds_of_the_api_server_answering_again() {
    let (api, operator) = seeded(Settings::new("weir-0"), |_| {}).await;
    both_subsets(&operator, "the first snapshot").await;

    api.go_away();
    tokio::time::sleep(OUTAGE).await;
    // Back as a restarted API server is: its RBAC not loaded yet (a few 403s), every old
    // resourceVersion compacted (410 on resuming a watch).
    api.expire_resource_versions();
    api.fail("GET", "", 403, "Forbidden", 5);
    api.come_back();
    let back = Instant::now();
    api.put(split(&[("v1", "v1", 50), ("v2", "v2", 50)]));
    let mut orders_policy = policy();
    orders_policy["metadata"]["name"] = json!("orders");
    orders_policy["spec"]["targetRef"]["name"] = json!("orders");
    api.put(orders_policy);
    eventually_some(
        "the edits made after the outage",
        Duration::from_secs(60),
        || {
            let weights: Vec<u32> = payments(&operator)?.iter().map(|s| s.1).collect();
            let snapshot = operator.snapshot();
            let orders = snapshot.services.get(&ServiceKey::new(NS, "orders"))?;
            (weights == [50, 50] && orders.value.policy.retries.is_some()).then_some(())
        },
    )
    .await;
    let took = back.elapsed();
    println!(
        "after a {OUTAGE:?} outage, a weight edit and a new ResiliencePolicy were published \
         {took:?} after the API server answered again"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let answered: Vec<u16> = api.requests().iter().map(|r| r.code).collect();
    assert!(answered.contains(&403), "the 403s were met");
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_names_the_field_manager() {
    let (api, operator) = seeded(with_lease("weir-0", 3), |_| {}).await;
    eventually_some("the status and the Accepted Events", WAIT, || {
        (condition(&split_status(&api), "Accepted")["status"] == "True" && events(&api).len() >= 2)
            .then_some(())
    })
    .await;
    // A refusal: another status write and a Warning Event.
    api.put(split(&[("v1", "v1", 90), ("v2", "v3", 10)]));
    event(&api, "the NoEndpoints Event", "NoEndpoints").await;
    operator.stop().await; // releases the Lease: one more write

    let writes: Vec<Recorded> = api
        .requests()
        .into_iter()
        .filter(|r| ["POST", "PUT", "PATCH"].contains(&r.method.as_str()))
        .collect();
    let kinds = |part: &str| writes.iter().filter(|r| r.path.contains(part)).count();
    assert!(kinds("/status") >= 2 && kinds("/events") >= 3 && kinds("/leases/") >= 2);
    for write in &writes {
        let want = if write.path.contains("/leases/") {
            "weir-operator-weir-0"
        } else {
            "weir-operator"
        };
        assert_eq!(
            write.param("fieldManager").as_deref(),
            Some(want),
            "{} {}?{}",
            write.method,
            write.path,
            write.query
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programmed_means_acknowledged_by_every_connected_proxy_that_uses_it() {
    let (api, operator) = seeded(Settings::new("weir-0"), |_| {}).await;
    let config_api = operator.config_api.clone();
    let programmed = || condition(&split_status(&api), "Programmed");
    let until = |status: &'static str, message: String| {
        let programmed = &programmed;
        async move {
            eventually_some(&format!("Programmed {status}: {message}"), WAIT, || {
                let c = programmed();
                (c["status"] == status && c["message"] == message.as_str()).then_some(c)
            })
            .await
        }
    };
    until("True", "0/0 proxies".into()).await;

    // Two callers of payments subscribe; one acknowledges.
    let a = Proxy {
        api: config_api.clone(),
        pod: "checkout-a",
        peer: "127.0.0.2:40000".parse().unwrap(),
    };
    let b = Proxy {
        api: config_api.clone(),
        pod: "checkout-b",
        peer: "127.0.0.3:40000".parse().unwrap(),
    };
    let v1 = a.poll(None, None).await.expect("payments' config");
    assert_eq!(b.poll(None, None).await, Some(v1));
    a.poll(Some(v1), None).await;
    let pending = until("False", "1/2 proxies".into()).await;
    assert_eq!(pending["reason"], "Pending");
    b.poll(Some(v1), None).await;
    let done = until("True", "2/2 proxies".into()).await;
    assert_eq!(done["reason"], "Programmed");
    assert_eq!(done["observedGeneration"], 1);

    // A weight edit: one proxy runs it, the other refuses it.
    api.put(split(&[("v1", "v1", 50), ("v2", "v2", 50)]));
    let v2 = eventually_some("the edit published", WAIT, || {
        let v = operator.snapshot().services[&ServiceKey::new(NS, "payments")].version;
        (v > v1).then_some(v)
    })
    .await;
    assert_eq!(a.poll(Some(v1), None).await, Some(v2));
    a.poll(Some(v2), None).await;
    assert_eq!(b.poll(Some(v1), None).await, Some(v2));
    b.poll(Some(v1), Some((v2, "subsets[1].weight: too heavy")))
        .await;
    let refused = until(
        "False",
        "1/2 proxies; 1 refused it: shop/checkout-b: subsets[1].weight: too heavy".into(),
    )
    .await;
    assert_eq!(refused["reason"], "Refused");
    assert_eq!(refused["observedGeneration"], 2);
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_conflict_is_reread_and_retried() {
    let (api, operator) = seeded(Settings::new("weir-0"), |api| {
        api.fail(
            "PATCH",
            "/trafficsplits/payments-canary/status",
            409,
            "Conflict",
            1,
        );
    })
    .await;
    split_accepted(&api, "the status after the conflict", "True").await;
    let calls: Vec<(String, u16)> = api
        .requests()
        .into_iter()
        .filter(|r| r.path == SPLIT_STATUS_PATH)
        .map(|r| (r.method, r.code))
        .collect();
    assert_eq!(
        calls,
        [
            ("PATCH".to_owned(), 409),
            ("GET".to_owned(), 200),
            ("PATCH".to_owned(), 200)
        ],
        "patch, conflict, re-read, patch again"
    );
    assert_eq!(
        operator.reconciles("TrafficSplit", "error"),
        0,
        "a conflict answered at once is no error"
    );
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_are_logged_and_retried_with_backoff() {
    let (api, operator) = seeded(Settings::new("weir-0"), |api| {
        api.fail("GET", "/api/v1/services", 500, "InternalError", 2);
        api.fail(
            "PATCH",
            "/trafficsplits/payments-canary/status",
            403,
            "Forbidden",
            1,
        );
    })
    .await;

    both_subsets(&operator, "a snapshot despite the failing list").await;
    split_accepted(&api, "the status despite the 403", "True").await;
    assert_eq!(
        operator.reconciles("TrafficSplit", "error"),
        1,
        "the 403 counted once"
    );
    let lists = api
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/v1/services" && r.method == "GET")
        .count();
    assert!(
        lists >= 3,
        "two failed lists, then one that worked (and a watch)"
    );
    let patches: Vec<Recorded> = api
        .requests()
        .into_iter()
        .filter(|r| r.path == SPLIT_STATUS_PATH)
        .collect();
    assert_eq!(patches.len(), 2, "refused once, retried once");
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_the_lease_publishes_but_writes_no_status_until_it_takes_over() {
    // Another replica holds the Lease and keeps renewing it.
    let (api, operator) = seeded(with_lease("weir-1", 3), |api| {
        api.put(lease("weir-other", 3))
    })
    .await;
    both_subsets(&operator, "a snapshot on the non-leader").await;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        api.put(lease("weir-other", 3));
    }
    let writes: Vec<Recorded> = api
        .requests()
        .into_iter()
        .filter(|r| {
            r.path.ends_with("/status") || (r.path.contains("/events") && r.method != "GET")
        })
        .collect();
    assert!(writes.is_empty(), "a non-leader wrote: {writes:?}");
    assert_eq!(split_status(&api), Value::Null);

    // The other replica stops renewing: the Lease expires and this replica takes over.
    let stopped_renewing = Instant::now();
    split_accepted(&api, "the takeover's status write", "True").await;
    assert!(
        stopped_renewing.elapsed() > Duration::from_secs(1),
        "not before the Lease expired"
    );
    assert_eq!(lease_holder(&api), Some(json!("weir-1")));
    operator.stop().await;
    assert_eq!(
        lease_holder(&api),
        Some(Value::Null),
        "released on shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_lease_and_the_second_takes_over_when_the_first_stops() {
    // A long Lease: a takeover within 2 s cannot be its expiry.
    let (api, first) = seeded(with_lease("weir-0", 15), |_| {}).await;
    split_accepted(&api, "the first replica's status write", "True").await;
    let second = Operator::start(&api, with_lease("weir-1", 15));
    both_subsets(&second, "a snapshot on the second replica").await;
    assert_eq!(lease_holder(&api), Some(json!("weir-0")));

    // Let the standby settle into waiting for the holder's Lease to expire.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let stopping = Instant::now();
    first.stop().await;
    eventually_some("the standby leading", WAIT, || {
        (lease_holder(&api)? == "weir-1").then_some(())
    })
    .await;
    let took = stopping.elapsed();
    println!("the standby led {took:?} after the leader began to stop");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let writes_before = split_status_patches(&api).len();
    api.put(split(&[("v1", "v1", 70), ("v2", "v2", 30)]));
    weights_become(
        &second,
        "the second replica publishing the edit",
        WAIT,
        &[70, 30],
    )
    .await;
    eventually_some("the second replica's status write", WAIT, || {
        (split_status(&api)["weights"] == "v1=70,v2=30").then_some(())
    })
    .await;
    assert!(split_status_patches(&api).len() > writes_before);
    assert_eq!(lease_holder(&api), Some(json!("weir-1")));
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_scoped_source_watches_only_its_namespace() {
    let mut settings = Settings::new("weir-0");
    settings.namespace = Some(NS.to_owned());
    let (api, operator) = seeded(settings, |api| {
        let mut elsewhere = service("billing");
        elsewhere["metadata"]["namespace"] = json!("other");
        api.put(elsewhere);
    })
    .await;
    both_subsets(&operator, "a snapshot").await;
    let snapshot = operator.snapshot();
    assert!(
        !snapshot
            .services
            .contains_key(&ServiceKey::new("other", "billing"))
    );
    assert!(
        api.requests()
            .iter()
            .filter(|r| r.method == "GET")
            .all(|r| r.path.contains("/namespaces/shop/")
                || r.path.contains("/namespaces/weir-system/")),
        "only namespaced paths"
    );
    operator.stop().await;
}

// ---------------------------------------------------------------- the autoscaler inside

/// The Autoscaler controller that `kubernetes::run` starts reads the Pods from the operator's
/// one Pod watch: no second Pod watch is opened, and what it scales on (pod IPs, phase,
/// readiness) survives the slimming of that store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscaler_shares_the_operators_pod_watch() {
    let api = FakeApi::start().await;
    // Sidecars of two orders pods at 127.0.0.2 and 127.0.0.3, one admin port: 40 in flight.
    let (port, bound) = cluster::listeners(&[2, 3]).await;
    let _sidecars: Vec<_> = bound
        .into_iter()
        .map(|l| weir_testkit::FakeAdmin::start_on(l, loopback::orders_in_flight(40.0)))
        .collect();
    api.put(cluster::deployment("orders", 2));
    for (name, ip) in [("orders-a", "127.0.0.2"), ("orders-b", "127.0.0.3")] {
        // What the operator's Pod store slims away: managed fields, a big environment.
        let mut pod = cluster::running_pod(name, "orders", ip);
        pod["metadata"]["managedFields"] = json!([{"manager": "kubelet", "operation": "Update"}]);
        pod["spec"]["containers"][0]["env"] = json!([{"name": "BIG", "value": "x".repeat(4096)}]);
        api.put(pod);
    }
    api.put(cluster::autoscaler(
        "orders",
        json!([{"type": "Concurrency", "target": 10}]),
    ));
    let mut settings = Settings::new("weir-0");
    settings.autoscaler.admin_port = port;
    settings.autoscaler.interval = Duration::from_millis(100);
    let operator = Operator::start(&api, settings);
    // 40 in flight on each of 2 pods against 10: at once to 8.
    eventually_some("the scale-up", Duration::from_secs(20), || {
        (cluster::replicas(&api, "orders") == 8).then_some(())
    })
    .await;
    let pod_watches: Vec<Recorded> = api
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/pods") && !r.path.starts_with("/apis/metrics.k8s.io"))
        .filter(|r| r.param("watch").as_deref() == Some("true"))
        .collect();
    assert_eq!(pod_watches.len(), 1, "{pod_watches:#?}");
    assert_eq!(api.watches("/api/v1/pods"), 1);
    operator.stop().await;
}
