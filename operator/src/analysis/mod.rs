//! Canary analysis: a TrafficSplit with `spec.analysis` is rolled out in steps, each judged
//! from what the callers' sidecars saw of the canary — no Prometheus, no other controller, and
//! never promoted on silence (DESIGN.md, "Canary analysis").
//!
//! Layout:
//! - [`judge`]: the pure judgement, (spec, previous state, measured interval) → new state;
//! - [`telemetry`]: the callers' `/metrics` → one interval's figures, with restart detection;
//! - [`weights`]: the canary's weight from the rollout, the others sharing the rest;
//! - this file: [`Rollouts`], the rollouts of every split with an analysis — which step each is
//!   at, when its interval ends, the callers' counters at its start — with no I/O of its own;
//! - [`local`]: the loop of `weir-operator local` that scrapes the callers and publishes.
//!
//! A rollout's state is the split's `status.analysis`; [`Rollouts::sync`] resumes a rollout from
//! the status a split carries (a restarted operator, a new leader) when it is of the split's
//! generation, and starts over at step 1 for a new generation. A resumed step runs a whole
//! interval again: the counters at its start died with the previous operator, and a shorter
//! interval would judge on less than the spec asks for.

pub(crate) mod cluster;
pub mod judge;
pub mod local;
pub mod telemetry;
pub mod weights;

pub use judge::{Measured, Outcome, Spec, begin, judge, resume};
pub use telemetry::{Counters, Window};

use crate::snapshot::ServiceKey;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use tokio::time::Instant;
use weir_crds::{AnalysisPhase, AnalysisStatus, TrafficSplit, TrafficSplitSpec};

/// A TrafficSplit's namespace and name.
pub type Key = (String, String);

/// One split's rollout.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// The Service whose callers are scraped.
    pub service: ServiceKey,
    pub spec: Spec,
    /// The split's spec when last seen: in local mode (no `metadata.generation`) a change of it
    /// is a new generation.
    split_spec: TrafficSplitSpec,
    pub generation: i64,
    pub state: AnalysisStatus,
    /// The callers' counters at the start of the running interval; `None` until taken.
    window: Option<Window>,
    /// When the running interval ends.
    due: Option<Instant>,
}

impl Rollout {
    /// Whether the callers should be scraped at `now`: to start an interval, or to end one.
    pub fn wants_scrape(&self, now: Instant) -> bool {
        self.state.phase == AnalysisPhase::Progressing
            && (self.window.is_none() || self.due.is_some_and(|due| now >= due))
    }
}

/// A change worth an Event and a log line.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub key: Key,
    /// The Event reason: `RolloutStarted`, or an [`Outcome::reason`].
    pub reason: &'static str,
    pub message: String,
    /// Whether this is bad news (an Event of type Warning).
    pub warning: bool,
}

/// The rollouts of every split with an analysis.
#[derive(Debug, Default)]
pub struct Rollouts {
    rollouts: BTreeMap<Key, Rollout>,
    /// Splits whose analysis is refused, with why (named field): they route by their weights.
    refused: BTreeMap<Key, String>,
}

fn key_of(split: &TrafficSplit) -> Key {
    (
        split.metadata.namespace.clone().unwrap_or_default(),
        split.metadata.name.clone().unwrap_or_default(),
    )
}

impl Rollouts {
    /// Brings the rollouts in line with `splits`: a split that gained an analysis resumes from
    /// its `status.analysis` (or starts), one whose generation changed starts over at step 1,
    /// one that lost its analysis or is gone is forgotten. Without `metadata.generation` (local
    /// mode), every change of the spec counts as a new generation.
    pub fn sync<'a>(&mut self, splits: impl IntoIterator<Item = &'a TrafficSplit>) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut seen = BTreeMap::new();
        for split in splits {
            let Some(analysis) = &split.spec.analysis else {
                continue;
            };
            let key = key_of(split);
            seen.insert(key.clone(), ());
            let spec = match Spec::parse(
                analysis,
                split.spec.backends.iter().map(|b| b.subset.as_str()),
            ) {
                Ok(spec) => {
                    self.refused.remove(&key);
                    spec
                }
                Err(error) => {
                    if self.refused.get(&key) != Some(&error) {
                        tracing::warn!(namespace = %key.0, name = %key.1, %error, "analysis refused; the split routes by its weights");
                    }
                    self.refused.insert(key.clone(), error);
                    self.rollouts.remove(&key);
                    continue;
                }
            };
            let existing = self.rollouts.get(&key);
            let generation = match (split.metadata.generation, existing) {
                (Some(generation), _) => generation,
                (None, Some(old)) if old.split_spec == split.spec => old.generation,
                (None, Some(old)) => old.generation.saturating_add(1),
                (None, None) => 1,
            };
            if existing.is_some_and(|old| old.generation == generation) {
                continue;
            }
            let recorded = split.status.as_ref().and_then(|s| s.analysis.as_ref());
            let state = resume(&spec, generation, recorded);
            let resumed = recorded.is_some_and(|r| r.observed_generation == Some(generation));
            changes.push(Change {
                key: key.clone(),
                reason: if resumed {
                    "RolloutResumed"
                } else {
                    "RolloutStarted"
                },
                message: state.message.clone(),
                warning: false,
            });
            self.rollouts.insert(
                key,
                Rollout {
                    service: ServiceKey::new(
                        split.metadata.namespace.clone().unwrap_or_default(),
                        split.spec.service.clone(),
                    ),
                    spec,
                    split_spec: split.spec.clone(),
                    generation,
                    state,
                    window: None,
                    due: None,
                },
            );
        }
        self.rollouts.retain(|key, _| seen.contains_key(key));
        self.refused.retain(|key, _| seen.contains_key(key));
        changes
    }

    /// Every rollout.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Rollout)> {
        self.rollouts.iter()
    }

    /// The refused analyses, with why.
    pub fn refused(&self) -> &BTreeMap<Key, String> {
        &self.refused
    }

    /// The canary weights in force: per split, the canary subset and its percent.
    pub fn weights(&self) -> BTreeMap<Key, (String, u32)> {
        self.rollouts
            .iter()
            .map(|(key, r)| {
                (
                    key.clone(),
                    (
                        r.spec.canary.clone(),
                        u32::try_from(r.state.canary_weight).unwrap_or(0),
                    ),
                )
            })
            .collect()
    }

    /// The callers' counters of `key`'s canary at `now`: starts the interval when none runs,
    /// judges it when it is over (and starts the next one from the same counters). Returns the
    /// judgement's outcome and the new state when one was made.
    pub fn observe(
        &mut self,
        key: &Key,
        now: Instant,
        callers: HashMap<String, Counters>,
    ) -> Option<(Outcome, AnalysisStatus)> {
        let rollout = self.rollouts.get_mut(key)?;
        if !rollout.wants_scrape(now) {
            return None;
        }
        let judged = match &rollout.window {
            None => None,
            Some(window) => {
                let measured = window.measure(&callers);
                let (next, outcome) = judge(&rollout.spec, &rollout.state, &measured);
                rollout.state = next.clone();
                Some((outcome, next))
            }
        };
        rollout.window = Some(Window::start(callers));
        rollout.due = Some(now + rollout.spec.interval);
        judged
    }
}

/// What the loop publishes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Published {
    /// Per split, the canary subset and its percent: what the folder source applies.
    pub weights: BTreeMap<Key, (String, u32)>,
    /// Per split, its `status.analysis`.
    pub states: BTreeMap<Key, AnalysisStatus>,
    /// Splits whose analysis is refused, with why.
    pub refused: BTreeMap<Key, String>,
    /// Whether the rollouts have read the splits (false until then: nothing is known yet).
    pub synced: bool,
    /// Per split, what its rollout is of: for whoever shows the progress (the dashboard).
    pub rollouts: BTreeMap<Key, Shape>,
}

/// What a rollout is of, beside its state.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// The split's Service.
    pub service: ServiceKey,
    /// The canary subset.
    pub canary: String,
    /// How many steps the rollout has.
    pub steps: usize,
}

impl Published {
    pub fn of(rollouts: &Rollouts) -> Self {
        Self {
            weights: rollouts.weights(),
            states: rollouts
                .iter()
                .map(|(k, r)| (k.clone(), r.state.clone()))
                .collect(),
            refused: rollouts.refused().clone(),
            synced: true,
            rollouts: rollouts
                .iter()
                .map(|(k, r)| {
                    (
                        k.clone(),
                        Shape {
                            service: r.service.clone(),
                            canary: r.spec.canary.clone(),
                            steps: r.spec.steps.len(),
                        },
                    )
                })
                .collect(),
        }
    }
}

/// How long one caller's `/metrics` may take.
const SCRAPE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Callers scraped at once: bounds the operator's sockets, and with [`SCRAPE_TIMEOUT`] how
/// long a round takes when callers hang (32 hung callers per second).
const SCRAPES_IN_FLIGHT: usize = 32;

/// A judgement made in a round, for the caller to report.
pub(crate) type Judged = (Key, Outcome, AnalysisStatus);

/// Scrapes the callers of every rollout due at `now` and observes each
/// ([`Rollouts::observe`]). A caller of several due rollouts is scraped **once** for all of
/// them: its `/metrics` is read into each rollout's counters and dropped. `callers` names each
/// rollout's callers by Service; it is asked only when some rollout is due. A caller that does
/// not answer counts nothing for the rollouts it calls this time (see [`telemetry`]).
pub(crate) async fn observe_due(
    rollouts: &mut Rollouts,
    scraper: &crate::autoscaler::scrape::Scraper,
    now: Instant,
    mut callers: impl FnMut(&ServiceKey) -> Vec<SocketAddr>,
) -> Vec<Judged> {
    let due: Vec<(Key, ServiceKey, String)> = rollouts
        .iter()
        .filter(|(_, r)| r.wants_scrape(now))
        .map(|(k, r)| (k.clone(), r.service.clone(), r.spec.canary.clone()))
        .collect();
    if due.is_empty() {
        return Vec::new();
    }
    let callers_of: Vec<Vec<SocketAddr>> = due
        .iter()
        .map(|(_, service, _)| {
            let mut admins = callers(service);
            admins.sort();
            admins.dedup();
            admins
        })
        .collect();
    let wanted: Vec<(String, String)> = due
        .iter()
        .map(|(_, service, canary)| (service.name.clone(), canary.clone()))
        .collect();
    let admins: std::collections::BTreeSet<SocketAddr> =
        callers_of.iter().flatten().copied().collect();
    let mut answers = scrape(scraper, admins, &wanted).await;
    let mut judged = Vec::new();
    for (index, ((key, _, _), admins)) in due.iter().zip(&callers_of).enumerate() {
        let counters: HashMap<String, Counters> = admins
            .iter()
            .filter_map(|admin| {
                let per_rollout = answers.get_mut(admin)?;
                Some((admin.to_string(), std::mem::take(&mut per_rollout[index])))
            })
            .collect();
        if let Some((outcome, state)) = rollouts.observe(key, now, counters) {
            judged.push((key.clone(), outcome, state));
        }
    }
    judged
}

/// Reads every admin listener in `admins` once, at most [`SCRAPES_IN_FLIGHT`] at a time, into
/// its counters of each `(service, canary)` of `wanted` (in that order); a caller that does not
/// answer is left out.
pub(crate) async fn scrape(
    scraper: &crate::autoscaler::scrape::Scraper,
    admins: impl IntoIterator<Item = SocketAddr>,
    wanted: &[(String, String)],
) -> HashMap<SocketAddr, Vec<Counters>> {
    use futures::StreamExt;
    futures::stream::iter(admins)
        .map(|admin| async move { (admin, scraper.fetch(admin).await) })
        .buffer_unordered(SCRAPES_IN_FLIGHT)
        .filter_map(|(admin, answer)| async move {
            match answer {
                Ok(text) => Some((
                    admin,
                    wanted
                        .iter()
                        .map(|(service, canary)| telemetry::parse(&text, service, canary))
                        .collect(),
                )),
                Err(error) => {
                    tracing::debug!(%admin, %error, "caller did not answer; it counts nothing this interval");
                    None
                }
            }
        })
        .collect()
        .await
}

/// Publishes `next` when it changed, and sets `weir_canary_weight` from it.
pub(crate) fn publish(
    published: &tokio::sync::watch::Sender<std::sync::Arc<Published>>,
    next: Published,
    metrics: &crate::metrics::Metrics,
) {
    for (key, (_, weight)) in &next.weights {
        metrics
            .canary_weight
            .with_label_values(&[&key.0, &key.1])
            .set(i64::from(*weight));
    }
    for key in published.borrow().weights.keys() {
        if !next.weights.contains_key(key) {
            let _ = metrics.canary_weight.remove_label_values(&[&key.0, &key.1]);
        }
    }
    published.send_if_modified(|old| {
        if **old == next {
            return false;
        }
        *old = std::sync::Arc::new(next);
        true
    });
}

/// The type of the condition a split with an analysis gets.
pub const CONDITION: &str = "Analysis";

/// The `Analysis` condition as (status, reason, message): True while the rollout progresses or
/// after it succeeded, False once rolled back or while the analysis is refused (`Invalid`,
/// naming the field). `None` for a split without an analysis.
pub fn condition(
    state: Option<&AnalysisStatus>,
    refused: Option<&String>,
) -> Option<(&'static str, &'static str, String)> {
    if let Some(error) = refused {
        return Some(("False", "Invalid", error.clone()));
    }
    let state = state?;
    let status = match state.phase {
        AnalysisPhase::RolledBack => "False",
        AnalysisPhase::Progressing | AnalysisPhase::Succeeded => "True",
    };
    Some((status, state.phase.as_str(), state.message.clone()))
}

/// `splits` with each rollout's canary weight applied ([`weights::apply`]).
pub fn apply_all(splits: &mut [TrafficSplit], weights: &BTreeMap<Key, (String, u32)>) {
    for split in splits {
        if let Some((canary, percent)) = weights.get(&key_of(split)) {
            split.spec = weights::apply(&split.spec, canary, *percent);
        }
    }
}

#[cfg(test)]
mod tests;
