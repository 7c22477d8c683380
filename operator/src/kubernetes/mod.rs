//! The Kubernetes source of `weir-operator run`: watches the cluster, translates, publishes
//! snapshots, and (on the leader) writes status and Events.
//!
//! Layout:
//! - `stores`: one kube-runtime `watcher` + `reflector` per kind (TrafficSplit,
//!   ResiliencePolicy, Service, EndpointSlice, and Pods: their labels for subsets, for the
//!   Autoscaler controller, which shares this store, their status and CPU requests, and for
//!   canary analysis, the mesh's sidecars (`pods`)), each paused
//!   after errors by `recovery` (short capped backoff reset on success, 410 relisted at once) so
//!   watches resume within seconds of an API server outage, without a busy loop. Each reflector nudges one "something changed" channel, but only when a field
//!   the translation reads changed: a Pod's status churn or our own status writes re-translate
//!   nothing.
//! - `inputs`: the pure conversion of Services, EndpointSlices and Pods into the
//!   translation's `ServiceInfo`/`EndpointInfo` (port choice, readiness, labels).
//! - this file: the translation loop. A change wakes it, it waits `debounce` so a burst of
//!   watch events (a rollout touching many Pods and slices) makes one translation, then
//!   translates everything from the stores and publishes `Snapshot::next` when anything changed.
//! - `status`: the leader's status writer: `observedGeneration`, `Accepted` and `Programmed`
//!   conditions, the weights summary and per-backend endpoint counts, written with server-side
//!   apply on the status subresource only when they differ from what the object holds, plus an
//!   Event (kube-runtime's `Recorder`) whenever `Accepted` flips.
//! - canary analysis ([`crate::analysis::cluster`]): a task of its own whose rollout weights are
//!   applied to the splits before each translation (a weight change translates again) and whose
//!   states the status writer records in `status.analysis`.
//! - `leader`: leader election through a Lease (`kube-lease-manager`).
//! - `recovery`: the retry delays of every API call (watches, status writes, the Lease).
//! - `client`: the kube client whose every write names the field manager `weir-operator`.
//!
//! Why reflectors and one debounced translation rather than a kube-runtime `Controller` per
//! kind: the translation is global — one EndpointSlice or Pod change can change many services'
//! config, a ResiliencePolicy and a TrafficSplit meet in one ServiceConfig, and the oldest of two
//! splits for one Service wins — so reconciling objects one by one would need a hand-kept
//! dependency graph (`watches` mappers for every relation) and would still have to see every
//! object to decide conflicts. Translating everything from the reflectors' stores on each
//! (debounced) change is simpler and deterministic: the same stores always give the same
//! snapshot, and `Snapshot::next` keeps the versions of untouched services, so proxies only get
//! what changed (an EndpointSlice change re-programs exactly the splits of its Service). We still
//! use kube-runtime for what it does well: watcher (list + watch, resume, re-list on 410),
//! reflector stores and the events `Recorder`.
//!
//! Status is written by a task of its own so a slow or failing API server never delays a
//! published config: it takes the verdicts of the latest published translation with the
//! snapshot they were published in and, while this replica holds the Lease, brings every
//! resource's status up to date — again 250 ms after proxies poll, since `Programmed` counts
//! the connected proxies (of `Settings::config_api`) that acknowledged those versions. Failures (API down,
//! 403, repeated 409) are logged with the resource named, counted as
//! `weir_reconcile_total{result="error"}`, and retried with backoff; a 409 re-reads the object
//! and retries at once. Non-leaders translate and publish the same config (both replicas serve
//! the config API) but never write status or Events.
//!
//! Metrics: each translation counts one `weir_reconcile_total{kind,result="success"}` per
//! resource it judged (refused resources too: the reconcile worked, the resource did not) and
//! observes the translation's duration in `weir_reconcile_duration_seconds{kind}`; a status
//! write that fails counts `result="error"`.
//!
//! RBAC this source needs (cluster-wide, or in the one watched namespace):
//! - `weir.dev` `trafficsplits`, `resiliencepolicies`: get, list, watch; their `/status`:
//!   get, patch;
//! - core `services`, `pods` and `discovery.k8s.io` `endpointslices`: list, watch;
//! - `events.k8s.io` `events`: create, patch;
//! - `coordination.k8s.io` `leases` in the Lease's namespace: get, create, patch.

pub mod client;
pub(crate) mod inputs;
mod leader;
pub(crate) mod pods;
pub(crate) mod recovery;
pub(crate) mod status;
pub(crate) mod stores;
#[cfg(test)]
mod tests;
pub mod token_review;

use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use crate::translate::{Translation, translate};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The name this operator writes status (the server-side apply field manager) and Events as.
pub const FIELD_MANAGER: &str = "weir-operator";

/// What the Kubernetes source needs to know; every field maps to a `weir-operator run` flag.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Watch only this namespace; every namespace when `None` (needs cluster-wide RBAC).
    pub namespace: Option<String>,
    /// This replica's name, unique among replicas (the pod's name, from `POD_NAME`): the Lease
    /// holder identity and the reporting instance of Events.
    pub identity: String,
    /// Leader election; `None` makes this replica the leader for good (one replica, tests).
    pub lease: Option<LeaseSettings>,
    /// How long a burst of watch events is collected before one translation: long enough to
    /// fold a rollout's events together, short enough to keep a weight edit well under 1 s.
    pub debounce: Duration,
    /// The config API serving what this source publishes: `Programmed` counts its proxies'
    /// acknowledgements. Without it no proxy is known and `Programmed` says `0/0 proxies`.
    pub config_api: Option<Arc<crate::config_api::ConfigApi>>,
    /// Where the canary analysis publishes its rollouts besides the translation and the status
    /// (the admin's dashboard); a channel of its own when `None`.
    pub rollouts: Option<watch::Sender<Arc<crate::analysis::Published>>>,
    /// The operator's own namespace: the only one where a `kind: Mesh` ResiliencePolicy is
    /// honoured (`weir-system` when `None`).
    pub operator_namespace: Option<String>,
    /// The Autoscaler controller's settings; its `namespace` and `identity` are taken from
    /// the fields above.
    pub autoscaler: crate::autoscaler::controller::Settings,
}

impl Settings {
    /// Every namespace, no leader election, a 75 ms debounce.
    pub fn new(identity: impl Into<String>) -> Self {
        let identity = identity.into();
        Self {
            namespace: None,
            autoscaler: crate::autoscaler::controller::Settings::new(identity.clone()),
            identity,
            lease: None,
            debounce: Duration::from_millis(75),
            config_api: None,
            rollouts: None,
            operator_namespace: None,
        }
    }
}

/// Where the Lease of leader election lives and how long a holder keeps it.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub name: String,
    /// Usually the operator's own namespace.
    pub namespace: String,
    /// How long the lock holds after its last renewal: how long a dead leader's status duties
    /// stay undone before another replica takes over.
    pub duration_seconds: u64,
    /// How long before expiry the holder renews (the clock skew tolerated between nodes).
    pub grace_seconds: u64,
}

impl LeaseSettings {
    /// A 15 s lease renewed 5 s before it expires (client-go's defaults are 15 s and 10 s).
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            duration_seconds: 15,
            grace_seconds: 5,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A reflector task stopped (it only does when it panicked): the stores would go stale.
    #[error("the {0} watch stopped")]
    WatchStopped(&'static str),
}

/// Watches the cluster and publishes snapshots on `snapshots` until `shutdown` turns true;
/// writes status and Events while this replica leads. Returns an error only when a watch
/// stops for good; API errors are retried with backoff.
pub async fn run(
    client: kube::Client,
    settings: Settings,
    snapshots: watch::Sender<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let (changed_tx, changed_rx) = watch::channel(());
    let mut reflectors = JoinSet::new();
    let stores = stores::Stores::start(
        &client,
        settings.namespace.as_deref(),
        changed_tx,
        &mut reflectors,
    );
    let mut leader = leader::spawn(
        client.clone(),
        settings.identity.clone(),
        settings.lease.clone(),
        shutdown.clone(),
    );
    // The autoscaler controller: actuation and status, leader-gated like ours. It reads the
    // Pods from our store (one Pod watch for the whole operator) and watches only what no one
    // else reads (Autoscalers, HPAs).
    let mut autoscaling = settings.autoscaler.clone();
    autoscaling.identity = settings.identity.clone();
    autoscaling.namespace = settings.namespace.clone();
    let autoscaler_task = tokio::spawn(crate::autoscaler::controller::run(
        client.clone(),
        autoscaling,
        stores.pods.clone(),
        metrics.clone(),
        leader.receiver(),
        shutdown.clone(),
    ));
    // Canary analysis: the rollouts' weights feed the translation, their states the status.
    let analysis_tx = settings
        .rollouts
        .clone()
        .unwrap_or_else(|| watch::channel(Arc::default()).0);
    let analysis_rx = analysis_tx.subscribe();
    let (synced_tx, synced_rx) = watch::channel(false);
    let analysis_task = tokio::spawn(crate::analysis::cluster::run(
        client.clone(),
        settings.identity.clone(),
        stores.splits.clone(),
        stores.pods.clone(),
        settings.config_api.clone(),
        leader.receiver(),
        metrics.clone(),
        analysis_tx,
        synced_rx,
        shutdown.clone(),
    ));
    let (verdicts_tx, verdicts_rx) = watch::channel(Arc::new(status::Published::default()));
    let writer = status::StatusWriter::new(client, &settings.identity, stores.clone());
    let status_task = tokio::spawn(status::run(
        writer,
        verdicts_rx,
        analysis_rx.clone(),
        settings.config_api.clone(),
        leader.receiver(),
        metrics.clone(),
        shutdown.clone(),
    ));

    let result = translate_loop(
        &stores,
        &settings,
        &snapshots,
        &metrics,
        &mut reflectors,
        changed_rx,
        (analysis_rx, synced_tx),
        verdicts_tx,
        shutdown,
    )
    .await;

    reflectors.shutdown().await;
    // The status task ends when the verdicts channel closes (dropped with the loop above) or
    // on shutdown; the leader task releases the Lease so another replica takes over at once.
    let _ = status_task.await;
    let _ = analysis_task.await;
    if let Ok(Err(e)) = autoscaler_task.await {
        tracing::error!(error = %e, "the autoscaler controller stopped");
    }
    leader.stop().await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn translate_loop(
    stores: &stores::Stores,
    settings: &Settings,
    snapshots: &watch::Sender<Arc<Snapshot>>,
    metrics: &Metrics,
    reflectors: &mut JoinSet<&'static str>,
    mut changed: watch::Receiver<()>,
    (mut rollouts, synced): (
        watch::Receiver<Arc<crate::analysis::Published>>,
        watch::Sender<bool>,
    ),
    verdicts: watch::Sender<Arc<status::Published>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    // Translating before every store has listed would refuse splits whose Service merely has
    // not arrived yet, and publish a config missing services.
    tokio::select! {
        ready = stores.ready() => if let Err(kind) = ready { return Err(Error::WatchStopped(kind)) },
        _ = stopped(&mut shutdown) => return Ok(()),
        Some(ended) = reflectors.join_next() => return Err(Error::WatchStopped(ended.unwrap_or("reflector"))),
    }
    tracing::info!(
        namespace = settings.namespace.as_deref().unwrap_or("(all)"),
        "Kubernetes caches synced"
    );
    synced.send_replace(true);
    let mut previous = Translation::default();
    // When the change this translation publishes was noticed (first: the initial lists).
    let mut observed = tokio::time::Instant::now();
    loop {
        changed.borrow_and_update();
        let started = tokio::time::Instant::now();
        let mut world = stores.world();
        // A split under analysis routes its canary at the rollout's weight.
        let weights = rollouts.borrow_and_update().weights.clone();
        crate::analysis::apply_all(&mut world.splits, &weights);
        let applied = weights;
        let translation = translate(
            &crate::translate::Inputs {
                operator_namespace: settings.operator_namespace.as_deref(),
                ..world.inputs()
            },
            &previous,
        );
        crate::metrics::record_reconciles(metrics, &translation.verdicts, started.elapsed());
        report_verdicts(&previous, &translation);
        let current = snapshots.borrow().clone();
        if let Some(mut next) = current.next(&translation.services, &translation.inbound) {
            next.observed = Some(observed);
            tracing::info!(
                version = next.version,
                services = next.services.len(),
                "config published"
            );
            snapshots.send_replace(Arc::new(next));
        }
        // After the publish, with what was published: `Programmed` counts the proxies that
        // acknowledged these versions.
        verdicts.send_replace(Arc::new(status::Published {
            verdicts: translation.verdicts.clone(),
            snapshot: snapshots.borrow().clone(),
        }));
        previous = translation;

        loop {
            tokio::select! {
                _ = stopped(&mut shutdown) => return Ok(()),
                // All senders gone means every reflector ended; `join_next` names which.
                Ok(()) = changed.changed() => break,
                // Only a change of the canary weights translates again, not of a rollout's
                // other state (a held step, a judgement).
                Ok(()) = rollouts.changed() => if rollouts.borrow().weights != applied { break },
                Some(ended) = reflectors.join_next() => return Err(Error::WatchStopped(ended.unwrap_or("reflector"))),
            }
        }
        observed = tokio::time::Instant::now();
        tokio::select! {
            _ = tokio::time::sleep(settings.debounce) => {}
            _ = stopped(&mut shutdown) => return Ok(()),
        }
    }
}

/// Resolves once `shutdown` is true or its sender is gone.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Logs each verdict that is new or changed since the last translation.
fn report_verdicts(previous: &Translation, current: &Translation) {
    for verdict in &current.verdicts {
        if previous.verdicts.contains(verdict) {
            continue;
        }
        match &verdict.accepted {
            Ok(()) => tracing::info!(
                kind = verdict.kind.as_str(),
                namespace = %verdict.namespace,
                name = %verdict.name,
                generation = verdict.generation,
                "accepted"
            ),
            Err(refused) => tracing::warn!(
                kind = verdict.kind.as_str(),
                namespace = %verdict.namespace,
                name = %verdict.name,
                generation = verdict.generation,
                reason = refused.reason,
                message = %refused.message,
                "not accepted; the last good config stays in force"
            ),
        }
    }
}
