//! The config API's server: `POST /v1/discovery`, the JSON long-poll that every sidecar uses to
//! fetch its config. The exchange (what a proxy sends, what it gets back, what its next poll
//! means) is specified once, in [`weir_proxy_api::protocol`]; this module is the operator's side
//! of it and documents only the choices made here.
//!
//! # Serving
//!
//! [`ConfigApi`] serves the latest [`Snapshot`] from a `watch` channel that the sources (the
//! Kubernetes watchers or the local folder) publish to. For each poll it looks up every resource
//! the proxy names in the snapshot, and answers at once with those whose version differs from
//! the one held; otherwise it parks the request on the channel and looks again at every new
//! snapshot until one of the named resources moved or `waitSeconds` (capped at [`MAX_WAIT`])
//! passed. Long-poll rather than a stream because it makes subscription, acknowledgement and
//! resync one request shape, keeps no per-connection stream state to rebuild after an operator
//! restart, and still pushes a change with one response write (see the protocol module).
//! Every held poll wakes on every new snapshot and compares the few versions it names (a hash
//! lookup each), which keeps a change's cost proportional to the proxies polling, with no index
//! of subscriptions to keep consistent. HTTP is hyper's (HTTP/1.1 and h2c through hyper-util's
//! auto builder, with its graceful shutdown); only the protocol logic is ours, since the
//! protocol is.
//!
//! The first poll of a proxy this server does not track yet (a sidecar that just started, or
//! one that reconnected after an operator restart and names what it holds) is answered at once,
//! possibly with an empty list: the sidecar counts itself connected only when a poll is
//! answered, so holding that poll would show `weir_control_plane_connected 0` for up to
//! `waitSeconds` after every reconnect. It polls again at once and that poll is held.
//!
//! A resource the snapshot does not hold is still answered, so that a proxy is never left
//! waiting: `inbound` without a policy is the empty policy at version 0, and an unknown
//! `service/<ns>/<name>` is `notFound` with a message naming the service, also at version 0
//! (a proxy that holds version 0 already is not sent it again). Versions come from the
//! snapshot's single counter, so they only grow while a resource exists.
//!
//! # Acknowledgements and rejections
//!
//! A proxy's next poll is its acknowledgement: the versions it names are the ones it runs, and
//! [`ConfigApi::proxies`] shows them. Its `rejected` list is a NACK: each entry is counted in
//! `weir_config_rejected_total{kind}` and logged (warn) with the node, resource, version and
//! message, and the rejected version is remembered for that proxy so it is not sent to it again
//! (a proxy that refused version V of a resource holds its previous version, so without this
//! memory every poll would differ and be answered with V at once: a hot loop). The memory is
//! keyed by namespace, service and pod name (the peer's IP address when the node names no pod)
//! so it survives the proxy's reconnects (pod-less proxies of one service on one host share it,
//! which is harmless: they run the same validation), and an entry is dropped as soon as the
//! resource moves past the rejected version. As a second guard, a poll that would be answered with exactly
//! what the previous answer to the same proxy carried (so the proxy did not apply it and did not
//! say why) is answered with exponential backoff (250 ms doubling up to 30 s) instead of at once.
//!
//! # Connected proxies
//!
//! A proxy is identified by namespace, service and pod; without a pod name, by its peer address
//! (IP and port: one TCP connection, since the sidecar keeps its poll connection alive). It is
//! connected while it has a poll in flight and for `waitSeconds` + 10 s after its last answer;
//! a poll the proxy abandoned (it closed the connection, e.g. to subscribe to a new service or
//! because it stopped) leaves it connected for 5 s when it has a pod name, and removes it at
//! once otherwise (its next connection is a new peer address). `weir_connected_proxies` is the
//! number of proxies tracked; a housekeeping pass every second forgets the ones past their time.
//!
//! Each proxy's node is kept as its latest poll sent it, with the inbound and admin listeners
//! it names (a sidecar fills both in; `/proxies` shows them). [`ConfigApi::admin_of`] answers
//! "where is the admin listener of the connected proxy of service S in namespace N whose
//! inbound listener is address A": what the local-mode Autoscaler scrapes for a LocalService
//! endpoint that does not name its sidecar's `admin`. A proxy listens on A when its inbound
//! listener has A's port and A's IP, or an unspecified IP (`0.0.0.0`, `::`: every address).
//! Should several fit, an exact IP wins over an unspecified one, then an unspecified one whose
//! polls come from A's IP (likely the same host), then the most recent poll. An unspecified
//! admin IP is replaced by A's IP (a listener on every address is reachable there). It is one
//! pass over the proxies under the state lock, without allocation: a few microseconds for the
//! handful of proxies of a local mesh, called a few times every 2 s.
//!
//! # Push latency
//!
//! `weir_config_push_seconds` is measured from the moment the source observed the change (the
//! snapshot's `observed`: the watch event or file change that started its translation, so the
//! debounce and the translation count too; the moment the config API sees the snapshot when the
//! source did not say) to the moment every connected proxy that subscribes to a changed resource acknowledged it (polled
//! naming the new version, or a later one, or rejected exactly that version: the push reached it
//! either way). When a snapshot is seen (by the first poll that reads it or by the background
//! task, whichever is first), its changed resources and the proxies that still need them are
//! recorded; each poll removes the proxy from the records it satisfies, and the last one
//! observes the elapsed time, once. A proxy that goes away stops counting; a record that no
//! proxy ever acknowledged is dropped unobserved, and a change nobody subscribes to records
//! nothing. A later change of the same resource moves the target of older records to the newer
//! version (a proxy that skipped the middle version cannot acknowledge it). To stay bounded, at
//! most 256 records are pending and a record still pending after 60 s is **observed as it is**
//! (about 60 s, above the top bucket, so a stuck proxy shows in the histogram's `+Inf` and in a
//! warning that names how many proxies are behind) rather than silently discarded.

use crate::metrics::{KIND_INBOUND, KIND_OTHER, KIND_SERVICE, Metrics};
use crate::snapshot::{ServiceKey, Snapshot};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use weir_proxy_api::protocol::{
    DISCOVERY_PATH, DiscoveryRequest, INBOUND_RESOURCE, Node, Rejection, parse_service_resource,
    service_resource,
};
use weir_proxy_api::{InboundPolicy, ServiceConfig};

/// The longest a poll is held, whatever its `waitSeconds` asks.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// A proxy stays connected this long beyond its `waitSeconds` after its last answer.
const CONNECTED_GRACE: Duration = Duration::from_secs(10);
/// ... and this long after a poll it abandoned (when it has a pod name).
const ABANDONED_GRACE: Duration = Duration::from_secs(5);
/// A push record pending this long is observed as it is.
const PUSH_RECORD_LIMIT: Duration = Duration::from_secs(60);
const MAX_PENDING_PUSHES: usize = 256;
/// Rejections of a proxy not heard from for this long are forgotten.
const REJECTION_MEMORY: Duration = Duration::from_secs(600);
/// A discovery request is a list of names and versions: a megabyte is plenty.
const MAX_BODY_BYTES: usize = 1024 * 1024;
const MAX_HEADER_BYTES: usize = 64 * 1024;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);
/// On shutdown, how long open connections get to finish (held polls are answered at once).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const RESEND_BACKOFF_BASE: Duration = Duration::from_millis(250);
const RESEND_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A rejection message is logged up to this many characters.
const MAX_LOGGED_MESSAGE: usize = 512;

static EMPTY_INBOUND: LazyLock<InboundPolicy> = LazyLock::new(InboundPolicy::default);

/// Who a polling proxy is, as its credentials prove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyIdentity {
    pub namespace: String,
    pub pod: Option<String>,
}

/// Checks the bearer token a proxy presents; `None` refuses the poll (401).
pub trait Authenticate: Send + Sync + std::fmt::Debug {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> futures::future::BoxFuture<'a, Option<ProxyIdentity>>;
}

/// The most resources one poll may name.
pub const MAX_RESOURCES: usize = 1000;

/// Where the connected proxies that use one Service's config stand with a version of it: what
/// a resource's `Programmed` condition says ([`ConfigApi::acknowledgements`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acknowledgement {
    /// Connected proxies that use it (callers subscribed to the service; with an inbound
    /// version, also the service's own proxies).
    pub using: usize,
    /// Those that run that version or a later one.
    pub acknowledged: usize,
    /// Those that refused it: the proxy (`namespace/pod`, or `namespace/service@address`) and
    /// its message.
    pub refused: Vec<(String, String)>,
}

/// The versions a resource's config reached proxies at: its Service's outbound config and, for
/// a resource with an inbound part, the Service's inbound policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub outbound: u64,
    pub inbound: Option<u64>,
}

/// The operator's side of the config API. Create it with [`ConfigApi::new`], serve it with
/// [`ConfigApi::serve`] (or route requests to [`ConfigApi::handle`]).
#[derive(Debug)]
pub struct ConfigApi {
    /// When set, every poll must present a bearer token it accepts, and the proxy's namespace
    /// and pod are the token's, not what the poll says (in a cluster; local mode has none).
    authenticator: std::sync::OnceLock<Arc<dyn Authenticate>>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    polls: watch::Sender<u64>,
}

/// One proxy as the config API sees it: what [`ConfigApi::proxies`] lists (and an admin
/// `/proxies` endpoint can serve as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    /// Who it is, as its last poll said: with its inbound and admin listeners when it names them.
    pub node: Node,
    /// The address its last poll came from.
    pub peer: SocketAddr,
    /// Every resource its last poll named, with the version it holds (none: not received yet).
    pub held: BTreeMap<String, Option<u64>>,
    /// Updates it refused that are still current (and therefore not sent to it again).
    pub rejected: BTreeMap<String, u64>,
    /// Polls received from it.
    pub polls: u64,
    /// Whether a poll of it is being held now.
    pub polling: bool,
    /// Milliseconds since its last poll arrived.
    pub last_poll_ms_ago: u64,
}

#[derive(Debug)]
struct State {
    /// The newest snapshot taken into account for push records.
    seen: Arc<Snapshot>,
    proxies: HashMap<ProxyKey, ProxyEntry>,
    rejections: HashMap<RejectorKey, Rejected>,
    pushes: VecDeque<Push>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Instance {
    Pod(String),
    Peer(SocketAddr),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ProxyKey {
    namespace: String,
    service: String,
    instance: Instance,
}

/// Who rejected: the same across a proxy's connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Who {
    Pod(String),
    Ip(IpAddr),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RejectorKey {
    namespace: String,
    service: String,
    who: Who,
}

#[derive(Debug)]
struct Rejected {
    /// Resource name → the version refused.
    versions: HashMap<String, u64>,
    /// Resource name → why (cut to a few hundred characters), for `Programmed=False`.
    messages: HashMap<String, String>,
    last_seen: Instant,
}

#[derive(Debug)]
struct ProxyEntry {
    node: Node,
    rejector: RejectorKey,
    peer: SocketAddr,
    held: BTreeMap<String, Option<u64>>,
    in_flight: u32,
    polls: u64,
    last_poll: Instant,
    /// When it stops counting as connected; only meaningful with no poll in flight.
    expires: Instant,
    /// What the last answer carried, to notice a proxy that ignores it.
    last_sent: Vec<(String, u64)>,
    /// Answers in a row that repeated the previous one.
    resends: u32,
    /// How long its last poll could be held (a proxy asks the same every time).
    last_wait: Duration,
}

/// A change waiting for its acknowledgements.
#[derive(Debug)]
struct Push {
    seen: Instant,
    version: u64,
    /// `service/<ns>/<name>` → the version to acknowledge.
    services: HashMap<String, u64>,
    /// Inbound policy of (namespace, service) → the version to acknowledge.
    inbound: HashMap<ServiceKey, u64>,
    outstanding: HashSet<ProxyKey>,
    acknowledged: usize,
}

/// What a resource name refers to.
enum Resource {
    Inbound,
    Service(ServiceKey),
    Unknown,
}

impl Resource {
    fn parse(name: &str) -> Self {
        if name == INBOUND_RESOURCE {
            Self::Inbound
        } else if let Some((namespace, service)) = parse_service_resource(name) {
            Self::Service(ServiceKey::new(namespace, service))
        } else {
            Self::Unknown
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Inbound => KIND_INBOUND,
            Self::Service(_) => KIND_SERVICE,
            Self::Unknown => KIND_OTHER,
        }
    }
}

/// The current version of `name` for a proxy of `namespace`/`service`.
fn resource_version(snapshot: &Snapshot, namespace: &str, service: &str, name: &str) -> u64 {
    match Resource::parse(name) {
        Resource::Inbound => snapshot
            .inbound
            .get(&ServiceKey::new(namespace, service))
            .map_or(0, |v| v.version),
        Resource::Service(key) => snapshot.services.get(&key).map_or(0, |v| v.version),
        Resource::Unknown => 0,
    }
}

// The wire shape of `weir_proxy_api::protocol::DiscoveryResponse`, borrowing from the snapshot so
// that answering a thousand proxies does not clone a thousand configs (a unit test checks that
// the typed response reads it back).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum ContentRef<'a> {
    Inbound(&'a InboundPolicy),
    Service(&'a ServiceConfig),
    NotFound(String),
}

#[derive(Serialize)]
struct UpdateRef<'a> {
    name: &'a str,
    version: u64,
    content: ContentRef<'a>,
}

#[derive(Serialize)]
struct ResponseRef<'a> {
    resources: Vec<UpdateRef<'a>>,
}

fn content<'a>(snapshot: &'a Snapshot, node: &Node, name: &str) -> ContentRef<'a> {
    match Resource::parse(name) {
        Resource::Inbound => ContentRef::Inbound(
            snapshot
                .inbound
                .get(&ServiceKey::new(&node.namespace, &node.service))
                .map_or(&*EMPTY_INBOUND, |v| &*v.value),
        ),
        Resource::Service(key) => match snapshot.services.get(&key) {
            Some(config) => ContentRef::Service(&config.value),
            None => ContentRef::NotFound(format!(
                "service {}.{} is not known to the control plane: no Service, LocalService or \
                 TrafficSplit defines it in namespace {}",
                key.name, key.namespace, key.namespace
            )),
        },
        Resource::Unknown => ContentRef::NotFound(format!(
            "{name:?} is not a resource of this control plane (it serves `{INBOUND_RESOURCE}` and \
             `service/<namespace>/<name>`)"
        )),
    }
}

fn at_least(held: Option<u64>, target: u64) -> bool {
    // A removed resource's target is 0 (not found); otherwise versions only grow.
    held.is_some_and(|v| v == target || (target != 0 && v > target))
}

/// Whether `entry` needs nothing more of `push`.
fn satisfies(entry: &ProxyEntry, push: &Push, rejected: Option<&Rejected>) -> bool {
    let refused =
        |name: &str, target: u64| rejected.is_some_and(|r| r.versions.get(name) == Some(&target));
    entry.held.iter().all(|(name, held)| {
        let target = if name == INBOUND_RESOURCE {
            push.inbound
                .get(&ServiceKey::new(&entry.node.namespace, &entry.node.service))
        } else {
            push.services.get(name)
        };
        target.is_none_or(|&t| at_least(*held, t) || refused(name, t))
    })
}

/// Whether an inbound listener bound to `inbound` receives connections to `endpoint`, and how
/// surely: `None` when it does not (another port, or another IP); otherwise a rank, higher
/// better — 2 for the same IP, 1 for an unspecified one with polls from the endpoint's IP (the
/// proxy is likely on that host), 0 for an unspecified one.
pub fn inbound_match(inbound: SocketAddr, peer: IpAddr, endpoint: SocketAddr) -> Option<u8> {
    if inbound.port() != endpoint.port() {
        return None;
    }
    if inbound.ip() == endpoint.ip() {
        Some(2)
    } else if inbound.ip().is_unspecified() {
        Some(u8::from(peer == endpoint.ip()))
    } else {
        None
    }
}

/// The admin listener to dial for a proxy found at `endpoint`: `admin` itself, or, when it is
/// bound to an unspecified IP, its port on the endpoint's IP.
pub fn reachable_admin(admin: SocketAddr, endpoint: SocketAddr) -> SocketAddr {
    if admin.ip().is_unspecified() {
        SocketAddr::new(endpoint.ip(), admin.port())
    } else {
        admin
    }
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error_response(status: StatusCode, message: &str, field: Option<&str>) -> Response<Full<Bytes>> {
    let body = match field {
        Some(field) if !field.is_empty() => {
            serde_json::json!({"error": message, "field": field})
        }
        _ => serde_json::json!({ "error": message }),
    };
    json_response(status, body.to_string().into_bytes())
}

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Resolves when the server closes; never for a request outside [`ConfigApi::serve`].
async fn closing(closing: &mut Option<watch::Receiver<bool>>) {
    match closing {
        Some(rx) => {
            if rx.wait_for(|closing| *closing).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Unregisters a poll when it ends, answered or not (the connection closed under it).
struct PollGuard<'a> {
    api: &'a ConfigApi,
    key: ProxyKey,
    answered: bool,
}

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut state = self.api.state.lock();
        let Some(entry) = state.proxies.get_mut(&self.key) else {
            return;
        };
        entry.in_flight = entry.in_flight.saturating_sub(1);
        if entry.in_flight > 0 {
            return;
        }
        if self.answered {
            entry.expires = now + entry.last_wait + CONNECTED_GRACE;
        } else if matches!(self.key.instance, Instance::Peer(_)) {
            tracing::debug!(node = ?entry.node, peer = %entry.peer, "proxy abandoned its poll");
            self.api.remove_proxy(&mut state, &self.key, now);
        } else {
            entry.expires = now + ABANDONED_GRACE;
        }
    }
}

impl ConfigApi {
    /// A config API serving the snapshots published on `snapshots`. Spawns a background task
    /// (so it must be called within a Tokio runtime) that notes new snapshots as they come, for
    /// `weir_config_push_seconds` and `weir_config_version`, and forgets proxies past their
    /// time; it ends when the returned `Arc` is dropped.
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, metrics: Arc<Metrics>) -> Arc<Self> {
        let seen = snapshots.borrow().clone();
        metrics
            .config_version
            .set(i64::try_from(seen.version).unwrap_or(i64::MAX));
        let api = Arc::new(Self {
            authenticator: std::sync::OnceLock::new(),
            snapshots: snapshots.clone(),
            metrics,
            state: Mutex::new(State {
                seen,
                proxies: HashMap::new(),
                rejections: HashMap::new(),
                pushes: VecDeque::new(),
            }),
            polls: watch::channel(0).0,
        });
        tokio::spawn(background(Arc::downgrade(&api), snapshots));
        api
    }

    /// Every proxy connected now, sorted by namespace, service and pod.
    pub fn proxies(&self) -> Vec<ProxyStatus> {
        let now = Instant::now();
        let state = self.state.lock();
        let mut list: Vec<ProxyStatus> = state
            .proxies
            .values()
            .map(|entry| ProxyStatus {
                node: entry.node.clone(),
                peer: entry.peer,
                held: entry.held.clone(),
                rejected: state
                    .rejections
                    .get(&entry.rejector)
                    .map(|r| r.versions.iter().map(|(k, v)| (k.clone(), *v)).collect())
                    .unwrap_or_default(),
                polls: entry.polls,
                polling: entry.in_flight > 0,
                last_poll_ms_ago: u64::try_from(now.duration_since(entry.last_poll).as_millis())
                    .unwrap_or(u64::MAX),
            })
            .collect();
        list.sort_by(|a, b| {
            (&a.node.namespace, &a.node.service, &a.node.pod, a.peer).cmp(&(
                &b.node.namespace,
                &b.node.service,
                &b.node.pod,
                b.peer,
            ))
        });
        list
    }

    /// The admin listener of the connected proxy of `service` in `namespace` whose inbound
    /// listener is `endpoint` (see the module docs for the matching); `None` when no connected
    /// proxy of that service names such an inbound listener (and an admin one).
    pub fn admin_of(
        &self,
        namespace: &str,
        service: &str,
        endpoint: SocketAddr,
    ) -> Option<SocketAddr> {
        let now = Instant::now();
        let state = self.state.lock();
        state
            .proxies
            .values()
            .filter(|entry| {
                (entry.in_flight > 0 || entry.expires > now)
                    && entry.node.namespace == namespace
                    && entry.node.service == service
            })
            .filter_map(|entry| {
                let admin = entry.node.admin?;
                let rank = inbound_match(entry.node.inbound?, entry.peer.ip(), endpoint)?;
                Some(((rank, entry.last_poll), admin))
            })
            .max_by_key(|(rank, _)| *rank)
            .map(|(_, admin)| reachable_admin(admin, endpoint))
    }

    /// Requires every poll from now on to present a bearer token `authenticator` accepts
    /// (`Authorization: Bearer <token>`; 401 otherwise), and takes the proxy's namespace and pod
    /// from it. Set once, before serving; a second call is ignored.
    pub fn require_authentication(&self, authenticator: Arc<dyn Authenticate>) {
        let _ = self.authenticator.set(authenticator);
    }

    /// For each Service in `targets`, where the connected proxies that use it stand with the
    /// given versions: one pass over the connected proxies, whatever the number of Services.
    pub fn acknowledgements(
        &self,
        targets: &HashMap<ServiceKey, Target>,
    ) -> HashMap<ServiceKey, Acknowledgement> {
        let mut out: HashMap<ServiceKey, Acknowledgement> = HashMap::new();
        let state = self.state.lock();
        for (key, entry) in &state.proxies {
            let rejected = state.rejections.get(&entry.rejector);
            let who = match &key.instance {
                Instance::Pod(pod) => format!("{}/{pod}", key.namespace),
                Instance::Peer(peer) => format!("{}/{}@{peer}", key.namespace, key.service),
            };
            for (name, held) in &entry.held {
                let (service, target) = match Resource::parse(name) {
                    Resource::Service(service) => match targets.get(&service) {
                        Some(target) => (service, target.outbound),
                        None => continue,
                    },
                    Resource::Inbound => {
                        let own = ServiceKey::new(&entry.node.namespace, &entry.node.service);
                        match targets.get(&own).and_then(|t| t.inbound) {
                            Some(version) => (own, version),
                            None => continue,
                        }
                    }
                    Resource::Unknown => continue,
                };
                let standing = out.entry(service).or_default();
                standing.using += 1;
                if at_least(*held, target) {
                    standing.acknowledged += 1;
                } else if let Some(rejected) =
                    rejected.filter(|r| r.versions.get(name) == Some(&target))
                {
                    let message = rejected.messages.get(name).cloned().unwrap_or_default();
                    standing.refused.push((who.clone(), message));
                }
            }
        }
        for standing in out.values_mut() {
            standing.refused.sort();
        }
        out
    }

    /// The snapshot served now (what the dashboard reads the configured subsets from).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    /// The number of polls received so far; the channel changes with every poll, so a caller
    /// (a test, a tool) can wait for acknowledgements instead of sleeping.
    pub fn poll_counter(&self) -> watch::Receiver<u64> {
        self.polls.subscribe()
    }

    /// Serves the config API on `listener` (HTTP/1.1 and HTTP/2 with prior knowledge) until
    /// `shutdown` turns true (or its sender is dropped). Then it stops accepting, answers every
    /// held poll at once with what it has (usually nothing), and gives open connections up to
    /// 5 s to finish before closing them.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .max_buf_size(MAX_HEADER_BYTES)
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_BYTES as u32);
        let (close, closed) = watch::channel(false);
        let graceful = GracefulShutdown::new();
        let mut connections = JoinSet::new();
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "config API listening");
        }
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "config API: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = stopped(&mut shutdown) => break,
            };
            while connections.try_join_next().is_some() {}
            let _ = stream.set_nodelay(true);
            let api = self.clone();
            let closed = closed.clone();
            let service = service_fn(move |request| {
                let api = api.clone();
                let closed = closed.clone();
                async move { Ok::<_, Infallible>(api.respond(peer, request, Some(closed)).await) }
            });
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let watched = graceful.watch(connection);
            connections.spawn(async move {
                if let Err(e) = watched.await {
                    tracing::debug!(%peer, error = %e, "config API connection ended with an error");
                }
            });
        }
        drop(listener);
        let _ = close.send(true);
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                "config API: connections still open after {DRAIN_TIMEOUT:?}; closing them"
            );
        }
        connections.shutdown().await;
        tracing::info!("config API stopped");
    }

    /// Answers one request: `POST /v1/discovery` (held as long as the protocol says), or a JSON
    /// error — 404 for another path, 405 for another method, 413 for a body over 1 MiB, 400
    /// for a body that is not a discovery request.
    pub async fn handle<B>(&self, peer: SocketAddr, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.respond(peer, request, None).await
    }

    async fn respond<B>(
        &self,
        peer: SocketAddr,
        request: Request<B>,
        closed: Option<watch::Receiver<bool>>,
    ) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if request.uri().path() != DISCOVERY_PATH {
            return error_response(
                StatusCode::NOT_FOUND,
                &format!(
                    "no such path; the config API serves POST {DISCOVERY_PATH} (see weir_proxy_api::protocol)"
                ),
                None,
            );
        }
        if request.method() != Method::POST {
            let mut response = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!(
                    "method {} not allowed; {DISCOVERY_PATH} takes POST",
                    request.method()
                ),
                None,
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        let identity = match self.authenticator.get() {
            None => None,
            Some(authenticator) => {
                let token = request
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim)
                    .filter(|t| !t.is_empty());
                let identity = match token {
                    Some(token) => authenticator.authenticate(token).await,
                    None => None,
                };
                match identity {
                    Some(identity) => Some(identity),
                    None => {
                        let mut response = error_response(
                            StatusCode::UNAUTHORIZED,
                            "present the pod's projected ServiceAccount token (audience weir) as \
                             `Authorization: Bearer <token>`",
                            None,
                        );
                        response
                            .headers_mut()
                            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                        return response;
                    }
                }
            }
        };
        let body = match Limited::new(request.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
                    None,
                );
            }
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("reading the request body failed: {e}"),
                    None,
                );
            }
        };
        let mut poll: DiscoveryRequest = match weir_proxy_api::validate::parse_json(&body) {
            Ok(poll) => poll,
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("not a discovery request: {}", e.message),
                    Some(&e.field),
                );
            }
        };
        if poll.resources.len() > MAX_RESOURCES {
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!(
                    "a poll names at most {MAX_RESOURCES} resources, not {}",
                    poll.resources.len()
                ),
                Some("resources"),
            );
        }
        if let Some(identity) = identity {
            // Who the proxy is comes from its token, whatever its poll says.
            poll.node.namespace = identity.namespace;
            poll.node.pod = identity.pod;
        }
        if let Err((field, message)) = check_node(&poll.node) {
            return error_response(StatusCode::BAD_REQUEST, &message, Some(field));
        }
        match self.discover(peer, poll, closed).await {
            Ok(body) => json_response(StatusCode::OK, body),
            Err(e) => {
                tracing::error!(error = %e, "config API: encoding an answer failed");
                error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("encoding the answer failed: {e}"),
                    None,
                )
            }
        }
    }

    /// The long-poll itself; returns the JSON answer.
    async fn discover(
        &self,
        peer: SocketAddr,
        poll: DiscoveryRequest,
        mut closed: Option<watch::Receiver<bool>>,
    ) -> Result<Vec<u8>, serde_json::Error> {
        let started = Instant::now();
        let wait = Duration::from_secs(poll.wait_seconds.into()).min(MAX_WAIT);
        let deadline = started + wait;
        let node = poll.node;
        let key = ProxyKey {
            namespace: node.namespace.clone(),
            service: node.service.clone(),
            instance: match &node.pod {
                Some(pod) => Instance::Pod(pod.clone()),
                None => Instance::Peer(peer),
            },
        };
        let rejector = RejectorKey {
            namespace: node.namespace.clone(),
            service: node.service.clone(),
            who: match &node.pod {
                Some(pod) => Who::Pod(pod.clone()),
                None => Who::Ip(peer.ip()),
            },
        };
        let held: BTreeMap<String, Option<u64>> = poll
            .resources
            .into_iter()
            .map(|r| (r.name, r.version))
            .collect();

        let (last_sent, resends, fresh) = {
            let mut state = self.state.lock();
            self.sync(&mut state, started);
            for rejection in &poll.rejected {
                self.note_rejection(&mut state, &node, peer, &rejector, rejection, started);
            }
            if let Some(rejected) = state.rejections.get_mut(&rejector) {
                rejected.last_seen = started;
            }
            let fresh = !state.proxies.contains_key(&key);
            let entry = state.proxies.entry(key.clone()).or_insert_with(|| {
                tracing::debug!(?node, %peer, "proxy connected");
                ProxyEntry {
                    node: node.clone(),
                    rejector: rejector.clone(),
                    peer,
                    held: BTreeMap::new(),
                    in_flight: 0,
                    polls: 0,
                    last_poll: started,
                    expires: started,
                    last_sent: Vec::new(),
                    resends: 0,
                    last_wait: wait,
                }
            });
            if entry.node != node {
                // Same proxy, new listeners (a pod-named proxy restarted on other ports).
                entry.node = node.clone();
            }
            entry.peer = peer;
            entry.held = held.clone();
            entry.in_flight += 1;
            entry.polls += 1;
            entry.last_poll = started;
            entry.last_wait = wait;
            let resend = (entry.last_sent.clone(), entry.resends, fresh);
            self.acknowledge(&mut state, &key, started);
            self.metrics
                .connected_proxies
                .set(i64::try_from(state.proxies.len()).unwrap_or(i64::MAX));
            resend
        };
        self.polls.send_modify(|n| *n += 1);
        let mut guard = PollGuard {
            api: self,
            key,
            answered: false,
        };

        let mut snapshots = self.snapshots.clone();
        let mut publishing = true;
        let mut closing_now = false;
        let (snapshot, updates, repeated) = loop {
            let snapshot = snapshots.borrow_and_update().clone();
            let pending: Vec<(String, u64)> = {
                let mut state = self.state.lock();
                // Record the change before anyone is answered with it.
                self.sync(&mut state, Instant::now());
                let state = &*state;
                let rejected = state.rejections.get(&rejector);
                held.iter()
                    .filter_map(|(name, version)| {
                        let current =
                            resource_version(&snapshot, &node.namespace, &node.service, name);
                        let refused = rejected.and_then(|r| r.versions.get(name)) == Some(&current);
                        (*version != Some(current) && !refused).then(|| (name.clone(), current))
                    })
                    .collect()
            };
            // The proxy ignored exactly this answer last time: answer again, but not at once.
            let repeated = !pending.is_empty() && pending.iter().all(|p| last_sent.contains(p));
            let ready_at = if repeated {
                (started + backoff(resends)).min(deadline)
            } else {
                started
            };
            let now = Instant::now();
            // A proxy not known yet (just started, or reconnected after an operator restart) is
            // answered at once even with nothing new: the answer is what tells it that it is
            // connected (`weir_control_plane_connected`), and it polls again right away.
            if (!pending.is_empty() && now >= ready_at) || now >= deadline || fresh {
                break (snapshot, pending, repeated);
            }
            if closing_now {
                break (snapshot, Vec::new(), false);
            }
            let wake = if pending.is_empty() {
                deadline
            } else {
                ready_at
            };
            tokio::select! {
                changed = snapshots.changed(), if publishing => {
                    if changed.is_err() {
                        publishing = false; // no source any more: only the deadline is left
                    }
                }
                () = tokio::time::sleep_until(wake) => {}
                () = closing(&mut closed) => closing_now = true,
            }
        };

        let body = serde_json::to_vec(&ResponseRef {
            resources: updates
                .iter()
                .map(|(name, version)| UpdateRef {
                    name,
                    version: *version,
                    content: content(&snapshot, &node, name),
                })
                .collect(),
        })?;
        {
            let mut state = self.state.lock();
            if let Some(entry) = state.proxies.get_mut(&guard.key) {
                entry.resends = if repeated { resends + 1 } else { 0 };
                if entry.resends == 3 {
                    tracing::warn!(?node, %peer, resources = ?updates,
                        "proxy keeps polling without applying these updates or reporting them rejected; answering it with backoff");
                }
                entry.last_sent = updates;
            }
        }
        guard.answered = true;
        Ok(body)
    }

    /// Takes in the newest snapshot, if it is new: records what changed for push latency,
    /// forgets rejections of versions no longer current, sets `weir_config_version`.
    fn sync(&self, state: &mut State, now: Instant) {
        let latest = self.snapshots.borrow().clone();
        if Arc::ptr_eq(&latest, &state.seen) {
            return;
        }
        let old = std::mem::replace(&mut state.seen, latest.clone());
        self.metrics
            .config_version
            .set(i64::try_from(latest.version).unwrap_or(i64::MAX));

        let mut services = HashMap::new();
        for (key, piece) in &latest.services {
            if old.services.get(key).map(|o| o.version) != Some(piece.version) {
                services.insert(service_resource(&key.namespace, &key.name), piece.version);
            }
        }
        for key in old.services.keys() {
            if !latest.services.contains_key(key) {
                services.insert(service_resource(&key.namespace, &key.name), 0);
            }
        }
        let mut inbound = HashMap::new();
        for (key, piece) in &latest.inbound {
            if old.inbound.get(key).map(|o| o.version) != Some(piece.version) {
                inbound.insert(key.clone(), piece.version);
            }
        }
        for key in old.inbound.keys() {
            if !latest.inbound.contains_key(key) {
                inbound.insert(key.clone(), 0);
            }
        }
        if services.is_empty() && inbound.is_empty() {
            return;
        }

        state.rejections.retain(|who, rejected| {
            rejected.versions.retain(|name, version| {
                resource_version(&latest, &who.namespace, &who.service, name) == *version
            });
            let versions = &rejected.versions;
            rejected
                .messages
                .retain(|name, _| versions.contains_key(name));
            !rejected.versions.is_empty()
        });
        // Older records now wait for the newer version of what changed again.
        for push in &mut state.pushes {
            for (name, version) in &services {
                if let Some(target) = push.services.get_mut(name) {
                    *target = *version;
                }
            }
            for (key, version) in &inbound {
                if let Some(target) = push.inbound.get_mut(key) {
                    *target = *version;
                }
            }
        }
        let mut push = Push {
            seen: latest.observed.filter(|at| *at <= now).unwrap_or(now),
            version: latest.version,
            services,
            inbound,
            outstanding: HashSet::new(),
            acknowledged: 0,
        };
        push.outstanding = state
            .proxies
            .iter()
            .filter(|(_, entry)| !satisfies(entry, &push, state.rejections.get(&entry.rejector)))
            .map(|(key, _)| key.clone())
            .collect();
        if push.outstanding.is_empty() {
            return; // nobody connected needs this change
        }
        state.pushes.push_back(push);
        while state.pushes.len() > MAX_PENDING_PUSHES {
            if let Some(oldest) = state.pushes.pop_front() {
                self.give_up(oldest, now, "too many changes pending");
            }
        }
    }

    fn note_rejection(
        &self,
        state: &mut State,
        node: &Node,
        peer: SocketAddr,
        rejector: &RejectorKey,
        rejection: &Rejection,
        now: Instant,
    ) {
        let resource = Resource::parse(&rejection.name);
        self.metrics
            .config_rejected
            .with_label_values(&[resource.kind()])
            .inc();
        let message: String = rejection.message.chars().take(MAX_LOGGED_MESSAGE).collect();
        tracing::warn!(
            namespace = %node.namespace,
            service = %node.service,
            pod = node.pod.as_deref().unwrap_or("-"),
            %peer,
            resource = ?rejection.name,
            version = rejection.version,
            message = ?message,
            "a proxy rejected a config update (NACK); it keeps running its last good config"
        );
        let current =
            resource_version(&state.seen, &node.namespace, &node.service, &rejection.name);
        // Only a current version is worth remembering (an old one is never sent again anyway),
        // which also keeps what a client can make us store bounded by the snapshot.
        if current == rejection.version && !matches!(resource, Resource::Unknown) {
            state
                .rejections
                .entry(rejector.clone())
                .or_insert_with(|| Rejected {
                    versions: HashMap::new(),
                    messages: HashMap::new(),
                    last_seen: now,
                });
            let rejected = state.rejections.get_mut(rejector).expect("just inserted");
            rejected
                .versions
                .insert(rejection.name.clone(), rejection.version);
            rejected.messages.insert(rejection.name.clone(), message);
        }
    }

    /// The proxy `key` just polled: takes it off the push records it now satisfies.
    fn acknowledge(&self, state: &mut State, key: &ProxyKey, now: Instant) {
        let State {
            proxies,
            rejections,
            pushes,
            ..
        } = state;
        let Some(entry) = proxies.get(key) else {
            return;
        };
        let rejected = rejections.get(&entry.rejector);
        let mut i = 0;
        while i < pushes.len() {
            let push = &mut pushes[i];
            if push.outstanding.contains(key) && satisfies(entry, push, rejected) {
                push.outstanding.remove(key);
                push.acknowledged += 1;
                if push.outstanding.is_empty() {
                    let done = pushes.remove(i).expect("index in range");
                    self.complete(done, now);
                    continue;
                }
            }
            i += 1;
        }
    }

    fn complete(&self, push: Push, now: Instant) {
        if push.acknowledged == 0 {
            return; // every proxy that needed it went away: nothing was pushed
        }
        let took = now.duration_since(push.seen);
        self.metrics.config_push.observe(took.as_secs_f64());
        tracing::debug!(
            version = push.version,
            proxies = push.acknowledged,
            ?took,
            "change acknowledged by every proxy that needs it"
        );
    }

    /// A record that cannot wait any longer is observed as it is.
    fn give_up(&self, push: Push, now: Instant, why: &str) {
        let took = now.duration_since(push.seen);
        let behind: Vec<String> = push
            .outstanding
            .iter()
            .take(5)
            .map(|k| match &k.instance {
                Instance::Pod(pod) => format!("{}/{}/{pod}", k.namespace, k.service),
                Instance::Peer(peer) => format!("{}/{}@{peer}", k.namespace, k.service),
            })
            .collect();
        tracing::warn!(
            version = push.version,
            behind = push.outstanding.len(),
            examples = ?behind,
            ?took,
            "{why}: a config change is still not acknowledged by every proxy; observing it as is"
        );
        self.metrics.config_push.observe(took.as_secs_f64());
    }

    fn remove_proxy(&self, state: &mut State, key: &ProxyKey, now: Instant) {
        if state.proxies.remove(key).is_none() {
            return;
        }
        let mut i = 0;
        while i < state.pushes.len() {
            let push = &mut state.pushes[i];
            if push.outstanding.remove(key) && push.outstanding.is_empty() {
                let done = state.pushes.remove(i).expect("index in range");
                self.complete(done, now);
                continue;
            }
            i += 1;
        }
        self.metrics
            .connected_proxies
            .set(i64::try_from(state.proxies.len()).unwrap_or(i64::MAX));
    }

    /// Once a second: forget proxies past their time, give up on old records, forget the
    /// rejections of proxies long gone.
    fn housekeeping(&self) {
        let now = Instant::now();
        let mut state = self.state.lock();
        self.sync(&mut state, now);
        let expired: Vec<ProxyKey> = state
            .proxies
            .iter()
            .filter(|(_, e)| e.in_flight == 0 && e.expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            tracing::debug!(?key, "proxy gone");
            self.remove_proxy(&mut state, &key, now);
        }
        while state
            .pushes
            .front()
            .is_some_and(|p| now.duration_since(p.seen) >= PUSH_RECORD_LIMIT)
        {
            if let Some(old) = state.pushes.pop_front() {
                self.give_up(old, now, "60 s passed");
            }
        }
        state
            .rejections
            .retain(|_, r| now.duration_since(r.last_seen) < REJECTION_MEMORY);
        self.metrics
            .connected_proxies
            .set(i64::try_from(state.proxies.len()).unwrap_or(i64::MAX));
    }
}

fn backoff(resends: u32) -> Duration {
    RESEND_BACKOFF_BASE
        .saturating_mul(1 << resends.min(16))
        .min(RESEND_BACKOFF_MAX)
}

fn check_node(node: &Node) -> Result<(), (&'static str, String)> {
    if !dns_label(&node.namespace) {
        return Err((
            "node.namespace",
            format!("namespace {:?} is not a DNS label", node.namespace),
        ));
    }
    if !dns_label(&node.service) {
        return Err((
            "node.service",
            format!("service {:?} is not a DNS label", node.service),
        ));
    }
    if let Some(pod) = &node.pod
        && (pod.is_empty() || pod.len() > 253 || pod.chars().any(char::is_control))
    {
        return Err((
            "node.pod",
            "a pod name has 1 to 253 printable characters".to_owned(),
        ));
    }
    Ok(())
}

async fn background(api: Weak<ConfigApi>, mut snapshots: watch::Receiver<Arc<Snapshot>>) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut publishing = true;
    loop {
        let changed = tokio::select! {
            changed = snapshots.changed(), if publishing => {
                publishing = changed.is_ok();
                publishing
            }
            _ = tick.tick() => false,
        };
        let Some(api) = api.upgrade() else {
            return;
        };
        if changed {
            let mut state = api.state.lock();
            api.sync(&mut state, Instant::now());
        } else {
            api.housekeeping();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proxy_api::Subset;
    use weir_proxy_api::protocol::{DiscoveryResponse, ResourceContent, ResourceUpdate};

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

    async fn answer(
        api: &ConfigApi,
        request: Request<Full<Bytes>>,
    ) -> (StatusCode, serde_json::Value) {
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
        let (status, body) =
            answer(&api, Request::get("/nope").body(Full::default()).unwrap()).await;
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
        let (_, body) = answer(
            &api,
            poll_body(
                serde_json::json!([{"name": "service/shop/payments", "version": v2}]),
                serde_json::json!({"waitSeconds": 0}),
            ),
        )
        .await;
        assert_eq!(body, serde_json::json!({"resources": []}));
    }

    #[tokio::test]
    async fn a_rejected_version_is_not_sent_again_to_that_proxy() {
        let (tx, api) = api();
        let v1 = publish(&tx, 100);
        let v2 = publish(&tx, 0);
        let (_, body) = answer(
            &api,
            poll_body(
                serde_json::json!([{"name": "service/shop/payments", "version": v1}]),
                serde_json::json!({"waitSeconds": 0}),
            ),
        )
        .await;
        assert_eq!(body["resources"][0]["version"], v2);
        let (_, body) = answer(
            &api,
            poll_body(
                serde_json::json!([{"name": "service/shop/payments", "version": v1}]),
                serde_json::json!({"waitSeconds": 0, "rejected": [
                    {"name": "service/shop/payments", "version": v2, "message": "no weight"}]}),
            ),
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
        let (_, body) = answer(
            &api,
            poll_body(
                serde_json::json!([{"name": "service/shop/payments", "version": v1}]),
                serde_json::json!({"waitSeconds": 0}),
            ),
        )
        .await;
        assert_eq!(body["resources"][0]["version"], v3);
        assert!(api.proxies()[0].rejected.is_empty());
    }

    #[test]
    fn an_inbound_listener_matches_its_port_on_its_ip_or_on_any_when_unspecified() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let local = ip("127.0.0.1");
        let endpoint = addr("127.0.0.1:19000");
        assert_eq!(
            inbound_match(addr("127.0.0.1:19000"), local, endpoint),
            Some(2)
        );
        // The peer does not matter for an exact IP.
        assert_eq!(
            inbound_match(addr("127.0.0.1:19000"), ip("10.0.0.9"), endpoint),
            Some(2)
        );
        assert_eq!(
            inbound_match(addr("0.0.0.0:19000"), local, endpoint),
            Some(1)
        );
        assert_eq!(
            inbound_match(addr("0.0.0.0:19000"), ip("10.0.0.9"), endpoint),
            Some(0)
        );
        assert_eq!(inbound_match(addr("[::]:19000"), local, endpoint), Some(1));
        assert_eq!(
            inbound_match(addr("[::]:19000"), ip("::1"), addr("[::1]:19000")),
            Some(1)
        );
        assert_eq!(
            inbound_match(addr("0.0.0.0:19000"), local, addr("10.1.2.3:19000")),
            Some(0)
        );
        // Another port, or another (specified) IP: not this listener.
        assert_eq!(
            inbound_match(addr("127.0.0.1:19001"), local, endpoint),
            None
        );
        assert_eq!(inbound_match(addr("0.0.0.0:19001"), local, endpoint), None);
        assert_eq!(
            inbound_match(addr("127.0.0.2:19000"), local, endpoint),
            None
        );
        assert_eq!(
            inbound_match(addr("[::1]:19000"), ip("::1"), endpoint),
            None
        );

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
        assert_eq!(
            api.admin_of("shop", "orders", addr("127.0.0.1:19001")),
            Some(addr("127.0.0.1:15021"))
        );
        // An unspecified inbound IP matches any IP; an unspecified admin IP is dialed there.
        assert_eq!(
            api.admin_of("shop", "orders", addr("127.0.0.1:19002")),
            Some(addr("127.0.0.1:15022"))
        );
        assert_eq!(
            api.admin_of("shop", "orders", addr("10.0.0.7:19002")),
            Some(addr("10.0.0.7:15022"))
        );
        // No admin named, another IP, another port, another service or namespace: nothing.
        assert_eq!(
            api.admin_of("shop", "orders", addr("127.0.0.1:19003")),
            None
        );
        assert_eq!(
            api.admin_of("shop", "orders", addr("127.0.0.2:19001")),
            None
        );
        assert_eq!(
            api.admin_of("shop", "orders", addr("127.0.0.1:19009")),
            None
        );
        assert_eq!(
            api.admin_of("shop", "payments", addr("127.0.0.1:19001")),
            None
        );
        assert_eq!(
            api.admin_of("other", "orders", addr("127.0.0.1:19001")),
            None
        );
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
}
