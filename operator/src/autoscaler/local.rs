//! The Autoscaler in `weir-operator local`: desired replicas for the Autoscalers of the folder,
//! for a launcher to act on.
//!
//! **Why the operator decides and a launcher acts.** Outside a cluster there is no Deployment
//! to scale and nothing that starts processes, but the decision is the same as in a cluster and
//! should not be written twice: so local mode runs the same [`Scaler`] on the same sidecar
//! telemetry and publishes what it wants — `GET /autoscalers` on the admin listener (JSON: per
//! Autoscaler `namespace`, `name`, `target` and the fields of the status a cluster would hold,
//! [`AutoscalerView`]) and `weir_autoscaler_desired_replicas{namespace,name}` on `/metrics`.
//! Whoever runs the instances (the demo shop's launcher) starts or stops them to match
//! `desiredReplicas` and lists them in the LocalService.
//!
//! **The mapping.** An Autoscaler's `spec.targetRef.name` names the LocalService of that name in
//! its namespace (which stands for the Deployment; `apiVersion` and `kind` are not read, so the
//! same manifest serves both modes). Each endpoint is a pod named by its `address`, and the
//! admin listener of the sidecar in front of it is scraped for `/metrics` like a pod's
//! `POD_IP:15020` in a cluster ([`Scraper`], one per Autoscaler so that counters become rates;
//! every endpoint at once, 1 s timeout). That admin listener is the endpoint's `admin` when it
//! names one; otherwise the sidecar is found on the config connection, where every sidecar names
//! its inbound and admin listeners: the connected proxy of the target service (same namespace,
//! `--service` the LocalService's name) whose inbound listener is the endpoint's address — same
//! port, same IP or an unspecified one (`0.0.0.0:PORT`) — gives its admin listener
//! ([`crate::config_api::ConfigApi::admin_of`]). So a LocalService written as the design has it,
//! `address` and `labels` only, scales too, when its addresses are the sidecars' inbound
//! listeners (as callers need them to be, for the calls to go through the sidecars); an explicit
//! `admin` still wins. A pod whose sidecar has answered once is Ready since that first answer;
//! one that has not answered yet is starting (not Ready, no samples: the algorithm counts it
//! conservatively); an endpoint whose sidecar is not known — no `admin`, and no connected proxy
//! listening on its address (none yet, or one too old to name its listeners) — is a Ready pod
//! without samples (missing). There is no CPU source outside a cluster (metrics.k8s.io), so
//! `Cpu` is unknown: the algorithm skips it and, as the HPA does with any unknown metric, never
//! scales *down* while the spec lists it — `ScalingActive` says so.
//!
//! **Asked versus listed.** As in a cluster, where the algorithm starts from the scale's
//! `spec.replicas` (what was asked) while pods come and go behind it, the count it starts from
//! (`Observation::spec_replicas`) is the desired count this loop published last — the endpoint
//! count only before the first evaluation. The listed endpoints are `currentReplicas`, the pods
//! whose telemetry is read. Starting from the endpoint count instead would make the decision
//! depend on how fast the launcher acts (which lists an instance only once it is ready, and
//! unlists one before stopping it): a scale-down published but not carried out yet would read,
//! two seconds later, as "still 4, and the last scale-down was a moment ago", and the
//! scale-down hold would publish 4 again; a rate-limited scale-up from 2 to 4 whose instances
//! are still starting would read as "2, of which 2 were just added", and the policy would allow
//! only 2. Every change of the published count is reported to the rate limits with
//! [`Scaler::record_scale`], from that starting count.
//!
//! **Every [`Settings::interval`] (2 s)**, for each Autoscaler of the folder (the state the
//! config API serves: [`crate::local::run`] shares it through a `watch` channel):
//! 1. its spec is parsed when it changed ([`Scaler::new`]/[`Scaler::update`], one Scaler per
//!    namespace/name kept across edits, dropped with the Autoscaler); a refused spec gives
//!    `Accepted=False` (`Invalid`, naming the field, logged once per change) and the last good
//!    spec, if any, stays in force — local mode's rule for everything it reads;
//! 2. a missing LocalService gives `Accepted=False` and `AbleToScale=False` with reason
//!    `TargetNotFound` (logged once);
//! 3. a LocalService without endpoints asks for `minReplicas` (`ScalingActive=False`,
//!    `NoEndpoints`), so that a launcher starts them;
//! 4. otherwise the sidecars are scraped and the algorithm decides.
//!
//! The clock is tokio's monotonic [`Instant`](tokio::time::Instant), as time since the loop
//! started: the same origin on every call, as the algorithm needs. `lastScaleTime` is wall-clock.
//!
//! The parts without I/O — which sidecars the config API knows for endpoints without `admin`
//! ([`Autoscalers::discover`], given the lookup), what to scrape ([`Autoscalers::probes`]) and
//! the evaluation of the scrapes ([`Autoscalers::evaluate`]) — are plain functions of their
//! inputs and tested as such; [`run`] only adds the ticker, the config API lookup, the scrapes,
//! the log lines and the publishing.

use super::Scaler;
use super::algorithm::{Decision, Observation, Pod, Sample, Spec, SpecError, Verdict};
use super::scrape::Scraper;
use super::status::{self, AutoscalerList, AutoscalerView, Outcome};
use crate::local::Resources;
use crate::metrics::Metrics;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use weir_crds::{
    Autoscaler, AutoscalerSpec, AutoscalerStatus, LocalEndpoint, LocalService, MetricType,
};

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often every Autoscaler is measured and evaluated (the algorithm's tuning assumes 2 s).
    pub interval: Duration,
    /// How long one sidecar scrape may take; a sidecar slower than that counts as not answering.
    pub scrape_timeout: Duration,
}

impl Default for Settings {
    /// Every 2 s, 1 s scrapes: as in a cluster.
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            scrape_timeout: Duration::from_secs(1),
        }
    }
}

/// An Autoscaler's namespace and name.
pub type Key = (String, String);

/// A sidecar to scrape: an endpoint of an Autoscaler's LocalService whose sidecar admin
/// listener is known (its `admin`, or found on the config connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub autoscaler: Key,
    /// The endpoint's `address`: the pod's name.
    pub pod: String,
    pub admin: SocketAddr,
}

/// What the sidecars answered: per Autoscaler, per pod, the `/metrics` text. A pod that is
/// absent did not answer.
pub type Answers = HashMap<Key, BTreeMap<String, String>>;

/// The admin listeners found on the config connection for endpoints without `admin`: per
/// Autoscaler, per endpoint `address`, the admin listener of the connected sidecar of the target
/// service whose inbound listener is that address. An endpoint that is absent has none known.
pub type Discovered = HashMap<Key, BTreeMap<String, SocketAddr>>;

/// The LocalService `name` in `namespace`.
fn local_service<'a>(
    services: &'a [LocalService],
    namespace: &str,
    name: &str,
) -> Option<&'a LocalService> {
    services.iter().find(|s| {
        s.metadata.namespace.as_deref() == Some(namespace)
            && s.metadata.name.as_deref() == Some(name)
    })
}

/// An endpoint's own `admin`, when it names one (that parses).
fn explicit_admin(endpoint: &LocalEndpoint) -> Option<SocketAddr> {
    endpoint.admin.as_deref().and_then(|a| a.parse().ok())
}

/// The service's endpoints as pods, each with its sidecar's admin listener when known (its own
/// `admin` first, else the one `discovered`); the same address twice is one pod.
fn pods_of(
    service: &LocalService,
    discovered: Option<&BTreeMap<String, SocketAddr>>,
) -> Vec<(String, Option<SocketAddr>)> {
    let mut endpoints: Vec<(String, Option<SocketAddr>)> = Vec::new();
    for endpoint in &service.spec.endpoints {
        if !endpoints.iter().any(|(name, _)| *name == endpoint.address) {
            let admin = explicit_admin(endpoint)
                .or_else(|| discovered.and_then(|d| d.get(&endpoint.address).copied()));
            endpoints.push((endpoint.address.clone(), admin));
        }
    }
    endpoints
}

/// Something worth a log line, said once when it happens (not on every evaluation).
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// The spec changed and is refused; `kept`: an earlier good spec stays in force.
    Refused { error: String, kept: bool },
    /// The spec is accepted again after a refusal.
    Accepted,
    /// Two Autoscalers in the folder have this namespace and name; the first one is used.
    Duplicate,
    /// The target LocalService does not exist (now, and did not at the last evaluation).
    TargetNotFound { target: String },
    /// The target LocalService exists again.
    TargetFound { target: String },
    /// The published desired count changed; `from` is `None` on the first evaluation.
    Desired {
        target: String,
        from: Option<i32>,
        to: i32,
        /// The endpoints listed now.
        endpoints: i32,
        /// What drove it: the deciding metric with its value and target, or why no metric did.
        metric: String,
        /// The decision's summary: `from → to replicas`, panic mode, every metric's value.
        summary: String,
    },
}

/// One Autoscaler after one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub key: Key,
    /// What `/autoscalers` shows.
    pub view: AutoscalerView,
    /// What to log.
    pub notes: Vec<Note>,
}

/// When an endpoint was first seen and first answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    first_seen: Duration,
    answered_since: Option<Duration>,
}

/// The target's endpoints as pods: when each was first seen and first answered, and the
/// counters of the previous scrapes (for rates).
#[derive(Debug)]
struct Pods {
    seen: BTreeMap<String, Seen>,
    scraper: Scraper,
}

impl Pods {
    fn new(scrape_timeout: Duration) -> Self {
        Self {
            seen: BTreeMap::new(),
            scraper: Scraper::new(scrape_timeout),
        }
    }

    /// The endpoints as pods, with the samples of those whose sidecar answered; forgets pods
    /// no longer listed.
    fn observe(
        &mut self,
        endpoints: &[(String, Option<SocketAddr>)],
        answers: Option<&BTreeMap<String, String>>,
        wanted: &[MetricType],
        now: Duration,
    ) -> (Vec<Pod>, Vec<Sample>) {
        self.seen
            .retain(|pod, _| endpoints.iter().any(|(name, _)| name == pod));
        self.scraper
            .retain(|pod| endpoints.iter().any(|(name, _)| name == pod));
        let mut pods = Vec::with_capacity(endpoints.len());
        let mut samples = Vec::new();
        for (name, admin) in endpoints {
            let seen = self.seen.entry(name.clone()).or_insert(Seen {
                first_seen: now,
                answered_since: None,
            });
            if admin.is_none() {
                // No sidecar to ask: serving, but its metrics are missing.
                pods.push(Pod::ready(name.clone(), seen.first_seen));
                continue;
            }
            if let Some(text) = answers.and_then(|a| a.get(name)) {
                let since = *seen.answered_since.get_or_insert(now);
                samples.extend(self.scraper.samples(name, now, text, wanted));
                pods.push(Pod::ready(name.clone(), since));
            } else if let Some(since) = seen.answered_since {
                // Answered before: Ready, its samples age until they are stale.
                pods.push(Pod::ready(name.clone(), since));
            } else {
                pods.push(Pod::starting(name.clone(), seen.first_seen));
            }
        }
        (pods, samples)
    }
}

/// What one evaluation knows of an Autoscaler's sidecars.
#[derive(Debug, Clone, Copy)]
struct Sidecars<'a> {
    /// The admin listeners found on the config connection, per endpoint address.
    discovered: Option<&'a BTreeMap<String, SocketAddr>>,
    /// What they answered, per pod.
    answers: Option<&'a BTreeMap<String, String>>,
}

/// One Autoscaler's memory between evaluations.
#[derive(Debug)]
struct Tracked {
    /// The spec last looked at, so that it is parsed (and a refusal logged) once per change.
    spec: Option<AutoscalerSpec>,
    /// The algorithm with the last good spec; `None` until a spec was accepted.
    scaler: Option<Scaler>,
    /// Why the spec last looked at is refused.
    refusal: Option<SpecError>,
    /// The target's endpoints, seen and scraped.
    pods: Pods,
    /// The desired count published last: where the next evaluation starts from.
    desired: Option<i32>,
    last_scale_time: Option<Time>,
    /// The status of the last evaluation (for transition times and kept values).
    status: Option<AutoscalerStatus>,
    /// Whether the target existed at the last evaluation, to log a change once.
    target_found: Option<bool>,
    /// A duplicate was reported.
    duplicate_noted: bool,
}

impl Tracked {
    fn new(scrape_timeout: Duration) -> Self {
        Self {
            spec: None,
            scaler: None,
            refusal: None,
            pods: Pods::new(scrape_timeout),
            desired: None,
            last_scale_time: None,
            status: None,
            target_found: None,
            duplicate_noted: false,
        }
    }

    /// Takes the spec if it changed: a good one replaces the Scaler's spec (its history stays),
    /// a bad one is remembered as the refusal.
    fn take_spec(&mut self, spec: &AutoscalerSpec, notes: &mut Vec<Note>) {
        if self.spec.as_ref() == Some(spec) {
            return;
        }
        self.spec = Some(spec.clone());
        let parsed = match self.scaler.as_mut() {
            Some(scaler) => scaler.update(spec),
            None => Scaler::new(spec).map(|scaler| self.scaler = Some(scaler)),
        };
        match parsed {
            Ok(()) => {
                if self.refusal.take().is_some() {
                    notes.push(Note::Accepted);
                }
            }
            Err(error) => {
                notes.push(Note::Refused {
                    error: error.to_string(),
                    kept: self.scaler.is_some(),
                });
                self.refusal = Some(error);
            }
        }
    }

    /// One evaluation: the outcome for status, and what to log.
    fn evaluate(
        &mut self,
        key: &Key,
        autoscaler: &Autoscaler,
        services: &[LocalService],
        sidecars: Sidecars<'_>,
        now: Duration,
        wall: &Time,
    ) -> (Outcome, Vec<Note>) {
        let (namespace, _) = key;
        let target = autoscaler.spec.target_ref.name.clone();
        let mut notes = Vec::new();
        // 1. The spec.
        self.take_spec(&autoscaler.spec, &mut notes);
        let mut outcome = match &self.refusal {
            None => Outcome::accepted(),
            Some(error) if self.scaler.is_some() => Outcome::refused(
                "Invalid",
                format!("{error}; the last good spec stays in force"),
            ),
            Some(error) => Outcome::refused("Invalid", error.to_string()),
        };
        let Some(scaler) = self.scaler.as_mut() else {
            return (outcome, notes);
        };
        // 2. The target.
        let Some(service) = local_service(services, namespace, &target) else {
            if self.target_found != Some(false) {
                notes.push(Note::TargetNotFound {
                    target: target.clone(),
                });
            }
            self.target_found = Some(false);
            let message = format!(
                "LocalService {namespace}/{target} does not exist (in local mode `spec.targetRef.name` names a LocalService)"
            );
            if outcome.accepted.status {
                outcome = Outcome::refused("TargetNotFound", message.clone());
            }
            outcome.able_to_scale = Some(Verdict {
                status: false,
                reason: "TargetNotFound",
                message,
            });
            return (outcome, notes);
        };
        if self.target_found == Some(false) {
            notes.push(Note::TargetFound {
                target: target.clone(),
            });
        }
        self.target_found = Some(true);
        // 3. Its endpoints are the pods; the same address twice is one pod.
        let endpoints = pods_of(service, sidecars.discovered);
        let listed = i32::try_from(endpoints.len()).unwrap_or(i32::MAX);
        outcome.current_replicas = Some(listed);
        let wanted: Vec<MetricType> = scaler.sidecar_metrics();
        let (pods, samples) = self
            .pods
            .observe(&endpoints, sidecars.answers, &wanted, now);
        let decision = if endpoints.is_empty() {
            no_endpoints(&scaler.spec, namespace, &target, now)
        } else {
            // 4. Decide, starting from what was asked last (see the module docs).
            let spec_replicas = self.desired.unwrap_or(listed);
            let mut decision = scaler.evaluate(&Observation {
                now,
                spec_replicas,
                pods,
                samples,
            });
            explain_cpu(&scaler.spec, &mut decision);
            if decision.rescale() {
                scaler.record_scale(now, spec_replicas, decision.desired_replicas);
                self.last_scale_time = Some(wall.clone());
            }
            decision
        };
        if self.desired != Some(decision.desired_replicas) {
            notes.push(Note::Desired {
                target,
                from: self.desired,
                to: decision.desired_replicas,
                endpoints: listed,
                metric: driver(&decision),
                summary: decision.summary(),
            });
        }
        self.desired = Some(decision.desired_replicas);
        outcome.decision = Some(decision);
        (outcome, notes)
    }
}

/// A LocalService without endpoints: ask for `minReplicas`, so that a launcher starts them.
/// (The algorithm itself reads zero replicas as "scaling disabled", the HPA's rule for a
/// Deployment scaled to zero by hand; here zero only means nothing was started yet.)
fn no_endpoints(spec: &Spec, namespace: &str, target: &str, now: Duration) -> Decision {
    Decision {
        now,
        current_replicas: 0,
        desired_replicas: spec.min_replicas,
        recommendation: None,
        metrics: Vec::new(),
        able_to_scale: Verdict {
            status: true,
            reason: "ReadyForNewScale",
            message: "recommended size matches current size".to_owned(),
        },
        scaling_active: Verdict {
            status: false,
            reason: "NoEndpoints",
            message: format!(
                "LocalService {namespace}/{target} lists no endpoints: asking for minReplicas ({}) so that they are started; metrics are read once endpoints are listed",
                spec.min_replicas
            ),
        },
        scaling_limited: Verdict {
            status: true,
            reason: "TooFewReplicas",
            message: "the current replica count is less than minReplicas".to_owned(),
        },
        panicking: false,
    }
}

/// Says in `ScalingActive` why Cpu is unknown, when the spec lists it.
fn explain_cpu(spec: &Spec, decision: &mut Decision) {
    if spec.target(MetricType::Cpu).is_none() {
        return;
    }
    let message = &mut decision.scaling_active.message;
    if !message.is_empty() {
        message.push_str("; ");
    }
    message.push_str(
        "Cpu is unknown: local mode has no CPU source (metrics.k8s.io exists only in a cluster), \
         so while the spec lists Cpu the count is never lowered",
    );
}

/// The metric that drove a decision (the highest recommendation), for the log line.
fn driver(decision: &Decision) -> String {
    if decision.current_replicas == 0 {
        return "none: no endpoints listed".to_owned();
    }
    decision
        .metrics
        .iter()
        .filter(|m| m.replicas.is_some())
        .max_by_key(|m| m.replicas)
        .and_then(|m| {
            m.display_value().map(|v| {
                format!(
                    "{:?} {v} (target {})",
                    m.kind,
                    super::algorithm::format_value(m.kind, m.target)
                )
            })
        })
        .unwrap_or_else(|| format!("none: {}", decision.scaling_active.reason))
}

/// Every Autoscaler of the folder and its memory.
#[derive(Debug)]
pub struct Autoscalers {
    tracked: BTreeMap<Key, Tracked>,
    scrape_timeout: Duration,
}

fn key_of(autoscaler: &Autoscaler) -> Key {
    (
        autoscaler.metadata.namespace.clone().unwrap_or_default(),
        autoscaler.metadata.name.clone().unwrap_or_default(),
    )
}

impl Autoscalers {
    pub fn new(scrape_timeout: Duration) -> Self {
        Self {
            tracked: BTreeMap::new(),
            scrape_timeout,
        }
    }

    /// Starts tracking new Autoscalers and forgets those no longer in `resources`; returns the
    /// forgotten ones.
    pub fn sync(&mut self, resources: &Resources) -> Vec<Key> {
        let present: BTreeSet<Key> = resources.autoscalers.iter().map(key_of).collect();
        let gone: Vec<Key> = self
            .tracked
            .keys()
            .filter(|key| !present.contains(*key))
            .cloned()
            .collect();
        for key in &gone {
            self.tracked.remove(key);
        }
        for key in present {
            self.tracked
                .entry(key)
                .or_insert_with(|| Tracked::new(self.scrape_timeout));
        }
        gone
    }

    /// Each tracked Autoscaler (the first of duplicates) with its target LocalService, when
    /// that exists.
    fn targets<'a>(
        &self,
        resources: &'a Resources,
    ) -> impl Iterator<Item = (Key, &'a LocalService)> + use<'a, '_> {
        let mut done = BTreeSet::new();
        resources.autoscalers.iter().filter_map(move |autoscaler| {
            let key = key_of(autoscaler);
            if !self.tracked.contains_key(&key) || !done.insert(key.clone()) {
                return None;
            }
            let service = local_service(
                &resources.local_services,
                &key.0,
                &autoscaler.spec.target_ref.name,
            )?;
            Some((key, service))
        })
    }

    /// The admin listeners `lookup` knows for the endpoints without `admin` of every tracked
    /// Autoscaler's LocalService. `lookup(namespace, service, address)` answers with the admin
    /// listener of the connected sidecar of that service whose inbound listener is `address`
    /// ([`crate::config_api::ConfigApi::admin_of`] in `weir-operator local`). An endpoint whose
    /// address is not `IP:port` is not looked up.
    pub fn discover(
        &self,
        resources: &Resources,
        lookup: impl Fn(&str, &str, SocketAddr) -> Option<SocketAddr>,
    ) -> Discovered {
        let mut discovered = Discovered::new();
        for (key, service) in self.targets(resources) {
            let name = service.metadata.name.as_deref().unwrap_or_default();
            for endpoint in &service.spec.endpoints {
                if explicit_admin(endpoint).is_some() {
                    continue;
                }
                let Ok(address) = endpoint.address.parse::<SocketAddr>() else {
                    continue;
                };
                if let Some(admin) = lookup(&key.0, name, address) {
                    discovered
                        .entry(key.clone())
                        .or_default()
                        .insert(endpoint.address.clone(), admin);
                }
            }
        }
        discovered
    }

    /// The sidecars to scrape: every endpoint of every tracked Autoscaler's LocalService whose
    /// sidecar admin listener is known — its `admin`, else the one `discovered`.
    pub fn probes(&self, resources: &Resources, discovered: &Discovered) -> Vec<Probe> {
        let mut probes = Vec::new();
        for (key, service) in self.targets(resources) {
            for (pod, admin) in pods_of(service, discovered.get(&key)) {
                if let Some(admin) = admin {
                    probes.push(Probe {
                        autoscaler: key.clone(),
                        pod,
                        admin,
                    });
                }
            }
        }
        probes
    }

    /// Scrapes every probe at once (each bounded by the scrape timeout).
    pub async fn scrape(&self, probes: &[Probe]) -> Answers {
        let fetches = probes.iter().filter_map(|probe| {
            let tracked = self.tracked.get(&probe.autoscaler)?;
            Some(async move { (probe, tracked.pods.scraper.fetch(probe.admin).await) })
        });
        let mut answers = Answers::new();
        for (probe, text) in futures::future::join_all(fetches).await {
            match text {
                Ok(text) => {
                    answers
                        .entry(probe.autoscaler.clone())
                        .or_default()
                        .insert(probe.pod.clone(), text);
                }
                Err(error) => tracing::debug!(
                    namespace = %probe.autoscaler.0, name = %probe.autoscaler.1,
                    pod = %probe.pod, admin = %probe.admin, %error, "sidecar scrape failed"
                ),
            }
        }
        answers
    }

    /// Evaluates every tracked Autoscaler of `resources` on `answers` (with the admin listeners
    /// `discovered` for endpoints without `admin`: which pods have a sidecar to ask), at `now`
    /// (the loop's monotonic clock) and `wall` (for `lastScaleTime`). In namespace/name order.
    pub fn evaluate(
        &mut self,
        resources: &Resources,
        answers: &Answers,
        discovered: &Discovered,
        now: Duration,
        wall: &Time,
    ) -> Vec<Evaluation> {
        let mut evaluated: BTreeMap<Key, Evaluation> = BTreeMap::new();
        for autoscaler in &resources.autoscalers {
            let key = key_of(autoscaler);
            let Some(tracked) = self.tracked.get_mut(&key) else {
                continue;
            };
            if let Some(first) = evaluated.get_mut(&key) {
                if !tracked.duplicate_noted {
                    tracked.duplicate_noted = true;
                    first.notes.push(Note::Duplicate);
                }
                continue;
            }
            let (outcome, notes) = tracked.evaluate(
                &key,
                autoscaler,
                &resources.local_services,
                Sidecars {
                    discovered: discovered.get(&key),
                    answers: answers.get(&key),
                },
                now,
                wall,
            );
            let status = status::status(
                autoscaler.metadata.generation,
                &outcome,
                tracked.last_scale_time.clone(),
                tracked.status.as_ref(),
                wall,
            );
            tracked.status = Some(status.clone());
            evaluated.insert(
                key.clone(),
                Evaluation {
                    key: key.clone(),
                    view: AutoscalerView {
                        namespace: key.0.clone(),
                        name: key.1.clone(),
                        target: autoscaler.spec.target_ref.name.clone(),
                        status,
                    },
                    notes,
                },
            );
        }
        evaluated.into_values().collect()
    }
}

/// Evaluates the Autoscalers of `resources` every [`Settings::interval`] until `shutdown`,
/// publishing the result on `published` (what `/autoscalers` serves) and in `metrics`.
/// `sidecars(namespace, service, address)` finds the admin listener of the sidecar in front of
/// an endpoint without `admin` ([`Autoscalers::discover`]): in `weir-operator local`,
/// [`crate::config_api::ConfigApi::admin_of`].
pub async fn run(
    settings: Settings,
    mut resources: watch::Receiver<Arc<Resources>>,
    sidecars: impl Fn(&str, &str, SocketAddr) -> Option<SocketAddr> + Send + Sync,
    metrics: Arc<Metrics>,
    published: watch::Sender<Arc<AutoscalerList>>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Nothing to evaluate before the folder has been read.
    tokio::select! {
        changed = resources.changed() => if changed.is_err() { return },
        _ = shutdown.wait_for(|stop| *stop) => return,
    }
    let origin = tokio::time::Instant::now();
    let mut autoscalers = Autoscalers::new(settings.scrape_timeout);
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let current = resources.borrow_and_update().clone();
        for (namespace, name) in autoscalers.sync(&current) {
            tracing::info!(%namespace, %name, "Autoscaler removed; its state is dropped");
            let _ = metrics
                .autoscaler_desired_replicas
                .remove_label_values(&[&namespace, &name]);
        }
        let discovered = autoscalers.discover(&current, &sidecars);
        let probes = autoscalers.probes(&current, &discovered);
        let answers = tokio::select! {
            answers = autoscalers.scrape(&probes) => answers,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let evaluations = autoscalers.evaluate(
            &current,
            &answers,
            &discovered,
            origin.elapsed(),
            &status::now_time(),
        );
        for evaluation in &evaluations {
            log(evaluation);
            if let Some(desired) = evaluation.view.status.desired_replicas {
                metrics
                    .autoscaler_desired_replicas
                    .with_label_values(&[&evaluation.key.0, &evaluation.key.1])
                    .set(i64::from(desired));
            }
        }
        published.send_replace(Arc::new(AutoscalerList {
            autoscalers: evaluations.into_iter().map(|e| e.view).collect(),
        }));
    }
}

fn log(evaluation: &Evaluation) {
    let (namespace, name) = &evaluation.key;
    for note in &evaluation.notes {
        match note {
            Note::Refused { error, kept } => tracing::warn!(
                %namespace, %name, %error, reason = "Invalid",
                "Autoscaler refused; {}",
                if *kept { "the last good spec stays in force" } else { "not evaluated until it is fixed" }
            ),
            Note::Accepted => tracing::info!(%namespace, %name, "Autoscaler accepted"),
            Note::Duplicate => tracing::warn!(
                %namespace, %name,
                "two Autoscalers with this namespace and name; the first one read is used"
            ),
            Note::TargetNotFound { target } => tracing::warn!(
                %namespace, %name, %target, reason = "TargetNotFound",
                "no LocalService of that name: not scaled until one appears"
            ),
            Note::TargetFound { target } => {
                tracing::info!(%namespace, %name, %target, "target LocalService found")
            }
            Note::Desired {
                target,
                from,
                to,
                endpoints,
                metric,
                summary,
            } => tracing::info!(
                %namespace, %name, %target,
                from = from.unwrap_or(*endpoints), to, endpoints, %metric,
                "desired replicas: {summary}{}",
                if from.is_none() { " (first evaluation)" } else { "" }
            ),
        }
    }
}

#[cfg(test)]
mod tests;
