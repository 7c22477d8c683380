//! Each ResiliencePolicy block and the split, through a real sidecar to real upstreams, showing
//! the behaviour and its refusal.

mod common;

use bytes::Bytes;
use common::{Sidecar, config, refusals, status_and_reason, timed_refusal};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;
use weir_testkit::{Action, Upstream, get, metric, metric_with, send};

const HOST: &str = "upstream";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_turn_two_failures_into_a_success() {
    let up = Upstream::flaky(2, 500, "boom").await;
    let policy = r#"{"retries": {"attempts": 3, "retryOn": ["5xx"], "backoff": {"base": "10ms", "max": "20ms"}}}"#;
    let sidecar = Sidecar::with_policy(up.addr, policy).await;
    let (status, _, body) = get(sidecar.outbound, "/", HOST).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert_eq!(up.hits(), 3);
    let labels = [("service", "upstream")];
    assert_eq!(
        sidecar.metric("weir_retries_total", &labels).await,
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_idempotent_or_opted_in_requests_are_retried() {
    let up = Upstream::start(|_, _| Action::Respond(500, "boom")).await;
    let policy = r#"{"retries": {"attempts": 2, "retryOn": ["5xx"], "backoff": {"base": "5ms", "max": "10ms"}}}"#;
    let sidecar = Sidecar::with_policy(up.addr, policy).await;
    let (status, _, _) = send(sidecar.outbound, "POST", "/", HOST, &[], Bytes::from("x")).await;
    assert_eq!(status, 500);
    assert_eq!(up.hits(), 1, "a POST is not retried");
    let (status, _, _) = send(
        sidecar.outbound,
        "POST",
        "/",
        HOST,
        &[("x-weir-retry", "true")],
        Bytes::from("x"),
    )
    .await;
    assert_eq!(status, 500);
    assert_eq!(up.hits(), 4, "an opted-in POST is tried 1 + 2 times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_policy_failures_pass_through_untouched() {
    let up = Upstream::start(|_, _| Action::Respond(500, "boom")).await;
    let sidecar = Sidecar::start(&config(&[("default", 1, &[up.addr])], "{}"), up.addr).await;
    let (status, headers, body) = get(sidecar.outbound, "/", HOST).await;
    assert_eq!((status, body.as_str()), (500, "boom"));
    assert!(headers.get("x-weir-reason").is_none());
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_upstream_gets_504_within_per_try_times_attempts() {
    let up = Upstream::start(|_, _| Action::Hang).await;
    let policy = r#"{"timeouts": {"perTry": "200ms"},
        "retries": {"attempts": 2, "retryOn": ["gateway-error"], "backoff": {"base": "10ms", "max": "20ms"}}}"#;
    let sidecar = Sidecar::with_policy(up.addr, policy).await;
    let start = Instant::now();
    let (status, headers, body) = get(sidecar.outbound, "/", HOST).await;
    let elapsed = start.elapsed();
    assert_eq!(status, 504);
    assert_eq!(headers["x-weir-reason"], "timeout");
    assert!(body.contains("\"reason\":\"timeout\""), "{body}");
    assert!(elapsed >= Duration::from_millis(600), "{elapsed:?}");
    // Well under the 5 s an attempt without its per-try timeout would hang (a loaded machine
    // stretches the 600 ms).
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    assert_eq!(up.hits(), 3);
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"weir_timeouts_total{kind="per-try",service="upstream"}"#
        ),
        Some(3.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_bounds_the_whole_call() {
    let up = Upstream::start(|_, _| Action::Delay(Duration::from_secs(5), 200)).await;
    let policy = r#"{"timeouts": {"request": "300ms"}}"#;
    let sidecar = Sidecar::with_policy(up.addr, policy).await;
    let took = timed_refusal(sidecar.outbound, HOST, (504, "timeout")).await;
    assert!(took < Duration::from_secs(2));
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"weir_timeouts_total{kind="request",service="upstream"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_failures_open_the_breaker_and_it_closes_after_a_success() {
    let (when_set, otherwise) = (Action::Respond(200, "ok"), Action::Respond(500, "boom"));
    let (up, healthy) = Upstream::switched(false, when_set, otherwise).await;
    let policy = r#"{"circuitBreaker": {"failureThreshold": 5, "successThreshold": 1, "openDuration": "500ms"}}"#;
    let sidecar = Sidecar::with_policy(up.addr, policy).await;
    for _ in 0..5 {
        assert_eq!(get(sidecar.outbound, "/", HOST).await.0, 500);
    }
    assert_eq!(
        status_and_reason(sidecar.outbound, HOST).await,
        (503, "circuit-open".into())
    );
    assert_eq!(up.hits(), 5, "the refused call never reached the upstream");
    let labels = [("service", "upstream")];
    assert_eq!(
        sidecar.metric("weir_circuit_breaker_state", &labels).await,
        Some(1.0)
    );

    healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(550)).await;
    let labels = [("service", "upstream")];
    assert_eq!(
        sidecar.metric("weir_circuit_breaker_state", &labels).await,
        Some(2.0)
    );
    assert_eq!(get(sidecar.outbound, "/", HOST).await.0, 200);
    let labels = [("service", "upstream")];
    assert_eq!(
        sidecar.metric("weir_circuit_breaker_state", &labels).await,
        Some(0.0)
    );
    assert_eq!(get(sidecar.outbound, "/", HOST).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_endpoint_is_ejected_and_comes_back_after_its_ejection_time() {
    let good1 = Upstream::start(|_, _| Action::Respond(200, "ok")).await;
    let good2 = Upstream::start(|_, _| Action::Respond(200, "ok")).await;
    let bad = Upstream::start(|_, _| Action::Respond(500, "boom")).await;
    let policy = r#"{"outlierDetection": {"consecutive5xxErrors": 3, "interval": "10s",
        "baseEjectionTime": "1s", "maxEjectionPercent": 50},
        "loadBalancer": {"policy": "round-robin"}}"#;
    let endpoints = [good1.addr, bad.addr, good2.addr];
    let sidecar = Sidecar::start(&config(&[("default", 1, &endpoints)], policy), good1.addr).await;
    for _ in 0..60 {
        get(sidecar.outbound, "/", HOST).await;
    }
    assert_eq!(bad.hits(), 3, "ejected on its third consecutive 5xx");
    assert_eq!(
        good1.hits() + good2.hits(),
        57,
        "the others took its traffic"
    );
    let m = sidecar.metrics().await;
    let labels = [("service", "upstream")];
    let ejections = metric_with(&m, "weir_outlier_ejections_total", &labels);
    assert_eq!(ejections, Some(1.0));
    assert_eq!(
        metric_with(&m, "weir_endpoints_ejected", &labels),
        Some(1.0)
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..9 {
        get(sidecar.outbound, "/", HOST).await;
    }
    assert!(bad.hits() > 3, "it is back after the ejection time");
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(&m, r#"weir_outlier_ejections_total{service="upstream"}"#),
        Some(2.0),
        "and ejected again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_slow_calls_against_five_plus_five_get_ten_bulkhead_refusals() {
    let app = Upstream::start(|_, _| Action::Delay(Duration::from_millis(400), 200)).await;
    let cfg = r#"{"version": 1, "inbound": {"bulkhead": {"maxConcurrent": 5, "maxQueued": 5, "queueTimeout": "5s"}}}"#;
    let sidecar = Sidecar::start(cfg, app.addr).await;
    let calls: Vec<_> = (0..20)
        .map(|_| tokio::spawn(send(sidecar.inbound, "GET", "/", "app", &[], Bytes::new())))
        .collect();
    let mut ok = 0;
    let mut refused = 0;
    for call in calls {
        let (status, headers, _) = call.await.unwrap();
        match status {
            200 => ok += 1,
            503 => {
                assert_eq!(headers["x-weir-reason"], "bulkhead-full");
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, refused), (10, 10));
    assert_eq!(app.hits(), 10);
    let labels = [("service", "test")];
    assert_eq!(
        sidecar
            .metric("weir_bulkhead_rejected_total", &labels)
            .await,
        Some(10.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_per_second_limit_with_burst_five_admits_five_plus_ten_per_second() {
    let app = Upstream::start(|_, _| Action::Respond(200, "ok")).await;
    let cfg = r#"{"version": 1, "inbound": {"rateLimit": {"requestsPerSecond": 10, "burst": 5}}}"#;
    let sidecar = Sidecar::start(cfg, app.addr).await;
    let start = Instant::now();
    let window = Duration::from_secs(2);
    let (mut admitted, mut limited) = (0, 0);
    while start.elapsed() < window {
        let (status, headers, _) = get(sidecar.inbound, "/", "app").await;
        match status {
            200 => admitted += 1,
            429 => {
                assert_eq!(headers["x-weir-reason"], "rate-limited");
                let after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
                assert!(after >= 1);
                limited += 1;
            }
            other => panic!("unexpected status {other}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // 5 + 10 × 2 = 25, give or take the edges of the window.
    assert!((23..=27).contains(&admitted), "admitted {admitted}");
    assert!(limited > 50, "limited {limited}");
    assert_eq!(app.hits(), admitted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_ninety_ten_over_two_thousand_requests_land_within_three_percent() {
    let v1 = Upstream::start(|_, _| Action::Respond(200, "v1")).await;
    let v2 = Upstream::start(|_, _| Action::Respond(200, "v2")).await;
    let mut cfg: serde_json::Value = serde_json::from_str(&config(
        &[("v1", 90, &[v1.addr]), ("v2", 10, &[v2.addr])],
        "{}",
    ))
    .unwrap();
    cfg["services"][0]["rules"] =
        serde_json::json!([{"match": {"headers": {"x-canary": "true"}}, "subset": "v2"}]);
    let sidecar = Sidecar::start(&cfg.to_string(), v1.addr).await;
    for _ in 0..2000 {
        assert_eq!(get(sidecar.outbound, "/", HOST).await.0, 200);
    }
    let share = v2.hits() as f64 / 2000.0;
    assert!((0.07..=0.13).contains(&share), "v2 got {share}");
    let before = v2.hits();
    for _ in 0..20 {
        let (_, _, body) =
            weir_testkit::get_with(sidecar.outbound, "/", HOST, &[("x-canary", "true")]).await;
        assert_eq!(body, "v2");
    }
    assert_eq!(v2.hits(), before + 20, "the rule overrides the weights");
    let m = sidecar.metrics().await;
    let v1_count = metric(
        &m,
        r#"weir_requests_total{code="200",direction="outbound",service="upstream",subset="v1"}"#,
    );
    assert_eq!(v1_count, Some(v1.hits() as f64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_answers_instead_of_a_failure() {
    let up = Upstream::start(|_, _| Action::Respond(500, "boom")).await;
    let policy = r#"{"fallback": {"status": 200, "body": "{\"items\":[]}", "contentType": "application/json"}}"#;
    let sidecar = Sidecar::with_policy(up.addr, policy).await;
    let (status, headers, body) = get(sidecar.outbound, "/", HOST).await;
    assert_eq!((status, body.as_str()), (200, r#"{"items":[]}"#));
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-weir-fallback"], "upstream-error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_of_the_target_sidecar_are_never_retried_and_pass_unchanged() {
    let up = Upstream::start(|_, _| Action::Respond(503, "refused:bulkhead-full")).await;
    let policy = r#"{"retries": {"attempts": 3, "retryOn": ["5xx", "gateway-error"], "backoff": {"base": "5ms", "max": "10ms"}},
        "fallback": {"status": 200, "body": "fallback"}}"#;
    let sidecar = Sidecar::with_policy(up.addr, policy).await;
    assert_eq!(
        status_and_reason(sidecar.outbound, HOST).await,
        (503, "bulkhead-full".into())
    );
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_retries() {
    let up = Upstream::start(|_, _| Action::Respond(500, "boom")).await;
    // No ratio allowance and a floor of 1 per second: tower's budget holds 10 s × 1 in reserve.
    let policy = r#"{"retries": {"attempts": 3, "retryOn": ["5xx"], "backoff": {"base": "1ms", "max": "2ms"},
        "budget": {"ratio": 0.0, "minPerSecond": 1}}}"#;
    let sidecar = Sidecar::with_policy(up.addr, policy).await;
    let refused = (503, "retry-budget-exhausted");
    let (exhausted, others) = refusals(sidecar.outbound, HOST, 20, refused).await;
    assert!(others.iter().all(|s| *s == 500), "{others:?}");
    assert!(exhausted >= 15, "exhausted {exhausted}");
    assert!(up.hits() <= 20 + 12, "hits {}", up.hits());
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"weir_retry_budget_exhausted_total{service="upstream"}"#
        ),
        Some(exhausted as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subset_without_endpoints_has_no_healthy_endpoints() {
    let up = Upstream::start(|_, _| Action::Respond(200, "ok")).await;
    let sidecar = Sidecar::start(&config(&[("default", 1, &[])], "{}"), up.addr).await;
    let (status, headers, body) = get(sidecar.outbound, "/", HOST).await;
    assert_eq!(status, 503);
    assert_eq!(headers["x-weir-reason"], "no-healthy-endpoints");
    assert!(body.contains("subset default"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_spreads_sequential_calls_over_idle_endpoints() {
    let a = Upstream::start(|_, _| Action::Respond(200, "a")).await;
    let b = Upstream::start(|_, _| Action::Respond(200, "b")).await;
    let sidecar = Sidecar::start(&config(&[("default", 1, &[a.addr, b.addr])], "{}"), a.addr).await;
    for _ in 0..200 {
        assert_eq!(get(sidecar.outbound, "/", HOST).await.0, 200);
    }
    // Idle endpoints tie, and a tie is broken at random: neither may starve.
    assert!((60..=140).contains(&a.hits()), "a got {} of 200", a.hits());
    let in_flight: u32 = sidecar
        .store()
        .table()
        .services()
        .flat_map(|r| r.endpoints.iter())
        .map(|e| e.in_flight())
        .sum();
    assert_eq!(in_flight, 0, "no request is left counted in flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_canary_gives_its_share_to_the_stable_subset() {
    let stable = Upstream::start(|_, _| Action::Respond(200, "v1")).await;
    let canary = Upstream::start(|_, _| Action::Respond(500, "boom")).await;
    let policy = r#"{"outlierDetection": {"consecutive5xxErrors": 2, "baseEjectionTime": "30s", "maxEjectionPercent": 100}}"#;
    let sidecar = Sidecar::start(
        &config(
            &[("v1", 50, &[stable.addr]), ("v2", 50, &[canary.addr])],
            policy,
        ),
        stable.addr,
    )
    .await;
    // Until the canary is ejected some calls fail; then every call goes to v1.
    for _ in 0..40 {
        if canary.hits() >= 2 {
            break;
        }
        get(sidecar.outbound, "/", HOST).await;
    }
    assert_eq!(canary.hits(), 2, "ejected on its second consecutive 5xx");
    for _ in 0..50 {
        let (status, _, body) = get(sidecar.outbound, "/", HOST).await;
        assert_eq!((status, body.as_str()), (200, "v1"));
    }
    assert_eq!(canary.hits(), 2);
    let m = sidecar.metrics().await;
    // Counted under the subset that served them.
    assert!(
        metric(
            &m,
            r#"weir_requests_total{code="200",direction="outbound",service="upstream",subset="v1"}"#
        )
        .is_some_and(|n| n >= 50.0)
    );
}
