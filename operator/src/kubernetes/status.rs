//! The leader's status writer: conditions, counts and Events from the translation's verdicts.
//!
//! For each verdict of the latest published translation it computes the status the resource
//! should show and, when that differs from what the object holds, applies it with server-side
//! apply on the status subresource (`fieldManager=weir-operator`, forced: status is ours
//! alone). Comparing first keeps our own writes from looping and makes a second replica's
//! takeover write nothing. `lastTransitionTime` moves only when a condition's status flips.
//!
//! Conditions:
//! - `Accepted`: True when the spec is valid and its targets exist (for a Namespace or Mesh
//!   ResiliencePolicy, the message says how many Services it gives defaults to); False with the
//!   translation's reason (`NoEndpoints`, `ServiceNotFound`, `Invalid`, `Conflict`,
//!   `MeshOutsideOperatorNamespace`, …) and message.
//! - `Programmed`: True once every connected proxy that uses the resource's Service runs the
//!   config published with this generation or a later one (message `3/3 proxies`; `0/0
//!   proxies` when none is connected); False with reason `Pending` (`1/3 proxies`) until then,
//!   `Refused` naming each proxy that refused it and its message, and `NotAccepted`
//!   (a Namespace or Mesh policy sums the proxies of every Service it reaches)
//!   while refused. The proxies counted are those connected to this replica's config API (the
//!   leader's: status is the leader's to write); with two replicas behind one Service, the
//!   proxies polling the other replica are not counted — a refused TrafficSplit keeps its last good weights over the endpoints its
//!   selectors pick now, a refused ResiliencePolicy its Service's last accepted policy.
//!
//! `status.effectiveLimits` of a ResiliencePolicy with a rate limit or bulkhead is what it adds
//! up to across the ready pods it is in force on (the translation's, so it follows endpoints).
//!
//! `status.weights` of a TrafficSplit is the weights *in force* (the verdict's), not the spec's:
//! while refused it holds the kept weights, and a restarted operator reads them back from there
//! (see [`crate::translate`]).
//!
//! A TrafficSplit with `spec.analysis` also gets `status.analysis` (the rollout's state, from
//! [`crate::analysis::cluster`]) and an `Analysis` condition (True while progressing or
//! succeeded, False once rolled back or while the analysis is refused). This writer is the only
//! one of `status`, so the two never undo each other's server-side apply.
//!
//! A flip of `Accepted` (and the first verdict on a new resource) is also published as an
//! Event: `Normal`/`Accepted`, or `Warning` with the refusal's reason and message.

use super::stores::Stores;
use super::{FIELD_MANAGER, stopped};
pub(crate) use crate::autoscaler::status::condition;
use crate::autoscaler::status::{now_time, truncate};
use crate::config_api::{Acknowledgement, ConfigApi, Target};
use crate::metrics::{Metrics, RESULT_ERROR};
use crate::snapshot::{ServiceKey, Snapshot};
use crate::translate::{Kind, Verdict};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::utils::Backoff;
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use weir_crds::{BackendStatus, PolicyStatus, ResiliencePolicy, TrafficSplit, TrafficSplitStatus};

/// Condition types.
pub(crate) const ACCEPTED: &str = "Accepted";
pub(crate) const PROGRAMMED: &str = "Programmed";

/// How often a 409 on a status patch is answered by re-reading and retrying at once, before
/// the write is left to the next (backed-off) round.
const CONFLICT_RETRIES: u32 = 3;

/// A resource whose status this writer keeps.
pub(crate) trait StatusTarget:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    type Status: Serialize + Clone + PartialEq + Debug + Send + Sync;
    fn status(&self) -> Option<&Self::Status>;
    fn conditions(status: &Self::Status) -> &[Condition];
    /// The status `from.verdict` calls for (and, for a TrafficSplit, its rollout in
    /// `from.analysis`), keeping transition times from `from.current`.
    fn desired(from: &Sources<'_, Self::Status>) -> Self::Status;
}

/// What a status is computed from.
pub(crate) struct Sources<'a, S> {
    pub verdict: &'a Verdict,
    /// Where the proxies stand with the resource.
    pub ack: &'a Acknowledgement,
    pub analysis: &'a crate::analysis::Published,
    /// The status the object holds now.
    pub current: Option<&'a S>,
    pub now: &'a Time,
}

impl<S> Sources<'_, S> {
    /// `Accepted` and `Programmed`, keeping the transition times of `current`'s conditions.
    fn conditions(&self, of: fn(&S) -> &[Condition]) -> Vec<Condition> {
        conditions(self.verdict, self.ack, self.previous(of), self.now)
    }

    fn previous(&self, of: fn(&S) -> &[Condition]) -> &[Condition] {
        self.current.map(of).unwrap_or_default()
    }
}

/// The accessors of a status target whose status is in `status` and holds `conditions`: the
/// same two lines for every kind, so written once.
macro_rules! status_fields {
    ($status:ty) => {
        type Status = $status;
        fn status(&self) -> Option<&Self::Status> {
            self.status.as_ref()
        }
        fn conditions(status: &Self::Status) -> &[Condition] {
            &status.conditions
        }
    };
}

impl StatusTarget for TrafficSplit {
    status_fields!(TrafficSplitStatus);
    fn desired(from: &Sources<'_, Self::Status>) -> Self::Status {
        let Sources {
            verdict,
            analysis,
            current,
            now,
            ..
        } = *from;
        let key = (verdict.namespace.clone(), verdict.name.clone());
        // The rollout's state when it is of this generation; otherwise (the rollout has not
        // caught up with a spec edit yet) what the object holds.
        let kept = || current.and_then(|s| s.analysis.clone());
        let rollout = match analysis.states.get(&key) {
            // Before the rollouts have read the splits, nothing is known: keep what is recorded.
            _ if !analysis.synced => kept(),
            Some(state)
                if state.observed_generation == verdict.generation
                    || verdict.generation.is_none() =>
            {
                Some(state.clone())
            }
            Some(_) => kept(),
            None => None,
        };
        let mut conditions = from.conditions(Self::conditions);
        if let Some((status, reason, message)) =
            crate::analysis::condition(rollout.as_ref(), analysis.refused.get(&key))
        {
            conditions.push(condition(
                from.previous(Self::conditions),
                crate::analysis::CONDITION,
                status,
                reason,
                truncate(&message, 1000),
                verdict.generation,
                now,
            ));
        }
        TrafficSplitStatus {
            observed_generation: verdict.generation,
            conditions,
            weights: verdict.weights.clone(),
            analysis: rollout,
            backends: verdict
                .backends
                .iter()
                .map(|(subset, endpoints)| BackendStatus {
                    subset: subset.clone(),
                    endpoints: *endpoints,
                })
                .collect(),
        }
    }
}

impl StatusTarget for ResiliencePolicy {
    status_fields!(PolicyStatus);
    fn desired(from: &Sources<'_, Self::Status>) -> Self::Status {
        PolicyStatus {
            observed_generation: from.verdict.generation,
            conditions: from.conditions(Self::conditions),
            effective_limits: from.verdict.effective_limits.clone(),
        }
    }
}

/// `Accepted` and `Programmed` for `verdict`; a condition whose status is unchanged from
/// `previous` keeps its `lastTransitionTime`.
pub(crate) fn conditions(
    verdict: &Verdict,
    ack: &Acknowledgement,
    previous: &[Condition],
    now: &Time,
) -> Vec<Condition> {
    let (accepted, programmed) = match &verdict.accepted {
        Ok(()) => (
            (
                "True",
                ACCEPTED,
                verdict
                    .message
                    .clone()
                    .unwrap_or_else(|| "The spec is valid and its targets exist".to_owned()),
            ),
            programmed(ack),
        ),
        Err(refused) => (
            ("False", refused.reason, refused.message.clone()),
            (
                "False",
                "NotAccepted",
                match (verdict.kind, &verdict.weights) {
                    (Kind::TrafficSplit, Some(weights)) => format!(
                        "Not programmed ({}): the last good weights {weights} stay in force over \
                         the endpoints the selectors pick now",
                        refused.reason
                    ),
                    // Backends are counted only for the split that governs its Service.
                    (Kind::TrafficSplit, None) if !verdict.backends.is_empty() => format!(
                        "Not programmed ({}): no last good weights, the Service is routed over \
                         all its ready endpoints",
                        refused.reason
                    ),
                    (Kind::TrafficSplit, None) => {
                        format!("Not programmed ({}): it routes nothing", refused.reason)
                    }
                    (Kind::ResiliencePolicy, _) => format!(
                        "Not programmed ({}): the last accepted policy, if any, stays in force",
                        refused.reason
                    ),
                },
            ),
        ),
    };
    [(ACCEPTED, accepted), (PROGRAMMED, programmed)]
        .into_iter()
        .map(|(type_, (status, reason, message))| {
            condition(
                previous,
                type_,
                status,
                reason,
                message,
                verdict.generation,
                now,
            )
        })
        .collect()
}

/// `Programmed` of an accepted resource from where the proxies that use it stand.
fn programmed(ack: &Acknowledgement) -> (&'static str, &'static str, String) {
    let count = format!("{}/{} proxies", ack.acknowledged, ack.using);
    if !ack.refused.is_empty() {
        let who: Vec<String> = ack
            .refused
            .iter()
            .map(|(proxy, message)| format!("{proxy}: {message}"))
            .collect();
        let message = format!(
            "{count}; {} refused it: {}",
            ack.refused.len(),
            who.join("; ")
        );
        ("False", "Refused", truncate(&message, 1000))
    } else if ack.acknowledged < ack.using {
        ("False", "Pending", count)
    } else {
        ("True", PROGRAMMED, count)
    }
}

/// What a status sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    UpToDate,
    Written,
    /// The object is gone.
    Gone,
    /// The object changed since the verdict; the next translation brings a fresh one.
    Stale,
}

/// Writes status and Events through `client`, reading current status from the stores.
#[derive(Clone)]
pub(crate) struct StatusWriter {
    client: Client,
    recorder: Recorder,
    stores: Stores,
}

impl Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter")
            .field("stores", &self.stores)
            .finish_non_exhaustive()
    }
}

impl StatusWriter {
    pub fn new(client: Client, identity: &str, stores: Stores) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: Some(identity.to_owned()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            stores,
        }
    }

    /// Brings every verdict's resource up to date; returns how many writes failed (each logged
    /// and counted as a reconcile error).
    pub async fn sync_all(
        &self,
        verdicts: &[Verdict],
        acks: &HashMap<ServiceKey, Acknowledgement>,
        analysis: &crate::analysis::Published,
        metrics: &Metrics,
    ) -> usize {
        let mut failed = 0;
        let none = Acknowledgement::default();
        for verdict in verdicts {
            let started = Instant::now();
            let summed;
            let ack = if verdict.is_default() {
                summed = acknowledgement_of(verdict, acks);
                &summed
            } else {
                acks.get(&verdict.service).unwrap_or(&none)
            };
            let result = match verdict.kind {
                Kind::TrafficSplit => self.sync(&self.stores.splits, verdict, ack, analysis).await,
                Kind::ResiliencePolicy => {
                    self.sync(&self.stores.policies, verdict, ack, analysis)
                        .await
                }
            };
            match result {
                Ok(outcome) => tracing::debug!(
                    kind = verdict.kind.as_str(),
                    namespace = %verdict.namespace,
                    name = %verdict.name,
                    ?outcome,
                    "status synced"
                ),
                Err(error) => {
                    failed += 1;
                    let kind = verdict.kind.as_str();
                    metrics
                        .reconcile
                        .with_label_values(&[kind, RESULT_ERROR])
                        .inc();
                    metrics
                        .reconcile_duration
                        .with_label_values(&[kind])
                        .observe(started.elapsed().as_secs_f64());
                    tracing::error!(
                        kind,
                        namespace = %verdict.namespace,
                        name = %verdict.name,
                        code = api_code(&error),
                        %error,
                        "status write failed; will retry"
                    );
                }
            }
        }
        failed
    }

    /// Brings one resource's status up to date.
    pub async fn sync<K: StatusTarget>(
        &self,
        store: &Store<K>,
        verdict: &Verdict,
        ack: &Acknowledgement,
        analysis: &crate::analysis::Published,
    ) -> Result<Outcome, kube::Error> {
        let key = ObjectRef::new(&verdict.name).within(&verdict.namespace);
        let Some(mut object) = store.get(&key) else {
            return Ok(Outcome::Gone);
        };
        let api: Api<K> = Api::namespaced(self.client.clone(), &verdict.namespace);
        let mut conflicts = 0;
        loop {
            if object.meta().generation != verdict.generation {
                return Ok(Outcome::Stale);
            }
            let current = object.status();
            let desired = K::desired(&Sources {
                verdict,
                ack,
                analysis,
                current,
                now: &now_time(),
            });
            if current == Some(&desired) {
                return Ok(Outcome::UpToDate);
            }
            let patch = serde_json::json!({
                "apiVersion": K::api_version(&()),
                "kind": K::kind(&()),
                "status": desired,
            });
            let params = PatchParams::apply(FIELD_MANAGER).force();
            match api
                .patch_status(&verdict.name, &params, &Patch::Apply(&patch))
                .await
            {
                Ok(_) => {
                    let before = current.map(K::conditions).unwrap_or_default();
                    self.announce(object.as_ref(), before, verdict).await;
                    return Ok(Outcome::Written);
                }
                Err(error) if api_code(&error) == Some(404) => return Ok(Outcome::Gone),
                Err(error) if api_code(&error) == Some(409) && conflicts < CONFLICT_RETRIES => {
                    conflicts += 1;
                    tracing::info!(
                        kind = verdict.kind.as_str(),
                        namespace = %verdict.namespace,
                        name = %verdict.name,
                        attempt = conflicts,
                        "conflict writing status; re-reading and retrying"
                    );
                    tokio::time::sleep(Duration::from_millis(50 << conflicts)).await;
                    match api.get_status(&verdict.name).await {
                        Ok(fresh) => object = Arc::new(fresh),
                        Err(error) if api_code(&error) == Some(404) => return Ok(Outcome::Gone),
                        Err(error) => return Err(error),
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Publishes an Event when `Accepted` flipped (or appeared) with this write.
    async fn announce<K: StatusTarget>(&self, object: &K, before: &[Condition], verdict: &Verdict) {
        let was = before
            .iter()
            .find(|c| c.type_ == ACCEPTED)
            .map(|c| c.status.as_str());
        let (event, is) = match &verdict.accepted {
            Ok(()) => (
                Event {
                    type_: EventType::Normal,
                    reason: ACCEPTED.to_owned(),
                    note: Some("Translated and published to the config API".to_owned()),
                    action: "Translate".to_owned(),
                    secondary: None,
                },
                "True",
            ),
            Err(refused) => (
                Event {
                    type_: EventType::Warning,
                    reason: refused.reason.to_owned(),
                    // An Event note must stay under 1 kB.
                    note: Some(truncate(&refused.message, 1000)),
                    action: "Translate".to_owned(),
                    secondary: None,
                },
                "False",
            ),
        };
        if was == Some(is) {
            return;
        }
        if let Err(error) = self.recorder.publish(&event, &object.object_ref(&())).await {
            // Events are best effort: the status already says it.
            tracing::warn!(
                kind = verdict.kind.as_str(),
                namespace = %verdict.namespace,
                name = %verdict.name,
                %error,
                "publishing an Event failed"
            );
        }
    }
}

/// The HTTP status of an API error, if it is one.
fn api_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// The verdicts of a published translation and the snapshot they were published in.
#[derive(Debug, Default)]
pub(crate) struct Published {
    pub verdicts: Vec<Verdict>,
    pub snapshot: Arc<Snapshot>,
}

/// How long after a proxy's poll the acknowledgements are looked at again: polls come in
/// bursts (one per proxy after a push); one look per burst is enough.
const ACK_SETTLE: Duration = Duration::from_millis(250);

/// Where the proxies of every Service a default policy (Namespace or Mesh) reaches stand, summed
/// (a proxy that uses several of them counts once per Service).
pub(crate) fn acknowledgement_of(
    verdict: &Verdict,
    acks: &HashMap<ServiceKey, Acknowledgement>,
) -> Acknowledgement {
    let mut sum = Acknowledgement::default();
    for (_, ack) in acks.iter().filter(|(key, _)| verdict.reaches(key)) {
        sum.using += ack.using;
        sum.acknowledged += ack.acknowledged;
        sum.refused.extend(ack.refused.iter().cloned());
    }
    sum.refused.sort();
    sum
}

/// The versions each accepted resource's Service reached proxies at in `published` (every
/// Service a default policy reaches, for a Namespace or Mesh ResiliencePolicy).
pub(crate) fn targets(published: &Published) -> HashMap<ServiceKey, Target> {
    let mut targets: HashMap<ServiceKey, Target> = HashMap::new();
    for verdict in published
        .verdicts
        .iter()
        .filter(|v| v.accepted.is_ok() && v.is_default())
    {
        for (key, outbound) in &published.snapshot.services {
            if !verdict.reaches(key) {
                continue;
            }
            let target = targets.entry(key.clone()).or_insert(Target {
                outbound: outbound.version,
                inbound: None,
            });
            target.inbound = published
                .snapshot
                .inbound
                .get(key)
                .map(|piece| piece.version);
        }
    }
    for verdict in published.verdicts.iter().filter(|v| v.accepted.is_ok()) {
        let Some(outbound) = published.snapshot.services.get(&verdict.service) else {
            continue;
        };
        let target = targets.entry(verdict.service.clone()).or_insert(Target {
            outbound: outbound.version,
            inbound: None,
        });
        if verdict.kind == Kind::ResiliencePolicy {
            target.inbound = published
                .snapshot
                .inbound
                .get(&verdict.service)
                .map(|piece| piece.version);
        }
    }
    targets
}

/// Keeps status up to date while this replica leads, from the verdicts of each published
/// translation and the proxies' acknowledgements on `config_api` (looked at again after polls);
/// failed writes are retried with backoff (and not before, even when new verdicts arrive, so a
/// failing API server is not hammered).
pub(crate) async fn run(
    writer: StatusWriter,
    mut published: watch::Receiver<Arc<Published>>,
    mut analysis: watch::Receiver<Arc<crate::analysis::Published>>,
    config_api: Option<Arc<ConfigApi>>,
    mut leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = super::recovery::ApiBackoff::default();
    let mut retry_at: Option<Instant> = None;
    let mut ack_check_at: Option<Instant> = None;
    let mut polls = config_api.as_ref().map(|api| api.poll_counter());
    let mut leader_open = true;
    let mut dirty = false;
    let mut recorded = analysis.borrow().clone();
    loop {
        if dirty && retry_at.is_none() && *leader.borrow() {
            dirty = false;
            let current = published.borrow().clone();
            let acks = match &config_api {
                Some(api) => api.acknowledgements(&targets(&current)),
                None => HashMap::new(),
            };
            let rollouts = analysis.borrow_and_update().clone();
            let failed = tokio::select! {
                failed = writer.sync_all(&current.verdicts, &acks, &rollouts, &metrics) => failed,
                _ = stopped(&mut shutdown) => return,
            };
            if failed == 0 {
                backoff.reset();
            } else {
                let delay = backoff.next().unwrap_or(super::recovery::MAX_DELAY);
                tracing::warn!(
                    failed,
                    ?delay,
                    "some status writes failed; retrying after a pause"
                );
                retry_at = Some(Instant::now() + delay);
            }
        }
        let polled = async {
            match polls.as_mut() {
                Some(polls) => polls.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stopped(&mut shutdown) => return,
            changed = published.changed() => {
                if changed.is_err() {
                    return;
                }
                dirty = true;
            }
            Ok(()) = analysis.changed() => {
                // What status records of the rollouts changed (not merely their readiness
                // while nothing has an analysis).
                let now = analysis.borrow().clone();
                if now.states != recorded.states || now.refused != recorded.refused {
                    dirty = true;
                }
                recorded = now;
            }
            changed = leader.changed(), if leader_open => match changed {
                Err(_) => leader_open = false,
                // Taking over: bring everything up to date (usually a no-op compare).
                Ok(()) => dirty |= *leader.borrow_and_update(),
            },
            open = polled => {
                if !open {
                    polls = None;
                } else if ack_check_at.is_none() {
                    ack_check_at = Some(Instant::now() + ACK_SETTLE);
                }
            }
            _ = tokio::time::sleep_until(ack_check_at.unwrap_or_else(Instant::now)), if ack_check_at.is_some() => {
                ack_check_at = None;
                dirty = true;
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                retry_at = None;
                dirty = true;
            }
        }
    }
}
