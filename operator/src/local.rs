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

use crate::incremental::Source as _;
use crate::snapshot::ServiceKey;
use crate::translate::{EndpointInfo, Inputs, Ports, ServiceInfo, ServicePort};
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
///
/// A LocalService with `endpoints` (and optionally `port`) is routed as one whatever the port
/// callers name, as it always was; one with `ports` is routed per port, each port over its own
/// endpoints, like a multi-port Kubernetes Service. Giving both is refused: which endpoints a
/// call to some port reaches would be a guess.
pub fn services_and_endpoints<'a>(
    local: impl IntoIterator<Item = &'a LocalService>,
) -> Result<(Vec<ServiceInfo>, Vec<EndpointInfo>), String> {
    let mut services = Vec::new();
    let mut endpoints = Vec::new();
    let mut labels = LabelSets::default();
    for service in local {
        let key = ServiceKey::new(
            service.metadata.namespace.clone().unwrap_or_default(),
            service.metadata.name.clone().unwrap_or_default(),
        );
        let spec = &service.spec;
        let port_number = |field: &str, port: i32| {
            u16::try_from(port).ok().filter(|&p| p > 0).ok_or_else(|| {
                format!("LocalService {key}: field `{field}`: {port} is not a port (1 to 65535)")
            })
        };
        if spec.ports.is_empty() {
            let port = spec.port.map(|p| port_number("spec.port", p)).transpose()?;
            endpoints.extend(local_endpoints(
                &key,
                None,
                "spec.endpoints",
                &spec.endpoints,
                &mut labels,
            )?);
            services.push(ServiceInfo {
                key,
                ports: Ports::One { port },
            });
            continue;
        }
        if spec.port.is_some() || !spec.endpoints.is_empty() {
            let field = if spec.port.is_some() {
                "spec.port"
            } else {
                "spec.endpoints"
            };
            return Err(format!(
                "LocalService {key}: field `{field}`: a LocalService with `ports` gives each port its endpoints; `port` and `endpoints` are for a service routed as one"
            ));
        }
        let mut ports: Vec<ServicePort> = Vec::new();
        for (i, local_port) in spec.ports.iter().enumerate() {
            let port = port_number(&format!("spec.ports[{i}].port"), local_port.port)?;
            let name = local_port.name.clone().unwrap_or_default();
            if ports
                .iter()
                .any(|p| p.port == port || (!name.is_empty() && p.name == name))
            {
                return Err(format!(
                    "LocalService {key}: field `spec.ports[{i}]`: port {port} ({name:?}) appears twice"
                ));
            }
            endpoints.extend(local_endpoints(
                &key,
                Some(port),
                &format!("spec.ports[{i}].endpoints"),
                &local_port.endpoints,
                &mut labels,
            )?);
            ports.push(ServicePort {
                name,
                port,
                addresses: Vec::new(),
            });
        }
        services.push(ServiceInfo {
            key,
            ports: Ports::Each(ports),
        });
    }
    services.sort();
    services.dedup();
    Ok((services, endpoints))
}

/// One shared map per distinct label set: the endpoints of a mesh carry few of them (`version:
/// v1`, `version: v2`), and a map per endpoint was the largest part of local mode's memory.
#[derive(Default)]
struct LabelSets(std::collections::HashSet<std::sync::Arc<BTreeMap<String, String>>>);

impl LabelSets {
    fn shared(
        &mut self,
        labels: &BTreeMap<String, String>,
    ) -> std::sync::Arc<BTreeMap<String, String>> {
        if let Some(known) = self.0.get(labels) {
            return known.clone();
        }
        let new = std::sync::Arc::new(labels.clone());
        self.0.insert(new.clone());
        new
    }
}

/// The endpoints of one list of a LocalService (`field` names it in errors), serving `port`.
fn local_endpoints(
    key: &ServiceKey,
    port: Option<u16>,
    field: &str,
    list: &[weir_crds::LocalEndpoint],
    labels: &mut LabelSets,
) -> Result<Vec<EndpointInfo>, String> {
    list.iter()
        .enumerate()
        .map(|(i, endpoint)| {
            let address: SocketAddr = endpoint.address.parse().map_err(|_| {
                format!(
                    "LocalService {key}: field `{field}[{i}].address`: {:?} is not IP:port",
                    endpoint.address
                )
            })?;
            if let Some(admin) = &endpoint.admin
                && admin.parse::<SocketAddr>().is_err()
            {
                return Err(format!(
                    "LocalService {key}: field `{field}[{i}].admin`: {admin:?} is not IP:port"
                ));
            }
            Ok(EndpointInfo {
                service: key.clone(),
                port,
                address,
                labels: labels.shared(&endpoint.labels),
            })
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

/// The folder as last read: every file's last good resources, stored once.
///
/// # Memory
///
/// With 10,000 services (100,000 endpoints) the parsed resources are most of the operator's
/// memory, so they are kept once and read in place:
/// - each file is turned into translation inputs when it is read, not at every look: its
///   LocalServices' endpoints become compact endpoints (address, port, shared labels) grouped
///   under their Service's key, and their labels are *moved* there (a label map is the biggest
///   part of an endpoint; the LocalService keeps its addresses, which the local autoscaler
///   reads, and nothing reads its labels); the [`EndpointInfo`]s the translation reads are made
///   for the Services it translates ([`crate::incremental::Source`]), since one per endpoint,
///   each with its own copy of the Service's key, cost some 11 MB at 100,000 endpoints;
/// - the resources of every file are concatenated, in path order, in one vector per kind
///   ([`Folder::inputs`] lends them to the translation without a copy); a changed file's part is
///   replaced in place ([`Vec::splice`]), never by building the vectors anew.
///
/// Before this, each look copied every TrafficSplit and ResiliencePolicy and built every
/// endpoint (labels included) anew next to the parsed ones: at 10,000 services the operator's
/// peak RSS in the control-plane bench went from 342 MiB to 260 MiB; with the endpoints grouped
/// and edits translated incrementally it is 131 MiB (the README's figures say what remains).
#[derive(Debug, Default)]
pub struct Folder {
    /// Per file, in path order: its stamp, a fingerprint of its resources (to tell an edit that
    /// changes nothing) and how many of each kind it holds in `all`.
    files: BTreeMap<PathBuf, (Stamp, u64, Counts)>,
    /// Files whose current text is refused, so the error is logged once per change.
    refused: HashMap<PathBuf, Stamp>,
    /// Every file's last good resources, in path order.
    all: Loaded,
    /// The services of `all`, sorted and without duplicates (a name in two files is one service).
    services: Vec<ServiceInfo>,
    /// The Services named by what changed since [`Folder::take_touched`] was last called: by
    /// the resources a changed file had and by those it has now.
    touched: crate::incremental::Touched,
    /// Where a `kind: Mesh` ResiliencePolicy counts (`weir-system` when `None`).
    pub operator_namespace: Option<String>,
}

/// Resources of one file or of all, as stored.
#[derive(Debug, Default)]
struct Loaded {
    splits: Vec<TrafficSplit>,
    policies: Vec<ResiliencePolicy>,
    autoscalers: Vec<Autoscaler>,
    /// Without their endpoints' labels (moved to `endpoints`).
    local_services: Vec<LocalService>,
    services: Vec<ServiceInfo>,
    /// One group per LocalService (or per run of endpoints of one Service).
    endpoints: Vec<ServiceEndpoints>,
}

/// The endpoints of one Service, its key held once.
#[derive(Debug)]
struct ServiceEndpoints {
    service: ServiceKey,
    list: Box<[Endpoint]>,
}

/// An [`EndpointInfo`] without its Service.
#[derive(Debug)]
struct Endpoint {
    port: Option<u16>,
    address: SocketAddr,
    labels: std::sync::Arc<BTreeMap<String, String>>,
}

impl ServiceEndpoints {
    /// Groups runs of endpoints of one Service (services_and_endpoints lists them so).
    fn group(endpoints: Vec<EndpointInfo>) -> Vec<Self> {
        let mut groups: Vec<(ServiceKey, Vec<Endpoint>)> = Vec::new();
        for e in endpoints {
            let endpoint = Endpoint {
                port: e.port,
                address: e.address,
                labels: e.labels,
            };
            match groups.last_mut() {
                Some((service, list)) if *service == e.service => list.push(endpoint),
                _ => groups.push((e.service, vec![endpoint])),
            }
        }
        groups
            .into_iter()
            .map(|(service, list)| Self {
                service,
                list: list.into_boxed_slice(),
            })
            .collect()
    }

    fn infos(&self) -> impl Iterator<Item = EndpointInfo> + '_ {
        self.list.iter().map(|e| EndpointInfo {
            service: self.service.clone(),
            port: e.port,
            address: e.address,
            labels: e.labels.clone(),
        })
    }
}

/// How many of each kind one file holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    splits: usize,
    policies: usize,
    autoscalers: usize,
    local_services: usize,
    services: usize,
    endpoints: usize,
}

impl Counts {
    fn sub(&mut self, other: Counts) {
        self.splits -= other.splits;
        self.policies -= other.policies;
        self.autoscalers -= other.autoscalers;
        self.local_services -= other.local_services;
        self.services -= other.services;
        self.endpoints -= other.endpoints;
    }

    /// Each kind's larger count.
    fn max(&mut self, other: Counts) {
        self.splits = self.splits.max(other.splits);
        self.policies = self.policies.max(other.policies);
        self.autoscalers = self.autoscalers.max(other.autoscalers);
        self.local_services = self.local_services.max(other.local_services);
        self.services = self.services.max(other.services);
        self.endpoints = self.endpoints.max(other.endpoints);
    }

    fn add(&mut self, other: Counts) {
        self.splits += other.splits;
        self.policies += other.policies;
        self.autoscalers += other.autoscalers;
        self.local_services += other.local_services;
        self.services += other.services;
        self.endpoints += other.endpoints;
    }
}

impl Loaded {
    /// One file's resources as stored: endpoints with their labels, LocalServices without.
    fn of_file(resources: Resources) -> Result<Self, String> {
        let Resources {
            splits,
            policies,
            autoscalers,
            mut local_services,
        } = resources;
        let (services, endpoints) = services_and_endpoints(&local_services)?;
        for service in &mut local_services {
            for endpoint in &mut service.spec.endpoints {
                endpoint.labels = BTreeMap::new();
            }
        }
        let mut loaded = Self {
            splits,
            policies,
            autoscalers,
            local_services,
            services,
            endpoints: ServiceEndpoints::group(endpoints),
        };
        loaded.shrink();
        Ok(loaded)
    }

    /// Room for `total` of each kind, exactly.
    fn reserve_exact(&mut self, total: Counts) {
        fn room<T>(v: &mut Vec<T>, total: usize) {
            v.reserve_exact(total.saturating_sub(v.len()));
        }
        room(&mut self.splits, total.splits);
        room(&mut self.policies, total.policies);
        room(&mut self.autoscalers, total.autoscalers);
        room(&mut self.local_services, total.local_services);
        room(&mut self.services, total.services);
        room(&mut self.endpoints, total.endpoints);
    }

    /// Replaces the `remove` items of each kind starting at `at` with `with`'s.
    fn splice(&mut self, at: Counts, remove: Counts, with: Loaded) {
        fn part<T>(v: &mut Vec<T>, at: usize, remove: usize, with: Vec<T>) {
            v.splice(at..at + remove, with);
        }
        part(&mut self.splits, at.splits, remove.splits, with.splits);
        part(
            &mut self.policies,
            at.policies,
            remove.policies,
            with.policies,
        );
        part(
            &mut self.autoscalers,
            at.autoscalers,
            remove.autoscalers,
            with.autoscalers,
        );
        part(
            &mut self.local_services,
            at.local_services,
            remove.local_services,
            with.local_services,
        );
        part(
            &mut self.services,
            at.services,
            remove.services,
            with.services,
        );
        part(
            &mut self.endpoints,
            at.endpoints,
            remove.endpoints,
            with.endpoints,
        );
    }

    /// Marks the Services named by the `count` resources of each kind from `at` as touched.
    fn touch(&self, at: Counts, count: Counts, touched: &mut crate::incremental::Touched) {
        for service in &self.services[at.services..at.services + count.services] {
            touched.service(&service.key);
        }
        for group in &self.endpoints[at.endpoints..at.endpoints + count.endpoints] {
            touched.service(&group.service);
        }
        for split in &self.splits[at.splits..at.splits + count.splits] {
            touched.split(split);
        }
        for policy in &self.policies[at.policies..at.policies + count.policies] {
            touched.policy(policy);
        }
    }

    fn counts(&self) -> Counts {
        Counts {
            splits: self.splits.len(),
            policies: self.policies.len(),
            autoscalers: self.autoscalers.len(),
            local_services: self.local_services.len(),
            services: self.services.len(),
            endpoints: self.endpoints.len(),
        }
    }

    /// Vectors grown while parsing keep up to twice their length: give the rest back.
    fn shrink(&mut self) {
        self.splits.shrink_to_fit();
        self.policies.shrink_to_fit();
        self.autoscalers.shrink_to_fit();
        self.local_services.shrink_to_fit();
        self.services.shrink_to_fit();
        self.endpoints.shrink_to_fit();
    }
}

/// What a refresh found for one file: new resources, or gone.
enum Update {
    Loaded(Stamp, u64, Loaded),
    Removed,
}

impl Folder {
    /// Re-reads what changed under `dir`; returns true when the resources changed.
    pub fn refresh(&mut self, dir: &Path) -> bool {
        let mut found = Vec::new();
        collect_yaml(dir, &mut found);
        // A link whose file is gone (a linked folder's file deleted) is a deleted file.
        let stamped: BTreeMap<PathBuf, Stamp> = found
            .into_iter()
            .filter_map(|path| {
                let meta = std::fs::metadata(&path).ok()?;
                Some((path, stamp(&meta)))
            })
            .collect();
        let mut updates: BTreeMap<PathBuf, Update> = BTreeMap::new();
        for (path, stamp) in &stamped {
            let stamp = *stamp;
            let known = self.files.get_mut(path);
            if known.as_ref().is_some_and(|(s, _, _)| *s == stamp)
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
                .and_then(|text| parse_file(&name, &text))
                .and_then(|resources| {
                    // Hashed as compact JSON text: a tree of `Value`s for a file of thousands
                    // of resources would cost many times the file's size.
                    let print = fingerprint(&resources);
                    Loaded::of_file(resources)
                        .map(|loaded| (print, loaded))
                        .map_err(|message| FileError {
                            file: name.clone(),
                            document: 0,
                            field: String::new(),
                            message,
                        })
                });
            match parsed {
                Ok((print, loaded)) => {
                    self.refused.remove(path);
                    match known {
                        // Touched, not changed: only the stamp moves.
                        Some((old_stamp, old_print, _)) if *old_print == print => {
                            *old_stamp = stamp;
                        }
                        _ => {
                            tracing::info!(file = %name, "resources loaded");
                            updates.insert(path.clone(), Update::Loaded(stamp, print, loaded));
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(file = %e.file, document = e.document, error = %e, "file refused; its last good resources stay in force");
                    self.refused.insert(path.clone(), stamp);
                }
            }
        }
        for path in self.files.keys() {
            if !stamped.contains_key(path) {
                tracing::info!(file = %path.display(), "a resource file was removed");
                updates.insert(path.clone(), Update::Removed);
            }
        }
        self.refused.retain(|path, _| stamped.contains_key(path));
        if updates.is_empty() {
            return false;
        }
        self.apply(updates);
        true
    }

    /// Replaces, in place, the parts of the files that changed (in path order: a new file's
    /// part goes where its path sorts, a removed file's part goes). `Vec::splice` moves the
    /// parts after a changed one rather than copying every vector, so an edit never holds two
    /// copies of the stored resources.
    fn apply(&mut self, mut updates: BTreeMap<PathBuf, Update>) {
        let paths: std::collections::BTreeSet<PathBuf> =
            self.files.keys().chain(updates.keys()).cloned().collect();
        // Grown once, exactly, when the folder grows (the first read above all): growing by
        // doubling would keep up to twice the vectors' size. The splices below go file by file,
        // so the room needed is the largest length reached on the way.
        let mut len = self.all.counts();
        let mut room = len;
        for (path, update) in &updates {
            if let Update::Loaded(_, _, loaded) = update {
                len.add(loaded.counts());
            }
            if let Some(stored) = self.files.get(path) {
                len.sub(stored.2);
            }
            room.max(len);
        }
        self.all.reserve_exact(room);
        let mut at = Counts::default();
        for path in paths {
            let stored = self.files.get(&path).map(|f| f.2).unwrap_or_default();
            match updates.remove(&path) {
                None => at.add(stored),
                Some(Update::Removed) => {
                    self.all.touch(at, stored, &mut self.touched);
                    self.all.splice(at, stored, Loaded::default());
                    self.files.remove(&path);
                }
                Some(Update::Loaded(stamp, print, loaded)) => {
                    let counts = loaded.counts();
                    self.all.touch(at, stored, &mut self.touched);
                    loaded.touch(Counts::default(), counts, &mut self.touched);
                    self.all.splice(at, stored, loaded);
                    at.add(counts);
                    self.files.insert(path, (stamp, print, counts));
                }
            }
        }
        self.all.shrink();
        let mut services = self.all.services.clone();
        services.sort();
        services.dedup();
        self.services = services;
    }

    /// All last good resources (copies: for tests and tools; the translation reads
    /// [`Folder::inputs`]). LocalServices come without their endpoints' labels.
    pub fn resources(&self) -> Resources {
        Resources {
            splits: self.all.splits.clone(),
            policies: self.all.policies.clone(),
            autoscalers: self.all.autoscalers.clone(),
            local_services: self.all.local_services.clone(),
        }
    }

    /// The Services touched by the changes since the last call (see [`crate::incremental`]).
    pub fn take_touched(&mut self) -> crate::incremental::Touched {
        std::mem::take(&mut self.touched)
    }

    /// Every endpoint, made (for tests and tools; the translation asks for those of the
    /// Services it translates, through [`crate::incremental::Source`]).
    pub fn endpoints(&self) -> Vec<EndpointInfo> {
        self.all.endpoints.iter().flat_map(|g| g.infos()).collect()
    }

    /// Every input of a full translation (for tests and tools: it makes every endpoint).
    pub fn translate_all(&self) -> crate::translate::Translation {
        let endpoints = self.endpoints();
        crate::translate::translate(
            &Inputs {
                endpoints: &endpoints,
                ..crate::incremental::Source::inputs(self)
            },
            &Default::default(),
        )
    }
}

impl crate::incremental::Source for Folder {
    /// The splits, policies and services, read in place.
    fn inputs(&self) -> Inputs<'_> {
        Inputs {
            splits: &self.all.splits,
            policies: &self.all.policies,
            services: &self.services,
            endpoints: &[],
            operator_namespace: self.operator_namespace.as_deref(),
        }
    }

    fn endpoint_services(&self) -> Vec<&ServiceKey> {
        self.all.endpoints.iter().map(|g| &g.service).collect()
    }

    fn endpoints_of(&self, wanted: &dyn Fn(&ServiceKey) -> bool) -> Vec<EndpointInfo> {
        self.all
            .endpoints
            .iter()
            .filter(|g| wanted(&g.service))
            .flat_map(|g| g.infos())
            .collect()
    }
}

impl Folder {
    /// The Autoscalers, and the LocalServices (without labels).
    pub fn autoscaling(&self) -> Resources {
        autoscaling_inputs(self.all.autoscalers.iter(), self.all.local_services.iter())
    }
}

fn fingerprint(resources: &Resources) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(resources)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
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

/// Every `*.yaml`/`*.yml` under `dir`, sorted (what [`Folder::refresh`] reads; also `check`).
pub(crate) fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>) {
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
        operator_namespace: None,
    }
}

/// How often the folder is looked at.
const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Watches `dir` until `shutdown`, publishing a new snapshot whenever the translated config
/// changes, and on `loaded` the resources of every accepted state of the folder (what the local
/// Autoscaler loop reads). Refusals are logged once per change of verdict. A `kind: Mesh`
/// ResiliencePolicy is honoured only in `operator_namespace` (`weir-system` by default).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    dir: PathBuf,
    operator_namespace: String,
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
    let mut source = Some(Source {
        folder: Folder {
            operator_namespace: Some(operator_namespace),
            ..Folder::default()
        },
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
                report_verdicts(previous, made);
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

fn report_verdicts(previous: &crate::translate::Translation, made: &[crate::translate::Verdict]) {
    for verdict in made {
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
    fn a_local_service_is_routed_as_one_or_per_port() {
        let local = |spec: &str| {
            let text = format!(
                "apiVersion: weir.dev/v1alpha1\nkind: LocalService\n\
                 metadata: {{name: payments, namespace: shop}}\nspec:\n{spec}"
            );
            let parsed = parse_file("s.yaml", &text).map_err(|e| e.to_string())?;
            services_and_endpoints(&parsed.local_services)
        };
        // Today's files: one route, the declared port only names it.
        let (services, endpoints) =
            local("  port: 8080\n  endpoints:\n    - {address: 127.0.0.1:9101}\n").unwrap();
        assert_eq!(services[0].ports, Ports::One { port: Some(8080) });
        assert_eq!(endpoints[0].port, None);
        // Per port, each with its endpoints.
        let (services, endpoints) = local(
            "  ports:\n    - {name: http, port: 80, endpoints: [{address: 127.0.0.1:9101}]}\n\
             \x20   - {port: 81, endpoints: [{address: 127.0.0.1:9201}, {address: 127.0.0.1:9202}]}\n",
        )
        .unwrap();
        let Ports::Each(ports) = &services[0].ports else {
            panic!("{services:?}");
        };
        assert_eq!(
            ports
                .iter()
                .map(|p| (p.name.as_str(), p.port))
                .collect::<Vec<_>>(),
            [("http", 80), ("", 81)]
        );
        assert_eq!(
            endpoints
                .iter()
                .map(|e| (e.port, e.address.port()))
                .collect::<Vec<_>>(),
            [(Some(80), 9101), (Some(81), 9201), (Some(81), 9202)]
        );
        // Refused, naming the field.
        for (spec, field) in [
            (
                "  port: 80\n  ports:\n    - {port: 80, endpoints: []}\n",
                "spec.port",
            ),
            (
                "  endpoints: [{address: 127.0.0.1:1}]\n  ports:\n    - {port: 80, endpoints: []}\n",
                "spec.endpoints",
            ),
            (
                "  ports:\n    - {port: 80, endpoints: []}\n    - {port: 80, endpoints: []}\n",
                "spec.ports[1]",
            ),
            (
                "  ports:\n    - {port: 0, endpoints: []}\n",
                "spec.ports[0].port",
            ),
            (
                "  ports:\n    - {port: 80, endpoints: [{address: nowhere}]}\n",
                "spec.ports[0].endpoints[0].address",
            ),
            (
                "  ports:\n    - {port: 80, endpoint: []}\n",
                "spec.ports[0]",
            ),
        ] {
            let error = local(spec).unwrap_err();
            assert!(error.contains(&format!("`{field}")), "{spec}: {error}");
        }
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

    fn service_file(names: &[&str], port: u16) -> String {
        names
            .iter()
            .map(|name| {
                format!(
                    "apiVersion: weir.dev/v1alpha1\nkind: LocalService\n\
                     metadata: {{name: {name}, namespace: shop}}\n\
                     spec:\n  endpoints:\n    - {{address: 127.0.0.1:{port}, labels: {{version: v1}}}}\n---\n\
                     apiVersion: weir.dev/v1alpha1\nkind: TrafficSplit\n\
                     metadata: {{name: {name}, namespace: shop}}\n\
                     spec:\n  service: {name}\n  backends:\n    - {{subset: v1, selector: {{version: v1}}, weight: 1}}\n---\n"
                )
            })
            .collect()
    }

    /// The inputs as comparable text (the translation's input types are not all `PartialEq`).
    fn inputs_text(folder: &Folder) -> String {
        let inputs = folder.inputs();
        format!(
            "{}\n{}\n{:?}\n{:?}",
            serde_json::to_string(inputs.splits).unwrap(),
            serde_json::to_string(inputs.policies).unwrap(),
            inputs.services,
            folder.endpoints()
        )
    }

    #[test]
    fn edits_keep_the_stored_inputs_equal_to_a_fresh_read() {
        let dir = std::env::temp_dir().join(format!("weir-local-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.yaml"), service_file(&["a1", "a2"], 9001)).unwrap();
        std::fs::write(dir.join("b.yaml"), service_file(&["b1"], 9002)).unwrap();
        std::fs::write(
            dir.join("sub/c.yaml"),
            service_file(&["c1", "c2", "c3"], 9003),
        )
        .unwrap();
        let mut folder = Folder::default();
        assert!(folder.refresh(&dir));
        let fresh = |dir: &Path| {
            let mut folder = Folder::default();
            folder.refresh(dir);
            inputs_text(&folder)
        };
        assert_eq!(inputs_text(&folder), fresh(&dir));
        assert_eq!(folder.endpoints().len(), 6);
        // The labels live in the endpoints only.
        assert!(
            folder
                .endpoints()
                .iter()
                .all(|e| e.labels.get("version").map(String::as_str) == Some("v1"))
        );
        assert!(
            folder
                .resources()
                .local_services
                .iter()
                .flat_map(|s| &s.spec.endpoints)
                .all(|e| e.labels.is_empty())
        );

        // The middle file grows, the first shrinks, a new one comes before them, the last goes.
        std::fs::write(dir.join("b.yaml"), service_file(&["b1", "b2", "b3"], 9012)).unwrap();
        std::fs::write(dir.join("a.yaml"), service_file(&["a2"], 9011)).unwrap();
        std::fs::write(dir.join("0.yaml"), service_file(&["z1"], 9010)).unwrap();
        std::fs::remove_file(dir.join("sub/c.yaml")).unwrap();
        assert!(folder.refresh(&dir));
        assert_eq!(inputs_text(&folder), fresh(&dir));
        let names: Vec<&str> = folder
            .inputs()
            .splits
            .iter()
            .map(|s| s.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(names, ["z1", "a2", "b1", "b2", "b3"]);

        // Rewritten with the same resources: nothing to translate.
        let text = std::fs::read_to_string(dir.join("b.yaml")).unwrap();
        std::fs::write(dir.join("b.yaml"), format!("# touched\n{text}")).unwrap();
        assert!(!folder.refresh(&dir));

        // A LocalService that does not parse as addresses refuses its file only: its last good
        // resources stay, the other files' edits apply.
        std::fs::write(
            dir.join("b.yaml"),
            service_file(&["b1"], 9012).replace("127.0.0.1:9012", "nowhere"),
        )
        .unwrap();
        std::fs::write(dir.join("0.yaml"), service_file(&["z1", "z2"], 9010)).unwrap();
        assert!(folder.refresh(&dir));
        assert_eq!(folder.inputs().splits.len(), 6);
        assert!(folder.endpoints().iter().any(|e| e.address.port() == 9012));
        std::fs::remove_dir_all(&dir).unwrap();
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
