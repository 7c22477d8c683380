//! LocalServices as the translation wants them: a Service per LocalService (routed as one or
//! per port) and its endpoints, their label maps shared between equal sets.

use crate::snapshot::ServiceKey;
use crate::translate::{EndpointInfo, Ports, ServiceInfo, ServicePort};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use weir_crds::LocalService;

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
