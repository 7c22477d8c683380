//! `--control-plane URL`: the client side of the config API (see `weir_proxy_api::protocol` for
//! the exchange).
//!
//! One task owns the subscriptions: the proxy's own inbound policy from the start, and each
//! service from the first request that calls it. It long-polls the operator, validates each
//! resource on its own (a bad one is reported back as rejected and the rest still apply),
//! assembles the resources into one [`ProxyConfig`] and hands it to the store. When the operator
//! is away the proxy keeps what it has, shows `weir_control_plane_connected 0`, and reconnects
//! with capped exponential backoff and full jitter. Every poll's node names the proxy's inbound
//! and admin listeners as bound ([`crate::start`] fills them in), so that the operator can find
//! the sidecar in front of an endpoint and read its `/metrics`.
//!
//! An answer is read by [`weir_proxy_api::protocol::read_answer`] (a pure function, fuzzed on its
//! own) from at most 16 MiB of body. When applying what an answer brought fails (building the
//! route table panicked), the proxy goes back to what it runs, refuses those updates (NACKs them
//! on the next poll, counts and logs them) and applies the next version pushed. The task runs
//! under [`store::supervised`]: after a panic elsewhere it starts again and asks the control plane
//! for every resource afresh, as after a reconnect.

use crate::store::{self, ApplyFailed, Build, Store};
use crate::table::{RouteTable, ServiceKey};
use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use weir_proxy_api::protocol::{
    CheckedUpdate, DISCOVERY_PATH, DiscoveryRequest, HeldResource, INBOUND_RESOURCE, Node,
    Rejection, ResourceContent, parse_service_resource, read_answer, service_resource,
};
use weir_proxy_api::{InboundPolicy, InvalidConfig, ProxyConfig, ServiceConfig, bounds};

/// Settings of the control-plane client.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The operator's config API, e.g. `http://127.0.0.1:15010`.
    pub url: Uri,
    pub node: Node,
    /// How long the operator may hold a poll when nothing changed.
    pub wait: Duration,
    /// A service not called for this long is unsubscribed and forgotten.
    pub subscription_idle: Duration,
    /// Where the token presented on every poll is, when the control plane asks for one.
    pub token_file: Option<PathBuf>,
}

/// A token is a few kilobytes at most; anything larger is not one.
const TOKEN_MAX_BYTES: u64 = 64 * 1024;

/// The token in `path`, read now: projected tokens are rotated by the kubelet, so each poll
/// presents the current one.
async fn read_token(path: &Path) -> Result<String, PollError> {
    let token = async {
        let file = tokio::fs::File::open(path).await?;
        let mut text = String::new();
        file.take(TOKEN_MAX_BYTES + 1)
            .read_to_string(&mut text)
            .await?;
        if text.len() as u64 > TOKEN_MAX_BYTES {
            return Err(std::io::Error::other("larger than 64 KiB"));
        }
        Ok(text.trim().to_owned())
    }
    .await;
    match token {
        Ok(token) if !token.is_empty() => Ok(token),
        Ok(_) => Err(PollError::Token(
            path.to_owned(),
            "the file is empty".into(),
        )),
        Err(e) => Err(PollError::Token(path.to_owned(), e.to_string())),
    }
}

const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
const SOURCE: &str = "control-plane";

#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error("cannot reach the control plane: {0}")]
    Unreachable(#[from] hyper_util::client::legacy::Error),
    #[error("the control plane answered {0}: {1}")]
    Status(StatusCode, String),
    #[error("reading the control plane's answer failed: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
    #[error("the control plane's answer is longer than the {} MiB a config may be", bounds::CONFIG_MAX_BYTES / (1024 * 1024))]
    TooLong,
    #[error("the control plane's answer is not valid: {0}")]
    Invalid(InvalidConfig),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot read the token to present from {path}: {why}", path = .0.display(), why = .1)]
    Token(PathBuf, String),
}

/// What the proxy holds, resource by resource.
#[derive(Debug, Default, Clone)]
struct Held {
    /// Resource name → version applied (none while a subscription waits for its first answer).
    versions: BTreeMap<String, Option<u64>>,
    inbound: InboundPolicy,
    services: BTreeMap<ServiceKey, ServiceConfig>,
    /// Services the control plane does not know, with its message and when that was said.
    unknown: HashMap<ServiceKey, (String, Instant)>,
    /// Refusals to report on the next poll.
    rejected: Vec<Rejection>,
    /// The last version refused per resource, so a resend of it is not applied or reported again.
    refused: HashMap<String, u64>,
}

pub async fn run(
    settings: Settings,
    store: Arc<Store>,
    subscriptions: mpsc::UnboundedReceiver<ServiceKey>,
    shutdown: watch::Receiver<bool>,
) {
    run_with(settings, store, subscriptions, shutdown, RouteTable::build).await
}

/// [`run`] with route tables built by `build` (tests inject a panicking one).
pub async fn run_with(
    settings: Settings,
    store: Arc<Store>,
    mut subscriptions: mpsc::UnboundedReceiver<ServiceKey>,
    mut shutdown: watch::Receiver<bool>,
    build: Build,
) {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(2)));
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(http);
    let mut held = Held::default();
    held.versions.insert(INBOUND_RESOURCE.to_owned(), None);
    let task = Task {
        client: &client,
        settings: &settings,
        store: &store,
        build,
    };
    loop {
        // After a restart what is held may be half-updated: ask for every resource afresh (the
        // operator answers at once with each one's current version), as after a reconnect.
        for version in held.versions.values_mut() {
            *version = None;
        }
        let run = task.run(&mut held, &mut subscriptions, &mut shutdown);
        if store::supervised(SOURCE, &store, run).await {
            return;
        }
    }
}

/// What one run of the config task works with.
struct Task<'a> {
    client: &'a Client<HttpConnector, Full<Bytes>>,
    settings: &'a Settings,
    store: &'a Store,
    build: Build,
}

impl Task<'_> {
    async fn run(
        &self,
        held: &mut Held,
        subscriptions: &mut mpsc::UnboundedReceiver<ServiceKey>,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        let (settings, store) = (self.settings, self.store);
        let mut failures: u32 = 0;
        let mut last_sweep = Instant::now();
        loop {
            while let Ok(key) = subscriptions.try_recv() {
                subscribe(held, &key);
            }
            if last_sweep.elapsed() >= SWEEP_INTERVAL {
                last_sweep = Instant::now();
                if sweep(held, store, settings.subscription_idle) {
                    // A failure is reported by the store; the next answer applies again.
                    let _ = apply(held, store, self.build);
                }
            }
            let request = DiscoveryRequest {
                node: settings.node.clone(),
                resources: held
                    .versions
                    .iter()
                    .map(|(name, version)| HeldResource {
                        name: name.clone(),
                        version: *version,
                    })
                    .collect(),
                rejected: std::mem::take(&mut held.rejected),
                wait_seconds: settings.wait.as_secs().try_into().unwrap_or(u32::MAX),
            };
            let poll = poll(self.client, settings, &request);
            tokio::select! {
                answer = poll => match answer {
                    Ok(updates) => {
                        store.metrics.control_plane_connected.set(1);
                        failures = 0;
                        take_in(held, updates, store, self.build);
                    }
                    Err(e) => {
                        // Rejections not delivered go out with the next poll.
                        held.rejected.extend(request.rejected);
                        store.metrics.control_plane_connected.set(0);
                        failures = failures.saturating_add(1);
                        let ceiling = BACKOFF_BASE.saturating_mul(1 << failures.min(10)).min(BACKOFF_MAX);
                        let wait = ceiling.mul_f64(fastrand::f64());
                        if failures == 1 || failures.is_multiple_of(20) {
                            tracing::warn!(error = %e, retry_in = ?wait, "control plane unavailable; serving with the config held");
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            () = crate::server::stopped(shutdown) => return,
                        }
                    }
                },
                Some(key) = subscriptions.recv() => {
                    // Abandon the pending poll: the next one names the new service and is answered
                    // at once. Rejections it carried go out again.
                    held.rejected.extend(request.rejected);
                    subscribe(held, &key);
                }
                () = crate::server::stopped(shutdown) => return,
            }
        }
    }
}

/// Takes in an answer's updates and runs the result. When applying fails, goes back to what
/// runs and refuses the updates taken in (the next poll NACKs them), so that the next version
/// pushed is applied.
fn take_in(held: &mut Held, updates: Vec<CheckedUpdate>, store: &Store, build: Build) {
    if updates.is_empty() && store.is_ready() {
        return;
    }
    let before = held.clone();
    let accepted = receive(held, updates, store);
    if accepted.is_empty() && store.is_ready() {
        return;
    }
    if let Err(failed) = apply(held, store, build) {
        let rejected = std::mem::take(&mut held.rejected);
        let refused = std::mem::take(&mut held.refused);
        *held = before;
        held.rejected = rejected;
        held.refused = refused;
        nack(held, store, accepted, &failed);
    }
}

/// Refuses updates that were valid but could not be applied.
fn nack(held: &mut Held, store: &Store, updates: Vec<(String, u64)>, failed: &ApplyFailed) {
    for (name, version) in updates {
        store
            .metrics
            .config_rejected
            .with_label_values(&[SOURCE])
            .inc();
        tracing::error!(resource = %name, version, error = %failed,
            "config update could not be applied; keeping the last good config");
        held.refused.insert(name.clone(), version);
        held.rejected.push(Rejection {
            name,
            version,
            message: failed.to_string(),
        });
    }
}

/// Subscribes to a service, unless the proxy already holds as many as a proxy config may
/// ([`bounds::MAX_SERVICES`]): then the call waits out its subscription wait and gets 503, and
/// the subscription is possible again once idle services were swept.
fn subscribe(held: &mut Held, key: &ServiceKey) {
    let name = service_resource(&key.namespace, &key.name);
    let services = held.versions.len() - usize::from(held.versions.contains_key(INBOUND_RESOURCE));
    if !held.versions.contains_key(&name) && services >= bounds::MAX_SERVICES {
        tracing::warn!(service = %key, limit = bounds::MAX_SERVICES,
            "not subscribing: this proxy already holds the most services a proxy config may");
        return;
    }
    held.versions.entry(name).or_insert(None);
}

async fn poll(
    client: &Client<HttpConnector, Full<Bytes>>,
    settings: &Settings,
    request: &DiscoveryRequest,
) -> Result<Vec<CheckedUpdate>, PollError> {
    let mut parts = settings.url.clone().into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::from_static(DISCOVERY_PATH));
    let uri = Uri::from_parts(parts).expect("a base URL with a path is a URI");
    let body = serde_json::to_vec(request).expect("the request serializes");
    let mut http_request = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
    if let Some(path) = &settings.token_file {
        let token = read_token(path).await?;
        let value = http::HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
            PollError::Token(
                path.clone(),
                "not a token (characters a header cannot hold)".into(),
            )
        })?;
        http_request = http_request.header(header::AUTHORIZATION, value);
    }
    let http_request = http_request
        .body(Full::new(Bytes::from(body)))
        .expect("a POST with a JSON body is a valid request");
    let limit = settings.wait + Duration::from_secs(10);
    let exchange = async {
        let response = client.request(http_request).await?;
        let status = response.status();
        // Never more than a config may be, whatever the answer's length says.
        let bytes = Limited::new(response.into_body(), bounds::CONFIG_MAX_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<LengthLimitError>() {
                    PollError::TooLong
                } else {
                    PollError::Body(e)
                }
            })?
            .to_bytes();
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
            return Err(PollError::Status(status, text));
        }
        read_answer(&bytes).map_err(PollError::Invalid)
    };
    tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or(Err(PollError::Timeout(limit)))
}

/// Takes in an answer's updates; returns the ones taken in (changing what the proxy runs).
fn receive(held: &mut Held, updates: Vec<CheckedUpdate>, store: &Store) -> Vec<(String, u64)> {
    let mut accepted = Vec::new();
    for update in updates {
        if !held.versions.contains_key(&update.name) {
            continue; // unsubscribed meanwhile
        }
        if held.refused.get(&update.name) == Some(&update.version) {
            continue;
        }
        match update.content {
            Ok(content) => {
                held.refused.remove(&update.name);
                held.versions
                    .insert(update.name.clone(), Some(update.version));
                accepted.push((update.name.clone(), update.version));
                let key =
                    parse_service_resource(&update.name).map(|(namespace, name)| ServiceKey {
                        namespace: namespace.to_owned(),
                        name: name.to_owned(),
                    });
                match (content, key) {
                    (ResourceContent::Inbound(policy), None) => held.inbound = policy,
                    (ResourceContent::Service(config), Some(key)) => {
                        held.unknown.remove(&key);
                        held.services.insert(key, *config);
                    }
                    (ResourceContent::NotFound(why), Some(key)) => {
                        held.services.remove(&key);
                        held.unknown.insert(key, (why, Instant::now()));
                    }
                    (ResourceContent::NotFound(_), None) => held.inbound = InboundPolicy::default(),
                    _ => unreachable!("read_answer() matched content to name"),
                }
            }
            Err(e) => {
                store
                    .metrics
                    .config_rejected
                    .with_label_values(&[SOURCE])
                    .inc();
                tracing::error!(resource = %update.name, version = update.version, field = %e.field, error = %e,
                    "config update refused; keeping the last good config");
                held.refused.insert(update.name.clone(), update.version);
                held.rejected.push(Rejection {
                    name: update.name,
                    version: update.version,
                    message: e.to_string(),
                });
            }
        }
    }
    accepted
}

/// Forgets services not called for `idle`; returns true when any was dropped.
fn sweep(held: &mut Held, store: &Store, idle: Duration) -> bool {
    let now_secs = store.seconds_since_epoch();
    let table = store.table();
    let idle_secs = idle.as_secs();
    let before = held.services.len() + held.unknown.len();
    held.services.retain(|key, _| {
        table
            .service(&key.namespace, &key.name)
            .is_none_or(|route| {
                now_secs.saturating_sub(route.last_used.load(Ordering::Relaxed)) < idle_secs
            })
    });
    held.unknown.retain(|_, (_, at)| at.elapsed() < idle);
    let services = &held.services;
    let unknown = &held.unknown;
    held.versions
        .retain(|name, version| match parse_service_resource(name) {
            None => true,
            // Still waiting for its first answer.
            Some(_) if version.is_none() => true,
            Some((namespace, service)) => {
                let key = ServiceKey {
                    namespace: namespace.to_owned(),
                    name: service.to_owned(),
                };
                services.contains_key(&key) || unknown.contains_key(&key)
            }
        });
    let versions = &held.versions;
    held.refused.retain(|name, _| versions.contains_key(name));
    let dropped = before != held.services.len() + held.unknown.len();
    if dropped {
        tracing::info!(services = held.services.len(), "idle subscriptions dropped");
    }
    dropped
}

/// Assembles what is held into one ProxyConfig and runs it.
fn apply(held: &Held, store: &Store, build: Build) -> Result<(), ApplyFailed> {
    let config = ProxyConfig {
        version: held.versions.values().flatten().copied().max().unwrap_or(0),
        inbound: held.inbound.clone(),
        services: held.services.values().cloned().collect(),
        limits: Default::default(),
    };
    let unknown = held
        .unknown
        .iter()
        .map(|(k, (why, _))| (k.clone(), why.clone()))
        .collect();
    store.apply_with(config, unknown, build)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    /// As the proxy builds tables, except that a weight of 20 panics.
    fn panics_on_weight_20(
        config: ProxyConfig,
        unknown: HashMap<ServiceKey, String>,
        previous: &RouteTable,
        now: Instant,
    ) -> RouteTable {
        let weights = config.services.iter().flat_map(|s| &s.subsets);
        assert!(
            weights.clone().all(|s| s.weight != 20),
            "weight 20 cannot be built"
        );
        RouteTable::build(config, unknown, previous, now)
    }

    fn payments(version: u64, weight: u32) -> Vec<CheckedUpdate> {
        let answer = format!(
            r#"{{"resources": [{{"name": "service/shop/payments", "version": {version},
                "content": {{"service": {{"name": "payments", "namespace": "shop",
                    "subsets": [{{"name": "v1", "weight": {weight}}}]}}}}}}]}}"#
        );
        read_answer(answer.as_bytes()).unwrap()
    }

    fn weight(store: &Store) -> u32 {
        store.table().config.services[0].subsets[0].weight
    }

    #[test]
    fn subscriptions_stop_at_the_most_services_a_config_may_hold() {
        let mut held = Held::default();
        held.versions.insert(INBOUND_RESOURCE.to_owned(), None);
        let key = |i: usize| ServiceKey {
            namespace: "shop".into(),
            name: format!("s{i}"),
        };
        for i in 0..bounds::MAX_SERVICES {
            subscribe(&mut held, &key(i));
        }
        assert_eq!(held.versions.len(), bounds::MAX_SERVICES + 1);
        subscribe(&mut held, &key(bounds::MAX_SERVICES));
        assert_eq!(held.versions.len(), bounds::MAX_SERVICES + 1);
        // One already held is still fine.
        subscribe(&mut held, &key(7));
        assert!(held.versions.contains_key("service/shop/s7"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_update_that_cannot_be_applied_is_nacked_and_the_next_version_applies() {
        let store = Store::new(Metrics::new());
        let mut held = Held::default();
        held.versions.insert(INBOUND_RESOURCE.to_owned(), None);
        held.versions
            .insert("service/shop/payments".to_owned(), None);
        let build = panics_on_weight_20 as Build;

        take_in(&mut held, payments(1, 10), &store, build);
        assert_eq!(weight(&store), 10);
        assert_eq!(store.readiness(), Ok(()));

        take_in(&mut held, payments(2, 20), &store, build);
        assert_eq!(weight(&store), 10, "the last good config stays");
        let why = store.readiness().unwrap_err();
        assert!(why.contains("weight 20 cannot be built"), "{why}");
        assert_eq!(
            held.versions["service/shop/payments"],
            Some(1),
            "still acknowledges 1"
        );
        assert_eq!(held.services.values().next().unwrap().subsets[0].weight, 10);
        let nack = &held.rejected[0];
        assert_eq!(
            (nack.name.as_str(), nack.version),
            ("service/shop/payments", 2)
        );
        assert!(
            nack.message.contains("applying config version 2 failed"),
            "{}",
            nack.message
        );
        assert_eq!(
            store
                .metrics
                .config_rejected
                .with_label_values(&[SOURCE])
                .get(),
            1
        );

        // The same version again is not tried again; the next one is applied.
        held.rejected.clear();
        take_in(&mut held, payments(2, 20), &store, build);
        assert!(held.rejected.is_empty());
        assert_eq!(weight(&store), 10);
        take_in(&mut held, payments(3, 30), &store, build);
        assert_eq!(weight(&store), 30);
        assert_eq!(store.readiness(), Ok(()));
        assert_eq!(held.versions["service/shop/payments"], Some(3));
        assert!(held.refused.is_empty());
    }
}
