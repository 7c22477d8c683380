//! Canary analysis end to end in local mode: the real `weir-operator local` binary, a real
//! caller sidecar polling it and sending traffic, real upstreams for v1 and the v2 canary; the
//! rollout is read on the admin's `GET /status` and on the dashboard's `GET /api/graph`, and
//! seen in the weights the sidecar runs.

use http::StatusCode;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

mod local_operator;
use local_operator::{
    Folder, LocalOperator, call, checkout_sidecar, payments_service, payments_split, temp_dir,
    weights,
};
use weir_testkit::{Upstream, write_atomically};

/// An upstream answering `status` with its name.
async fn upstream(name: &'static str, status: StatusCode) -> SocketAddr {
    Upstream::fixed(status.as_u16(), name).await.addr
}

/// payments with a v1 and a v2 endpoint, split 90/10 with this `analysis`.
fn folder(v1: SocketAddr, v2: SocketAddr, analysis: &str) -> Folder {
    let dir = temp_dir("weir-canary");
    write_atomically(&dir.join("services.yaml"), &payments_service(v1, v2));
    write_atomically(
        &dir.join("split.yaml"),
        &payments_split("payments", 90, 10, analysis),
    );
    dir
}

const ANALYSIS: &str = "  analysis:\n    canary: v2\n    steps: [20, 50, 100]\n    interval: 1s\n    \
                        minRequests: 5\n    successRate: 0.9\n    latencyP99: 5s\n";

/// v1 answering 200 and the canary v2 answering `canary`, split 90/10 with [`ANALYSIS`] (and
/// `more` files) in a folder the operator watches, and a caller's sidecar polling it.
async fn rollout(
    canary: StatusCode,
    more: &[(&str, &str)],
) -> (Folder, LocalOperator, weir_sidecar::Running) {
    let v1 = upstream("v1", StatusCode::OK).await;
    let v2 = upstream("v2", canary).await;
    let dir = folder(v1, v2, ANALYSIS);
    for (name, text) in more {
        write_atomically(&dir.join(name), text);
    }
    let operator = LocalOperator::start(&dir);
    let proxy = caller(&operator).await;
    (dir, operator, proxy)
}

/// Asserts that the operator's `/metrics` has each of these lines.
async fn metrics_say(operator: &LocalOperator, lines: &[&str]) {
    let metrics = operator.get("/metrics").await.unwrap();
    for line in lines {
        assert!(metrics.contains(line), "{line} not in {metrics}");
    }
}

/// A caller sidecar of checkout, polling `operator`.
async fn caller(operator: &LocalOperator) -> weir_sidecar::Running {
    checkout_sidecar(operator.listen, "checkout-1").await
}

/// Calls payments through `outbound` until `stop`, counting answers by status.
fn traffic(outbound: SocketAddr, stop: Arc<AtomicBool>) -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (ok2, failed2) = (ok.clone(), failed.clone());
    tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            match local_operator::try_call(outbound, "payments").await {
                Some((200..=299, _)) => ok2.fetch_add(1, Ordering::SeqCst),
                _ => failed2.fetch_add(1, Ordering::SeqCst),
            };
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (ok, failed)
}

/// `status` of the split `shop/payments` in `/status`.
async fn split_status(operator: &LocalOperator) -> Option<Value> {
    operator
        .status_of("trafficSplits", "shop", "payments")
        .await
}

/// Waits (30 s at most) until the split's `status.analysis.phase` is `phase`; that status.
/// Panics with the last status seen and the operator's log otherwise.
async fn until_phase(operator: &LocalOperator, phase: &str) -> Value {
    let start = Instant::now();
    let mut last = Value::Null;
    while start.elapsed() < Duration::from_secs(30) {
        if let Some(status) = split_status(operator).await {
            if status["analysis"]["phase"] == phase {
                return status;
            }
            last = status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not {phase}: {last:#}\n{}", operator.log())
}

/// The step, the number of steps and the canary weight of a canary in `/api/graph`.
fn steps(canary: &Value) -> (Option<i64>, Option<i64>, Option<i64>) {
    let field = |name: &str| canary[name].as_i64();
    (field("step"), field("steps"), field("canaryWeight"))
}

/// The rollout's step and canary weight in a split's `status`.
fn step_and_weight(status: &Value) -> (Option<i64>, Option<i64>) {
    let analysis = &status["analysis"];
    (analysis["step"].as_i64(), analysis["canaryWeight"].as_i64())
}

/// The canary progress `/api/graph` shows on payments, once it is in `phase`; the last one
/// seen (or `null`) otherwise.
async fn graph_canary(operator: &LocalOperator, phase: &str) -> Result<Value, Value> {
    let start = Instant::now();
    let mut last = Value::Null;
    while start.elapsed() < Duration::from_secs(10) {
        // The first read after a pause waits for a scrape round: it may take a few tries.
        if let Some(body) = operator.get("/api/graph").await {
            let graph: Value = serde_json::from_str(&body).unwrap();
            if let Some(node) = graph["services"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["id"] == "payments.shop")
            {
                if node["canary"]["phase"] == phase {
                    return Ok(node["canary"].clone());
                }
                last = node["canary"].clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

/// The condition `type_` of a split's `status`.
fn condition(status: &Value, type_: &str) -> Value {
    let conditions = status["conditions"].as_array().expect("conditions");
    let found = conditions.iter().find(|c| c["type"] == type_);
    found
        .cloned()
        .unwrap_or_else(|| panic!("no {type_} in {status:#}"))
}

async fn until_weights(proxy: &weir_sidecar::Running, want: &[(&str, u32)]) -> bool {
    local_operator::until_weights(proxy, want, Duration::from_secs(3)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_is_promoted_step_by_step_to_succeeded() {
    let (_dir, operator, proxy) = rollout(StatusCode::OK, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = traffic(proxy.outbound, stop.clone());
    // The canary runs at the first step, not at its spec weight (10), until judged: the first
    // interval is inconclusive (the caller was not known when it started).
    let first = until_weights(&proxy, &[("v1", 800_000), ("v2", 200_000)]).await;
    assert!(first, "step 1 not in force: {:?}", weights(&proxy));
    let status = until_phase(&operator, "Succeeded").await;
    stop.store(true, Ordering::SeqCst);
    let analysis = &status["analysis"];
    assert_eq!(step_and_weight(&status), (Some(3), Some(100)));
    assert_eq!(analysis["lastJudgement"]["result"], "Passed");
    assert!(analysis["lastJudgement"]["requests"].as_i64().unwrap() >= 5);
    assert_eq!(analysis["lastJudgement"]["successRate"].as_f64(), Some(1.0));
    let condition = condition(&status, "Analysis");
    assert_eq!(
        (condition["status"].as_str(), condition["reason"].as_str()),
        (Some("True"), Some("Succeeded"))
    );
    assert!(
        until_weights(&proxy, &[("v1", 0), ("v2", 1_000_000)]).await,
        "{:?}",
        weights(&proxy)
    );
    // The dashboard shows the progress on payments.
    let canary = graph_canary(&operator, "Succeeded")
        .await
        .unwrap_or_else(|last| panic!("no Succeeded canary in /api/graph: {last:#}"));
    let names = (canary["split"].as_str(), canary["canary"].as_str());
    assert_eq!(names, (Some("payments"), Some("v2")), "{canary:#}");
    assert_eq!(steps(&canary), (Some(3), Some(3), Some(100)), "{canary:#}");
    assert_eq!(canary["lastJudgement"]["result"], "Passed");
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "no call failed during the rollout"
    );
    assert!(ok.load(Ordering::SeqCst) > 0);
    metrics_say(&operator, &["weir_canary_weight{name=\"payments\",namespace=\"shop\"} 100", "weir_analysis_judgements_total{name=\"payments\",namespace=\"shop\",result=\"Passed\"} 3"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_to_weight_zero() {
    let (_dir, operator, proxy) = rollout(StatusCode::INTERNAL_SERVER_ERROR, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let _counts = traffic(proxy.outbound, stop.clone());
    let status = until_phase(&operator, "RolledBack").await;
    stop.store(true, Ordering::SeqCst);
    let analysis = &status["analysis"];
    assert_eq!(step_and_weight(&status), (Some(1), Some(0)));
    assert_eq!(analysis["lastJudgement"]["result"], "Failed");
    assert_eq!(analysis["lastJudgement"]["successRate"].as_f64(), Some(0.0));
    let canary = graph_canary(&operator, "RolledBack")
        .await
        .unwrap_or_else(|last| panic!("no RolledBack canary in /api/graph: {last:#}"));
    assert_eq!(canary["canaryWeight"], 0, "{canary:#}");
    assert_eq!(canary["lastJudgement"]["result"], "Failed");
    assert!(
        analysis["message"]
            .as_str()
            .unwrap()
            .contains("rolled back"),
        "{analysis:#}"
    );
    // The canary gets nothing any more: every call is answered by v1.
    assert!(
        until_weights(&proxy, &[("v1", 1_000_000), ("v2", 0)]).await,
        "{:?}",
        weights(&proxy)
    );
    for _ in 0..50 {
        assert_eq!(
            call(proxy.outbound, "payments").await,
            (200, "v1".to_owned())
        );
    }
    metrics_say(&operator, &["weir_canary_weight{name=\"payments\",namespace=\"shop\"} 0", "weir_analysis_judgements_total{name=\"payments\",namespace=\"shop\",result=\"Failed\"} 1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_traffic_the_canary_is_held_inconclusive_and_status_shows_every_resource() {
    // With a policy too, and a caller that sends nothing.
    let policy = "apiVersion: weir.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: payments, namespace: shop}\n\
         spec:\n  targetRef: {kind: Service, name: payments}\n  retries: {attempts: 2}\n";
    let (_dir, operator, _proxy) = rollout(StatusCode::OK, &[("policy.yaml", policy)]).await;
    // Several intervals of 1 s pass without traffic.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let status = split_status(&operator)
        .await
        .expect("the split is in /status");
    let analysis = &status["analysis"];
    assert_eq!(analysis["phase"], "Progressing", "{status:#}");
    assert_eq!(step_and_weight(&status), (Some(1), Some(20)));
    assert_eq!(
        analysis["lastJudgement"]["result"], "Inconclusive",
        "{status:#}"
    );
    assert_eq!(analysis["lastJudgement"]["requests"].as_i64(), Some(0));
    assert_eq!(status["weights"], "v1=800000,v2=200000");
    // The dashboard shows the held step as `/status` does.
    let canary = graph_canary(&operator, "Progressing")
        .await
        .unwrap_or_else(|last| panic!("no canary in /api/graph: {last:#}"));
    assert_eq!(steps(&canary), (Some(1), Some(3), Some(20)), "{canary:#}");
    assert_eq!(canary["lastJudgement"]["result"], "Inconclusive");
    let accepted = condition(&status, "Accepted");
    assert_eq!(accepted["status"], "True");
    let all: Value = serde_json::from_str(&operator.get("/status").await.unwrap()).unwrap();
    let policy = &all["resiliencePolicies"][0];
    assert_eq!(
        (policy["namespace"].as_str(), policy["name"].as_str()),
        (Some("shop"), Some("payments"))
    );
    assert_eq!(policy["status"]["conditions"][0]["type"], "Accepted");
    assert_eq!(policy["status"]["conditions"][0]["status"], "True");
    assert!(all["autoscalers"].as_array().is_some(), "{all:#}");
    let metrics = operator.get("/metrics").await.unwrap();
    assert!(
        metrics.contains("weir_canary_weight{name=\"payments\",namespace=\"shop\"} 20"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("result=\"Passed\""),
        "never promoted on no traffic: {metrics}"
    );
}
