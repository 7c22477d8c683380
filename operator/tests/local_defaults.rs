//! ResiliencePolicy defaults with the real `weir-operator local` binary: a Mesh policy (in
//! `weir-system`, the operator's namespace in local mode) and a Namespace policy reach a real
//! sidecar's config, a Mesh policy elsewhere and an out-of-bounds one are refused in `/status`,
//! and `effectiveLimits` follows the LocalService's endpoints.

mod local_operator;

use local_operator::{LocalOperator, http_post, temp_dir, until_answer};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;
use weir_proxy_api as api;
use weir_testkit::write_atomically;

fn services(payments_pods: u16) -> String {
    let endpoints: String = (0..payments_pods)
        .map(|i| format!("    - {{address: \"127.0.0.1:{}\"}}\n", 19100 + i))
        .collect();
    format!(
        "apiVersion: weir.dev/v1alpha1\nkind: LocalService\nmetadata: {{name: payments, namespace: shop}}\n\
         spec:\n  port: 8080\n  endpoints:\n{endpoints}\
         ---\n\
         apiVersion: weir.dev/v1alpha1\nkind: LocalService\nmetadata: {{name: orders, namespace: shop}}\n\
         spec:\n  port: 8080\n  endpoints:\n    - {{address: \"127.0.0.1:19200\"}}\n"
    )
}

/// ResiliencePolicies as one multi-document file: (namespace, name, spec as a YAML flow
/// mapping) each.
fn policies(list: &[(&str, &str, &str)]) -> String {
    let documents: Vec<String> = list
        .iter()
        .map(|(namespace, name, spec)| {
            format!(
                "apiVersion: weir.dev/v1alpha1\nkind: ResiliencePolicy\n\
                 metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
            )
        })
        .collect();
    documents.join("---\n")
}

/// A Mesh default, a Mesh policy outside the operator's namespace, shop's Namespace default (in
/// dry run), payments' own policy, and an out-of-bounds Namespace policy of search.
fn defaults() -> String {
    policies(&[
        (
            "weir-system",
            "mesh-defaults",
            "{targetRef: {kind: Mesh}, retries: {attempts: 1, retryOn: [\"429\", unavailable]}, \
             faults: {abort: {percent: 0.5, status: 503}}}",
        ),
        (
            "shop",
            "not-the-mesh",
            "{targetRef: {kind: Mesh}, retries: {attempts: 9}}",
        ),
        (
            "shop",
            "shop-defaults",
            "{targetRef: {kind: Namespace, name: shop}, mode: DryRun, \
             rateLimit: {requestsPerSecond: 100, burst: 10}}",
        ),
        (
            "shop",
            "payments",
            "{targetRef: {kind: Service, name: payments}, bulkhead: {maxConcurrent: 10}, \
             circuitBreaker: {failureRate: 0.5, window: 30s, minRequests: 40}}",
        ),
        (
            "search",
            "too-much",
            "{targetRef: {kind: Namespace, name: search}, \
             faults: {delay: {percent: 150, duration: 1s}}}",
        ),
    ])
}

/// What a proxy of `shop/orders` gets from the config API at `listen` when it asks for payments,
/// orders and its own inbound policy (as a sidecar does on its first calls), retried until the
/// operator answers with all three; then it polls again naming the versions it got, which
/// acknowledges them.
async fn discover(
    listen: SocketAddr,
) -> (BTreeMap<String, api::ServiceConfig>, api::InboundPolicy) {
    let body = json!({
        "node": {"service": "orders", "namespace": "shop", "pod": "orders-0"},
        "resources": [{"name": "inbound"}, {"name": "service/shop/payments"},
                      {"name": "service/shop/orders"}],
        "waitSeconds": 0,
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some((_, bytes)) = http_post(listen, "/v1/discovery", &body, None).await {
            let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let mut services = BTreeMap::new();
            let mut inbound = None;
            let held: Vec<Value> = answer["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| json!({"name": r["name"], "version": r["version"]}))
                .collect();
            for r in answer["resources"].as_array().into_iter().flatten() {
                if let Some(service) = r["content"].get("service") {
                    let config: api::ServiceConfig =
                        serde_json::from_value(service.clone()).unwrap();
                    services.insert(config.name.clone(), config);
                } else if let Some(policy) = r["content"].get("inbound") {
                    inbound = Some(serde_json::from_value(policy.clone()).unwrap());
                }
            }
            if let (2, Some(inbound)) = (services.len(), inbound) {
                let ack = json!({
                    "node": body["node"], "resources": held, "waitSeconds": 0,
                });
                http_post(listen, "/v1/discovery", &ack, None)
                    .await
                    .expect("the acknowledgement answered");
                return (services, inbound);
            }
        }
        assert!(Instant::now() < deadline, "no config from the operator");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ResiliencePolicy `namespace/name` in the operator's `/status`.
async fn policy_status(operator: &LocalOperator, namespace: &str, name: &str) -> Option<Value> {
    operator
        .status_of("resiliencePolicies", namespace, name)
        .await
}

fn accepted(status: &Value) -> Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Accepted").cloned())
        .unwrap_or(Value::Null)
}

/// Polls `/status` until `check` accepts the policy's status.
async fn until_status(
    operator: &LocalOperator,
    namespace: &str,
    name: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let what = format!("{namespace}/{name}");
    let status = until_answer(
        &what,
        (Duration::from_secs(10), Duration::from_millis(50)),
        || policy_status(operator, namespace, name),
        |status| status.as_ref().is_some_and(&check),
        || operator.log(),
    );
    status.await.expect("checked")
}

/// Polls `/status` until the policy's `Accepted` condition says `accepted`; its status.
async fn until_accepted(
    operator: &LocalOperator,
    namespace: &str,
    name: &str,
    accepted_: &str,
) -> Value {
    until_status(operator, namespace, name, |s| {
        accepted(s)["status"] == accepted_
    })
    .await
}

/// Polls `/status` until the policy is refused; asserts the `reason` and returns the message.
async fn refused(operator: &LocalOperator, namespace: &str, name: &str, reason: &str) -> String {
    let status = until_accepted(operator, namespace, name, "False").await;
    let accepted = accepted(&status);
    assert_eq!(accepted["reason"], reason, "{namespace}/{name}: {status:#}");
    accepted["message"].as_str().unwrap_or_default().to_owned()
}

/// Polls `/status` until the policy's `effectiveLimits` say `limits`.
async fn until_limits(operator: &LocalOperator, namespace: &str, name: &str, limits: &str) {
    until_status(operator, namespace, name, |s| {
        s["effectiveLimits"] == limits
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_honours_defaults_and_reports_their_reach() {
    let dir = temp_dir("weir-local-defaults");
    let services_file = dir.join("services.yaml");
    write_atomically(&services_file, &services(3));
    write_atomically(&dir.join("policies.yaml"), &defaults());
    let operator = LocalOperator::start(&dir);
    let (configs, inbound) = discover(operator.listen).await;
    let policy_of = |name: &str| -> api::Policy {
        configs
            .get(name)
            .unwrap_or_else(|| panic!("{name} in {configs:?}"))
            .policy
            .clone()
    };
    for name in ["payments", "orders"] {
        let policy = policy_of(name);
        let retries = policy.retries.expect("the mesh's retries");
        assert_eq!(retries.attempts, 1, "{name}: not the refused policy's 9");
        assert_eq!(
            retries.retry_on,
            vec![api::RetryOn::TooManyRequests, api::RetryOn::Unavailable]
        );
        assert_eq!(policy.faults.unwrap().abort.unwrap().status, 503);
    }
    let breaker = policy_of("payments").circuit_breaker.unwrap();
    assert_eq!(
        (
            breaker.failure_rate,
            breaker.min_requests,
            breaker.window.to_string()
        ),
        (Some(0.5), 40, "30s".to_owned())
    );
    // The sidecars of orders enforce the namespace's rate limit on their inbound, in dry run.
    let limit = inbound.rate_limit.expect("the namespace's rate limit");
    assert!(limit.dry_run);
    assert_eq!(limit.requests_per_second, 100.0);

    refused(
        &operator,
        "shop",
        "not-the-mesh",
        "MeshOutsideOperatorNamespace",
    )
    .await;
    let invalid = refused(&operator, "search", "too-much", "Invalid").await;
    assert!(
        invalid.starts_with("spec.faults.delay.percent:"),
        "{invalid}"
    );
    let mesh = until_accepted(&operator, "weir-system", "mesh-defaults", "True").await;
    assert_eq!(
        accepted(&mesh)["message"],
        "The spec is valid; it gives mesh-wide defaults to 2 services"
    );
    // Programmed counts the proxies of every Service a default reaches: the one proxy holds
    // payments, orders and orders' inbound policy, all acknowledged.
    for (namespace, name) in [("weir-system", "mesh-defaults"), ("shop", "shop-defaults")] {
        until_status(&operator, namespace, name, |s| {
            s["conditions"].as_array().is_some_and(|c| {
                c.iter().any(|c| {
                    c["type"] == "Programmed"
                        && c["status"] == "True"
                        && c["message"] == "3/3 proxies"
                })
            })
        })
        .await;
    }
    until_limits(
        &operator,
        "shop",
        "shop-defaults",
        "100 rps per pod × 4 pods of 2 services = 400 rps (dry run)",
    )
    .await;
    until_limits(
        &operator,
        "shop",
        "payments",
        "bulkhead 10 per pod × 3 pods = 30",
    )
    .await;

    // A payments endpoint goes away: the totals follow.
    write_atomically(&services_file, &services(2));
    until_limits(
        &operator,
        "shop",
        "payments",
        "bulkhead 10 per pod × 2 pods = 20",
    )
    .await;
    until_limits(
        &operator,
        "shop",
        "shop-defaults",
        "100 rps per pod × 3 pods of 2 services = 300 rps (dry run)",
    )
    .await;
    drop(operator);
}

#[test]
fn check_names_the_namespace_or_mesh_two_defaults_conflict_over() {
    let dir = temp_dir("weir-check-defaults");
    write_atomically(
        &dir.join("policies.yaml"),
        &policies(&[
            ("shop", "a", "{targetRef: {kind: Namespace, name: shop}}"),
            ("shop", "b", "{targetRef: {kind: Namespace, name: shop}}"),
            ("weir-system", "m1", "{targetRef: {kind: Mesh}}"),
            ("weir-system", "m2", "{targetRef: {kind: Mesh}}"),
        ]),
    );
    let output = local_operator::operator_command()
        .args(["check", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{text}");
    for conflict in [
        "ResiliencePolicies a and b both target namespace shop",
        "ResiliencePolicies m1 and m2 both target the mesh",
    ] {
        assert!(text.contains(conflict), "{conflict:?} not in {text}");
    }
    // The hints speak of the level the policies conflict at.
    assert!(text.contains("keep one per namespace"), "{text}");
    assert!(text.contains("keep one for the mesh"), "{text}");
    assert!(!text.contains("keep one per Service"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_takes_the_operator_namespace_from_its_flag() {
    let dir = temp_dir("weir-local-operator-namespace");
    write_atomically(&dir.join("services.yaml"), &services(1));
    write_atomically(
        &dir.join("policies.yaml"),
        &policies(&[
            (
                "weir-system",
                "mesh",
                "{targetRef: {kind: Mesh}, retries: {attempts: 1}}",
            ),
            (
                "mesh-control",
                "mesh",
                "{targetRef: {kind: Mesh}, retries: {attempts: 2}}",
            ),
        ]),
    );
    let operator = LocalOperator::start_with(
        &dir,
        weir_testkit::free_addr(),
        weir_testkit::free_addr(),
        &["--operator-namespace", "mesh-control"],
    );
    let message = refused(
        &operator,
        "weir-system",
        "mesh",
        "MeshOutsideOperatorNamespace",
    )
    .await;
    assert!(message.contains("mesh-control"), "{message}");
    until_accepted(&operator, "mesh-control", "mesh", "True").await;
    let (configs, _) = discover(operator.listen).await;
    assert_eq!(
        configs["payments"]
            .policy
            .retries
            .as_ref()
            .unwrap()
            .attempts,
        2
    );
    drop(operator);
}
