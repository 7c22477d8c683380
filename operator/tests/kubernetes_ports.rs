//! A multi-port Service through the Kubernetes source, against the in-process fake API server:
//! every port is published with the endpoints at its own (named) target port and its ClusterIP
//! address; a TrafficSplit with `port` governs that port only and is accepted; one naming a port
//! the Service does not have is refused with `PortNotFound` in its status.

mod fake_api;

use fake_api::FakeApi;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use weir_operator::kubernetes::{self, Settings};
use weir_operator::metrics::Metrics;
use weir_operator::snapshot::{ServiceKey, Snapshot};

const NS: &str = "shop";

/// payments: port 80 `http` → target port `http` (8080 in the pods), port 81 `admin` → `admin`
/// (9090), one UDP port that is not routed.
fn seed(api: &FakeApi) {
    api.put(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "payments", "namespace": NS},
        "spec": {"clusterIP": "10.96.0.12", "ports": [
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "admin", "port": 81, "targetPort": "admin"},
            {"name": "dns", "port": 53, "protocol": "UDP"}]},
    }));
    for (name, version) in [("payments-v1", "v1"), ("payments-v2", "v2")] {
        api.put(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": {"version": version}},
            "spec": {"containers": [{"name": "app", "image": "payments"}]},
        }));
    }
    api.put(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "payments-x1", "namespace": NS,
                     "labels": {"kubernetes.io/service-name": "payments"}},
        "addressType": "IPv4",
        "ports": [{"name": "admin", "port": 9090}, {"name": "http", "port": 8080},
                  {"name": "dns", "port": 53, "protocol": "UDP"}],
        "endpoints": [
            {"addresses": ["10.0.0.1"], "conditions": {"ready": true},
             "targetRef": {"kind": "Pod", "name": "payments-v1", "namespace": NS}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": true},
             "targetRef": {"kind": "Pod", "name": "payments-v2", "namespace": NS}},
        ],
    }));
}

fn split(name: &str, port: u16) -> Value {
    json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "TrafficSplit",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"service": "payments", "port": port, "backends": [
            {"subset": "v1", "selector": {"version": "v1"}, "weight": 10},
            {"subset": "v2", "selector": {"version": "v2"}, "weight": 90}]},
    })
}

/// Polls `check` every 20 ms until it returns `Some`, for at most 10 s.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Port `port` of payments in `snapshot`: (addresses, [(subset, weight, endpoints)]).
type PortRoute = (Vec<String>, Vec<(String, u32, Vec<String>)>);

fn port_route(snapshot: &Snapshot, port: u16) -> Option<PortRoute> {
    let service = snapshot.services.get(&ServiceKey::new(NS, "payments"))?;
    let route = service.value.ports.iter().find(|p| p.port == port)?;
    let strings = |list: &[std::net::SocketAddr]| list.iter().map(ToString::to_string).collect();
    Some((
        strings(&route.addresses),
        route
            .subsets
            .iter()
            .map(|s| (s.name.clone(), s.weight, strings(&s.endpoints)))
            .collect(),
    ))
}

fn condition(api: &FakeApi, split: &str, type_: &str) -> Value {
    api.get("weir.dev/v1alpha1", "TrafficSplit", NS, split)
        .and_then(|o| {
            o["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == type_).cloned())
        })
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_port_is_published_with_its_endpoints_and_its_own_split() {
    let api = FakeApi::start().await;
    seed(&api);
    api.put(split("admin-canary", 81));
    api.put(split("typo", 8080));
    let (snapshots_tx, snapshots) = watch::channel(Arc::new(Snapshot::default()));
    let (stop, shutdown) = watch::channel(false);
    let client = kubernetes::client::client(api.config()).expect("client");
    let task = tokio::spawn(kubernetes::run(
        client,
        Settings::new("weir-0"),
        snapshots_tx,
        Arc::new(Metrics::new()),
        shutdown,
    ));

    let admin = eventually("port 81 split in a snapshot", || {
        port_route(&snapshots.borrow(), 81).filter(|(_, subsets)| subsets.len() == 2)
    })
    .await;
    let owned = |name: &str, weight: u32, endpoints: &[&str]| {
        let endpoints = endpoints.iter().map(|e| e.to_string()).collect();
        (name.to_owned(), weight, endpoints)
    };
    assert_eq!(
        admin,
        (
            vec!["10.96.0.12:81".to_owned()],
            vec![
                owned("v1", 10, &["10.0.0.1:9090"]),
                owned("v2", 90, &["10.0.0.2:9090"])
            ]
        )
    );
    let http = port_route(&snapshots.borrow(), 80).expect("port 80 is published");
    assert_eq!(
        http,
        (
            vec!["10.96.0.12:80".to_owned()],
            vec![owned("default", 1, &["10.0.0.1:8080", "10.0.0.2:8080"])]
        )
    );
    assert!(
        port_route(&snapshots.borrow(), 53).is_none(),
        "UDP ports are not routed"
    );

    let accepted = eventually("the port 81 split accepted", || {
        let c = condition(&api, "admin-canary", "Accepted");
        (c["status"] == "True").then_some(c)
    })
    .await;
    assert_eq!(accepted["reason"], "Accepted");
    let refused = eventually("the split naming port 8080 refused", || {
        let c = condition(&api, "typo", "Accepted");
        (c["status"] == "False").then_some(c)
    })
    .await;
    assert_eq!(refused["reason"], "PortNotFound");
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains("spec.port") && message.contains("80, 81"),
        "{message}"
    );

    stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the source stops on shutdown")
        .expect("no panic")
        .expect("no error");
}
