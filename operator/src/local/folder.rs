//! Reading the folder: which files changed since the last look (by size, modification time
//! and inode, then content), and every file's last good resources, stored once.

use super::{FileError, Resources, parse_file, services_and_endpoints};
use crate::snapshot::ServiceKey;
use crate::translate::{EndpointInfo, Inputs, ServiceInfo};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use weir_crds::{Autoscaler, LocalService, ResiliencePolicy, TrafficSplit};
use weir_proxy_api::FileStamp;

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
///   ([`crate::incremental::Source::inputs`] lends them to the translation without a copy); a changed file's part is
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
    files: BTreeMap<PathBuf, (FileStamp, u64, Counts)>,
    /// Files whose current text is refused, so the error is logged once per change.
    refused: HashMap<PathBuf, FileStamp>,
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

/// The six kinds [`Loaded`] stores and [`Counts`] counts, named once: `each_kind!(one)` runs
/// `one!(kind)` for each. A macro, since they are fields of different types.
macro_rules! each_kind {
    ($one:ident) => {
        $one!(splits);
        $one!(policies);
        $one!(autoscalers);
        $one!(local_services);
        $one!(services);
        $one!(endpoints);
    };
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
    /// Each kind's count becomes `op` of it and `other`'s.
    fn combine(&mut self, other: Counts, op: fn(usize, usize) -> usize) {
        macro_rules! one {
            ($kind:ident) => {
                self.$kind = op(self.$kind, other.$kind)
            };
        }
        each_kind!(one);
    }

    fn add(&mut self, other: Counts) {
        self.combine(other, |a, b| a + b);
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
        macro_rules! one {
            ($kind:ident) => {
                self.$kind
                    .reserve_exact(total.$kind.saturating_sub(self.$kind.len()))
            };
        }
        each_kind!(one);
    }

    /// Replaces the `remove` items of each kind starting at `at` with `with`'s.
    fn splice(&mut self, at: Counts, remove: Counts, with: Loaded) {
        macro_rules! one {
            ($kind:ident) => {
                self.$kind
                    .splice(at.$kind..at.$kind + remove.$kind, with.$kind)
            };
        }
        each_kind!(one);
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
        let mut counts = Counts::default();
        macro_rules! one {
            ($kind:ident) => {
                counts.$kind = self.$kind.len()
            };
        }
        each_kind!(one);
        counts
    }

    /// Vectors grown while parsing keep up to twice their length: give the rest back.
    fn shrink(&mut self) {
        macro_rules! one {
            ($kind:ident) => {
                self.$kind.shrink_to_fit()
            };
        }
        each_kind!(one);
    }
}

/// What a refresh found for one file: new resources, or gone.
enum Update {
    Loaded(FileStamp, u64, Loaded),
    Removed,
}

impl Folder {
    /// Re-reads what changed under `dir`; returns true when the resources changed.
    pub fn refresh(&mut self, dir: &Path) -> bool {
        let mut found = Vec::new();
        collect_yaml(dir, &mut found);
        // A link whose file is gone (a linked folder's file deleted) is a deleted file.
        let stamped: BTreeMap<PathBuf, FileStamp> = found
            .into_iter()
            .filter_map(|path| {
                let meta = std::fs::metadata(&path).ok()?;
                Some((path, FileStamp::of(&meta)))
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
                len.combine(stored.2, |a, b| a - b);
            }
            room.combine(len, usize::max);
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
    /// [`crate::incremental::Source::inputs`]). LocalServices come without their endpoints' labels.
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
