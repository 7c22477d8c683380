//! The config API's server: `POST /v1/discovery`, the JSON long-poll that every sidecar uses to
//! fetch its config. The exchange (what a proxy sends, what it gets back, what its next poll
//! means) is specified once, in [`weir_proxy_api::protocol`]; this module is the operator's side
//! of it and documents only the choices made here.
//!
//! # Modules
//!
//! - `routes`: protocol handling — the one route, the poll's parsing and bounds (body size,
//!   resources per poll, names), the JSON errors.
//! - `auth`: who a proxy is when credentials are required ([`Authenticate`], the bearer token).
//! - `poll`: the long-poll — what a poll is answered with, when, and the proxy's registration
//!   while it is held.
//! - `proxies`: proxy tracking — who is connected until when, `/proxies`, [`ConfigApi::admin_of`],
//!   [`ConfigApi::acknowledgements`], housekeeping.
//! - `rejections`: NACK memory — rejected versions per proxy, not sent again.
//! - `push`: push accounting — new snapshots taken in, their changes recorded and
//!   `weir_config_push_seconds` observed.
//! - [`server`]: the accept loop of every operator listener (this one, the admin listener, the
//!   webhook), housed here until the crate root declares it.
//!
//! This module holds the public face ([`ConfigApi`] and what it returns) and serving; the
//! state they share (`state::State`) is behind one lock.
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
//! of subscriptions to keep consistent. HTTP is hyper's (HTTP/1.1 and h2c) through the operator's
//! accept loop ([`server`]: header-read timeout, connection cap, bounded drain);
//! only the protocol logic is ours, since the protocol is.
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

mod auth;
mod poll;
mod proxies;
mod push;
mod rejections;
mod routes;
mod state;

pub use auth::{Authenticate, ProxyIdentity};
pub use proxies::{inbound_match, reachable_admin};

use crate::metrics::Metrics;
use crate::server::Server;
use crate::snapshot::Snapshot;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Body;
use parking_lot::Mutex;
use serde::Serialize;
use state::State;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use weir_proxy_api::protocol::Node;

/// The longest a poll is held, whatever its `waitSeconds` asks.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections at once: each sidecar holds one.
const MAX_CONNECTIONS: usize = 65_536;
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);
/// On shutdown, how long open connections get to finish (held polls are answered at once).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

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

    /// Requires every poll from now on to present a bearer token `authenticator` accepts
    /// (`Authorization: Bearer <token>`; 401 otherwise), and takes the proxy's namespace and pod
    /// from it. Set once, before serving; a second call is ignored.
    pub fn require_authentication(&self, authenticator: Arc<dyn Authenticate>) {
        let _ = self.authenticator.set(authenticator);
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
    /// 5 s to finish before closing them. The operator's accept loop bounds the connections
    /// ([`server`]): a request head within 30 s, at most 65,536 at once (one
    /// per sidecar).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "config API listening");
        }
        // Held polls wake on this when the drain starts.
        let (close, closed) = watch::channel(false);
        let handler = move |peer, request| {
            let api = self.clone();
            let closed = closed.clone();
            async move { api.respond(peer, request, Some(closed)).await }
        };
        Server::new("config API")
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_connections(MAX_CONNECTIONS)
            .drain_timeout(DRAIN_TIMEOUT)
            .serve(listener, handler, async move {
                crate::shutdown::stopped(&mut shutdown).await;
                let _ = close.send(true);
            })
            .await;
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
mod tests;
