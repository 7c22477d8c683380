//! The sidecar as a client of the config API (`weir_proxy_api::protocol`), against a small
//! control plane written here: it answers at once with what changed, holds the poll otherwise,
//! and records every poll so that tests can check subscriptions, acknowledgements and
//! rejections.

mod common;

use bytes::Bytes;
use common::Sidecar;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use weir_proxy_api::protocol::{
    DISCOVERY_PATH, DiscoveryRequest, DiscoveryResponse, HeldResource, INBOUND_RESOURCE, Node,
    ResourceUpdate,
};
use weir_testkit::{Action, Upstream, eventually, get};

const PAYMENTS: &str = "service/shop/payments";

/// What the control plane serves, and what it was asked.
#[derive(Debug)]
struct State {
    /// Resource name → (version, content).
    resources: parking_lot::Mutex<HashMap<String, (u64, Value)>>,
    /// Bumped on every change so that held polls look again.
    changed: watch::Sender<u64>,
    /// Every poll, in arrival order.
    requests: parking_lot::Mutex<Vec<DiscoveryRequest>>,
    /// How long to wait before answering a poll that subscribes to something new.
    delay_new: parking_lot::Mutex<Duration>,
}

impl State {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            resources: parking_lot::Mutex::default(),
            changed: watch::channel(0).0,
            requests: parking_lot::Mutex::default(),
            delay_new: parking_lot::Mutex::default(),
        })
    }

    /// Sets a resource and wakes held polls.
    fn set(&self, name: &str, version: u64, content: Value) {
        self.resources
            .lock()
            .insert(name.to_owned(), (version, content));
        self.changed.send_modify(|n| *n += 1);
    }

    fn requests(&self) -> Vec<DiscoveryRequest> {
        self.requests.lock().clone()
    }

    /// What differs from what the poll says it holds. A name the control plane does not know
    /// gets `notFound` at version 0.
    fn diff(&self, request: &DiscoveryRequest) -> Vec<ResourceUpdate<Value>> {
        let resources = self.resources.lock();
        request
            .resources
            .iter()
            .filter_map(|held| {
                let (version, content) = match resources.get(&held.name) {
                    Some((version, content)) => (*version, content.clone()),
                    None => (
                        0,
                        json!({"notFound": format!("the test control plane has no {}", held.name)}),
                    ),
                };
                (held.version != Some(version)).then(|| ResourceUpdate {
                    name: held.name.clone(),
                    version,
                    content,
                })
            })
            .collect()
    }

    async fn discovery(self: Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, body: Vec<u8>| {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status;
            response
                .headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            response
        };
        if request.method() != http::Method::POST || request.uri().path() != DISCOVERY_PATH {
            return reply(StatusCode::NOT_FOUND, b"{}".to_vec());
        }
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let poll: DiscoveryRequest = match serde_json::from_slice(&body) {
            Ok(poll) => poll,
            Err(e) => return reply(StatusCode::BAD_REQUEST, e.to_string().into_bytes()),
        };
        self.requests.lock().push(poll.clone());
        if poll.resources.iter().any(|r| r.version.is_none()) {
            let delay = *self.delay_new.lock();
            tokio::time::sleep(delay).await;
        }
        let mut changes = self.changed.subscribe();
        let deadline = Instant::now() + Duration::from_secs(poll.wait_seconds.into());
        let resources = loop {
            let updates = self.diff(&poll);
            if !updates.is_empty() {
                break updates;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => break Vec::new(),
            }
        };
        let answer = DiscoveryResponse { resources };
        reply(StatusCode::OK, serde_json::to_vec(&answer).unwrap())
    }
}

/// A running control plane; dropping it (or [`ControlPlane::stop`]) closes the listener and
/// every connection, held polls included.
struct ControlPlane {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ControlPlane {
    async fn start(state: Arc<State>) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), state).await
    }

    async fn start_on(addr: SocketAddr, state: Arc<State>) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            // Connections live in this set: aborting the task drops them all.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                while connections.try_join_next().is_some() {}
                let state = state.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(state.discovery(request).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, task }
    }

    fn url(&self) -> http::Uri {
        format!("http://{}", self.addr).parse().unwrap()
    }

    async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `{"service": …}` for payments in shop, subsets as (name, weight, endpoints).
fn payments(subsets: &[(&str, u32, &[SocketAddr])]) -> Value {
    let subsets: Vec<Value> = subsets
        .iter()
        .map(|(name, weight, endpoints)| {
            json!({"name": name, "weight": weight,
                   "endpoints": endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>()})
        })
        .collect();
    json!({"service": {"name": "payments", "namespace": "shop", "subsets": subsets}})
}

async fn start_sidecar(control_plane: &ControlPlane, app: SocketAddr) -> Sidecar {
    let mut options = common::options(app);
    options.control_plane = Some(control_plane.url());
    options.service = "checkout".into();
    options.namespace = "shop".into();
    Sidecar::start_with(options, true).await
}

/// A control plane holding an empty inbound (version 1) and payments on `endpoint` (at
/// `version`), and a sidecar of checkout polling it.
async fn serving(endpoint: SocketAddr, version: u64) -> (Arc<State>, ControlPlane, Sidecar) {
    let state = State::new();
    state.set(INBOUND_RESOURCE, 1, json!({"inbound": {}}));
    state.set(
        PAYMENTS,
        version,
        payments(&[("default", 100, &[endpoint])]),
    );
    let cp = ControlPlane::start(state.clone()).await;
    let sidecar = start_sidecar(&cp, "127.0.0.1:9".parse().unwrap()).await;
    (state, cp, sidecar)
}

/// The start most tests share: a control plane holding an empty inbound (version 1) and payments
/// on `a` (version 2), and a sidecar of checkout polling it that routes payments to `a`.
async fn mesh() -> (Upstream, Arc<State>, ControlPlane, Sidecar) {
    let a = ok_upstream("a").await;
    let (state, cp, sidecar) = serving(a.addr, 2).await;
    let (status, _, body) = get(sidecar.outbound, "/", "payments").await;
    assert_eq!((status, body.as_str()), (200, "a"));
    (a, state, cp, sidecar)
}

async fn ok_upstream(body: &'static str) -> Upstream {
    Upstream::start(move |_, _| Action::Respond(200, body)).await
}

fn served_by(headers: &http::HeaderMap) -> String {
    headers
        .get("x-served-by")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn held<'a>(poll: &'a DiscoveryRequest, name: &str) -> Option<&'a HeldResource> {
    poll.resources.iter().find(|r| r.name == name)
}

/// Waits for a poll (after the first `skip`) for which `check` holds, and returns it.
async fn poll_where(
    state: &State,
    skip: usize,
    limit: Duration,
    check: impl Fn(&DiscoveryRequest) -> bool,
) -> DiscoveryRequest {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = state.requests().into_iter().skip(skip).find(|p| check(p)) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no such poll within {limit:?}; polls: {:#?}",
            state.requests()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn at_start_the_proxy_asks_for_its_inbound_policy_and_becomes_ready() {
    let state = State::new();
    state.set(INBOUND_RESOURCE, 7, json!({"inbound": {}}));
    state.set(PAYMENTS, 3, payments(&[("default", 100, &[])]));
    let cp = ControlPlane::start(state.clone()).await;
    let sidecar = start_sidecar(&cp, "127.0.0.1:9".parse().unwrap()).await;

    let first = state.requests()[0].clone();
    assert_eq!(
        first.node,
        Node {
            service: "checkout".into(),
            namespace: "shop".into(),
            pod: None,
            inbound: Some(sidecar.inbound),
            admin: Some(sidecar.admin),
        },
        "the node names the listeners as bound"
    );
    assert_ne!(sidecar.inbound.port(), 0);
    assert_eq!(
        first.resources,
        vec![HeldResource {
            name: INBOUND_RESOURCE.into(),
            version: None
        }],
        "only its own inbound policy, nothing of the rest of the mesh"
    );
    assert!(first.rejected.is_empty());
    // The next poll acknowledges version 7.
    poll_where(&state, 1, Duration::from_secs(2), |p| {
        held(p, INBOUND_RESOURCE).and_then(|r| r.version) == Some(7)
    })
    .await;
    assert_eq!(get(sidecar.admin, "/ready", "admin").await.0, 200);
    assert_eq!(
        sidecar.metric("weir_control_plane_connected", &[]).await,
        Some(1.0)
    );
    assert_eq!(sidecar.metric("weir_config_version", &[]).await, Some(7.0));
    let running: Value =
        serde_json::from_str(&get(sidecar.admin, "/config", "admin").await.2).unwrap();
    assert_eq!(
        running["services"],
        json!([]),
        "no service before the first call"
    );
}

#[tokio::test]
async fn the_first_call_subscribes_waits_for_the_answer_and_is_acknowledged() {
    let up = ok_upstream("payments").await;
    let (state, _cp, sidecar) = serving(up.addr, 5).await;
    let before = state.requests().len();

    // The control plane takes its time: the first request waits for the answer.
    *state.delay_new.lock() = Duration::from_millis(300);
    let sent = Instant::now();
    let (status, headers, body) = get(sidecar.outbound, "/pay", "payments").await;
    assert_eq!((status, body.as_str()), (200, "payments"));
    assert_eq!(served_by(&headers), up.addr.to_string());
    assert!(sent.elapsed() >= Duration::from_millis(300));

    let subscribing = poll_where(&state, before, Duration::ZERO, |p| {
        held(p, PAYMENTS).is_some()
    })
    .await;
    assert_eq!(held(&subscribing, PAYMENTS).unwrap().version, None);
    assert!(held(&subscribing, INBOUND_RESOURCE).unwrap().version == Some(1));
    // The ack: the next poll names payments at version 5.
    poll_where(&state, before, Duration::from_secs(2), |p| {
        held(p, PAYMENTS).and_then(|r| r.version) == Some(5)
    })
    .await;

    // Other spellings of the same service need no new subscription.
    let polls = state.requests().len();
    for host in ["payments.shop", "payments.shop.svc.cluster.local:8080"] {
        assert_eq!(get(sidecar.outbound, "/", host).await.0, 200, "{host}");
    }
    assert_eq!(up.hits(), 3);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        state.requests().len(),
        polls,
        "no new poll for a held service"
    );
}

#[tokio::test]
async fn pushed_changes_are_applied_within_a_second() {
    let (a, state, _cp, sidecar) = mesh().await;
    let b = ok_upstream("b").await;
    poll_where(&state, 0, Duration::from_secs(2), |p| {
        held(p, PAYMENTS).and_then(|r| r.version) == Some(2)
    })
    .await;

    // New endpoints.
    let changed = Instant::now();
    state.set(PAYMENTS, 3, payments(&[("default", 100, &[b.addr])]));
    let moved = eventually(Duration::from_secs(2), || async {
        get(sidecar.outbound, "/", "payments").await.2 == "b"
    })
    .await;
    let took = changed.elapsed();
    assert!(moved, "the new endpoints were never used");
    assert!(took <= Duration::from_secs(1), "the push took {took:?}");

    // New weights: v1 (a) 0, v2 (b) 100 → v1 100, v2 0.
    state.set(
        PAYMENTS,
        4,
        payments(&[("v1", 100, &[a.addr]), ("v2", 0, &[b.addr])]),
    );
    let changed = Instant::now();
    let moved = eventually(Duration::from_secs(2), || async {
        get(sidecar.outbound, "/", "payments").await.2 == "a"
    })
    .await;
    let took = changed.elapsed();
    assert!(
        moved && took <= Duration::from_secs(1),
        "weights took {took:?}"
    );
    for _ in 0..10 {
        assert_eq!(get(sidecar.outbound, "/", "payments").await.2, "a");
    }
    poll_where(&state, 0, Duration::from_secs(2), |p| {
        held(p, PAYMENTS).and_then(|r| r.version) == Some(4)
    })
    .await;
    assert_eq!(sidecar.metric("weir_config_version", &[]).await, Some(4.0));
}

#[tokio::test]
async fn a_service_unknown_to_the_control_plane_gets_503_with_its_message() {
    let state = State::new();
    state.set(INBOUND_RESOURCE, 1, json!({"inbound": {}}));
    let cp = ControlPlane::start(state.clone()).await;
    let sidecar = start_sidecar(&cp, "127.0.0.1:9".parse().unwrap()).await;
    let (status, headers, body) = get(sidecar.outbound, "/", "nosuch").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["x-weir-reason"], "no-healthy-endpoints");
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["reason"], "no-healthy-endpoints");
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains("the test control plane has no service/shop/nosuch"),
        "{body}"
    );
    assert!(
        state
            .requests()
            .iter()
            .any(|p| held(p, "service/shop/nosuch").is_some())
    );
    // Asked once: the answer is remembered.
    let (status, _, body2) = get(sidecar.outbound, "/", "nosuch").await;
    assert_eq!((status, body2), (503, body));
    let asked = state
        .requests()
        .iter()
        .filter(|p| held(p, "service/shop/nosuch").is_some_and(|r| r.version.is_none()))
        .count();
    assert_eq!(asked, 1);
}

#[tokio::test]
async fn an_invalid_update_is_rejected_and_the_last_good_config_kept() {
    let (a, state, _cp, sidecar) = mesh().await;
    let good = get(sidecar.admin, "/config", "admin").await.2;

    let before = state.requests().len();
    state.set(
        PAYMENTS,
        3,
        payments(&[("v1", 0, &[a.addr]), ("v2", 0, &[a.addr])]),
    );
    let nack = poll_where(&state, before, Duration::from_secs(2), |p| {
        !p.rejected.is_empty()
    })
    .await;
    assert_eq!(nack.rejected.len(), 1, "{nack:?}");
    let rejection = &nack.rejected[0];
    assert_eq!(rejection.name, PAYMENTS);
    assert_eq!(rejection.version, 3);
    assert!(
        rejection.message.contains("subsets") && rejection.message.contains("weight"),
        "the message names the field: {}",
        rejection.message
    );
    // It still holds (and says it runs) version 2.
    assert_eq!(held(&nack, PAYMENTS).unwrap().version, Some(2));
    assert_eq!(
        sidecar
            .metric("weir_config_rejected_total", &[("source", "control-plane")])
            .await,
        Some(1.0)
    );
    let (status, _, body) = get(sidecar.outbound, "/", "payments").await;
    assert_eq!((status, body.as_str()), (200, "a"));
    assert_eq!(get(sidecar.admin, "/config", "admin").await.2, good);

    // Rejected once, not again on every poll; a later good version is applied.
    let b = ok_upstream("b").await;
    state.set(PAYMENTS, 4, payments(&[("default", 100, &[b.addr])]));
    assert!(
        eventually(Duration::from_secs(1), || async {
            get(sidecar.outbound, "/", "payments").await.2 == "b"
        })
        .await
    );
    let rejections: usize = state.requests().iter().map(|p| p.rejected.len()).sum();
    assert_eq!(rejections, 1);
}

#[tokio::test]
async fn the_proxy_survives_the_control_plane_going_away_and_resyncs() {
    let (_a, state, cp, sidecar) = mesh().await;
    let b = ok_upstream("b").await;
    let addr = cp.addr;
    poll_where(&state, 0, Duration::from_secs(2), |p| {
        held(p, PAYMENTS).and_then(|r| r.version) == Some(2)
    })
    .await;

    cp.stop().await;
    let disconnected = eventually(Duration::from_secs(2), || async {
        sidecar.metric("weir_control_plane_connected", &[]).await == Some(0.0)
    })
    .await;
    assert!(disconnected, "weir_control_plane_connected stayed 1");
    for _ in 0..5 {
        let (status, _, body) = get(sidecar.outbound, "/", "payments").await;
        assert_eq!(
            (status, body.as_str()),
            (200, "a"),
            "serving with what it holds"
        );
    }
    assert_eq!(get(sidecar.admin, "/ready", "admin").await.0, 200);

    // A new control plane on the same address, where payments moved on.
    let state = State::new();
    state.set(INBOUND_RESOURCE, 1, json!({"inbound": {}}));
    state.set(PAYMENTS, 9, payments(&[("default", 100, &[b.addr])]));
    let _cp = ControlPlane::start_on(addr, state.clone()).await;
    let restarted = Instant::now();
    let resync = poll_where(&state, 0, Duration::from_secs(6), |_| true).await;
    assert!(
        restarted.elapsed() <= Duration::from_millis(5500),
        "reconnect took {:?}",
        restarted.elapsed()
    );
    assert_eq!(held(&resync, INBOUND_RESOURCE).unwrap().version, Some(1));
    assert_eq!(held(&resync, PAYMENTS).unwrap().version, Some(2));
    assert!(
        eventually(Duration::from_secs(1), || async {
            get(sidecar.outbound, "/", "payments").await.2 == "b"
        })
        .await,
        "the newer version was not applied after the reconnect"
    );
    assert_eq!(
        sidecar.metric("weir_control_plane_connected", &[]).await,
        Some(1.0)
    );
    assert_eq!(sidecar.metric("weir_config_version", &[]).await, Some(9.0));
}

#[tokio::test]
async fn the_inbound_policy_from_the_control_plane_is_enforced() {
    let app = ok_upstream("app").await;
    let state = State::new();
    state.set(
        INBOUND_RESOURCE,
        1,
        json!({"inbound": {"rateLimit": {"requestsPerSecond": 1, "burst": 2}}}),
    );
    let cp = ControlPlane::start(state.clone()).await;
    let sidecar = start_sidecar(&cp, app.addr).await;
    for _ in 0..2 {
        let (status, _, body) = get(sidecar.inbound, "/", "checkout").await;
        assert_eq!((status, body.as_str()), (200, "app"));
    }
    let (status, headers, body) = get(sidecar.inbound, "/", "checkout").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(headers["x-weir-reason"], "rate-limited");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
    assert_eq!(app.hits(), 2, "the refused request did not reach the app");
    assert_eq!(
        sidecar
            .metric("weir_rate_limited_total", &[("service", "checkout")])
            .await,
        Some(1.0)
    );
    let running: Value =
        serde_json::from_str(&get(sidecar.admin, "/config", "admin").await.2).unwrap();
    assert_eq!(running["inbound"]["rateLimit"]["burst"], 2);
}

/// The extreme values pushed by the control plane: each update is NACKed naming the
/// field, the proxy keeps serving its last good config, and a later valid push applies.
#[tokio::test]
async fn extreme_values_are_nacked_by_field_and_a_later_push_applies() {
    let (_a, state, _cp, sidecar) = mesh().await;
    let b = ok_upstream("b").await;

    const ABSURD: &str = "5000000000000000h";
    let with_policy = |policy: Value| {
        let mut content = payments(&[("default", 100, &[b.addr])]);
        content["service"]["policy"] = policy;
        content
    };
    let cases = [
        (
            PAYMENTS,
            with_policy(json!({"retries": {"attempts": 1,
                "budget": {"ratio": 0.2, "minPerSecond": 2_147_483_647}}})),
            "service.policy.retries.budget.minPerSecond",
        ),
        (
            PAYMENTS,
            with_policy(json!({"timeouts": {"request": ABSURD}})),
            "service.policy.timeouts.request",
        ),
        (
            PAYMENTS,
            with_policy(json!({"timeouts": {"idle": ABSURD}})),
            "service.policy.timeouts.idle",
        ),
        (
            PAYMENTS,
            with_policy(json!({"circuitBreaker": {"failureThreshold": 5, "openDuration": ABSURD}})),
            "service.policy.circuitBreaker.openDuration",
        ),
        (
            PAYMENTS,
            with_policy(
                json!({"outlierDetection": {"consecutive5xxErrors": 5, "baseEjectionTime": ABSURD}}),
            ),
            "service.policy.outlierDetection.baseEjectionTime",
        ),
        (
            INBOUND_RESOURCE,
            json!({"inbound": {"rateLimit": {"requestsPerSecond": 1e-300, "burst": 1}}}),
            "inbound.rateLimit.requestsPerSecond",
        ),
    ];
    for (i, (name, content, field)) in cases.into_iter().enumerate() {
        let version = 10 + i as u64;
        let before = state.requests().len();
        state.set(name, version, content);
        let nack = poll_where(&state, before, Duration::from_secs(3), |p| {
            p.rejected.iter().any(|r| r.version == version)
        })
        .await;
        let rejection = nack.rejected.iter().find(|r| r.version == version).unwrap();
        assert_eq!(rejection.name, name);
        assert!(
            rejection.message.contains(field),
            "the NACK names {field}: {}",
            rejection.message
        );
        assert_eq!(
            sidecar
                .metric("weir_config_rejected_total", &[("source", "control-plane")])
                .await,
            Some(i as f64 + 1.0)
        );
        // Had the update applied, payments would be served by b.
        assert_eq!(get(sidecar.outbound, "/", "payments").await.2, "a");
        assert_eq!(get(sidecar.admin, "/ready", "admin").await.0, 200);
    }

    state.set(INBOUND_RESOURCE, 30, json!({"inbound": {}}));
    state.set(PAYMENTS, 31, payments(&[("default", 100, &[b.addr])]));
    assert!(
        eventually(Duration::from_secs(2), || async {
            get(sidecar.outbound, "/", "payments").await.2 == "b"
        })
        .await,
        "the later valid push was not applied"
    );
    assert_eq!(get(sidecar.admin, "/ready", "admin").await.0, 200);
}
