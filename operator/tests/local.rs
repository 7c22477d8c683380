//! End to end in local mode: the real `weir-operator local` binary watching a folder, real
//! sidecars polling it, real upstream servers.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

mod local_operator;
use local_operator::{
    LocalOperator, checkout_sidecar, payments_service, payments_split, temp_dir, until_weights,
};
use weir_testkit::{Upstream, free_addr, write_atomically};

/// An upstream that answers with its name; counts its answers.
async fn upstream(name: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let upstream = Upstream::fixed(200, name).await;
    (upstream.addr, upstream.hits)
}

async fn sidecar(control_plane: SocketAddr) -> weir_sidecar::Running {
    checkout_sidecar(control_plane, "checkout-test").await
}

/// `GET /` of payments through the sidecar's `outbound` listener.
async fn call(outbound: SocketAddr) -> (u16, String) {
    local_operator::call(outbound, "payments").await
}

/// Calls until `want` answers, returning how long it took (None if not within `limit`).
async fn until_answered_by(outbound: SocketAddr, want: &str, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if call(outbound).await.1 == want {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

fn split(v1: u32, v2: u32) -> String {
    payments_split("payments", v1, v2, "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_end_to_end() {
    let (v1, v1_hits) = upstream("v1").await;
    let (v2, v2_hits) = upstream("v2").await;
    let dir = temp_dir("weir-local");
    write_atomically(&dir.join("services.yaml"), &payments_service(v1, v2));
    let split_file = dir.join("split.yaml");
    write_atomically(&split_file, &split(100, 0));
    let (listen, admin) = (free_addr(), free_addr());
    let operator = LocalOperator::start_at(&dir, listen, admin);
    let proxy = sidecar(listen).await;

    // The split is in force: everything to v1.
    for _ in 0..20 {
        assert_eq!(call(proxy.outbound).await, (200, "v1".into()));
    }

    // Edit the weights: traffic shifts within a second.
    write_atomically(&split_file, &split(0, 100));
    let took = until_answered_by(proxy.outbound, "v2", Duration::from_secs(3)).await;
    assert!(
        took.is_some_and(|t| t < Duration::from_secs(1)),
        "shifted after {took:?}"
    );
    let before = v1_hits.load(Ordering::SeqCst);
    for _ in 0..20 {
        assert_eq!(call(proxy.outbound).await.1, "v2");
    }
    assert_eq!(v1_hits.load(Ordering::SeqCst), before);

    // Corrupt the file: the last good split stays and the error names the file and field.
    write_atomically(
        &split_file,
        &split(0, 100).replace("weight: 100", "weight: lots"),
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..10 {
        assert_eq!(call(proxy.outbound).await.1, "v2");
    }
    let log = operator.log();
    assert!(
        log.contains("split.yaml") && log.contains("spec.backends[1].weight"),
        "the log names the file and the field:\n{log}"
    );

    // Delete the file: the split goes, both endpoints serve again.
    std::fs::remove_file(&split_file).unwrap();
    assert!(
        until_answered_by(proxy.outbound, "v1", Duration::from_secs(2))
            .await
            .is_some()
    );
    let (a, b) = (
        v1_hits.load(Ordering::SeqCst),
        v2_hits.load(Ordering::SeqCst),
    );
    for _ in 0..40 {
        assert_eq!(call(proxy.outbound).await.0, 200);
    }
    assert!(v1_hits.load(Ordering::SeqCst) > a && v2_hits.load(Ordering::SeqCst) > b);

    // Stop the operator: the sidecar keeps serving with what it holds.
    write_atomically(&split_file, &split(100, 0));
    assert!(until_weights(&proxy, &[("v1", 100), ("v2", 0)], Duration::from_secs(2)).await);
    let held = proxy.store.table().config.clone();
    drop(operator);
    for i in 0..20 {
        let answer = call(proxy.outbound).await;
        assert_eq!(
            answer,
            (200, "v1".into()),
            "call {i}; held before the stop: {held:?}\nnow: {:?}",
            proxy.store.table().config
        );
    }
    // Meanwhile the weights change; a restarted operator resyncs the sidecar.
    write_atomically(&split_file, &split(0, 100));
    let _operator = LocalOperator::start_at(&dir, listen, admin);
    let took = until_answered_by(proxy.outbound, "v2", Duration::from_secs(10)).await;
    assert!(
        took.is_some(),
        "the sidecar resynced after the operator came back"
    );
}

/// payments with these (address, version) endpoints.
fn endpoints_file(endpoints: &[(SocketAddr, &str)]) -> String {
    let endpoints = endpoints.iter().map(|(address, version)| {
        format!("address: \"{address}\", labels: {{version: {version}}}")
    });
    weir_testkit::local_service("shop", "payments", Some(8080), endpoints)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_split_keeps_its_weights_while_endpoint_changes_reach_the_sidecars() {
    let (v1_a, v1_a_hits) = upstream("v1-a").await;
    let (v1_b, _) = upstream("v1-b").await;
    let (v1_c, v1_c_hits) = upstream("v1-c").await;
    let (v2, _) = upstream("v2").await;
    let dir = temp_dir("weir-local-refused");
    let services = dir.join("services.yaml");
    write_atomically(
        &services,
        &endpoints_file(&[(v1_a, "v1"), (v1_b, "v1"), (v2, "v2")]),
    );
    write_atomically(&dir.join("split.yaml"), &split(80, 20));
    let operator = LocalOperator::start(&dir);
    let proxy = sidecar(operator.listen).await;
    assert!(
        until_answered_by(proxy.outbound, "v2", Duration::from_secs(3))
            .await
            .is_some()
    );

    // The canary goes away (the split is refused: v2 selects nothing), v1-a dies and v1-c is
    // new: the weights stay, the endpoints follow.
    write_atomically(&services, &endpoints_file(&[(v1_b, "v1"), (v1_c, "v1")]));
    assert!(
        until_answered_by(proxy.outbound, "v1-c", Duration::from_secs(3))
            .await
            .is_some(),
        "the new endpoint gets traffic while the split is refused"
    );
    assert!(until_weights(&proxy, &[("v1", 80), ("v2", 20)], Duration::from_secs(1)).await);
    let dead_before = v1_a_hits.load(Ordering::SeqCst);
    let new_before = v1_c_hits.load(Ordering::SeqCst);
    for _ in 0..30 {
        let (status, body) = call(proxy.outbound).await;
        assert_eq!(status, 200, "v2's share goes to the subset that can serve");
        assert!(body == "v1-b" || body == "v1-c", "{body}");
    }
    assert_eq!(
        v1_a_hits.load(Ordering::SeqCst),
        dead_before,
        "the dead endpoint gets nothing"
    );
    assert!(v1_c_hits.load(Ordering::SeqCst) > new_before);
    let log = operator.log();
    assert!(log.contains("NoEndpoints"), "the refusal is logged:\n{log}");

    // Local mode records reconciles and push latency too.
    let metrics = operator.get("/metrics").await.unwrap();
    let value = |series: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        value("weir_reconcile_total{kind=\"TrafficSplit\",result=\"success\"}") >= 2.0,
        "{metrics}"
    );
    assert!(value("weir_reconcile_duration_seconds_count{kind=\"TrafficSplit\"}") >= 2.0);
    assert!(value("weir_config_push_seconds_count") >= 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_file_being_parsed_never_stalls_the_admin_listener() {
    let dir = temp_dir("weir-local-huge");
    write_atomically(
        &dir.join("services.yaml"),
        &endpoints_file(&[("127.0.0.1:9101".parse().unwrap(), "v1")]),
    );
    let operator = LocalOperator::start(&dir);
    let deadline = Instant::now() + Duration::from_secs(10);
    while operator.get("/ready").await.is_none() {
        assert!(
            Instant::now() < deadline,
            "never ready:\n{}",
            operator.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A LocalService with 150,000 endpoints, each with nested labels: seconds of parsing.
    let endpoints = (0..150_000u32).map(|i| {
        format!(
            "address: \"10.{}.{}.{}:8080\", labels: {{version: v1, zone: z{}, rack: r{}}}",
            i >> 16,
            (i >> 8) & 255,
            i & 255,
            i % 7,
            i % 13
        )
    });
    let text = weir_testkit::local_service("shop", "huge", Some(8080), endpoints);
    write_atomically(&dir.join("huge.yaml"), &text);
    let written = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut answers = 0;
    let loaded = loop {
        let asked = Instant::now();
        assert!(
            operator.get("/metrics").await.is_some(),
            "/metrics answered within 2 s"
        );
        slowest = slowest.max(asked.elapsed());
        answers += 1;
        if operator.log().contains("huge.yaml") {
            break written.elapsed();
        }
        assert!(written.elapsed() < Duration::from_secs(120), "never loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "loading a {} MB file took {loaded:?}; meanwhile {answers} /metrics answers, the slowest in {slowest:?}",
        text.len() / 1_000_000
    );
    assert!(
        slowest < Duration::from_secs(1),
        "the admin listener stalled for {slowest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_command_prints_every_manifest() {
    let output = Command::new(env!("CARGO_BIN_EXE_weir-operator"))
        .arg("crds")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    for kind in [
        "TrafficSplit",
        "ResiliencePolicy",
        "Autoscaler",
        "LocalService",
    ] {
        assert!(text.contains(&format!("kind: {kind}")), "{kind} missing");
    }
    assert_eq!(text, weir_crds::manifests_yaml());
}
