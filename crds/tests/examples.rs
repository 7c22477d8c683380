//! DESIGN.md's example resources (copied into `tests/examples/`) against the Rust types and the
//! generated schemas: they deserialize, survive a round trip, and are admitted; broken variants
//! of them are refused with the right message.

mod common;

use common::{admit, example, with, without};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
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
    let typed: T = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    let original = example(file);
    assert!(
        same(&original, &back),
        "{file} changed in a round trip:\n{original:#}\n{back:#}"
    );
    // And the YAML the types write reads back the same.
    let again: T = serde_saphyr::from_str(&serde_saphyr::to_string(&typed).unwrap()).unwrap();
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

/// A broken variant of an example is refused with a message containing `expected`.
fn refused(file: &str, pointer: &str, value: Option<Value>, expected: &str) {
    let object = match &value {
        Some(v) => with(example(file), pointer, v.clone()),
        None => without(example(file), pointer),
    };
    let problems = admit(&object);
    assert!(
        problems.iter().any(|p| p.contains(expected)),
        "{file} with {pointer} changed to {value:?}: expected a refusal containing {expected:?}, got {problems:#?}"
    );
}

/// Each case a broken variant of `file`: `POINTER = JSON => EXPECTED` (the value at a JSON
/// pointer replaced) or `POINTER removed => EXPECTED`, EXPECTED a piece of the refusal.
fn refuses(file: &str, cases: &[&str]) {
    for case in cases {
        let (change, expected) = case.split_once(" => ").expect("POINTER ... => EXPECTED");
        let (pointer, value) = match change.strip_suffix(" removed") {
            Some(pointer) => (pointer, None),
            None => {
                let (pointer, json) = change.split_once(" = ").expect("POINTER = JSON");
                let value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{case}: {e}"));
                (pointer, Some(value))
            }
        };
        refused(file, pointer, value, expected);
    }
}

/// Each case a variant of `file` that is admitted: `POINTER = JSON`, or `POINTER removed`.
fn admits(file: &str, cases: &[&str]) {
    for case in cases {
        let object = match case.strip_suffix(" removed") {
            Some(pointer) => without(example(file), pointer),
            None => {
                let (pointer, json) = case.split_once(" = ").expect("POINTER = JSON");
                let value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{case}: {e}"));
                with(example(file), pointer, value)
            }
        };
        let problems = admit(&object);
        assert!(problems.is_empty(), "{file} with {case}: {problems:#?}");
    }
}

#[test]
fn bad_traffic_splits_are_refused() {
    let f = "trafficsplit.yaml";
    refuses(
        f,
        &[
            r#"/spec/backends/0/weight = -1 => less than the minimum"#,
            r#"/spec/backends/0/weight = 1000001 => greater than the maximum"#,
            r#"/spec/backends/0/weight = 1.5 => is not of type"#,
            r#"/spec/backends = [] => "#,
            r#"/spec/backends/1/subset = "v1" => Duplicate value"#,
            r#"/spec/rules/0/subset = "v3" => every rule's subset must name one of the backends"#,
            r#"/spec/port = 0 => less than the minimum"#,
            r#"/spec/port = 65536 => greater than the maximum"#,
            r#"/spec/service = "Payments" => does not match"#,
            r#"/spec/service removed => "service" is a required property"#,
            r#"/spec/backends/0/selector removed => "selector" is a required property"#,
            r#"/spec/backends/0/subset = "v1,v2" => does not match"#,
            r#"/spec/rules/0/match/pathPrefix = "api" => does not match"#,
            r#"/spec/rules/0/match/prefix = "/api" => unknown field"#,
        ],
    );
    admits(f, &["/spec/backends/1/weight = 0"]);
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
    refuses(
        f,
        &[
            r#"/spec/retries/attempts = 11 => greater than the maximum"#,
            r#"/spec/retries/attempts = -1 => less than the minimum"#,
            r#"/spec/timeouts/request = "5 seconds" => does not match"#,
            r#"/spec/timeouts/request = "10" => does not match"#,
            r#"/spec/timeouts/connect = "0s" => must be between 1ms and 24h"#,
            r#"/spec/timeouts/perTry = "20s" => timeouts.perTry must not be longer than timeouts.request"#,
            r#"/spec/timeouts/perTry = "1m" => timeouts.perTry must not be longer than timeouts.request"#,
            r#"/spec/retries/backoff/max = "50ms" => backoff.max must not be shorter than backoff.base"#,
            r#"/spec/retries/backoff/multiplier = 0.5 => less than the minimum"#,
            r#"/spec/retries/backoff/jitter = "half" => is not one of"#,
            r#"/spec/retries/retryOn/1 = "4xx" => is not one of"#,
            r#"/spec/retries/retryOn/1 = "5xx" => Duplicate value"#,
            r#"/spec/retries/budget/ratio = 1.5 => greater than the maximum"#,
            r#"/spec/retries/budget/ratio = -0.1 => less than the minimum"#,
            r#"/spec/targetRef/kind = "Deployment" => targetRef.kind must be Service, Namespace or Mesh"#,
            r#"/spec/targetRef/name removed => targetRef.name is required unless targetRef.kind is Mesh"#,
            r#"/spec/targetRef/name = "1payments" => targetRef.name of a Service must start with a letter"#,
            r#"/spec/mode = "Shadow" => is not one of"#,
            r#"/spec/circuitBreaker = {"openDuration": "1s"} => circuitBreaker needs failureThreshold, failureRate or both"#,
            r#"/spec/retries/retryOn/5 = "420" => is not one of"#,
            r#"/spec/targetRef removed => "targetRef" is a required property"#,
            r#"/spec/circuitBreaker/failureThreshold = 0 => less than the minimum"#,
            r#"/spec/outlierDetection/maxEjectionPercent = 101 => greater than the maximum"#,
            r#"/spec/outlierDetection/interval = "30 s" => does not match"#,
            r#"/spec/bulkhead/maxConcurrent = 0 => less than the minimum"#,
            r#"/spec/rateLimit/key = "cookie" => does not match"#,
            r#"/spec/rateLimit/key = "header:" => does not match"#,
            r#"/spec/rateLimit/key = "header:x user" => does not match"#,
            r#"/spec/loadBalancer/policy = "random" => is not one of"#,
            r#"/spec/fallback/status = 700 => greater than the maximum"#,
            r#"/spec/fallback/status = 99 => less than the minimum"#,
            r#"/spec/fallback/contentType = "text/plain\n" => does not match"#,
            r#"/spec/retryPolicy = {} => unknown field"#,
        ],
    );
    admits(
        f,
        &[
            // perTry alone, or equal to request, is fine.
            r#"/spec/timeouts/request removed"#,
            r#"/spec/timeouts/perTry = "10000ms""#,
            r#"/spec/rateLimit/key = "header:x-user-id""#,
            r#"/spec/rateLimit/key = "source""#,
            // Go duration forms (see the pattern's cases below).
            r#"/spec/bulkhead/queueTimeout = "1h30m""#,
            r#"/spec/bulkhead/queueTimeout = "1.5s""#,
            r#"/spec/bulkhead/queueTimeout = "250ms""#,
            r#"/spec/bulkhead/queueTimeout = "1000us""#,
            r#"/spec/bulkhead/queueTimeout = "1000000ns""#,
        ],
    );
    // Go duration forms the pattern accepts, as the sidecar does (against the pattern alone: the
    // `cel` crate used here does not parse `µs`, while Kubernetes' CEL, like the sidecar, does).
    let pattern = regex::Regex::new(weir_crds::schema::DURATION_PATTERN).unwrap();
    for ok in ["1h30m", "1.5s", "250ms", "100us", "100µs", "10ns", "0s"] {
        assert!(pattern.is_match(ok), "{ok}");
        assert!(ok.parse::<weir_proxy_api::Duration>().is_ok(), "{ok}");
    }
}

#[test]
fn bad_autoscalers_are_refused() {
    let f = "autoscaler.yaml";
    refuses(
        f,
        &[
            r#"/spec/minReplicas = 11 => minReplicas must not be greater than maxReplicas"#,
            r#"/spec/minReplicas = 0 => less than the minimum"#,
            r#"/spec/maxReplicas = 0 => less than the minimum"#,
            r#"/spec/metrics = [] => "#,
            r#"/spec/metrics/2/target = 250 => target must be a duration such as 250ms for LatencyP99"#,
            r#"/spec/metrics/2/target = "0ms" => a LatencyP99 target must be between 1ms and 24h"#,
            r#"/spec/metrics/2/target = "250 ms" => does not match"#,
            r#"/spec/metrics/0/target = "10" => an integer for the other metric types"#,
            r#"/spec/metrics/0/target = 0 => less than the minimum"#,
            r#"/spec/metrics/1/type = "Concurrency" => Duplicate value"#,
            r#"/spec/metrics/0/type = "Memory" => is not one of"#,
            r#"/spec/behavior/scaleUp/maxChangePercent = 101 => greater than the maximum"#,
            r#"/spec/behavior/scaleDown/period = "0s" => must be between 1ms and 24h"#,
            r#"/spec/behavior/scaleDown/stabilizationWindow = "5 minutes" => does not match"#,
            r#"/spec/targetRef/apiVersion removed => "apiVersion" is a required property"#,
        ],
    );
}

#[test]
fn bad_local_services_are_refused() {
    let f = "localservice.yaml";
    refuses(
        f,
        &[
            r#"/spec/endpoints/0/address = "localhost" => does not match"#,
            r#"/spec/endpoints/0/address removed => "address" is a required property"#,
            r#"/spec/port = 0 => less than the minimum"#,
            r#"/spec/ports = [{"port": 81, "endpoints": [{"address": "localhost"}]}] => does not match"#,
            r#"/spec/endpoints/0/admin = "localhost:15020" => does not match"#,
            r#"/spec/ports = [{"port": 0, "endpoints": [{"address": "127.0.0.1:9101"}]}] => less than the minimum"#,
            r#"/spec/ports = [{"port": 65536, "endpoints": [{"address": "127.0.0.1:9101"}]}] => greater than the maximum"#,
        ],
    );
    admits(
        f,
        &[
            r#"/spec/endpoints/0/admin = "127.0.0.1:15020""#,
            r#"/spec/endpoints/0/address = "[::1]:9101""#,
        ],
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
        let objects: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for object in objects {
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
