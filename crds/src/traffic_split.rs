use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Weighted routing across subsets of one Service (canary).
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "TrafficSplit",
    namespaced,
    status = "TrafficSplitStatus",
    shortname = "ts",
    category = "weir"
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSplitSpec {
    /// The Service (same namespace) whose traffic is split.
    pub service: String,
    /// The Service port this split applies to; all ports when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// Subsets with their pod selectors and weights.
    pub backends: Vec<TrafficSplitBackend>,
    /// Checked in order before the weights; the first match picks the subset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<TrafficSplitRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSplitBackend {
    /// The subset's name (unique in the split), e.g. `v1`.
    pub subset: String,
    /// Pod labels that select the subset's endpoints.
    pub selector: BTreeMap<String, String>,
    /// Relative weight; 0 sends nothing.
    pub weight: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSplitRule {
    #[serde(rename = "match")]
    pub matches: TrafficSplitMatch,
    /// The subset that matching requests go to.
    pub subset: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSplitMatch {
    /// Request headers that must all be present with these exact values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// A prefix the request path must start with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSplitStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The weights as `kubectl get` shows them, e.g. `v1=90,v2=10`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
    /// Endpoints selected per backend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendStatus {
    pub subset: String,
    pub endpoints: i32,
}
