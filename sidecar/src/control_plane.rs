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

use crate::store::Store;
use crate::table::ServiceKey;
use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use weir_proxy_api::protocol::{
    DISCOVERY_PATH, DiscoveryRequest, DiscoveryResponse, HeldResource, INBOUND_RESOURCE, Node,
    Rejection, ResourceContent, parse_service_resource, service_resource,
};
use weir_proxy_api::validate::from_value;
use weir_proxy_api::{InboundPolicy, InvalidConfig, ProxyConfig, ServiceConfig};

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
}

const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error("cannot reach the control plane: {0}")]
    Unreachable(#[from] hyper_util::client::legacy::Error),
    #[error("the control plane answered {0}: {1}")]
    Status(StatusCode, String),
    #[error("reading the control plane's answer failed: {0}")]
    Body(#[from] hyper::Error),
    #[error("the control plane's answer is not valid: {0}")]
    Invalid(InvalidConfig),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// What the proxy holds, resource by resource.
#[derive(Debug, Default)]
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
    mut subscriptions: mpsc::UnboundedReceiver<ServiceKey>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(2)));
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(http);
    let mut held = Held::default();
    held.versions.insert(INBOUND_RESOURCE.to_owned(), None);
    let mut failures: u32 = 0;
    let mut last_sweep = Instant::now();
    loop {
        while let Ok(key) = subscriptions.try_recv() {
            subscribe(&mut held, &key);
        }
        if last_sweep.elapsed() >= SWEEP_INTERVAL {
            last_sweep = Instant::now();
            if sweep(&mut held, &store, settings.subscription_idle) {
                apply(&held, &store);
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
        let poll = poll(&client, &settings, &request);
        tokio::select! {
            answer = poll => match answer {
                Ok(response) => {
                    store.metrics.control_plane_connected.set(1);
                    failures = 0;
                    let changed = receive(&mut held, response, &store);
                    if changed || !store.is_ready() {
                        apply(&held, &store);
                    }
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
                        () = crate::server::stopped(&mut shutdown) => return,
                    }
                }
            },
            Some(key) = subscriptions.recv() => {
                // Abandon the pending poll: the next one names the new service and is answered
                // at once. Rejections it carried go out again.
                held.rejected.extend(request.rejected);
                subscribe(&mut held, &key);
            }
            () = crate::server::stopped(&mut shutdown) => return,
        }
    }
}

fn subscribe(held: &mut Held, key: &ServiceKey) {
    held.versions
        .entry(service_resource(&key.namespace, &key.name))
        .or_insert(None);
}

async fn poll(
    client: &Client<HttpConnector, Full<Bytes>>,
    settings: &Settings,
    request: &DiscoveryRequest,
) -> Result<DiscoveryResponse<serde_json::Value>, PollError> {
    let mut parts = settings.url.clone().into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::from_static(DISCOVERY_PATH));
    let uri = Uri::from_parts(parts).expect("a base URL with a path is a URI");
    let body = serde_json::to_vec(request).expect("the request serializes");
    let http_request = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a POST with a JSON body is a valid request");
    let limit = settings.wait + Duration::from_secs(10);
    let exchange = async {
        let response = client.request(http_request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
            return Err(PollError::Status(status, text));
        }
        weir_proxy_api::validate::parse_json(&bytes).map_err(PollError::Invalid)
    };
    tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or(Err(PollError::Timeout(limit)))
}

/// Takes in an answer; returns true when something the proxy runs changed.
fn receive(held: &mut Held, response: DiscoveryResponse<serde_json::Value>, store: &Store) -> bool {
    let mut changed = false;
    for (i, update) in response.resources.into_iter().enumerate() {
        if !held.versions.contains_key(&update.name) {
            continue; // unsubscribed meanwhile
        }
        if held.refused.get(&update.name) == Some(&update.version) {
            continue;
        }
        match check(&update.name, update.content, i) {
            Ok(content) => {
                held.refused.remove(&update.name);
                held.versions
                    .insert(update.name.clone(), Some(update.version));
                changed = true;
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
                    _ => unreachable!("check() matched content to name"),
                }
            }
            Err(e) => {
                store
                    .metrics
                    .config_rejected
                    .with_label_values(&["control-plane"])
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
    changed
}

/// Parses and validates one resource against its name.
fn check(
    name: &str,
    content: serde_json::Value,
    index: usize,
) -> Result<ResourceContent, InvalidConfig> {
    let prefix = format!("resources[{index}].content");
    let content: ResourceContent = from_value(content, &prefix)?;
    let invalid = |field: &str, message: String| InvalidConfig {
        field: format!("{prefix}.{field}"),
        message,
    };
    match (&content, parse_service_resource(name)) {
        (ResourceContent::Inbound(policy), None) if name == INBOUND_RESOURCE => {
            policy
                .validate()
                .map_err(|e| invalid(&format!("inbound.{}", e.field), e.message))?
        }
        (ResourceContent::Service(config), Some((namespace, service))) => {
            config
                .validate()
                .map_err(|e| invalid(&format!("service.{}", e.field), e.message))?;
            if config.namespace != namespace || config.name != service {
                return Err(invalid(
                    "service.name",
                    format!(
                        "the resource {name} holds service {}.{}",
                        config.name, config.namespace
                    ),
                ));
            }
        }
        (ResourceContent::NotFound(_), _) => {}
        _ => {
            return Err(invalid(
                "",
                format!("content of the wrong kind for resource {name}"),
            ));
        }
    }
    Ok(content)
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
fn apply(held: &Held, store: &Store) {
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
    store.apply(config, unknown);
}
