//! The CRD schemas and the sidecar's validation enforce one Bounds table (DESIGN.md "Bounds",
//! `weir_proxy_api::bounds`): every bounded field's `minimum`/`maximum` (or duration rule) in
//! the generated schema is the table's, and the API server (as `admit` checks it) admits each
//! field at both ends of its range and refuses it just beyond.

mod common;

use common::{KINDS, admit, example, schema, walk, with};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use weir_crds::schema::duration_rule;
use weir_proxy_api::bounds::{self, Bound};

/// A number field: kind, schema path, JSON pointer in the DESIGN example, the range.
struct Number {
    kind: &'static str,
    path: &'static str,
    pointer: &'static str,
    low: f64,
    high: f64,
    /// An integer field: beyond means ±1; a number field: ±0.001.
    integer: bool,
}

fn int(kind: &'static str, path: &'static str, pointer: &'static str, b: Bound<u32>) -> Number {
    Number {
        kind,
        path,
        pointer,
        low: f64::from(b.min),
        high: f64::from(b.max),
        integer: true,
    }
}

fn numbers() -> Vec<Number> {
    let rp = "ResiliencePolicy";
    vec![
        int(
            "TrafficSplit",
            ".spec.backends[].weight",
            "/spec/backends/1/weight",
            bounds::WEIGHT,
        ),
        int(
            "TrafficSplit",
            ".spec.analysis.steps[]",
            "/spec/analysis/steps/3",
            bounds::ANALYSIS_STEP,
        ),
        int(
            "TrafficSplit",
            ".spec.analysis.minRequests",
            "/spec/analysis/minRequests",
            bounds::ANALYSIS_COUNT,
        ),
        int(
            "TrafficSplit",
            ".spec.analysis.maxFailures",
            "/spec/analysis/maxFailures",
            bounds::ANALYSIS_COUNT,
        ),
        Number {
            kind: "TrafficSplit",
            path: ".spec.analysis.successRate",
            pointer: "/spec/analysis/successRate",
            low: bounds::RATIO.min,
            high: bounds::RATIO.max,
            integer: false,
        },
        int(
            rp,
            ".spec.retries.attempts",
            "/spec/retries/attempts",
            bounds::RETRY_ATTEMPTS,
        ),
        Number {
            kind: rp,
            path: ".spec.retries.backoff.multiplier",
            pointer: "/spec/retries/backoff/multiplier",
            low: bounds::BACKOFF_MULTIPLIER.min,
            high: bounds::BACKOFF_MULTIPLIER.max,
            integer: false,
        },
        Number {
            kind: rp,
            path: ".spec.retries.budget.ratio",
            pointer: "/spec/retries/budget/ratio",
            low: bounds::RATIO.min,
            high: bounds::RATIO.max,
            integer: false,
        },
        int(
            rp,
            ".spec.retries.budget.minPerSecond",
            "/spec/retries/budget/minPerSecond",
            bounds::MIN_PER_SECOND,
        ),
        int(
            rp,
            ".spec.circuitBreaker.failureThreshold",
            "/spec/circuitBreaker/failureThreshold",
            bounds::COUNT,
        ),
        Number {
            kind: rp,
            path: ".spec.circuitBreaker.failureRate",
            pointer: "/spec/circuitBreaker/failureRate",
            low: bounds::RATIO.min,
            high: bounds::RATIO.max,
            integer: false,
        },
        int(
            rp,
            ".spec.circuitBreaker.minRequests",
            "/spec/circuitBreaker/minRequests",
            bounds::COUNT,
        ),
        Number {
            kind: rp,
            path: ".spec.faults.delay.percent",
            pointer: "/spec/faults/delay/percent",
            low: bounds::FAULT_PERCENT.min,
            high: bounds::FAULT_PERCENT.max,
            integer: false,
        },
        Number {
            kind: rp,
            path: ".spec.faults.abort.percent",
            pointer: "/spec/faults/abort/percent",
            low: bounds::FAULT_PERCENT.min,
            high: bounds::FAULT_PERCENT.max,
            integer: false,
        },
        int(
            rp,
            ".spec.faults.abort.status",
            "/spec/faults/abort/status",
            bounds::FAULT_ABORT_STATUS,
        ),
        int(
            rp,
            ".spec.circuitBreaker.successThreshold",
            "/spec/circuitBreaker/successThreshold",
            bounds::COUNT,
        ),
        int(
            rp,
            ".spec.outlierDetection.consecutive5xxErrors",
            "/spec/outlierDetection/consecutive5xxErrors",
            bounds::COUNT,
        ),
        int(
            rp,
            ".spec.outlierDetection.consecutiveGatewayErrors",
            "/spec/outlierDetection/consecutiveGatewayErrors",
            bounds::COUNT,
        ),
        int(
            rp,
            ".spec.outlierDetection.maxEjectionPercent",
            "/spec/outlierDetection/maxEjectionPercent",
            bounds::PERCENT,
        ),
        int(
            rp,
            ".spec.bulkhead.maxConcurrent",
            "/spec/bulkhead/maxConcurrent",
            bounds::MAX_CONCURRENT,
        ),
        int(
            rp,
            ".spec.bulkhead.maxQueued",
            "/spec/bulkhead/maxQueued",
            bounds::MAX_QUEUED,
        ),
        Number {
            kind: rp,
            path: ".spec.rateLimit.requestsPerSecond",
            pointer: "/spec/rateLimit/requestsPerSecond",
            low: bounds::REQUESTS_PER_SECOND.min,
            high: bounds::REQUESTS_PER_SECOND.max,
            // An integer in the resource, a number in a ProxyConfig; the same range.
            integer: true,
        },
        int(
            rp,
            ".spec.rateLimit.burst",
            "/spec/rateLimit/burst",
            bounds::BURST,
        ),
    ]
}

/// Numbers with a range that is not in the Bounds table: protocol facts, not tunables.
const NOT_IN_THE_TABLE: [(&str, &str); 2] = [
    ("TrafficSplit", ".spec.port"),
    ("ResiliencePolicy", ".spec.fallback.status"),
];

/// Every duration of a policy, as a schema path and a pointer in the DESIGN example.
const DURATIONS: [(&str, &str); 11] = [
    (".spec.timeouts.request", "/spec/timeouts/request"),
    (".spec.timeouts.perTry", "/spec/timeouts/perTry"),
    (".spec.timeouts.connect", "/spec/timeouts/connect"),
    (".spec.timeouts.idle", "/spec/timeouts/idle"),
    (".spec.retries.backoff.base", "/spec/retries/backoff/base"),
    (".spec.retries.backoff.max", "/spec/retries/backoff/max"),
    (
        ".spec.circuitBreaker.openDuration",
        "/spec/circuitBreaker/openDuration",
    ),
    (
        ".spec.outlierDetection.interval",
        "/spec/outlierDetection/interval",
    ),
    (
        ".spec.outlierDetection.baseEjectionTime",
        "/spec/outlierDetection/baseEjectionTime",
    ),
    (".spec.bulkhead.queueTimeout", "/spec/bulkhead/queueTimeout"),
    (".spec.faults.delay.duration", "/spec/faults/delay/duration"),
];

fn node(kind: &str, path: &str) -> Value {
    let mut found = None;
    walk(&schema(kind), "", &mut |p, n| {
        if p == path {
            found = Some(n.clone());
        }
    });
    found.unwrap_or_else(|| panic!("{kind} {path} is not in the schema"))
}

#[test]
fn the_schemas_ranges_are_the_bounds_table() {
    for n in numbers() {
        let schema = node(n.kind, n.path);
        assert_eq!(
            (schema["minimum"].as_f64(), schema["maximum"].as_f64()),
            (Some(n.low), Some(n.high)),
            "{} {}",
            n.kind,
            n.path
        );
    }
    // And nothing of the two policy kinds has a range the table does not give.
    let listed: BTreeSet<(&str, String)> = numbers()
        .iter()
        .map(|n| (n.kind, n.path.to_owned()))
        .chain(NOT_IN_THE_TABLE.iter().map(|(k, p)| (*k, (*p).to_owned())))
        .collect();
    for kind in ["TrafficSplit", "ResiliencePolicy"] {
        walk(&schema(kind), "", &mut |path, n| {
            if path.starts_with(".spec")
                && (n.get("minimum").is_some() || n.get("maximum").is_some())
            {
                assert!(
                    listed.contains(&(kind, path.to_owned())),
                    "{kind} {path} has a range that is not the Bounds table's"
                );
            }
        });
    }
    let body = node("ResiliencePolicy", ".spec.fallback.body");
    assert_eq!(
        body["maxLength"].as_u64(),
        Some(bounds::FALLBACK_BODY_MAX_CHARS as u64)
    );
}

#[test]
fn every_policy_duration_has_the_tables_rule() {
    let rule = duration_rule(Some(bounds::DURATION.min), bounds::DURATION.max);
    assert_eq!(
        rule,
        "duration(self) >= duration('1ms') && duration(self) <= duration('24h')"
    );
    for (path, _) in DURATIONS {
        let schema = node("ResiliencePolicy", path);
        let rules: Vec<&str> = schema["x-kubernetes-validations"]
            .as_array()
            .unwrap_or_else(|| panic!("{path} has no rule"))
            .iter()
            .filter_map(|r| r["rule"].as_str())
            .collect();
        assert!(rules.contains(&rule.as_str()), "{path}: {rules:?}");
    }
    // Every duration of every kind has an upper bound (the pattern marks a duration).
    for kind in KINDS {
        walk(&schema(kind), "", &mut |path, n| {
            if n.get("pattern").and_then(Value::as_str) == Some(weir_crds::schema::DURATION_PATTERN)
                && !path.ends_with("metrics[].target")
            {
                let bounded = n["x-kubernetes-validations"]
                    .as_array()
                    .is_some_and(|rules| {
                        rules.iter().any(|r| {
                            r["rule"]
                                .as_str()
                                .is_some_and(|r| r.contains("<= duration('24h')"))
                        })
                    });
                assert!(bounded, "{kind} {path} has no upper bound");
            }
        });
    }
}

fn file(kind: &str) -> &'static str {
    match kind {
        "TrafficSplit" => "trafficsplit.yaml",
        "ResiliencePolicy" => "resiliencepolicy.yaml",
        _ => unreachable!(),
    }
}

fn admitted(kind: &str, pointer: &str, value: Value) {
    let problems = admit(&with(example(file(kind)), pointer, value.clone()));
    assert!(
        problems.is_empty(),
        "{kind} {pointer} = {value}: {problems:#?}"
    );
}

fn refused(kind: &str, pointer: &str, value: Value, expected: &str) {
    let problems = admit(&with(example(file(kind)), pointer, value.clone()));
    assert!(
        problems.iter().any(|p| p.contains(expected)),
        "{kind} {pointer} = {value}: expected {expected:?}, got {problems:#?}"
    );
}

fn number(n: &Number, value: f64) -> Value {
    if n.integer {
        json!(value as i64)
    } else {
        json!(value)
    }
}

#[test]
fn numbers_are_admitted_at_their_bounds_and_refused_beyond() {
    // Steps must also increase: tested at their bounds with the steps' own test.
    for n in numbers().into_iter().filter(|n| !n.path.contains("steps")) {
        let step = if n.integer { 1.0 } else { 0.001 };
        admitted(n.kind, n.pointer, number(&n, n.low));
        admitted(n.kind, n.pointer, number(&n, n.high));
        refused(
            n.kind,
            n.pointer,
            number(&n, n.low - step),
            "less than the minimum",
        );
        refused(
            n.kind,
            n.pointer,
            number(&n, n.high + step),
            "greater than the maximum",
        );
    }
    // The value: the CRD refuses what the sidecar refuses.
    refused(
        "ResiliencePolicy",
        "/spec/retries/budget/minPerSecond",
        json!(2_147_483_647),
        "greater than the maximum",
    );
}

#[test]
fn durations_are_admitted_at_their_bounds_and_refused_beyond() {
    let rp = "ResiliencePolicy";
    // perTry is bounded by request, backoff.base by backoff.max: a neighbour at the other end
    // of the range leaves only the bound under test.
    let at = |pointer: &str, value: &str| {
        let mut object = example(file(rp));
        object["spec"]["timeouts"]["request"] = json!("24h");
        object["spec"]["timeouts"]["perTry"] = json!("1ms");
        object["spec"]["retries"]["backoff"]["max"] = json!("24h");
        object["spec"]["retries"]["backoff"]["base"] = json!("1ms");
        with(object, pointer, json!(value))
    };
    for (path, pointer) in DURATIONS {
        for ok in ["1ms", "24h", "0.001s", "1440m"] {
            let problems = admit(&at(pointer, ok));
            assert!(problems.is_empty(), "{path} = {ok}: {problems:#?}");
        }
        for bad in ["999us", "0s", "24h0m0.001s", "25h", "5000000000000000h"] {
            let problems = admit(&at(pointer, bad));
            assert!(
                problems
                    .iter()
                    .any(|p| p.contains("must be between 1ms and 24h")),
                "{path} = {bad}: {problems:#?}"
            );
        }
    }
}

#[test]
fn the_fallback_body_is_at_most_64_ki_characters() {
    let body = "x".repeat(bounds::FALLBACK_BODY_MAX_CHARS);
    admitted("ResiliencePolicy", "/spec/fallback/body", json!(body));
    refused(
        "ResiliencePolicy",
        "/spec/fallback/body",
        json!(format!("{body}x")),
        "longer than",
    );
}

/// A duration field of `kind` (schema `path`, `pointer` in the example) whose schema carries
/// `rule` (when given): each of `oks` is admitted, each of `bads` refused with `message`.
fn duration_bounded(
    (kind, path, pointer): (&str, &str, &str),
    rule: Option<&str>,
    oks: &[&str],
    bads: &[&str],
    message: &str,
) {
    if let Some(rule) = rule {
        let field = node(kind, path);
        assert!(
            field["x-kubernetes-validations"]
                .as_array()
                .is_some_and(|rules| rules.iter().any(|r| r["rule"] == rule)),
            "{kind} {path} lacks {rule}: {field:#}"
        );
    }
    for ok in oks {
        admitted(kind, pointer, json!(ok));
    }
    for bad in bads {
        refused(kind, pointer, json!(bad), message);
    }
}

/// Within 1s and 24h: the bounds, other spellings of them, and just beyond.
const SECOND_TO_DAY: [&[&str]; 2] = [
    &["1s", "24h", "1000ms", "1440m"],
    &["999ms", "0s", "24h0m1s", "5000000000000000h"],
];

#[test]
fn analysis_durations_have_the_tables_ranges() {
    let ts = "TrafficSplit";
    let rule = duration_rule(
        Some(bounds::ANALYSIS_INTERVAL.min),
        bounds::ANALYSIS_INTERVAL.max,
    );
    assert_eq!(
        rule,
        "duration(self) >= duration('1s') && duration(self) <= duration('24h')"
    );
    let [oks, bads] = SECOND_TO_DAY;
    let interval = (ts, ".spec.analysis.interval", "/spec/analysis/interval");
    duration_bounded(
        interval,
        Some(&rule),
        oks,
        bads,
        "must be between 1s and 24h",
    );
    let latency = (ts, ".spec.analysis.latencyP99", "/spec/analysis/latencyP99");
    let (oks, bads) = (["1ms", "24h"], ["999us", "25h"]);
    duration_bounded(latency, None, &oks, &bads, "must be between 1ms and 24h");
}

#[test]
fn the_breaker_window_is_between_1s_and_24h() {
    let rule = duration_rule(Some(bounds::BREAKER_WINDOW.min), bounds::BREAKER_WINDOW.max);
    let window = (
        "ResiliencePolicy",
        ".spec.circuitBreaker.window",
        "/spec/circuitBreaker/window",
    );
    let [oks, bads] = SECOND_TO_DAY;
    duration_bounded(window, Some(&rule), oks, bads, "must be between 1s and 24h");
}

#[test]
fn analysis_steps_are_strictly_increasing_and_the_canary_is_a_backend() {
    let ts = "TrafficSplit";
    admitted(ts, "/spec/analysis/steps", json!([100]));
    admitted(
        ts,
        "/spec/analysis/steps",
        json!((1..=100).collect::<Vec<_>>()),
    );
    refused(
        ts,
        "/spec/analysis/steps",
        json!([10, 50, 25]),
        "strictly increasing",
    );
    refused(ts, "/spec/analysis/steps", json!([10, 10, 50]), "Duplicate");
    refused(ts, "/spec/analysis/steps", json!([]), "");
    refused(
        ts,
        "/spec/analysis/steps",
        json!([0, 50]),
        "less than the minimum",
    );
    refused(
        ts,
        "/spec/analysis/steps",
        json!([50, 101]),
        "greater than the maximum",
    );
    admitted(ts, "/spec/analysis/steps", json!([1, 100]));
    refused(
        ts,
        "/spec/analysis/canary",
        json!("v3"),
        "analysis.canary must name one of the backends",
    );
    // Optional parts may be left out.
    let mut minimal = example(file(ts));
    minimal["spec"]["analysis"] = json!({"canary": "v2", "steps": [50, 100], "interval": "1s"});
    let problems = admit(&minimal);
    assert!(problems.is_empty(), "{problems:#?}");
}
