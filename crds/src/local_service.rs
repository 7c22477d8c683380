use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a service's endpoints are when there is no cluster; read only by `weir-operator local`.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "LocalService",
    namespaced,
    category = "weir"
)]
#[serde(rename_all = "camelCase")]
pub struct LocalServiceSpec {
    /// The port callers use in URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    pub endpoints: Vec<LocalEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalEndpoint {
    /// `IP:port`.
    pub address: String,
    /// The labels a pod there would carry (subsets select on them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}
