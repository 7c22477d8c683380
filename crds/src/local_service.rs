use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a service's endpoints are when there is no cluster; read only by `weir-operator local`.
// Each `printcolumn(...)` repeats `name = `, `type_ = `...: not a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "LocalService",
    namespaced,
    status = "crate::PolicyStatus",
    category = "weir",
    doc = "Where a service's endpoints are when there is no cluster; read only by `weir-operator local`.",
    printcolumn(
        name = "Port",
        type_ = "integer",
        json_path = ".spec.port",
        description = "The port callers use in URLs"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = installed_schema)]
pub struct LocalServiceSpec {
    /// The port callers use in URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// The service's endpoints.
    // Whatever the port callers use; left out when `ports` routes each port on its own.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub endpoints: Vec<LocalEndpoint>,
    // A multi-port service: each port callers use, with the endpoints that serve it, instead of
    // `port` and `endpoints`. Read by `weir-operator local` (which checks it, naming the field);
    // not in the CRD schema, which stays as installed (see `installed_schema`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(skip)]
    pub ports: Vec<LocalServicePort>,
}

/// Keeps the LocalService CRD schema as installed before `ports` existed (`endpoints`
/// required, no default): the CRD is only ever read by `weir-operator local`, which validates
/// `ports` itself, and the chart carries a copy of the generated manifest.
fn installed_schema(schema: &mut schemars::Schema) {
    if let Some(endpoints) = schema
        .get_mut("properties")
        .and_then(|p| p.get_mut("endpoints"))
        .and_then(|e| e.as_object_mut())
    {
        endpoints.remove("default");
    }
    let required = schema
        .ensure_object()
        .entry("required")
        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
    if let Some(list) = required.as_array_mut()
        && !list.iter().any(|r| r == "endpoints")
    {
        list.push("endpoints".into());
    }
}

/// One port of a multi-port LocalService.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalServicePort {
    /// The port's name (optional; shown in the proxies' `/config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port callers use in URLs (`payments:81`); a TrafficSplit's `port` names it.
    pub port: i32,
    /// The endpoints that serve this port (at most 1024, as `endpoints`).
    pub endpoints: Vec<LocalEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalEndpoint {
    /// `IP:port` (an IPv6 address in brackets).
    #[schemars(length(max = 64), pattern(crate::schema::ADDRESS_PATTERN))]
    pub address: String,
    /// The admin listener (`IP:port`) of the sidecar in front of this endpoint; an Autoscaler in local mode reads its `/metrics` there. Without it, the sidecar connected to the control plane whose inbound listener is this address is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), pattern(crate::schema::ADDRESS_PATTERN))]
    pub admin: Option<String>,
    /// The labels a pod there would carry (subsets select on them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = crate::schema::labels)]
    pub labels: BTreeMap<String, String>,
}
