//! A Pod's place in the mesh, as the operator's Pod store shows it: whether it runs the
//! injected sidecar now, and where that sidecar's admin listener (`/metrics`) answers.
//!
//! The sidecar is the `weir-proxy` container the webhook injects (a plain container, or a
//! native sidecar among the init containers on Kubernetes ≥ 1.29); its admin port is the one
//! the injector declares on it as `weir-admin`, so the operator follows what the pod was
//! actually given rather than assuming today's default.

use crate::webhook::inject::{ADMIN_PORT, PROXY_CONTAINER};
use k8s_openapi::api::core::v1::{Container, Pod};
use std::net::{IpAddr, SocketAddr};

/// The name the injector gives the sidecar's admin port.
pub const ADMIN_PORT_NAME: &str = "weir-admin";

/// The pod's injected sidecar container, wherever it was injected.
pub(crate) fn proxy_container(pod: &Pod) -> Option<&Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == PROXY_CONTAINER)
}

/// The admin listener of `pod`'s sidecar while the pod is in the mesh: the sidecar injected,
/// the pod Running and Ready and not being deleted, with an IP. The port is the sidecar's
/// `weir-admin` port ([`ADMIN_PORT`] when it declares none). `None` for any other pod:
/// a pod that is starting, stopping or unready has nothing worth reading (a Ready pod's
/// sidecar has answered its own readiness probe on that listener).
pub(crate) fn sidecar_admin(pod: &Pod) -> Option<SocketAddr> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        return None;
    }
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let proxy = proxy_container(pod)?;
    let port = proxy
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(ADMIN_PORT_NAME))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .filter(|port| *port != 0)
        .unwrap_or(ADMIN_PORT);
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn running(spec: serde_json::Value) -> serde_json::Value {
        json!({
            "metadata": {"name": "orders-a", "namespace": "shop"},
            "spec": spec,
            "status": {"phase": "Running", "podIP": "10.0.0.7",
                       "conditions": [{"type": "Ready", "status": "True"}]},
        })
    }

    #[test]
    fn the_admin_port_is_the_one_the_sidecar_declares() {
        let declared = running(json!({"containers": [
            {"name": "app"},
            {"name": "weir-proxy", "ports": [{"name": "other", "containerPort": 9},
                                             {"name": "weir-admin", "containerPort": 16020}]},
        ]}));
        assert_eq!(
            sidecar_admin(&pod(declared)),
            Some("10.0.0.7:16020".parse().unwrap())
        );
        // A native sidecar, with no declared port: the injector's default.
        let native = running(json!({"containers": [{"name": "app"}],
                                     "initContainers": [{"name": "weir-proxy", "restartPolicy": "Always"}]}));
        assert_eq!(
            sidecar_admin(&pod(native)),
            Some(SocketAddr::new("10.0.0.7".parse().unwrap(), ADMIN_PORT))
        );
    }

    #[test]
    fn only_running_ready_injected_pods_with_an_ip_are_in_the_mesh() {
        let injected = json!({"containers": [{"name": "app"}, {"name": "weir-proxy"}]});
        assert!(sidecar_admin(&pod(running(injected.clone()))).is_some());
        assert_eq!(
            sidecar_admin(&pod(running(json!({"containers": [{"name": "app"}]})))),
            None,
            "no sidecar"
        );
        let mut unready = running(injected.clone());
        unready["status"]["conditions"][0]["status"] = json!("False");
        assert_eq!(sidecar_admin(&pod(unready)), None);
        let mut pending = running(injected.clone());
        pending["status"]["phase"] = json!("Pending");
        assert_eq!(sidecar_admin(&pod(pending)), None);
        let mut no_ip = running(injected.clone());
        no_ip["status"].as_object_mut().unwrap().remove("podIP");
        assert_eq!(sidecar_admin(&pod(no_ip)), None);
        let mut bad_ip = running(injected.clone());
        bad_ip["status"]["podIP"] = json!("not-an-ip");
        assert_eq!(sidecar_admin(&pod(bad_ip)), None);
        let mut deleting = running(injected.clone());
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert_eq!(sidecar_admin(&pod(deleting)), None);
        let mut absurd_port = running(json!({"containers": [
            {"name": "weir-proxy", "ports": [{"name": "weir-admin", "containerPort": 700000}]}]}));
        absurd_port["status"]["podIP"] = json!("fd00::7");
        assert_eq!(
            sidecar_admin(&pod(absurd_port)),
            Some(SocketAddr::new("fd00::7".parse().unwrap(), ADMIN_PORT))
        );
    }
}
