//! The sidecar injection webhook: a mutating admission webhook, served by the operator over
//! HTTPS, that adds Weir's proxy to the pods that ask for it.
//!
//! - [`annotations`]: the pod annotations (`weir.dev/proxy-cpu` …) and their checks.
//! - [`inject`](mod@inject): the pure function pod → JSON Patch (or why not, or a denial naming
//!   the bad annotation); what an injected pod looks like is documented there.
//! - [`containers`]: the containers and the token volume that patch adds.
//! - [`probes`]: the app's probes rewritten to the sidecar's admin listener, so that no inbound
//!   policy ever fails them.
//! - [`admission`]: `POST /inject`, AdmissionReview v1 in and out (kube's types), and which pods
//!   reach it.
//! - [`certs`]: the self-managed CA and serving certificate (rcgen) and the pure rotation plan.
//! - [`secret`]: keeps those in a Secret shared by the replicas and the CA in the
//!   MutatingWebhookConfiguration's `caBundle`.
//! - [`tls`]: the certificate being served, swapped without a restart; the mounted-files keeper
//!   (cert-manager mode).
//! - [`server`]: the HTTPS server (tokio-rustls with ring, on the operator's accept loop).
//!
//! [`run`] puts them together from [`WebhookArgs`], the flags of `weir-operator run`.
//!
//! # TLS modes
//!
//! With `--webhook-cert-dir DIR` (the chart sets it when `webhook.certManager.enabled`),
//! cert-manager issues the certificate into a Secret mounted at DIR, its CA injector fills the
//! `caBundle`, and the operator only reads `tls.crt`/`tls.key`, again whenever they change.
//! Without it, the operator is its own CA ([`secret`]): it needs get/create/update on its
//! Secret and get/patch on the MutatingWebhookConfiguration, which the chart grants.

pub mod admission;
pub mod annotations;
pub mod certs;
pub mod containers;
pub mod inject;
pub mod probes;
pub mod secret;
pub mod server;
pub mod settings;
pub mod tls;

pub use inject::{Denial, InjectionSettings, Outcome, ProxyDefaults, Skip, inject, plan};
pub use server::serve;

pub(crate) use crate::shutdown::stopped;
use k8s_openapi::apimachinery::pkg::version::Info;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The injection webhook's flags of `weir-operator run` (flatten them into its arguments).
/// Every flag has a `WEIR_*` environment equivalent.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// Serve the sidecar injection webhook (HTTPS) here, e.g. 0.0.0.0:9443; no webhook when
    /// absent.
    #[arg(long, env = "WEIR_WEBHOOK_LISTEN")]
    pub webhook_listen: Option<SocketAddr>,
    /// cert-manager mode: serve tls.crt and tls.key from this folder (a mounted Secret),
    /// reloaded when they change. Without it the operator makes, stores and rotates its own CA.
    #[arg(long, env = "WEIR_WEBHOOK_CERT_DIR")]
    pub webhook_cert_dir: Option<PathBuf>,
    /// Self-managed mode: the Secret (in the operator's namespace) holding the CA and the
    /// serving certificate.
    #[arg(long, env = "WEIR_WEBHOOK_SECRET", default_value = "weir-webhook-tls")]
    pub webhook_secret: String,
    /// The MutatingWebhookConfiguration whose caBundle the operator keeps (self-managed mode).
    #[arg(
        long,
        env = "WEIR_WEBHOOK_CONFIG",
        default_value = "weir-sidecar-injector"
    )]
    pub webhook_config: String,
    /// The Service the API server calls the webhook through: the serving certificate names
    /// `<service>.<namespace>.svc`.
    #[arg(
        long,
        env = "WEIR_WEBHOOK_SERVICE",
        default_value = "weir-operator-webhook"
    )]
    pub webhook_service: String,
    /// The namespace of that Service and of the Secret (default: this pod's, else the
    /// client's).
    #[arg(long, env = "WEIR_WEBHOOK_NAMESPACE")]
    pub webhook_namespace: Option<String>,
    /// Inject the proxy as a native sidecar (an init container with restartPolicy Always,
    /// Kubernetes ≥ 1.29) or as a plain container; auto asks the API server's version at start.
    #[arg(long, env = "WEIR_NATIVE_SIDECARS", value_enum, default_value_t = NativeSidecars::Auto)]
    pub native_sidecars: NativeSidecars,
    /// The proxy's image (the `weir-proxy` container; runs as uid 1337).
    #[arg(long, env = "WEIR_PROXY_IMAGE", default_value = concat!("ghcr.io/weir-mesh/weir-sidecar:", env!("CARGO_PKG_VERSION")))]
    pub proxy_image: String,
    /// The init image (the `weir-init` container, which runs `weir-sidecar init`: it holds
    /// iptables, the proxy image does not).
    #[arg(long, env = "WEIR_INIT_IMAGE", default_value = concat!("ghcr.io/weir-mesh/weir-init:", env!("CARGO_PKG_VERSION")))]
    pub init_image: String,
    /// imagePullPolicy of the injected containers (the cluster's default when absent).
    #[arg(long, env = "WEIR_PROXY_IMAGE_PULL_POLICY")]
    pub proxy_image_pull_policy: Option<String>,
    /// The config API injected proxies poll (default:
    /// http://weir-operator.<namespace>.svc:15010).
    #[arg(long, env = "WEIR_PROXY_CONTROL_PLANE")]
    pub proxy_control_plane: Option<String>,
    /// Default CPU request of a proxy (empty: none); `weir.dev/proxy-cpu` overrides it.
    #[arg(long, env = "WEIR_PROXY_CPU", default_value = "10m")]
    pub proxy_cpu: String,
    /// Default memory request (`weir.dev/proxy-memory`).
    #[arg(long, env = "WEIR_PROXY_MEMORY", default_value = "16Mi")]
    pub proxy_memory: String,
    /// Default CPU limit (`weir.dev/proxy-cpu-limit`; empty: none).
    #[arg(long, env = "WEIR_PROXY_CPU_LIMIT", default_value = "")]
    pub proxy_cpu_limit: String,
    /// Default memory limit (`weir.dev/proxy-memory-limit`).
    #[arg(long, env = "WEIR_PROXY_MEMORY_LIMIT", default_value = "64Mi")]
    pub proxy_memory_limit: String,
    /// Default worker threads of a proxy (`weir.dev/proxy-threads`).
    #[arg(long, env = "WEIR_PROXY_THREADS", default_value_t = 1)]
    pub proxy_threads: u16,
    /// Default log filter of a proxy (`weir.dev/proxy-log-level`).
    #[arg(long, env = "WEIR_PROXY_LOG_LEVEL", default_value = "info")]
    pub proxy_log_level: String,
}

/// `--native-sidecars`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NativeSidecars {
    Auto,
    True,
    False,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Settings(String),
    #[error("cannot listen on {addr} (--webhook-listen): {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

impl WebhookArgs {
    /// The injection settings these flags describe, checked (the error names the flag).
    pub fn injection_settings(
        &self,
        native_sidecars: bool,
        namespace: &str,
    ) -> Result<InjectionSettings, Error> {
        let optional = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        let settings = InjectionSettings {
            proxy_image: self.proxy_image.clone(),
            init_image: self.init_image.clone(),
            image_pull_policy: self.proxy_image_pull_policy.clone(),
            control_plane: self
                .proxy_control_plane
                .clone()
                .unwrap_or_else(|| format!("http://weir-operator.{namespace}.svc:15010")),
            native_sidecars,
            proxy: ProxyDefaults {
                cpu: optional(&self.proxy_cpu),
                memory: optional(&self.proxy_memory),
                cpu_limit: optional(&self.proxy_cpu_limit),
                memory_limit: optional(&self.proxy_memory_limit),
                threads: self.proxy_threads,
                log_level: self.proxy_log_level.clone(),
            },
        };
        settings.check().map_err(Error::Settings)?;
        Ok(settings)
    }
}

/// Whether an API server of this version runs native sidecars by default (beta and on in
/// 1.29; alpha behind a gate in 1.28). `None` when the version does not parse.
pub fn supports_native_sidecars(version: &Info) -> Option<bool> {
    let number = |s: &str| -> Option<u32> {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    let (major, minor) = match (number(&version.major), number(&version.minor)) {
        (Some(major), Some(minor)) => (major, minor),
        // Some distributions leave major/minor empty: read gitVersion (v1.29.3-gke.1).
        _ => {
            let git = version.git_version.trim_start_matches('v');
            let mut parts = git.split('.');
            (number(parts.next()?)?, number(parts.next()?)?)
        }
    };
    Some(major > 1 || (major == 1 && minor >= 29))
}

/// `--native-sidecars auto`: asks the API server; a version that cannot be read means plain
/// containers (they work everywhere), with a warning.
pub async fn detect_native_sidecars(client: &kube::Client) -> bool {
    for attempt in 1..=3 {
        match client.apiserver_version().await {
            Ok(version) => {
                let native = supports_native_sidecars(&version);
                tracing::info!(version = %version.git_version, native_sidecars = ?native,
                    "injection: API server version");
                return native.unwrap_or(false);
            }
            Err(e) if attempt < 3 => {
                tracing::warn!(error = %e, "injection: cannot read the API server version; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e,
                    "injection: cannot read the API server version; injecting plain containers");
            }
        }
    }
    false
}

/// Runs the webhook as `args` say, until shutdown: nothing when `--webhook-listen` is absent.
/// `leader`, when given, restricts writing the self-managed Secret and caBundle to the leader
/// (without it every replica may write, optimistically; see [`secret`]). `admissions` counts
/// the requests answered (`weir_webhook_admissions_total{result}`). `serving` turns true
/// once a certificate is loaded — at once without a webhook —, for the operator's readiness: a
/// replica without one would fail the API server's calls, and with `failurePolicy: Fail` refuse
/// pods.
pub async fn run(
    client: kube::Client,
    args: WebhookArgs,
    leader: Option<watch::Receiver<bool>>,
    serving: Arc<std::sync::atomic::AtomicBool>,
    admissions: Option<prometheus::IntCounterVec>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let Some(addr) = args.webhook_listen else {
        serving.store(true, std::sync::atomic::Ordering::Release);
        return Ok(());
    };
    let namespace = args
        .webhook_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let native = match args.native_sidecars {
        NativeSidecars::True => true,
        NativeSidecars::False => false,
        NativeSidecars::Auto => detect_native_sidecars(&client).await,
    };
    let settings = Arc::new(args.injection_settings(native, &namespace)?);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|error| Error::Listen { addr, error })?;
    let cert = tls::ServingCert::new();
    let mut loaded = cert.loaded();
    tokio::spawn(async move {
        if loaded.wait_for(|l| *l).await.is_ok() {
            serving.store(true, std::sync::atomic::Ordering::Release);
        }
    });
    let keeper = match args.webhook_cert_dir.clone() {
        Some(dir) => tokio::spawn(tls::watch_files(dir, cert.clone(), shutdown.clone())),
        None => {
            let keeper = secret::SecretKeeper {
                client,
                dns_names: secret::SecretKeeper::dns_names_for(&args.webhook_service, &namespace),
                namespace,
                secret: args.webhook_secret.clone(),
                webhook_config: args.webhook_config.clone(),
                leader,
            };
            tokio::spawn(keeper.keep(cert.clone(), shutdown.clone()))
        }
    };
    tracing::info!(%addr, native_sidecars = native, proxy_image = %settings.proxy_image,
        init_image = %settings.init_image,
        control_plane = %settings.control_plane, "injection webhook starting");
    let served = serve(listener, cert, settings, admissions, shutdown).await;
    let _ = keeper.await;
    served.map_err(Error::from)
}
