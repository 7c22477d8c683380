//! Unit tests of the pure parts: the Kubernetes objects → translation inputs conversion and
//! the conditions written to status.

use super::inputs::services_and_endpoints;
use super::status::{Sources, StatusTarget, conditions};
use crate::config_api::Acknowledgement;
use crate::snapshot::ServiceKey;
use crate::translate::{Kind, Ports, Refused, ServiceInfo, Verdict};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use std::collections::BTreeMap;
use weir_crds::TrafficSplit;

fn service(namespace: &str, name: &str, ports: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": ports},
    }))
    .unwrap()
}

fn slice(
    namespace: &str,
    service: &str,
    address_type: &str,
    ports: serde_json::Value,
    endpoints: serde_json::Value,
) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": format!("{service}-x"), "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": address_type,
        "ports": ports,
        "endpoints": endpoints,
    }))
    .unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Pods `shop/a` (v1) and `other/b` (v2).
fn pod_labels(namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
    match (namespace, name) {
        ("shop", "a") => Some(labels(&[("version", "v1")])),
        ("other", "b") => Some(labels(&[("version", "v2")])),
        _ => None,
    }
}

/// The ports of the one Service in `services`: (name, port, addresses).
fn ports_of(services: &[ServiceInfo], name: &str) -> Vec<(String, u16, Vec<String>)> {
    let service = services.iter().find(|s| s.key.name == name).unwrap();
    let Ports::Each(ports) = &service.ports else {
        panic!("a Kubernetes Service is routed per port");
    };
    ports
        .iter()
        .map(|p| {
            let addresses = p.addresses.iter().map(ToString::to_string).collect();
            (p.name.clone(), p.port, addresses)
        })
        .collect()
}

#[test]
fn every_tcp_port_is_routed_with_its_own_cluster_ip_addresses() {
    let mut with_vip: Service = serde_json::from_value(json!({
        "metadata": {"name": "payments", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.12", "clusterIPs": ["10.96.0.12", "fd00::12"],
                 "ports": [{"name": "http", "port": 8080}, {"name": "grpc", "port": 9090},
                           {"name": "dns", "port": 53, "protocol": "UDP"}]},
    }))
    .unwrap();
    let headless: Service = serde_json::from_value(json!({
        "metadata": {"name": "db", "namespace": "shop"},
        "spec": {"clusterIP": "None", "ports": [{"port": 5432}]},
    }))
    .unwrap();
    let (services, _) = services_and_endpoints([&with_vip, &headless], [], pod_labels);
    let owned = |name: &str, port: u16, addresses: &[&str]| {
        (
            name.to_owned(),
            port,
            addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        ports_of(&services, "payments"),
        [
            owned("http", 8080, &["10.96.0.12:8080", "[fd00::12]:8080"]),
            owned("grpc", 9090, &["10.96.0.12:9090", "[fd00::12]:9090"]),
        ]
    );
    assert_eq!(ports_of(&services, "db"), [owned("", 5432, &[])]);
    with_vip.spec = None;
    let (services, _) = services_and_endpoints([&with_vip], [], pod_labels);
    assert!(ports_of(&services, "payments").is_empty());
}

#[test]
fn each_service_port_gets_the_endpoints_at_its_named_target_port() {
    let services = [service(
        "shop",
        "payments",
        json!([{"name": "http", "port": 80}, {"name": "grpc", "port": 81}]),
    )];
    let slices = [slice(
        "shop",
        "payments",
        "IPv4",
        json!([{"name": "grpc", "port": 9000}, {"name": "http", "port": 8080}]),
        json!([
            {"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "a"}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": false}, "targetRef": {"kind": "Pod", "name": "a"}},
            {"addresses": ["10.0.0.3"], "conditions": {}, "targetRef": {"kind": "Pod", "name": "b", "namespace": "other"}},
            {"addresses": ["10.0.0.4", "10.0.0.5"]},
            {"addresses": ["10.0.0.6"], "targetRef": {"kind": "Pod", "name": "gone"}},
        ]),
    )];
    let (services, endpoints) = services_and_endpoints(&services, &slices, pod_labels);
    assert_eq!(services.len(), 1);
    let at = |port: u16| -> Vec<(String, BTreeMap<String, String>)> {
        endpoints
            .iter()
            .filter(|e| e.port == Some(port))
            .map(|e| (e.address.to_string(), (*e.labels).clone()))
            .collect()
    };
    assert_eq!(
        at(80),
        [
            ("10.0.0.1:8080".to_owned(), labels(&[("version", "v1")])),
            // not ready: left out; ready absent: counted; the Pod's own namespace is used
            ("10.0.0.3:8080".to_owned(), labels(&[("version", "v2")])),
            // no targetRef: no labels; first address only
            ("10.0.0.4:8080".to_owned(), labels(&[])),
            // a Pod not (yet) in the store: no labels
            ("10.0.0.6:8080".to_owned(), labels(&[])),
        ]
    );
    let grpc: Vec<String> = at(81).into_iter().map(|(address, _)| address).collect();
    assert_eq!(
        grpc,
        [
            "10.0.0.1:9000",
            "10.0.0.3:9000",
            "10.0.0.4:9000",
            "10.0.0.6:9000"
        ]
    );
    assert_eq!(endpoints.len(), 8);
    assert!(
        endpoints
            .iter()
            .all(|e| e.service == ServiceKey::new("shop", "payments"))
    );
}

#[test]
fn unnamed_ports_match_and_slices_without_a_usable_port_or_service_are_skipped() {
    let services = [
        service("shop", "single", json!([{"port": 80}])),
        service("shop", "headless", json!(null)),
        service("shop", "named", json!([{"name": "http", "port": 80}])),
    ];
    // (namespace, Service, address type, the port's name, address): one slice each, of port 8080.
    let slices = [
        ("shop", "single", "IPv4", None, "10.0.0.1"),
        ("shop", "headless", "IPv4", None, "10.0.0.1"),
        ("shop", "named", "IPv4", Some("other"), "10.0.0.1"),
        ("shop", "missing", "IPv4", None, "10.0.0.1"),
        ("other", "single", "IPv4", None, "10.0.0.1"),
        ("shop", "single", "FQDN", None, "db.example"),
        ("shop", "single", "IPv6", None, "fd00::1"),
    ]
    .map(|(namespace, name, kind, port, address)| {
        let ports = json!([{"name": port, "port": 8080}]);
        slice(
            namespace,
            name,
            kind,
            ports,
            json!([{"addresses": [address]}]),
        )
    });
    let (services, endpoints) = services_and_endpoints(&services, &slices, pod_labels);
    let names: Vec<&str> = services.iter().map(|s| s.key.name.as_str()).collect();
    assert_eq!(
        names,
        ["headless", "named", "single"],
        "every Service exists, ports or not"
    );
    let got: Vec<(String, String)> = endpoints
        .iter()
        .map(|e| (e.service.name.clone(), e.address.to_string()))
        .collect();
    assert_eq!(
        got,
        [
            ("single".to_owned(), "10.0.0.1:8080".to_owned()),
            ("single".to_owned(), "[fd00::1]:8080".to_owned())
        ]
    );
}

fn verdict(accepted: Result<(), Refused>, generation: i64) -> Verdict {
    Verdict {
        kind: Kind::TrafficSplit,
        namespace: "shop".into(),
        name: "payments-canary".into(),
        service: ServiceKey::new("shop", "payments"),
        uid: None,
        generation: Some(generation),
        accepted,
        weights: Some("v1=90,v2=10".into()),
        backends: vec![("v1".into(), 2), ("v2".into(), 1)],
        message: None,
        effective_limits: None,
    }
}

/// `n` connected proxies use the resource, all of them up to date.
fn all_of(n: usize) -> Acknowledgement {
    Acknowledgement {
        using: n,
        acknowledged: n,
        refused: Vec::new(),
    }
}

#[test]
fn programmed_counts_the_proxies_and_names_refusals() {
    let programmed = |ack: &Acknowledgement| {
        let conditions = conditions(&verdict(Ok(()), 1), ack, &[], &at(0));
        let c = &conditions[1];
        (c.status.clone(), c.reason.clone(), c.message.clone())
    };
    assert_eq!(
        programmed(&all_of(3)),
        ("True".into(), "Programmed".into(), "3/3 proxies".into())
    );
    assert_eq!(
        programmed(&all_of(0)),
        ("True".into(), "Programmed".into(), "0/0 proxies".into())
    );
    let pending = Acknowledgement {
        using: 3,
        acknowledged: 1,
        refused: Vec::new(),
    };
    assert_eq!(
        programmed(&pending),
        ("False".into(), "Pending".into(), "1/3 proxies".into())
    );
    let refused = Acknowledgement {
        using: 3,
        acknowledged: 2,
        refused: vec![(
            "shop/checkout-1".into(),
            "subsets[0].weight: too big".into(),
        )],
    };
    assert_eq!(
        programmed(&refused),
        (
            "False".into(),
            "Refused".into(),
            "2/3 proxies; 1 refused it: shop/checkout-1: subsets[0].weight: too big".into()
        )
    );
}

fn at(second: i64) -> Time {
    Time(Timestamp::from_second(second).unwrap())
}

#[test]
fn transition_times_move_only_when_a_condition_flips() {
    let first = conditions(&verdict(Ok(()), 1), &all_of(3), &[], &at(100));
    assert_eq!(first.len(), 2);
    assert!(
        first
            .iter()
            .all(|c| c.status == "True" && c.last_transition_time == at(100))
    );
    assert!(first.iter().all(|c| c.observed_generation == Some(1)));

    // Same status at a later generation: times kept, generation moves.
    let again = conditions(&verdict(Ok(()), 2), &all_of(3), &first, &at(200));
    assert!(
        again
            .iter()
            .all(|c| c.last_transition_time == at(100) && c.observed_generation == Some(2))
    );

    let refused = Refused {
        reason: "NoEndpoints",
        message: "backend v2 selects no endpoints".into(),
    };
    let flipped = conditions(&verdict(Err(refused), 3), &all_of(3), &again, &at(300));
    let accepted = &flipped[0];
    assert_eq!(
        (accepted.type_.as_str(), accepted.status.as_str()),
        ("Accepted", "False")
    );
    assert_eq!(accepted.reason, "NoEndpoints");
    assert_eq!(accepted.message, "backend v2 selects no endpoints");
    assert_eq!(accepted.last_transition_time, at(300));
    let programmed = &flipped[1];
    assert_eq!(
        (programmed.type_.as_str(), programmed.status.as_str()),
        ("Programmed", "False")
    );
    assert_eq!(programmed.reason, "NotAccepted");
    assert!(
        programmed.message.contains("v1=90,v2=10"),
        "names the weights kept: {}",
        programmed.message
    );
    assert_eq!(programmed.last_transition_time, at(300));
}

#[test]
fn split_status_carries_weights_and_endpoint_counts() {
    let status = TrafficSplit::desired(&Sources {
        verdict: &verdict(Ok(()), 4),
        ack: &all_of(3),
        analysis: &Default::default(),
        current: None,
        now: &at(0),
    });
    assert_eq!(status.observed_generation, Some(4));
    assert_eq!(status.weights.as_deref(), Some("v1=90,v2=10"));
    let counts: Vec<(&str, i32)> = status
        .backends
        .iter()
        .map(|b| (b.subset.as_str(), b.endpoints))
        .collect();
    assert_eq!(counts, [("v1", 2), ("v2", 1)]);
    // What the object holds compares equal to what would be written: no write.
    let again = TrafficSplit::desired(&Sources {
        verdict: &verdict(Ok(()), 4),
        ack: &all_of(3),
        analysis: &Default::default(),
        current: Some(&status),
        now: &at(50),
    });
    assert_eq!(again, status);
}
