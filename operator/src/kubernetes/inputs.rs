//! Services, EndpointSlices and Pods as the translation wants them: a pure conversion.
//!
//! Choices, all from how Kubernetes itself routes a Service:
//! - An EndpointSlice belongs to the Service its `kubernetes.io/service-name` label names, in
//!   its own namespace; slices of a Service that does not exist (yet) are skipped.
//! - An endpoint counts unless `conditions.ready` is `false` (absent means ready, as kube-proxy
//!   reads it); its first address is used (the addresses of one endpoint are fungible).
//! - Ports: every TCP port of the Service is routed on its own. An endpoint serves a Service
//!   port when its slice has a port of the same name (slice ports carry the Service port's name
//!   and the resolved target port number, so named `targetPort`s work); its address for that
//!   Service port is at that number. A slice without a port of that name contributes no
//!   endpoint to it. UDP and SCTP ports are left out (the proxies speak HTTP); a Service with
//!   no port left has no endpoints. FQDN slices are skipped: the proxies dial addresses.
//! - Labels: those of the Pod the endpoint's `targetRef` names; an endpoint without a Pod
//!   behind it (e.g. a hand-made slice) has none, so it joins only the `default` subset.

use crate::snapshot::ServiceKey;
use crate::translate::{EndpointInfo, Inputs, Ports, ServiceInfo, ServicePort};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use weir_crds::{ResiliencePolicy, TrafficSplit};

/// The label by which an EndpointSlice names its Service.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Everything the translation reads, owned (a copy of the stores at one moment).
#[derive(Debug, Clone, Default)]
pub(crate) struct World {
    pub splits: Vec<TrafficSplit>,
    pub policies: Vec<ResiliencePolicy>,
    pub services: Vec<ServiceInfo>,
    pub endpoints: Vec<EndpointInfo>,
}

impl World {
    pub fn inputs(&self) -> Inputs<'_> {
        Inputs {
            splits: &self.splits,
            policies: &self.policies,
            services: &self.services,
            endpoints: &self.endpoints,
            operator_namespace: None,
        }
    }
}

/// The Services that exist and their ready endpoints with the labels of the Pods behind them;
/// `pod_labels(namespace, name)` looks a Pod up. Both lists are sorted.
pub(crate) fn services_and_endpoints<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    pod_labels: impl Fn(&str, &str) -> Option<BTreeMap<String, String>>,
) -> (Vec<ServiceInfo>, Vec<EndpointInfo>) {
    let mut infos: BTreeMap<ServiceKey, Vec<ServicePort>> = BTreeMap::new();
    for service in services {
        let key = ServiceKey::new(
            service.metadata.namespace.clone().unwrap_or_default(),
            service.metadata.name.clone().unwrap_or_default(),
        );
        let spec = service.spec.as_ref();
        // Headless Services ("None") have no virtual IP to intercept.
        let mut ips: Vec<IpAddr> = spec
            .map(|spec| {
                spec.cluster_ips
                    .iter()
                    .flatten()
                    .chain(spec.cluster_ip.iter())
                    .filter_map(|ip| ip.parse::<IpAddr>().ok())
                    .collect()
            })
            .unwrap_or_default();
        ips.sort();
        ips.dedup();
        let ports = spec
            .and_then(|spec| spec.ports.as_ref())
            .into_iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| {
                let port = u16::try_from(p.port).ok().filter(|&port| port > 0)?;
                Some(ServicePort {
                    name: p.name.clone().unwrap_or_default(),
                    port,
                    addresses: ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect(),
                })
            })
            .collect();
        infos.insert(key, ports);
    }

    let mut endpoints = Vec::new();
    for slice in slices {
        let namespace = slice.metadata.namespace.clone().unwrap_or_default();
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let key = ServiceKey::new(&namespace, service);
        let Some(service_ports) = infos.get(&key) else {
            continue; // no such Service
        };
        if slice.address_type == "FQDN" {
            continue;
        }
        // Service port → the number its endpoints in this slice listen on.
        let served: Vec<(u16, u16)> = service_ports
            .iter()
            .filter_map(|service_port| {
                let target = slice
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref().unwrap_or_default() == service_port.name)
                    .and_then(|p| p.port)
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|&p| p > 0)?;
                Some((service_port.port, target))
            })
            .collect();
        if served.is_empty() {
            tracing::debug!(
                slice = slice.metadata.name.as_deref().unwrap_or_default(),
                service = %key,
                "EndpointSlice has no port matching a port of the Service; skipped"
            );
            continue;
        }
        for endpoint in &slice.endpoints {
            if endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            let Some(ip) = endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let labels = endpoint
                .target_ref
                .as_ref()
                .filter(|target| target.kind.as_deref() == Some("Pod"))
                .and_then(|target| {
                    let pod_namespace = target.namespace.as_deref().unwrap_or(&namespace);
                    pod_labels(pod_namespace, target.name.as_deref()?)
                })
                .unwrap_or_default();
            // One map for every port this endpoint serves.
            let labels = std::sync::Arc::new(labels);
            for &(port, target) in &served {
                endpoints.push(EndpointInfo {
                    service: key.clone(),
                    port: Some(port),
                    address: SocketAddr::new(ip, target),
                    labels: labels.clone(),
                });
            }
        }
    }
    let services: Vec<ServiceInfo> = infos
        .into_iter()
        .map(|(key, ports)| ServiceInfo {
            key,
            ports: Ports::Each(ports),
        })
        .collect();
    endpoints.sort();
    (services, endpoints)
}
