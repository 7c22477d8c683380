//! `x-weir-debug: 1` through a real sidecar: the answer tells its story in `x-weir-route`, on
//! success and on refusals; the request header never reaches the application.

mod common;

use common::{Sidecar, config};
use weir_testkit::{Action, Upstream, get};

const HOST: &str = "upstream";

async fn debug_get(sidecar: &Sidecar) -> (u16, http::HeaderMap, String) {
    weir_testkit::get_with(sidecar.outbound, "/", HOST, &[("x-weir-debug", "1")]).await
}

fn route(headers: &http::HeaderMap) -> String {
    headers
        .get("x-weir-route")
        .expect("x-weir-route on the answer")
        .to_str()
        .unwrap()
        .to_owned()
}

/// The route header ends with `tail`.
fn route_ends_with(headers: &http::HeaderMap, tail: &str) {
    let route = route(headers);
    assert!(route.ends_with(tail), "{route} does not end with {tail}");
}

#[tokio::test(start_paused = true)]
async fn the_route_names_the_subset_attempts_waits_and_decisions() {
    let up = Upstream::start(|_, n| match n {
        0 => Action::Respond(503, "busy"),
        _ => Action::Respond(200, "ok"),
    })
    .await;
    let policy = r#"{"retries": {"attempts": 2, "retryOn": ["5xx"],
        "backoff": {"base": "40ms", "max": "40ms", "jitter": "none"}},
        "faults": {"delay": {"percent": 100, "duration": "200ms"}}}"#;
    let sidecar = Sidecar::start(&config(&[("v2", 1, &[up.addr])], policy), up.addr).await;
    let (status, headers, _) = debug_get(&sidecar).await;
    assert_eq!(status, 200);
    let e = up.addr;
    assert_eq!(
        route(&headers),
        format!(
            "service=upstream.default; subset=v2; attempt=1 endpoint={e} outcome=503 wait=40ms; \
             attempt=2 endpoint={e} outcome=200; decisions=fault-delay:200ms,retry; answer=200"
        )
    );
    let seen = up.last_headers.lock().clone().unwrap();
    assert!(seen.get("x-weir-debug").is_none(), "not forwarded");

    // Without the header: no route, and the header is not made up.
    let (_, headers, _) = get(sidecar.outbound, "/", HOST).await;
    assert!(headers.get("x-weir-route").is_none());
}

#[tokio::test(start_paused = true)]
async fn refusals_carry_the_route_too() {
    let up = Upstream::start(|_, _| Action::Respond(500, "boom")).await;
    let policy = r#"{"circuitBreaker": {"failureThreshold": 1, "openDuration": "60s"}}"#;
    let sidecar = Sidecar::with_policy(up.addr, policy).await;
    let (status, headers, _) = debug_get(&sidecar).await;
    assert_eq!(status, 500);
    route_ends_with(&headers, "outcome=500; answer=500");
    let (status, headers, _) = debug_get(&sidecar).await;
    assert_eq!(status, 503);
    assert_eq!(
        route(&headers),
        "service=upstream.default; subset=default; decisions=circuit-open; answer=503 refused:circuit-open"
    );

    // An empty subset: no-healthy-endpoints.
    let empty = config(&[("default", 1, &[])], "{}");
    sidecar.write_config(&empty);
    let refused = weir_testkit::eventually(std::time::Duration::from_secs(10), || async {
        debug_get(&sidecar).await.0 == 503
            && route(&debug_get(&sidecar).await.1).contains("no-healthy-endpoints")
    })
    .await;
    assert!(refused);
    let (_, headers, _) = debug_get(&sidecar).await;
    assert_eq!(
        route(&headers),
        "service=upstream.default; subset=default; decisions=no-healthy-endpoints; answer=503 refused:no-healthy-endpoints"
    );

    // A host that names no service.
    let (status, headers, _) = weir_testkit::get_with(
        sidecar.outbound,
        "/",
        "under_score",
        &[("x-weir-debug", "1")],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        route(&headers),
        "service=unknown; answer=400 refused:bad-request"
    );
}

#[tokio::test(start_paused = true)]
async fn dry_run_decisions_are_named() {
    let up = Upstream::start(|_, _| Action::Respond(503, "busy")).await;
    let policy = r#"{"retries": {"attempts": 2, "retryOn": ["5xx"], "dryRun": true},
        "faults": {"abort": {"percent": 100, "status": 500}, "dryRun": true}}"#;
    let sidecar = Sidecar::with_policy(up.addr, policy).await;
    let (status, headers, _) = debug_get(&sidecar).await;
    assert_eq!(status, 503);
    route_ends_with(
        &headers,
        "decisions=dry-run:fault-abort,dry-run:retry; answer=503",
    );
}
