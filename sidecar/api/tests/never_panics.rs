//! Whatever bytes a config file or a control plane's answer holds, reading it either yields a
//! config that passed validation or an error naming why: never a panic. (The fuzz targets in
//! `sidecar/api/fuzz` explore the same two functions for longer; these run with every test.)
//!
//! A config that passes validation must also be inside every bound, so the arbitrary configs that
//! do pass are checked against the Bounds table here as well.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use weir_proxy_api::protocol::read_answer;
use weir_proxy_api::{ProxyConfig, bounds};

/// Any JSON value, a few levels deep, with the numbers that hurt (huge, tiny, negative, fractional).
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        prop_oneof![
            Just("5000000000000000h".to_owned()),
            Just("1ms".to_owned()),
            Just("24h".to_owned()),
            "[0-9]{1,22}(ns|ms|s|m|h)",
            "\\PC{0,12}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((field_name(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Mostly the names a config uses, so that the arbitrary values land in real fields.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "version",
            "inbound",
            "services",
            "limits",
            "name",
            "namespace",
            "subsets",
            "weight",
            "endpoints",
            "policy",
            "timeouts",
            "request",
            "perTry",
            "connect",
            "idle",
            "retries",
            "attempts",
            "backoff",
            "budget",
            "ratio",
            "minPerSecond",
            "multiplier",
            "base",
            "max",
            "circuitBreaker",
            "failureThreshold",
            "openDuration",
            "outlierDetection",
            "consecutive5xxErrors",
            "interval",
            "baseEjectionTime",
            "maxEjectionPercent",
            "rateLimit",
            "requestsPerSecond",
            "burst",
            "bulkhead",
            "maxConcurrent",
            "maxQueued",
            "queueTimeout",
            "fallback",
            "status",
            "body",
            "resources",
            "content",
            "service",
            "notFound",
        ])
        .prop_map(str::to_owned),
        "[a-zA-Z]{1,8}",
    ]
}

/// A valid config with one field replaced by an arbitrary value.
fn mutated_config() -> impl Strategy<Value = Value> {
    let pointers = vec![
        "/inbound/rateLimit/requestsPerSecond",
        "/inbound/rateLimit/burst",
        "/inbound/bulkhead/maxConcurrent",
        "/inbound/bulkhead/maxQueued",
        "/inbound/bulkhead/queueTimeout",
        "/inbound/timeouts/request",
        "/services/0/subsets/0/weight",
        "/services/0/policy/timeouts/request",
        "/services/0/policy/timeouts/idle",
        "/services/0/policy/retries/attempts",
        "/services/0/policy/retries/budget/minPerSecond",
        "/services/0/policy/retries/budget/ratio",
        "/services/0/policy/retries/backoff/multiplier",
        "/services/0/policy/circuitBreaker/failureThreshold",
        "/services/0/policy/circuitBreaker/openDuration",
        "/services/0/policy/outlierDetection/baseEjectionTime",
        "/services/0/policy/outlierDetection/maxEjectionPercent",
        "/services/1/ports/0/port",
        "/services/1/ports/1/name",
        "/services/1/ports/1/addresses/0",
        "/services/1/ports/1/subsets/0/weight",
        "/services/1/ports/1/rules/0/subset",
    ];
    (prop::sample::select(pointers), any_json()).prop_map(|(pointer, value)| {
        let mut config = json!({
          "inbound": {"rateLimit": {"requestsPerSecond": 100, "burst": 20},
                      "bulkhead": {"maxConcurrent": 10, "maxQueued": 100, "queueTimeout": "1s"},
                      "timeouts": {"request": "10s"}},
          "services": [{"name": "p", "namespace": "s", "subsets": [{"name": "a", "weight": 1}],
            "policy": {"timeouts": {"request": "10s", "idle": "60s"},
                       "retries": {"attempts": 3, "backoff": {"multiplier": 2},
                                   "budget": {"ratio": 0.2, "minPerSecond": 10}},
                       "circuitBreaker": {"failureThreshold": 5, "openDuration": "60s"},
                       "outlierDetection": {"baseEjectionTime": "30s", "maxEjectionPercent": 50}}},
            {"name": "q", "namespace": "s", "ports": [
              {"port": 80, "name": "http", "subsets": [{"name": "a", "weight": 1}]},
              {"port": 81, "name": "admin", "addresses": ["10.96.0.1:81"],
               "subsets": [{"name": "a", "weight": 1}, {"name": "b", "weight": 0}],
               "rules": [{"match": {"pathPrefix": "/b"}, "subset": "b"}]}]}]
        });
        *config.pointer_mut(pointer).expect("the pointer exists") = value;
        config
    })
}

/// What validation promises: an accepted config is inside the Bounds table.
fn inside_the_bounds(config: &ProxyConfig) {
    let d =
        |d: Option<weir_proxy_api::Duration>| d.is_none_or(|d| bounds::DURATION.contains(d.get()));
    if let Some(rl) = &config.inbound.rate_limit {
        assert!(bounds::REQUESTS_PER_SECOND.contains_f64(rl.requests_per_second));
        assert!(bounds::BURST.contains(rl.burst));
    }
    if let Some(b) = &config.inbound.bulkhead {
        assert!(bounds::MAX_CONCURRENT.contains(b.max_concurrent));
        assert!(bounds::MAX_QUEUED.contains(b.max_queued));
        assert!(d(Some(b.queue_timeout)));
    }
    for service in &config.services {
        for route in service.routes() {
            assert!(
                route
                    .subsets
                    .iter()
                    .all(|s| bounds::WEIGHT.contains(s.weight))
            );
            assert_ne!(route.port, Some(0));
            assert!(!route.subsets.is_empty());
        }
        let p = &service.policy;
        if let Some(t) = &p.timeouts {
            assert!(d(t.request) && d(t.per_try) && d(t.connect) && d(t.idle));
        }
        if let Some(r) = &p.retries {
            assert!(bounds::RETRY_ATTEMPTS.contains(r.attempts));
            assert!(bounds::BACKOFF_MULTIPLIER.contains_f64(r.backoff.multiplier));
            if let Some(b) = &r.budget {
                assert!(bounds::RATIO.contains_f64(b.ratio));
                assert!(bounds::MIN_PER_SECOND.contains(b.min_per_second));
            }
        }
        if let Some(cb) = &p.circuit_breaker {
            assert!(cb.failure_threshold.is_some() || cb.failure_rate.is_some());
            assert!(
                cb.failure_threshold
                    .is_none_or(|n| bounds::COUNT.contains(n))
            );
            assert!(
                cb.failure_rate
                    .is_none_or(|r| bounds::RATIO.contains_f64(r))
            );
            assert!(bounds::COUNT.contains(cb.min_requests));
            assert!(bounds::BREAKER_WINDOW.contains(cb.window.get()));
            assert!(d(Some(cb.open_duration)));
        }
        if let Some(f) = &p.faults {
            if let Some(delay) = &f.delay {
                assert!(bounds::FAULT_PERCENT.contains_f64(delay.percent));
                assert!(d(Some(delay.duration)));
            }
            if let Some(abort) = &f.abort {
                assert!(bounds::FAULT_PERCENT.contains_f64(abort.percent));
                assert!(bounds::FAULT_ABORT_STATUS.contains(u32::from(abort.status)));
            }
        }
        if let Some(od) = &p.outlier_detection {
            assert!(bounds::PERCENT.contains(od.max_ejection_percent));
            assert!(d(Some(od.base_ejection_time)) && d(Some(od.interval)));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(config) = ProxyConfig::from_json(&bytes) {
            inside_the_bounds(&config);
        }
        let _ = read_answer(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(value in any_json()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        if let Ok(config) = ProxyConfig::from_json(&bytes) {
            inside_the_bounds(&config);
        }
        let answer = serde_json::to_vec(&json!({"resources": [
            {"name": "inbound", "version": 1, "content": {"inbound": value.clone()}},
            {"name": "service/s/p", "version": 1, "content": {"service": value}}
        ]})).unwrap();
        let _ = read_answer(&answer);
    }

    #[test]
    fn a_mutated_valid_config_is_admitted_inside_the_bounds_or_refused_by_name(config in mutated_config()) {
        let bytes = serde_json::to_vec(&config).unwrap();
        match ProxyConfig::from_json(&bytes) {
            Ok(config) => inside_the_bounds(&config),
            Err(e) => prop_assert!(!e.field.is_empty(), "a refusal without a field: {}", e),
        }
        let answer = serde_json::to_vec(&json!({"resources": [
            {"name": "service/s/p", "version": 1, "content": {"service": config["services"][0]}},
            {"name": "inbound", "version": 1, "content": {"inbound": config["inbound"]}}
        ]})).unwrap();
        for update in read_answer(&answer).unwrap() {
            if let Err(e) = update.content {
                prop_assert!(e.field.starts_with("resources["), "{}", e);
            }
        }
    }
}
