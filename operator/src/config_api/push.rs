//! Push accounting: each new snapshot's changes are recorded with the proxies that still need
//! them, and `weir_config_push_seconds` observes when the last of them acknowledged (or when the
//! record could not wait any longer). Also where a new snapshot is taken in (`sync`).

use super::ConfigApi;
use super::state::{Instance, ProxyEntry, ProxyKey, Push, State, at_least};
use super::state::{Rejected, forget_outdated};
use crate::snapshot::ServiceKey;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::time::Instant;
use weir_proxy_api::protocol::{INBOUND_RESOURCE, service_resource};

pub(super) const MAX_PENDING_PUSHES: usize = 256;

/// Whether `entry` needs nothing more of `push`.
pub(super) fn satisfies(entry: &ProxyEntry, push: &Push, rejected: Option<&Rejected>) -> bool {
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

impl ConfigApi {
    /// Takes in the newest snapshot, if it is new: records what changed for push latency,
    /// forgets rejections of versions no longer current, sets `weir_config_version`.
    pub(super) fn sync(&self, state: &mut State, now: Instant) {
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

        forget_outdated(&mut state.rejections, &latest);
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

    /// The proxy `key` just polled: takes it off the push records it now satisfies.
    pub(super) fn acknowledge(&self, state: &mut State, key: &ProxyKey, now: Instant) {
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

    pub(super) fn complete(&self, push: Push, now: Instant) {
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
    pub(super) fn give_up(&self, push: Push, now: Instant, why: &str) {
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
}
