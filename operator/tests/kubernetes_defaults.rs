//! ResiliencePolicy defaults in cluster mode, against the in-process fake API server: a
//! Namespace and a Mesh policy reach the Services' configs, a Mesh policy outside the
//! operator's namespace is refused in status, and `status.effectiveLimits` follows the target's
//! ready endpoints.

mod fake_api;

use fake_api::FakeApi;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use weir_operator::kubernetes::{self, Settings};
use weir_operator::metrics::Metrics;
use weir_operator::snapshot::{ServiceKey, Snapshot};

const NS: &str = "shop";
const WAIT: Duration = Duration::from_secs(10);

fn service(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    })
}

/// payments' EndpointSlice with these ready IPs.
fn slice(ips: &[&str]) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "payments-x1", "namespace": NS,
                     "labels": {"kubernetes.io/service-name": "payments"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

fn policy(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "ResiliencePolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}

fn status(api: &FakeApi, namespace: &str, name: &str) -> Value {
    api.get("weir.dev/v1alpha1", "ResiliencePolicy", namespace, name)
        .map(|o| o["status"].clone())
        .unwrap_or(Value::Null)
}

fn accepted(status: &Value) -> Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Accepted").cloned())
        .unwrap_or(Value::Null)
}

async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_reach_every_service_in_scope_and_status_tells_how_far() {
    let api = FakeApi::start().await;
    api.put(service("payments"));
    api.put(service("orders"));
    api.put(slice(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]));
    api.put(policy(
        "weir-system",
        "mesh-defaults",
        json!({"targetRef": {"kind": "Mesh"}, "retries": {"attempts": 1}}),
    ));
    api.put(policy(
        NS,
        "not-the-mesh",
        json!({"targetRef": {"kind": "Mesh"}, "retries": {"attempts": 9}}),
    ));
    api.put(policy(
        NS,
        "shop-defaults",
        json!({"targetRef": {"kind": "Namespace", "name": NS}, "mode": "DryRun",
               "rateLimit": {"requestsPerSecond": 100, "burst": 10}}),
    ));
    api.put(policy(
        NS,
        "payments",
        json!({"targetRef": {"kind": "Service", "name": "payments"},
               "bulkhead": {"maxConcurrent": 10}}),
    ));

    let (snapshots_tx, snapshots) = watch::channel(Arc::new(Snapshot::default()));
    let (stop, shutdown) = watch::channel(false);
    let mut settings = Settings::new("weir-0");
    settings.operator_namespace = Some("weir-system".into());
    let task = tokio::spawn(kubernetes::run(
        api.client(),
        settings,
        snapshots_tx,
        Arc::new(Metrics::new()),
        shutdown,
    ));

    let snapshot = eventually("the defaults in the config", || {
        let snapshot = snapshots.borrow().clone();
        let orders = snapshot.services.get(&ServiceKey::new(NS, "orders"))?;
        orders.value.policy.retries.is_some().then_some(snapshot)
    })
    .await;
    for name in ["payments", "orders"] {
        let key = ServiceKey::new(NS, name);
        assert_eq!(
            snapshot.services[&key]
                .value
                .policy
                .retries
                .as_ref()
                .unwrap()
                .attempts,
            1,
            "{name}: the mesh's retries, not the refused policy's"
        );
        let inbound = &snapshot.inbound[&key].value;
        assert!(inbound.rate_limit.as_ref().unwrap().dry_run, "{name}");
    }
    assert!(
        snapshot.inbound[&ServiceKey::new(NS, "payments")]
            .value
            .bulkhead
            .is_some()
    );

    let refused = eventually("the stray Mesh policy refused", || {
        let c = accepted(&status(&api, NS, "not-the-mesh"));
        (c["status"] == "False").then_some(c)
    })
    .await;
    assert_eq!(refused["reason"], "MeshOutsideOperatorNamespace");

    let shop = eventually("the namespace policy's status", || {
        let s = status(&api, NS, "shop-defaults");
        (accepted(&s)["status"] == "True").then_some(s)
    })
    .await;
    assert_eq!(
        accepted(&shop)["message"],
        "The spec is valid; it gives defaults to 2 services in namespace shop"
    );
    // Orders has no ready endpoint yet; payments' 3 pods carry the namespace's limit.
    assert_eq!(
        shop["effectiveLimits"],
        "100 rps per pod × 3 pods of 2 services = 300 rps (dry run)"
    );
    let mesh = eventually("the mesh policy's status", || {
        let s = status(&api, "weir-system", "mesh-defaults");
        (accepted(&s)["status"] == "True").then_some(s)
    })
    .await;
    assert_eq!(
        accepted(&mesh)["message"],
        "The spec is valid; it gives mesh-wide defaults to 2 services"
    );

    // A pod goes away: the totals follow.
    api.put(slice(&["10.0.0.1", "10.0.0.2"]));
    eventually("the effective limits after the endpoint change", || {
        let s = status(&api, NS, "payments");
        (s["effectiveLimits"] == "bulkhead 10 per pod × 2 pods = 20").then_some(())
    })
    .await;
    // Each policy's status is its own write: the namespace's follows, not necessarily at once.
    eventually(
        "the namespace policy's limits after the endpoint change",
        || {
            let s = status(&api, NS, "shop-defaults");
            (s["effectiveLimits"] == "100 rps per pod × 2 pods of 2 services = 200 rps (dry run)")
                .then_some(())
        },
    )
    .await;

    stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops on shutdown")
        .expect("no panic")
        .expect("no error");
}
