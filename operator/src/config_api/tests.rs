use super::poll::{ContentRef, ResponseRef, UpdateRef};
use super::routes::MAX_BODY_BYTES;
use super::state::CONNECTED_GRACE;
use super::*;
use crate::metrics::KIND_SERVICE;
use crate::snapshot::ServiceKey;
use http::StatusCode;
use http_body_util::BodyExt;
use std::net::IpAddr;
use weir_proxy_api::Subset;
use weir_proxy_api::protocol::DISCOVERY_PATH;
use weir_proxy_api::protocol::{DiscoveryResponse, ResourceContent, ResourceUpdate};
use weir_proxy_api::{InboundPolicy, ServiceConfig};

fn payments(weight: u32) -> ServiceConfig {
    ServiceConfig {
        name: "payments".into(),
        namespace: "shop".into(),
        addresses: Vec::new(),
        subsets: vec![Subset {
            name: "default".into(),
            weight,
            endpoints: vec!["127.0.0.1:9".parse().unwrap()],
        }],
        rules: Vec::new(),
        ports: Vec::new(),
        policy: Default::default(),
    }
}

fn publish(tx: &watch::Sender<Arc<Snapshot>>, weight: u32) -> u64 {
    let next = tx
        .borrow()
        .next(
            &HashMap::from([(ServiceKey::new("shop", "payments"), payments(weight))]),
            &HashMap::new(),
        )
        .expect("a change");
    let version = next.version;
    tx.send_replace(Arc::new(next));
    version
}

fn api() -> (watch::Sender<Arc<Snapshot>>, Arc<ConfigApi>) {
    let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
    let api = ConfigApi::new(rx, Arc::new(Metrics::new()));
    (tx, api)
}

fn peer() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

fn poll_body(resources: serde_json::Value, extra: serde_json::Value) -> Request<Full<Bytes>> {
    let mut body = serde_json::json!({
        "node": {"service": "checkout", "namespace": "shop", "pod": "checkout-1"},
        "resources": resources,
        "waitSeconds": 5,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    Request::post(DISCOVERY_PATH)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// The answer to a poll of a proxy holding `version` of payments, with `waitSeconds` 0 and
/// `extra` (e.g. what it rejected).
async fn poll_payments(
    api: &ConfigApi,
    version: u64,
    mut extra: serde_json::Value,
) -> serde_json::Value {
    extra["waitSeconds"] = serde_json::json!(0);
    let held = serde_json::json!([{"name": "service/shop/payments", "version": version}]);
    answer(api, poll_body(held, extra)).await.1
}

async fn answer(api: &ConfigApi, request: Request<Full<Bytes>>) -> (StatusCode, serde_json::Value) {
    let response = api.handle(peer(), request).await;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[test]
fn the_borrowed_answer_reads_back_as_the_protocol_type() {
    let config = payments(100);
    let inbound = InboundPolicy::default();
    let borrowed = ResponseRef {
        resources: vec![
            UpdateRef {
                name: "inbound",
                version: 0,
                content: ContentRef::Inbound(&inbound),
            },
            UpdateRef {
                name: "service/shop/payments",
                version: 3,
                content: ContentRef::Service(&config),
            },
            UpdateRef {
                name: "service/shop/nosuch",
                version: 0,
                content: ContentRef::NotFound("why".into()),
            },
        ],
    };
    let typed: DiscoveryResponse =
        serde_json::from_slice(&serde_json::to_vec(&borrowed).unwrap()).unwrap();
    assert_eq!(
        typed,
        DiscoveryResponse {
            resources: vec![
                ResourceUpdate {
                    name: "inbound".into(),
                    version: 0,
                    content: ResourceContent::Inbound(inbound),
                },
                ResourceUpdate {
                    name: "service/shop/payments".into(),
                    version: 3,
                    content: ResourceContent::Service(Box::new(config)),
                },
                ResourceUpdate {
                    name: "service/shop/nosuch".into(),
                    version: 0,
                    content: ResourceContent::NotFound("why".into()),
                },
            ]
        }
    );
}

#[tokio::test]
async fn bad_requests_get_clear_json_errors() {
    let (_tx, api) = api();
    let (status, body) = answer(&api, Request::get("/nope").body(Full::default()).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains(DISCOVERY_PATH));

    let response = api
        .handle(
            peer(),
            Request::get(DISCOVERY_PATH)
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "POST");

    let (status, body) = answer(
        &api,
        Request::post(DISCOVERY_PATH)
            .body(Full::new(Bytes::from_static(b"{not json")))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("not a discovery request")
    );

    let (status, body) = answer(
        &api,
        Request::post(DISCOVERY_PATH)
            .body(Full::new(Bytes::from_static(
                br#"{"node": {"service": "a", "namespace": "b"}, "resources": [{"name": 7}]}"#,
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "resources[0].name", "{body}");

    let (status, body) = answer(
        &api,
        Request::post(DISCOVERY_PATH)
            .body(Full::new(Bytes::from_static(
                br#"{"node": {"service": "A B", "namespace": "b"}, "resources": []}"#,
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "node.service");

    let huge = vec![b' '; MAX_BODY_BYTES + 1];
    let (status, _) = answer(
        &api,
        Request::post(DISCOVERY_PATH)
            .body(Full::new(Bytes::from(huge)))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn answers_at_once_what_differs_and_holds_otherwise() {
    let (tx, api) = api();
    let v1 = publish(&tx, 100);
    let (status, body) = answer(
        &api,
        poll_body(
            serde_json::json!([{"name": "inbound"}, {"name": "service/shop/payments"},
                               {"name": "service/shop/nosuch"}, {"name": "bogus"}]),
            serde_json::json!({}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let answer_: DiscoveryResponse = serde_json::from_value(body).unwrap();
    let by_name: HashMap<_, _> = answer_
        .resources
        .iter()
        .map(|r| (r.name.as_str(), r))
        .collect();
    assert_eq!(by_name["inbound"].version, 0);
    assert_eq!(by_name["service/shop/payments"].version, v1);
    assert_eq!(by_name["service/shop/nosuch"].version, 0);
    match &by_name["service/shop/nosuch"].content {
        ResourceContent::NotFound(why) => {
            assert!(
                why.contains("service nosuch.shop is not known to the control plane"),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        by_name["bogus"].content,
        ResourceContent::NotFound(_)
    ));

    // Holding everything: held until a change, which is then answered.
    let held = serde_json::json!([{"name": "inbound", "version": 0},
        {"name": "service/shop/payments", "version": v1},
        {"name": "service/shop/nosuch", "version": 0}]);
    let api2 = api.clone();
    let request = poll_body(held.clone(), serde_json::json!({}));
    let poll = tokio::spawn(async move { answer(&api2, request).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!poll.is_finished(), "nothing changed: the poll is held");
    assert!(api.proxies()[0].polling);
    let v2 = publish(&tx, 50);
    let (_, body) = tokio::time::timeout(Duration::from_secs(1), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body["resources"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["resources"][0]["version"], v2);

    // waitSeconds 0 and nothing to send: an empty answer at once.
    let body = poll_payments(&api, v2, serde_json::json!({})).await;
    assert_eq!(body, serde_json::json!({"resources": []}));
}

#[tokio::test]
async fn a_rejected_version_is_not_sent_again_to_that_proxy() {
    let (tx, api) = api();
    let v1 = publish(&tx, 100);
    let v2 = publish(&tx, 0);
    let body = poll_payments(&api, v1, serde_json::json!({})).await;
    assert_eq!(body["resources"][0]["version"], v2);
    let body = poll_payments(
        &api,
        v1,
        serde_json::json!({"rejected": [
                {"name": "service/shop/payments", "version": v2, "message": "no weight"}]}),
    )
    .await;
    assert_eq!(body, serde_json::json!({"resources": []}));
    assert_eq!(
        api.metrics
            .config_rejected
            .with_label_values(&[KIND_SERVICE])
            .get(),
        1
    );
    assert_eq!(api.proxies()[0].rejected["service/shop/payments"], v2);
    // A later version goes out, and the memory of the rejection is gone.
    let v3 = publish(&tx, 100);
    let body = poll_payments(&api, v1, serde_json::json!({})).await;
    assert_eq!(body["resources"][0]["version"], v3);
    assert!(api.proxies()[0].rejected.is_empty());
}

#[test]
fn an_inbound_listener_matches_its_port_on_its_ip_or_on_any_when_unspecified() {
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    // (case, inbound listener, where its polls come from, endpoint, rank)
    #[rustfmt::skip]
    let cases = [
        ("same IP", "127.0.0.1:19000", "127.0.0.1", "127.0.0.1:19000", Some(2)),
        // The peer does not matter for an exact IP.
        ("same IP, polls from elsewhere", "127.0.0.1:19000", "10.0.0.9", "127.0.0.1:19000", Some(2)),
        ("unspecified, polls from there", "0.0.0.0:19000", "127.0.0.1", "127.0.0.1:19000", Some(1)),
        ("unspecified, polls from elsewhere", "0.0.0.0:19000", "10.0.0.9", "127.0.0.1:19000", Some(0)),
        ("unspecified v6, v4 endpoint", "[::]:19000", "127.0.0.1", "127.0.0.1:19000", Some(1)),
        ("unspecified v6", "[::]:19000", "::1", "[::1]:19000", Some(1)),
        ("unspecified, another host", "0.0.0.0:19000", "127.0.0.1", "10.1.2.3:19000", Some(0)),
        // Another port, or another (specified) IP: not this listener.
        ("another port", "127.0.0.1:19001", "127.0.0.1", "127.0.0.1:19000", None),
        ("unspecified, another port", "0.0.0.0:19001", "127.0.0.1", "127.0.0.1:19000", None),
        ("another IP", "127.0.0.2:19000", "127.0.0.1", "127.0.0.1:19000", None),
        ("another family", "[::1]:19000", "::1", "127.0.0.1:19000", None),
    ];
    for (case, inbound, peer, endpoint, rank) in cases {
        assert_eq!(
            inbound_match(addr(inbound), ip(peer), addr(endpoint)),
            rank,
            "{case}"
        );
    }

    assert_eq!(
        reachable_admin(addr("127.0.0.1:15020"), addr("10.1.2.3:8080")),
        addr("127.0.0.1:15020")
    );
    assert_eq!(
        reachable_admin(addr("0.0.0.0:15020"), addr("10.1.2.3:8080")),
        addr("10.1.2.3:15020")
    );
}

#[tokio::test(start_paused = true)]
async fn the_admin_of_a_connected_proxy_is_found_by_its_inbound_address() {
    let (_tx, api) = api();
    let node = |pod: &str, inbound: &str, admin: Option<&str>| {
        let mut node = serde_json::json!(
            {"service": "orders", "namespace": "shop", "pod": pod, "inbound": inbound});
        if let Some(admin) = admin {
            node["admin"] = admin.into();
        }
        serde_json::json!({"node": node, "waitSeconds": 0})
    };
    let inbound = serde_json::json!([{"name": "inbound"}]);
    for extra in [
        node("orders-1", "127.0.0.1:19001", Some("127.0.0.1:15021")),
        node("orders-2", "0.0.0.0:19002", Some("0.0.0.0:15022")),
        node("orders-3", "127.0.0.1:19003", None),
    ] {
        let (status, _) = answer(&api, poll_body(inbound.clone(), extra)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    #[rustfmt::skip]
    let cases = [
        ("exact inbound address", "shop", "orders", "127.0.0.1:19001", Some("127.0.0.1:15021")),
        // An unspecified inbound IP matches any IP; an unspecified admin IP is dialed there.
        ("unspecified, same host", "shop", "orders", "127.0.0.1:19002", Some("127.0.0.1:15022")),
        ("unspecified, other host", "shop", "orders", "10.0.0.7:19002", Some("10.0.0.7:15022")),
        ("no admin named", "shop", "orders", "127.0.0.1:19003", None),
        ("another IP", "shop", "orders", "127.0.0.2:19001", None),
        ("another port", "shop", "orders", "127.0.0.1:19009", None),
        ("another service", "shop", "payments", "127.0.0.1:19001", None),
        ("another namespace", "other", "orders", "127.0.0.1:19001", None),
    ];
    for (case, namespace, service, endpoint, admin) in cases {
        assert_eq!(
            api.admin_of(namespace, service, addr(endpoint)),
            admin.map(addr),
            "{case}"
        );
    }
    // `/proxies` shows the listeners.
    let listed = api.proxies();
    assert_eq!(listed[0].node.inbound, Some(addr("127.0.0.1:19001")));
    assert_eq!(listed[0].node.admin, Some(addr("127.0.0.1:15021")));
    let json = serde_json::to_value(&listed[0]).unwrap();
    assert_eq!(json["node"]["inbound"], "127.0.0.1:19001");
    assert_eq!(json["node"]["admin"], "127.0.0.1:15021");

    // An exact IP wins over an unspecified one, whichever polled last.
    let (status, _) = answer(
        &api,
        poll_body(
            inbound.clone(),
            node("orders-4", "0.0.0.0:19001", Some("127.0.0.1:15024")),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        api.admin_of("shop", "orders", addr("127.0.0.1:19001")),
        Some(addr("127.0.0.1:15021"))
    );
    // A proxy restarted under the same pod name on other ports: the new ones count.
    answer(
        &api,
        poll_body(
            inbound.clone(),
            node("orders-1", "127.0.0.1:19011", Some("127.0.0.1:15031")),
        ),
    )
    .await;
    assert_eq!(
        api.admin_of("shop", "orders", addr("127.0.0.1:19011")),
        Some(addr("127.0.0.1:15031"))
    );
    assert_eq!(
        api.admin_of("shop", "orders", addr("127.0.0.1:19001")),
        Some(addr("127.0.0.1:15024")),
        "the unspecified listener is the only one left on that port"
    );

    // Not connected any more (no poll for waitSeconds + 10 s): not found.
    tokio::time::advance(CONNECTED_GRACE + Duration::from_secs(1)).await;
    assert_eq!(
        api.admin_of("shop", "orders", addr("127.0.0.1:19011")),
        None
    );
    assert_eq!(
        api.admin_of("shop", "orders", addr("127.0.0.1:19002")),
        None
    );
}

#[tokio::test]
async fn a_node_without_listeners_is_still_served() {
    let (_tx, api) = api();
    let (status, body) = answer(
        &api,
        poll_body(
            serde_json::json!([{"name": "inbound"}]),
            serde_json::json!({"waitSeconds": 0}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["resources"][0]["name"], "inbound");
    let listed = api.proxies();
    assert_eq!((listed[0].node.inbound, listed[0].node.admin), (None, None));
    let json = serde_json::to_value(&listed[0]).unwrap();
    assert!(json["node"].get("inbound").is_none(), "{json}");
}

#[tokio::test(start_paused = true)]
async fn a_proxy_that_ignores_an_answer_gets_it_again_with_backoff() {
    let (tx, api) = api();
    let v1 = publish(&tx, 100);
    let poll = || {
        poll_body(
            serde_json::json!([{"name": "service/shop/payments", "version": 0}]),
            serde_json::json!({"waitSeconds": 30}),
        )
    };
    let t0 = Instant::now();
    let (_, body) = answer(&api, poll()).await;
    assert_eq!(body["resources"][0]["version"], v1);
    assert_eq!(t0.elapsed(), Duration::ZERO);
    let (_, body) = answer(&api, poll()).await;
    assert_eq!(body["resources"][0]["version"], v1);
    assert_eq!(t0.elapsed(), Duration::from_millis(250));
    answer(&api, poll()).await;
    assert_eq!(t0.elapsed(), Duration::from_millis(750));
}
