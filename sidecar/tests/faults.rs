//! `faults` through a real sidecar to real servers on loopback: aborts answered at once with the
//! configured status, delays held before sending, both counted. Paused tokio time.

mod common;

use common::{Sidecar, config, refusals, timed_ok, timed_refusal};
use std::time::Duration;
use tokio::time::Instant;
use weir_testkit::{Action, Upstream, get, metric_with};

const HOST: &str = "upstream";

async fn injected(sidecar: &Sidecar, kind: &str) -> Option<f64> {
    sidecar
        .metric(
            "weir_faults_injected_total",
            &[("service", "upstream"), ("kind", kind)],
        )
        .await
}

#[tokio::test(start_paused = true)]
async fn an_abort_answers_at_once_and_is_neither_retried_nor_charged() {
    let up = Upstream::start(|_, _| Action::Respond(200, "ok")).await;
    let policy = r#"{"faults": {"abort": {"percent": 100, "status": 418}},
        "retries": {"attempts": 3, "retryOn": ["5xx", "retriable-4xx"]},
        "circuitBreaker": {"failureThreshold": 1},
        "outlierDetection": {"consecutive5xxErrors": 1, "maxEjectionPercent": 100},
        "fallback": {"status": 200, "body": "fallback"}}"#;
    let sidecar = Sidecar::with_policy(up.addr, policy).await;
    for _ in 0..5 {
        let (status, headers, body) = get(sidecar.outbound, "/", HOST).await;
        assert_eq!(status, 418);
        assert_eq!(headers["x-weir-reason"], "fault-injected");
        assert_eq!(headers["content-type"], "application/json");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["reason"], "fault-injected");
        assert!(json["message"].as_str().unwrap().contains("418"), "{body}");
    }
    assert_eq!(up.hits(), 0, "an aborted call is never sent");
    assert_eq!(injected(&sidecar, "abort").await, Some(5.0));
    let m = sidecar.metrics().await;
    for absent in ["weir_retries_total{", "weir_outlier_ejections_total{"] {
        assert!(!m.contains(absent), "{absent} in\n{m}");
    }
    assert_ne!(
        metric_with(&m, "weir_circuit_breaker_state", &[("service", "upstream")]),
        Some(1.0),
        "the breaker (threshold 1) did not open"
    );
}

#[tokio::test(start_paused = true)]
async fn a_delay_holds_the_call_before_sending_it() {
    let up = Upstream::start(|_, _| Action::Respond(200, "ok")).await;
    let policy = r#"{"faults": {"delay": {"percent": 100, "duration": "2s"}}}"#;
    let sidecar = Sidecar::with_policy(up.addr, policy).await;
    let held = timed_ok(sidecar.outbound, "/", HOST).await;
    assert!(
        held >= Duration::from_secs(2) && held < Duration::from_millis(2100),
        "{held:?}"
    );
    assert_eq!(injected(&sidecar, "delay").await, Some(1.0));

    // The client goes away during the delay: nothing is sent, nothing stays in flight.
    let gone = tokio::spawn(get(sidecar.outbound, "/", HOST));
    tokio::time::sleep(Duration::from_millis(500)).await;
    gone.abort();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(up.hits(), 1);
    let m = sidecar.metrics().await;
    assert_eq!(
        metric_with(
            &m,
            "weir_in_flight_requests",
            &[("direction", "outbound"), ("service", "upstream")]
        ),
        Some(0.0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_delay_counts_against_the_request_timeout() {
    let up = Upstream::start(|_, _| Action::Respond(200, "ok")).await;
    let policy = r#"{"faults": {"delay": {"percent": 100, "duration": "5s"}},
        "timeouts": {"request": "1s"}}"#;
    let sidecar = Sidecar::with_policy(up.addr, policy).await;
    let took = timed_refusal(sidecar.outbound, HOST, (504, "timeout")).await;
    assert!(took < Duration::from_millis(1100));
    assert_eq!(up.hits(), 0);
}

#[tokio::test(start_paused = true)]
async fn zero_percent_never_and_fractions_about_their_share() {
    let up = Upstream::start(|_, _| Action::Respond(200, "ok")).await;
    let policy = r#"{"faults": {"abort": {"percent": 0, "status": 503}, "delay": {"percent": 0, "duration": "1s"}}}"#;
    let sidecar = Sidecar::with_policy(up.addr, policy).await;
    let start = Instant::now();
    for _ in 0..200 {
        assert_eq!(get(sidecar.outbound, "/", HOST).await.0, 200);
    }
    assert_eq!(start.elapsed(), Duration::ZERO, "no call was delayed");
    assert_eq!(injected(&sidecar, "abort").await, None);

    let policy = r#"{"faults": {"abort": {"percent": 25.5, "status": 503}}}"#;
    sidecar.write_config(&config(&[("default", 1, &[up.addr])], policy));
    let applied = weir_testkit::eventually(Duration::from_secs(10), || async {
        get(sidecar.outbound, "/", HOST).await.0 == 503
    })
    .await;
    assert!(applied);
    let before = injected(&sidecar, "abort").await.unwrap();
    let aborts = (503, "fault-injected");
    let (aborted, _) = refusals(sidecar.outbound, HOST, 2000, aborts).await;
    // 25.5 % of 2000 is 510; five standard deviations (about 98) either side.
    assert!((412..=608).contains(&aborted), "{aborted} aborted");
    assert_eq!(
        injected(&sidecar, "abort").await.unwrap() - before,
        f64::from(aborted)
    );
}
