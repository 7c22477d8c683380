use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

weir_resource! {
    /// Weighted routing across subsets of one Service (canary).
    ///
    /// Weights are relative, non-negative integers; weight 0 sends nothing, all-zero is invalid.
    kube(
        kind = "TrafficSplit",
        status = "TrafficSplitStatus",
        shortname = "ts",
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
            name = "Phase",
            type_ = "string",
            json_path = ".status.analysis.phase",
            description = "Where the canary analysis stands: Progressing, Succeeded or RolledBack"
        ),
        printcolumn(
            name = "Canary",
            type_ = "integer",
            json_path = ".status.analysis.canaryWeight",
            description = "The canary's share of traffic in percent, set by the analysis"
        ),
    )
    accepted("Whether the spec is valid and its targets exist")
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self.backends.exists(b, b.weight > 0)",
            "message": "at least one backend needs a weight greater than 0"
        },
        {
            "rule": "!has(self.rules) || self.rules.all(r, self.backends.exists(b, b.subset == r.subset))",
            "message": "every rule's subset must name one of the backends"
        },
        {
            "rule": "!has(self.analysis) || self.backends.exists(b, b.subset == self.analysis.canary)",
            "message": "analysis.canary must name one of the backends"
        }
    ]))]
    pub struct TrafficSplitSpec {
        /// The Service (same namespace) whose traffic is split.
        #[schemars(transform = crate::schema::service_name)]
        pub service: String,
        /// The Service port this split applies to; all ports when absent.
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
        /// Progressive delivery: the canary's weight comes from these steps, each judged on the
        /// callers' telemetry before the next.
        pub analysis: Option<Analysis>,
    }
}

/// A rollout of one backend (the canary) in steps, each judged from the callers' sidecars'
/// telemetry; never promoted on silence.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    /// The backend (its `subset`) being rolled out.
    #[schemars(transform = crate::schema::subset_name)]
    pub canary: String,
    /// The canary's share of traffic in percent at each step (1–100, strictly increasing).
    #[schemars(
        length(min = 1, max = crate::schema::MAX_ANALYSIS_STEPS),
        inner(range(min = weir_proxy_api::bounds::ANALYSIS_STEP.min, max = weir_proxy_api::bounds::ANALYSIS_STEP.max)),
        transform = crate::schema::increasing_steps
    )]
    pub steps: Vec<i32>,
    /// How long each step runs before it is judged (1s–24h), e.g. `30s`.
    #[schemars(transform = crate::schema::analysis_interval)]
    pub interval: String,
    /// Fewer canary requests than this in a step: inconclusive, the step is held (default 1).
    #[schemars(range(min = weir_proxy_api::bounds::ANALYSIS_COUNT.min, max = weir_proxy_api::bounds::ANALYSIS_COUNT.max))]
    pub min_requests: Option<i32>,
    /// The least share of non-5xx answers a step passes with (0–1), e.g. `0.99`.
    #[schemars(range(min = weir_proxy_api::bounds::RATIO.min, max = weir_proxy_api::bounds::RATIO.max))]
    pub success_rate: Option<f64>,
    /// The highest 99th-percentile latency a step passes with, e.g. `500ms`.
    #[schemars(transform = crate::schema::bounded_duration)]
    pub latency_p99: Option<String>,
    /// How many failed judgements roll the canary back to weight 0 (default 1).
    #[schemars(range(min = weir_proxy_api::bounds::ANALYSIS_COUNT.min, max = weir_proxy_api::bounds::ANALYSIS_COUNT.max))]
    pub max_failures: Option<i32>,
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

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSplitMatch {
    /// Request headers that must all be present with these exact values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = crate::schema::headers)]
    pub headers: BTreeMap<String, String>,
    /// A prefix the request path must start with (begins with `/`).
    #[schemars(length(max = 1024), pattern("^/"))]
    pub path_prefix: Option<String>,
}

weir_status! {
    pub struct TrafficSplitStatus {
        /// The weights as `kubectl get` shows them, `subset=weight` joined by commas, e.g. `v1=90,v2=10`.
        #[schemars(length(max = 8192))]
        pub weights: Option<String>,
        /// Endpoints selected per backend.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        #[schemars(length(max = crate::schema::MAX_BACKENDS))]
        pub backends: Vec<BackendStatus>,
        /// Where the canary analysis stands (only with `spec.analysis`).
        pub analysis: Option<AnalysisStatus>,
    }
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AnalysisPhase {
    /// Steps are being run and judged.
    Progressing,
    /// Every step passed; the canary keeps the last step's weight.
    Succeeded,
    /// Failed `maxFailures` times; the canary's weight is 0.
    RolledBack,
}

impl AnalysisPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Progressing => "Progressing",
            Self::Succeeded => "Succeeded",
            Self::RolledBack => "RolledBack",
        }
    }
}

/// What a judgement of one step decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum JudgementResult {
    Passed,
    Failed,
    /// Fewer than `minRequests` requests (or no latency measured when `latencyP99` is set):
    /// the step is held.
    Inconclusive,
}

impl JudgementResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "Passed",
            Self::Failed => "Failed",
            Self::Inconclusive => "Inconclusive",
        }
    }
}

/// `status.analysis`: the rollout's state, which is also what a restarted operator or a new
/// leader resumes from.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    pub phase: AnalysisPhase,
    /// The step running now (1-based; the last one once Succeeded).
    #[schemars(range(min = 1, max = 100))]
    pub step: i32,
    /// The canary's share of traffic in percent now.
    #[schemars(range(min = 0, max = 100))]
    pub canary_weight: i32,
    /// Failed judgements so far in this rollout.
    #[schemars(range(min = 0, max = 1000000))]
    pub failures: i32,
    /// The `metadata.generation` this rollout is for: a new one restarts at step 1.
    #[schemars(range(min = 0, max = crate::schema::MAX_GENERATION))]
    pub observed_generation: Option<i64>,
    /// The latest judgement of a step.
    pub last_judgement: Option<Judgement>,
    /// What happened last, for people.
    #[schemars(length(max = 1024))]
    pub message: String,
}

/// One step's judgement, on the canary's answers as every caller's sidecar saw them.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Judgement {
    /// Canary requests answered during the interval, all callers summed.
    #[schemars(range(min = 0, max = crate::schema::MAX_GENERATION))]
    pub requests: i64,
    /// Share of non-5xx answers (absent without requests).
    #[schemars(range(min = 0, max = 1))]
    pub success_rate: Option<f64>,
    /// The 99th-percentile latency, e.g. `120ms` (absent without requests).
    #[schemars(length(max = 32))]
    pub latency_p99: Option<String>,
    pub result: JudgementResult,
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
