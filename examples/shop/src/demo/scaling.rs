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
//! The LocalService lives in the run's own mesh folder (`DATA/mesh`): the launcher rewrites the
//! file that holds the orders LocalService there, from the source file with the endpoints
//! replaced, whenever the instances or the source change. The other files are links to the
//! source folder (a plain run, so editing `examples/shop/mesh/payments-split.yaml` still moves
//! the canary) or copies of it (a scenario, which edits them itself).

use super::launch::{self, Layout, Probe};
use super::procs::Children;
use super::topology::{self, Instance, MAX_ORDERS_REPLICAS, ORDERS, orders_replica};
use super::web::{self, Client};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// The mesh file with the orders Autoscaler: left out of the scenarios' mesh copies but the
/// autoscale one, so the other stories run with one orders instance as they were written.
pub(super) const AUTOSCALER_FILE: &str = "autoscaler.yaml";
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

/// `text` (a mesh file, multi-document YAML) with the endpoints of the orders LocalService
/// replaced by `instances` (their sidecars' inbound listeners, with their admin listeners for
/// the autoscaler); `None` when the file holds no such LocalService. Other documents are kept
/// as they are (their comments are not).
pub fn with_orders_endpoints(text: &str, instances: &[Instance]) -> Result<Option<String>> {
    use serde::Deserialize;
    let mut documents = Vec::new();
    let mut found = false;
    for document in serde_yaml::Deserializer::from_str(text) {
        let mut value = serde_yaml::Value::deserialize(document)?;
        if value.is_null() {
            continue;
        }
        let field = |v: &serde_yaml::Value, path: &[&str]| {
            path.iter()
                .try_fold(v, |v, key| v.get(*key))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let is_orders = field(&value, &["kind"]).as_deref() == Some("LocalService")
            && field(&value, &["metadata", "name"]).as_deref() == Some(ORDERS.service)
            && field(&value, &["metadata", "namespace"]).is_none_or(|ns| ns == topology::NAMESPACE);
        let is_local_service = field(&value, &["kind"]).as_deref() == Some("LocalService");
        if is_local_service && !is_orders {
            move_ports(&mut value, topology::port_base());
        }
        if is_orders {
            found = true;
            let spec = value
                .get_mut("spec")
                .and_then(|s| s.as_mapping_mut())
                .context("the orders LocalService has no spec")?;
            // The labels the source gives its first endpoint go to every instance.
            let labels = spec
                .get("endpoints")
                .and_then(|e| e.as_sequence())
                .and_then(|e| e.first())
                .and_then(|e| e.get("labels"))
                .cloned()
                .unwrap_or_else(|| {
                    serde_yaml::to_value(BTreeMap::from([("app", "orders"), ("version", "v1")]))
                        .expect("labels serialize")
                });
            let endpoints: Vec<serde_yaml::Value> = instances
                .iter()
                .map(|i| {
                    let mut e = serde_yaml::Mapping::new();
                    e.insert("address".into(), i.inbound_addr().to_string().into());
                    e.insert("admin".into(), i.admin_addr().to_string().into());
                    e.insert("labels".into(), labels.clone());
                    serde_yaml::Value::Mapping(e)
                })
                .collect();
            spec.insert("endpoints".into(), serde_yaml::Value::Sequence(endpoints));
        }
        documents.push(value);
    }
    if !found {
        return Ok(None);
    }
    let mut out = String::from(
        "# Written by `weir-shop demo`: the orders LocalService lists the orders instances that\n\
         # run and are ready now; the other documents are as in the source mesh folder.\n",
    );
    for (i, document) in documents.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml::to_string(document)?);
    }
    Ok(Some(out))
}

/// Moves the endpoint addresses of a LocalService that are in the demo's table (loopback, ports
/// 18000–18328) to `base` (`--port-base`); other addresses stay as they are.
fn move_ports(local_service: &mut serde_yaml::Value, base: u16) {
    let Some(endpoints) = local_service
        .get_mut("spec")
        .and_then(|s| s.get_mut("endpoints"))
        .and_then(|e| e.as_sequence_mut())
    else {
        return;
    };
    let table = topology::DEFAULT_PORT_BASE..=topology::DEFAULT_PORT_BASE + topology::PORT_SPAN;
    for endpoint in endpoints {
        for key in ["address", "admin"] {
            let Some(text) = endpoint.get(key).and_then(|a| a.as_str()) else {
                continue;
            };
            let Ok(mut addr) = text.parse::<std::net::SocketAddr>() else {
                continue;
            };
            if addr.ip().is_loopback() && table.contains(&addr.port()) {
                addr.set_port(addr.port() - topology::DEFAULT_PORT_BASE + base);
                if let Some(map) = endpoint.as_mapping_mut() {
                    map.insert(key.into(), addr.to_string().into());
                }
            }
        }
    }
}

/// The first YAML file of `dir` (sorted by name) that holds the orders LocalService.
fn orders_file(dir: &Path) -> Option<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files.into_iter().find(|p| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|text| with_orders_endpoints(&text, &[ORDERS]).ok().flatten())
            .is_some()
    })
}

/// How the run's mesh folder refers to the source's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MeshFiles {
    /// Symbolic links: edits of the source apply to the run (a plain run).
    Link,
    /// Copies the run edits itself (a scenario); `autoscale` keeps the Autoscaler file.
    Copy { autoscale: bool },
}

/// Fills `run` (emptied first) from `source`: every YAML file linked or copied, but the one
/// holding the orders LocalService, which is written with replica 1 as its only endpoint.
/// Returns the source and run paths of that file, when there is one.
pub(super) fn prepare_mesh(
    source: &Path,
    run: &Path,
    files: MeshFiles,
) -> Result<Option<(PathBuf, PathBuf)>> {
    if run.exists() {
        std::fs::remove_dir_all(run).with_context(|| format!("emptying {}", run.display()))?;
    }
    std::fs::create_dir_all(run).with_context(|| format!("creating {}", run.display()))?;
    let orders = orders_file(source);
    for entry in std::fs::read_dir(source)? {
        let path = entry?.path();
        if !path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            continue;
        }
        let name = path.file_name().context("a file has a name")?;
        let target = run.join(name);
        if Some(&path) == orders.as_ref() {
            continue;
        }
        match files {
            MeshFiles::Link => std::os::unix::fs::symlink(&path, &target)
                .with_context(|| format!("linking {}", target.display()))?,
            MeshFiles::Copy { autoscale } => {
                if !autoscale && name == AUTOSCALER_FILE {
                    continue;
                }
                std::fs::copy(&path, &target)
                    .with_context(|| format!("copying {}", path.display()))?;
            }
        }
    }
    let Some(source_file) = orders else {
        return Ok(None);
    };
    let run_file = run.join(source_file.file_name().context("a file has a name")?);
    write_orders_file(&source_file, &run_file, &[ORDERS])?;
    Ok(Some((source_file, run_file)))
}

/// Keeps a linked run folder in step with its source: links files added to the source since
/// (they take effect as they would in the source folder itself) and removes links whose file
/// is gone. The file with the orders LocalService is the launcher's own and left alone.
pub(super) fn sync_links(source: &Path, run: &Path, orders_file: Option<&Path>) -> Result<()> {
    for entry in std::fs::read_dir(source)? {
        let path = entry?.path();
        if !path.extension().is_some_and(|e| e == "yaml" || e == "yml")
            || Some(path.as_path()) == orders_file
        {
            continue;
        }
        let target = run.join(path.file_name().context("a file has a name")?);
        if std::fs::symlink_metadata(&target).is_err() {
            std::os::unix::fs::symlink(&path, &target)
                .with_context(|| format!("linking {}", target.display()))?;
        }
    }
    for entry in std::fs::read_dir(run)? {
        let path = entry?.path();
        let is_link = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
        if is_link && std::fs::metadata(&path).is_err() {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Writes `run_file` from `source_file` with `instances` as the orders endpoints, atomically
/// (a temporary file renamed over it), so the control plane never reads half a file.
fn write_orders_file(source_file: &Path, run_file: &Path, instances: &[Instance]) -> Result<()> {
    let text = std::fs::read_to_string(source_file)
        .with_context(|| format!("reading {}", source_file.display()))?;
    let Some(out) = with_orders_endpoints(&text, instances)
        .with_context(|| format!("{} does not parse", source_file.display()))?
    else {
        bail!(
            "{} no longer holds the orders LocalService",
            source_file.display()
        );
    };
    // Not `.yaml`: the control plane reads only those.
    let temporary = run_file.with_extension("yaml.tmp");
    std::fs::write(&temporary, out)?;
    std::fs::rename(&temporary, run_file)?;
    Ok(())
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
    /// The source file's modification time and length when last written from.
    source_stamp: Option<(SystemTime, u64)>,
    replicas: BTreeMap<usize, Phase>,
    /// The last answer of the control plane about orders' Autoscaler.
    pub(super) view: Option<AutoscalerView>,
    pub(super) events: Vec<ScaleEvent>,
    pub(super) timeline: Vec<ScalePoint>,
    capped_noted: bool,
}

impl OrdersScaler {
    /// `file`: what [`prepare_mesh`] returned; replica 1 is running and serving.
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
    pub(super) fn dashboard(&self) -> super::dashboard::Scaling<'_> {
        super::dashboard::Scaling {
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

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICES: &str = r#"# a comment
apiVersion: weir.dev/v1alpha1
kind: LocalService
metadata: {name: gateway, namespace: shop}
spec:
  endpoints:
    - {address: "127.0.0.1:18100", labels: {app: gateway, version: v1}}
---
apiVersion: weir.dev/v1alpha1
kind: LocalService
metadata: {name: orders, namespace: shop}
spec:
  port: 8080
  endpoints:
    - {address: "127.0.0.1:18101", admin: "127.0.0.1:18301", labels: {app: orders, version: v1}}
---
"#;

    fn parse(text: &str) -> Vec<serde_yaml::Value> {
        use serde::Deserialize;
        serde_yaml::Deserializer::from_str(text)
            .map(|d| serde_yaml::Value::deserialize(d).unwrap())
            .filter(|v| !v.is_null())
            .collect()
    }

    #[test]
    fn a_moved_port_base_moves_the_table_addresses_only() {
        let mut docs = parse(SERVICES);
        let mut other: serde_yaml::Value = serde_yaml::from_str(
            "kind: LocalService\nspec:\n  endpoints:\n    \
             - {address: \"10.0.0.1:18100\", admin: \"127.0.0.1:9000\"}\n",
        )
        .unwrap();
        move_ports(&mut docs[0], 21000);
        move_ports(&mut docs[1], 21000);
        move_ports(&mut other, 21000);
        assert_eq!(
            docs[0]["spec"]["endpoints"][0]["address"],
            "127.0.0.1:21100"
        );
        assert_eq!(
            docs[1]["spec"]["endpoints"][0]["address"],
            "127.0.0.1:21101"
        );
        assert_eq!(docs[1]["spec"]["endpoints"][0]["admin"], "127.0.0.1:21301");
        assert_eq!(docs[1]["spec"]["endpoints"][0]["labels"]["app"], "orders");
        // Not loopback, not in the table: left alone.
        assert_eq!(other["spec"]["endpoints"][0]["address"], "10.0.0.1:18100");
        assert_eq!(other["spec"]["endpoints"][0]["admin"], "127.0.0.1:9000");
    }

    #[test]
    fn orders_endpoints_follow_the_instances() {
        let three = [
            ORDERS,
            orders_replica(2).unwrap(),
            orders_replica(3).unwrap(),
        ];
        let out = with_orders_endpoints(SERVICES, &three).unwrap().unwrap();
        let docs = parse(&out);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0], parse(SERVICES)[0], "other documents are kept");
        let orders = &docs[1];
        assert_eq!(orders["spec"]["port"], 8080);
        let endpoints = orders["spec"]["endpoints"].as_sequence().unwrap();
        assert_eq!(endpoints.len(), 3);
        assert_eq!(endpoints[2]["address"], "127.0.0.1:18123");
        assert_eq!(endpoints[2]["admin"], "127.0.0.1:18323");
        assert_eq!(endpoints[2]["labels"]["version"], "v1");
        // And it is still a LocalService the CRD types accept.
        let typed: weir_crds::LocalService = serde_yaml::from_value(orders.clone()).unwrap();
        assert_eq!(typed.spec.endpoints.len(), 3);
    }

    #[test]
    fn files_without_orders_are_left_alone() {
        let text = "apiVersion: weir.dev/v1alpha1\nkind: LocalService\nmetadata: {name: gateway}\nspec: {endpoints: []}\n";
        assert_eq!(with_orders_endpoints(text, &[ORDERS]).unwrap(), None);
        assert!(with_orders_endpoints("a: [", &[ORDERS]).is_err());
    }

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

    #[test]
    fn the_run_mesh_links_the_source_and_writes_the_orders_file() {
        let dir = std::env::temp_dir().join(format!(
            "weir-shop-mesh-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let source = dir.join("source");
        let run = dir.join("run");
        std::fs::create_dir_all(&source).unwrap();
        std::fs::write(source.join("services.yaml"), SERVICES).unwrap();
        std::fs::write(source.join("split.yaml"), "# split\n").unwrap();
        std::fs::write(source.join(AUTOSCALER_FILE), "# autoscaler\n").unwrap();
        std::fs::write(source.join("notes.txt"), "not yaml").unwrap();

        let (from, to) = prepare_mesh(&source, &run, MeshFiles::Link)
            .unwrap()
            .unwrap();
        assert_eq!(from, source.join("services.yaml"));
        assert_eq!(to, run.join("services.yaml"));
        assert!(
            std::fs::symlink_metadata(run.join("split.yaml"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(run.join(AUTOSCALER_FILE).exists());
        assert!(!run.join("notes.txt").exists());
        let written = std::fs::read_to_string(&to).unwrap();
        assert_eq!(
            parse(&written)[1]["spec"]["endpoints"]
                .as_sequence()
                .unwrap()
                .len(),
            1
        );

        // Added and deleted while a plain run goes on.
        std::fs::write(source.join("late.yaml"), "# late\n").unwrap();
        std::fs::remove_file(source.join("split.yaml")).unwrap();
        sync_links(&source, &run, Some(&from)).unwrap();
        assert!(run.join("late.yaml").exists());
        assert!(std::fs::symlink_metadata(run.join("split.yaml")).is_err());
        assert_eq!(
            std::fs::read_to_string(&to).unwrap(),
            written,
            "its own file untouched"
        );
        std::fs::write(source.join("split.yaml"), "# split\n").unwrap();

        prepare_mesh(&source, &run, MeshFiles::Copy { autoscale: false }).unwrap();
        assert!(!run.join(AUTOSCALER_FILE).exists());
        assert!(
            !std::fs::symlink_metadata(run.join("split.yaml"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        prepare_mesh(&source, &run, MeshFiles::Copy { autoscale: true }).unwrap();
        assert!(run.join(AUTOSCALER_FILE).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
