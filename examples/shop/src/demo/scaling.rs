//! Orders scales in local mode: the launcher plays the part the Deployment controller and the
//! endpoints controller play in a cluster.
//!
//! The control plane (`weir-operator local`) evaluates the Autoscaler of `mesh/autoscaler.yaml`
//! against the orders instances it reads from the LocalService — scraping each instance's
//! sidecar admin `/metrics` at the endpoint's `admin` address — and serves the result at
//! `GET /autoscalers` of its admin listener (and as `weir_autoscaler_desired_replicas`). Every
//! second [`OrdersScaler::tick`] reads that and makes it so:
//!
//! - **Up**: it starts orders instances (an app and its sidecar, on the fixed addresses of
//!   [`topology::ORDERS_REPLICAS`]) and adds each to the orders LocalService only once its app
//!   answers `/health` and its sidecar `/ready` — callers never see an instance that is not
//!   serving, as a Service's endpoints hold only Ready pods.
//! - **Down**: it removes the highest-numbered instances from the LocalService first, waits
//!   [`DRAIN_DELAY`] for the control plane to push the smaller endpoint list to every caller,
//!   then stops them with SIGTERM (the sidecar drains what is in flight; SIGKILL after
//!   [`STOP_GRACE`]). Replica 1 always stays.
//!
//! All orders instances share one database (`orders.db` in the run's data folder), as the
//! replicas of one Deployment share one database: an order placed through one instance is seen
//! by all, and a saga left unfinished by a stopped instance is resumed by the others' sweepers.
//!
//! The LocalService lives in the run's own mesh folder (`DATA/mesh`), which
//! [`super::mesh_folder`] prepares and rewrites.

use super::launch::{self, Layout, Probe};
use super::mesh_folder::write_orders_file;
use super::procs::Children;
use super::topology::{self, Instance, MAX_ORDERS_REPLICAS, ORDERS, orders_replica};
use super::web::{self, Client};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;
use weir_proxy_api::FileStamp;

/// How long a removed instance keeps running so that callers learn of its removal first.
pub(super) const DRAIN_DELAY: Duration = Duration::from_secs(2);
/// How long a new instance gets to become ready before it is given up.
const START_LIMIT: Duration = Duration::from_secs(30);
/// How long a stopped instance gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// What the control plane says of the orders Autoscaler.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerView {
    pub name: String,
    pub desired_replicas: Option<i32>,
    pub current_replicas: Option<i32>,
    /// Per-instance values by metric type, as the control plane formats them.
    pub metrics: BTreeMap<String, String>,
    /// Conditions worth showing: `ScalingLimited: ScaleUpLimit`, `ScalingActive: Panic` …
    pub conditions: Vec<String>,
}

/// Finds the Autoscaler of `service` in namespace `namespace` in a `GET /autoscalers` answer.
pub fn autoscaler_view(
    body: &serde_json::Value,
    namespace: &str,
    service: &str,
) -> Option<AutoscalerView> {
    let entry = body.get("autoscalers")?.as_array()?.iter().find(|a| {
        a.get("namespace").and_then(|n| n.as_str()) == Some(namespace)
            && a.get("target").and_then(|t| t.as_str()) == Some(service)
    })?;
    let int = |key: &str| {
        entry
            .get(key)
            .and_then(serde_json::Value::as_i64)
            .and_then(|v| i32::try_from(v).ok())
    };
    let text = |v: &serde_json::Value, key: &str| {
        v.get(key)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let list = |key: &str| {
        entry
            .get(key)
            .and_then(|m| m.as_array())
            .cloned()
            .unwrap_or_default()
    };
    let metrics = list("currentMetrics")
        .iter()
        .map(|m| (text(m, "type"), text(m, "current")))
        .filter(|(kind, _)| !kind.is_empty())
        .collect();
    let conditions = list("conditions")
        .iter()
        .filter(|c| {
            let (kind, status) = (text(c, "type"), text(c, "status"));
            // What is unusual: a limit in force, panic, or something not working.
            (kind == "ScalingLimited" && status == "True")
                || text(c, "reason") == "Panic"
                || (kind != "ScalingLimited" && status == "False")
        })
        .map(|c| format!("{}: {}", text(c, "type"), text(c, "reason")))
        .collect();
    Some(AutoscalerView {
        name: text(entry, "name"),
        desired_replicas: int("desiredReplicas"),
        current_replicas: int("currentReplicas"),
        metrics,
        conditions,
    })
}

/// Where an orders instance stands.
#[derive(Debug)]
enum Phase {
    /// Started, not in the LocalService until both probes answer.
    Starting { since: Instant, probes: [Probe; 2] },
    /// In the LocalService.
    Serving,
    /// Out of the LocalService, still running while callers learn of it.
    Draining { since: Instant },
    /// SIGTERM sent; its addresses are free once both processes exited.
    Stopping,
}

/// A change of the orders instances.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScaleEvent {
    pub at_seconds: f64,
    /// `start`, `ready`, `drain`, `stop`, `gave-up`.
    pub action: &'static str,
    /// `orders #2` …
    pub instance: String,
    /// The desired replicas that led to it.
    pub desired: Option<i32>,
}

/// The orders instances at one second of the run.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScalePoint {
    pub at_seconds: f64,
    pub desired: Option<i32>,
    pub serving: usize,
    pub starting: usize,
}

/// What the report says of orders' scaling.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScalingFigures {
    /// Whether an Autoscaler targets orders in the run's mesh.
    pub autoscaled: bool,
    pub max_serving: usize,
    pub final_serving: usize,
    pub events: Vec<ScaleEvent>,
    pub timeline: Vec<ScalePoint>,
    /// The control plane's view at the end.
    pub autoscaler: Option<AutoscalerView>,
}

/// Starts and stops orders instances to match the Autoscaler; see the module docs.
#[derive(Debug)]
pub(super) struct OrdersScaler {
    /// Source and run paths of the mesh file with the orders LocalService.
    file: Option<(PathBuf, PathBuf)>,
    /// The source file's stamp when last written from: an edit of it is written through.
    source_stamp: Option<FileStamp>,
    replicas: BTreeMap<usize, Phase>,
    /// The last answer of the control plane about orders' Autoscaler.
    pub(super) view: Option<AutoscalerView>,
    pub(super) events: Vec<ScaleEvent>,
    pub(super) timeline: Vec<ScalePoint>,
    capped_noted: bool,
}

impl OrdersScaler {
    /// `file`: what [`super::mesh_folder::prepare_mesh`] returned; replica 1 is running and serving.
    pub(super) fn new(file: Option<(PathBuf, PathBuf)>) -> Self {
        let source_stamp = file.as_ref().and_then(|(source, _)| stamp(source));
        Self {
            file,
            source_stamp,
            replicas: BTreeMap::from([(1, Phase::Serving)]),
            view: None,
            events: Vec::new(),
            timeline: Vec::new(),
            capped_noted: false,
        }
    }

    /// The extra orders instances whose sidecars are worth scraping (started and not stopped).
    pub(super) fn running_extra(&self) -> Vec<Instance> {
        self.replicas
            .iter()
            .filter(|(n, p)| **n > 1 && !matches!(p, Phase::Stopping))
            .filter_map(|(n, _)| orders_replica(*n))
            .collect()
    }

    /// The instances in the LocalService now.
    fn serving(&self) -> Vec<Instance> {
        self.replicas
            .iter()
            .filter(|(_, p)| matches!(p, Phase::Serving))
            .filter_map(|(n, _)| orders_replica(*n))
            .collect()
    }

    fn count(&self, starting: bool) -> usize {
        self.replicas
            .values()
            .filter(|p| match p {
                Phase::Starting { .. } => starting,
                Phase::Serving => !starting,
                _ => false,
            })
            .count()
    }

    fn event(&mut self, at: Duration, action: &'static str, n: usize) {
        let instance = orders_replica(n).map_or_else(|| format!("orders #{n}"), |i| i.label());
        self.events.push(ScaleEvent {
            at_seconds: at.as_secs_f64(),
            action,
            instance,
            desired: self.view.as_ref().and_then(|v| v.desired_replicas),
        });
    }

    /// Rewrites the run's orders LocalService from the source and the serving instances.
    fn publish(&mut self, notes: &mut Vec<String>) {
        let Some((source, run)) = &self.file else {
            return;
        };
        if let Err(e) = write_orders_file(source, run, &self.serving()) {
            let note = format!("updating the orders endpoints failed: {e:#}");
            if !notes.contains(&note) {
                notes.push(note);
            }
        }
        self.source_stamp = stamp(source);
    }

    /// One round: read the Autoscaler, start or drain instances, move the others along.
    pub(super) async fn tick(
        &mut self,
        at: Duration,
        client: &Client,
        layout: &Layout,
        children: &mut Children,
        notes: &mut Vec<String>,
    ) {
        let Some((source, _)) = &self.file else {
            return;
        };
        if stamp(source) != self.source_stamp {
            self.publish(notes);
        }
        let admin = topology::control_plane_admin();
        if let Ok(answer) = tokio::time::timeout(
            Duration::from_millis(500),
            web::get(client, admin, "/autoscalers"),
        )
        .await
            && let Ok(answer) = answer
            && answer.status == 200
        {
            self.view = answer
                .json()
                .and_then(|body| autoscaler_view(&body, topology::NAMESPACE, ORDERS.service));
        }
        let desired = self.view.as_ref().and_then(|v| v.desired_replicas);
        if let Some(desired) = desired {
            let wanted = usize::try_from(desired.max(1))
                .unwrap_or(1)
                .min(MAX_ORDERS_REPLICAS);
            if usize::try_from(desired).is_ok_and(|d| d > MAX_ORDERS_REPLICAS) && !self.capped_noted
            {
                self.capped_noted = true;
                notes.push(format!(
                    "the orders Autoscaler wants {desired} instances; the demo runs at most {MAX_ORDERS_REPLICAS}"
                ));
            }
            self.scale_to(wanted, at, layout, children, notes);
        }
        self.advance(at, client, children, notes).await;
        children.reap_retired(STOP_GRACE);
        self.timeline.push(ScalePoint {
            at_seconds: at.as_secs_f64(),
            desired,
            serving: self.count(false),
            starting: self.count(true),
        });
    }

    fn scale_to(
        &mut self,
        wanted: usize,
        at: Duration,
        layout: &Layout,
        children: &mut Children,
        notes: &mut Vec<String>,
    ) {
        let active = self.count(false) + self.count(true);
        if wanted > active {
            for _ in active..wanted {
                // The lowest number whose addresses are free (a stopping one still holds them).
                let Some(n) = (2..=MAX_ORDERS_REPLICAS).find(|n| !self.replicas.contains_key(n))
                else {
                    break;
                };
                let instance = orders_replica(n).expect("numbers within the limit exist");
                match launch::spawn_instance(layout, &instance, children) {
                    Ok(probes) => {
                        self.replicas.insert(
                            n,
                            Phase::Starting {
                                since: Instant::now(),
                                probes,
                            },
                        );
                        self.event(at, "start", n);
                    }
                    Err(e) => {
                        notes.push(format!("starting {} failed: {e:#}", instance.label()));
                        break;
                    }
                }
            }
        } else if wanted < active {
            let mut surplus = active - wanted;
            // Instances not serving yet go first, then the newest serving ones; never replica 1.
            let mut order: Vec<usize> = self
                .replicas
                .iter()
                .filter(|(n, p)| **n > 1 && matches!(p, Phase::Starting { .. }))
                .map(|(n, _)| *n)
                .rev()
                .collect();
            order.extend(
                self.replicas
                    .iter()
                    .filter(|(n, p)| **n > 1 && matches!(p, Phase::Serving))
                    .map(|(n, _)| *n)
                    .rev(),
            );
            let mut drained = false;
            for n in order {
                if surplus == 0 {
                    break;
                }
                surplus -= 1;
                if matches!(self.replicas.get(&n), Some(Phase::Serving)) {
                    self.replicas.insert(
                        n,
                        Phase::Draining {
                            since: Instant::now(),
                        },
                    );
                    self.event(at, "drain", n);
                    drained = true;
                } else {
                    self.stop(n, at, children);
                }
            }
            if drained {
                self.publish(notes);
            }
        }
    }

    fn stop(&mut self, n: usize, at: Duration, children: &mut Children) {
        if let Some(instance) = orders_replica(n) {
            let label = instance.label();
            children.retire(&format!("{label} sidecar"));
            children.retire(&format!("{label} app"));
        }
        self.replicas.insert(n, Phase::Stopping);
        self.event(at, "stop", n);
    }

    async fn advance(
        &mut self,
        at: Duration,
        client: &Client,
        children: &mut Children,
        notes: &mut Vec<String>,
    ) {
        let numbers: Vec<usize> = self.replicas.keys().copied().collect();
        let mut changed = false;
        for n in numbers {
            match self.replicas.get(&n) {
                Some(Phase::Starting { since, probes }) => {
                    let since = *since;
                    let mut ready = true;
                    for probe in probes {
                        ready &= probe.answers(client, Duration::from_millis(300)).await;
                    }
                    if ready {
                        self.replicas.insert(n, Phase::Serving);
                        self.event(at, "ready", n);
                        changed = true;
                    } else if since.elapsed() > START_LIMIT {
                        notes.push(format!(
                            "orders #{n} was not ready within {} s and was stopped",
                            START_LIMIT.as_secs()
                        ));
                        self.event(at, "gave-up", n);
                        self.stop(n, at, children);
                    }
                }
                Some(Phase::Draining { since }) if since.elapsed() >= DRAIN_DELAY => {
                    self.stop(n, at, children);
                }
                Some(Phase::Stopping) => {
                    let label = orders_replica(n).map(|i| i.label()).unwrap_or_default();
                    if children.has_exited(&format!("{label} sidecar"))
                        && children.has_exited(&format!("{label} app"))
                    {
                        self.replicas.remove(&n);
                    }
                }
                _ => {}
            }
        }
        if changed {
            self.publish(notes);
        }
    }

    /// What the dashboard shows of it.
    pub(super) fn dashboard(&self) -> Scaling<'_> {
        Scaling {
            serving: self.count(false),
            starting: self.count(true),
            draining: self
                .replicas
                .values()
                .filter(|p| matches!(p, Phase::Draining { .. } | Phase::Stopping))
                .count(),
            autoscaler: self.view.as_ref(),
        }
    }

    /// The figures of the run for the report.
    pub(super) fn figures(&self) -> ScalingFigures {
        ScalingFigures {
            autoscaled: self.view.is_some(),
            max_serving: self.timeline.iter().map(|p| p.serving).max().unwrap_or(1),
            final_serving: self.count(false),
            events: self.events.clone(),
            timeline: self.timeline.clone(),
            autoscaler: self.view.clone(),
        }
    }
}

/// The stamp the mesh's own file pollers use: an editor's save is seen even within one
/// modification-time tick.
fn stamp(path: &Path) -> Option<FileStamp> {
    std::fs::metadata(path)
        .ok()
        .map(|meta| FileStamp::of(&meta))
}

/// The orders instances and what the Autoscaler wants of them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scaling<'a> {
    pub serving: usize,
    pub starting: usize,
    pub draining: usize,
    pub autoscaler: Option<&'a AutoscalerView>,
}

impl Scaling<'_> {
    /// `3 serving, 1 starting; autoscaler orders wants 4 (RequestsPerSecond 31.2 per instance)`.
    pub fn summary(&self) -> String {
        let mut out = format!("{} serving", self.serving);
        if self.starting > 0 {
            out.push_str(&format!(", {} starting", self.starting));
        }
        if self.draining > 0 {
            out.push_str(&format!(", {} stopping", self.draining));
        }
        match self.autoscaler {
            None => out.push_str(" (no Autoscaler for orders)"),
            Some(a) => {
                let wants = a
                    .desired_replicas
                    .map_or_else(|| "-".to_owned(), |d| d.to_string());
                out.push_str(&format!("; autoscaler {} wants {wants}", a.name));
                if !a.metrics.is_empty() {
                    let metrics: Vec<String> =
                        a.metrics.iter().map(|(k, v)| format!("{k} {v}")).collect();
                    out.push_str(&format!(" ({} per instance)", metrics.join(", ")));
                }
                for c in &a.conditions {
                    out.push_str(&format!("; {c}"));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_autoscaler_is_read_from_the_control_plane_answer() {
        let body = serde_json::json!({"autoscalers": [
            {"namespace": "other", "name": "x", "target": "orders", "desiredReplicas": 9},
            {"namespace": "shop", "name": "orders", "target": "orders",
             "currentReplicas": 1, "desiredReplicas": 3,
             "currentMetrics": [{"type": "RequestsPerSecond", "current": "31.5"}],
             "conditions": [
                {"type": "AbleToScale", "status": "True", "reason": "SucceededRescale"},
                {"type": "ScalingActive", "status": "True", "reason": "Panic"},
                {"type": "ScalingLimited", "status": "True", "reason": "TooManyReplicas"},
                {"type": "ScalingLimited", "status": "False", "reason": "DesiredWithinRange"}]}
        ]});
        let view = autoscaler_view(&body, "shop", "orders").unwrap();
        assert_eq!(view.desired_replicas, Some(3));
        assert_eq!(view.current_replicas, Some(1));
        assert_eq!(view.metrics["RequestsPerSecond"], "31.5");
        assert_eq!(
            view.conditions,
            ["ScalingActive: Panic", "ScalingLimited: TooManyReplicas"]
        );
        assert_eq!(autoscaler_view(&body, "shop", "payments"), None);
        assert_eq!(
            autoscaler_view(&serde_json::json!({}), "shop", "orders"),
            None
        );
    }

    /// An editor saves the orders file of the source mesh as a new file renamed over the old
    /// one, of the same length and within the same modification-time tick: the scaler still
    /// sees an edit to write through. A look at the file is none.
    #[test]
    fn an_editors_save_of_the_source_is_an_edit() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("orders.yaml");
        std::fs::write(&source, "replicas: 1\n").unwrap();
        let before = stamp(&source);
        assert!(before.is_some());
        assert_eq!(stamp(&source), before, "looking is not editing");
        let saved = dir.path().join(".orders.yaml.swp");
        std::fs::write(&saved, "replicas: 2\n").unwrap();
        std::fs::rename(&saved, &source).unwrap();
        assert_ne!(stamp(&source), before);
        std::fs::remove_file(&source).unwrap();
        assert_eq!(stamp(&source), None, "a source gone has no stamp");
    }
}
