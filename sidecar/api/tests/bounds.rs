//! DESIGN.md's Bounds table through `ProxyConfig::from_json`: every bounded field is admitted at
//! both ends of its range and refused just beyond them, with the field named.

use serde_json::{Value, json};
use weir_proxy_api::ProxyConfig;
use weir_proxy_api::bounds;

/// A config with every block set, well inside every range: the config fuzzer's seed of that name
/// (one fixture for both; it must stay valid for the fuzzer's seed to mean anything).
fn full() -> Value {
    serde_json::from_str(include_str!("../fuzz/corpus/proxy_config/full.json"))
        .expect("the seed is JSON")
}

fn with(pointer: &str, value: Value) -> Vec<u8> {
    let mut config = full();
    *config
        .pointer_mut(pointer)
        .unwrap_or_else(|| panic!("{pointer}")) = value;
    serde_json::to_vec(&config).unwrap()
}

fn admitted(pointer: &str, value: Value) {
    if let Err(e) = ProxyConfig::from_json(&with(pointer, value.clone())) {
        panic!("{pointer} = {value}: refused: {e}");
    }
}

fn refused(pointer: &str, value: Value, field: &str, message: &str) {
    match ProxyConfig::from_json(&with(pointer, value.clone())) {
        Ok(_) => panic!("{pointer} = {value}: admitted"),
        Err(e) => {
            assert_eq!(e.field, field, "{pointer} = {value}: {e}");
            assert!(
                e.message.contains(message),
                "{pointer} = {value}: {e} (expected {message:?})"
            );
        }
    }
}

/// (pointer, field as named in refusals, lowest, highest, below, above); `None` where the type
/// itself refuses the value beyond (a negative unsigned number).
type Case = (
    &'static str,
    &'static str,
    Value,
    Value,
    Option<Value>,
    Value,
);

fn integer_cases() -> Vec<Case> {
    let counts = |pointer: &'static str, field: &'static str| -> Case {
        (
            pointer,
            field,
            json!(1),
            json!(1_000_000),
            Some(json!(0)),
            json!(1_000_001),
        )
    };
    vec![
        (
            "/services/0/policy/retries/attempts",
            "services[0].policy.retries.attempts",
            json!(0),
            json!(10),
            None,
            json!(11),
        ),
        (
            "/services/0/policy/retries/budget/minPerSecond",
            "services[0].policy.retries.budget.minPerSecond",
            json!(0),
            json!(1_000_000),
            None,
            json!(2_147_483_647),
        ),
        counts(
            "/services/0/policy/circuitBreaker/failureThreshold",
            "services[0].policy.circuitBreaker.failureThreshold",
        ),
        counts(
            "/services/0/policy/circuitBreaker/successThreshold",
            "services[0].policy.circuitBreaker.successThreshold",
        ),
        counts(
            "/services/0/policy/outlierDetection/consecutive5xxErrors",
            "services[0].policy.outlierDetection.consecutive5xxErrors",
        ),
        counts(
            "/services/0/policy/outlierDetection/consecutiveGatewayErrors",
            "services[0].policy.outlierDetection.consecutiveGatewayErrors",
        ),
        (
            "/services/0/policy/outlierDetection/maxEjectionPercent",
            "services[0].policy.outlierDetection.maxEjectionPercent",
            json!(0),
            json!(100),
            None,
            json!(101),
        ),
        counts(
            "/inbound/bulkhead/maxConcurrent",
            "inbound.bulkhead.maxConcurrent",
        ),
        (
            "/inbound/bulkhead/maxQueued",
            "inbound.bulkhead.maxQueued",
            json!(0),
            json!(1_000_000),
            None,
            json!(1_000_001),
        ),
        counts("/inbound/rateLimit/burst", "inbound.rateLimit.burst"),
        (
            "/services/0/subsets/0/weight",
            "services[0].subsets[0].weight",
            json!(0),
            json!(1_000_000),
            None,
            json!(1_000_001),
        ),
    ]
}

#[test]
fn integers_are_bounded() {
    for (pointer, field, low, high, below, above) in integer_cases() {
        admitted(pointer, low);
        admitted(pointer, high);
        refused(pointer, above, field, "must be between");
        match below {
            Some(below) => refused(pointer, below, field, "must be between"),
            // The type refuses a negative number, naming the field all the same.
            None => refused(pointer, json!(-1), field, "-1"),
        }
    }
}

#[test]
fn numbers_are_bounded() {
    for (pointer, field, low, high, below, above) in [
        (
            "/services/0/policy/retries/backoff/multiplier",
            "services[0].policy.retries.backoff.multiplier",
            1.0,
            10.0,
            0.999,
            10.001,
        ),
        (
            "/services/0/policy/retries/budget/ratio",
            "services[0].policy.retries.budget.ratio",
            0.0,
            1.0,
            -0.001,
            1.001,
        ),
        (
            "/inbound/rateLimit/requestsPerSecond",
            "inbound.rateLimit.requestsPerSecond",
            1.0,
            1_000_000.0,
            1e-300,
            1_000_000.5,
        ),
    ] {
        admitted(pointer, json!(low));
        admitted(pointer, json!(high));
        refused(pointer, json!(below), field, "must be between");
        refused(pointer, json!(above), field, "must be between");
        refused(pointer, json!(1e308), field, "must be between");
    }
    // JSON has no NaN or infinity; a number too large for a float is refused by the parser.
    let text = String::from_utf8(with("/inbound/rateLimit/requestsPerSecond", json!(7))).unwrap();
    let text = text.replace("\"requestsPerSecond\":7", "\"requestsPerSecond\":1e999");
    let err = ProxyConfig::from_json(text.as_bytes()).unwrap_err();
    assert_eq!(err.field, "inbound.rateLimit.requestsPerSecond", "{err}");
}

#[test]
fn durations_are_between_a_millisecond_and_a_day() {
    let durations = [
        ("/inbound/timeouts/request", "inbound.timeouts.request"),
        ("/inbound/timeouts/idle", "inbound.timeouts.idle"),
        (
            "/inbound/bulkhead/queueTimeout",
            "inbound.bulkhead.queueTimeout",
        ),
        (
            "/services/0/policy/timeouts/connect",
            "services[0].policy.timeouts.connect",
        ),
        (
            "/services/0/policy/timeouts/idle",
            "services[0].policy.timeouts.idle",
        ),
        (
            "/services/0/policy/circuitBreaker/openDuration",
            "services[0].policy.circuitBreaker.openDuration",
        ),
        (
            "/services/0/policy/outlierDetection/interval",
            "services[0].policy.outlierDetection.interval",
        ),
        (
            "/services/0/policy/outlierDetection/baseEjectionTime",
            "services[0].policy.outlierDetection.baseEjectionTime",
        ),
    ];
    for (pointer, field) in durations {
        admitted(pointer, json!("1ms"));
        admitted(pointer, json!("24h"));
        admitted(pointer, json!("23h59m59.999s"));
        refused(pointer, json!("999us"), field, "between 1ms and 24h");
        refused(pointer, json!("0s"), field, "between 1ms and 24h");
        refused(pointer, json!("24h1ns"), field, "between 1ms and 24h");
        refused(pointer, json!("25h"), field, "between 1ms and 24h");
        // Beyond what any clock can add: refused by the parser, the field still named.
        refused(pointer, json!("5000000000000000h"), field, "too large");
    }
    // The request timeout bounds perTry from above; both ends of the range still work.
    let mut config = full();
    config["services"][0]["policy"]["timeouts"] =
        json!({"request": "24h", "perTry": "24h", "connect": "1ms", "idle": "1ms"});
    ProxyConfig::from_json(&serde_json::to_vec(&config).unwrap()).unwrap();
    config["services"][0]["policy"]["timeouts"] = json!({"request": "25h"});
    let err = ProxyConfig::from_json(&serde_json::to_vec(&config).unwrap()).unwrap_err();
    assert_eq!(err.field, "services[0].policy.timeouts.request");
    // Backoff: base and max are durations too.
    config = full();
    config["services"][0]["policy"]["retries"]["backoff"] =
        json!({"base": "1ms", "max": "24h", "multiplier": 10});
    ProxyConfig::from_json(&serde_json::to_vec(&config).unwrap()).unwrap();
    config["services"][0]["policy"]["retries"]["backoff"] = json!({"base": "1ms", "max": "48h"});
    let err = ProxyConfig::from_json(&serde_json::to_vec(&config).unwrap()).unwrap_err();
    assert_eq!(err.field, "services[0].policy.retries.backoff.max");
}

#[test]
fn the_fallback_body_is_at_most_64_kib() {
    let body = "x".repeat(bounds::FALLBACK_BODY_MAX_CHARS);
    admitted("/services/0/policy/fallback/body", json!(body));
    refused(
        "/services/0/policy/fallback/body",
        json!(format!("{body}x")),
        "services[0].policy.fallback.body",
        "at most 65536 characters",
    );
}

#[test]
fn a_config_is_at_most_16_mib_and_10000_services() {
    let service = |i: usize| json!({"name": format!("s{i}"), "namespace": "shop", "subsets": [{"name": "a", "weight": 1}]});
    let mut config =
        json!({"services": (0..bounds::MAX_SERVICES).map(service).collect::<Vec<_>>()});
    ProxyConfig::from_json(&serde_json::to_vec(&config).unwrap()).unwrap();
    config["services"]
        .as_array_mut()
        .unwrap()
        .push(service(bounds::MAX_SERVICES));
    let err = ProxyConfig::from_json(&serde_json::to_vec(&config).unwrap()).unwrap_err();
    assert_eq!(err.field, "services");
    assert!(err.message.contains("10001 services"), "{err}");

    // Refused on its length alone, before parsing (here it is not even JSON).
    let huge = vec![b' '; bounds::CONFIG_MAX_BYTES + 1];
    let err = ProxyConfig::from_json(&huge).unwrap_err();
    assert!(err.message.contains("more than the 16 MiB"), "{err}");
    // Exactly 16 MiB is read (and here refused as not JSON, not for its size).
    let err = ProxyConfig::from_json(&huge[1..]).unwrap_err();
    assert!(!err.message.contains("16 MiB"), "{err}");
}
