//! Services, EndpointSlices and Pods as the translation wants them: a pure conversion.
//!
//! Choices, all from how Kubernetes itself routes a Service:
//! - An EndpointSlice belongs to the Service its `kubernetes.io/service-name` label names, in
//!   its own namespace; slices of a Service that does not exist (yet) are skipped.
//! - An endpoint counts unless `conditions.ready` is `false` (absent means ready, as kube-proxy
//!   reads it); its first address is used (the addresses of one endpoint are fungible).
//! - Port: a proxy config has one port per service, so we take the Service's **first port**
//!   and use the slice port with the same name (slice ports carry the Service port's name and
//!   the resolved target port number, so named `targetPort`s work). A Service without ports,
//!   or a slice without that port, contributes no endpoints. FQDN slices are skipped: the
//!   proxies dial addresses.
//! - Labels: those of the Pod the endpoint's `targetRef` names; an endpoint without a Pod
//!   behind it (e.g. a hand-made slice) has none, so it joins only the `default` subset.

use crate::snapshot::ServiceKey;
use crate::translate::{EndpointInfo, Inputs, ServiceInfo};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::{BTreeMap, HashMap};
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
    // Service → the name of its first port ("" when unnamed), or None without ports.
    let mut first_port: HashMap<ServiceKey, Option<String>> = HashMap::new();
    // Service → its ClusterIPs at its first port: where intercepted callers dial it.
    let mut addresses: HashMap<ServiceKey, Vec<SocketAddr>> = HashMap::new();
    for service in services {
        let key = ServiceKey::new(
            service.metadata.namespace.clone().unwrap_or_default(),
            service.metadata.name.clone().unwrap_or_default(),
        );
        let spec = service.spec.as_ref();
        let first = spec
            .and_then(|spec| spec.ports.as_ref())
            .and_then(|ports| ports.first());
        if let (Some(spec), Some(port)) = (spec, first.and_then(|p| u16::try_from(p.port).ok())) {
            // Headless Services ("None") have no virtual IP to intercept.
            let ips = spec.cluster_ips.clone().unwrap_or_default();
            let mut list: Vec<SocketAddr> = ips
                .iter()
                .chain(spec.cluster_ip.iter())
                .filter_map(|ip| ip.parse::<IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, port))
                .collect();
            list.sort();
            list.dedup();
            addresses.insert(key.clone(), list);
        }
        let port = first.map(|port| port.name.clone().unwrap_or_default());
        first_port.insert(key, port);
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
        let Some(Some(port_name)) = first_port.get(&key) else {
            continue; // no such Service, or it has no ports
        };
        if slice.address_type == "FQDN" {
            continue;
        }
        let Some(port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or_default() == port_name)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            tracing::debug!(
                slice = slice.metadata.name.as_deref().unwrap_or_default(),
                service = %key,
                port = %port_name,
                "EndpointSlice has no port matching the Service's first port; skipped"
            );
            continue;
        };
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
            endpoints.push(EndpointInfo {
                service: key.clone(),
                address: SocketAddr::new(ip, port),
                labels,
            });
        }
    }
    let mut services: Vec<ServiceInfo> = first_port
        .into_keys()
        .map(|key| ServiceInfo {
            addresses: addresses.remove(&key).unwrap_or_default(),
            key,
        })
        .collect();
    services.sort();
    endpoints.sort();
    (services, endpoints)
}
