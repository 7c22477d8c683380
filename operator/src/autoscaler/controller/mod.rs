//! The Autoscaler controller: watches Autoscalers, measures their Deployments' pods, runs the
//! [`algorithm`](super::algorithm) and writes the Deployments' `scale` subresource, status and
//! Events. Only the leader does any of this (the same Lease as the status writer); a replica
//! that takes over starts with a fresh history, as the HPA controller does.
//!
//! # Scheduling: kube-runtime's `Controller`
//!
//! Each Autoscaler is one reconcile of a kube-runtime [`Controller`]: reconciles of different
//! Autoscalers run concurrently (at most [`Settings::concurrency`] at once), never two of the
//! same one. A reconcile evaluates and asks to be run again after [`Settings::interval`] (2 s)
//! from its start (`Action::requeue`), so one Autoscaler whose sidecars hang (each scrape is
//! cut at [`Settings::scrape_timeout`]) delays nobody else, and the cycle does not grow with
//! the number of Autoscalers. A reconcile that met an API error (reading or writing the scale,
//! writing status) is retried by the error policy after a pause that doubles from twice the
//! interval up to [`MAX_ERROR_PAUSE`], back to the interval after a success. The Controller
//! also reconciles on every change of the Autoscaler, our own status writes included: such a
//! reconcile evaluates only when the spec's generation moved or the Autoscaler is due, and
//! otherwise just keeps its schedule, so status writes never speed up the cadence. A deleted
//! Autoscaler is not reconciled again (the Controller finds it gone from its store); its
//! history and its `weir_autoscaler_desired_replicas` series are dropped then.
//!
//! The Controller runs while this replica leads and is stopped (graceful: running reconciles
//! finish) when it stops leading; its Autoscaler watch is resumed after errors with the same
//! short backoff as every other watch ([`crate::kubernetes::recovery`]).
//!
//! Pods are not watched here: the controller reads the operator's one Pod reflector store (the
//! one the translation keeps, passed to [`run`]), so the cluster's Pods are cached once.
//! HorizontalPodAutoscalers are watched here (only the autoscaler reads them).
//!
//! # One evaluation ([`evaluation`])
//!
//! 1. its spec is parsed ([`Scaler`](super::Scaler); a bad spec gives `Accepted=False` naming
//!    the field); only `apps/v1` Deployments are scaled (`Accepted=False`,
//!    `UnsupportedTarget`, otherwise);
//! 2. the target's `scale` subresource gives `spec.replicas`, `status.replicas` and the pod
//!    selector (`TargetNotFound` when it is gone);
//! 3. an `autoscaling/v2` HorizontalPodAutoscaler aiming at the same Deployment makes
//!    `AbleToScale=False` with reason `ConflictingHPA`: Weir then leaves the scale alone, so
//!    the two never fight (delete the HPA or the Autoscaler to settle it);
//! 4. the selected pods are grouped and each running pod's sidecar is scraped at
//!    `POD_IP:15020/metrics` ([`scrape`](super::scrape): in-flight, requests/s from counter
//!    deltas, p99 from histogram deltas), all pods at once, 1 s timeout each — a pod that does
//!    not answer is *missing*, as the HPA treats pods without metrics;
//! 5. with a `Cpu` metric, `metrics.k8s.io/v1beta1` PodMetrics give each pod's CPU over its
//!    window as a percentage of the pod's CPU requests; when that API is not served (no
//!    metrics-server) or a pod has no request, CPU is unknown: `ScalingActive=False`
//!    (`FailedGetMetrics`, naming Cpu) when nothing else is known, and never a scale-down on
//!    the other metrics alone (the HPA's rule); after a failed request the API is asked again
//!    only after a pause, 4 s doubling to 5 minutes, shared by every Autoscaler
//!    ([`super::metrics_api`]);
//! 6. the algorithm decides; a change is written with a merge patch of the scale subresource's
//!    `spec.replicas` (field manager `weir-operator`), an Event (`SuccessfulRescale` with the
//!    driving metric, or `FailedRescale`) is recorded, and
//!    `weir_autoscaler_desired_replicas{namespace,name}` set;
//! 7. status — `observedGeneration`, conditions `Accepted`, `AbleToScale`, `ScalingActive`,
//!    `ScalingLimited` (the HPA's reasons, plus `Panic`), `currentReplicas`,
//!    `desiredReplicas`, `currentMetrics`, `lastScaleTime` — is written by server-side apply
//!    when anything but the metric values changed, and at least every
//!    [`Settings::status_interval`] (15 s) for the values.
//!
//! Each reconcile counts in `weir_reconcile_total{kind="Autoscaler",result}` and
//! `weir_reconcile_duration_seconds{kind="Autoscaler"}`.
//!
//! RBAC: `weir.dev` `autoscalers` get/list/watch and `autoscalers/status` patch; `apps`
//! `deployments/scale` get/patch; core `pods` list/watch (the shared Pod watch);
//! `autoscaling` `horizontalpodautoscalers` list/watch; `metrics.k8s.io` `pods` list
//! (optional); `events.k8s.io` `events` create/patch. Sidecars must listen for admin on the pod
//! IP (`weir-sidecar --admin 0.0.0.0:15020`), and network policies must let the operator reach
//! it.

mod evaluation;

pub use evaluation::{cpu_millis, selects};

use super::Scaler;
use super::scrape::{ADMIN_PORT, Scraper};
use crate::kubernetes::recovery::{ApiBackoff, recovering};
use crate::metrics::{Metrics, RESULT_ERROR, RESULT_SUCCESS};
use crate::shutdown::stopped;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{Store, store::Writer};
use kube::runtime::watcher::{self, watcher};
use kube::{Client, Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use weir_crds::{Autoscaler, AutoscalerStatus};

/// The field manager of status writes and scale patches.
pub const FIELD_MANAGER: &str = "weir-operator";

/// The longest pause after repeated API errors of one Autoscaler.
pub const MAX_ERROR_PAUSE: Duration = Duration::from_secs(60);

/// How long, beyond a scrape, running reconciles may take to finish when leadership ends.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// The `kind` label of this controller's `weir_reconcile_*` metrics.
const KIND: &str = "Autoscaler";

/// Condition types.
pub use super::status::{ABLE_TO_SCALE, ACCEPTED, SCALING_ACTIVE, SCALING_LIMITED};

/// What the controller needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Watch only this namespace; every namespace when `None`.
    pub namespace: Option<String>,
    /// This replica's name: the reporting instance of Events.
    pub identity: String,
    /// How often each Autoscaler is measured and evaluated.
    pub interval: Duration,
    /// The sidecars' admin port.
    pub admin_port: u16,
    /// How long one sidecar scrape may take: with the API calls, about how long one
    /// Autoscaler's reconcile can take at worst.
    pub scrape_timeout: Duration,
    /// Status is rewritten at least this often while only metric values change.
    pub status_interval: Duration,
    /// How many Autoscalers are evaluated at once. Each evaluation holds one connection per
    /// pod while it scrapes, so this bounds the operator's sockets; with 1 s scrapes, 32 at
    /// once still evaluate about 30 Autoscalers whose sidecars all hang per second.
    pub concurrency: u16,
}

impl Settings {
    /// Every namespace, every 2 s, port 15020, 1 s scrapes, status values every 15 s, 32
    /// Autoscalers at once.
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            namespace: None,
            identity: identity.into(),
            interval: Duration::from_secs(2),
            admin_port: ADMIN_PORT,
            scrape_timeout: Duration::from_secs(1),
            status_interval: Duration::from_secs(15),
            concurrency: 32,
        }
    }

    /// The pause before the next evaluation after `failures` API errors in a row.
    fn pause(&self, failures: u32) -> Duration {
        if failures == 0 {
            return self.interval;
        }
        self.interval
            .saturating_mul(2u32.saturating_pow(failures.min(16)))
            .min(MAX_ERROR_PAUSE.max(self.interval))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A reflector task stopped (it only does when it panicked).
    #[error("the {0} watch stopped")]
    WatchStopped(&'static str),
    #[error("reading the scale of Deployment {deployment}: {source}")]
    ReadScale {
        deployment: String,
        source: kube::Error,
    },
    #[error("writing the scale of Deployment {deployment}: {source}")]
    WriteScale {
        deployment: String,
        source: kube::Error,
    },
    #[error("writing the status: {0}")]
    WriteStatus(#[source] kube::Error),
}

/// An Autoscaler by namespace and name.
type Key = (String, String);

fn key_of(autoscaler: &Autoscaler) -> Key {
    (
        autoscaler.namespace().unwrap_or_default(),
        autoscaler.name_any(),
    )
}

/// What every reconcile shares.
pub(crate) struct Context {
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    /// The operator's Pod store (shared with the translation).
    pods: Store<Pod>,
    hpas: Store<HorizontalPodAutoscaler>,
    /// Whether `metrics.k8s.io` is worth asking now (shared by every Autoscaler).
    metrics_api: parking_lot::Mutex<super::metrics_api::MetricsApi>,
    clock: Clock,
    /// For the FailedRescale warnings, folded into one series per Autoscaler.
    recorder: Recorder,
    /// Each Autoscaler's memory. The Controller never runs two reconciles of one Autoscaler
    /// at once, so each inner lock is uncontended; it is async only because a reconcile holds
    /// it across its awaits.
    tracked: parking_lot::Mutex<HashMap<Key, Arc<tokio::sync::Mutex<Tracked>>>>,
    /// API errors in a row per Autoscaler, for the error policy's backoff.
    failures: parking_lot::Mutex<HashMap<Key, u32>>,
}

impl Context {
    /// Forgets an Autoscaler that is gone (or all of them, when leadership is lost).
    fn forget(&self, key: &Key) {
        self.tracked.lock().remove(key);
        self.failures.lock().remove(key);
        let _ = self
            .metrics
            .autoscaler_desired_replicas
            .remove_label_values(&[&key.0, &key.1]);
    }

    fn failures(&self, key: &Key) -> u32 {
        self.failures.lock().get(key).copied().unwrap_or(0)
    }
}

/// The algorithm's clock: time since the Unix epoch (pod start and readiness times are wall
/// times), read from the wall clock once and then advanced by tokio's monotonic clock. So a
/// wall-clock step (NTP) cannot make the algorithm's windows jump, and paused-time tests move
/// the windows along with the Controller's schedule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    origin: Instant,
    wall: Duration,
}

impl Clock {
    fn start() -> Self {
        Self {
            origin: Instant::now(),
            wall: std::time::SystemTime::now()
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }

    pub(crate) fn now(&self) -> Duration {
        self.wall + self.origin.elapsed()
    }
}

/// One Autoscaler's memory between evaluations.
#[derive(Debug)]
pub(crate) struct Tracked {
    scaler: Option<Scaler>,
    /// The generation `scaler` was parsed from.
    generation: Option<i64>,
    scraper: Scraper,
    last_scale_time: Option<Time>,
    /// The status last written (or read back) and when.
    written: Option<(AutoscalerStatus, Instant)>,
    /// When the last evaluation started, and of which generation.
    evaluated: Option<(Instant, Option<i64>)>,
}

/// Runs until `shutdown`; acts only while `leader` holds true. `pods` is the operator's Pod
/// store (full Pods: phase, IP, readiness and CPU requests are read); the controller waits
/// until it has listed.
pub async fn run(
    client: Client,
    settings: Settings,
    pods: Store<Pod>,
    metrics: Arc<Metrics>,
    mut leader: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let mut reflectors = JoinSet::new();
    let hpas = spawn_reflector(
        &mut reflectors,
        "HorizontalPodAutoscaler",
        api(&client, settings.namespace.as_deref()),
    );
    // Evaluating before the HPA list is in could fight an HPA we have not seen yet.
    let ready = async {
        // The Pod store is shared with the translation, which waits on it too.
        crate::kubernetes::stores::until_ready(&pods)
            .await
            .map_err(|_| "Pod")?;
        hpas.wait_until_ready()
            .await
            .map_err(|_| "HorizontalPodAutoscaler")
    };
    tokio::select! {
        ready = ready => if let Err(kind) = ready { return Err(Error::WatchStopped(kind)) },
        _ = stopped(&mut shutdown) => return Ok(()),
        Some(ended) = reflectors.join_next() => return Err(Error::WatchStopped(ended.unwrap_or("reflector"))),
    }
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: Some(settings.identity.clone()),
        },
    );
    let context = Arc::new(Context {
        client,
        settings,
        metrics,
        pods,
        hpas,
        metrics_api: Default::default(),
        clock: Clock::start(),
        recorder,
        tracked: Default::default(),
        failures: Default::default(),
    });
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break,
            led = leader.wait_for(|leads| *leads).map(|led| led.is_ok()) => if !led {
                // The election is gone for good: this replica never leads again.
                tokio::select! {
                    _ = stopped(&mut shutdown) => break,
                    Some(ended) = reflectors.join_next() => return Err(Error::WatchStopped(ended.unwrap_or("reflector"))),
                }
            },
            Some(ended) = reflectors.join_next() => return Err(Error::WatchStopped(ended.unwrap_or("reflector"))),
        }
        tracing::info!("leading: the autoscaler controller starts");
        let (mut lost, mut stop) = (leader.clone(), shutdown.clone());
        let term_over = async move {
            tokio::select! {
                _ = lost.wait_for(|leads| !*leads) => {}
                _ = stopped(&mut stop) => {}
            }
        }
        .boxed()
        .shared();
        let controller = controller(context.clone(), term_over.clone());
        // The Controller drains running reconciles after `term_over`, but never ends when that
        // comes before its first list of Autoscalers (its runner waits for the store): after
        // the longest a reconcile should take, it is dropped.
        let drain = context.settings.scrape_timeout + DRAIN_GRACE;
        let drained = async move {
            term_over.await;
            tokio::time::sleep(drain).await;
        };
        tokio::select! {
            () = controller => {}
            () = drained => tracing::debug!("the autoscaler controller did not drain; dropped"),
            Some(ended) = reflectors.join_next() => return Err(Error::WatchStopped(ended.unwrap_or("reflector"))),
        }
        // A later takeover starts afresh, as the HPA controller does.
        let keys: Vec<Key> = context.tracked.lock().keys().cloned().collect();
        for key in &keys {
            context.forget(key);
        }
    }
    reflectors.shutdown().await;
    Ok(())
}

/// Runs the Controller until `term_over` resolves, then lets running reconciles finish.
async fn controller(
    context: Arc<Context>,
    term_over: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let settings = &context.settings;
    let autoscalers: Api<Autoscaler> = api(&context.client, settings.namespace.as_deref());
    let config = controller::Config::default().concurrency(settings.concurrency);
    Controller::new(autoscalers, watcher::Config::default())
        .with_config(config)
        .trigger_backoff(ApiBackoff::default())
        .graceful_shutdown_on(term_over)
        .run(reconcile, error_policy, context.clone())
        .for_each(|result| {
            match result {
                Ok(_) => {}
                // A requeued Autoscaler that is gone: deleted.
                Err(controller::Error::ObjectNotFound(gone)) => {
                    let key = (gone.namespace.clone().unwrap_or_default(), gone.name.clone());
                    tracing::debug!(namespace = %key.0, name = %key.1, "Autoscaler deleted; no longer evaluated");
                    context.forget(&key);
                }
                // Logged by the error policy.
                Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(error) => {
                    tracing::warn!(%error, "Autoscaler watch failed; retrying with backoff")
                }
            }
            std::future::ready(())
        })
        .await;
}

/// One Autoscaler: evaluates it when due (or when its spec changed), then asks to be run again
/// at the next interval.
async fn reconcile(autoscaler: Arc<Autoscaler>, context: Arc<Context>) -> Result<Action, Error> {
    let key = key_of(&autoscaler);
    let settings = &context.settings;
    let slot = context
        .tracked
        .lock()
        .entry(key.clone())
        .or_insert_with(|| {
            Arc::new(tokio::sync::Mutex::new(Tracked {
                scaler: None,
                generation: None,
                scraper: Scraper::new(settings.scrape_timeout),
                last_scale_time: autoscaler
                    .status
                    .as_ref()
                    .and_then(|s| s.last_scale_time.clone()),
                written: None,
                evaluated: None,
            }))
        })
        .clone();
    let mut tracked = slot.lock().await;
    let generation = autoscaler.metadata.generation;
    // A watch event (our own status write, typically) before the Autoscaler is due: keep the
    // schedule rather than evaluate early.
    if let Some((at, evaluated)) = tracked.evaluated
        && evaluated == generation
    {
        let due = at + settings.pause(context.failures(&key));
        let now = Instant::now();
        if now < due {
            return Ok(Action::requeue(due - now));
        }
    }
    let started = Instant::now();
    tracked.evaluated = Some((started, generation));
    let (outcome, failure) = evaluation::evaluate(&context, &autoscaler, &mut tracked).await;
    if let Some(decision) = &outcome.decision {
        context
            .metrics
            .autoscaler_desired_replicas
            .with_label_values(&[&key.0, &key.1])
            .set(i64::from(decision.desired_replicas));
    }
    let written = evaluation::write_status(&context, &autoscaler, &mut tracked, &outcome).await;
    let failure = failure.or(written.err().map(Error::WriteStatus));
    let result = if failure.is_some() {
        RESULT_ERROR
    } else {
        RESULT_SUCCESS
    };
    context
        .metrics
        .reconcile
        .with_label_values(&[KIND, result])
        .inc();
    context
        .metrics
        .reconcile_duration
        .with_label_values(&[KIND])
        .observe(started.elapsed().as_secs_f64());
    if let Some(failure) = failure {
        return Err(failure);
    }
    context.failures.lock().remove(&key);
    Ok(Action::requeue(
        settings.interval.saturating_sub(started.elapsed()),
    ))
}

/// After an API error: count it and come back after a growing pause.
fn error_policy(autoscaler: Arc<Autoscaler>, error: &Error, context: Arc<Context>) -> Action {
    let key = key_of(&autoscaler);
    let failures = {
        let mut failures = context.failures.lock();
        let count = failures.entry(key.clone()).or_default();
        *count = count.saturating_add(1);
        *count
    };
    let pause = context.settings.pause(failures);
    tracing::warn!(namespace = %key.0, name = %key.1, %error, failures, retry_in = ?pause, "Autoscaler evaluation failed");
    Action::requeue(pause)
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

fn spawn_reflector<K>(
    tasks: &mut JoinSet<&'static str>,
    kind: &'static str,
    api: Api<K>,
) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let writer = Writer::default();
    let store = writer.as_reader();
    tasks.spawn(async move {
        let stream = recovering(watcher(api, watcher::Config::default())).reflect(writer);
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Err(error) = event {
                tracing::warn!(kind, %error, "watch failed; retrying with backoff");
            }
        }
        kind
    });
    store
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_back_off_from_twice_the_interval_to_a_minute() {
        let mut settings = Settings::new("test");
        settings.interval = Duration::from_secs(2);
        let pauses: Vec<u64> = (0..8).map(|n| settings.pause(n).as_secs()).collect();
        assert_eq!(pauses, [2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(settings.pause(u32::MAX), MAX_ERROR_PAUSE);
        // An interval above the cap is never shortened by an error.
        settings.interval = Duration::from_secs(120);
        assert_eq!(settings.pause(3), Duration::from_secs(120));
    }
}
