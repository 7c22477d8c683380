//! Overload signals through a real sidecar to real servers on loopback: an application's own
//! 429 (avoided for its `Retry-After`, retried no earlier with `retryOn: ["429"]`) and the
//! failure-rate circuit breaker. Paused tokio time.

mod common;

use common::{Sidecar, config, refusals, status_and_reason, timed_ok};
use std::time::Duration;
use tokio::time::Instant;
use weir_testkit::get;
use weir_testkit::{Answer, Scripted};

const HOST: &str = "upstream";

fn served_by(answer: &(u16, http::HeaderMap, String)) -> String {
    answer.2.clone()
}

#[tokio::test(start_paused = true)]
async fn an_apps_429_steers_traffic_away_for_its_retry_after_without_ejecting() {
    let a = Scripted::sequence(
        vec![Answer::status(429).header("retry-after", "5").chunk("a")],
        Answer::status(200).chunk("a"),
    )
    .await;
    let b = Scripted::start(|_, _| Answer::status(200).chunk("b")).await;
    let policy = r#"{"loadBalancer": {"policy": "round-robin"},
        "outlierDetection": {"consecutive5xxErrors": 1, "consecutiveGatewayErrors": 1, "maxEjectionPercent": 100}}"#;
    let sidecar = Sidecar::start(
        &config(&[("default", 1, &[a.addr, b.addr])], policy),
        a.addr,
    )
    .await;
    // Round-robin reaches `a` within two calls; its 429 reaches the caller as is.
    let mut overloaded_at = None;
    for _ in 0..2 {
        let answer = get(sidecar.outbound, "/", HOST).await;
        if answer.0 == 429 {
            assert!(answer.1.get("x-weir-reason").is_none());
            overloaded_at = Some(Instant::now());
        }
    }
    let overloaded_at = overloaded_at.expect("a answered 429");
    // For the next 4.9 s, round-robin or not, everything goes to `b`.
    for _ in 0..49 {
        assert_eq!(served_by(&get(sidecar.outbound, "/", HOST).await), "b");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(overloaded_at.elapsed() < Duration::from_secs(5));
    assert_eq!(a.hits(), 1);
    tokio::time::sleep_until(overloaded_at + Duration::from_secs(5)).await;
    let mut back = 0;
    for _ in 0..10 {
        back += usize::from(served_by(&get(sidecar.outbound, "/", HOST).await) == "a");
    }
    assert_eq!(back, 5, "round-robin shares again once the wait is over");
    let m = sidecar.metrics().await;
    assert!(
        !m.contains("weir_outlier_ejections_total{"),
        "not an ejection:\n{m}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_avoided_with_nothing_else_to_serve_is_used_anyway() {
    let only = Scripted::sequence(
        vec![Answer::status(429).header("retry-after", "30")],
        Answer::status(200).chunk("ok"),
    )
    .await;
    let sidecar = Sidecar::start(&config(&[("default", 1, &[only.addr])], "{}"), only.addr).await;
    assert_eq!(get(sidecar.outbound, "/", HOST).await.0, 429);
    assert_eq!(get(sidecar.outbound, "/", HOST).await.0, 200);
}

#[tokio::test(start_paused = true)]
async fn retry_on_429_waits_for_retry_after_capped_by_the_longest_backoff() {
    let up = Scripted::start(|parts, n| {
        let asked = parts.uri.path().trim_start_matches('/').to_owned();
        match n % 2 {
            0 => Answer::status(429).header("retry-after", asked),
            _ => Answer::status(200).chunk("ok"),
        }
    })
    .await;
    let policy = r#"{"retries": {"attempts": 2, "retryOn": ["429"],
        "backoff": {"base": "10ms", "max": "3s"}}}"#;
    let sidecar = Sidecar::with_policy(up.addr, policy).await;
    let waited = timed_ok(sidecar.outbound, "/2", HOST).await;
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_millis(2100),
        "{waited:?}"
    );
    // Asked for a minute: the policy's longest backoff (3 s) caps the wait.
    let start = Instant::now();
    assert_eq!(get(sidecar.outbound, "/60", HOST).await.0, 200);
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_eq!(up.hits(), 4);
    let value = sidecar.upstream_metric("weir_retries_total").await;
    assert_eq!(value, Some(2.0));
}

#[tokio::test(start_paused = true)]
async fn a_sidecars_rate_limited_refusal_is_neither_retried_nor_avoided() {
    let refusing = Scripted::start(|_, _| {
        Answer::status(429)
            .header("x-weir-reason", "rate-limited")
            .header("retry-after", "10")
            .chunk("refusing")
    })
    .await;
    let other = Scripted::start(|_, _| Answer::status(200).chunk("other")).await;
    let policy = r#"{"loadBalancer": {"policy": "round-robin"},
        "retries": {"attempts": 3, "retryOn": ["429"]}}"#;
    let sidecar = Sidecar::start(
        &config(&[("default", 1, &[refusing.addr, other.addr])], policy),
        other.addr,
    )
    .await;
    let (refused, _) = refusals(sidecar.outbound, HOST, 10, (429, "rate-limited")).await;
    assert_eq!(
        refused, 5,
        "still round-robin: the refusing endpoint is not avoided"
    );
    assert_eq!(refusing.hits(), 5, "and never retried");
}

#[tokio::test(start_paused = true)]
async fn a_failure_rate_opens_the_breaker_once_min_requests_were_seen() {
    let up = Scripted::start(|_, n| match n % 2 {
        0 => Answer::status(500),
        _ => Answer::status(200),
    })
    .await;
    let policy = r#"{"circuitBreaker": {"failureRate": 0.5, "minRequests": 4, "window": "10s", "openDuration": "30s"}}"#;
    let sidecar = Sidecar::with_policy(up.addr, policy).await;
    // 500, 200, 500, 200: half failed but the fourth was a success; the fifth (500) makes 3 of
    // 5 and opens it.
    let statuses: Vec<u16> = {
        let mut s = Vec::new();
        for _ in 0..5 {
            s.push(get(sidecar.outbound, "/", HOST).await.0);
        }
        s
    };
    assert_eq!(statuses, [500, 200, 500, 200, 500]);
    assert_eq!(
        status_and_reason(sidecar.outbound, HOST).await,
        (503, "circuit-open".into())
    );
    assert_eq!(up.hits(), 5);
    // Half-open after openDuration: the trial call (a 200) closes it.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(get(sidecar.outbound, "/", HOST).await.0, 200);
    let value = sidecar.upstream_metric("weir_circuit_breaker_state").await;
    assert_eq!(value, Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn a_client_gone_while_waiting_out_a_retry_after_frees_everything() {
    let up = Scripted::start(|_, _| Answer::status(429).header("retry-after", "10")).await;
    let policy = r#"{"retries": {"attempts": 3, "retryOn": ["429"], "backoff": {"max": "20s"}}}"#;
    let sidecar = Sidecar::with_policy(up.addr, policy).await;
    let gone = tokio::spawn(get(sidecar.outbound, "/", HOST));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(up.hits(), 1, "waiting out the Retry-After");
    gone.abort();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(up.hits(), 1, "no retry once the client left");
    let labels = [("direction", "outbound"), ("service", "upstream")];
    assert_eq!(
        sidecar.metric("weir_in_flight_requests", &labels).await,
        Some(0.0)
    );
    let table = sidecar.store().table();
    let route = table.service("default", "upstream").unwrap();
    assert!(route.endpoints.iter().all(|e| e.in_flight() == 0));
}
