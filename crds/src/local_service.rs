use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

weir_resource! {
    /// Where a service's endpoints are when there is no cluster; read only by `weir-operator local`.
    kube(
        kind = "LocalService",
        status = "crate::PolicyStatus",
        doc = "Where a service's endpoints are when there is no cluster; read only by `weir-operator local`.",
        printcolumn(
            name = "Port",
            type_ = "integer",
            json_path = ".spec.port",
            description = "The port callers use in URLs"
        ),
    )
    #[schemars(transform = endpoints_without_default)]
    pub struct LocalServiceSpec {
        /// The port callers use in URLs.
        #[schemars(range(min = 1, max = 65535))]
        pub port: Option<i32>,
        /// The service's endpoints, whatever the port callers use (leave it empty when `ports` lists the endpoints of each port).
        #[serde(default)]
        #[schemars(length(max = 1024))]
        pub endpoints: Vec<LocalEndpoint>,
        /// A multi-port service: each port callers use, with the endpoints that serve it, instead of `port` and `endpoints`. `weir-operator local` refuses a LocalService that gives both, naming the field.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        #[schemars(length(max = 100))]
        pub ports: Vec<LocalServicePort>,
    }
}

/// `endpoints` may be left out (a multi-port service lists `ports`), but the schema gives it no
/// default: a default would also be filled in on reads (the operator applies it instead).
fn endpoints_without_default(schema: &mut schemars::Schema) {
    if let Some(endpoints) = schema
        .get_mut("properties")
        .and_then(|p| p.get_mut("endpoints"))
        .and_then(|e| e.as_object_mut())
    {
        endpoints.remove("default");
    }
}

/// One port of a multi-port LocalService.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalServicePort {
    /// The port's name (optional; shown in the proxies' `/config`).
    #[schemars(length(max = 63))]
    pub name: Option<String>,
    /// The port callers use in URLs (`payments:81`); a TrafficSplit's `port` names it.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// The endpoints that serve this port.
    #[schemars(length(max = 1024))]
    pub endpoints: Vec<LocalEndpoint>,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalEndpoint {
    /// `IP:port` (an IPv6 address in brackets).
    #[schemars(length(max = 64), pattern(crate::schema::ADDRESS_PATTERN))]
    pub address: String,
    /// The admin listener (`IP:port`) of the sidecar in front of this endpoint; an Autoscaler in local mode reads its `/metrics` there. Without it, the sidecar connected to the control plane whose inbound listener is this address is read.
    #[schemars(length(max = 64), pattern(crate::schema::ADDRESS_PATTERN))]
    pub admin: Option<String>,
    /// The labels a pod there would carry (subsets select on them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = crate::schema::labels)]
    pub labels: BTreeMap<String, String>,
}
