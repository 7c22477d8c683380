//! Proxy tracking: who is connected (keyed by namespace, service and pod, or peer address),
//! until when, what each holds; `/proxies`, the admin-listener lookup of local mode, and where
//! the proxies stand with given versions (the `Programmed` condition).

use super::state::REJECTION_MEMORY;
use super::state::{Instance, ProxyKey, Resource, State};
use super::state::{PUSH_RECORD_LIMIT, at_least};
use super::{Acknowledgement, ConfigApi, ProxyStatus, Target};
use crate::snapshot::ServiceKey;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use tokio::time::Instant;

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

impl ConfigApi {
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

    pub(super) fn remove_proxy(&self, state: &mut State, key: &ProxyKey, now: Instant) {
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
    pub(super) fn housekeeping(&self) {
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
