//! DESIGN.md's example resources (copied into `tests/examples/`) against the Rust types and the
//! generated schemas: they deserialize, survive a round trip, and are admitted; broken variants
//! of them are refused with the right message.

mod common;

use common::{admit, example, with, without};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use weir_crds::{Autoscaler, LocalService, MetricType, ResiliencePolicy, TrafficSplit};

/// Equal as JSON, with numbers compared by value (`2` and `2.0` are the same).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn round_trip<T: Serialize + DeserializeOwned>(file: &str) -> T {
    let path = format!("{}/tests/examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let typed: T = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    let original = example(file);
    assert!(
        same(&original, &back),
        "{file} changed in a round trip:\n{original:#}\n{back:#}"
    );
    // And the YAML the types write reads back the same.
    let again: T = serde_yaml::from_str(&serde_yaml::to_string(&typed).unwrap()).unwrap();
    assert!(same(&serde_json::to_value(&again).unwrap(), &back));
    typed
}

#[test]
fn design_examples_deserialize_and_round_trip() {
    let ts: TrafficSplit = round_trip("trafficsplit.yaml");
    assert_eq!(ts.spec.service, "payments");
    assert_eq!(ts.spec.backends.len(), 2);
    assert_eq!(ts.spec.rules[0].subset, "v2");
    assert_eq!(weir_crds::weights_summary(&ts.spec), "v1=90,v2=10");

    let rp: ResiliencePolicy = round_trip("resiliencepolicy.yaml");
    assert_eq!(rp.spec.retries.as_ref().unwrap().attempts, 3);
    assert_eq!(
        rp.spec.timeouts.as_ref().unwrap().per_try.as_deref(),
        Some("2s")
    );

    let a: Autoscaler = round_trip("autoscaler.yaml");
    assert_eq!(a.spec.metrics.len(), 4);
    assert_eq!(a.spec.metrics[2].kind, MetricType::LatencyP99);
    assert_eq!(
        a.spec.metrics[2].target,
        IntOrString::String("250ms".into())
    );
    assert_eq!(a.spec.metrics[3].target, IntOrString::Int(70));

    let ls: LocalService = round_trip("localservice.yaml");
    assert_eq!(ls.spec.endpoints[1].address, "127.0.0.1:9102");
}

#[test]
fn design_examples_are_admitted() {
    for file in [
        "trafficsplit.yaml",
        "resiliencepolicy.yaml",
        "autoscaler.yaml",
        "localservice.yaml",
    ] {
        let problems = admit(&example(file));
        assert!(problems.is_empty(), "{file} refused: {problems:#?}");
    }
}

#[test]
fn minimal_resources_are_admitted() {
    let minimal = [
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "TrafficSplit", "metadata": {"name": "a"},
               "spec": {"service": "a", "backends": [{"subset": "v1", "selector": {}, "weight": 1}]}}),
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "ResiliencePolicy", "metadata": {"name": "a"},
               "spec": {"targetRef": {"kind": "Service", "name": "a"}}}),
        // Defaults: a namespace may start with a digit; a Mesh policy needs no name.
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "ResiliencePolicy", "metadata": {"name": "a"},
               "spec": {"targetRef": {"kind": "Namespace", "name": "1shop"}, "mode": "DryRun",
                        "circuitBreaker": {"failureRate": 0.5}}}),
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "ResiliencePolicy", "metadata": {"name": "a"},
               "spec": {"targetRef": {"kind": "Mesh"}, "faults": {"abort": {"percent": 0.1, "status": 503}}}}),
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "Autoscaler", "metadata": {"name": "a"},
               "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "a"},
                        "minReplicas": 1, "maxReplicas": 1, "metrics": [{"type": "Cpu", "target": 150}]}}),
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "LocalService", "metadata": {"name": "a"},
               "spec": {"endpoints": []}}),
        // A multi-port LocalService lists its ports instead of `endpoints`.
        json!({"apiVersion": "weir.dev/v1alpha1", "kind": "LocalService", "metadata": {"name": "a"},
               "spec": {"ports": [
                   {"name": "http", "port": 80, "endpoints": [{"address": "127.0.0.1:9101"}]},
                   {"port": 81, "endpoints": [{"address": "127.0.0.1:9111", "labels": {"version": "v2"}}]}]}}),
    ];
    for object in minimal {
        let problems = admit(&object);
        assert!(problems.is_empty(), "{object} refused: {problems:#?}");
    }
}

/// Each case: the example, what to change (JSON pointer, new value, or `None` to remove), and a
/// piece of the expected refusal.
fn refused(file: &str, pointer: &str, value: Option<Value>, expected: &str) {
    let object = match value {
        Some(v) => with(example(file), pointer, v),
        None => without(example(file), pointer),
    };
    let problems = admit(&object);
    assert!(
        problems.iter().any(|p| p.contains(expected)),
        "{file} with {pointer} changed: expected a refusal containing {expected:?}, got {problems:#?}"
    );
}

#[test]
fn bad_traffic_splits_are_refused() {
    let f = "trafficsplit.yaml";
    refused(
        f,
        "/spec/backends/0/weight",
        Some(json!(-1)),
        "less than the minimum",
    );
    refused(
        f,
        "/spec/backends/0/weight",
        Some(json!(1_000_001)),
        "greater than the maximum",
    );
    refused(
        f,
        "/spec/backends/0/weight",
        Some(json!(1.5)),
        "is not of type",
    );
    assert!(admit(&with(example(f), "/spec/backends/1/weight", json!(0))).is_empty());
    let all_zero = with(
        with(example(f), "/spec/backends/0/weight", json!(0)),
        "/spec/backends/1/weight",
        json!(0),
    );
    assert!(
        admit(&all_zero)
            .iter()
            .any(|p| p.contains("at least one backend needs a weight greater than 0")),
        "{:?}",
        admit(&all_zero)
    );
    refused(f, "/spec/backends", Some(json!([])), "");
    refused(
        f,
        "/spec/backends/1/subset",
        Some(json!("v1")),
        "Duplicate value",
    );
    refused(
        f,
        "/spec/rules/0/subset",
        Some(json!("v3")),
        "every rule's subset must name one of the backends",
    );
    refused(f, "/spec/port", Some(json!(0)), "less than the minimum");
    refused(
        f,
        "/spec/port",
        Some(json!(65536)),
        "greater than the maximum",
    );
    refused(
        f,
        "/spec/service",
        Some(json!("Payments")),
        "does not match",
    );
    refused(
        f,
        "/spec/service",
        None,
        "\"service\" is a required property",
    );
    refused(
        f,
        "/spec/backends/0/selector",
        None,
        "\"selector\" is a required property",
    );
    refused(
        f,
        "/spec/backends/0/subset",
        Some(json!("v1,v2")),
        "does not match",
    );
    refused(
        f,
        "/spec/rules/0/match/pathPrefix",
        Some(json!("api")),
        "does not match",
    );
    refused(
        f,
        "/spec/rules/0/match/prefix",
        Some(json!("/api")),
        "unknown field",
    );
    let too_many: Vec<Value> = (0..65)
        .map(|i| json!({"subset": format!("s{i}"), "selector": {}, "weight": 1}))
        .collect();
    refused(
        f,
        "/spec/backends",
        Some(Value::Array(too_many)),
        "has more than 64 items",
    );
}

#[test]
fn bad_resilience_policies_are_refused() {
    let f = "resiliencepolicy.yaml";
    refused(
        f,
        "/spec/retries/attempts",
        Some(json!(11)),
        "greater than the maximum",
    );
    refused(
        f,
        "/spec/retries/attempts",
        Some(json!(-1)),
        "less than the minimum",
    );
    refused(
        f,
        "/spec/timeouts/request",
        Some(json!("5 seconds")),
        "does not match",
    );
    refused(
        f,
        "/spec/timeouts/request",
        Some(json!("10")),
        "does not match",
    );
    refused(
        f,
        "/spec/timeouts/connect",
        Some(json!("0s")),
        "must be between 1ms and 24h",
    );
    refused(
        f,
        "/spec/timeouts/perTry",
        Some(json!("20s")),
        "timeouts.perTry must not be longer than timeouts.request",
    );
    refused(
        f,
        "/spec/timeouts/perTry",
        Some(json!("1m")),
        "timeouts.perTry must not be longer than timeouts.request",
    );
    // perTry alone, or equal to request, is fine.
    assert!(admit(&without(example(f), "/spec/timeouts/request")).is_empty());
    assert!(admit(&with(example(f), "/spec/timeouts/perTry", json!("10000ms"))).is_empty());
    refused(
        f,
        "/spec/retries/backoff/max",
        Some(json!("50ms")),
        "backoff.max must not be shorter than backoff.base",
    );
    refused(
        f,
        "/spec/retries/backoff/multiplier",
        Some(json!(0.5)),
        "less than the minimum",
    );
    refused(
        f,
        "/spec/retries/backoff/jitter",
        Some(json!("half")),
        "is not one of",
    );
    refused(
        f,
        "/spec/retries/retryOn/1",
        Some(json!("4xx")),
        "is not one of",
    );
    refused(
        f,
        "/spec/retries/retryOn/1",
        Some(json!("5xx")),
        "Duplicate value",
    );
    refused(
        f,
        "/spec/retries/budget/ratio",
        Some(json!(1.5)),
        "greater than the maximum",
    );
    refused(
        f,
        "/spec/retries/budget/ratio",
        Some(json!(-0.1)),
        "less than the minimum",
    );
    refused(
        f,
        "/spec/targetRef/kind",
        Some(json!("Deployment")),
        "targetRef.kind must be Service, Namespace or Mesh",
    );
    refused(
        f,
        "/spec/targetRef/name",
        None,
        "targetRef.name is required unless targetRef.kind is Mesh",
    );
    refused(
        f,
        "/spec/targetRef/name",
        Some(json!("1payments")),
        "targetRef.name of a Service must start with a letter",
    );
    refused(f, "/spec/mode", Some(json!("Shadow")), "is not one of");
    refused(
        f,
        "/spec/circuitBreaker",
        Some(json!({"openDuration": "1s"})),
        "circuitBreaker needs failureThreshold, failureRate or both",
    );
    refused(
        f,
        "/spec/retries/retryOn/5",
        Some(json!("420")),
        "is not one of",
    );
    refused(
        f,
        "/spec/targetRef",
        None,
        "\"targetRef\" is a required property",
    );
    refused(
        f,
        "/spec/circuitBreaker/failureThreshold",
        Some(json!(0)),
        "less than the minimum",
    );
    refused(
        f,
        "/spec/outlierDetection/maxEjectionPercent",
        Some(json!(101)),
        "greater than the maximum",
    );
    refused(
        f,
        "/spec/outlierDetection/interval",
        Some(json!("30 s")),
        "does not match",
    );
    refused(
        f,
        "/spec/bulkhead/maxConcurrent",
        Some(json!(0)),
        "less than the minimum",
    );
    refused(
        f,
        "/spec/rateLimit/key",
        Some(json!("cookie")),
        "does not match",
    );
    refused(
        f,
        "/spec/rateLimit/key",
        Some(json!("header:")),
        "does not match",
    );
    refused(
        f,
        "/spec/rateLimit/key",
        Some(json!("header:x user")),
        "does not match",
    );
    assert!(
        admit(&with(
            example(f),
            "/spec/rateLimit/key",
            json!("header:x-user-id")
        ))
        .is_empty()
    );
    assert!(admit(&with(example(f), "/spec/rateLimit/key", json!("source"))).is_empty());
    refused(
        f,
        "/spec/loadBalancer/policy",
        Some(json!("random")),
        "is not one of",
    );
    refused(
        f,
        "/spec/fallback/status",
        Some(json!(700)),
        "greater than the maximum",
    );
    refused(
        f,
        "/spec/fallback/status",
        Some(json!(99)),
        "less than the minimum",
    );
    refused(
        f,
        "/spec/fallback/contentType",
        Some(json!("text/plain\n")),
        "does not match",
    );
    refused(f, "/spec/retryPolicy", Some(json!({})), "unknown field");
    // Go duration forms the pattern accepts, as the sidecar does (against the pattern alone: the
    // `cel` crate used here does not parse `µs`, while Kubernetes' CEL, like the sidecar, does).
    let pattern = regex::Regex::new(weir_crds::schema::DURATION_PATTERN).unwrap();
    for ok in ["1h30m", "1.5s", "250ms", "100us", "100µs", "10ns", "0s"] {
        assert!(pattern.is_match(ok), "{ok}");
        assert!(ok.parse::<weir_proxy_api::Duration>().is_ok(), "{ok}");
    }
    for ok in ["1h30m", "1.5s", "250ms", "1000us", "1000000ns"] {
        let problems = admit(&with(example(f), "/spec/bulkhead/queueTimeout", json!(ok)));
        assert!(problems.is_empty(), "{ok}: {problems:?}");
    }
}

#[test]
fn bad_autoscalers_are_refused() {
    let f = "autoscaler.yaml";
    refused(
        f,
        "/spec/minReplicas",
        Some(json!(11)),
        "minReplicas must not be greater than maxReplicas",
    );
    refused(
        f,
        "/spec/minReplicas",
        Some(json!(0)),
        "less than the minimum",
    );
    refused(
        f,
        "/spec/maxReplicas",
        Some(json!(0)),
        "less than the minimum",
    );
    refused(f, "/spec/metrics", Some(json!([])), "");
    refused(
        f,
        "/spec/metrics/2/target",
        Some(json!(250)),
        "target must be a duration such as 250ms for LatencyP99",
    );
    refused(
        f,
        "/spec/metrics/2/target",
        Some(json!("0ms")),
        "a LatencyP99 target must be between 1ms and 24h",
    );
    refused(
        f,
        "/spec/metrics/2/target",
        Some(json!("250 ms")),
        "does not match",
    );
    refused(
        f,
        "/spec/metrics/0/target",
        Some(json!("10")),
        "an integer for the other metric types",
    );
    refused(
        f,
        "/spec/metrics/0/target",
        Some(json!(0)),
        "less than the minimum",
    );
    refused(
        f,
        "/spec/metrics/1/type",
        Some(json!("Concurrency")),
        "Duplicate value",
    );
    refused(
        f,
        "/spec/metrics/0/type",
        Some(json!("Memory")),
        "is not one of",
    );
    refused(
        f,
        "/spec/behavior/scaleUp/maxChangePercent",
        Some(json!(101)),
        "greater than the maximum",
    );
    refused(
        f,
        "/spec/behavior/scaleDown/period",
        Some(json!("0s")),
        "must be between 1ms and 24h",
    );
    refused(
        f,
        "/spec/behavior/scaleDown/stabilizationWindow",
        Some(json!("5 minutes")),
        "does not match",
    );
    refused(
        f,
        "/spec/targetRef/apiVersion",
        None,
        "\"apiVersion\" is a required property",
    );
}

#[test]
fn bad_local_services_are_refused() {
    let f = "localservice.yaml";
    refused(
        f,
        "/spec/endpoints/0/address",
        Some(json!("localhost")),
        "does not match",
    );
    refused(
        f,
        "/spec/endpoints/0/address",
        None,
        "\"address\" is a required property",
    );
    refused(f, "/spec/port", Some(json!(0)), "less than the minimum");
    let port = |port: Value| json!([{"port": port, "endpoints": [{"address": "127.0.0.1:9101"}]}]);
    refused(
        f,
        "/spec/ports",
        Some(port(json!(0))),
        "less than the minimum",
    );
    refused(
        f,
        "/spec/ports",
        Some(port(json!(65536))),
        "greater than the maximum",
    );
    refused(
        f,
        "/spec/ports",
        Some(json!([{"port": 81, "endpoints": [{"address": "localhost"}]}])),
        "does not match",
    );
    refused(
        f,
        "/spec/endpoints/0/admin",
        Some(json!("localhost:15020")),
        "does not match",
    );
    assert!(
        admit(&with(
            example(f),
            "/spec/endpoints/0/admin",
            json!("127.0.0.1:15020")
        ))
        .is_empty()
    );
    assert!(
        admit(&with(
            example(f),
            "/spec/endpoints/0/address",
            json!("[::1]:9101")
        ))
        .is_empty()
    );
}

#[test]
fn status_written_by_the_operator_is_admitted() {
    let status = json!({
        "observedGeneration": 3,
        "weights": "v1=90,v2=10",
        "backends": [{"subset": "v1", "endpoints": 3}, {"subset": "v2", "endpoints": 1}],
        "conditions": [
            {"type": "Accepted", "status": "True", "reason": "Valid", "message": "",
             "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 3},
            {"type": "Programmed", "status": "False", "reason": "Pushing", "message": "2 of 3 proxies",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}
        ]
    });
    let object = with(example("trafficsplit.yaml"), "/status", status.clone());
    assert!(admit(&object).is_empty(), "{:?}", admit(&object));
    let ts: TrafficSplit = serde_json::from_value(object).unwrap();
    assert_eq!(ts.status.unwrap().conditions.len(), 2);

    let bad = with(
        object_with_status(status),
        "/status/conditions/0/status",
        json!("Yes"),
    );
    assert!(!admit(&bad).is_empty());
}

fn object_with_status(status: Value) -> Value {
    with(example("trafficsplit.yaml"), "/status", status)
}

/// The policy examples under `examples/policies/`: every document is a ResiliencePolicy the API
/// server admits.
#[test]
fn policy_examples_are_admitted() {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies");
    let mut documents = 0;
    for entry in std::fs::read_dir(&folder).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let object = Value::deserialize(document).unwrap();
            if object.is_null() {
                continue;
            }
            let problems = admit(&object);
            assert!(problems.is_empty(), "{}: {problems:#?}", path.display());
            let _: ResiliencePolicy = serde_json::from_value(object).unwrap();
            documents += 1;
        }
    }
    assert!(documents >= 3, "{documents} documents");
}

#[test]
fn policy_status_with_effective_limits_is_admitted() {
    let status = json!({
        "observedGeneration": 1,
        "effectiveLimits": "100 rps per pod × 3 pods = 300 rps; bulkhead 10 per pod × 3 pods = 30",
        "conditions": [
            {"type": "Accepted", "status": "True", "reason": "Accepted",
             "message": "The spec is valid; it gives defaults to 3 services in namespace shop",
             "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}
        ]
    });
    let object = with(example("resiliencepolicy.yaml"), "/status", status);
    assert!(admit(&object).is_empty(), "{:?}", admit(&object));
    let rp: ResiliencePolicy = serde_json::from_value(object).unwrap();
    assert!(rp.status.unwrap().effective_limits.is_some());
}
