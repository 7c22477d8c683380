//! The translation from resources to proxy config, without a cluster.

use proptest::prelude::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use weir_crds::*;
use weir_operator::snapshot::ServiceKey;
use weir_operator::translate::{
    EndpointInfo, Inputs, Kind, Ports, ServiceInfo, ServicePort, Translation, translate,
};
use weir_proxy_api as api;

fn labels(pairs: &[(&str, &str)]) -> std::sync::Arc<BTreeMap<String, String>> {
    std::sync::Arc::new(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn split(name: &str, service: &str, backends: &[(&str, &str, i32)]) -> TrafficSplit {
    let mut s = TrafficSplit::new(
        name,
        TrafficSplitSpec {
            service: service.into(),
            port: None,
            backends: backends
                .iter()
                .map(|(subset, version, weight)| TrafficSplitBackend {
                    subset: subset.to_string(),
                    selector: (*labels(&[("version", version)])).clone(),
                    weight: *weight,
                })
                .collect(),
            rules: Vec::new(),
            analysis: None,
        },
    );
    s.metadata.namespace = Some("shop".into());
    s
}

/// The split `payments` of payments: subsets `v1` and `second` (selecting `version=second`) at
/// these weights.
fn payments_split(v1: i32, (second, weight): (&str, i32)) -> TrafficSplit {
    split(
        "payments",
        "payments",
        &[("v1", "v1", v1), (second, second, weight)],
    )
}

fn policy(name: &str, target: &str, yaml: &str) -> ResiliencePolicy {
    let spec: ResiliencePolicySpec = serde_saphyr::from_str(&format!(
        "targetRef: {{kind: Service, name: {target}}}\n{yaml}"
    ))
    .unwrap();
    let mut p = ResiliencePolicy::new(name, spec);
    p.metadata.namespace = Some("shop".into());
    p
}

fn payments() -> (Vec<ServiceInfo>, Vec<EndpointInfo>) {
    (
        vec![ServiceInfo::routed_as_one(key())],
        vec![
            endpoint(9101, "v1"),
            endpoint(9102, "v1"),
            endpoint(9201, "v2"),
        ],
    )
}

fn key() -> ServiceKey {
    ServiceKey::new("shop", "payments")
}

/// The inputs of `services` and `endpoints` alone (no split, no policy).
fn over<'a>(services: &'a [ServiceInfo], endpoints: &'a [EndpointInfo]) -> Inputs<'a> {
    Inputs {
        services,
        endpoints,
        ..Inputs::default()
    }
}

/// `inputs` with other splits.
fn with_splits<'a>(inputs: Inputs<'a>, splits: &'a [TrafficSplit]) -> Inputs<'a> {
    Inputs { splits, ..inputs }
}

/// `inputs` with other endpoints.
fn with_endpoints<'a>(inputs: Inputs<'a>, endpoints: &'a [EndpointInfo]) -> Inputs<'a> {
    Inputs {
        endpoints,
        ..inputs
    }
}

/// payments' pods (two v1, one v2) split 90/10, and the operator's first translation of them
/// (the split accepted). The resources live as long as the test binary, as in an operator.
fn canary_accepted() -> (Inputs<'static>, Translation) {
    let (services, endpoints) = payments();
    let inputs = Inputs {
        splits: Vec::leak(vec![payments_split(90, ("v2", 10))]),
        ..over(Vec::leak(services), Vec::leak(endpoints))
    };
    (inputs, fresh(inputs))
}

/// The translation of an operator that has translated nothing before (just started).
fn fresh(inputs: Inputs) -> Translation {
    translate(&inputs, &Translation::default())
}

#[test]
fn a_split_becomes_weighted_subsets_of_the_selected_endpoints() {
    let (services, endpoints) = payments();
    let splits = [payments_split(90, ("v2", 10))];
    let out = fresh(with_splits(over(&services, &endpoints), &splits));
    let config = &out.services[&key()];
    assert_eq!(config.subsets.len(), 2);
    assert_eq!(
        (config.subsets[0].name.as_str(), config.subsets[0].weight),
        ("v1", 90)
    );
    assert_eq!(config.subsets[0].endpoints.len(), 2);
    assert_eq!(
        config.subsets[1].endpoints,
        vec![SocketAddr::from(([10, 0, 0, 1], 9201))]
    );
    let verdict = &out.verdicts[0];
    assert_eq!(verdict.accepted, Ok(()));
    assert_eq!(verdict.weights.as_deref(), Some("v1=90,v2=10"));
    assert_eq!(
        verdict.backends,
        vec![("v1".to_owned(), 2), ("v2".to_owned(), 1)]
    );
}

#[test]
fn without_a_split_one_default_subset_holds_every_endpoint() {
    let (services, endpoints) = payments();
    let out = fresh(over(&services, &endpoints));
    let config = &out.services[&key()];
    assert_eq!(config.subsets.len(), 1);
    assert_eq!(config.subsets[0].name, "default");
    assert_eq!(config.subsets[0].endpoints.len(), 3);
    assert!(out.inbound.is_empty());
}

fn endpoint(port: u16, version: &str) -> EndpointInfo {
    EndpointInfo {
        service: key(),
        port: None,
        address: addr(port),
        labels: labels(&[("version", version), ("app", "payments")]),
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

/// payments' subsets: (name, weight, endpoint ports).
fn routing(out: &Translation) -> Vec<(String, u32, Vec<u16>)> {
    out.services[&key()]
        .subsets
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                s.weight,
                s.endpoints.iter().map(SocketAddr::port).collect(),
            )
        })
        .collect()
}

fn routed(spec: &[(&str, u32, &[u16])]) -> Vec<(String, u32, Vec<u16>)> {
    spec.iter()
        .map(|(name, weight, ports)| (name.to_string(), *weight, ports.to_vec()))
        .collect()
}

/// What the status writer records from `out`: each split's `status.weights`.
fn with_recorded_status(splits: &[TrafficSplit], out: &Translation) -> Vec<TrafficSplit> {
    splits
        .iter()
        .map(|s| {
            let mut s = s.clone();
            let verdict = out
                .verdicts
                .iter()
                .find(|v| v.kind == Kind::TrafficSplit && Some(&v.name) == s.metadata.name.as_ref())
                .unwrap();
            s.status = Some(TrafficSplitStatus {
                weights: verdict.weights.clone(),
                ..TrafficSplitStatus::default()
            });
            s
        })
        .collect()
}

#[test]
fn a_refused_split_keeps_its_weights_and_follows_endpoint_changes() {
    let (inputs, first) = canary_accepted();
    assert_eq!(
        routing(&first),
        routed(&[("v1", 90, &[9101, 9102]), ("v2", 10, &[9201])])
    );

    // The canary pod dies (the split is refused: v2 selects nothing), a v1 pod dies and a new
    // v1 pod comes up.
    let after = [endpoint(9102, "v1"), endpoint(9103, "v1")];
    let second = translate(&with_endpoints(inputs, &after), &first);
    let verdict = &second.verdicts[0];
    assert_eq!(verdict.accepted.as_ref().unwrap_err().reason, "NoEndpoints");
    assert_eq!(
        routing(&second),
        routed(&[("v1", 90, &[9102, 9103]), ("v2", 10, &[])]),
        "the weights stay, the endpoints follow: the dead pod is gone, the new one is in"
    );
    assert_eq!(verdict.weights.as_deref(), Some("v1=90,v2=10"));
    assert_eq!(
        verdict.backends,
        vec![("v1".to_owned(), 2), ("v2".to_owned(), 0)]
    );

    // Still refused, another change: followed again.
    let later = [endpoint(9103, "v1")];
    let third = translate(&with_endpoints(inputs, &later), &second);
    assert_eq!(
        routing(&third),
        routed(&[("v1", 90, &[9103]), ("v2", 10, &[])])
    );
}

#[test]
fn a_refused_edit_keeps_the_last_good_weights_over_the_current_selectors() {
    let (inputs, first) = canary_accepted();

    // v2 now selects version=v3, which no pod has, and asks for 50/50.
    let mut bad = payments_split(50, ("v3", 50));
    bad.spec.backends[1].subset = "v2".into();
    bad.metadata.generation = Some(2);
    let bad = [bad];
    let second = translate(&with_splits(inputs, &bad), &first);
    let verdict = &second.verdicts[0];
    let refused = verdict.accepted.as_ref().unwrap_err();
    assert_eq!(refused.reason, "NoEndpoints");
    assert!(
        refused.message.contains("version=v3"),
        "{}",
        refused.message
    );
    assert_eq!(
        routing(&second),
        routed(&[("v1", 90, &[9101, 9102]), ("v2", 10, &[])]),
        "the last good weights; no traffic to pods the spec no longer selects"
    );
    assert_eq!(verdict.weights.as_deref(), Some("v1=90,v2=10"));

    // A subset the last good weights do not know gets nothing.
    let renamed = [payments_split(50, ("v3", 50))];
    let third = translate(&with_splits(inputs, &renamed), &second);
    assert_eq!(
        routing(&third),
        routed(&[("v1", 90, &[9101, 9102]), ("v3", 0, &[])])
    );
    assert_eq!(third.verdicts[0].weights.as_deref(), Some("v1=90,v3=0"));
}

#[test]
fn a_split_refused_from_the_start_routes_over_the_plain_endpoints() {
    let (services, endpoints) = payments();
    let splits = [payments_split(50, ("v3", 50))];
    let out = fresh(with_splits(over(&services, &endpoints), &splits));
    assert_eq!(
        out.verdicts[0].accepted.as_ref().unwrap_err().reason,
        "NoEndpoints"
    );
    assert_eq!(
        routing(&out),
        routed(&[("default", 1, &[9101, 9102, 9201])])
    );
    assert_eq!(
        out.verdicts[0].weights, None,
        "no weights in force to record"
    );
    assert_eq!(
        out.verdicts[0].backends,
        vec![("v1".to_owned(), 2), ("v3".to_owned(), 0)]
    );
}

#[test]
fn a_restarted_operator_reads_the_kept_weights_back_from_status() {
    let (inputs, first) = canary_accepted();
    let canary_gone = [endpoint(9101, "v1"), endpoint(9103, "v1")];
    let running = translate(&with_endpoints(inputs, &canary_gone), &first);

    // Restarted (no previous translation), on the same cluster state: the status written
    // before either the acceptance or the refusal gives the same config.
    for recorded in [&first, &running] {
        let splits = with_recorded_status(inputs.splits, recorded);
        let restarted = fresh(with_endpoints(with_splits(inputs, &splits), &canary_gone));
        assert_eq!(restarted.services, running.services);
        assert_eq!(restarted.verdicts, running.verdicts);
    }

    // A status nobody could have written (hand-edited) routes over the plain endpoints.
    for weights in [
        "v1=ninety",
        "",
        "v1=4294967295,v2=4294967295",
        "=5",
        "v1=0,v2=0",
    ] {
        let mut split = inputs.splits[0].clone();
        split.status = Some(TrafficSplitStatus {
            weights: Some(weights.to_owned()),
            ..TrafficSplitStatus::default()
        });
        let out = fresh(with_endpoints(with_splits(inputs, &[split]), &canary_gone));
        assert_eq!(
            routing(&out),
            routed(&[("default", 1, &[9101, 9103])]),
            "status.weights {weights:?}"
        );
    }
}

#[test]
fn a_split_created_again_under_its_name_keeps_nothing_of_the_old_one() {
    let (services, endpoints) = payments();
    let mut old = payments_split(90, ("v2", 10));
    old.metadata.uid = Some("old".into());
    let first = fresh(with_splits(over(&services, &endpoints), &[old]));
    let mut new = payments_split(10, ("v3", 90));
    new.metadata.uid = Some("new".into());
    let out = translate(&with_splits(over(&services, &endpoints), &[new]), &first);
    assert_eq!(
        routing(&out),
        routed(&[("default", 1, &[9101, 9102, 9201])])
    );
}

#[test]
fn two_splits_for_one_service_conflict_and_the_older_wins() {
    let (services, endpoints) = payments();
    let mut older = split("a-older", "payments", &[("v1", "v1", 1)]);
    let mut newer = split("b-newer", "payments", &[("v2", "v2", 1)]);
    older.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-01-01T00:00:00Z".parse().unwrap(),
    ));
    newer.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-02-01T00:00:00Z".parse().unwrap(),
    ));
    // Delivered newest first: the order of the input does not matter.
    let splits = [newer, older];
    let out = fresh(with_splits(over(&services, &endpoints), &splits));
    assert_eq!(out.services[&key()].subsets[0].name, "v1");
    let newer_verdict = out.verdicts.iter().find(|v| v.name == "b-newer").unwrap();
    assert_eq!(
        newer_verdict.accepted.as_ref().unwrap_err().reason,
        "Conflict"
    );
}

#[test]
fn resources_for_missing_services_are_refused() {
    let (services, endpoints) = payments();
    let splits = [split("orders", "orders", &[("v1", "v1", 1)])];
    let policies = [policy("orders", "orders", "retries: {attempts: 2}")];
    let out = fresh(Inputs {
        splits: &splits,
        policies: &policies,
        ..over(&services, &endpoints)
    });
    let reasons: Vec<_> = out
        .verdicts
        .iter()
        .map(|v| (v.kind, v.accepted.as_ref().unwrap_err().reason))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (Kind::TrafficSplit, "ServiceNotFound"),
            (Kind::ResiliencePolicy, "TargetNotFound")
        ]
    );
}

#[test]
fn a_policy_becomes_outbound_and_inbound_config() {
    let (services, endpoints) = payments();
    let policies = [policy(
        "payments",
        "payments",
        r#"
timeouts: {request: 10s, perTry: 2s, connect: 1s, idle: 60s}
retries:
  attempts: 3
  retryOn: [5xx, gateway-error, connect-failure, reset, retriable-4xx]
  backoff: {base: 100ms, max: 5s, multiplier: 2, jitter: full}
  budget: {ratio: 0.2, minPerSecond: 10}
circuitBreaker: {failureThreshold: 5, successThreshold: 2, openDuration: 60s}
outlierDetection: {consecutive5xxErrors: 5, consecutiveGatewayErrors: 3, interval: 30s, baseEjectionTime: 30s, maxEjectionPercent: 50}
bulkhead: {maxConcurrent: 10, maxQueued: 100, queueTimeout: 1s}
rateLimit: {requestsPerSecond: 100, burst: 20, key: "header:x-user"}
loadBalancer: {policy: ewma}
fallback: {status: 200, body: '{"items":[]}', contentType: application/json}
"#,
    )];
    let out = fresh(Inputs {
        policies: &policies,
        ..over(&services, &endpoints)
    });
    assert_eq!(out.verdicts[0].accepted, Ok(()));
    let p = &out.services[&key()].policy;
    assert_eq!(p.retries.as_ref().unwrap().attempts, 3);
    assert_eq!(p.retries.as_ref().unwrap().retry_on.len(), 5);
    assert_eq!(p.circuit_breaker.as_ref().unwrap().success_threshold, 2);
    assert_eq!(
        p.outlier_detection.as_ref().unwrap().max_ejection_percent,
        50
    );
    assert_eq!(
        p.load_balancer.as_ref().unwrap().policy,
        api::LoadBalancerPolicy::Ewma
    );
    assert_eq!(
        p.timeouts.as_ref().unwrap().per_try.unwrap().to_string(),
        "2s"
    );
    let inbound = &out.inbound[&key()];
    assert_eq!(
        inbound.rate_limit.as_ref().unwrap().key,
        api::RateLimitKey::Header("x-user".into())
    );
    assert_eq!(inbound.bulkhead.as_ref().unwrap().max_queued, 100);
    assert_eq!(
        inbound
            .timeouts
            .as_ref()
            .unwrap()
            .request
            .unwrap()
            .to_string(),
        "10s"
    );
}

#[test]
fn an_invalid_policy_names_the_field_and_keeps_the_last_good_one() {
    let (services, endpoints) = payments();
    let good = [policy("payments", "payments", "retries: {attempts: 2}")];
    let inputs = Inputs {
        policies: &good,
        ..over(&services, &endpoints)
    };
    let first = fresh(inputs);
    for (yaml, field) in [
        (
            "timeouts: {request: 1s, perTry: 5 seconds}",
            "spec.timeouts.perTry",
        ),
        (
            "timeouts: {request: 1s, perTry: 2s}",
            "spec.timeouts.perTry",
        ),
        ("retries: {attempts: 11}", "spec.retries.attempts"),
        (
            "outlierDetection: {maxEjectionPercent: 150}",
            "spec.outlierDetection.maxEjectionPercent",
        ),
        (
            "rateLimit: {requestsPerSecond: 10, burst: 5, key: cookie}",
            "spec.rateLimit.key",
        ),
    ] {
        let bad = [policy("payments", "payments", yaml)];
        let out = translate(
            &Inputs {
                policies: &bad,
                ..inputs
            },
            &first,
        );
        let refused = out.verdicts[0].accepted.as_ref().unwrap_err();
        assert_eq!(refused.reason, "Invalid");
        assert!(
            refused.message.starts_with(field),
            "{yaml}: {}",
            refused.message
        );
        assert_eq!(out.services[&key()].policy, first.services[&key()].policy);
    }
}

fn arb_inputs() -> impl Strategy<
    Value = (
        Vec<ServiceInfo>,
        Vec<EndpointInfo>,
        Vec<TrafficSplit>,
        Vec<ResiliencePolicy>,
    ),
> {
    let service_count = 1usize..6;
    service_count.prop_flat_map(|n| {
        (
            proptest::collection::vec((0u8..3, 0u16..4), 0..12),
            proptest::collection::vec((0usize..6, proptest::collection::vec((0u8..3, 0i32..100), 1..4), 0usize..4), 0..5),
            proptest::collection::vec((0usize..6, 0i32..11, 1i32..20, 0i32..101, 1u64..5000), 0..5),
        )
            .prop_map(move |(eps, splits, policies)| {
                // Every other service has two ports, 80 and 81.
                let services: Vec<ServiceInfo> = (0..n)
                    .map(|i| {
                        let key = ServiceKey::new("shop", format!("svc{i}"));
                        if i % 2 == 0 {
                            return ServiceInfo::routed_as_one(key);
                        }
                        let port = |name: &str, port| ServicePort { name: name.into(), port, addresses: Vec::new() };
                        ServiceInfo { key, ports: Ports::Each(vec![port("http", 80), port("admin", 81)]) }
                    })
                    .collect();
                let endpoints = eps
                    .iter()
                    .enumerate()
                    .map(|(i, (version, svc))| EndpointInfo {
                        service: services[usize::from(*svc) % n].key.clone(),
                        port: (usize::from(*svc) % n % 2 == 1).then_some(if i % 2 == 0 { 80 } else { 81 }),
                        address: SocketAddr::from(([10, 0, 0, 1], 9000 + i as u16)),
                        labels: labels(&[("version", &format!("v{version}"))]),
                    })
                    .collect();
                let splits = splits
                    .iter()
                    .enumerate()
                    .map(|(i, (svc, backends, port))| {
                        let mut seen = std::collections::HashSet::new();
                        let backends: Vec<(String, String, i32)> = backends
                            .iter()
                            .filter(|(v, _)| seen.insert(*v))
                            .map(|(v, w)| (format!("v{v}"), format!("v{v}"), *w))
                            .collect();
                        let refs: Vec<(&str, &str, i32)> =
                            backends.iter().map(|(a, b, w)| (a.as_str(), b.as_str(), *w)).collect();
                        let mut split = split(&format!("split{i}"), &format!("svc{}", svc % (n + 1)), &refs);
                        split.spec.port = [None, Some(80), Some(81), Some(82)][*port];
                        split
                    })
                    .collect();
                let policies = policies
                    .iter()
                    .enumerate()
                    .map(|(i, (svc, attempts, threshold, pct, ms))| {
                        policy(
                            &format!("policy{i}"),
                            &format!("svc{}", svc % (n + 1)),
                            &format!(
                                "timeouts: {{request: {}ms, perTry: {ms}ms}}\nretries: {{attempts: {attempts}}}\n\
                                 circuitBreaker: {{failureThreshold: {threshold}}}\n\
                                 outlierDetection: {{consecutive5xxErrors: {threshold}, maxEjectionPercent: {pct}}}\n\
                                 rateLimit: {{requestsPerSecond: {threshold}, burst: {threshold}}}",
                                ms * 2
                            ),
                        )
                    })
                    .collect();
                (services, endpoints, splits, policies)
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the resources, what the operator sends passes the sidecar's own validation.
    #[test]
    fn every_output_is_a_config_the_sidecar_accepts((services, endpoints, splits, policies) in arb_inputs()) {
        let out = fresh(Inputs { splits: &splits, policies: &policies, services: &services, endpoints: &endpoints, operator_namespace: None });
        prop_assert_eq!(out.services.len(), services.len());
        for (key, service) in &out.services {
            let config = api::ProxyConfig {
                version: 1,
                inbound: out.inbound.get(key).cloned().unwrap_or_default(),
                services: vec![(**service).clone()],
                limits: Default::default(),
            };
            prop_assert!(config.validate().is_ok(), "{:?}", config.validate());
        }
    }

    /// A refused split depends on the past only through its last good weights, which its status
    /// records: an operator restarted after the status of one state was written, on any next
    /// state, routes every Service as the operator that never stopped.
    #[test]
    fn a_restart_changes_no_routing(
        (services, endpoints, splits, policies) in arb_inputs(),
        (_, later_endpoints, later_splits, _) in arb_inputs(),
    ) {
        let inputs = Inputs { splits: &splits, policies: &policies, services: &services, endpoints: &endpoints, operator_namespace: None };
        let first = fresh(inputs);
        // The same splits (names and uids), maybe edited, over other endpoints.
        let later: Vec<TrafficSplit> = splits
            .iter()
            .zip(later_splits.iter().map(Some).chain(std::iter::repeat(None)))
            .map(|(s, edit)| {
                let mut s = s.clone();
                if let Some(edit) = edit { s.spec.backends = edit.spec.backends.clone(); }
                s
            })
            .collect();
        let later_endpoints: Vec<EndpointInfo> = later_endpoints
            .into_iter()
            .filter(|e| services.iter().any(|s| s.key == e.service))
            .collect();
        let next = with_endpoints(with_splits(inputs, &later), &later_endpoints);
        let kept_running = translate(&next, &first);
        let recorded = with_recorded_status(&later, &first);
        let restarted = fresh(with_splits(next, &recorded));
        for (key, service) in &kept_running.services {
            prop_assert_eq!(&restarted.services[key].subsets, &service.subsets, "{}", key);
            prop_assert_eq!(&restarted.services[key].rules, &service.rules, "{}", key);
            prop_assert_eq!(&restarted.services[key].ports, &service.ports, "{}", key);
        }
        let weights = |t: &Translation| t.verdicts.iter().map(|v| v.weights.clone()).collect::<Vec<_>>();
        prop_assert_eq!(weights(&restarted), weights(&kept_running));
    }

    /// The same resources in any order give the same output.
    #[test]
    fn outputs_are_deterministic((services, endpoints, splits, policies) in arb_inputs()) {
        let a = fresh(Inputs { splits: &splits, policies: &policies, services: &services, endpoints: &endpoints, operator_namespace: None });
        let mut rs = splits.clone();
        rs.reverse();
        let mut rp = policies.clone();
        rp.reverse();
        let mut re = endpoints.clone();
        re.reverse();
        let b = fresh(Inputs { splits: &rs, policies: &rp, services: &services, endpoints: &re, operator_namespace: None });
        prop_assert_eq!(a, b);
    }
}

// ---- Ports ----

/// payments with port 80 (`http`) served at 8080 and port 81 (`admin`) at 9090, on pods
/// `10.0.0.1` (v1), `10.0.0.2` (v1) and `10.0.0.3` (v2); its ClusterIP is 10.96.0.12.
fn two_ports(pods: &[(u8, &str)]) -> (Vec<ServiceInfo>, Vec<EndpointInfo>) {
    let vip = |port: u16| SocketAddr::from(([10, 96, 0, 12], port));
    let services = vec![ServiceInfo {
        key: key(),
        ports: Ports::Each(vec![
            ServicePort {
                name: "http".into(),
                port: 80,
                addresses: vec![vip(80)],
            },
            ServicePort {
                name: "admin".into(),
                port: 81,
                addresses: vec![vip(81)],
            },
        ]),
    }];
    let endpoints = pods
        .iter()
        .flat_map(|&(pod, version)| {
            [(80, 8080), (81, 9090)].map(|(port, target)| EndpointInfo {
                service: key(),
                port: Some(port),
                address: SocketAddr::from(([10, 0, 0, pod], target)),
                labels: labels(&[("version", version)]),
            })
        })
        .collect();
    (services, endpoints)
}

const PODS: [(u8, &str); 3] = [(1, "v1"), (2, "v1"), (3, "v2")];

/// Port `port` of payments: its subsets as (name, weight, endpoints as `pod:target`).
fn port_routing(out: &Translation, port: u16) -> Vec<(String, u32, Vec<String>)> {
    let config = &out.services[&key()];
    let port = config.ports.iter().find(|p| p.port == port).unwrap();
    port.subsets
        .iter()
        .map(|s| {
            let endpoints = s
                .endpoints
                .iter()
                .map(|e| match e.ip() {
                    std::net::IpAddr::V4(ip) => format!("{}:{}", ip.octets()[3], e.port()),
                    ip => ip.to_string(),
                })
                .collect();
            (s.name.clone(), s.weight, endpoints)
        })
        .collect()
}

fn subsets(spec: &[(&str, u32, &[&str])]) -> Vec<(String, u32, Vec<String>)> {
    spec.iter()
        .map(|(name, weight, endpoints)| {
            let endpoints = endpoints.iter().map(|e| e.to_string()).collect();
            (name.to_string(), *weight, endpoints)
        })
        .collect()
}

fn split_on_port(name: &str, port: Option<i32>, weights: (i32, i32)) -> TrafficSplit {
    let mut s = payments_split(weights.0, ("v2", weights.1));
    s.metadata.name = Some(name.into());
    s.spec.port = port;
    s
}

fn with_age(mut split: TrafficSplit, seconds: i64) -> TrafficSplit {
    split.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + seconds).unwrap(),
    ));
    split
}

fn verdict_of<'a>(out: &'a Translation, name: &str) -> &'a weir_operator::translate::Verdict {
    out.verdicts.iter().find(|v| v.name == name).unwrap()
}

#[test]
fn each_port_is_routed_over_its_own_endpoints_and_addresses() {
    let (services, endpoints) = two_ports(&PODS);
    let out = fresh(over(&services, &endpoints));
    let config = &out.services[&key()];
    assert!(config.subsets.is_empty() && config.addresses.is_empty());
    assert_eq!(
        config
            .ports
            .iter()
            .map(|p| (p.port, p.name.as_deref(), p.addresses[0].to_string()))
            .collect::<Vec<_>>(),
        [
            (80, Some("http"), "10.96.0.12:80".to_owned()),
            (81, Some("admin"), "10.96.0.12:81".to_owned()),
        ]
    );
    assert_eq!(
        port_routing(&out, 80),
        subsets(&[("default", 1, &["1:8080", "2:8080", "3:8080"])])
    );
    assert_eq!(
        port_routing(&out, 81),
        subsets(&[("default", 1, &["1:9090", "2:9090", "3:9090"])])
    );
    // What the sidecar gets is what it accepts.
    config.validate().unwrap();
}

#[test]
fn a_split_with_a_port_moves_only_that_ports_traffic() {
    let (services, endpoints) = two_ports(&PODS);
    let splits = [split_on_port("admin-canary", Some(81), (10, 90))];
    let out = fresh(with_splits(over(&services, &endpoints), &splits));
    assert_eq!(verdict_of(&out, "admin-canary").accepted, Ok(()));
    assert_eq!(
        port_routing(&out, 81),
        subsets(&[("v1", 10, &["1:9090", "2:9090"]), ("v2", 90, &["3:9090"])])
    );
    assert_eq!(
        port_routing(&out, 80),
        subsets(&[("default", 1, &["1:8080", "2:8080", "3:8080"])])
    );
    out.services[&key()].validate().unwrap();
}

#[test]
fn a_split_without_a_port_governs_every_port() {
    let (services, endpoints) = two_ports(&PODS);
    let splits = [split_on_port("canary", None, (90, 10))];
    let out = fresh(with_splits(over(&services, &endpoints), &splits));
    let verdict = verdict_of(&out, "canary");
    assert_eq!(verdict.accepted, Ok(()));
    // Counted once, not once per port.
    assert_eq!(
        verdict.backends,
        vec![("v1".to_owned(), 2), ("v2".to_owned(), 1)]
    );
    assert_eq!(
        port_routing(&out, 80),
        subsets(&[("v1", 90, &["1:8080", "2:8080"]), ("v2", 10, &["3:8080"])])
    );
    assert_eq!(
        port_routing(&out, 81),
        subsets(&[("v1", 90, &["1:9090", "2:9090"]), ("v2", 10, &["3:9090"])])
    );
}

#[test]
fn a_split_naming_no_port_of_the_service_is_refused_by_spec_port() {
    let (services, endpoints) = two_ports(&PODS);
    let splits = [split_on_port("typo", Some(8080), (90, 10))];
    let out = fresh(with_splits(over(&services, &endpoints), &splits));
    let refused = verdict_of(&out, "typo").accepted.clone().unwrap_err();
    assert_eq!(refused.reason, "PortNotFound");
    assert!(
        refused.message.starts_with("spec.port:") && refused.message.contains("80, 81"),
        "{}",
        refused.message
    );
    // Nothing routed by it.
    for port in [80, 81] {
        assert_eq!(port_routing(&out, port)[0].0, "default");
    }
}

#[test]
fn splits_of_one_port_conflict_and_the_more_specific_split_wins_its_port() {
    let (services, endpoints) = two_ports(&PODS);
    let splits = [
        // The oldest, but naming no port: it keeps the ports the others do not name.
        with_age(split_on_port("everywhere", None, (90, 10)), 0),
        with_age(split_on_port("admin", Some(81), (50, 50)), 10),
        with_age(split_on_port("admin-too", Some(81), (0, 100)), 20),
        with_age(split_on_port("everywhere-too", None, (1, 1)), 30),
    ];
    let out = fresh(with_splits(over(&services, &endpoints), &splits));
    assert_eq!(verdict_of(&out, "everywhere").accepted, Ok(()));
    assert_eq!(verdict_of(&out, "admin").accepted, Ok(()));
    for loser in ["admin-too", "everywhere-too"] {
        let refused = verdict_of(&out, loser).accepted.clone().unwrap_err();
        assert_eq!(refused.reason, "Conflict", "{loser}");
    }
    assert!(
        verdict_of(&out, "admin-too")
            .accepted
            .clone()
            .unwrap_err()
            .message
            .contains("port 81")
    );
    assert_eq!(port_routing(&out, 80)[0].1, 90);
    assert_eq!(port_routing(&out, 81)[0].1, 50);
    // Whatever order the watch delivered them in.
    let mut reversed = splits.to_vec();
    reversed.reverse();
    let again = fresh(with_splits(over(&services, &endpoints), &reversed));
    assert_eq!(again, out);
}

#[test]
fn a_refused_split_on_a_port_keeps_its_weights_there_while_endpoints_follow() {
    let (services, endpoints) = two_ports(&PODS);
    let splits = [split_on_port("admin", Some(81), (90, 10))];
    let inputs = with_splits(over(&services, &endpoints), &splits);
    let first = fresh(inputs);
    // The v2 pod dies and a new v1 pod (4) comes up.
    let (_, after) = two_ports(&[(1, "v1"), (2, "v1"), (4, "v1")]);
    let second = translate(&with_endpoints(inputs, &after), &first);
    let refused = verdict_of(&second, "admin").accepted.clone().unwrap_err();
    assert_eq!(refused.reason, "NoEndpoints");
    assert_eq!(
        port_routing(&second, 81),
        subsets(&[("v1", 90, &["1:9090", "2:9090", "4:9090"]), ("v2", 10, &[])])
    );
    assert_eq!(
        port_routing(&second, 80),
        subsets(&[("default", 1, &["1:8080", "2:8080", "4:8080"])])
    );
    // A restarted operator reads the kept weights back from status: the same config.
    let recorded = with_recorded_status(&splits, &second);
    let restarted = fresh(with_endpoints(with_splits(inputs, &recorded), &after));
    assert_eq!(restarted.services, second.services);
}

#[test]
fn a_local_service_routed_as_one_lets_a_split_name_its_declared_port() {
    let endpoints = payments().1;
    let declared = [ServiceInfo {
        key: key(),
        ports: Ports::One { port: Some(8080) },
    }];
    let judge = |port: i32, services: &[ServiceInfo]| {
        let splits = [split_on_port("canary", Some(port), (90, 10))];
        fresh(Inputs {
            splits: &splits,
            services,
            endpoints: &endpoints,
            ..Inputs::default()
        })
    };
    let out = judge(8080, &declared);
    assert_eq!(verdict_of(&out, "canary").accepted, Ok(()));
    // Still one route for every port: the subsets sit on the service.
    assert!(out.services[&key()].ports.is_empty());
    assert_eq!(routing(&out)[1].1, 10);
    let out = judge(81, &declared);
    assert_eq!(
        verdict_of(&out, "canary")
            .accepted
            .clone()
            .unwrap_err()
            .reason,
        "PortNotFound"
    );
    let out = judge(8080, &payments().0);
    let refused = verdict_of(&out, "canary").accepted.clone().unwrap_err();
    assert!(
        refused.message.contains("none declared"),
        "{}",
        refused.message
    );
}
