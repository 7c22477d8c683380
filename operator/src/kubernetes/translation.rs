//! The translation loop of the cluster source: a change wakes it, it waits `debounce` so a
//! burst of watch events (a rollout touching many Pods and slices) makes one translation, then
//! translates everything from the stores and publishes `Snapshot::next` when anything changed.

use super::{status, stores};
use crate::metrics::Metrics;
use crate::shutdown::stopped;
use crate::snapshot::Snapshot;
use crate::translate::{Translation, translate};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What the translation loop reads from and publishes to.
pub(crate) struct Loop<'a> {
    pub stores: &'a stores::Stores,
    /// The watched namespace (for the log), every one when `None`.
    pub namespace: Option<&'a str>,
    pub operator_namespace: Option<&'a str>,
    pub debounce: Duration,
    pub snapshots: &'a watch::Sender<Arc<Snapshot>>,
    pub metrics: &'a Metrics,
    pub reflectors: &'a mut JoinSet<&'static str>,
    /// The canary analysis' rollouts: their weights apply before each translation.
    pub rollouts: watch::Receiver<Arc<crate::analysis::Published>>,
    /// Turned true once every store has listed, for the canary analysis.
    pub synced: watch::Sender<bool>,
    /// The verdicts of each translation with the snapshot they were published in, for the
    /// status writer.
    pub verdicts: watch::Sender<Arc<status::Published>>,
}

/// The translation loop: once every store has listed, translates, publishes, and waits for the
/// next change (debounced) until `shutdown`. Returns the kind whose watch stopped, if one did.
pub(crate) async fn translate_loop(
    parts: Loop<'_>,
    mut changed: watch::Receiver<()>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), &'static str> {
    let Loop {
        stores,
        namespace,
        operator_namespace,
        debounce,
        snapshots,
        metrics,
        reflectors,
        mut rollouts,
        synced,
        verdicts,
    } = parts;
    // Translating before every store has listed would refuse splits whose Service merely has
    // not arrived yet, and publish a config missing services.
    tokio::select! {
        ready = stores.ready() => ready?,
        _ = stopped(&mut shutdown) => return Ok(()),
        Some(ended) = reflectors.join_next() => return Err(ended.unwrap_or("reflector")),
    }
    tracing::info!(
        namespace = namespace.unwrap_or("(all)"),
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
                operator_namespace,
                ..world.inputs()
            },
            &previous,
        );
        crate::metrics::record_reconciles(metrics, &translation.verdicts, started.elapsed());
        crate::translate::report_verdicts(&previous.verdicts, &translation.verdicts);
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
                Some(ended) = reflectors.join_next() => return Err(ended.unwrap_or("reflector")),
            }
        }
        observed = tokio::time::Instant::now();
        tokio::select! {
            _ = tokio::time::sleep(debounce) => {}
            _ = stopped(&mut shutdown) => return Ok(()),
        }
    }
}
