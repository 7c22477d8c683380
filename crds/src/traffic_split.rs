use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Weighted routing across subsets of one Service (canary).
///
/// Weights are relative, non-negative integers; weight 0 sends nothing, all-zero is invalid.
// Each `printcolumn(...)` repeats `name = `, `type_ = `...: not a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "TrafficSplit",
    namespaced,
    status = "TrafficSplitStatus",
    shortname = "ts",
    category = "weir",
    doc = "Weighted routing across subsets of one Service (canary).",
    printcolumn(
        name = "Service",
        type_ = "string",
        json_path = ".spec.service",
        description = "The Service whose traffic is split"
    ),
    printcolumn(
        name = "Weights",
        type_ = "string",
        json_path = ".status.weights",
        description = "The weights per subset"
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Accepted")].status"#,
        description = "Whether the spec is valid and its targets exist"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.backends.exists(b, b.weight > 0)",
        "message": "at least one backend needs a weight greater than 0"
    },
    {
        "rule": "!has(self.rules) || self.rules.all(r, self.backends.exists(b, b.subset == r.subset))",
        "message": "every rule's subset must name one of the backends"
    }
]))]
pub struct TrafficSplitSpec {
    /// The Service (same namespace) whose traffic is split.
    #[schemars(transform = crate::schema::service_name)]
    pub service: String,
    /// The Service port this split applies to; all ports when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Subsets with their pod selectors and weights; subset names are unique.
    #[schemars(
        length(min = 1, max = crate::schema::MAX_BACKENDS),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["subset"])
    )]
    pub backends: Vec<TrafficSplitBackend>,
    /// Checked in order before the weights; the first match picks the subset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::schema::MAX_RULES))]
    pub rules: Vec<TrafficSplitRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSplitBackend {
    /// The subset's name (unique in the split), e.g. `v1`.
    #[schemars(transform = crate::schema::subset_name)]
    pub subset: String,
    /// Pod labels that select the subset's endpoints (within the Service's pods).
    #[schemars(transform = crate::schema::labels)]
    pub selector: BTreeMap<String, String>,
    /// Relative weight (0–1,000,000); 0 sends nothing.
    #[schemars(range(min = weir_proxy_api::bounds::WEIGHT.min, max = weir_proxy_api::bounds::WEIGHT.max))]
    pub weight: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSplitRule {
    /// What a request must carry to match; all given criteria must hold.
    #[serde(rename = "match")]
    pub matches: TrafficSplitMatch,
    /// The subset that matching requests go to; one of the backends.
    #[schemars(transform = crate::schema::subset_name)]
    pub subset: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSplitMatch {
    /// Request headers that must all be present with these exact values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = crate::schema::headers)]
    pub headers: BTreeMap<String, String>,
    /// A prefix the request path must start with (begins with `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), pattern("^/"))]
    pub path_prefix: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSplitStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = crate::schema::MAX_GENERATION))]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,
    /// The weights as `kubectl get` shows them, `subset=weight` joined by commas, e.g. `v1=90,v2=10`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub weights: Option<String>,
    /// Endpoints selected per backend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::schema::MAX_BACKENDS))]
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendStatus {
    /// The backend's subset name.
    #[schemars(length(max = 63))]
    pub subset: String,
    /// How many ready endpoints the subset's selector picks.
    #[schemars(range(min = 0, max = 2147483647))]
    pub endpoints: i32,
}

/// The weights of a split as one short string, `subset=weight` in backend order joined by commas
/// (`v1=90,v2=10`): what the operator writes into `status.weights` for the `Weights` column.
pub fn weights_summary(spec: &TrafficSplitSpec) -> String {
    let mut summary = String::new();
    for (i, backend) in spec.backends.iter().enumerate() {
        if i > 0 {
            summary.push(',');
        }
        summary.push_str(&backend.subset);
        summary.push('=');
        summary.push_str(&backend.weight.to_string());
    }
    summary
}
