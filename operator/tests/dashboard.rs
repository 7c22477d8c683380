//! The dashboard's `/api/graph` end to end: the real `weir-operator local` binary, real
//! sidecars polling it (a caller and the two payments subsets behind it), real upstream apps,
//! traffic through the caller's sidecar — and two proxies whose admin listener is hung or dead,
//! which must not hold up the answer.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;

mod local_operator;
use local_operator::{LocalOperator, sidecar_with_config, temp_dir, until_answer};
use weir_testkit::serve;
use weir_testkit::{Upstream, free_addr, write_atomically};

/// An app answering every call with `status`.
async fn app(status: u16) -> SocketAddr {
    Upstream::fixed(status, "hello").await.addr
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// `method path` on `addr`: status, headers and body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> (StatusCode, http::HeaderMap, String) {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client().request(request))
        .await
        .expect("answered within 10 s")
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// A proxy that polled the config API once, naming `admin` as its admin listener: connected
/// for the poll's `waitSeconds` + 10 s.
async fn ghost_proxy(control_plane: SocketAddr, pod: &str, admin: SocketAddr) {
    let body = serde_json::json!({
        "node": {"service": "ghost", "namespace": "shop", "pod": pod, "admin": admin},
        "resources": [],
        "waitSeconds": 60,
    });
    let request = Request::post(format!("http://{control_plane}/v1/discovery"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert!(response.status().is_success(), "{:?}", response.status());
}

fn find<'a>(list: &'a Value, key: &str, want: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|v| v[key] == want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_shows_live_calls_and_does_not_wait_for_hung_sidecars() {
    let (v1_app, v2_app) = (app(200).await, app(500).await);
    let dir = temp_dir("weir-dashboard");
    write_atomically(
        &dir.join("split.yaml"),
        "apiVersion: weir.dev/v1alpha1\nkind: TrafficSplit\nmetadata: {name: payments, namespace: shop}\n\
         spec:\n  service: payments\n  backends:\n    - {subset: v1, selector: {version: v1}, weight: 80}\n    - {subset: v2, selector: {version: v2}, weight: 20}\n",
    );
    let operator = LocalOperator::start(&dir);
    let within = Duration::from_secs(10);
    let v1 = sidecar_with_config(operator.listen, "payments", "payments-v1", v1_app, within)
        .await
        .expect("payments v1's sidecar got its config");
    let v2 = sidecar_with_config(operator.listen, "payments", "payments-v2", v2_app, within)
        .await
        .expect("payments v2's sidecar got its config");
    write_atomically(
        &dir.join("payments.yaml"),
        &weir_testkit::local_service(
            "shop",
            "payments",
            Some(8080),
            [
                format!("address: \"{}\", labels: {{version: v1}}", v1.inbound),
                format!("address: \"{}\", labels: {{version: v2}}", v2.inbound),
            ],
        ),
    );
    let checkout = sidecar_with_config(
        operator.listen,
        "checkout",
        "checkout-1",
        "127.0.0.1:9".parse().unwrap(),
        within,
    )
    .await
    .expect("the caller's sidecar got its config");

    // A hung admin listener (accepts, never answers) and a dead one (nothing listens).
    let hung = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = hung.accept().await {
            held.push(stream);
        }
    });
    ghost_proxy(operator.listen, "ghost-hung", hung_addr).await;
    ghost_proxy(operator.listen, "ghost-dead", free_addr()).await;

    // Traffic: checkout calls payments until the test ends.
    let running = Arc::new(AtomicBool::new(true));
    let traffic = {
        let running = running.clone();
        let outbound = checkout.outbound;
        tokio::spawn(async move {
            let client = client();
            while running.load(Ordering::SeqCst) {
                let request = Request::get(format!("http://{outbound}/pay"))
                    .header("host", "payments")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                if let Ok(response) = client.request(request).await {
                    let _ = response.into_body().collect().await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Read the graph as the page does, every second, until it shows the calls.
    let slowest = std::cell::Cell::new(Duration::ZERO);
    let admin = operator.admin;
    let ask = || {
        let slowest = &slowest;
        async move {
            let asked = Instant::now();
            let (status, headers, body) = request(admin, "GET", "/api/graph").await;
            slowest.set(slowest.get().max(asked.elapsed()));
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(headers["content-type"], "application/json");
            serde_json::from_str::<Value>(&body).unwrap()
        }
    };
    let shows_the_calls = |graph: &Value| {
        let edge = graph["edges"].as_array().and_then(|edges| {
            edges
                .iter()
                .find(|e| e["from"] == "checkout.shop" && e["to"] == "payments.shop")
        });
        let inbound = find(&graph["services"], "id", "payments.shop")
            .map(|p| p["inbound"]["requestsPerSecond"].as_f64().unwrap_or(0.0));
        let stale = graph["proxies"]
            .as_array()
            .map(|p| p.iter().filter(|p| p["stale"] == true).count());
        edge.is_some_and(|e| e["requestsPerSecond"].as_f64().unwrap_or(0.0) > 10.0)
            && inbound.is_some_and(|rps| rps > 10.0)
            && stale == Some(2)
    };
    let every = (Duration::from_secs(20), Duration::from_secs(1));
    let what = "the graph showing the calls";
    let graph = until_answer(what, every, ask, shows_the_calls, || operator.log()).await;
    let slowest = slowest.get();
    running.store(false, Ordering::SeqCst);
    let _ = traffic.await;

    // A hung sidecar costs at most one scrape timeout, never the answer.
    assert!(
        slowest < Duration::from_secs(3),
        "slowest answer {slowest:?}"
    );

    let edge = find(&graph["edges"], "from", "checkout.shop").unwrap();
    let success = edge["successPercent"].as_f64().unwrap();
    // v2 (about a fifth of the calls) answers 500.
    assert!((55.0..98.0).contains(&success), "{edge:#}");
    assert!(edge["p99Ms"].as_f64().is_some(), "{edge:#}");
    assert_eq!(edge["stale"], false);

    let payments = find(&graph["services"], "id", "payments.shop").unwrap();
    assert_eq!(payments["proxies"], 2);
    assert_eq!(payments["stale"], false);
    let v2_subset = find(&payments["subsets"], "name", "v2").unwrap();
    assert_eq!(v2_subset["desiredWeight"], 20);
    assert_eq!(v2_subset["desiredPercent"], 20.0);
    assert_eq!(v2_subset["endpoints"], 1);
    let observed = v2_subset["observedPercent"].as_f64().unwrap();
    assert!((3.0..50.0).contains(&observed), "{payments:#}");
    let v1_subset = find(&payments["subsets"], "name", "v1").unwrap();
    assert_eq!(v1_subset["desiredPercent"], 80.0);

    let ghost = find(&graph["services"], "id", "ghost.shop").unwrap();
    assert_eq!(
        (&ghost["proxies"], &ghost["staleProxies"]),
        (&2.into(), &2.into())
    );
    let hung_proxy = find(&graph["proxies"], "pod", "ghost-hung").unwrap();
    assert_eq!(hung_proxy["stale"], true);
    assert!(
        hung_proxy["error"]
            .as_str()
            .unwrap()
            .contains("did not answer"),
        "{hung_proxy:#}"
    );
    let dead_proxy = find(&graph["proxies"], "pod", "ghost-dead").unwrap();
    assert_eq!(dead_proxy["stale"], true);
    assert!(find(&graph["proxies"], "pod", "checkout-1").unwrap()["stale"] == false);

    // The page itself, embedded, allowed to reach nothing but its own origin.
    let (status, headers, page) = request(operator.admin, "GET", "/dashboard").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(page.contains("/api/graph"));
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"));
    let (status, _, _) = request(operator.admin, "HEAD", "/dashboard").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = request(operator.admin, "POST", "/api/graph").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    drop((v1, v2, checkout));
}

/// Scraping costs the sidecars nothing while nobody reads the graph: it starts with a read
/// and stops `idle` after the last one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_are_scraped_only_while_the_graph_is_read() {
    use std::sync::atomic::AtomicUsize;
    use weir_operator::autoscaler::status::AutoscalerList;
    use weir_operator::config_api::ConfigApi;
    use weir_operator::dashboard::{Dashboard, Settings};
    use weir_operator::metrics::Metrics;
    use weir_operator::snapshot::Snapshot;

    // A sidecar's admin listener that counts its scrapes.
    let scrapes = Arc::new(AtomicUsize::new(0));
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let counter = scrapes.clone();
    serve(admin, move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        async {
            Response::new(Full::new(Bytes::from_static(
                b"weir_requests_total{code=\"200\",direction=\"inbound\",service=\"ghost\",subset=\"\"} 1\n",
            )))
        }
    });

    let metrics = Arc::new(Metrics::new());
    let (_snapshots, snapshot_rx) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let config_api = ConfigApi::new(snapshot_rx, metrics.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control_plane = listener.local_addr().unwrap();
    tokio::spawn(config_api.clone().serve(listener, stopped.clone()));
    ghost_proxy(control_plane, "ghost-1", admin_addr).await;

    let (_autoscalers, autoscalers_rx) =
        tokio::sync::watch::channel(Arc::new(AutoscalerList::default()));
    let settings = Settings {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(500),
        idle: Duration::from_millis(600),
        concurrency: 4,
    };
    let dashboard = Dashboard::start(config_api, autoscalers_rx, metrics, settings, stopped);

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        scrapes.load(Ordering::SeqCst),
        0,
        "nobody read the graph yet"
    );

    // The first read waits for one round: the proxy is in it.
    let graph: Value = serde_json::from_slice(&dashboard.graph().await).unwrap();
    assert_eq!(graph["proxies"][0]["pod"], "ghost-1", "{graph:#}");
    assert_eq!(graph["proxies"][0]["stale"], false, "{graph:#}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(scrapes.load(Ordering::SeqCst) >= 2, "scraped while read");

    // No read for longer than `idle`: scraping stops.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let paused = scrapes.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(scrapes.load(Ordering::SeqCst), paused, "still scraping");

    // A read after the pause starts again, with nothing held from before (no rates yet).
    let graph: Value = serde_json::from_slice(&dashboard.graph().await).unwrap();
    assert_eq!(graph["services"][0]["inbound"]["requestsPerSecond"], 0.0);
    assert!(scrapes.load(Ordering::SeqCst) > paused);
}
