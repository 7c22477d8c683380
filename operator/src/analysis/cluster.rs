//! Canary analysis in a cluster (`weir-operator run`).
//!
//! Every replica routes by the same weights, taken from the cluster: the TrafficSplits in the
//! reflector store and the `status.analysis` they carry. Only the leader judges: it keeps the
//! live [`Rollouts`] (resumed from status when it takes over — a handover neither restarts a
//! rollout nor skips a step), scrapes the callers at the start and end of each interval and
//! publishes the new states. The status writer ([`crate::kubernetes::status`]) writes them
//! into `status.analysis` with the rest of the status, in one server-side apply under the field
//! manager `weir-operator` — one writer, so an analysis write and a condition write never undo
//! each other. The leader also records an Event for every rollout start, failed judgement,
//! promotion, success and rollback. A follower rebuilds its rollouts from the store on every
//! tick, so it routes by what the leader last recorded.
//!
//! **The callers** scraped are every sidecar of the mesh, found in the operator's shared Pod
//! store ([`crate::kubernetes::pods::sidecar_admin`]: the injected `weir-proxy` present, the pod
//! Running and Ready, its IP and the sidecar's declared admin port), whichever replica they
//! poll, together with the proxies connected to this replica that hold the Service's config
//! (a proxy outside the Pod store, e.g. one not injected by the webhook), each admin listener
//! once. A caller that is gone or does not answer within the 1 s scrape timeout counts nothing
//! for that interval; the others still judge it. A sidecar that does not call the Service has
//! no series for it and adds nothing.
//!
//! **Cost**: every sidecar of the mesh is read once per interval of each progressing rollout
//! (the counters that end one interval start the next), and once per tick for all the
//! rollouts due then: one `/metrics` read per sidecar serves every due rollout, read into
//! their counters and dropped; at most 32 reads at once. With N sidecars, R progressing
//! rollouts and intervals of I seconds, that is about N/I reads per second when the rollouts'
//! intervals line up, at most N·R/I when they do not: 200 sidecars and 1 minute intervals make
//! about 3.3 reads per second per rollout. A sidecar's `/metrics` is a few kilobytes to a few
//! hundred (cut at 4 MiB); the operator keeps only each caller's counters
//! of the canary between the two ends of an interval. Nothing is scraped while no rollout
//! progresses. The outbound series name the Service but not its namespace, so a caller of a
//! same-named Service in another namespace with a subset of the same name counts too.

use super::{Key, Outcome, Published, Rollouts};
use crate::autoscaler::scrape::Scraper;
use crate::config_api::ConfigApi;
use crate::metrics::Metrics;
use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use weir_crds::TrafficSplit;

/// How often the rollouts are looked at.
const TICK: Duration = Duration::from_millis(250);

/// Runs the rollouts of the splits in `splits` until `shutdown`; judges only while `leader`,
/// on the sidecars of the pods in `pods` and of the proxies connected to `config_api`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    client: kube::Client,
    identity: String,
    splits: Store<TrafficSplit>,
    pods: Store<Pod>,
    config_api: Option<Arc<ConfigApi>>,
    leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    published: watch::Sender<Arc<Published>>,
    mut synced: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: crate::kubernetes::client::FIELD_MANAGER.to_owned(),
            instance: Some(identity),
        },
    );
    let scraper = Scraper::new(super::SCRAPE_TIMEOUT);
    let mut leading: Option<Rollouts> = None;
    let mut following_refused = std::collections::BTreeMap::new();
    // Until the stores have listed, the splits' recorded rollouts are unknown. (Told by the
    // translation loop rather than awaited on the store: kube's store readiness wakes only one
    // of several waiters.)
    tokio::select! {
        ready = synced.wait_for(|synced| *synced) => if ready.is_err() { return },
        _ = crate::shutdown::stopped(&mut shutdown) => return,
    }
    loop {
        let current: Vec<Arc<TrafficSplit>> = splits.state();
        let next = if *leader.borrow() {
            let rollouts = leading.get_or_insert_with(Rollouts::default);
            for change in rollouts.sync(current.iter().map(|s| s.as_ref())) {
                tracing::info!(namespace = %change.key.0, name = %change.key.1, reason = change.reason, message = %change.message, "rollout");
                if change.reason == "RolloutStarted" {
                    announce(
                        &recorder,
                        &splits,
                        &change.key,
                        change.reason,
                        &change.message,
                        false,
                    )
                    .await;
                }
            }
            let now = tokio::time::Instant::now();
            // The mesh's sidecars, listed once per round, and only when a rollout is due.
            let mut mesh: Option<Vec<std::net::SocketAddr>> = None;
            let callers = |service: &crate::snapshot::ServiceKey| {
                let mut admins = mesh
                    .get_or_insert_with(|| {
                        pods.state()
                            .iter()
                            .filter_map(|pod| crate::kubernetes::pods::sidecar_admin(pod))
                            .collect()
                    })
                    .clone();
                if let Some(api) = &config_api {
                    admins.extend(super::local::callers_of(api, service));
                }
                admins
            };
            // A round over many hung sidecars can take a while: it never holds up shutdown.
            let judged = tokio::select! {
                judged = super::observe_due(rollouts, &scraper, now, callers) => judged,
                _ = crate::shutdown::stopped(&mut shutdown) => return,
            };
            for (key, outcome, state) in judged {
                super::local::report(&metrics, &key, outcome, &state);
                let failed = state
                    .last_judgement
                    .as_ref()
                    .is_some_and(|j| j.result == weir_crds::JudgementResult::Failed);
                if outcome != Outcome::Held || failed {
                    let warning = failed || outcome == Outcome::RolledBack;
                    let reason = if outcome == Outcome::Held {
                        "StepFailed"
                    } else {
                        outcome.reason()
                    };
                    announce(&recorder, &splits, &key, reason, &state.message, warning).await;
                }
            }
            Published::of(rollouts)
        } else {
            // Not leading: route by the recorded status; a later takeover resumes from it.
            // (Rebuilt each time from status; the refusals carried over so that a refused
            // analysis is logged once, not every tick.)
            leading = None;
            let mut rollouts = Rollouts {
                refused: std::mem::take(&mut following_refused),
                ..Rollouts::default()
            };
            rollouts.sync(current.iter().map(|s| s.as_ref()));
            let next = Published::of(&rollouts);
            following_refused = rollouts.refused;
            next
        };
        super::publish(&published, next, &metrics);
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = crate::shutdown::stopped(&mut shutdown) => return,
        }
    }
}

/// Records an Event on the split `key` (best effort: status says the same).
async fn announce(
    recorder: &Recorder,
    splits: &Store<TrafficSplit>,
    key: &Key,
    reason: &str,
    message: &str,
    warning: bool,
) {
    let Some(split) = splits.get(&ObjectRef::new(&key.1).within(&key.0)) else {
        return;
    };
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_owned(),
        note: Some(crate::autoscaler::status::truncate(message, 1000)),
        action: "Analyze".to_owned(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, &split.object_ref(&())).await {
        tracing::warn!(namespace = %key.0, name = %key.1, %error, "publishing an Event failed");
    }
}
