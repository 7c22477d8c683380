//! Probes are not traffic: the sidecar binary, as injected (its app's probes in
//! `WEIR_APP_PROBES`), behind an inbound rate limit of 1 request per second that refuses
//! everything else. The kubelet's probes, rewritten to `/app-health/<container>/<kind>` on the
//! admin listener, are answered by the real app every time, and `weir_requests_total` counts
//! only the callers' requests.
//!
//! The sidecar reads its probe table from its process environment, once: it runs as the real
//! `weir-sidecar` binary, as injected.

mod common;

use common::{Launch, SidecarProcess};
use weir_testkit::{Action, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_bypass_the_inbound_rate_limit_and_the_request_metrics() {
    let app = Upstream::start(|parts, _| match parts.uri.path() {
        "/health" => Action::Respond(200, "healthy"),
        _ => Action::Respond(200, "app"),
    })
    .await;
    let config = r#"{"version": 1, "inbound": {"rateLimit": {"requestsPerSecond": 1, "burst": 1}}, "services": []}"#;
    let probes = format!(
        r#"{{"shop/readiness": {{"http": {{"port": {port}, "path": "/health"}}, "timeoutSeconds": 1}},
            "shop/liveness": {{"tcp": {{"port": {port}}}, "timeoutSeconds": 1}}}}"#,
        port = app.addr.port()
    );
    let launch = Launch {
        args: &["--service=shop", "--namespace=test"],
        env: &[("WEIR_APP_PROBES", &probes)],
        ..Launch::default()
    };
    let sidecar = SidecarProcess::launch(config, app.addr, launch).await;
    let (inbound, admin) = (sidecar.inbound, sidecar.admin);

    // Callers: the first takes the one token, the rest are refused.
    let mut inbound_calls = 0;
    let mut refused = 0;
    for round in 0..20 {
        let (status, headers, _) = weir_testkit::get(inbound, "/orders", "shop").await;
        inbound_calls += 1;
        if status == 429 {
            refused += 1;
            assert_eq!(headers["x-weir-reason"], "rate-limited");
        }
        // The kubelet's probes, meanwhile, reach the app every time.
        let (status, _, body) =
            weir_testkit::get(admin, "/app-health/shop/readiness", "10.0.0.7").await;
        assert_eq!((status, body.as_str()), (200, "healthy"), "round {round}");
        let (status, _, body) =
            weir_testkit::get(admin, "/app-health/shop/liveness", "10.0.0.7").await;
        assert_eq!(status, 200, "round {round}: {body}");
    }
    assert!(refused >= 1, "the rate limit refused nothing");
    let probes_seen = app.hits() - (inbound_calls - refused);
    assert_eq!(probes_seen, 20, "each HTTP probe reached the app");

    // Only the callers' requests are counted.
    let (_, _, metrics) = weir_testkit::get(admin, "/metrics", "admin").await;
    let count = |code: &str| {
        weir_testkit::metric_with(
            &metrics,
            "weir_requests_total",
            &[
                ("direction", "inbound"),
                ("service", "shop"),
                ("subset", ""),
                ("code", code),
            ],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(
        count("200") + count("429"),
        inbound_calls as f64,
        "{metrics}"
    );
    assert_eq!(count("429"), refused as f64, "{metrics}");
    let all_requests: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("weir_requests_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(all_requests, inbound_calls as f64, "{metrics}");

    // A probe the table does not know is a 404, not a forward.
    let (status, _, _) = weir_testkit::get(admin, "/app-health/shop/startup", "10.0.0.7").await;
    assert_eq!(status, 404);
}
