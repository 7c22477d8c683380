//! ResiliencePolicy defaults in cluster mode, against the in-process fake API server: a
//! Namespace and a Mesh policy reach the Services' configs, a Mesh policy outside the
//! operator's namespace is refused in status, and `status.effectiveLimits` follows the target's
//! ready endpoints.

mod cluster;
mod fake_api;

use cluster::{NS, Operator, WAIT, condition, payments_slice, policy, service, weir_status};
use fake_api::FakeApi;
use serde_json::{Value, json};
use weir_operator::kubernetes::Settings;
use weir_operator::snapshot::ServiceKey;
use weir_testkit::eventually_some;

/// payments' EndpointSlice with these ready IPs.
fn slice(ips: &[&str]) -> Value {
    let endpoints = ips.iter().map(|ip| (*ip, "", true));
    payments_slice(
        json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
        endpoints,
    )
}

fn status(api: &FakeApi, namespace: &str, name: &str) -> Value {
    weir_status(api, "ResiliencePolicy", namespace, name)
}

fn accepted(status: &Value) -> Value {
    condition(status, "Accepted")
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

    let mut settings = Settings::new("weir-0");
    settings.operator_namespace = Some("weir-system".into());
    let operator = Operator::start(&api, settings);

    let snapshot = eventually_some("the defaults in the config", WAIT, || {
        let snapshot = operator.snapshot();
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

    let refused = eventually_some("the stray Mesh policy refused", WAIT, || {
        let c = accepted(&status(&api, NS, "not-the-mesh"));
        (c["status"] == "False").then_some(c)
    })
    .await;
    assert_eq!(refused["reason"], "MeshOutsideOperatorNamespace");

    let shop = eventually_some("the namespace policy's status", WAIT, || {
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
    let mesh = eventually_some("the mesh policy's status", WAIT, || {
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
    eventually_some(
        "the effective limits after the endpoint change",
        WAIT,
        || {
            let s = status(&api, NS, "payments");
            (s["effectiveLimits"] == "bulkhead 10 per pod × 2 pods = 20").then_some(())
        },
    )
    .await;
    // Each policy's status is its own write: the namespace's follows, not necessarily at once.
    eventually_some(
        "the namespace policy's limits after the endpoint change",
        WAIT,
        || {
            let s = status(&api, NS, "shop-defaults");
            (s["effectiveLimits"] == "100 rps per pod × 2 pods of 2 services = 200 rps (dry run)")
                .then_some(())
        },
    )
    .await;

    operator.stop().await;
}
