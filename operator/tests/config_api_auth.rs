//! The config API in a cluster: every poll presents its pod's projected ServiceAccount token,
//! checked by TokenReview against the in-process fake API server (`fake_api`); the proxy's
//! namespace and pod are the token's. Poll bodies are bounded.

mod cluster;
mod fake_api;

use bytes::Bytes;
use cluster::{fixed_snapshot, payments_config};
use fake_api::FakeApi;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use weir_operator::config_api::ConfigApi;
use weir_operator::kubernetes::token_review::TokenReviewer;
use weir_operator::metrics::Metrics;

const REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// A config API that requires tokens, serving `payments` in `shop`.
fn config_api(api: &FakeApi) -> Arc<ConfigApi> {
    let endpoint = "10.0.0.1:8080".parse().unwrap();
    let rx = fixed_snapshot(vec![payments_config(&[endpoint])]); // the snapshot never changes
    let config_api = ConfigApi::new(rx, Arc::new(Metrics::new()));
    let client = weir_operator::kubernetes::client::client(api.config()).unwrap();
    config_api.require_authentication(Arc::new(TokenReviewer::new(client)));
    config_api
}

fn peer() -> SocketAddr {
    "10.1.2.3:40000".parse().unwrap()
}

/// A poll claiming to be `pod` in `namespace`, naming `resources` resources.
fn poll(token: Option<&str>, namespace: &str, pod: &str, resources: usize) -> Request<Full<Bytes>> {
    let names: Vec<Value> = (0..resources)
        .map(|i| {
            if i == 0 {
                json!({"name": "service/shop/payments"})
            } else {
                json!({"name": format!("service/shop/s{i}")})
            }
        })
        .collect();
    let body = json!({
        "node": {"service": "checkout", "namespace": namespace, "pod": pod},
        "resources": names,
        "waitSeconds": 0,
    });
    let mut request = Request::post("/v1/discovery");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    request
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn answer(
    api: &ConfigApi,
    request: Request<Full<Bytes>>,
) -> (StatusCode, http::HeaderMap, Value) {
    let response = api.handle(peer(), request).await;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

fn reviews(api: &FakeApi) -> Vec<fake_api::Recorded> {
    api.requests()
        .into_iter()
        .filter(|r| r.path == REVIEWS)
        .collect()
}

/// Asserts that checkout-1's poll presenting `token` is refused while the review it causes fails
/// with `code` and `reason`.
async fn refused_while_review_fails(
    api: &FakeApi,
    config_api: &Arc<ConfigApi>,
    token: Option<&str>,
    (code, reason): (u16, &str),
) {
    api.fail("POST", "/tokenreviews", code, reason, 1);
    let status = status_of(config_api, token, "checkout-1").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{code} {reason}");
}

/// The status of one poll for one resource by pod `pod` of shop, presenting `token`.
async fn status_of(config_api: &Arc<ConfigApi>, token: Option<&str>, pod: &str) -> StatusCode {
    answer(config_api, poll(token, "shop", pod, 1)).await.0
}

#[tokio::test]
async fn a_poll_without_a_token_the_api_server_vouches_for_is_refused() {
    let api = FakeApi::start().await;
    api.add_token("other-audience", "shop", "checkout-1", &["vault"]);
    let config_api = config_api(&api);

    let (status, headers, body) = answer(&config_api, poll(None, "shop", "checkout-1", 1)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert!(
        body["error"].as_str().unwrap().contains("audience weir"),
        "{body}"
    );
    assert!(reviews(&api).is_empty(), "no token, no review");

    for token in ["made-up", "other-audience"] {
        let (status, _, _) = answer(&config_api, poll(Some(token), "shop", "checkout-1", 1)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token}");
    }
    let review = &reviews(&api)[0];
    assert_eq!(review.method, "POST");
    assert_eq!(review.body["spec"]["audiences"], json!(["weir"]));
    assert!(config_api.proxies().is_empty(), "nobody got in");
}

#[tokio::test]
async fn the_proxy_is_who_its_token_says_and_reviews_are_cached() {
    let api = FakeApi::start().await;
    api.add_token("checkout-7-token", "shop", "checkout-7", &["weir"]);
    let config_api = config_api(&api);

    // It claims another namespace and pod: the token's win.
    let (status, _, body) = answer(
        &config_api,
        poll(Some("checkout-7-token"), "billing", "impostor", 1),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["resources"][0]["name"], "service/shop/payments");
    let proxies = config_api.proxies();
    assert_eq!(proxies.len(), 1);
    assert_eq!(proxies[0].node.namespace, "shop");
    assert_eq!(proxies[0].node.pod.as_deref(), Some("checkout-7"));

    for _ in 0..5 {
        assert_eq!(
            status_of(&config_api, Some("checkout-7-token"), "checkout-7").await,
            StatusCode::OK
        );
    }
    assert_eq!(reviews(&api).len(), 1, "one review, then the cache");
}

#[tokio::test]
async fn a_failed_review_refuses_the_poll_without_being_remembered() {
    let api = FakeApi::start().await;
    api.add_token("t", "shop", "checkout-1", &["weir"]);
    api.fail("POST", "/tokenreviews", 500, "InternalError", 1);
    let config_api = config_api(&api);
    assert_eq!(
        status_of(&config_api, Some("t"), "checkout-1").await,
        StatusCode::UNAUTHORIZED
    );
    let (status, _, _) = answer(&config_api, poll(Some("t"), "shop", "checkout-1", 1)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "asked again, not answered from a cached failure"
    );
}

/// Moves the clock on by `by` (the token cache's clock), then lets it run again.
async fn later(by: std::time::Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

#[tokio::test]
async fn while_reviews_fail_a_token_vouched_for_lately_keeps_its_identity() {
    use weir_operator::kubernetes::token_review::{CACHE_TTL, STALE_GRACE};
    let api = FakeApi::start().await;
    api.add_token("t", "shop", "checkout-1", &["weir"]);
    api.add_token("never-seen", "shop", "checkout-2", &["weir"]);
    let config_api = config_api(&api);
    let (status, _, _) = answer(&config_api, poll(Some("t"), "billing", "impostor", 1)).await;
    assert_eq!(status, StatusCode::OK);

    // The cached answer is out of date and the API server cannot answer (as right after its
    // restart, before its RBAC is loaded): the token's last review stands, identity included.
    later(CACHE_TTL + std::time::Duration::from_secs(1)).await;
    api.fail("POST", "/tokenreviews", 403, "Forbidden", 2);
    let (status, _, _) = answer(&config_api, poll(Some("t"), "billing", "impostor", 1)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "refused during an API server outage"
    );
    let proxies = config_api.proxies();
    assert_eq!(proxies[0].node.namespace, "shop");
    assert_eq!(proxies[0].node.pod.as_deref(), Some("checkout-1"));
    // A token never vouched for is not let in by the outage.
    assert_eq!(
        status_of(&config_api, Some("never-seen"), "checkout-2").await,
        StatusCode::UNAUTHORIZED
    );

    // Past the grace, a failed review refuses again.
    later(STALE_GRACE).await;
    refused_while_review_fails(&api, &config_api, Some("t"), (500, "InternalError")).await;
}

#[tokio::test]
async fn a_token_the_api_server_refused_stays_refused_while_reviews_fail() {
    use weir_operator::kubernetes::token_review::CACHE_TTL;
    let api = FakeApi::start().await;
    api.add_token("vault", "shop", "checkout-1", &["vault"]);
    let config_api = config_api(&api);
    assert_eq!(
        status_of(&config_api, Some("vault"), "checkout-1").await,
        StatusCode::UNAUTHORIZED
    );
    later(CACHE_TTL + std::time::Duration::from_secs(1)).await;
    refused_while_review_fails(
        &api,
        &config_api,
        Some("vault"),
        (503, "ServiceUnavailable"),
    )
    .await;
}

#[tokio::test]
async fn polls_are_bounded_in_resources_and_bytes() {
    let api = FakeApi::start().await;
    api.add_token("t", "shop", "checkout-1", &["weir"]);
    let config_api = config_api(&api);
    let (status, _, _) = answer(&config_api, poll(Some("t"), "shop", "checkout-1", 1000)).await;
    assert_eq!(status, StatusCode::OK, "1,000 resources are fine");
    let (status, _, body) = answer(&config_api, poll(Some("t"), "shop", "checkout-1", 1001)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "resources", "{body}");

    let huge = Request::post("/v1/discovery")
        .header("authorization", "Bearer t")
        .body(Full::new(Bytes::from(vec![b' '; 1024 * 1024 + 1])))
        .unwrap();
    let (status, _, _) = answer(&config_api, huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

/// A real sidecar (in process) polling `config_api` over loopback, presenting `token_file`.
async fn sidecar_polling(
    config_api: &Arc<ConfigApi>,
    token_file: Option<&std::path::Path>,
) -> (weir_sidecar::Running, watch::Sender<bool>) {
    use clap::Parser;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(config_api.clone().serve(listener, stopped));
    let mut args = vec![
        "weir-sidecar".to_owned(),
        format!("--control-plane={url}"),
        "--service=checkout".into(),
        // What it claims; the token says otherwise.
        "--namespace=billing".into(),
        "--pod=impostor".into(),
        "--outbound=127.0.0.1:0".into(),
        "--inbound=127.0.0.1:0".into(),
        "--admin=127.0.0.1:0".into(),
    ];
    if let Some(path) = token_file {
        args.push(format!("--token-file={}", path.display()));
    }
    let options = weir_sidecar::Cli::try_parse_from(args).unwrap().proxy;
    (weir_sidecar::start(options).await.unwrap(), stop)
}

async fn becomes_ready(running: &weir_sidecar::Running, within: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if running.store.is_ready() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_presents_its_token_file_and_is_who_the_token_says() {
    let api = FakeApi::start().await;
    api.add_token("checkout-1-token", "shop", "checkout-1", &["weir"]);
    api.add_token("checkout-1-rotated", "shop", "checkout-1", &["weir"]);
    let config_api = config_api(&api);
    let dir = weir_testkit::temp_dir("weir-token-test");
    let token = dir.path().join("token");
    // As the kubelet writes it, with a trailing newline.
    std::fs::write(&token, "checkout-1-token\n").unwrap();

    let (with_token, _stop) = sidecar_polling(&config_api, Some(&token)).await;
    assert!(
        becomes_ready(&with_token, std::time::Duration::from_secs(10)).await,
        "the sidecar with a token got no config"
    );
    let proxies = config_api.proxies();
    assert_eq!(proxies.len(), 1);
    assert_eq!(proxies[0].node.namespace, "shop");
    assert_eq!(proxies[0].node.pod.as_deref(), Some("checkout-1"));

    // A rotated token is read again for the next poll.
    std::fs::write(&token, "checkout-1-rotated\n").unwrap();
    let rotated = async {
        loop {
            if reviews(&api)
                .iter()
                .any(|r| r.body["spec"]["token"] == "checkout-1-rotated")
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    // Polls are held up to their wait; the next one after it presents the new token.
    tokio::time::timeout(std::time::Duration::from_secs(60), rotated)
        .await
        .expect("the rotated token was never presented");

    let (without_token, _stop) = sidecar_polling(&config_api, None).await;
    assert!(
        !becomes_ready(&without_token, std::time::Duration::from_millis(1500)).await,
        "a sidecar without a token got config"
    );
}
