use super::*;
use crate::snapshot::Versioned;
use weir_proxy_api::{PortConfig, ServiceConfig, Subset};

fn scrape(at: u64, text: &str) -> Option<Arc<Scrape>> {
    Some(Arc::new(
        Scrape::parse(text, Duration::from_secs(at)).unwrap(),
    ))
}

fn proxy(service: &str, before: (u64, &str), after: (u64, &str)) -> ProxyScrapes {
    ProxyScrapes {
        namespace: "shop".into(),
        service: service.into(),
        pod: Some(format!("{service}-1")),
        previous: scrape(before.0, before.1),
        latest: scrape(after.0, after.1),
        ..ProxyScrapes::default()
    }
}

fn payments_split(v1: u32, v2: u32) -> Arc<Snapshot> {
    let mut snapshot = Snapshot::default();
    let subset = |name: &str, weight| Subset {
        name: name.into(),
        weight,
        endpoints: vec!["127.0.0.1:1".parse().unwrap()],
    };
    snapshot.services.insert(
        ServiceKey::new("shop", "payments"),
        Versioned {
            version: 1,
            value: Arc::new(ServiceConfig {
                name: "payments".into(),
                namespace: "shop".into(),
                addresses: vec![],
                subsets: vec![],
                rules: vec![],
                // Routed per port, as the operator writes every Kubernetes Service.
                ports: vec![PortConfig {
                    port: 8080,
                    name: None,
                    addresses: vec![],
                    subsets: vec![subset("v1", v1), subset("v2", v2)],
                    rules: vec![],
                }],
                policy: Default::default(),
            }),
        },
    );
    Arc::new(snapshot)
}

fn context() -> Context {
    Context {
        config: payments_split(90, 10),
        ..Context::default()
    }
}

fn node<'a>(graph: &'a Graph, id: &str) -> &'a ServiceNode {
    graph
        .services
        .iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("no node {id} in {graph:#?}"))
}

fn edge<'a>(graph: &'a Graph, from: &str, to: &str) -> &'a Edge {
    graph
        .edges
        .iter()
        .find(|e| e.from == from && e.to == to)
        .unwrap_or_else(|| panic!("no edge {from} → {to} in {graph:#?}"))
}

/// The orders proxy's calls to payments, scraped at 10 s and two seconds later: a series a row,
/// with its value in each scrape (`-`: not exported yet). In between: 160 more calls to v1 (150
/// OK, 10 answered 503), 40 more to v2 (30 OK and 10 rate-limited with 429); 200 new durations:
/// 100 ≤ 10 ms, 100 in (10 ms, 100 ms].
const ORDERS: &str = r#"
weir_requests_total{code="200",direction="outbound",service="payments",subset="v1"} 100 250
weir_requests_total{code="503",direction="outbound",service="payments",subset="v1"} - 10
weir_requests_total{code="200",direction="outbound",service="payments",subset="v2"} 10 40
weir_requests_total{code="429",direction="outbound",service="payments",subset="v2"} - 10
weir_requests_total{code="503",direction="outbound",service="payments",subset=""} - 0
weir_request_duration_seconds_bucket{direction="outbound",service="payments",subset="v1",le="0.01"} 100 200
weir_request_duration_seconds_bucket{direction="outbound",service="payments",subset="v1",le="0.1"} 100 300
weir_request_duration_seconds_bucket{direction="outbound",service="payments",subset="v1",le="+Inf"} 100 300
weir_circuit_breaker_state{service="payments"} 0 2
weir_endpoints_ejected{service="payments"} - 1
"#;

/// The columns of a two-scrape table such as [`ORDERS`].
const BEFORE: usize = 0;
const AFTER: usize = 1;

/// The `/metrics` text of one scrape of a two-scrape table: a series a row, with its value in
/// the scrape before and in the one after (`-`: not exported in that scrape).
fn scrape_text(table: &str, scrape: usize) -> String {
    table
        .lines()
        .filter(|row| !row.trim().is_empty())
        .filter_map(|row| {
            let mut words = row.rsplitn(3, ' ');
            let (Some(after), Some(before), Some(series)) =
                (words.next(), words.next(), words.next())
            else {
                panic!("a row is `series before after`, not {row:?}");
            };
            let value = [before, after][scrape];
            (value != "-").then(|| format!("{series} {value}\n"))
        })
        .collect()
}

/// A proxy of `service` whose two scrapes, taken at `at` (seconds), are `table`'s.
fn scraped(service: &str, at: (u64, u64), table: &str) -> ProxyScrapes {
    proxy(
        service,
        (at.0, &scrape_text(table, BEFORE)),
        (at.1, &scrape_text(table, AFTER)),
    )
}

/// The orders proxy with both scrapes of [`ORDERS`], at 10 s and 12 s.
fn orders() -> ProxyScrapes {
    scraped("orders", (10, 12), ORDERS)
}

#[test]
fn rates_success_latency_and_the_split_come_from_two_scrapes() {
    let orders = orders();
    let g = graph(&[orders], &context());

    let e = edge(&g, "orders.shop", "payments.shop");
    assert_eq!(e.traffic.requests_per_second, 100.0, "200 calls in 2 s");
    // 10 × 503 and 10 × 429 of 200 fail: neither 5xx nor 429 is success.
    assert_eq!(e.traffic.success_percent, Some(90.0));
    // 200 observations: the median at the top of the first bucket, p99 at rank 198 in the
    // second: 10 ms + 90 ms × 98/100.
    assert_eq!(e.traffic.p50_ms, Some(10.0));
    assert_eq!(e.traffic.p99_ms, Some(98.2));
    assert_eq!(e.breaker.as_deref(), Some("half-open"));
    assert_eq!(e.endpoints_ejected, 1);
    assert!(!e.stale);

    let p = node(&g, "payments.shop");
    assert_eq!(p.proxies, 0, "payments has no proxy of its own here");
    assert_eq!(p.breaker.as_deref(), Some("half-open"));
    assert_eq!(p.endpoints_ejected, 1);
    let v1 = &p.subsets[0];
    assert_eq!(
        (v1.name.as_str(), v1.desired_weight, v1.desired_percent),
        ("v1", Some(90), Some(90.0))
    );
    assert_eq!(v1.observed_percent, Some(80.0));
    assert_eq!(v1.requests_per_second, 80.0);
    assert_eq!(v1.endpoints, 1);
    let v2 = &p.subsets[1];
    assert_eq!(v2.desired_percent, Some(10.0));
    assert_eq!(v2.observed_percent, Some(20.0));

    let o = node(&g, "orders.shop");
    assert_eq!((o.proxies, o.stale), (1, false));
    assert_eq!(o.inbound.requests_per_second, 0.0);
    assert_eq!(o.inbound.success_percent, None, "no calls, no success rate");
}

#[test]
fn inbound_figures_and_refusal_counts_come_from_the_services_own_proxies() {
    let gateway = r#"
weir_requests_total{code="200",direction="inbound",service="gateway",subset=""} 1000 1030
weir_requests_total{code="429",direction="inbound",service="gateway",subset=""} 5 15
weir_rate_limited_total{service="gateway"} 5 15
weir_bulkhead_rejected_total{service="gateway"} 1 3
"#;
    // Two gateway proxies with the same counts: figures add up.
    let g = graph(
        &[
            scraped("gateway", (0, 1), gateway),
            scraped("gateway", (0, 1), gateway),
        ],
        &Context::default(),
    );
    let n = node(&g, "gateway.shop");
    assert_eq!(n.proxies, 2);
    assert_eq!(n.inbound.requests_per_second, 80.0);
    assert_eq!(n.inbound.success_percent, Some(75.0));
    assert_eq!(n.rate_limited_per_second, 20.0);
    assert_eq!(n.rate_limited_total, 30);
    assert_eq!(n.bulkhead_rejected_per_second, 4.0);
    assert_eq!(n.bulkhead_rejected_total, 6);
    assert!(n.subsets.is_empty(), "no config, no callers: no subsets");
    assert!(g.edges.is_empty());
}

#[test]
fn a_restarted_sidecar_never_shows_a_negative_rate() {
    // The counters and buckets went down: the sidecar restarted and counted 20 since.
    let after = r#"
weir_requests_total{code="200",direction="outbound",service="payments",subset="v1"} 20
weir_request_duration_seconds_bucket{direction="outbound",service="payments",subset="v1",le="0.01"} 20
weir_request_duration_seconds_bucket{direction="outbound",service="payments",subset="v1",le="0.1"} 20
weir_request_duration_seconds_bucket{direction="outbound",service="payments",subset="v1",le="+Inf"} 20
weir_rate_limited_total{service="orders"} 2
"#;
    let before = scrape_text(ORDERS, BEFORE) + "weir_rate_limited_total{service=\"orders\"} 50\n";
    let g = graph(&[proxy("orders", (10, &before), (12, after))], &context());
    let e = edge(&g, "orders.shop", "payments.shop");
    assert_eq!(e.traffic.requests_per_second, 10.0, "20 since the restart");
    assert_eq!(e.traffic.success_percent, Some(100.0));
    assert_eq!(
        e.traffic.p99_ms,
        Some(9.9),
        "the restarted histogram counts from zero"
    );
    let p = node(&g, "payments.shop");
    assert_eq!(p.subsets[0].observed_percent, Some(100.0));
    assert_eq!(p.subsets[1].observed_percent, Some(0.0));
    assert_eq!(node(&g, "orders.shop").rate_limited_per_second, 1.0);
}

#[test]
fn a_stale_proxy_keeps_its_last_known_figures_and_says_so() {
    let fresh = orders();
    let mut stale = fresh.clone();
    stale.error = Some("/metrics did not answer within 500ms".into());
    stale.scraped_ago = Some(Duration::from_millis(4500));
    let (a, b) = (graph(&[fresh], &context()), graph(&[stale], &context()));
    assert_eq!(
        edge(&a, "orders.shop", "payments.shop").traffic,
        edge(&b, "orders.shop", "payments.shop").traffic
    );
    assert!(edge(&b, "orders.shop", "payments.shop").stale);
    let o = node(&b, "orders.shop");
    assert!(o.stale);
    assert_eq!((o.proxies, o.stale_proxies), (1, 1));
    assert!(b.proxies[0].stale);
    assert_eq!(b.proxies[0].scraped_ms_ago, Some(4500));
    assert!(b.proxies[0].error.as_deref().unwrap().contains("500ms"));
}

#[test]
fn a_first_scrape_has_no_rates_yet() {
    let mut orders = proxy("orders", (0, ""), (12, &scrape_text(ORDERS, AFTER)));
    orders.previous = None;
    let g = graph(&[orders], &context());
    assert!(g.edges.is_empty(), "no window: no calls seen yet");
    assert_eq!(node(&g, "orders.shop").proxies, 1);
    // Two scrapes at the same instant make no window either (no division by zero).
    let same = proxy(
        "orders",
        (12, &scrape_text(ORDERS, BEFORE)),
        (12, &scrape_text(ORDERS, AFTER)),
    );
    assert!(graph(&[same], &context()).edges.is_empty());
}

#[test]
fn the_callee_namespace_is_the_one_whose_config_the_caller_holds() {
    let mut orders = orders();
    orders.calls = vec![ServiceKey::new("billing", "payments")];
    let g = graph(std::slice::from_ref(&orders), &context());
    edge(&g, "orders.shop", "payments.billing");
    // Held in two namespaces: the caller's own (a bare name resolves there).
    orders.calls.push(ServiceKey::new("shop", "payments"));
    let g = graph(&[orders], &context());
    edge(&g, "orders.shop", "payments.shop");
}

#[test]
fn breakers_take_the_worst_caller_and_ejections_the_most() {
    let a = orders();
    let mut b = proxy(
        "orders",
        (10, &scrape_text(ORDERS, BEFORE)),
        (
            12,
            &scrape_text(ORDERS, AFTER)
                .replace(
                    "state{service=\"payments\"} 2",
                    "state{service=\"payments\"} 1",
                )
                .replace(
                    "ejected{service=\"payments\"} 1",
                    "ejected{service=\"payments\"} 2",
                ),
        ),
    );
    b.pod = Some("orders-2".into());
    let g = graph(&[a, b], &context());
    let e = edge(&g, "orders.shop", "payments.shop");
    assert_eq!(e.breaker.as_deref(), Some("open"));
    assert_eq!(e.endpoints_ejected, 2);
    assert_eq!(e.traffic.requests_per_second, 200.0);
    assert_eq!(node(&g, "payments.shop").breaker.as_deref(), Some("open"));
}

#[test]
fn autoscalers_and_canary_status_pass_through() {
    let mut context = context();
    context.autoscalers = vec![AutoscalerFigures {
        namespace: "shop".into(),
        name: "orders".into(),
        target: "orders".into(),
        desired_replicas: Some(3),
        current_replicas: Some(2),
    }];
    let analysis = serde_json::json!({"phase": "Progressing", "step": 2, "canaryWeight": 25});
    context
        .canaries
        .insert(ServiceKey::new("shop", "payments"), analysis.clone());
    let g = graph(&[orders()], &context);
    assert_eq!(g.autoscalers, context.autoscalers);
    assert_eq!(node(&g, "payments.shop").canary, Some(analysis));
    assert_eq!(node(&g, "orders.shop").canary, None);
    // A rollout of a service nobody calls yet still shows, without traffic figures.
    let quiet = serde_json::json!({"phase": "Progressing", "step": 1, "canaryWeight": 10});
    context
        .canaries
        .insert(ServiceKey::new("shop", "shipping"), quiet.clone());
    let g = graph(&[], &context);
    let shipping = node(&g, "shipping.shop");
    assert_eq!(shipping.canary, Some(quiet));
    assert_eq!(
        (shipping.proxies, shipping.inbound.requests_per_second),
        (0, 0.0)
    );
}

#[test]
fn absurd_numbers_neither_panic_nor_go_negative() {
    let orders = r#"
weir_requests_total{code="200",direction="inbound",service="orders",subset=""} 1e308 -7
weir_requests_total{code="abc",direction="inbound",service="orders",subset=""} 5 1.7976931348623157e308
weir_request_duration_seconds_bucket{direction="inbound",service="orders",subset="",le="1e308"} - 1e308
weir_request_duration_seconds_bucket{direction="inbound",service="orders",subset="",le="+Inf"} - 1e308
weir_rate_limited_total{service="orders"} 1e300 -1
weir_circuit_breaker_state{service="orders"} - 99
"#;
    let g = graph(&[scraped("orders", (0, 1), orders)], &Context::default());
    let json = serde_json::to_string(&g).unwrap();
    assert!(!json.contains("NaN") && !json.contains(":-"), "{json}");
    let o = node(&g, "orders.shop");
    assert!(o.inbound.requests_per_second >= 0.0);
    assert!(o.rate_limited_per_second >= 0.0);
}

#[test]
fn counts_near_the_float_limit_still_give_a_quantile_inside_its_bucket() {
    // Half of 1e308 observations are at most 5 s: bound × count would overflow to infinity,
    // the share of the bucket does not.
    let after = r#"
weir_request_duration_seconds_bucket{direction="inbound",service="orders",subset="",le="10"} 1e308
weir_request_duration_seconds_bucket{direction="inbound",service="orders",subset="",le="+Inf"} 1e308
"#;
    let g = graph(&[proxy("orders", (0, ""), (1, after))], &Context::default());
    assert_eq!(node(&g, "orders.shop").inbound.p50_ms, Some(5000.0));
}
