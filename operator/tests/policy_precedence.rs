//! ResiliencePolicy defaults (`targetRef.kind` Namespace and Mesh), `mode: DryRun`, the new
//! blocks and fields, and the effective limits in status: the pure translation, without a
//! cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use weir_crds::*;
use weir_operator::snapshot::ServiceKey;
use weir_operator::translate::{
    EndpointInfo, Inputs, ServiceInfo, Translation, Verdict, translate,
};
use weir_proxy_api as api;

/// A policy from its `targetRef` and the rest of its spec as YAML, `age` seconds after a fixed
/// instant (a larger age is a younger policy).
fn policy(namespace: &str, name: &str, target: &str, yaml: &str, age: i64) -> ResiliencePolicy {
    let spec: ResiliencePolicySpec =
        serde_saphyr::from_str(&format!("targetRef: {target}\n{yaml}")).unwrap();
    let mut p = ResiliencePolicy::new(name, spec);
    p.metadata.namespace = Some(namespace.into());
    p.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + age).unwrap(),
    ));
    p
}

/// `shop/payments` with `pods` endpoints, `shop/orders` with 2 and `search/search` with 1.
fn mesh(payments_pods: u16) -> (Vec<ServiceInfo>, Vec<EndpointInfo>) {
    let mut services = Vec::new();
    let mut endpoints = Vec::new();
    for (namespace, name, pods, base) in [
        ("shop", "payments", payments_pods, 9100),
        ("shop", "orders", 2, 9200),
        ("search", "search", 1, 9300),
    ] {
        let key = ServiceKey::new(namespace, name);
        services.push(ServiceInfo::routed_as_one(key.clone()));
        for i in 0..pods {
            endpoints.push(EndpointInfo {
                service: key.clone(),
                port: None,
                address: SocketAddr::from(([127, 0, 0, 1], base + i)),
                labels: Arc::new(BTreeMap::new()),
            });
        }
    }
    (services, endpoints)
}

fn run(policies: &[ResiliencePolicy], operator_namespace: Option<&str>) -> Translation {
    run_after(policies, operator_namespace, 3, &Translation::default())
}

fn run_after(
    policies: &[ResiliencePolicy],
    operator_namespace: Option<&str>,
    payments_pods: u16,
    previous: &Translation,
) -> Translation {
    let (services, endpoints) = mesh(payments_pods);
    translate(
        &Inputs {
            splits: &[],
            policies,
            services: &services,
            endpoints: &endpoints,
            operator_namespace,
        },
        previous,
    )
}

fn policy_of<'a>(out: &'a Translation, namespace: &str, name: &str) -> &'a api::Policy {
    &out.services[&ServiceKey::new(namespace, name)].policy
}

fn inbound_of(out: &Translation, namespace: &str, name: &str) -> api::InboundPolicy {
    out.inbound
        .get(&ServiceKey::new(namespace, name))
        .cloned()
        .unwrap_or_default()
}

fn verdict<'a>(out: &'a Translation, namespace: &str, name: &str) -> &'a Verdict {
    out.verdicts
        .iter()
        .find(|v| v.namespace == namespace && v.name == name)
        .unwrap_or_else(|| panic!("no verdict for {namespace}/{name}"))
}

/// The `status.effectiveLimits` of the policy `namespace/name`.
fn limits<'a>(out: &'a Translation, namespace: &str, name: &str) -> Option<&'a str> {
    verdict(out, namespace, name).effective_limits.as_deref()
}

/// The message of the policy `namespace/name`'s `Accepted` condition.
fn message<'a>(out: &'a Translation, namespace: &str, name: &str) -> Option<&'a str> {
    verdict(out, namespace, name).message.as_deref()
}

fn refusal(out: &Translation, namespace: &str, name: &str) -> (&'static str, String) {
    let refused = verdict(out, namespace, name)
        .accepted
        .clone()
        .expect_err("refused");
    (refused.reason, refused.message)
}

fn attempts(policy: &api::Policy) -> Option<u32> {
    policy.retries.as_ref().map(|r| r.attempts)
}

fn request_timeout(policy: &api::Policy) -> Option<String> {
    policy
        .timeouts
        .as_ref()
        .and_then(|t| t.request)
        .map(|d| d.to_string())
}

#[test]
fn per_block_the_service_wins_over_the_namespace_over_the_mesh() {
    let policies = [
        policy(
            "weir-system",
            "mesh-defaults",
            "{kind: Mesh}",
            "timeouts: {request: 30s}\nretries: {attempts: 1}\nloadBalancer: {policy: ewma}\n\
             rateLimit: {requestsPerSecond: 500, burst: 50}",
            0,
        ),
        policy(
            "shop",
            "shop-defaults",
            "{kind: Namespace, name: shop}",
            "retries: {attempts: 2}\ncircuitBreaker: {failureThreshold: 5}",
            0,
        ),
        policy(
            "shop",
            "payments",
            "{kind: Service, name: payments}",
            "retries: {attempts: 3}\ntimeouts: {perTry: 2s}\nbulkhead: {maxConcurrent: 10}",
            0,
        ),
    ];
    let out = run(&policies, None);
    for v in &out.verdicts {
        assert_eq!(v.accepted, Ok(()), "{}/{}", v.namespace, v.name);
    }

    let payments = policy_of(&out, "shop", "payments");
    assert_eq!(attempts(payments), Some(3), "the Service's retries");
    // The Service's timeouts block replaces the mesh's whole: no 30s request timeout.
    assert_eq!(request_timeout(payments), None);
    assert_eq!(
        payments
            .timeouts
            .as_ref()
            .unwrap()
            .per_try
            .unwrap()
            .to_string(),
        "2s"
    );
    assert_eq!(
        payments.circuit_breaker.as_ref().unwrap().failure_threshold,
        Some(5),
        "the namespace's breaker"
    );
    assert_eq!(
        payments.load_balancer.as_ref().unwrap().policy,
        api::LoadBalancerPolicy::Ewma,
        "the mesh's balancer"
    );
    let payments_in = inbound_of(&out, "shop", "payments");
    assert_eq!(payments_in.bulkhead.unwrap().max_concurrent, 10);
    assert_eq!(payments_in.rate_limit.unwrap().requests_per_second, 500.0);
    // Inbound timeouts travel with the timeouts block: the Service's sets no request timeout.
    assert_eq!(payments_in.timeouts, None);

    let orders = policy_of(&out, "shop", "orders");
    assert_eq!(attempts(orders), Some(2), "the namespace's retries");
    assert_eq!(request_timeout(orders).as_deref(), Some("30s"));
    assert!(orders.circuit_breaker.is_some());
    assert_eq!(
        inbound_of(&out, "shop", "orders")
            .timeouts
            .and_then(|t| t.request)
            .map(|d| d.to_string())
            .as_deref(),
        Some("30s")
    );

    let search = policy_of(&out, "search", "search");
    assert_eq!(attempts(search), Some(1), "only the mesh reaches search");
    assert_eq!(search.circuit_breaker, None);
    assert_eq!(request_timeout(search).as_deref(), Some("30s"));

    // How far each default reaches, in its Accepted message.
    for (namespace, name, want) in [
        (
            "shop",
            "shop-defaults",
            Some("The spec is valid; it gives defaults to 2 services in namespace shop"),
        ),
        (
            "weir-system",
            "mesh-defaults",
            Some("The spec is valid; it gives mesh-wide defaults to 3 services"),
        ),
        ("shop", "payments", None),
    ] {
        assert_eq!(message(&out, namespace, name), want, "{namespace}/{name}");
    }
}

#[test]
fn without_any_policy_nothing_is_set() {
    let out = run(&[], None);
    assert_eq!(policy_of(&out, "shop", "payments"), &api::Policy::default());
    assert!(out.inbound.is_empty());
}

#[test]
fn two_policies_for_one_target_and_level_conflict_and_the_oldest_wins() {
    let policies = [
        // Younger first: the order of the inputs must not matter.
        policy(
            "shop",
            "svc-b",
            "{kind: Service, name: payments}",
            "retries: {attempts: 5}",
            20,
        ),
        policy(
            "shop",
            "svc-a",
            "{kind: Service, name: payments}",
            "retries: {attempts: 4}",
            10,
        ),
        policy(
            "shop",
            "ns-b",
            "{kind: Namespace, name: shop}",
            "retries: {attempts: 7}",
            20,
        ),
        policy(
            "shop",
            "ns-a",
            "{kind: Namespace, name: shop}",
            "retries: {attempts: 6}",
            10,
        ),
        policy(
            "weir-system",
            "mesh-b",
            "{kind: Mesh}",
            "retries: {attempts: 9}",
            20,
        ),
        policy(
            "weir-system",
            "mesh-a",
            "{kind: Mesh}",
            "retries: {attempts: 8}",
            10,
        ),
        // Same age: the name decides.
        policy(
            "weir-system",
            "mesh-0",
            "{kind: Mesh, name: anything}",
            "retries: {attempts: 10}",
            10,
        ),
    ];
    let out = run(&policies, None);
    assert_eq!(attempts(policy_of(&out, "shop", "payments")), Some(4));
    assert_eq!(attempts(policy_of(&out, "shop", "orders")), Some(6));
    assert_eq!(attempts(policy_of(&out, "search", "search")), Some(10));
    for (namespace, name, message) in [
        (
            "shop",
            "svc-b",
            "Service payments already has an older ResiliencePolicy",
        ),
        (
            "shop",
            "ns-b",
            "namespace shop already has an older ResiliencePolicy of kind Namespace",
        ),
        (
            "weir-system",
            "mesh-a",
            "the mesh already has an older ResiliencePolicy of kind Mesh",
        ),
        (
            "weir-system",
            "mesh-b",
            "the mesh already has an older ResiliencePolicy of kind Mesh",
        ),
    ] {
        let (reason, text) = refusal(&out, namespace, name);
        assert_eq!(reason, "Conflict", "{name}");
        assert!(text.contains(message), "{name}: {text}");
    }
    for (namespace, name) in [
        ("shop", "svc-a"),
        ("shop", "ns-a"),
        ("weir-system", "mesh-0"),
    ] {
        assert_eq!(verdict(&out, namespace, name).accepted, Ok(()), "{name}");
    }
}

#[test]
fn a_mesh_policy_counts_only_in_the_operators_namespace() {
    let policies = [
        policy(
            "shop",
            "sneaky",
            "{kind: Mesh}",
            "retries: {attempts: 9}",
            0,
        ),
        policy(
            "weir-system",
            "mesh",
            "{kind: Mesh}",
            "retries: {attempts: 1}",
            10,
        ),
    ];
    let out = run(&policies, None);
    let (reason, message) = refusal(&out, "shop", "sneaky");
    assert_eq!(reason, "MeshOutsideOperatorNamespace");
    assert!(message.contains("weir-system"), "{message}");
    assert_eq!(attempts(policy_of(&out, "shop", "payments")), Some(1));

    // Another operator namespace: only a Mesh policy there counts.
    let policies = [
        policy(
            "weir-system",
            "mesh",
            "{kind: Mesh}",
            "retries: {attempts: 1}",
            0,
        ),
        policy(
            "mesh-control",
            "mesh",
            "{kind: Mesh}",
            "retries: {attempts: 2}",
            10,
        ),
    ];
    let out = run(&policies, Some("mesh-control"));
    assert_eq!(
        refusal(&out, "weir-system", "mesh").0,
        "MeshOutsideOperatorNamespace"
    );
    assert_eq!(verdict(&out, "mesh-control", "mesh").accepted, Ok(()));
    assert_eq!(attempts(policy_of(&out, "search", "search")), Some(2));
}

#[test]
fn a_namespace_policy_gives_defaults_to_its_own_namespace_only() {
    let policies = [
        policy(
            "shop",
            "elsewhere",
            "{kind: Namespace, name: search}",
            "retries: {attempts: 9}",
            0,
        ),
        // A namespace without Services: accepted, never TargetNotFound.
        policy(
            "empty",
            "defaults",
            "{kind: Namespace, name: empty}",
            "retries: {attempts: 1}",
            0,
        ),
        policy("shop", "what", "{kind: Deployment, name: payments}", "", 0),
    ];
    let out = run(&policies, None);
    let (reason, message) = refusal(&out, "shop", "elsewhere");
    assert_eq!(reason, "InvalidTarget");
    assert!(message.starts_with("targetRef.name:"), "{message}");
    assert!(message.contains("must be shop"), "{message}");
    assert_eq!(policy_of(&out, "search", "search").retries, None);
    let empty = verdict(&out, "empty", "defaults");
    assert_eq!(empty.accepted, Ok(()));
    assert_eq!(
        empty.message.as_deref(),
        Some("The spec is valid; it gives defaults to 0 services in namespace empty")
    );
    assert_eq!(refusal(&out, "shop", "what").0, "InvalidTarget");
}

#[test]
fn dry_run_marks_every_block_and_leaves_balancing_and_fallback_to_the_next_level() {
    let policies = [
        policy(
            "shop",
            "defaults",
            "{kind: Namespace, name: shop}",
            "loadBalancer: {policy: round-robin}\nfallback: {status: 200, body: ok}\n\
             retries: {attempts: 1}",
            0,
        ),
        policy(
            "shop",
            "payments",
            "{kind: Service, name: payments}",
            "mode: DryRun\n\
             timeouts: {request: 1s}\n\
             retries: {attempts: 2}\n\
             circuitBreaker: {failureRate: 0.5}\n\
             outlierDetection: {consecutive5xxErrors: 3}\n\
             faults: {abort: {percent: 50, status: 503}}\n\
             loadBalancer: {policy: ewma}\n\
             fallback: {status: 503, body: dry}\n\
             rateLimit: {requestsPerSecond: 10, burst: 1}\n\
             bulkhead: {maxConcurrent: 1}",
            0,
        ),
    ];
    let out = run(&policies, None);
    let p = policy_of(&out, "shop", "payments");
    assert!(p.timeouts.as_ref().unwrap().dry_run);
    assert!(p.retries.as_ref().unwrap().dry_run);
    assert_eq!(
        attempts(p),
        Some(2),
        "the dry-run retries replace the namespace's"
    );
    assert!(p.circuit_breaker.as_ref().unwrap().dry_run);
    assert!(p.outlier_detection.as_ref().unwrap().dry_run);
    assert!(p.faults.as_ref().unwrap().dry_run);
    assert_eq!(
        p.load_balancer.as_ref().unwrap().policy,
        api::LoadBalancerPolicy::RoundRobin,
        "a dry run balances nothing: the namespace's balancer applies"
    );
    assert_eq!(p.fallback.as_ref().unwrap().body, "ok");
    let inbound = inbound_of(&out, "shop", "payments");
    assert!(inbound.timeouts.unwrap().dry_run);
    assert!(inbound.rate_limit.unwrap().dry_run);
    assert!(inbound.bulkhead.unwrap().dry_run);
    assert_eq!(
        limits(&out, "shop", "payments"),
        Some(
            "10 rps per pod × 3 pods = 30 rps (dry run); bulkhead 1 per pod × 3 pods = 3 (dry run)"
        )
    );

    // Enforced, the same blocks are not marked.
    let out = run(
        &[policy(
            "shop",
            "payments",
            "{kind: Service, name: payments}",
            "mode: Enforce\nretries: {attempts: 2}\nrateLimit: {requestsPerSecond: 10, burst: 1}",
            0,
        )],
        None,
    );
    assert!(
        !policy_of(&out, "shop", "payments")
            .retries
            .as_ref()
            .unwrap()
            .dry_run
    );
    assert!(
        !inbound_of(&out, "shop", "payments")
            .rate_limit
            .unwrap()
            .dry_run
    );
}

#[test]
fn faults_the_failure_rate_breaker_and_the_new_retry_classes_are_translated() {
    let out = run(
        &[policy(
            "shop",
            "payments",
            "{kind: Service, name: payments}",
            "faults: {delay: {percent: 0.5, duration: 200ms}, abort: {percent: 5, status: 503}}\n\
             circuitBreaker: {failureRate: 0.25, window: 30s, minRequests: 50}\n\
             retries: {attempts: 2, retryOn: ['429', cancelled, deadline-exceeded, \
             resource-exhausted, unavailable]}",
            0,
        )],
        None,
    );
    let p = policy_of(&out, "shop", "payments");
    assert_eq!(
        p.faults,
        Some(api::Faults {
            delay: Some(api::FaultDelay {
                percent: 0.5,
                duration: "200ms".parse().unwrap(),
            }),
            abort: Some(api::FaultAbort {
                percent: 5.0,
                status: 503,
            }),
            dry_run: false,
        })
    );
    let cb = p.circuit_breaker.as_ref().unwrap();
    assert_eq!(cb.failure_threshold, None);
    assert_eq!(cb.failure_rate, Some(0.25));
    assert_eq!(cb.window.to_string(), "30s");
    assert_eq!(cb.min_requests, 50);
    assert_eq!(
        p.retries.as_ref().unwrap().retry_on,
        vec![
            api::RetryOn::TooManyRequests,
            api::RetryOn::Cancelled,
            api::RetryOn::DeadlineExceeded,
            api::RetryOn::ResourceExhausted,
            api::RetryOn::Unavailable,
        ]
    );
    // Unset, the breaker's window and minimum take the contract's defaults.
    let out = run(
        &[policy(
            "shop",
            "payments",
            "{kind: Service, name: payments}",
            "circuitBreaker: {failureThreshold: 3}",
            0,
        )],
        None,
    );
    let cb = policy_of(&out, "shop", "payments")
        .circuit_breaker
        .clone()
        .unwrap();
    assert_eq!(
        (
            cb.failure_threshold,
            cb.failure_rate,
            cb.window,
            cb.min_requests
        ),
        (
            Some(3),
            None,
            api::CircuitBreaker::default_window(),
            api::CircuitBreaker::default_min_requests()
        )
    );
}

#[test]
fn every_new_bound_is_checked_and_the_refusal_names_the_field() {
    for (yaml, field) in [
        (
            "faults: {delay: {percent: 100.5, duration: 1s}}",
            "spec.faults.delay.percent",
        ),
        (
            "faults: {delay: {percent: -1, duration: 1s}}",
            "spec.faults.delay.percent",
        ),
        (
            "faults: {delay: {percent: 10, duration: 25h}}",
            "spec.faults.delay.duration",
        ),
        (
            "faults: {delay: {percent: 10, duration: soon}}",
            "spec.faults.delay.duration",
        ),
        (
            "faults: {abort: {percent: 101, status: 503}}",
            "spec.faults.abort.percent",
        ),
        (
            "faults: {abort: {percent: 5, status: 102}}",
            "spec.faults.abort.status",
        ),
        (
            "faults: {abort: {percent: 5, status: 70000}}",
            "spec.faults.abort.status",
        ),
        (
            "circuitBreaker: {failureRate: 1.5}",
            "spec.circuitBreaker.failureRate",
        ),
        (
            "circuitBreaker: {failureRate: .nan}",
            "spec.circuitBreaker.failureRate",
        ),
        (
            "circuitBreaker: {failureRate: 0.5, window: 500ms}",
            "spec.circuitBreaker.window",
        ),
        (
            "circuitBreaker: {failureRate: 0.5, window: 25h}",
            "spec.circuitBreaker.window",
        ),
        (
            "circuitBreaker: {failureRate: 0.5, minRequests: 0}",
            "spec.circuitBreaker.minRequests",
        ),
        (
            "circuitBreaker: {failureRate: 0.5, minRequests: -3}",
            "spec.circuitBreaker.minRequests",
        ),
        (
            "circuitBreaker: {failureThreshold: 0}",
            "spec.circuitBreaker.failureThreshold",
        ),
        ("circuitBreaker: {openDuration: 1s}", "spec.circuitBreaker"),
    ] {
        for target in [
            "{kind: Service, name: payments}",
            "{kind: Namespace, name: shop}",
        ] {
            let out = run(&[policy("shop", "p", target, yaml, 0)], None);
            let (reason, message) = refusal(&out, "shop", "p");
            assert_eq!(reason, "Invalid", "{yaml}: {message}");
            assert!(
                message.starts_with(&format!("{field}:")),
                "{yaml}: {message}"
            );
        }
    }
}

#[test]
fn a_refused_default_keeps_its_last_good_blocks_at_its_level_only() {
    let good = [
        policy(
            "shop",
            "defaults",
            "{kind: Namespace, name: shop}",
            "retries: {attempts: 2}",
            0,
        ),
        policy(
            "shop",
            "payments",
            "{kind: Service, name: payments}",
            "timeouts: {request: 5s}",
            0,
        ),
    ];
    let first = run(&good, None);
    let bad = [
        policy(
            "shop",
            "defaults",
            "{kind: Namespace, name: shop}",
            "retries: {attempts: 11}",
            0,
        ),
        // The Service's own policy still changes while the default is refused.
        policy(
            "shop",
            "payments",
            "{kind: Service, name: payments}",
            "timeouts: {request: 7s}",
            0,
        ),
    ];
    let second = run_after(&bad, None, 3, &first);
    let (reason, message) = refusal(&second, "shop", "defaults");
    assert_eq!(reason, "Invalid");
    assert!(message.starts_with("spec.retries.attempts:"), "{message}");
    for name in ["payments", "orders"] {
        assert_eq!(
            attempts(policy_of(&second, "shop", name)),
            Some(2),
            "{name}"
        );
    }
    assert_eq!(
        request_timeout(policy_of(&second, "shop", "payments")).as_deref(),
        Some("7s")
    );
    // And the kept blocks survive another round of the refusal.
    let third = run_after(&bad, None, 3, &second);
    assert_eq!(attempts(policy_of(&third, "shop", "orders")), Some(2));
}

#[test]
fn status_gives_the_effective_limits_across_the_targets_current_pods() {
    let policies = [
        policy(
            "shop",
            "payments",
            "{kind: Service, name: payments}",
            "rateLimit: {requestsPerSecond: 100, burst: 20}\nbulkhead: {maxConcurrent: 10}",
            0,
        ),
        policy(
            "shop",
            "defaults",
            "{kind: Namespace, name: shop}",
            "rateLimit: {requestsPerSecond: 50, burst: 5, key: source}",
            0,
        ),
        policy(
            "weir-system",
            "mesh",
            "{kind: Mesh}",
            "retries: {attempts: 1}",
            0,
        ),
    ];
    let out = run(&policies, None);
    for (namespace, name, want) in [
        (
            "shop",
            "payments",
            Some("100 rps per pod × 3 pods = 300 rps; bulkhead 10 per pod × 3 pods = 30"),
        ),
        // The namespace's limit is in force only where no Service policy sets one: orders' 2
        // pods.
        (
            "shop",
            "defaults",
            Some("50 rps per key per pod × 2 pods of 1 service = 100 rps per key"),
        ),
        ("weir-system", "mesh", None),
    ] {
        assert_eq!(limits(&out, namespace, name), want, "{namespace}/{name}");
    }

    // A pod more (or less) changes the totals.
    let out = run_after(&policies, None, 1, &out);
    assert_eq!(
        limits(&out, "shop", "payments"),
        Some("100 rps per pod × 1 pod = 100 rps; bulkhead 10 per pod × 1 pod = 10")
    );
    let out = run_after(&policies, None, 0, &out);
    assert_eq!(
        limits(&out, "shop", "payments"),
        Some("100 rps per pod × 0 pods = 0 rps; bulkhead 10 per pod × 0 pods = 0")
    );
}

#[test]
fn the_defaults_example_translates_as_its_comments_say() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/policies/defaults.yaml"
    ))
    .unwrap();
    let policies: Vec<ResiliencePolicy> = serde_saphyr::from_multiple(&text).unwrap();
    assert_eq!(policies.len(), 3);
    let out = run(&policies, None);
    for v in &out.verdicts {
        assert_eq!(v.accepted, Ok(()), "{}/{}", v.namespace, v.name);
    }
    let payments = policy_of(&out, "shop", "payments");
    assert_eq!(attempts(payments), Some(3));
    assert_eq!(request_timeout(payments).as_deref(), Some("15s"));
    assert!(payments.circuit_breaker.as_ref().unwrap().dry_run);
    assert_eq!(
        payments
            .faults
            .as_ref()
            .unwrap()
            .abort
            .as_ref()
            .unwrap()
            .status,
        503
    );
    let orders = policy_of(&out, "shop", "orders");
    assert_eq!(attempts(orders), Some(2));
    assert!(orders.retries.as_ref().unwrap().dry_run);
    assert_eq!(orders.faults, None);
    assert!(
        inbound_of(&out, "shop", "orders")
            .rate_limit
            .unwrap()
            .dry_run
    );
    let search = policy_of(&out, "search", "search");
    assert_eq!(attempts(search), Some(1));
    assert_eq!(search.circuit_breaker, None);
}
