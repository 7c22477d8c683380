//! `dryRun` blocks through a real sidecar to real servers on loopback: every request passes as
//! if the block were absent, and `weir_dry_run_total{service,reason}` counts what the block
//! would have done. Paused tokio time: the timings are the virtual clock's.

mod common;

use common::{Sidecar, config};
use std::time::Duration;
use tokio::time::Instant;
use weir_testkit::{Action, Upstream, get};

const HOST: &str = "upstream";

async fn dry_runs(sidecar: &Sidecar, service: &str, reason: &str) -> Option<f64> {
    sidecar
        .metric(
            "weir_dry_run_total",
            &[("service", service), ("reason", reason)],
        )
        .await
}

/// The dry run of (`service`, `reason`) was counted `count` times, and the metric of the block
/// actually acting has no series at all.
async fn counted_not_done(sidecar: &Sidecar, (service, reason): (&str, &str), count: f64) {
    let enforced = match reason {
        "rate-limited" => "weir_rate_limited_total",
        "timeout" => "weir_timeouts_total",
        "retry" => "weir_retries_total",
        "ejection" => "weir_outlier_ejections_total",
        "fault" => "weir_faults_injected_total",
        other => panic!("no enforced metric known for {other}"),
    };
    assert_eq!(
        dry_runs(sidecar, service, reason).await,
        Some(count),
        "{reason}"
    );
    let m = sidecar.metrics().await;
    assert!(
        !m.contains(&format!("{enforced}{{")),
        "{enforced} counted:\n{m}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_rate_limit_lets_everything_through_and_counts_what_it_would_refuse() {
    let app = Upstream::start(|_, _| Action::Respond(200, "ok")).await;
    let cfg = r#"{"version": 1, "inbound": {"rateLimit": {"requestsPerSecond": 1, "burst": 2, "dryRun": true}}}"#;
    let sidecar = Sidecar::start(cfg, app.addr).await;
    for _ in 0..5 {
        let (status, headers, _) = get(sidecar.inbound, "/", "app").await;
        assert_eq!(status, 200);
        assert!(headers.get("x-weir-reason").is_none());
    }
    assert_eq!(app.hits(), 5);
    counted_not_done(&sidecar, ("test", "rate-limited"), 3.0).await;
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_bulkhead_admits_beyond_its_limit_and_gives_everything_back() {
    let app = Upstream::start(|_, _| Action::Delay(Duration::from_secs(1), 200)).await;
    let cfg = r#"{"version": 1, "inbound": {"bulkhead": {"maxConcurrent": 1, "maxQueued": 1, "queueTimeout": "10ms", "dryRun": true}}}"#;
    let sidecar = Sidecar::start(cfg, app.addr).await;
    let start = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|_| tokio::spawn(get(sidecar.inbound, "/", "app")))
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().0, 200);
    }
    // All four ran at once: nobody queued behind the one slot.
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(dry_runs(&sidecar, "test", "bulkhead-full").await, Some(2.0));
    let bulkhead = sidecar.store().table().inbound.bulkhead.clone().unwrap();
    assert_eq!(bulkhead.occupied(), 0);

    // A caller that goes away gives its place back in dry run too.
    let gone = tokio::spawn(get(sidecar.inbound, "/", "app"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(bulkhead.occupied(), 1);
    gone.abort();
    let freed = weir_testkit::eventually(Duration::from_secs(5), || {
        let held = bulkhead.occupied();
        async move { held == 0 }
    })
    .await;
    assert!(freed, "the place is released when the caller goes away");
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_inbound_timeout_cuts_nothing() {
    let app = Upstream::start(|_, _| Action::Delay(Duration::from_secs(2), 200)).await;
    let cfg = r#"{"version": 1, "inbound": {"timeouts": {"request": "500ms", "dryRun": true}}}"#;
    let sidecar = Sidecar::start(cfg, app.addr).await;
    let (status, _, body) = get(sidecar.inbound, "/", "app").await;
    assert_eq!((status, body.as_str()), (200, "slow"));
    counted_not_done(&sidecar, ("test", "timeout"), 1.0).await;
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_breaker_tracks_its_state_but_refuses_nothing() {
    let up = Upstream::start(|_, _| Action::Respond(500, "boom")).await;
    let policy =
        r#"{"circuitBreaker": {"failureThreshold": 2, "openDuration": "30s", "dryRun": true}}"#;
    let sidecar = Sidecar::with_policy(up.addr, policy).await;
    for _ in 0..5 {
        let (status, headers, _) = get(sidecar.outbound, "/", HOST).await;
        assert_eq!(status, 500);
        assert!(headers.get("x-weir-reason").is_none());
    }
    assert_eq!(up.hits(), 5, "every call reached the endpoint");
    assert_eq!(
        dry_runs(&sidecar, "upstream", "circuit-open").await,
        Some(3.0)
    );
    // The gauge shows the state the breaker would be in.
    let value = sidecar.upstream_metric("weir_circuit_breaker_state").await;
    assert_eq!(value, Some(1.0));
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_request_timeout_lets_a_slow_answer_through() {
    let up = Upstream::start(|parts, _| match parts.uri.path() {
        "/slow" => Action::Delay(Duration::from_secs(1), 200),
        _ => Action::Respond(200, "ok"),
    })
    .await;
    let policy = r#"{"timeouts": {"request": "300ms", "dryRun": true}}"#;
    let sidecar = Sidecar::with_policy(up.addr, policy).await;
    let start = Instant::now();
    let (status, _, body) = get(sidecar.outbound, "/slow", HOST).await;
    assert_eq!((status, body.as_str()), (200, "slow"));
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert_eq!(dry_runs(&sidecar, "upstream", "timeout").await, Some(1.0));
    // A fast answer is not counted.
    assert_eq!(get(sidecar.outbound, "/", HOST).await.0, 200);
    counted_not_done(&sidecar, ("upstream", "timeout"), 1.0).await;
}

#[tokio::test(start_paused = true)]
async fn dry_run_retries_answer_the_failure_as_is() {
    let up = Upstream::start(|_, _| Action::Respond(503, "busy")).await;
    let policy = r#"{"retries": {"attempts": 3, "retryOn": ["5xx"], "dryRun": true}}"#;
    let sidecar = Sidecar::with_policy(up.addr, policy).await;
    let (status, _, body) = get(sidecar.outbound, "/", HOST).await;
    assert_eq!((status, body.as_str()), (503, "busy"));
    assert_eq!(up.hits(), 1);
    counted_not_done(&sidecar, ("upstream", "retry"), 1.0).await;
}

#[tokio::test(start_paused = true)]
async fn dry_run_outlier_detection_ejects_nobody() {
    let bad = Upstream::start(|_, _| Action::Respond(500, "bad")).await;
    let good = Upstream::start(|_, _| Action::Respond(200, "good")).await;
    let policy = r#"{"outlierDetection": {"consecutive5xxErrors": 2, "maxEjectionPercent": 50, "dryRun": true},
        "loadBalancer": {"policy": "round-robin"}}"#;
    let sidecar = Sidecar::start(
        &config(&[("default", 1, &[bad.addr, good.addr])], policy),
        bad.addr,
    )
    .await;
    for _ in 0..20 {
        get(sidecar.outbound, "/", HOST).await;
    }
    assert_eq!(
        bad.hits(),
        10,
        "round-robin kept sending to the failing endpoint"
    );
    counted_not_done(&sidecar, ("upstream", "ejection"), 5.0).await;
}

#[tokio::test(start_paused = true)]
async fn dry_run_faults_inject_nothing() {
    let up = Upstream::start(|_, _| Action::Respond(200, "ok")).await;
    let policy = r#"{"faults": {"abort": {"percent": 100, "status": 503},
        "delay": {"percent": 100, "duration": "5s"}, "dryRun": true}}"#;
    let sidecar = Sidecar::with_policy(up.addr, policy).await;
    let start = Instant::now();
    for _ in 0..3 {
        assert_eq!(get(sidecar.outbound, "/", HOST).await.0, 200);
    }
    assert!(start.elapsed() < Duration::from_secs(5), "no delay held");
    assert_eq!(up.hits(), 3);
    // Each call would have been aborted (the delay never comes after an abort).
    counted_not_done(&sidecar, ("upstream", "fault"), 3.0).await;
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_per_try_timeout_is_counted_per_attempt_and_cuts_nothing() {
    let up = Upstream::start(|_, _| Action::Delay(Duration::from_millis(300), 503)).await;
    let policy = r#"{"timeouts": {"perTry": "100ms", "dryRun": true},
        "retries": {"attempts": 1, "retryOn": ["5xx"], "backoff": {"base": "1ms", "max": "1ms"}}}"#;
    let sidecar = Sidecar::with_policy(up.addr, policy).await;
    let (status, _, body) = get(sidecar.outbound, "/", HOST).await;
    assert_eq!((status, body.as_str()), (503, "slow"));
    assert_eq!(up.hits(), 2, "the enforced retry still happens");
    counted_not_done(&sidecar, ("upstream", "timeout"), 2.0).await;
}
