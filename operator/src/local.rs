//! `weir-operator local --dir DIR`: the control plane fed by YAML files instead of the
//! Kubernetes API.
//!
//! Every `*.yaml`/`*.yml` under DIR (multi-document allowed) may hold TrafficSplit,
//! ResiliencePolicy, Autoscaler and LocalService resources; LocalServices say where each
//! service's endpoints are. The folder is polled every 250 ms (size, modification time and inode
//! of each file, then its bytes) rather than watched with inotify: polling sees editors'
//! rename-on-save, deleted and new files alike with no extra crate, and an edit is live well
//! within the 1 s the design asks for. A file that does not parse or validate is reported (file,
//! document, field) and the last good resources of that file stay in force. Each look (reading,
//! parsing, translating) runs on tokio's blocking pool, so a huge or pathological file never
//! stalls the async threads that serve the admin listener and the config API.
//!
//! [`run`] publishes two things: the config snapshot the config API serves, and the resources it
//! was translated from (a `watch` of [`Resources`]), which the local Autoscaler loop
//! ([`crate::autoscaler::local`]) reads: an endpoint's optional `admin` address is where that
//! loop scrapes the sidecar's `/metrics` (without it, the sidecar connected to the config API
//! whose inbound listener is the endpoint's address is scraped), and the Autoscalers' desired
//! counts are served on the admin listener's `/autoscalers` for whoever starts and stops the
//! instances. The same channel carries the TrafficSplits with an analysis to the rollout loop
//! ([`crate::analysis::local`]), whose canary weights come back on [`crate::admin::StatusFeeds`]
//! and are applied to the splits before each translation (a weight change alone translates
//! again); the verdicts of each translation go out the same way, for the admin's `/status`.

use crate::snapshot::ServiceKey;
use crate::translate::{EndpointInfo, Inputs, ServiceInfo};
use kube::Resource;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use weir_crds::{Autoscaler, LocalService, ResiliencePolicy, TrafficSplit};

/// The resources of one file.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Resources {
    pub splits: Vec<TrafficSplit>,
    pub policies: Vec<ResiliencePolicy>,
    pub autoscalers: Vec<Autoscaler>,
    pub local_services: Vec<LocalService>,
}

impl Resources {
    fn extend(&mut self, other: &Resources) {
        self.splits.extend(other.splits.iter().cloned());
        self.policies.extend(other.policies.iter().cloned());
        self.autoscalers.extend(other.autoscalers.iter().cloned());
        self.local_services
            .extend(other.local_services.iter().cloned());
    }
}

/// A document that was refused, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: document {document}: {field}{message}")]
pub struct FileError {
    pub file: String,
    /// 1-based index of the document in the file.
    pub document: usize,
    /// `field `spec.backends[0].weight`: ` or empty.
    pub field: String,
    pub message: String,
}

/// Parses one file's text; all or nothing, so a half-edited file never applies half its changes.
pub fn parse_file(file: &str, text: &str) -> Result<Resources, FileError> {
    let mut resources = Resources::default();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document_no = index + 1;
        let fail = |field: String, message: String| FileError {
            file: file.to_owned(),
            document: document_no,
            field: if field.is_empty() {
                String::new()
            } else {
                format!("field `{field}`: ")
            },
            message,
        };
        let value: serde_yaml::Value = serde::Deserialize::deserialize(document)
            .map_err(|e| fail(String::new(), e.to_string()))?;
        if value.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        let api_version = value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let kind = value
            .get("kind")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let expected = format!("{}/{}", weir_crds::GROUP, weir_crds::VERSION);
        if api_version != expected {
            return Err(fail(
                "apiVersion".into(),
                format!("expected {expected}, found {api_version:?}"),
            ));
        }
        match kind {
            "TrafficSplit" => resources.splits.push(typed(value, &fail)?),
            "ResiliencePolicy" => resources.policies.push(typed(value, &fail)?),
            "Autoscaler" => resources.autoscalers.push(typed(value, &fail)?),
            "LocalService" => resources.local_services.push(typed(value, &fail)?),
            other => {
                return Err(fail(
                    "kind".into(),
                    format!(
                        "{other:?} is not one of TrafficSplit, ResiliencePolicy, Autoscaler, LocalService"
                    ),
                ));
            }
        }
    }
    Ok(resources)
}

/// Deserializes a resource, refusing unknown fields as the API server's strict field validation
/// does (the CRD types themselves accept them, as CRD types must), and defaulting the namespace.
fn typed<K>(
    value: serde_yaml::Value,
    fail: &dyn Fn(String, String) -> FileError,
) -> Result<K, FileError>
where
    K: DeserializeOwned + Resource,
{
    let resource: K = serde_path_to_error::deserialize(value.clone())
        .map_err(|e| fail(e.path().to_string(), e.into_inner().to_string()))?;
    let mut unknown = Vec::new();
    let _: Result<K, _> = serde_ignored::deserialize(value, |path| unknown.push(path.to_string()));
    // apiVersion and kind were checked by the caller; metadata and status are not ours to judge.
    let ours = |p: &String| {
        !(p == "apiVersion"
            || p == "kind"
            || p == "status"
            || p.starts_with("metadata.")
            || p.starts_with("status."))
    };
    if let Some(path) = unknown.into_iter().find(ours) {
        return Err(fail(path, "unknown field".into()));
    }
    let mut resource = resource;
    let meta = resource.meta_mut();
    if meta.name.as_deref().unwrap_or_default().is_empty() {
        return Err(fail("metadata.name".into(), "required".into()));
    }
    meta.namespace.get_or_insert_with(|| "default".to_owned());
    Ok(resource)
}

/// Services and endpoints from LocalServices, as the translation wants them.
pub fn services_and_endpoints<'a>(
    local: impl IntoIterator<Item = &'a LocalService>,
) -> Result<(Vec<ServiceInfo>, Vec<EndpointInfo>), String> {
    let mut services = Vec::new();
    let mut endpoints = Vec::new();
    for service in local {
        let key = ServiceKey::new(
            service.metadata.namespace.clone().unwrap_or_default(),
            service.metadata.name.clone().unwrap_or_default(),
        );
        for (i, endpoint) in service.spec.endpoints.iter().enumerate() {
            let address: SocketAddr = endpoint.address.parse().map_err(|_| {
                format!(
                    "LocalService {key}: field `spec.endpoints[{i}].address`: {:?} is not IP:port",
                    endpoint.address
                )
            })?;
            if let Some(admin) = &endpoint.admin
                && admin.parse::<SocketAddr>().is_err()
            {
                return Err(format!(
                    "LocalService {key}: field `spec.endpoints[{i}].admin`: {admin:?} is not IP:port"
                ));
            }
            endpoints.push(EndpointInfo {
                service: key.clone(),
                address,
                labels: endpoint.labels.clone(),
            });
        }
        services.push(ServiceInfo {
            key,
            addresses: Vec::new(),
        });
    }
    services.sort();
    services.dedup();
    Ok((services, endpoints))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

/// The folder as last read: per file its stamp and last good resources.
#[derive(Debug, Default)]
pub struct Folder {
    files: BTreeMap<PathBuf, (Stamp, Resources)>,
    /// Files whose current text is refused, so the error is logged once per change.
    refused: HashMap<PathBuf, Stamp>,
}

impl Folder {
    /// Re-reads what changed under `dir`; returns true when the resources changed.
    pub fn refresh(&mut self, dir: &Path) -> bool {
        let mut found = Vec::new();
        collect_yaml(dir, &mut found);
        // A link whose file is gone (a linked folder's file deleted) is a deleted file.
        let stamped: Vec<(PathBuf, Stamp)> = found
            .into_iter()
            .filter_map(|path| {
                let meta = std::fs::metadata(&path).ok()?;
                Some((path, stamp(&meta)))
            })
            .collect();
        let seen: Vec<&PathBuf> = stamped.iter().map(|(path, _)| path).collect();
        let mut changed = false;
        for (path, stamp) in &stamped {
            let stamp = *stamp;
            if self.files.get(path).is_some_and(|(s, _)| *s == stamp)
                || self.refused.get(path) == Some(&stamp)
            {
                continue;
            }
            let name = path.strip_prefix(dir).unwrap_or(path).display().to_string();
            let parsed = std::fs::read_to_string(path)
                .map_err(|e| FileError {
                    file: name.clone(),
                    document: 0,
                    field: String::new(),
                    message: e.to_string(),
                })
                .and_then(|text| parse_file(&name, &text));
            match parsed {
                Ok(resources) => {
                    self.refused.remove(path);
                    // Compared as compact JSON text: a tree of `Value`s for a file of thousands
                    // of resources would cost many times the file's size, twice.
                    let same = self.files.get(path).is_some_and(|(_, r)| {
                        serde_json::to_vec(r).ok() == serde_json::to_vec(&resources).ok()
                    });
                    self.files.insert(path.clone(), (stamp, resources));
                    if !same {
                        tracing::info!(file = %name, "resources loaded");
                        changed = true;
                    }
                }
                Err(e) => {
                    tracing::error!(file = %e.file, document = e.document, error = %e, "file refused; its last good resources stay in force");
                    self.refused.insert(path.clone(), stamp);
                }
            }
        }
        let before = self.files.len();
        self.files.retain(|path, _| seen.contains(&path));
        self.refused.retain(|path, _| seen.contains(&path));
        if self.files.len() != before {
            tracing::info!("a resource file was removed");
            changed = true;
        }
        changed
    }

    /// All last good resources.
    pub fn resources(&self) -> Resources {
        let mut all = Resources::default();
        for (_, resources) in self.files.values() {
            all.extend(resources);
        }
        all
    }

    /// The last good resources of one kind, file by file, without copying them.
    pub fn each<'a, T: 'a>(
        &'a self,
        kind: impl Fn(&'a Resources) -> &'a [T] + Clone + 'a,
    ) -> impl Iterator<Item = &'a T> + Clone + 'a {
        self.files.values().flat_map(move |(_, r)| kind(r).iter())
    }

    /// What translation reads besides the endpoints: the TrafficSplits and ResiliencePolicies
    /// (copied, as translation takes them as slices). The LocalServices, by far the largest part
    /// of a big folder, are read in place with [`Folder::each`].
    pub fn routing(&self) -> Resources {
        Resources {
            splits: self.each(|r| &r.splits).cloned().collect(),
            policies: self.each(|r| &r.policies).cloned().collect(),
            ..Resources::default()
        }
    }
}

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(meta);
    #[cfg(not(unix))]
    let inode = 0;
    Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode,
    }
}

fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_yaml(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out.sort();
}

/// What the local autoscaler needs of the folder: its Autoscalers and the LocalServices they may
/// target (by name; the autoscaler matches the namespace). Not the whole folder: with 10,000
/// services a second full copy kept for it would nearly double the operator's memory.
pub fn autoscaling_inputs<'a>(
    autoscalers: impl Iterator<Item = &'a Autoscaler> + Clone,
    local_services: impl Iterator<Item = &'a LocalService>,
) -> Resources {
    let targets: std::collections::HashSet<&str> = autoscalers
        .clone()
        .map(|a| a.spec.target_ref.name.as_str())
        .collect();
    Resources {
        autoscalers: autoscalers.cloned().collect(),
        local_services: local_services
            .filter(|s| {
                s.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| targets.contains(n))
            })
            .cloned()
            .collect(),
        ..Resources::default()
    }
}

/// The translation inputs of everything loaded.
pub fn inputs_of<'a>(
    resources: &'a Resources,
    services: &'a [ServiceInfo],
    endpoints: &'a [EndpointInfo],
) -> Inputs<'a> {
    Inputs {
        splits: &resources.splits,
        policies: &resources.policies,
        services,
        endpoints,
    }
}

/// How often the folder is looked at.
const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Watches `dir` until `shutdown`, publishing a new snapshot whenever the translated config
/// changes, and on `loaded` the resources of every accepted state of the folder (what the local
/// Autoscaler loop reads). Refusals are logged once per change of verdict.
pub async fn run(
    dir: PathBuf,
    snapshots: tokio::sync::watch::Sender<std::sync::Arc<crate::snapshot::Snapshot>>,
    loaded: tokio::sync::watch::Sender<std::sync::Arc<Resources>>,
    readiness: std::sync::Arc<crate::admin::Readiness>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    feeds: crate::admin::StatusFeeds,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let crate::admin::StatusFeeds {
        verdicts,
        mut rollouts,
    } = feeds;
    let mut source = Some(Source::default());
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
            readiness.ready(crate::admin::CONFIG_API);
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
    /// The LocalServices were refused: the last good state stays.
    Refused,
    /// Translated: the next snapshot if anything changed, and what the autoscaler reads.
    Translated {
        next: Option<Box<crate::snapshot::Snapshot>>,
        autoscaling: Resources,
    },
}

impl Source {
    /// Re-reads what changed under `dir` and, if anything did (or on the first look),
    /// translates everything. Blocking: file reads, parsing, translation.
    fn look(
        &mut self,
        dir: &Path,
        current: &crate::snapshot::Snapshot,
        metrics: &crate::metrics::Metrics,
        canary_weights: Option<BTreeMap<crate::analysis::Key, (String, u32)>>,
    ) -> Look {
        let mut changed = self.folder.refresh(dir);
        if let Some(weights) = canary_weights
            && weights != self.canary_weights
        {
            self.canary_weights = weights;
            changed = true;
        }
        if !changed && self.looked {
            return Look::Unchanged;
        }
        self.looked = true;
        let mut resources = self.folder.routing();
        crate::analysis::apply_all(&mut resources.splits, &self.canary_weights);
        let (services, endpoints) = match services_and_endpoints(
            self.folder.each(|r| &r.local_services),
        ) {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "LocalService refused; the last good state stays in force");
                return Look::Refused;
            }
        };
        let started = tokio::time::Instant::now();
        let translation = crate::translate::translate(
            &inputs_of(&resources, &services, &endpoints),
            &self.previous,
        );
        crate::metrics::record_reconciles(metrics, &translation.verdicts, started.elapsed());
        report_verdicts(&self.previous, &translation);
        let next = current
            .next(&translation.services, &translation.inbound)
            .map(Box::new);
        self.previous = translation;
        Look::Translated {
            next,
            autoscaling: Resources {
                // The splits with an analysis, as written (without the rollout's weights):
                // what the rollouts are run from.
                splits: self
                    .folder
                    .each(|r| &r.splits)
                    .filter(|s| s.spec.analysis.is_some())
                    .cloned()
                    .collect(),
                ..autoscaling_inputs(
                    self.folder.each(|r| &r.autoscalers),
                    self.folder.each(|r| &r.local_services),
                )
            },
        }
    }
}

fn report_verdicts(
    previous: &crate::translate::Translation,
    current: &crate::translate::Translation,
) {
    for verdict in &current.verdicts {
        // Verdicts are sorted by kind, namespace and name: a binary search finds the old one.
        let old = previous
            .verdicts
            .binary_search_by(|v| {
                (v.kind, &v.namespace, &v.name).cmp(&(
                    verdict.kind,
                    &verdict.namespace,
                    &verdict.name,
                ))
            })
            .ok()
            .map(|i| &previous.verdicts[i]);
        if old == Some(verdict) {
            continue;
        }
        match &verdict.accepted {
            Ok(()) => {
                tracing::info!(kind = verdict.kind.as_str(), namespace = %verdict.namespace, name = %verdict.name, "Accepted")
            }
            Err(refused) => tracing::warn!(
                kind = verdict.kind.as_str(), namespace = %verdict.namespace, name = %verdict.name,
                reason = refused.reason, message = %refused.message,
                "not accepted; the last good config stays in force"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "apiVersion: weir.dev/v1alpha1\nkind: LocalService\n\
        metadata: {name: orders, namespace: shop}\n\
        spec:\n  endpoints:\n    - {address: 127.0.0.1:9101, admin: ADMIN}\n";

    #[test]
    fn an_endpoint_admin_must_be_an_address() {
        let good = parse_file("s.yaml", &SERVICE.replace("ADMIN", "127.0.0.1:15020")).unwrap();
        assert_eq!(
            good.local_services[0].spec.endpoints[0].admin.as_deref(),
            Some("127.0.0.1:15020")
        );
        assert!(services_and_endpoints(&good.local_services).is_ok());
        let bad = parse_file("s.yaml", &SERVICE.replace("ADMIN", "sidecar:15020")).unwrap();
        let error = services_and_endpoints(&bad.local_services).unwrap_err();
        assert!(
            error.contains("spec.endpoints[0].admin") && error.contains("sidecar:15020"),
            "{error}"
        );
    }

    #[test]
    fn the_autoscaler_gets_only_what_it_targets() {
        let text = format!(
            "{}---\n{}---\n{}",
            SERVICE.replace("ADMIN", "127.0.0.1:15020"),
            SERVICE
                .replace("ADMIN", "127.0.0.1:15021")
                .replace("name: orders", "name: payments"),
            "apiVersion: weir.dev/v1alpha1\nkind: Autoscaler\n\
             metadata: {name: orders, namespace: shop}\n\
             spec:\n  targetRef: {apiVersion: apps/v1, kind: Deployment, name: orders}\n  \
             minReplicas: 1\n  maxReplicas: 3\n  metrics: [{type: Concurrency, target: 5}]\n"
        );
        let all = parse_file("all.yaml", &text).unwrap();
        assert_eq!(all.local_services.len(), 2);
        let slim = autoscaling_inputs(all.autoscalers.iter(), all.local_services.iter());
        assert_eq!(slim.autoscalers.len(), 1);
        let names: Vec<_> = slim
            .local_services
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["orders"]);
    }

    #[test]
    fn a_linked_file_that_is_deleted_takes_its_resources_with_it() {
        let dir = std::env::temp_dir().join(format!("weir-local-links-{}", std::process::id()));
        let (source, run) = (dir.join("source"), dir.join("run"));
        std::fs::create_dir_all(&source).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        let file = source.join("orders.yaml");
        std::fs::write(&file, SERVICE.replace("ADMIN", "127.0.0.1:15020")).unwrap();
        std::os::unix::fs::symlink(&file, run.join("orders.yaml")).unwrap();
        let mut folder = Folder::default();
        assert!(folder.refresh(&run));
        assert_eq!(folder.resources().local_services.len(), 1);
        std::fs::remove_file(&file).unwrap();
        assert!(
            folder.refresh(&run),
            "the dangling link counts as a removal"
        );
        assert!(folder.resources().local_services.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
