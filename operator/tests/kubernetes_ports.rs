//! A multi-port Service through the Kubernetes source, against the in-process fake API server:
//! every port is published with the endpoints at its own (named) target port and its ClusterIP
//! address; a TrafficSplit with `port` governs that port only and is accepted; one naming a port
//! the Service does not have is refused with `PortNotFound` in its status.

mod cluster;
mod fake_api;

use cluster::{NS, Operator, WAIT, payments_slice};
use fake_api::FakeApi;
use serde_json::{Value, json};
use weir_operator::kubernetes::Settings;
use weir_operator::snapshot::{ServiceKey, Snapshot};
use weir_testkit::eventually_some;

/// payments: port 80 `http` → target port `http` (8080 in the pods), port 81 `admin` → `admin`
/// (9090), one UDP port that is not routed.
fn seed(api: &FakeApi) {
    let mut payments = cluster::service("payments");
    payments["spec"] = json!({"clusterIP": "10.96.0.12", "ports": [
        {"name": "http", "port": 80, "targetPort": "http"},
        {"name": "admin", "port": 81, "targetPort": "admin"},
        {"name": "dns", "port": 53, "protocol": "UDP"}]});
    api.put(payments);
    for (name, version) in [("payments-v1", "v1"), ("payments-v2", "v2")] {
        api.put(cluster::pod(name, json!({"version": version})));
    }
    api.put(payments_slice(
        json!([{"name": "admin", "port": 9090}, {"name": "http", "port": 8080},
               {"name": "dns", "port": 53, "protocol": "UDP"}]),
        [
            ("10.0.0.1", "payments-v1", true),
            ("10.0.0.2", "payments-v2", true),
        ],
    ));
}

/// payments' split `name` of port `port`: 10 % to v1, 90 % to v2.
fn split(name: &str, port: u16) -> Value {
    let mut split = cluster::payments_split(name, &[("v1", "v1", 10), ("v2", "v2", 90)]);
    split["spec"]["port"] = json!(port);
    split
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
    cluster::condition(&cluster::weir_status(api, "TrafficSplit", NS, split), type_)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_port_is_published_with_its_endpoints_and_its_own_split() {
    let api = FakeApi::start().await;
    seed(&api);
    api.put(split("admin-canary", 81));
    api.put(split("typo", 8080));
    let operator = Operator::start(&api, Settings::new("weir-0"));

    let admin = eventually_some("port 81 split in a snapshot", WAIT, || {
        port_route(&operator.snapshot(), 81).filter(|(_, subsets)| subsets.len() == 2)
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
    let http = port_route(&operator.snapshot(), 80).expect("port 80 is published");
    assert_eq!(
        http,
        (
            vec!["10.96.0.12:80".to_owned()],
            vec![owned("default", 1, &["10.0.0.1:8080", "10.0.0.2:8080"])]
        )
    );
    assert!(
        port_route(&operator.snapshot(), 53).is_none(),
        "UDP ports are not routed"
    );

    let accepted = eventually_some("the port 81 split accepted", WAIT, || {
        let c = condition(&api, "admin-canary", "Accepted");
        (c["status"] == "True").then_some(c)
    })
    .await;
    assert_eq!(accepted["reason"], "Accepted");
    let refused = eventually_some("the split naming port 8080 refused", WAIT, || {
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

    operator.stop().await;
}
