//! The local control loop: looks at the folder every 250 ms on the blocking pool, translates
//! again the Services a change touches, and publishes the snapshot, the loaded resources (for
//! the local Autoscaler loop and the rollouts) and the verdicts (for `/status`).

use super::{Folder, Resources};
use crate::incremental::Source as _;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How often the folder is looked at.
const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Watches `dir` until `shutdown`, publishing a new snapshot whenever the translated config
/// changes, and on `loaded` the resources of every accepted state of the folder (what the local
/// Autoscaler loop reads). Refusals are logged once per change of verdict. A `kind: Mesh`
/// ResiliencePolicy is honoured only in `operator_namespace` (`weir-system` by default).
pub async fn run(
    dir: PathBuf,
    operator_namespace: String,
    snapshots: tokio::sync::watch::Sender<std::sync::Arc<crate::snapshot::Snapshot>>,
    loaded: tokio::sync::watch::Sender<std::sync::Arc<Resources>>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    feeds: crate::admin::StatusFeeds,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let crate::admin::StatusFeeds {
        verdicts,
        mut rollouts,
    } = feeds;
    let mut folder = Folder::default();
    folder.operator_namespace = Some(operator_namespace);
    let mut source = Some(Source {
        folder,
        ..Source::default()
    });
    loop {
        // A change is observed when the look that finds it starts.
        let looked = tokio::time::Instant::now();
        let Some(mut taken) = source.take() else {
            return;
        };
        let (dir, current, metrics) = (dir.clone(), snapshots.borrow().clone(), metrics.clone());
        // The canary weights of the rollouts, when they changed: they apply before translation.
        let weights = rollouts
            .has_changed()
            .unwrap_or(false)
            .then(|| rollouts.borrow_and_update().weights.clone());
        // Reading, parsing and translating a big folder takes long enough to stall the async
        // threads (the admin listener among them): on the blocking pool instead.
        let looked_at = tokio::task::spawn_blocking(move || {
            let outcome = taken.look(&dir, &current, &metrics, weights);
            (taken, outcome)
        });
        let outcome = match looked_at.await {
            Ok((taken, outcome)) => {
                source = Some(taken);
                outcome
            }
            Err(error) => {
                tracing::error!(%error, "reading the folder failed; local mode stops");
                return;
            }
        };
        if let Look::Translated { next, autoscaling } = outcome {
            if let Some(mut next) = next {
                next.observed = Some(looked);
                tracing::info!(
                    version = next.version,
                    services = next.services.len(),
                    "config published"
                );
                snapshots.send_replace(std::sync::Arc::from(next));
            }
            loaded.send_replace(std::sync::Arc::new(autoscaling));
            if let Some(taken) = &source {
                verdicts.publish(taken.previous.verdicts.clone(), snapshots.borrow().clone());
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { return },
        }
    }
}

/// The folder source's state between looks.
#[derive(Debug, Default)]
struct Source {
    folder: Folder,
    previous: crate::translate::Translation,
    looked: bool,
    /// The canary weights of the rollouts ([`crate::analysis::local`]), applied to the splits
    /// before translation.
    canary_weights: BTreeMap<crate::analysis::Key, (String, u32)>,
}

/// What one look at the folder found.
enum Look {
    /// Nothing changed.
    Unchanged,
    /// Translated: the next snapshot if anything changed, and what the autoscaler reads.
    Translated {
        next: Option<Box<crate::snapshot::Snapshot>>,
        autoscaling: Resources,
    },
}

impl Source {
    /// Re-reads what changed under `dir` and, if anything did, translates again the Services
    /// the change touches (everything on the first look; see [`crate::incremental`]).
    /// Blocking: file reads, parsing, translation.
    fn look(
        &mut self,
        dir: &Path,
        current: &crate::snapshot::Snapshot,
        metrics: &crate::metrics::Metrics,
        canary_weights: Option<BTreeMap<crate::analysis::Key, (String, u32)>>,
    ) -> Look {
        let mut changed = self.folder.refresh(dir);
        let mut touched = self.folder.take_touched();
        if let Some(weights) = canary_weights
            && weights != self.canary_weights
        {
            // The splits whose canary weight came, went or moved.
            for split in self.folder.inputs().splits {
                let key = (
                    split.metadata.namespace.clone().unwrap_or_default(),
                    split.metadata.name.clone().unwrap_or_default(),
                );
                if weights.get(&key) != self.canary_weights.get(&key) {
                    touched.split(split);
                }
            }
            self.canary_weights = weights;
            changed = true;
        }
        if !changed && self.looked {
            return Look::Unchanged;
        }
        if !self.looked {
            touched = crate::incremental::Touched::All;
        }
        self.looked = true;
        // Only the touched Services are translated again (with the rollouts' canary weights
        // replacing the written ones); the others keep their configs.
        let started = tokio::time::Instant::now();
        let weights = &self.canary_weights;
        let adjust = |splits: &mut [weir_crds::TrafficSplit]| {
            if !weights.is_empty() {
                crate::analysis::apply_all(splits, weights);
            }
        };
        let mut translation = crate::incremental::retranslate(
            &self.folder,
            std::mem::take(&mut self.previous),
            &touched,
            &adjust,
            &mut |previous, made| {
                // Each resource judged again counts as reconciled.
                crate::metrics::record_reconciles(metrics, made, started.elapsed());
                crate::translate::report_verdicts(&previous.verdicts, made);
            },
        );
        let next = current
            .next(&translation.services, &translation.inbound)
            .map(Box::new);
        // The translation keeps the snapshot's configs, not equal copies of them.
        match &next {
            Some(next) => next.share_configs(&mut translation.services),
            None => current.share_configs(&mut translation.services),
        }
        self.previous = translation;
        Look::Translated {
            next,
            autoscaling: Resources {
                // The splits with an analysis, as written (without the rollout's weights):
                // what the rollouts are run from.
                splits: self
                    .folder
                    .inputs()
                    .splits
                    .iter()
                    .filter(|s| s.spec.analysis.is_some())
                    .cloned()
                    .collect(),
                ..self.folder.autoscaling()
            },
        }
    }
}
