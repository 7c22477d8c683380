//! What is the same for every injected pod: the names and ports of the pieces an injected pod
//! gets, the operator-wide settings (from its flags) and a pod's validated proxy settings.
//! The types only, so that the container builders ([`super::containers`]), the probe rewriting
//! ([`super::probes`]) and the decision ([`super::inject`]) all depend on this module and not
//! on each other; [`super::inject`] validates them.

use std::collections::BTreeMap;

/// The sidecar's container name.
pub const PROXY_CONTAINER: &str = "weir-proxy";
/// The interception init container's name.
pub const INIT_CONTAINER: &str = "weir-init";
/// The uid (and gid) the proxy runs as; its own connections are not intercepted. The proxy
/// image is built for it too.
pub const PROXY_UID: i64 = 1337;
/// Where both images keep the sidecar binary: the injected containers name it explicitly, so
/// that neither depends on an image's entrypoint.
pub const BINARY: &str = "/weir-sidecar";
/// The proxy's inbound listener, where intercepted inbound connections go.
pub const INBOUND_PORT: u16 = 15006;
/// The proxy's outbound listener, where intercepted outbound connections go.
pub const OUTBOUND_PORT: u16 = 15001;
/// The proxy's admin listener (`/ready`, `/live`, `/metrics`): never intercepted.
pub const ADMIN_PORT: u16 = 15020;
/// The volume holding the proxy's projected ServiceAccount token.
pub const TOKEN_VOLUME: &str = "weir-token";
/// Where `weir-proxy` sees that volume (beside, not over, the app's own ServiceAccount mount).
pub const TOKEN_DIR: &str = "/var/run/secrets/weir.dev/serviceaccount";
/// The token file inside [`TOKEN_DIR`], given to the proxy as `WEIR_TOKEN_FILE`.
pub const TOKEN_PATH: &str = "token";
/// The token's lifetime: short, since the kubelet renews it at 80% of its life (and the API
/// server's minimum is 600 s).
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3600;
/// The annotation kubectl reads to pick a pod's default container.
pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// Everything about injection that is the same for every pod: set by the operator's flags.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectionSettings {
    /// The proxy's image (`weir-proxy`).
    pub proxy_image: String,
    /// The init image (`weir-init`): the sidecar binary plus the iptables it runs.
    pub init_image: String,
    /// `imagePullPolicy` of both containers; the cluster's default when absent.
    pub image_pull_policy: Option<String>,
    /// The config API the proxies poll, e.g. `http://weir-operator.weir-system.svc:15010`.
    pub control_plane: String,
    /// Native sidecars (Kubernetes ≥ 1.29) or a plain container.
    pub native_sidecars: bool,
    /// Default proxy resources and settings, overridden per pod by annotations.
    pub proxy: ProxyDefaults,
}

/// The proxy's defaults: what a pod without annotations gets.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyDefaults {
    pub cpu: Option<String>,
    pub memory: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
    pub threads: u16,
    pub log_level: String,
}

impl Default for ProxyDefaults {
    /// The chart's `proxy.resources` defaults.
    fn default() -> Self {
        Self {
            cpu: Some("10m".to_owned()),
            memory: Some("16Mi".to_owned()),
            cpu_limit: None,
            memory_limit: Some("64Mi".to_owned()),
            threads: 1,
            log_level: "info".to_owned(),
        }
    }
}

impl InjectionSettings {
    pub fn new(
        proxy_image: impl Into<String>,
        init_image: impl Into<String>,
        control_plane: impl Into<String>,
    ) -> Self {
        Self {
            proxy_image: proxy_image.into(),
            init_image: init_image.into(),
            image_pull_policy: None,
            control_plane: control_plane.into(),
            native_sidecars: true,
            proxy: ProxyDefaults::default(),
        }
    }
}

/// What the annotations (over the defaults) ask of this pod's proxy, all validated.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ProxySettings {
    pub(super) requests: BTreeMap<String, String>,
    pub(super) limits: BTreeMap<String, String>,
    pub(super) log_level: String,
    pub(super) threads: u16,
    pub(super) exclude_inbound_ports: Vec<u16>,
    pub(super) exclude_outbound_ports: Vec<u16>,
    pub(super) exclude_outbound_cidrs: Vec<String>,
    pub(super) app_port: Option<u16>,
    pub(super) service: Option<String>,
}
