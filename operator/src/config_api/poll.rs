//! The long-poll: what a poll is answered with (the resources whose version differs from the
//! one held, read from the snapshot without copying), when (at once, at a new snapshot, at the
//! deadline, or with backoff when the proxy ignored the same answer), and the proxy's
//! registration while its poll is held.

use super::state::{ABANDONED_GRACE, CONNECTED_GRACE, Instance, ProxyEntry, ProxyKey};
use super::state::{LastAnswer, RejectorKey, Resource, resource_version};
use super::{ConfigApi, MAX_WAIT};
use crate::snapshot::{ServiceKey, Snapshot};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use weir_proxy_api::protocol::{DiscoveryRequest, INBOUND_RESOURCE, Node};
use weir_proxy_api::{InboundPolicy, ServiceConfig};

pub(super) const RESEND_BACKOFF_BASE: Duration = Duration::from_millis(250);
pub(super) const RESEND_BACKOFF_MAX: Duration = Duration::from_secs(30);
pub(super) static EMPTY_INBOUND: LazyLock<InboundPolicy> = LazyLock::new(InboundPolicy::default);

// The wire shape of `weir_proxy_api::protocol::DiscoveryResponse`, borrowing from the snapshot so
// that answering a thousand proxies does not clone a thousand configs (a unit test checks that
// the typed response reads it back).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) enum ContentRef<'a> {
    Inbound(&'a InboundPolicy),
    Service(&'a ServiceConfig),
    NotFound(String),
}

#[derive(Serialize)]
pub(super) struct UpdateRef<'a> {
    pub(super) name: &'a str,
    pub(super) version: u64,
    pub(super) content: ContentRef<'a>,
}

#[derive(Serialize)]
pub(super) struct ResponseRef<'a> {
    pub(super) resources: Vec<UpdateRef<'a>>,
}

pub(super) fn content<'a>(snapshot: &'a Snapshot, node: &Node, name: &str) -> ContentRef<'a> {
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

/// Resolves when the server closes; never for a request outside [`ConfigApi::serve`].
pub(super) async fn closing(closing: &mut Option<watch::Receiver<bool>>) {
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
pub(super) struct PollGuard<'a> {
    pub(super) api: &'a ConfigApi,
    pub(super) key: ProxyKey,
    pub(super) answered: bool,
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
    /// The long-poll itself; returns the JSON answer.
    pub(super) async fn discover(
        &self,
        peer: SocketAddr,
        poll: DiscoveryRequest,
        mut closed: Option<watch::Receiver<bool>>,
    ) -> Result<Vec<u8>, serde_json::Error> {
        let started = Instant::now();
        let wait = Duration::from_secs(poll.wait_seconds.into()).min(MAX_WAIT);
        let deadline = started + wait;
        let node = poll.node;
        let key = ProxyKey::of(&node, peer);
        let rejector = RejectorKey::of(&node, peer.ip());
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
                    last_answer: LastAnswer::default(),
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
            let resend = (
                entry.last_answer.sent.clone(),
                entry.last_answer.repeats,
                fresh,
            );
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
                entry.last_answer.repeats = if repeated { resends + 1 } else { 0 };
                if entry.last_answer.repeats == 3 {
                    tracing::warn!(?node, %peer, resources = ?updates,
                        "proxy keeps polling without applying these updates or reporting them rejected; answering it with backoff");
                }
                entry.last_answer.sent = updates;
            }
        }
        guard.answered = true;
        Ok(body)
    }
}

pub(super) fn backoff(resends: u32) -> Duration {
    RESEND_BACKOFF_BASE
        .saturating_mul(1 << resends.min(16))
        .min(RESEND_BACKOFF_MAX)
}
