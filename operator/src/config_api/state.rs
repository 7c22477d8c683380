//! What the config API remembers, shared by its concerns: each connected proxy and what it
//! holds ([`ProxyEntry`] under a [`ProxyKey`]), what proxies refused ([`Rejected`] under a
//! [`RejectorKey`]), the pushes under way ([`Push`]) and what a proxy was last answered
//! ([`LastAnswer`]). The data and its small pure helpers only: the long-poll (`poll`), proxy
//! tracking (`proxies`), push accounting (`push`) and NACK memory (`rejections`) all build on
//! it and not on each other.

use crate::metrics::{KIND_INBOUND, KIND_OTHER, KIND_SERVICE};
use crate::snapshot::{ServiceKey, Snapshot};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use weir_proxy_api::protocol::{INBOUND_RESOURCE, Node, parse_service_resource};

/// A proxy stays connected this long beyond its `waitSeconds` after its last answer.
pub(super) const CONNECTED_GRACE: Duration = Duration::from_secs(10);

/// ... and this long after a poll it abandoned (when it has a pod name).
pub(super) const ABANDONED_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(super) struct State {
    /// The newest snapshot taken into account for push records.
    pub(super) seen: Arc<Snapshot>,
    pub(super) proxies: HashMap<ProxyKey, ProxyEntry>,
    pub(super) rejections: HashMap<RejectorKey, Rejected>,
    pub(super) pushes: VecDeque<Push>,
}

/// Which proxy of a service: its pod, or without a pod name its `A` — the peer address for the
/// connection ([`ProxyKey`]), the IP for what it rejected ([`RejectorKey`], which must outlive
/// its reconnects).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Instance<A = SocketAddr> {
    Pod(String),
    Peer(A),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ProxyKey<A = SocketAddr> {
    pub(super) namespace: String,
    pub(super) service: String,
    pub(super) instance: Instance<A>,
}

impl<A> ProxyKey<A> {
    /// The proxy `node` names, reached from `peer` when it names no pod.
    pub(super) fn of(node: &Node, peer: A) -> Self {
        Self {
            namespace: node.namespace.clone(),
            service: node.service.clone(),
            instance: match &node.pod {
                Some(pod) => Instance::Pod(pod.clone()),
                None => Instance::Peer(peer),
            },
        }
    }
}

#[derive(Debug)]
pub(super) struct ProxyEntry {
    pub(super) node: Node,
    pub(super) rejector: RejectorKey,
    pub(super) peer: SocketAddr,
    pub(super) held: BTreeMap<String, Option<u64>>,
    pub(super) in_flight: u32,
    pub(super) polls: u64,
    pub(super) last_poll: Instant,
    /// When it stops counting as connected; only meaningful with no poll in flight.
    pub(super) expires: Instant,
    /// What it was last answered, to notice a proxy that ignores its answers.
    pub(super) last_answer: LastAnswer,
    /// How long its last poll could be held (a proxy asks the same every time).
    pub(super) last_wait: Duration,
}

/// Rejections of a proxy not heard from for this long are forgotten.
pub(super) const REJECTION_MEMORY: Duration = Duration::from_secs(600);

/// Who rejected: the same across a proxy's connections.
pub(super) type RejectorKey = ProxyKey<IpAddr>;

#[derive(Debug)]
pub(super) struct Rejected {
    /// Resource name → the version refused.
    pub(super) versions: HashMap<String, u64>,
    /// Resource name → why (cut to a few hundred characters), for `Programmed=False`.
    pub(super) messages: HashMap<String, String>,
    pub(super) last_seen: Instant,
}

/// Forgets the rejections of versions that are no longer current in `latest`: the resource moved
/// on, so the proxy is to be sent the new version.
pub(super) fn forget_outdated(rejections: &mut HashMap<RejectorKey, Rejected>, latest: &Snapshot) {
    rejections.retain(|who, rejected| {
        rejected.versions.retain(|name, version| {
            resource_version(latest, &who.namespace, &who.service, name) == *version
        });
        let versions = &rejected.versions;
        rejected
            .messages
            .retain(|name, _| versions.contains_key(name));
        !rejected.versions.is_empty()
    });
}

/// A push record pending this long is observed as it is.
pub(super) const PUSH_RECORD_LIMIT: Duration = Duration::from_secs(60);

/// A change waiting for its acknowledgements.
#[derive(Debug)]
pub(super) struct Push {
    pub(super) seen: Instant,
    pub(super) version: u64,
    /// `service/<ns>/<name>` → the version to acknowledge.
    pub(super) services: HashMap<String, u64>,
    /// Inbound policy of (namespace, service) → the version to acknowledge.
    pub(super) inbound: HashMap<ServiceKey, u64>,
    pub(super) outstanding: HashSet<ProxyKey>,
    pub(super) acknowledged: usize,
}

pub(super) fn at_least(held: Option<u64>, target: u64) -> bool {
    // A removed resource's target is 0 (not found); otherwise versions only grow.
    held.is_some_and(|v| v == target || (target != 0 && v > target))
}

/// What a proxy was last answered: a poll that would be answered with exactly that again (the
/// proxy neither applied it nor said why) is answered with backoff.
#[derive(Debug, Default)]
pub(super) struct LastAnswer {
    /// The resources and versions it carried.
    pub(super) sent: Vec<(String, u64)>,
    /// Answers in a row that repeated the one before.
    pub(super) repeats: u32,
}

/// What a resource name refers to.
pub(super) enum Resource {
    Inbound,
    Service(ServiceKey),
    Unknown,
}

impl Resource {
    pub(super) fn parse(name: &str) -> Self {
        if name == INBOUND_RESOURCE {
            Self::Inbound
        } else if let Some((namespace, service)) = parse_service_resource(name) {
            Self::Service(ServiceKey::new(namespace, service))
        } else {
            Self::Unknown
        }
    }

    pub(super) fn kind(&self) -> &'static str {
        match self {
            Self::Inbound => KIND_INBOUND,
            Self::Service(_) => KIND_SERVICE,
            Self::Unknown => KIND_OTHER,
        }
    }
}

/// The current version of `name` for a proxy of `namespace`/`service`.
pub(super) fn resource_version(
    snapshot: &Snapshot,
    namespace: &str,
    service: &str,
    name: &str,
) -> u64 {
    match Resource::parse(name) {
        Resource::Inbound => snapshot
            .inbound
            .get(&ServiceKey::new(namespace, service))
            .map_or(0, |v| v.version),
        Resource::Service(key) => snapshot.services.get(&key).map_or(0, |v| v.version),
        Resource::Unknown => 0,
    }
}
