//! DESIGN.md's Bounds in local mode, where no API server checks the schema: the translation runs
//! the sidecar's validation (`weir_proxy_api`) on what it builds, so every policy field out of
//! its range is refused by the operator, naming the field, and nothing out of range reaches a
//! proxy. The same values at the ends of the ranges are accepted.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use weir_crds::*;
use weir_operator::snapshot::ServiceKey;
use weir_operator::translate::{EndpointInfo, Inputs, ServiceInfo, Translation, translate};

/// DESIGN.md's ResiliencePolicy example: every block set.
fn example() -> Value {
    json!({
      "targetRef": {"kind": "Service", "name": "payments"},
      "timeouts": {"request": "10s", "perTry": "2s", "connect": "1s", "idle": "60s"},
      "retries": {"attempts": 3, "retryOn": ["5xx", "gateway-error"],
                  "backoff": {"base": "100ms", "max": "5s", "multiplier": 2, "jitter": "full"},
                  "budget": {"ratio": 0.2, "minPerSecond": 10}},
      "circuitBreaker": {"failureThreshold": 5, "successThreshold": 2, "openDuration": "60s"},
      "outlierDetection": {"consecutive5xxErrors": 5, "consecutiveGatewayErrors": 3, "interval": "30s",
                           "baseEjectionTime": "30s", "maxEjectionPercent": 50},
      "bulkhead": {"maxConcurrent": 10, "maxQueued": 100, "queueTimeout": "1s"},
      "rateLimit": {"requestsPerSecond": 100, "burst": 20, "key": "none"},
      "loadBalancer": {"policy": "least-request"},
      "fallback": {"status": 200, "body": "{\"items\":[]}", "contentType": "application/json"}
    })
}

fn with(pointer: &str, value: Value) -> ResiliencePolicy {
    let mut spec = example();
    *spec
        .pointer_mut(pointer)
        .unwrap_or_else(|| panic!("{pointer}")) = value;
    let spec: ResiliencePolicySpec = serde_json::from_value(spec).unwrap();
    let mut policy = ResiliencePolicy::new("payments", spec);
    policy.metadata.namespace = Some("shop".into());
    policy
}

fn services() -> (Vec<ServiceInfo>, Vec<EndpointInfo>) {
    let key = ServiceKey::new("shop", "payments");
    (
        vec![ServiceInfo::routed_as_one(key.clone())],
        vec![EndpointInfo {
            service: key,
            port: None,
            address: SocketAddr::from(([10, 0, 0, 1], 9101)),
            labels: BTreeMap::from([("version".to_owned(), "v1".to_owned())]).into(),
        }],
    )
}

/// The translation's verdict on the one policy: Ok, or the refusal's message.
fn verdict(policy: ResiliencePolicy, splits: &[TrafficSplit]) -> Result<(), String> {
    let (services, endpoints) = services();
    let out = translate(
        &Inputs {
            splits,
            policies: &[policy],
            services: &services,
            endpoints: &endpoints,
            operator_namespace: None,
        },
        &Translation::default(),
    );
    let refusals: Vec<String> = out
        .verdicts
        .iter()
        .filter_map(|v| v.accepted.as_ref().err())
        .map(|r| format!("{}: {}", r.reason, r.message))
        .collect();
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(refusals.join("; "))
    }
}

fn accepted(pointer: &str, value: Value) {
    if let Err(e) = verdict(with(pointer, value.clone()), &[]) {
        panic!("{pointer} = {value}: refused: {e}");
    }
}

fn refused(pointer: &str, value: Value, field: &str) {
    match verdict(with(pointer, value.clone()), &[]) {
        Ok(()) => panic!("{pointer} = {value}: accepted"),
        Err(e) => assert!(
            e.starts_with("Invalid: ") && e.contains(&format!("spec.{field}: ")),
            "{pointer} = {value}: {e} (expected spec.{field})"
        ),
    }
}

#[test]
fn every_number_of_a_policy_is_bounded() {
    // (pointer, field, lowest, highest, below if an i32 can say it, above)
    let cases: [(&str, &str, Value, Value, Value, Value); 13] = [
        (
            "/retries/attempts",
            "retries.attempts",
            json!(0),
            json!(10),
            json!(-1),
            json!(11),
        ),
        (
            "/retries/backoff/multiplier",
            "retries.backoff.multiplier",
            json!(1),
            json!(10),
            json!(0.5),
            json!(10.5),
        ),
        (
            "/retries/budget/ratio",
            "retries.budget.ratio",
            json!(0),
            json!(1),
            json!(-0.1),
            json!(1.1),
        ),
        (
            "/retries/budget/minPerSecond",
            "retries.budget.minPerSecond",
            json!(0),
            json!(1_000_000),
            json!(-1),
            json!(2_147_483_647),
        ),
        (
            "/circuitBreaker/failureThreshold",
            "circuitBreaker.failureThreshold",
            json!(1),
            json!(1_000_000),
            json!(0),
            json!(1_000_001),
        ),
        (
            "/circuitBreaker/successThreshold",
            "circuitBreaker.successThreshold",
            json!(1),
            json!(1_000_000),
            json!(0),
            json!(1_000_001),
        ),
        (
            "/outlierDetection/consecutive5xxErrors",
            "outlierDetection.consecutive5xxErrors",
            json!(1),
            json!(1_000_000),
            json!(0),
            json!(1_000_001),
        ),
        (
            "/outlierDetection/consecutiveGatewayErrors",
            "outlierDetection.consecutiveGatewayErrors",
            json!(1),
            json!(1_000_000),
            json!(0),
            json!(1_000_001),
        ),
        (
            "/outlierDetection/maxEjectionPercent",
            "outlierDetection.maxEjectionPercent",
            json!(0),
            json!(100),
            json!(-1),
            json!(101),
        ),
        (
            "/bulkhead/maxConcurrent",
            "bulkhead.maxConcurrent",
            json!(1),
            json!(1_000_000),
            json!(0),
            json!(1_000_001),
        ),
        (
            "/bulkhead/maxQueued",
            "bulkhead.maxQueued",
            json!(0),
            json!(1_000_000),
            json!(-1),
            json!(1_000_001),
        ),
        (
            "/rateLimit/requestsPerSecond",
            "rateLimit.requestsPerSecond",
            json!(1),
            json!(1_000_000),
            json!(0),
            json!(1_000_001),
        ),
        (
            "/rateLimit/burst",
            "rateLimit.burst",
            json!(1),
            json!(1_000_000),
            json!(0),
            json!(1_000_001),
        ),
    ];
    for (pointer, field, low, high, below, above) in cases {
        accepted(pointer, low);
        accepted(pointer, high);
        refused(pointer, below, field);
        refused(pointer, above, field);
    }
}

#[test]
fn every_duration_of_a_policy_is_between_a_millisecond_and_a_day() {
    let durations = [
        ("/timeouts/request", "timeouts.request"),
        ("/timeouts/perTry", "timeouts.perTry"),
        ("/timeouts/connect", "timeouts.connect"),
        ("/timeouts/idle", "timeouts.idle"),
        ("/retries/backoff/base", "retries.backoff.base"),
        ("/retries/backoff/max", "retries.backoff.max"),
        (
            "/circuitBreaker/openDuration",
            "circuitBreaker.openDuration",
        ),
        ("/outlierDetection/interval", "outlierDetection.interval"),
        (
            "/outlierDetection/baseEjectionTime",
            "outlierDetection.baseEjectionTime",
        ),
        ("/bulkhead/queueTimeout", "bulkhead.queueTimeout"),
    ];
    // Neighbours at the other end of the range, so that perTry <= request and base <= max hold.
    let at = |pointer: &str, value: &str| {
        let mut spec = example();
        spec["timeouts"]["request"] = json!("24h");
        spec["timeouts"]["perTry"] = json!("1ms");
        spec["retries"]["backoff"]["base"] = json!("1ms");
        spec["retries"]["backoff"]["max"] = json!("24h");
        *spec.pointer_mut(pointer).unwrap() = json!(value);
        let mut policy = ResiliencePolicy::new(
            "payments",
            serde_json::from_value::<ResiliencePolicySpec>(spec).unwrap(),
        );
        policy.metadata.namespace = Some("shop".into());
        verdict(policy, &[])
    };
    for (pointer, field) in durations {
        for ok in ["1ms", "24h"] {
            assert_eq!(at(pointer, ok), Ok(()), "{pointer} = {ok}");
        }
        for bad in ["0s", "999us", "24h1ms", "5000000000000000h"] {
            let e = at(pointer, bad).unwrap_err();
            assert!(
                e.contains(&format!("spec.{field}: ")),
                "{pointer} = {bad}: {e}"
            );
        }
    }
}

#[test]
fn the_fallback_body_is_at_most_64_kib() {
    accepted("/fallback/body", json!("x".repeat(65_536)));
    refused("/fallback/body", json!("x".repeat(65_537)), "fallback.body");
}

#[test]
fn a_weight_beyond_a_million_is_refused_naming_the_backend() {
    let split = |weight: i32| {
        let mut s = TrafficSplit::new(
            "payments",
            TrafficSplitSpec {
                service: "payments".into(),
                port: None,
                backends: vec![TrafficSplitBackend {
                    subset: "v1".into(),
                    selector: BTreeMap::from([("version".to_owned(), "v1".to_owned())]),
                    weight,
                }],
                rules: Vec::new(),
                analysis: None,
            },
        );
        s.metadata.namespace = Some("shop".into());
        s
    };
    let policy = with("/retries/attempts", json!(3));
    assert_eq!(verdict(policy.clone(), &[split(1_000_000)]), Ok(()));
    let e = verdict(policy, &[split(1_000_001)]).unwrap_err();
    assert!(
        e.contains("spec.backends[0].weight: must be between 0 and 1000000"),
        "{e}"
    );
}
