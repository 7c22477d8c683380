//! The containers and the volume an injected pod gets: `weir-init`, `weir-proxy` (with its
//! probes, resources, security context and arguments) and the token volume, built from the
//! validated `ProxySettings`. [`super::inject`](mod@super::inject) decides whether a pod gets
//! them and assembles the patch; what an injected pod looks like is documented there.

use super::probes;
use super::settings::{
    ADMIN_PORT, BINARY, INBOUND_PORT, INIT_CONTAINER, InjectionSettings, OUTBOUND_PORT,
    PROXY_CONTAINER, PROXY_UID, ProxySettings, TOKEN_DIR, TOKEN_EXPIRATION_SECONDS, TOKEN_PATH,
    TOKEN_VOLUME,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// The proxy's token: a projected ServiceAccount token (audience
/// [`crate::kubernetes::token_review::AUDIENCE`]) bound to the pod, so it dies with it.
///
/// Who can read it: the kubelet (`pkg/volume/projected`) writes a token file with mode 0600 when
/// the pod has an fsGroup or when every container runs as one same uid (its `FsUser`), and with
/// the volume's `defaultMode` otherwise. An injected pod never has one uid for every container
/// (`weir-init` runs as 0, `weir-proxy` as 1337), so `FsUser` is never set and, without
/// fsGroup, the file gets `defaultMode`: 0644 here, readable by 1337 whatever owns it. With an
/// fsGroup the kubelet gives the file that group and makes it 0640, and the fsGroup is among
/// every container's supplementary groups, the proxy's included: readable again. Only
/// `weir-proxy` mounts the volume, so the app never sees this token.
pub fn token_volume() -> Volume {
    Volume {
        name: TOKEN_VOLUME.to_owned(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o644),
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(crate::kubernetes::token_review::AUDIENCE.to_owned()),
                    expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                    path: TOKEN_PATH.to_owned(),
                }),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    }
}

pub(super) fn init_container(settings: &InjectionSettings, proxy: &ProxySettings) -> Container {
    // The admin port is passed once, as itself: `init` always leaves it alone.
    let inbound: Vec<u16> = proxy
        .exclude_inbound_ports
        .iter()
        .copied()
        .filter(|p| *p != ADMIN_PORT)
        .collect();
    let mut args = vec![
        "--proxy-uid".to_owned(),
        PROXY_UID.to_string(),
        "--inbound-port".to_owned(),
        INBOUND_PORT.to_string(),
        "--outbound-port".to_owned(),
        OUTBOUND_PORT.to_string(),
        "--admin-port".to_owned(),
        ADMIN_PORT.to_string(),
    ];
    if !inbound.is_empty() {
        args.push("--exclude-inbound-ports".to_owned());
        args.push(list(inbound.iter().map(u16::to_string)));
    }
    if !proxy.exclude_outbound_ports.is_empty() {
        args.push("--exclude-outbound-ports".to_owned());
        args.push(list(
            proxy.exclude_outbound_ports.iter().map(u16::to_string),
        ));
    }
    if !proxy.exclude_outbound_cidrs.is_empty() {
        args.push("--exclude-outbound-cidrs".to_owned());
        args.push(list(proxy.exclude_outbound_cidrs.iter().cloned()));
    }
    Container {
        name: INIT_CONTAINER.to_owned(),
        image: Some(settings.init_image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        command: Some(vec![BINARY.to_owned(), "init".to_owned()]),
        args: Some(args),
        // The legacy back end takes a lock file, by default in /run; the root filesystem is
        // read-only, the pod's /dev/shm is not (and nothing else changes this pod's rules).
        env: Some(vec![EnvVar {
            name: "XTABLES_LOCKFILE".to_owned(),
            value: Some("/dev/shm/xtables.lock".to_owned()),
            ..Default::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: Some(quantities([("cpu", "10m"), ("memory", "16Mi")])),
            limits: Some(quantities([("cpu", "100m"), ("memory", "64Mi")])),
            ..Default::default()
        }),
        // Root with exactly the two capabilities iptables needs; nothing else is privileged.
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".to_owned(), "NET_RAW".to_owned()]),
                drop: Some(vec!["ALL".to_owned()]),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn proxy_container(
    settings: &InjectionSettings,
    proxy: &ProxySettings,
    service: &str,
    app_port: Option<u16>,
    app_probes: Option<String>,
) -> Container {
    let mut args = vec![
        "--control-plane".to_owned(),
        settings.control_plane.clone(),
        "--service".to_owned(),
        service.to_owned(),
        "--namespace".to_owned(),
        "$(POD_NAMESPACE)".to_owned(),
        "--pod".to_owned(),
        "$(POD_NAME)".to_owned(),
    ];
    // Without a declared port there is nothing to forward to that we know of: the sidecar's
    // own default (8080) applies.
    if let Some(port) = app_port {
        args.push("--app".to_owned());
        args.push(format!("127.0.0.1:{port}"));
    }
    args.extend([
        "--inbound".to_owned(),
        format!("0.0.0.0:{INBOUND_PORT}"),
        "--outbound".to_owned(),
        format!("127.0.0.1:{OUTBOUND_PORT}"),
        "--admin".to_owned(),
        format!("0.0.0.0:{ADMIN_PORT}"),
        "--threads".to_owned(),
        proxy.threads.to_string(),
    ]);
    let field = |name: &str, path: &str| EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let http_get = |path: &str| HTTPGetAction {
        path: Some(path.to_owned()),
        port: IntOrString::Int(i32::from(ADMIN_PORT)),
        ..Default::default()
    };
    let resources = ResourceRequirements {
        requests: (!proxy.requests.is_empty()).then(|| quantities(&proxy.requests)),
        limits: (!proxy.limits.is_empty()).then(|| quantities(&proxy.limits)),
        ..Default::default()
    };
    let mut env = vec![
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("POD_IP", "status.podIP"),
        EnvVar {
            name: "WEIR_LOG".to_owned(),
            value: Some(proxy.log_level.clone()),
            ..Default::default()
        },
        EnvVar {
            name: "WEIR_TOKEN_FILE".to_owned(),
            value: Some(format!("{TOKEN_DIR}/{TOKEN_PATH}")),
            ..Default::default()
        },
    ];
    if let Some(table) = app_probes {
        env.push(EnvVar {
            name: probes::ENV.to_owned(),
            value: Some(table),
            ..Default::default()
        });
    }
    Container {
        name: PROXY_CONTAINER.to_owned(),
        image: Some(settings.proxy_image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        command: Some(vec![BINARY.to_owned()]),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("weir-admin".to_owned()),
            container_port: i32::from(ADMIN_PORT),
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            http_get: Some(http_get("/ready")),
            period_seconds: Some(5),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        // Native only: the kubelet starts what follows once this succeeds, i.e. once the proxy
        // listens. `/live`, not `/ready`: a pod must start even while the control plane is away.
        startup_probe: settings.native_sidecars.then(|| Probe {
            http_get: Some(http_get("/live")),
            period_seconds: Some(1),
            failure_threshold: Some(60),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: TOKEN_VOLUME.to_owned(),
            mount_path: TOKEN_DIR.to_owned(),
            read_only: Some(true),
            ..Default::default()
        }]),
        resources: Some(resources),
        restart_policy: settings.native_sidecars.then(|| "Always".to_owned()),
        security_context: Some(SecurityContext {
            run_as_user: Some(PROXY_UID),
            run_as_group: Some(PROXY_UID),
            run_as_non_root: Some(true),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn quantities<K: AsRef<str>, V: AsRef<str>>(
    items: impl IntoIterator<Item = (K, V)>,
) -> BTreeMap<String, Quantity> {
    items
        .into_iter()
        .map(|(k, v)| (k.as_ref().to_owned(), Quantity(v.as_ref().to_owned())))
        .collect()
}

fn list(items: impl IntoIterator<Item = String>) -> String {
    items.into_iter().collect::<Vec<_>>().join(",")
}
