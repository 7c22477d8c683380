//! The extreme values through the real binary in file mode: each is refused with its field
//! named (in the log, counted in `weir_config_rejected_total{source="file"}`), the proxy keeps
//! serving with the last good config and stays ready, and a later valid weight edit is applied.
//! Before the Bounds, each of these either killed the config task (`minPerSecond`: tower's budget
//! asserts) or panicked every request (`Instant + Duration` overflows).

mod common;

use common::SidecarProcess;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use weir_testkit::{Action, Upstream, eventually, get};

/// One service `upstream` with subsets v1 and v2 at the given weights, a policy and an inbound
/// policy.
fn config(
    version: u64,
    v1: (SocketAddr, u32),
    v2: (SocketAddr, u32),
    policy: Value,
    inbound: Value,
) -> String {
    json!({
        "version": version,
        "inbound": inbound,
        "services": [{"name": "upstream", "namespace": "default", "policy": policy, "subsets": [
            {"name": "v1", "weight": v1.1, "endpoints": [v1.0.to_string()]},
            {"name": "v2", "weight": v2.1, "endpoints": [v2.0.to_string()]},
        ]}],
    })
    .to_string()
}

const ABSURD: &str = "5000000000000000h";

/// (what, policy, inbound, the field a refusal names)
fn extremes() -> Vec<(&'static str, Value, Value, &'static str)> {
    vec![
        (
            "a retry floor of 2^31-1 per second",
            json!({"retries": {"attempts": 1, "budget": {"ratio": 0.2, "minPerSecond": 2_147_483_647}}}),
            json!({}),
            "services[0].policy.retries.budget.minPerSecond",
        ),
        (
            "an absurd request timeout",
            json!({"timeouts": {"request": ABSURD}}),
            json!({}),
            "services[0].policy.timeouts.request",
        ),
        (
            "an absurd idle timeout",
            json!({"timeouts": {"idle": ABSURD}}),
            json!({}),
            "services[0].policy.timeouts.idle",
        ),
        (
            "an absurd open duration",
            json!({"circuitBreaker": {"failureThreshold": 5, "openDuration": ABSURD}}),
            json!({}),
            "services[0].policy.circuitBreaker.openDuration",
        ),
        (
            "an absurd ejection time",
            json!({"outlierDetection": {"consecutive5xxErrors": 5, "baseEjectionTime": ABSURD}}),
            json!({}),
            "services[0].policy.outlierDetection.baseEjectionTime",
        ),
        (
            "a request timeout of a day and a second",
            json!({"timeouts": {"request": "24h1s"}}),
            json!({}),
            "services[0].policy.timeouts.request",
        ),
        (
            "an inbound rate of 1e-300",
            json!({}),
            json!({"rateLimit": {"requestsPerSecond": 1e-300, "burst": 1}}),
            "inbound.rateLimit.requestsPerSecond",
        ),
        (
            "an absurd inbound request timeout",
            json!({}),
            json!({"timeouts": {"request": ABSURD}}),
            "inbound.timeouts.request",
        ),
    ]
}

/// The binary on config version 1: `upstream` all on v1 (weight 100), none on v2.
async fn v1_only() -> (Upstream, Upstream, SidecarProcess) {
    let v1 = Upstream::start(|_, _| Action::Respond(200, "v1")).await;
    let v2 = Upstream::start(|_, _| Action::Respond(200, "v2")).await;
    let app: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let config = config(1, (v1.addr, 100), (v2.addr, 0), json!({}), json!({}));
    let sidecar = SidecarProcess::start(&config, app).await;
    (v1, v2, sidecar)
}

/// Writes config `version` with all of `upstream` on v2; whether the binary then serves from v2
/// within 3 s.
async fn all_to_v2(
    sidecar: &SidecarProcess,
    (v1, v2): (&Upstream, &Upstream),
    version: u64,
) -> bool {
    let config = config(version, (v1.addr, 0), (v2.addr, 100), json!({}), json!({}));
    sidecar.write_config(&config);
    eventually(Duration::from_secs(3), || async {
        served_by(sidecar.outbound).await == v2.addr.to_string()
    })
    .await
}

async fn served_by(outbound: SocketAddr) -> String {
    let (status, headers, body) = get(outbound, "/", "upstream").await;
    assert_eq!(status, 200, "{body}");
    headers["x-served-by"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn extreme_values_are_refused_by_field_and_a_later_weight_edit_applies() {
    let (v1, v2, sidecar) = v1_only().await;
    assert_eq!(served_by(sidecar.outbound).await, v1.addr.to_string());
    let rejected = [("source", "file")];

    for (i, (what, policy, inbound, field)) in extremes().into_iter().enumerate() {
        // Had it applied, the weights would have moved every request to v2.
        let version = 2 + i as u64;
        sidecar.write_config(&config(
            version,
            (v1.addr, 0),
            (v2.addr, 100),
            policy,
            inbound,
        ));
        let counted = eventually(Duration::from_secs(3), || async {
            sidecar
                .metric("weir_config_rejected_total", &rejected)
                .await
                == Some(i as f64 + 1.0)
        })
        .await;
        assert!(counted, "{what}: not refused; log:\n{}", sidecar.log());
        let log = sidecar.log();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("config refused"))
            .unwrap_or_else(|| panic!("{what}: no refusal logged:\n{log}"));
        assert!(
            line.contains(field),
            "{what}: the refusal does not name {field}: {line}"
        );
        for _ in 0..5 {
            assert_eq!(
                served_by(sidecar.outbound).await,
                v1.addr.to_string(),
                "{what}"
            );
        }
        assert_eq!(get(sidecar.admin, "/ready", "admin").await.0, 200, "{what}");
        assert_eq!(
            sidecar.metric("weir_config_version", &[]).await,
            Some(1.0),
            "{what}"
        );
    }

    // A valid edit is still read and applied.
    let moved = all_to_v2(&sidecar, (&v1, &v2), 100).await;
    assert!(
        moved,
        "the weight edit was not applied; log:\n{}",
        sidecar.log()
    );
    assert_eq!(
        sidecar.metric("weir_config_version", &[]).await,
        Some(100.0)
    );
    assert_eq!(get(sidecar.admin, "/ready", "admin").await.0, 200);
    assert!(!sidecar.log().contains("panicked"), "{}", sidecar.log());
}

#[tokio::test]
async fn a_config_file_over_16_mib_is_refused_unread_and_a_later_edit_applies() {
    let (v1, v2, sidecar) = v1_only().await;
    // Valid JSON but 16 MiB and one byte long (trailing spaces).
    let mut big = config(2, (v1.addr, 0), (v2.addr, 100), json!({}), json!({}));
    big.push_str(&" ".repeat(16 * 1024 * 1024 + 1 - big.len()));
    sidecar.write_config(&big);
    let counted = eventually(Duration::from_secs(3), || async {
        sidecar
            .metric("weir_config_rejected_total", &[("source", "file")])
            .await
            == Some(1.0)
    })
    .await;
    assert!(counted, "not refused; log:\n{}", sidecar.log());
    assert!(
        sidecar.log().contains("more than the 16 MiB"),
        "{}",
        sidecar.log()
    );
    assert_eq!(served_by(sidecar.outbound).await, v1.addr.to_string());

    let moved = all_to_v2(&sidecar, (&v1, &v2), 3).await;
    assert!(moved, "the later edit was not applied");
}
