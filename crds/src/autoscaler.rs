use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

weir_resource! {
    /// Replicas of a Deployment from live sidecar telemetry.
    kube(
        kind = "Autoscaler",
        status = "AutoscalerStatus",
        shortname = "as",
        doc = "Replicas of a Deployment from live sidecar telemetry.",
        printcolumn(
            name = "Target",
            type_ = "string",
            json_path = ".spec.targetRef.name",
            description = "The workload whose replicas are set"
        ),
        printcolumn(
            name = "Min",
            type_ = "integer",
            json_path = ".spec.minReplicas",
            description = "The fewest replicas"
        ),
        printcolumn(
            name = "Max",
            type_ = "integer",
            json_path = ".spec.maxReplicas",
            description = "The most replicas"
        ),
        printcolumn(
            name = "Desired",
            type_ = "integer",
            json_path = ".status.desiredReplicas",
            description = "The replica count the autoscaler wants"
        ),
        printcolumn(
            name = "Current",
            type_ = "integer",
            json_path = ".status.currentReplicas",
            description = "The replica count the workload has"
        ),
    )
    accepted("Whether the spec is valid and its target exists", priority = 1)
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self.minReplicas <= self.maxReplicas",
            "message": "minReplicas must not be greater than maxReplicas"
        }
    ]))]
    pub struct AutoscalerSpec {
        /// The workload to scale through its `scale` subresource, e.g. `{apiVersion: apps/v1, kind: Deployment, name: orders}`.
        pub target_ref: ScaleTargetRef,
        /// The fewest replicas (at least 1: a workload without pods reports no telemetry).
        #[schemars(range(min = 1, max = 100_000))]
        pub min_replicas: i32,
        /// The most replicas.
        #[schemars(range(min = 1, max = 100_000))]
        pub max_replicas: i32,
        /// What to scale on, one entry per metric type; the highest desired count wins.
        #[schemars(
            length(min = 1, max = 8),
            extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"])
        )]
        pub metrics: Vec<AutoscalerMetric>,
        /// How fast to scale up and down.
        pub behavior: Option<ScalingBehavior>,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    /// The workload's API version, e.g. `apps/v1`.
    #[schemars(length(min = 1, max = 253))]
    pub api_version: String,
    /// The workload's kind, e.g. `Deployment`.
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,
    /// The workload's name (same namespace).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.type == 'LatencyP99' ? type(self.target) == string : type(self.target) == int",
        "message": "target must be a duration such as 250ms for LatencyP99 and an integer for the other metric types"
    },
    {
        "rule": "self.type != 'LatencyP99' || type(self.target) != string || (duration(self.target) >= duration('1ms') && duration(self.target) <= duration('24h'))",
        "message": "a LatencyP99 target must be between 1ms and 24h"
    }
]))]
pub struct AutoscalerMetric {
    /// `Concurrency`, `RequestsPerSecond`, `LatencyP99` or `Cpu`.
    #[serde(rename = "type")]
    pub kind: MetricType,
    /// Per pod: in-flight requests, requests/s, a latency such as `250ms`, or CPU percent.
    #[schemars(transform = crate::schema::metric_target)]
    pub target: IntOrString,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MetricType {
    Concurrency,
    RequestsPerSecond,
    LatencyP99,
    Cpu,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingBehavior {
    /// Limits on growing.
    pub scale_up: Option<ScalingRules>,
    /// Limits on shrinking.
    pub scale_down: Option<ScalingRules>,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// Recommendations over this window are considered (the most conservative wins), e.g. `300s`.
    #[schemars(transform = crate::schema::window_duration)]
    pub stabilization_window: Option<String>,
    /// At most this percentage of the current replicas is added or removed per `period` (0–100).
    #[schemars(range(min = 0, max = 100))]
    pub max_change_percent: Option<i32>,
    /// The period `maxChangePercent` applies to, e.g. `15s`.
    #[schemars(transform = crate::schema::bounded_duration)]
    pub period: Option<String>,
}

weir_status! {
    pub struct AutoscalerStatus {
        /// The replicas the workload has now.
        #[schemars(range(min = 0, max = 2147483647))]
        pub current_replicas: Option<i32>,
        /// The replicas the autoscaler last asked for.
        #[schemars(range(min = 0, max = 2147483647))]
        pub desired_replicas: Option<i32>,
        /// The latest value of each metric.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        #[schemars(length(max = 8))]
        pub current_metrics: Vec<MetricValue>,
        /// When the replica count was last changed.
        pub last_scale_time: Option<Time>,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricValue {
    #[serde(rename = "type")]
    pub kind: MetricType,
    /// The current per-pod value, in the metric's unit.
    #[schemars(length(max = 64))]
    pub current: String,
}
