//! The injection itself: a pure function from a pod (and its namespace's labels) to the RFC 6902
//! JSON Patch that adds Weir's proxy, or to the reason it adds nothing, or to a [`Denial`].
//!
//! # What an injected pod gets
//!
//! - `weir-init`, an init container running `weir-sidecar init` from the *init image* (which
//!   holds iptables; the proxy image does not), with its command set explicitly. It installs
//!   the iptables rules that send the pod's inbound TCP to the proxy's inbound listener (15006)
//!   and its outbound TCP to the outbound listener (15001), except the proxy's own connections
//!   (by its uid, 1337: a uid no common image runs as, unlike distroless's 65532, so an app is
//!   never mistaken for the proxy), the admin port (15020) and what the pod's annotations
//!   exclude. It is the only privileged piece: root with `NET_ADMIN` and `NET_RAW` and nothing
//!   else, read-only root.
//! - `weir-proxy`, the sidecar. On Kubernetes 1.29 and later it is a *native sidecar*: an init
//!   container with `restartPolicy: Always`, placed right after `weir-init` and before the
//!   pod's own init containers, so it starts before them and the app (the kubelet waits for
//!   its startup probe, which asks `/live`: listening, not yet configured, so a pod still
//!   starts while the control plane is away) and stops after the app, which lets Jobs
//!   complete. On older clusters it is a plain container placed first in `containers` (and
//!   `kubectl.kubernetes.io/default-container` keeps `kubectl logs`/`exec` pointing at the
//!   app). There, as in every mesh without native sidecars, a Job's pod does not complete while
//!   the proxy runs, and no proxy runs during the init phase: `weir-init` therefore goes *last*
//!   among the init containers, so the pod's own init containers run before interception is
//!   installed instead of calling into a proxy that is not there yet.
//! - The app containers' probes, rewritten to the proxy's admin listener, which forwards them
//!   to the app unpoliced and uncounted ([`super::probes`]).
//! - `weir-token`, a projected ServiceAccount token for audience `weir`, mounted read-only into
//!   `weir-proxy` alone (not the app) and named by `WEIR_TOKEN_FILE`: the proxy presents it on
//!   every poll of the config API, which checks it by TokenReview and takes the pod's namespace
//!   and name from it. The kubelet renews it before it expires; the proxy reads it anew each poll.
//!   See [`token_volume`] for why the file is readable by uid 1337 whatever the pod's uids.
//! - The annotation `weir.dev/injected: "true"`. A pod that carries it, or that already has a
//!   `weir-proxy` container, is left alone: injecting twice gives no patch.
//!
//! # Decision
//!
//! In order: already injected, or on the host's network (`hostNetwork: true`: interception
//! would rewrite the node's own traffic) → nothing; the pod's `weir.dev/inject` annotation or label
//! `disabled` → nothing; the annotation or label `enabled`, or the namespace label
//! `weir.dev/inject=enabled` → inject; otherwise nothing. A value other than `enabled` or
//! `disabled` is a [`Denial`], as is any bad proxy annotation of a pod that would be injected:
//! the whole request is refused with a message naming every bad annotation and why, never
//! answered with a partial patch. A pod that is not injected is not judged on its proxy
//! annotations.

use super::annotations::{self as a, Inject};
pub use super::containers::token_volume;
use super::containers::{init_container, proxy_container};
use super::probes;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt;

use super::settings::ProxySettings;
pub use super::settings::{
    ADMIN_PORT, BINARY, DEFAULT_CONTAINER, INBOUND_PORT, INIT_CONTAINER, InjectionSettings,
    OUTBOUND_PORT, PROXY_CONTAINER, PROXY_UID, ProxyDefaults, TOKEN_DIR, TOKEN_EXPIRATION_SECONDS,
    TOKEN_PATH, TOKEN_VOLUME,
};

/// The defaults' check lives with the rules it reuses (the annotations').
impl InjectionSettings {
    /// Checks the defaults with the same rules as the annotations; the error names the flag.
    pub fn check(&self) -> Result<(), String> {
        if self.proxy_image.trim().is_empty() {
            return Err("--proxy-image: must name the proxy image".to_owned());
        }
        if self.init_image.trim().is_empty() {
            return Err("--init-image: must name the init image".to_owned());
        }
        if !self.control_plane.starts_with("http://") && !self.control_plane.starts_with("https://")
        {
            return Err(format!(
                "--proxy-control-plane: {:?} must be an http:// URL",
                self.control_plane
            ));
        }
        let no_annotations = BTreeMap::new();
        proxy_settings(&no_annotations, self).map_err(|d| {
            d.problems
                .iter()
                .map(|p| {
                    let flag = p.key.strip_prefix("weir.dev/").unwrap_or(&p.key);
                    format!("--{flag}: {:?} {}", p.value, p.reason)
                })
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        Ok(())
    }
}

/// Why a pod got no patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Neither its namespace nor the pod asked for injection.
    NotSelected,
    /// The pod says `weir.dev/inject: disabled`.
    OptedOut,
    /// It is marked `weir.dev/injected` or already has a `weir-proxy` container.
    AlreadyInjected,
    /// It shares the node's network namespace (`hostNetwork`): interception rules would
    /// redirect the node's own traffic. Never injected, whatever it asks.
    HostNetwork,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NotSelected => "not-selected",
            Skip::OptedOut => "opted-out",
            Skip::AlreadyInjected => "already-injected",
            Skip::HostNetwork => "host-network",
        }
    }
}

/// What [`plan`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Inject {
        patch: json_patch::Patch,
        /// For the API client: e.g. an unknown `weir.dev/proxy-*` annotation (likely a typo).
        warnings: Vec<String>,
    },
    Skip(Skip),
}

/// One bad annotation (or label) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `weir.dev/proxy-memory`, or `weir.dev/inject (label)` for the label.
    pub key: String,
    pub value: String,
    pub reason: String,
}

/// The request is refused: the pod's annotations cannot be honoured as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub problems: Vec<Problem>,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("weir sidecar injection: ")?;
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            match p.key.strip_suffix(" (label)") {
                Some(label) => write!(f, "label {label}: {:?} {}", p.value, p.reason)?,
                None => write!(f, "annotation {}: {:?} {}", p.key, p.value, p.reason)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for Denial {}

/// Injects or not: the patch, or `None` (see [`plan`] for why).
pub fn inject(
    pod: &Pod,
    namespace_labels: &BTreeMap<String, String>,
    settings: &InjectionSettings,
) -> Result<Option<json_patch::Patch>, Denial> {
    Ok(match plan(pod, namespace_labels, settings)? {
        Outcome::Inject { patch, .. } => Some(patch),
        Outcome::Skip(_) => None,
    })
}

/// Decides, validates and builds the patch (see the module doc).
pub fn plan(
    pod: &Pod,
    namespace_labels: &BTreeMap<String, String>,
    settings: &InjectionSettings,
) -> Result<Outcome, Denial> {
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    if already_injected(pod) {
        return Ok(Outcome::Skip(Skip::AlreadyInjected));
    }
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return Ok(Outcome::Skip(Skip::HostNetwork));
    }
    let mut problems = Vec::new();
    let mut choice = |value: Option<&String>, key: String| match value.map(|v| a::inject(v)) {
        None => None,
        Some(Ok(inject)) => Some(inject),
        Some(Err(reason)) => {
            problems.push(Problem {
                key,
                value: value.cloned().unwrap_or_default(),
                reason,
            });
            None
        }
    };
    let by_annotation = choice(annotations.get(a::INJECT), a::INJECT.to_owned());
    let by_label = choice(labels.get(a::INJECT), format!("{} (label)", a::INJECT));
    if !problems.is_empty() {
        return Err(Denial { problems });
    }
    let by_namespace = namespace_labels.get(a::INJECT).map(String::as_str) == Some("enabled");
    if by_annotation == Some(Inject::Disabled) || by_label == Some(Inject::Disabled) {
        return Ok(Outcome::Skip(Skip::OptedOut));
    }
    if !(by_annotation == Some(Inject::Enabled)
        || by_label == Some(Inject::Enabled)
        || by_namespace)
    {
        return Ok(Outcome::Skip(Skip::NotSelected));
    }
    let proxy = proxy_settings(annotations, settings)?;
    let warnings = annotations
        .keys()
        .filter(|k| k.starts_with("weir.dev/proxy-") || k.starts_with("weir.dev/exclude-"))
        .filter(|k| !a::KNOWN.contains(&k.as_str()))
        .map(|k| format!("unknown annotation {k} ignored (known: weir.dev/proxy-cpu, -memory, -cpu-limit, -memory-limit, -log-level, -threads, weir.dev/exclude-*-ports, weir.dev/exclude-outbound-cidrs)"))
        .collect();
    let service = service_name(pod, proxy.service.as_deref());
    let app_port = proxy.app_port.or_else(|| first_container_port(pod));
    let patch = build_patch(pod, settings, &proxy, &service, app_port);
    let patch = serde_json::from_value(Value::Array(patch))
        .expect("the operations built here are valid RFC 6902");
    Ok(Outcome::Inject { patch, warnings })
}

fn already_injected(pod: &Pod) -> bool {
    let marked = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(a::INJECTED))
        .is_some_and(|v| v == "true");
    let spec = pod.spec.as_ref();
    let has_proxy = spec.is_some_and(|s| {
        s.containers.iter().any(|c| c.name == PROXY_CONTAINER)
            || s.init_containers
                .iter()
                .flatten()
                .any(|c| c.name == PROXY_CONTAINER)
    });
    marked || has_proxy
}

fn proxy_settings(
    annotations: &BTreeMap<String, String>,
    settings: &InjectionSettings,
) -> Result<ProxySettings, Denial> {
    let mut problems = Vec::new();
    // Every bad annotation is recorded, so that one denial names them all.
    let read = |key: &str, default: Option<String>| match annotations.get(key) {
        Some(v) => Some(v.trim().to_owned()),
        None => default,
    };
    let defaults = &settings.proxy;
    let resources = [
        (a::PROXY_CPU, "cpu", false, defaults.cpu.clone()),
        (a::PROXY_MEMORY, "memory", false, defaults.memory.clone()),
        (a::PROXY_CPU_LIMIT, "cpu", true, defaults.cpu_limit.clone()),
        (
            a::PROXY_MEMORY_LIMIT,
            "memory",
            true,
            defaults.memory_limit.clone(),
        ),
    ];
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    // resource name → (key, quantity, value) for the request ≤ limit check.
    let mut parsed: BTreeMap<(&str, bool), (&str, String, f64)> = BTreeMap::new();
    for (key, resource, is_limit, default) in resources {
        let Some(value) = read(key, default).filter(|v| !v.is_empty()) else {
            continue;
        };
        match a::quantity(&value) {
            Ok(amount) => {
                parsed.insert((resource, is_limit), (key, value.clone(), amount));
                if is_limit {
                    limits.insert(resource.to_owned(), value);
                } else {
                    requests.insert(resource.to_owned(), value);
                }
            }
            Err(reason) => problems.push(Problem {
                key: key.to_owned(),
                value,
                reason,
            }),
        }
    }
    for resource in ["cpu", "memory"] {
        if let (Some((request_key, request, r)), Some((limit_key, limit, l))) = (
            parsed.get(&(resource, false)),
            parsed.get(&(resource, true)),
        ) && r > l
        {
            // Name the annotation the pod set; with both set (or neither), the limit.
            let (key, value, reason) = if annotations.contains_key(*request_key)
                && !annotations.contains_key(*limit_key)
            {
                (
                    *request_key,
                    request.clone(),
                    format!("is above the proxy's {resource} limit {limit}"),
                )
            } else {
                (
                    *limit_key,
                    limit.clone(),
                    format!("is below the proxy's {resource} request {request}"),
                )
            };
            problems.push(Problem {
                key: key.to_owned(),
                value,
                reason,
            });
        }
    }
    let mut check = |key: &str, f: &dyn Fn(&str) -> Result<(), String>| {
        if let Some(value) = annotations.get(key)
            && let Err(reason) = f(value)
        {
            problems.push(Problem {
                key: key.to_owned(),
                value: value.clone(),
                reason,
            });
        }
    };
    let get = |key: &str| annotations.get(key).map(String::as_str);
    check(a::PROXY_LOG_LEVEL, &|v| a::log_level(v).map(drop));
    check(a::PROXY_THREADS, &|v| a::threads(v).map(drop));
    check(a::EXCLUDE_INBOUND_PORTS, &|v| a::ports(v).map(drop));
    check(a::EXCLUDE_OUTBOUND_PORTS, &|v| a::ports(v).map(drop));
    check(a::EXCLUDE_OUTBOUND_CIDRS, &|v| a::ipv4_cidrs(v).map(drop));
    check(a::APP_PORT, &|v| a::port(v).map(drop));
    check(a::SERVICE, &|v| a::service(v).map(drop));
    let mut defaults_problems = Vec::new();
    let log_level = match get(a::PROXY_LOG_LEVEL) {
        Some(v) => a::log_level(v).unwrap_or_default(),
        None => match a::log_level(&defaults.log_level) {
            Ok(level) => level,
            Err(reason) => {
                defaults_problems.push(Problem {
                    key: a::PROXY_LOG_LEVEL.to_owned(),
                    value: defaults.log_level.clone(),
                    reason,
                });
                String::new()
            }
        },
    };
    if !(1..=64).contains(&defaults.threads) {
        defaults_problems.push(Problem {
            key: a::PROXY_THREADS.to_owned(),
            value: defaults.threads.to_string(),
            reason: "must be a whole number of threads from 1 to 64".to_owned(),
        });
    }
    problems.extend(defaults_problems);
    if !problems.is_empty() {
        return Err(Denial { problems });
    }
    Ok(ProxySettings {
        requests,
        limits,
        log_level,
        threads: get(a::PROXY_THREADS)
            .and_then(|v| a::threads(v).ok())
            .unwrap_or(defaults.threads),
        exclude_inbound_ports: get(a::EXCLUDE_INBOUND_PORTS)
            .and_then(|v| a::ports(v).ok())
            .unwrap_or_default(),
        exclude_outbound_ports: get(a::EXCLUDE_OUTBOUND_PORTS)
            .and_then(|v| a::ports(v).ok())
            .unwrap_or_default(),
        exclude_outbound_cidrs: get(a::EXCLUDE_OUTBOUND_CIDRS)
            .and_then(|v| a::ipv4_cidrs(v).ok())
            .unwrap_or_default(),
        app_port: get(a::APP_PORT).and_then(|v| a::port(v).ok()),
        service: get(a::SERVICE).and_then(|v| a::service(v).ok()),
    })
}

/// The name the proxy reports as its service: the `weir.dev/service` annotation, else the
/// `app.kubernetes.io/name` or `app` label, else the owner's name (a ReplicaSet's without its
/// `pod-template-hash`, so a Deployment's pods say the Deployment's name), else the
/// `generateName` prefix, else the pod's name.
pub fn service_name(pod: &Pod, annotated: Option<&str>) -> String {
    if let Some(name) = annotated {
        return name.to_owned();
    }
    let meta = &pod.metadata;
    let labels = meta.labels.as_ref();
    let label = |key: &str| {
        labels
            .and_then(|l| l.get(key))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    if let Some(name) = label("app.kubernetes.io/name").or_else(|| label("app")) {
        return name;
    }
    let hash = label("pod-template-hash");
    let strip_hash = |name: &str| -> String {
        match &hash {
            Some(hash) => name
                .strip_suffix(hash.as_str())
                .and_then(|n| n.strip_suffix('-'))
                .unwrap_or(name)
                .to_owned(),
            None => name.to_owned(),
        }
    };
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    let owner = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first());
    if let Some(owner) = owner {
        return if owner.kind == "ReplicaSet" {
            strip_hash(&owner.name)
        } else {
            owner.name.clone()
        };
    }
    if let Some(prefix) = meta.generate_name.as_deref() {
        let prefix = prefix.trim_end_matches('-');
        if !prefix.is_empty() {
            return strip_hash(prefix);
        }
    }
    meta.name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn first_container_port(pod: &Pod) -> Option<u16> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find_map(|p| u16::try_from(p.container_port).ok().filter(|p| *p != 0))
}

fn build_patch(
    pod: &Pod,
    settings: &InjectionSettings,
    proxy: &ProxySettings,
    service: &str,
    app_port: Option<u16>,
) -> Vec<Value> {
    let spec = pod.spec.as_ref();
    // The probe rewrites name containers by their index in the admitted pod: they go first,
    // before a plain-container proxy shifts the indices.
    let probes = probes::rewrite(pod, &proxy.exclude_inbound_ports);
    let mut ops = probes.ops.clone();
    let init = init_container(settings, proxy);
    let sidecar = proxy_container(settings, proxy, service, app_port, probes.env_value());
    let value = |c: &Container| serde_json::to_value(c).expect("a Container serializes");
    let has_init = spec.is_some_and(|s| s.init_containers.is_some());
    if settings.native_sidecars {
        // weir-init, then weir-proxy, then the pod's own init containers: those run with the
        // proxy up, so their calls go through it like the app's.
        if has_init {
            ops.push(add("/spec/initContainers/0", value(&sidecar)));
            ops.push(add("/spec/initContainers/0", value(&init)));
        } else {
            ops.push(add(
                "/spec/initContainers",
                json!([value(&init), value(&sidecar)]),
            ));
        }
    } else {
        // Without native sidecars no proxy runs during the init phase, so weir-init goes
        // last: the pod's own init containers run before interception is installed.
        if has_init {
            ops.push(add("/spec/initContainers/-", value(&init)));
        } else {
            ops.push(add("/spec/initContainers", json!([value(&init)])));
        }
        ops.push(add("/spec/containers/0", value(&sidecar)));
    }
    let volume = serde_json::to_value(token_volume()).expect("a Volume serializes");
    if spec.is_some_and(|s| s.volumes.is_some()) {
        ops.push(add("/spec/volumes/-", volume));
    } else {
        ops.push(add("/spec/volumes", json!([volume])));
    }
    let annotations = pod.metadata.annotations.as_ref();
    let mut new_annotations = vec![(a::INJECTED.to_owned(), "true".to_owned())];
    if !settings.native_sidecars
        && annotations.is_none_or(|a| !a.contains_key(DEFAULT_CONTAINER))
        && let Some(first) = spec.and_then(|s| s.containers.first())
    {
        new_annotations.push((DEFAULT_CONTAINER.to_owned(), first.name.clone()));
    }
    match annotations {
        Some(_) => {
            for (key, value) in new_annotations {
                ops.push(add(
                    &format!("/metadata/annotations/{}", escape(&key)),
                    json!(value),
                ));
            }
        }
        None => {
            let map: serde_json::Map<String, Value> = new_annotations
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            ops.push(add("/metadata/annotations", Value::Object(map)));
        }
    }
    ops
}

fn add(path: &str, value: Value) -> Value {
    json!({"op": "add", "path": path, "value": value})
}

/// RFC 6901: `~` → `~0`, `/` → `~1`.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}
