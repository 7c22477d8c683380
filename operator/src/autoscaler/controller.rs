//! The Autoscaler controller: watches Autoscalers, measures their Deployments' pods, runs the
//! [`algorithm`](super::algorithm) and writes the Deployments' `scale` subresource, status and
//! Events. Only the leader does any of this (the same Lease as the status writer); a replica
//! that takes over starts with a fresh history, as the HPA controller does.
//!
//! Every [`Settings::interval`] (2 s), for each Autoscaler:
//! 1. its spec is parsed ([`Scaler`]; a bad spec gives `Accepted=False` naming the field); only
//!    `apps/v1` Deployments are scaled (`Accepted=False`, `UnsupportedTarget`, otherwise);
//! 2. the target's `scale` subresource gives `spec.replicas`, `status.replicas` and the pod
//!    selector (`TargetNotFound` when it is gone);
//! 3. an `autoscaling/v2` HorizontalPodAutoscaler aiming at the same Deployment makes
//!    `AbleToScale=False` with reason `ConflictingHPA`: Weir then leaves the scale alone, so
//!    the two never fight (delete the HPA or the Autoscaler to settle it);
//! 4. the selected pods (a reflector of Pods) are grouped and each running pod's sidecar is
//!    scraped at `POD_IP:15020/metrics` ([`scrape`](super::scrape): in-flight, requests/s from
//!    counter deltas, p99 from histogram deltas), all pods at once, 1 s timeout each — a pod
//!    that does not answer is *missing*, as the HPA treats pods without metrics;
//! 5. with a `Cpu` metric, `metrics.k8s.io/v1beta1` PodMetrics give each pod's CPU over its
//!    window as a percentage of the pod's CPU requests; when that API is not served (no
//!    metrics-server) or a pod has no request, CPU is unknown: `ScalingActive=False`
//!    (`FailedGetMetrics`, naming Cpu) when nothing else is known, and never a scale-down on
//!    the other metrics alone (the HPA's rule); after a failed request the API is asked again
//!    only after a pause, 4 s doubling to 5 minutes ([`super::metrics_api`]);
//! 6. the algorithm decides; a change is written with a merge patch of the scale subresource's
//!    `spec.replicas`, an Event (`SuccessfulRescale` with the driving metric, or
//!    `FailedRescale`) is recorded, and `weir_autoscaler_desired_replicas{namespace,name}` set;
//! 7. status — `observedGeneration`, conditions `Accepted`, `AbleToScale`, `ScalingActive`,
//!    `ScalingLimited` (the HPA's reasons, plus `Panic`), `currentReplicas`,
//!    `desiredReplicas`, `currentMetrics`, `lastScaleTime` — is written by server-side apply
//!    when anything but the metric values changed, and at least every
//!    [`Settings::status_interval`] (15 s) for the values.
//!
//! The evaluation runs every 2 s in panic mode and out of it alike: the algorithm's windows
//! decide how fast it acts, and the scale-down hold keeps it to one scale-down per 15 s.
//!
//! RBAC: `weir.dev` `autoscalers` get/list/watch and `autoscalers/status` patch; `apps`
//! `deployments/scale` get/patch; core `pods` list/watch; `autoscaling`
//! `horizontalpodautoscalers` list/watch; `metrics.k8s.io` `pods` list (optional);
//! `events.k8s.io` `events` create/patch. Sidecars must listen for admin on the pod IP
//! (`weir-sidecar --admin 0.0.0.0:15020`), and network policies must let the operator reach it.

use super::Scaler;
use super::algorithm::{Observation, Pod as AlgorithmPod, PodPhase, Sample, Verdict};
use super::scrape::{ADMIN_PORT, Scraper};
use super::status::{Outcome, now_time, truncate};
use crate::metrics::Metrics;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{Store, store::Writer};
use kube::runtime::watcher::{self, watcher};
use kube::{Client, Resource, ResourceExt};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinSet;
use weir_crds::{Autoscaler, AutoscalerStatus, MetricType};

/// The field manager of status writes and scale patches.
pub const FIELD_MANAGER: &str = "weir-operator";

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
    /// How long one sidecar scrape may take.
    pub scrape_timeout: Duration,
    /// Status is rewritten at least this often while only metric values change.
    pub status_interval: Duration,
}

impl Settings {
    /// Every namespace, every 2 s, port 15020, 1 s scrapes, status values every 15 s.
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            namespace: None,
            identity: identity.into(),
            interval: Duration::from_secs(2),
            admin_port: ADMIN_PORT,
            scrape_timeout: Duration::from_secs(1),
            status_interval: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A reflector task stopped (it only does when it panicked).
    #[error("the {0} watch stopped")]
    WatchStopped(&'static str),
}

/// The reflector stores the controller reads.
#[derive(Clone)]
struct Stores {
    autoscalers: Store<Autoscaler>,
    pods: Store<Pod>,
    hpas: Store<HorizontalPodAutoscaler>,
    /// Whether `metrics.k8s.io` is worth asking now (shared by every Autoscaler).
    metrics_api: Arc<parking_lot::Mutex<super::metrics_api::MetricsApi>>,
}

/// One Autoscaler's memory between evaluations.
#[derive(Debug)]
struct Tracked {
    scaler: Option<Scaler>,
    generation: Option<i64>,
    scraper: Scraper,
    last_scale_time: Option<Time>,
    /// The status last written (or read back) and when.
    written: Option<(AutoscalerStatus, tokio::time::Instant)>,
}

/// Runs until `shutdown`; acts only while `leader` holds true.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    mut leader: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let mut reflectors = JoinSet::new();
    let stores = Stores {
        autoscalers: spawn(
            &mut reflectors,
            "Autoscaler",
            api(&client, settings.namespace.as_deref()),
        ),
        pods: spawn(
            &mut reflectors,
            "Pod",
            api(&client, settings.namespace.as_deref()),
        ),
        hpas: spawn(
            &mut reflectors,
            "HorizontalPodAutoscaler",
            api(&client, settings.namespace.as_deref()),
        ),
        metrics_api: Default::default(),
    };
    // Evaluating before the HPA list is in could fight an HPA we have not seen yet.
    let ready = async {
        stores
            .autoscalers
            .wait_until_ready()
            .await
            .map_err(|_| "Autoscaler")?;
        stores.pods.wait_until_ready().await.map_err(|_| "Pod")?;
        stores
            .hpas
            .wait_until_ready()
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
    let mut tracked: HashMap<(String, String), Tracked> = HashMap::new();
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => break,
            Some(ended) = reflectors.join_next() => return Err(Error::WatchStopped(ended.unwrap_or("reflector"))),
            _ = ticker.tick() => {}
        }
        if !*leader.borrow_and_update() {
            // A later takeover starts afresh, as the HPA controller does.
            tracked.clear();
            continue;
        }
        let autoscalers = stores.autoscalers.state();
        let present: Vec<(String, String)> = autoscalers
            .iter()
            .map(|a| (a.namespace().unwrap_or_default(), a.name_any()))
            .collect();
        tracked.retain(|key, _| {
            let keep = present.contains(key);
            if !keep {
                let _ = metrics
                    .autoscaler_desired_replicas
                    .remove_label_values(&[&key.0, &key.1]);
            }
            keep
        });
        for autoscaler in autoscalers {
            let key = (
                autoscaler.namespace().unwrap_or_default(),
                autoscaler.name_any(),
            );
            let entry = tracked.entry(key).or_insert_with(|| Tracked {
                scaler: None,
                generation: None,
                scraper: Scraper::new(settings.scrape_timeout),
                last_scale_time: autoscaler
                    .status
                    .as_ref()
                    .and_then(|s| s.last_scale_time.clone()),
                written: None,
            });
            let reconcile = reconcile(
                &client,
                &settings,
                &stores,
                &recorder,
                &metrics,
                &autoscaler,
                entry,
            );
            tokio::select! {
                _ = reconcile => {}
                _ = stopped(&mut shutdown) => break,
            }
        }
    }
    reflectors.shutdown().await;
    Ok(())
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
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

fn spawn<K>(tasks: &mut JoinSet<&'static str>, kind: &'static str, api: Api<K>) -> Store<K>
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
        let stream =
            crate::kubernetes::recovery::recovering(watcher(api, watcher::Config::default()))
                .reflect(writer);
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

/// Now, as time since the Unix epoch (the algorithm's clock).
fn clock() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

fn since_epoch(time: &Time) -> Duration {
    Duration::from_millis(time.0.as_millisecond().max(0) as u64)
}

#[allow(clippy::too_many_arguments)]
async fn reconcile(
    client: &Client,
    settings: &Settings,
    stores: &Stores,
    recorder: &Recorder,
    metrics: &Metrics,
    autoscaler: &Arc<Autoscaler>,
    tracked: &mut Tracked,
) {
    let namespace = autoscaler.namespace().unwrap_or_default();
    let name = autoscaler.name_any();
    let outcome = evaluate(client, settings, stores, recorder, autoscaler, tracked).await;
    if let Some(decision) = &outcome.decision {
        metrics
            .autoscaler_desired_replicas
            .with_label_values(&[&namespace, &name])
            .set(i64::from(decision.desired_replicas));
    }
    if let Err(error) = write_status(client, settings, autoscaler, tracked, &outcome).await {
        tracing::warn!(%namespace, %name, %error, "Autoscaler status write failed; will retry");
    }
}

async fn evaluate(
    client: &Client,
    settings: &Settings,
    stores: &Stores,
    recorder: &Recorder,
    autoscaler: &Arc<Autoscaler>,
    tracked: &mut Tracked,
) -> Outcome {
    let namespace = autoscaler.namespace().unwrap_or_default();
    let name = autoscaler.name_any();
    let refused = Outcome::refused;
    // 1. The spec.
    let generation = autoscaler.metadata.generation;
    if tracked.scaler.is_none() || tracked.generation != generation {
        let parsed = match tracked.scaler.as_mut() {
            Some(scaler) => scaler.update(&autoscaler.spec),
            None => Scaler::new(&autoscaler.spec).map(|s| tracked.scaler = Some(s)),
        };
        if let Err(error) = parsed {
            tracked.scaler = None;
            return refused("Invalid", error.to_string());
        }
        tracked.generation = generation;
    }
    let target = &autoscaler.spec.target_ref;
    if target.kind != "Deployment" || target.api_version != "apps/v1" {
        return refused(
            "UnsupportedTarget",
            format!(
                "only apps/v1 Deployments are scaled, not {} {}",
                target.api_version, target.kind
            ),
        );
    }
    // 2. The scale subresource.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let scale: Scale = match deployments.get_scale(&target.name).await {
        Ok(scale) => scale,
        Err(kube::Error::Api(status)) if status.code == 404 => {
            return refused(
                "TargetNotFound",
                format!("Deployment {namespace}/{} does not exist", target.name),
            );
        }
        Err(error) => {
            let mut outcome = Outcome::accepted();
            outcome.able_to_scale = Some(Verdict {
                status: false,
                reason: "FailedGetScale",
                message: format!("reading the scale of Deployment {}: {error}", target.name),
            });
            return outcome;
        }
    };
    let spec_replicas = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let status_replicas = scale.status.as_ref().map(|s| s.replicas);
    let selector = scale
        .status
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();

    // 3. Another HPA on the same target.
    let conflicting = stores.hpas.state().into_iter().find(|hpa| {
        hpa.namespace().as_deref() == Some(namespace.as_str())
            && hpa.spec.as_ref().is_some_and(|spec| {
                spec.scale_target_ref.kind == "Deployment"
                    && spec.scale_target_ref.name == target.name
            })
    });
    if let Some(hpa) = conflicting {
        let mut outcome = Outcome::accepted();
        outcome.current_replicas = status_replicas;
        outcome.able_to_scale = Some(Verdict {
            status: false,
            reason: "ConflictingHPA",
            message: format!(
                "HorizontalPodAutoscaler {} also scales Deployment {}: Weir leaves the scale alone while it exists",
                hpa.name_any(),
                target.name
            ),
        });
        return outcome;
    }

    // 4. Pods and their sidecars.
    let Some(scaler) = tracked.scaler.as_mut() else {
        return refused("Invalid", "no spec".to_owned());
    };
    let now = clock();
    let pods: Vec<Arc<Pod>> = stores
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|p| selects(&selector, p.labels()))
        .collect();
    let wanted: Vec<MetricType> = scaler.sidecar_metrics();
    let mut samples: Vec<Sample> = Vec::new();
    if !wanted.is_empty() {
        let scraper = &tracked.scraper;
        let fetches = pods.iter().filter_map(|pod| {
            let ip: IpAddr = pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
            if phase(pod) != PodPhase::Running {
                return None;
            }
            let addr = SocketAddr::new(ip, settings.admin_port);
            let name = pod.name_any();
            Some(async move { (name, scraper.fetch(addr).await) })
        });
        let texts = futures::future::join_all(fetches).await;
        for (pod, text) in texts {
            match text {
                Ok(text) => samples.extend(tracked.scraper.samples(&pod, now, &text, &wanted)),
                Err(error) => tracing::debug!(%namespace, pod, %error, "sidecar scrape failed"),
            }
        }
        tracked
            .scraper
            .retain(|pod| pods.iter().any(|p| p.name_any() == pod));
    }
    // 5. CPU from metrics.k8s.io.
    // Not while it is known absent: CPU stays unknown, as when the request fails.
    if scaler.spec.target(MetricType::Cpu).is_some()
        && stores
            .metrics_api
            .lock()
            .may_ask(tokio::time::Instant::now())
    {
        match cpu_samples(client, &namespace, &selector, &pods).await {
            Ok(cpu) => {
                stores.metrics_api.lock().answered();
                samples.extend(cpu);
            }
            Err(error) => {
                stores
                    .metrics_api
                    .lock()
                    .failed(tokio::time::Instant::now());
                tracing::debug!(%namespace, %name, %error, "no CPU metrics (metrics.k8s.io); asking again later")
            }
        }
    }

    // 6. Decide and act.
    let observation = Observation {
        now,
        spec_replicas,
        pods: pods.iter().map(|p| algorithm_pod(p)).collect(),
        samples,
    };
    let decision = scaler.evaluate(&observation);
    let mut outcome = Outcome::accepted();
    outcome.current_replicas = status_replicas;
    if decision.rescale() {
        let patch = serde_json::json!({"spec": {"replicas": decision.desired_replicas}});
        // Named, not left to the API server's guess from the User-Agent.
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let reference = autoscaler.object_ref(&());
        match deployments
            .patch_scale(&target.name, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                scaler.record_scale(now, spec_replicas, decision.desired_replicas);
                tracked.last_scale_time = Some(now_time());
                tracing::info!(%namespace, %name, deployment = %target.name, "{}", decision.summary());
                let event = Event {
                    type_: EventType::Normal,
                    reason: "SuccessfulRescale".to_owned(),
                    note: Some(truncate(
                        &format!(
                            "New size: {}; {}",
                            decision.desired_replicas,
                            decision.summary()
                        ),
                        1000,
                    )),
                    action: "Scale".to_owned(),
                    secondary: None,
                };
                // Each scale is an Event of its own. kube-runtime's Recorder keys a series on
                // type, reason, action, reporter and object — not on the note — so through the
                // long-lived recorder a second scale would only bump the first Event's count and
                // `kubectl describe` would show "New size: 3 (x6)" for 2→3→4→6→8→4→2. A fresh
                // recorder has no series to extend. (Repeated FailedRescale warnings do fold
                // into one series, through the long-lived one: that is what a series is for.)
                let once = Recorder::new(
                    client.clone(),
                    Reporter {
                        controller: FIELD_MANAGER.to_owned(),
                        instance: Some(settings.identity.clone()),
                    },
                );
                if let Err(error) = once.publish(&event, &reference).await {
                    tracing::warn!(%namespace, %name, %error, "publishing an Event failed");
                }
            }
            Err(error) => {
                tracing::warn!(%namespace, %name, %error, "writing the scale failed");
                outcome.able_to_scale = Some(Verdict {
                    status: false,
                    reason: "FailedUpdateScale",
                    message: format!("writing the scale of Deployment {}: {error}", target.name),
                });
                let event = Event {
                    type_: EventType::Warning,
                    reason: "FailedRescale".to_owned(),
                    note: Some(truncate(
                        &format!("New size: {}; {error}", decision.desired_replicas),
                        1000,
                    )),
                    action: "Scale".to_owned(),
                    secondary: None,
                };
                let _ = recorder.publish(&event, &reference).await;
            }
        }
    }
    outcome.decision = Some(decision);
    outcome
}

fn phase(pod: &Pod) -> PodPhase {
    if pod.metadata.deletion_timestamp.is_some() {
        return PodPhase::Terminating;
    }
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Running") => PodPhase::Running,
        Some("Failed" | "Succeeded") => PodPhase::Finished,
        _ => PodPhase::Pending,
    }
}

/// A Kubernetes Pod as the algorithm sees it.
fn algorithm_pod(pod: &Pod) -> AlgorithmPod {
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    AlgorithmPod {
        name: pod.name_any(),
        phase: phase(pod),
        ready: ready.is_some_and(|c| c.status == "True"),
        started_at: status.and_then(|s| s.start_time.as_ref()).map(since_epoch),
        ready_changed_at: ready.map(|c| {
            c.last_transition_time
                .as_ref()
                .map(since_epoch)
                .unwrap_or_default()
        }),
    }
}

/// Whether `labels` match a label selector in its string form (`a=b,c!=d,e,!f,g in (x,y),h
/// notin (z)`), as the scale subresource gives it.
pub fn selects(selector: &str, labels: &BTreeMap<String, String>) -> bool {
    let mut terms = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    terms
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            let set = |rest: &str| -> Vec<String> {
                rest.trim()
                    .trim_start_matches('(')
                    .trim_end_matches(')')
                    .split(',')
                    .map(|v| v.trim().to_owned())
                    .collect()
            };
            if let Some((key, rest)) = term.split_once(" notin ") {
                !labels
                    .get(key.trim())
                    .is_some_and(|v| set(rest).contains(v))
            } else if let Some((key, rest)) = term.split_once(" in ") {
                labels
                    .get(key.trim())
                    .is_some_and(|v| set(rest).contains(v))
            } else if let Some((key, value)) = term.split_once("!=") {
                labels.get(key.trim()).map(String::as_str) != Some(value.trim())
            } else if let Some((key, value)) = term.split_once('=') {
                let value = value.trim_start_matches('=').trim();
                labels.get(key.trim()).map(String::as_str) == Some(value)
            } else if let Some(key) = term.strip_prefix('!') {
                !labels.contains_key(key.trim())
            } else {
                labels.contains_key(term)
            }
        })
}

/// A CPU quantity (`250m`, `1`, `1500000n`, `20u`) in millicores.
pub fn cpu_millis(quantity: &str) -> Option<f64> {
    let q = quantity.trim();
    let (number, factor) = if let Some(n) = q.strip_suffix('n') {
        (n, 1e-6)
    } else if let Some(n) = q.strip_suffix('u') {
        (n, 1e-3)
    } else if let Some(n) = q.strip_suffix('m') {
        (n, 1.0)
    } else {
        (q, 1000.0)
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

/// Per-pod CPU as a percentage of the pod's requests, from `metrics.k8s.io/v1beta1`.
async fn cpu_samples(
    client: &Client,
    namespace: &str,
    selector: &str,
    pods: &[Arc<Pod>],
) -> anyhow::Result<Vec<Sample>> {
    let mut url = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods");
    if !selector.is_empty() {
        url.push_str("?labelSelector=");
        url.push_str(&percent_encode(selector));
    }
    let request = http::Request::get(url).body(Vec::new())?;
    let list: serde_json::Value = client.request(request).await?;
    let mut out = Vec::new();
    for item in list["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let Some(name) = item["metadata"]["name"].as_str() else {
            continue;
        };
        let Some(pod) = pods.iter().find(|p| p.name_any() == name) else {
            continue;
        };
        let requested: Option<f64> = pod.spec.as_ref().and_then(|spec| {
            spec.containers
                .iter()
                .map(|c| {
                    c.resources
                        .as_ref()
                        .and_then(|r| r.requests.as_ref())
                        .and_then(|r| r.get("cpu"))
                        .and_then(|q| cpu_millis(&q.0))
                })
                .sum::<Option<f64>>()
        });
        let Some(requested) = requested.filter(|r| *r > 0.0) else {
            continue; // without requests there is no utilization, as for the HPA
        };
        let used: f64 = item["containers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|c| c["usage"]["cpu"].as_str().and_then(cpu_millis))
            .sum();
        let at = item["timestamp"]
            .as_str()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .map(|t| since_epoch(&Time(t)))
            .unwrap_or_else(clock);
        let window = item["window"]
            .as_str()
            .and_then(|w| w.parse::<weir_proxy_api::Duration>().ok())
            .map(|d| d.get())
            .unwrap_or_default();
        out.push(Sample {
            pod: name.to_owned(),
            metric: MetricType::Cpu,
            at,
            window,
            value: used / requested * 100.0,
        });
    }
    Ok(out)
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// Writes status by server-side apply when it changed (metric values alone: at most every
/// `status_interval`).
async fn write_status(
    client: &Client,
    settings: &Settings,
    autoscaler: &Autoscaler,
    tracked: &mut Tracked,
    outcome: &Outcome,
) -> Result<(), kube::Error> {
    let current = tracked
        .written
        .as_ref()
        .map(|(s, _)| s.clone())
        .or_else(|| autoscaler.status.clone());
    let desired = super::status::status(
        autoscaler.metadata.generation,
        outcome,
        tracked.last_scale_time.clone(),
        current.as_ref(),
        &now_time(),
    );
    if let Some(current) = &current {
        let same_but_values = AutoscalerStatus {
            current_metrics: desired.current_metrics.clone(),
            ..current.clone()
        } == desired;
        let fresh = tracked
            .written
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < settings.status_interval);
        if *current == desired || (same_but_values && fresh) {
            return Ok(());
        }
    }
    let api: Api<Autoscaler> =
        Api::namespaced(client.clone(), &autoscaler.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": Autoscaler::api_version(&()),
        "kind": Autoscaler::kind(&()),
        "status": desired,
    });
    api.patch_status(
        &autoscaler.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    tracked.written = Some((desired, tokio::time::Instant::now()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_in_string_form() {
        let labels: BTreeMap<String, String> = [("app", "orders"), ("tier", "web")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        for (selector, expected) in [
            ("", true),
            ("app=orders", true),
            ("app==orders,tier=web", true),
            ("app=payments", false),
            ("app!=payments", true),
            ("tier", true),
            ("!tier", false),
            ("app in (orders,payments),tier notin (db)", true),
            ("app notin (orders)", false),
            ("zone in (a,b)", false),
        ] {
            assert_eq!(selects(selector, &labels), expected, "{selector}");
        }
    }

    #[test]
    fn cpu_quantities() {
        assert_eq!(cpu_millis("250m"), Some(250.0));
        assert_eq!(cpu_millis("2"), Some(2000.0));
        assert_eq!(cpu_millis("0.5"), Some(500.0));
        assert_eq!(cpu_millis("1500000n"), Some(1.5));
        assert_eq!(cpu_millis("20u"), Some(0.02));
        assert_eq!(cpu_millis("lots"), None);
    }
}
