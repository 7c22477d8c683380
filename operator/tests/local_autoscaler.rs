//! The Autoscaler in local mode, end to end: the real `weir-operator local` binary on a folder
//! whose LocalService endpoints name fake sidecars (in-test HTTP servers on 127.0.0.1 serving
//! `/metrics`), read back through the operator's admin listener (`/autoscalers`, `/metrics`);
//! and with a real sidecar (`weir_sidecar::start`, in process, as the other operator tests run
//! it) connected to the operator's config API, found by its inbound address from a LocalService
//! endpoint that does not name its `admin`.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;

mod local_operator;
mod loopback;
use local_operator::{LocalOperator, temp_dir};
use loopback::orders_in_flight;
use weir_testkit::write_atomically;
use weir_testkit::{FakeAdmin, serve};

/// Things that take one or two 2 s evaluations get this long (the machine is shared).
const PATIENCE: Duration = Duration::from_secs(15);

/// A fake sidecar admin listener: `/metrics` reports `in_flight` inbound requests for orders.
struct Sidecar {
    admin: SocketAddr,
    fake: FakeAdmin,
}

impl Sidecar {
    async fn start(in_flight: f64) -> Self {
        let fake = FakeAdmin::start(orders_in_flight(in_flight)).await;
        Self {
            admin: fake.addr,
            fake,
        }
    }

    fn set(&self, in_flight: f64) {
        self.fake.set(orders_in_flight(in_flight));
    }
}

/// What these tests read of the operator's admin listener.
trait Autoscalers {
    async fn autoscaler(&self, name: &str) -> Option<Value>;
    async fn until(&self, name: &str, limit: Duration, want: impl Fn(&Value) -> bool) -> Value;
}

impl Autoscalers for LocalOperator {
    /// The `/autoscalers` entry of `name` in namespace shop.
    async fn autoscaler(&self, name: &str) -> Option<Value> {
        let list: Value = serde_json::from_str(&self.get("/autoscalers").await?).ok()?;
        list["autoscalers"]
            .as_array()?
            .iter()
            .find(|a| a["namespace"] == "shop" && a["name"] == name)
            .cloned()
    }

    /// Polls `/autoscalers` until `name`'s entry satisfies `want`; panics after `limit`.
    async fn until(&self, name: &str, limit: Duration, want: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < limit {
            last = self.autoscaler(name).await;
            if let Some(entry) = &last
                && want(entry)
            {
                return entry.clone();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "{name} not as wanted within {limit:?}; last seen: {last:#?}\noperator log:\n{}",
            self.log()
        );
    }
}

/// LocalService orders: one endpoint per sidecar (the app addresses are never called).
fn local_service(sidecars: &[&Sidecar]) -> String {
    let mut text = "apiVersion: weir.dev/v1alpha1\nkind: LocalService\n\
                    metadata: {name: orders, namespace: shop}\nspec:\n  port: 8080\n  endpoints:\n"
        .to_owned();
    for (i, sidecar) in sidecars.iter().enumerate() {
        text.push_str(&format!(
            "    - {{address: \"127.0.0.1:{}\", admin: \"{}\"}}\n",
            19000 + i,
            sidecar.admin
        ));
    }
    text
}

fn autoscaler(name: &str, target: &str, min: &str, max: &str) -> String {
    autoscaler_for(name, target, min, max, 10)
}

/// An Autoscaler on Concurrency `concurrency` per pod.
fn autoscaler_for(name: &str, target: &str, min: &str, max: &str, concurrency: u32) -> String {
    format!(
        "apiVersion: weir.dev/v1alpha1\nkind: Autoscaler\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: {target}}}\n  \
         minReplicas: {min}\n  maxReplicas: {max}\n  metrics:\n    - {{type: Concurrency, target: {concurrency}}}\n"
    )
}

fn condition<'a>(entry: &'a Value, type_: &str) -> Option<&'a Value> {
    entry["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn has_condition(entry: &Value, type_: &str, status: &str, reason: &str) -> bool {
    condition(entry, type_).is_some_and(|c| c["status"] == status && c["reason"] == reason)
}

const GAUGE_4: &str = "weir_autoscaler_desired_replicas{name=\"orders\",namespace=\"shop\"} 4";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_autoscaler_end_to_end() {
    let first = Sidecar::start(35.0).await;
    let dir = temp_dir("weir-local-autoscaler");
    let services = dir.join("services.yaml");
    let autoscaler_file = dir.join("autoscaler.yaml");
    write_atomically(&services, &local_service(&[&first]));
    write_atomically(&autoscaler_file, &autoscaler("orders", "orders", "1", "5"));
    let operator = LocalOperator::start(&dir);

    // 35 in flight on one endpoint, target 10: ceil(35 / 10) = 4.
    let entry = operator
        .until("orders", PATIENCE, |e| e["desiredReplicas"] == 4)
        .await;
    assert_eq!(entry["target"], "orders");
    assert_eq!(entry["currentReplicas"], 1);
    assert_eq!(entry["currentMetrics"][0]["type"], "Concurrency");
    assert_eq!(entry["currentMetrics"][0]["current"], "35.0");
    assert!(has_condition(&entry, "Accepted", "True", "Accepted"));
    assert!(condition(&entry, "ScalingActive").is_some(), "{entry:#}");
    assert!(entry["lastScaleTime"].is_string(), "{entry:#}");
    let metrics = operator.get("/metrics").await.unwrap();
    assert!(metrics.contains(GAUGE_4), "{metrics}");
    let log = operator.log();
    assert!(
        log.lines().any(|l| l.contains("desired replicas")
            && l.contains("orders")
            && l.contains("→ 4")
            && l.contains("Concurrency 35.0")),
        "a log line names the change and the metric:\n{log}"
    );

    // The launcher's part: four instances, the load spread (~9 each). 4 it stays.
    let others = [
        Sidecar::start(9.0).await,
        Sidecar::start(9.0).await,
        Sidecar::start(9.0).await,
    ];
    first.set(9.0);
    write_atomically(
        &services,
        &local_service(&[&first, &others[0], &others[1], &others[2]]),
    );
    let entry = operator
        .until("orders", PATIENCE, |e| e["currentReplicas"] == 4)
        .await;
    assert_eq!(entry["desiredReplicas"], 4, "{entry:#}");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let entry = operator.autoscaler("orders").await.unwrap();
        assert_eq!(entry["desiredReplicas"], 4, "{entry:#}");
        assert_eq!(entry["currentReplicas"], 4, "{entry:#}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let per_pod: f64 = entry["currentMetrics"][0]["current"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(per_pod < 10.0, "{entry:#}");

    // An Autoscaler naming a LocalService that does not exist.
    let ghost_file = dir.join("ghost.yaml");
    write_atomically(&ghost_file, &autoscaler("ghost", "nowhere", "1", "5"));
    let ghost = operator
        .until("ghost", PATIENCE, |e| {
            has_condition(e, "Accepted", "False", "TargetNotFound")
        })
        .await;
    assert!(
        has_condition(&ghost, "AbleToScale", "False", "TargetNotFound"),
        "{ghost:#}"
    );
    assert_eq!(ghost["target"], "nowhere");
    assert!(ghost.get("desiredReplicas").is_none(), "{ghost:#}");

    // A corrupt edit of the Autoscaler: refused whole, the last good one stays.
    write_atomically(
        &autoscaler_file,
        &autoscaler("orders", "orders", "lots", "5"),
    );
    let start = Instant::now();
    while !operator.log().contains("spec.minReplicas") {
        assert!(
            start.elapsed() < PATIENCE,
            "the refusal names the field:\n{}",
            operator.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(operator.log().contains("autoscaler.yaml"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let entry = operator.autoscaler("orders").await.unwrap();
    assert_eq!(entry["desiredReplicas"], 4, "{entry:#}");
    assert!(
        has_condition(&entry, "Accepted", "True", "Accepted"),
        "{entry:#}"
    );
    assert!(operator.get("/metrics").await.unwrap().contains(GAUGE_4));

    // A spec that parses but is not valid: Accepted=False naming the field; the last good spec
    // stays in force.
    write_atomically(&autoscaler_file, &autoscaler("orders", "orders", "1", "0"));
    let entry = operator
        .until("orders", PATIENCE, |e| {
            has_condition(e, "Accepted", "False", "Invalid")
        })
        .await;
    let message = condition(&entry, "Accepted").unwrap()["message"]
        .as_str()
        .unwrap();
    assert!(message.contains("spec.maxReplicas"), "{message}");
    assert_eq!(entry["desiredReplicas"], 4, "{entry:#}");

    // Deleting an Autoscaler drops it from /autoscalers and /metrics.
    std::fs::remove_file(&ghost_file).unwrap();
    let start = Instant::now();
    while operator.autoscaler("ghost").await.is_some() {
        assert!(start.elapsed() < PATIENCE, "ghost still listed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = operator.get("/metrics").await.unwrap();
    assert!(!metrics.contains("name=\"ghost\""), "{metrics}");
    drop(operator);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_service_without_endpoints_asks_for_min_replicas() {
    let dir = temp_dir("weir-local-autoscaler");
    write_atomically(
        &dir.join("services.yaml"),
        "apiVersion: weir.dev/v1alpha1\nkind: LocalService\n\
         metadata: {name: orders, namespace: shop}\nspec:\n  endpoints: []\n",
    );
    write_atomically(
        &dir.join("autoscaler.yaml"),
        &autoscaler("orders", "orders", "2", "5"),
    );
    let operator = LocalOperator::start(&dir);
    let entry = operator
        .until("orders", PATIENCE, |e| e["desiredReplicas"] == 2)
        .await;
    assert_eq!(entry["currentReplicas"], 0);
    assert!(
        has_condition(&entry, "ScalingActive", "False", "NoEndpoints"),
        "{entry:#}"
    );
    let metrics = operator.get("/metrics").await.unwrap();
    assert!(
        metrics.contains("weir_autoscaler_desired_replicas{name=\"orders\",namespace=\"shop\"} 2"),
        "{metrics}"
    );
    drop(operator);
}

/// An app that holds every request for `hold` before answering 200.
async fn slow_app(hold: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve(listener, move |_| async move {
        tokio::time::sleep(hold).await;
        Response::new(Full::new(Bytes::from_static(b"ok")))
    });
    addr
}

/// A real sidecar of orders in shop, fed by the operator's config API, every listener on a free
/// loopback port; waits until it holds its config.
async fn orders_sidecar(control_plane: SocketAddr, app: SocketAddr) -> weir_sidecar::Running {
    local_operator::sidecar_with_config(
        control_plane,
        "orders",
        "orders-1",
        app,
        Duration::from_secs(30),
    )
    .await
    .expect("the sidecar did not get its config from the operator")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_is_found_by_its_inbound_address_when_the_endpoint_names_no_admin() {
    let dir = temp_dir("weir-local-autoscaler");
    write_atomically(
        &dir.join("autoscaler.yaml"),
        &autoscaler_for("orders", "orders", "1", "10", 5),
    );
    let operator = LocalOperator::start(&dir);
    let app = slow_app(Duration::from_secs(3)).await;
    let sidecar = orders_sidecar(operator.listen, app).await;

    // The sidecar named its listeners on its config connection; `/proxies` shows them.
    let start = Instant::now();
    loop {
        let proxies: Value = match operator.get("/proxies").await {
            Some(text) => serde_json::from_str(&text).unwrap(),
            None => Value::Null,
        };
        let listed = proxies.as_array().and_then(|list| {
            list.iter()
                .find(|p| p["node"]["service"] == "orders" && p["node"]["namespace"] == "shop")
        });
        if let Some(proxy) = listed {
            assert_eq!(
                proxy["node"]["inbound"],
                sidecar.inbound.to_string(),
                "{proxy:#}"
            );
            assert_eq!(
                proxy["node"]["admin"],
                sidecar.admin.to_string(),
                "{proxy:#}"
            );
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "the sidecar is not listed: {proxies:#}\noperator log:\n{}",
            operator.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The design's LocalService: the sidecar's inbound address, no `admin`.
    write_atomically(
        &dir.join("services.yaml"),
        &format!(
            "apiVersion: weir.dev/v1alpha1\nkind: LocalService\n\
             metadata: {{name: orders, namespace: shop}}\nspec:\n  endpoints:\n    \
             - {{address: \"{}\"}}\n",
            sidecar.inbound
        ),
    );
    // Idle, and measured: a Concurrency value is only there when its sidecar was scraped (an
    // endpoint without a known sidecar is a pod without metrics).
    let entry = operator
        .until("orders", Duration::from_secs(30), |e| {
            e["currentReplicas"] == 1 && e["currentMetrics"][0]["type"] == "Concurrency"
        })
        .await;
    assert_eq!(entry["desiredReplicas"], 1, "{entry:#}");
    assert!(
        condition(&entry, "ScalingActive").is_some_and(|c| c["status"] == "True"),
        "{entry:#}"
    );

    // 30 requests held open at a time through the sidecar's inbound listener: 30 in flight
    // against a target of 5 per pod.
    let client = weir_testkit::client();
    let target = sidecar.inbound;
    let answered = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..30)
        .map(|_| {
            let (client, answered) = (client.clone(), answered.clone());
            tokio::spawn(async move {
                loop {
                    let request = Request::get(format!("http://{target}/slow"))
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    if let Ok(response) = client.request(request).await
                        && response.status().is_success()
                        && response.into_body().collect().await.is_ok()
                    {
                        answered.fetch_add(1, Ordering::SeqCst);
                    } else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            })
        })
        .collect();
    let loaded = Instant::now();
    let entry = operator
        .until("orders", PATIENCE, |e| {
            e["desiredReplicas"].as_i64().is_some_and(|d| d > 1)
        })
        .await;
    let took = loaded.elapsed();
    let measured: f64 = entry["currentMetrics"][0]["current"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(measured > 5.0, "{entry:#}");
    assert_eq!(entry["currentReplicas"], 1, "{entry:#}");
    let log = operator.log();
    assert!(
        log.lines()
            .any(|l| l.contains("desired replicas") && l.contains("Concurrency")),
        "a log line names the change and the metric:\n{log}"
    );
    eprintln!(
        "desired {} after {took:?} under load ({measured} in flight measured)",
        entry["desiredReplicas"]
    );
    // The requests went through the sidecar to the app.
    let start = Instant::now();
    while answered.load(Ordering::SeqCst) == 0 {
        assert!(start.elapsed() < PATIENCE, "no request was answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for task in load {
        task.abort();
    }
    drop(client);
    sidecar.shutdown().await;
    drop(operator);
}
