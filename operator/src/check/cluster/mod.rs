//! `weir-operator check` in a cluster: what the kubeconfig (or in-cluster config, as `run` gets
//! it) can see, read-only.
//!
//! - [`control_plane`]: the CRDs against the ones compiled into this binary, the operator
//!   Deployment (found by the chart's labels, in any namespace), its Lease, and the injection
//!   webhook (the MutatingWebhookConfiguration whose entries are `*.inject.weir.dev`).
//! - [`workloads`]: pods that should carry the sidecar and do not, sidecars the operator does
//!   not know or that run another proxy image than it injects, then the TrafficSplits,
//!   ResiliencePolicies and Autoscalers.
//!
//! # How the webhook is judged
//!
//! Two questions, answered each where it can be answered from a laptop:
//! - *Reachable*: a GET through the API server's service proxy
//!   (`/api/v1/namespaces/NS/services/https:NAME:PORT/proxy/PATH`) travels the path the API
//!   server's admission calls travel (API server → Service → a ready pod). Any HTTP answer of the
//!   webhook counts; the API server's own `Status` error (no endpoints, connection refused,
//!   timeout) does not. A direct connection was not chosen: the Service's address is reachable
//!   only from inside the cluster, and from inside it would prove less (a pod's network, not the
//!   API server's).
//! - *Valid certificate*: the service proxy does not verify the backend's certificate, so the
//!   certificate is read where every replica loads it from — the Secret named by the operator's
//!   `--webhook-secret` (self-managed CA) or mounted at its `--webhook-cert-dir` (cert-manager) —
//!   and the configuration's `caBundle` must verify it for `NAME.NS.svc` now ([`super::tls`]).
//!   A replica still serving an older certificate than the Secret's is not seen; both keepers
//!   reload the Secret within a minute.
//!
//! Every API call is bounded by [`Settings::timeout`]; an answer refused for lack of rights
//! (403) becomes a warning saying what could not be checked, never a crash or a false "ok".

mod control_plane;
mod workloads;

use super::{Finding, Group, Report, Severity};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Container;
use kube::api::{Api, ListParams};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::time::Duration;

/// What a cluster check looks at.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Check pods, proxies and resources of this namespace only (the control plane is always
    /// checked wherever it is).
    pub namespace: Option<String>,
    /// The longest any one API call may take.
    pub timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespace: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// The label selector of the chart's operator Deployment.
pub const OPERATOR_SELECTOR: &str =
    "app.kubernetes.io/name=weir,app.kubernetes.io/component=operator";

/// Runs every cluster check with the client `config` makes (a config that could not be
/// inferred is the one finding).
pub async fn check_with_config<E: std::fmt::Display>(
    config: Result<kube::Config, E>,
    settings: &Settings,
) -> Report {
    let client = config.map_err(|e| e.to_string()).and_then(|mut config| {
        config.connect_timeout = Some(settings.timeout);
        config.read_timeout = Some(settings.timeout);
        // kube retries 503s with backoff by default; a 503 of the service proxy is what the
        // webhook check looks for, and a check reports what it sees, in bounded time.
        config.default_retry = false;
        kube::Client::try_from(config).map_err(|e| e.to_string())
    });
    match client {
        Ok(client) => check(client, settings).await,
        Err(e) => api_unreachable(
            format!("no client configuration: {e}"),
            "set KUBECONFIG or a current context (kubectl config current-context), or run in a pod; use --dir to check a local folder",
        ),
    }
}

/// The report of a run that could not talk to the API server at all.
fn api_unreachable(message: String, hint: &str) -> Report {
    Report::new(
        vec![Group::Cluster],
        vec![Finding::new(
            Severity::Error,
            Group::Cluster,
            "ApiUnreachable",
            "Kubernetes API",
            message,
            hint,
        )],
    )
}

/// Runs every cluster check with `client` (build it without kube's default retries, as
/// [`check_with_config`] does, or a webhook the API server cannot reach takes retries to tell).
pub async fn check(client: kube::Client, settings: &Settings) -> Report {
    let checked = vec![
        Group::Cluster,
        Group::Crds,
        Group::Operator,
        Group::Webhook,
        Group::Injection,
        Group::Proxies,
        Group::Resources,
        Group::Autoscalers,
    ];
    let cluster = Cluster {
        client,
        timeout: settings.timeout,
    };
    if let Err(e) = cluster.bounded(cluster.client.apiserver_version()).await {
        return api_unreachable(
            format!("cannot reach it: {e}"),
            "check the kubeconfig's current context (kubectl cluster-info), or KUBECONFIG",
        );
    }
    let mut findings = control_plane::crds(&cluster).await;
    let operators = control_plane::operators(&cluster, &mut findings).await;
    findings.extend(control_plane::webhook(&cluster, &operators).await);
    findings.extend(workloads::check(&cluster, settings.namespace.as_deref(), &operators).await);
    Report::new(checked, findings)
}

/// The client and the bound on each call.
#[derive(Clone)]
pub(crate) struct Cluster {
    pub client: kube::Client,
    pub timeout: Duration,
}

/// Why a call failed, sorted so callers can word it.
#[derive(Debug)]
pub(crate) enum CallError {
    NotFound,
    Forbidden(String),
    Other(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound => f.write_str("not found"),
            Self::Forbidden(m) => write!(f, "forbidden: {m}"),
            Self::Other(m) => f.write_str(m),
        }
    }
}

impl Cluster {
    /// `call` within the timeout, its error sorted.
    pub async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, CallError> {
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(CallError::Other(format!(
                "no answer within {}s",
                self.timeout.as_secs()
            ))),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(kube::Error::Api(status))) if status.code == 404 => Err(CallError::NotFound),
            Ok(Err(kube::Error::Api(status))) if status.code == 403 => {
                Err(CallError::Forbidden(status.message.clone()))
            }
            Ok(Err(e)) => Err(CallError::Other(e.to_string())),
        }
    }

    /// Every object of `api` matching `selector` (empty: all).
    pub async fn list<K>(&self, api: &Api<K>, selector: &str) -> Result<Vec<K>, CallError>
    where
        K: kube::Resource + Clone + DeserializeOwned + Debug,
    {
        let params = if selector.is_empty() {
            ListParams::default()
        } else {
            ListParams::default().labels(selector)
        };
        Ok(self.bounded(api.list(&params)).await?.items)
    }

    /// `Api::all` or `Api::namespaced`, as `namespace` says.
    pub fn api<K>(&self, namespace: Option<&str>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        match namespace {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        }
    }
}

/// A warning that something could not be checked (and why), for `group`.
pub(crate) fn unchecked(group: Group, what: &str, error: &CallError) -> Finding {
    let hint = match error {
        CallError::Forbidden(_) => {
            "run check with rights to read it (kubectl auth can-i --list), or as a cluster admin"
        }
        _ => "run check again; if it persists, look at the API server's health",
    };
    Finding::new(
        Severity::Warning,
        group,
        "NotChecked",
        what,
        format!("could not be read, so it was not checked: {error}"),
        hint,
    )
}

/// One operator Deployment and what its container's flags say.
#[derive(Debug, Clone)]
pub(crate) struct Operator {
    pub namespace: String,
    pub name: String,
    pub deployment: Deployment,
    pub container: Container,
}

impl Operator {
    fn new(deployment: Deployment) -> Option<Self> {
        let spec = deployment.spec.as_ref()?.template.spec.as_ref()?;
        let container = spec
            .containers
            .iter()
            .find(|c| c.name == "operator")
            .or_else(|| spec.containers.first())?
            .clone();
        Some(Self {
            namespace: deployment.metadata.namespace.clone().unwrap_or_default(),
            name: deployment.metadata.name.clone().unwrap_or_default(),
            deployment,
            container,
        })
    }

    /// The value of `--flag` (`--flag=value` or `--flag value`) in the container's args, else
    /// of the environment variable `env` set with a plain value.
    pub fn setting(&self, flag: &str, env: &str) -> Option<String> {
        let args = self.container.args.iter().flatten();
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            if let Some(value) = arg.strip_prefix(flag) {
                if let Some(value) = value.strip_prefix('=') {
                    return Some(value.to_owned());
                }
                if value.is_empty() {
                    return args.next().cloned();
                }
            }
        }
        self.container
            .env
            .iter()
            .flatten()
            .find(|e| e.name == env)
            .and_then(|e| e.value.clone())
    }

    /// The port of the admin listener: the container port named `admin`, else `--admin`'s,
    /// else 15011.
    pub fn admin_port(&self) -> u16 {
        self.container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("admin"))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .or_else(|| {
                self.setting("--admin", "WEIR_ADMIN")
                    .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                    .map(|a| a.port())
            })
            .unwrap_or(15011)
    }

    /// `matchLabels` of its selector as a label selector.
    pub fn pod_selector(&self) -> String {
        self.deployment
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.as_ref())
            .map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    }
}
