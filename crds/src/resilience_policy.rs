use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
/// The retry classes, jitter and balancing choices are the sidecar's own types: one definition
/// for the CRD and the proxy config, whose schema lists their values (see [`crate::schema`]).
pub use weir_proxy_api::{Jitter, LoadBalancerPolicy, RetryOn};

weir_resource! {
    /// How calls to a Service behave, or (targeting a Namespace or the Mesh) the defaults of every
    /// Service in reach. Every block is optional; an absent block is off.
    kube(
        kind = "ResiliencePolicy",
        status = "PolicyStatus",
        shortname = "rp",
        doc = "How calls to Services behave: timeouts, retries, circuit breaker, outlier detection, bulkhead, rate limit, load balancing, fallback, faults; for one Service, or defaults for a namespace or the whole mesh.",
        printcolumn(
            name = "Kind",
            type_ = "string",
            json_path = ".spec.targetRef.kind",
            description = "Service, Namespace (defaults for its Services) or Mesh (mesh-wide defaults)"
        ),
        printcolumn(
            name = "Target",
            type_ = "string",
            json_path = ".spec.targetRef.name",
            description = "The Service (or namespace) whose calls this policy governs"
        ),
        printcolumn(
            name = "Mode",
            type_ = "string",
            json_path = ".spec.mode",
            description = "Enforce, or DryRun (only counted, no request changed)"
        ),
    )
    accepted("Whether the spec is valid and its targets exist")
    after_accepted(
        printcolumn(
            name = "Effective",
            type_ = "string",
            json_path = ".status.effectiveLimits",
            description = "The rate limit and bulkhead across the target's current pods",
            priority = 1
        ),
    )
    pub struct ResiliencePolicySpec {
        /// What this policy governs: a Service of its namespace, its own namespace (defaults for
        /// every Service in it) or the mesh (defaults for every Service; honoured only in the
        /// operator's namespace). Per block, the most specific policy wins.
        pub target_ref: PolicyTargetRef,
        /// `Enforce` (the default) or `DryRun`: the policy changes no request and the sidecars count
        /// what it would have done in `weir_dry_run_total{service,reason}`.
        pub mode: Option<PolicyMode>,
        /// Time limits for calls to the Service.
        pub timeouts: Option<Timeouts>,
        /// Retries of idempotent requests by the caller's sidecar.
        pub retries: Option<Retries>,
        /// Stops calling the Service after consecutive failures, until `openDuration` has passed.
        pub circuit_breaker: Option<CircuitBreaker>,
        /// Ejects single endpoints that keep failing.
        pub outlier_detection: Option<OutlierDetection>,
        /// Caps concurrent requests to the Service; enforced by the target's sidecar.
        pub bulkhead: Option<Bulkhead>,
        /// Token-bucket rate limit; enforced by the target's sidecar.
        pub rate_limit: Option<RateLimit>,
        /// How the caller's sidecar picks an endpoint.
        pub load_balancer: Option<LoadBalancer>,
        /// A canned response instead of an error when every try failed.
        pub fallback: Option<Fallback>,
        /// Faults the caller's sidecar injects: delays and aborts of a share of the calls.
        pub faults: Option<Faults>,
    }
}

/// Whether a policy acts on requests or is only measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PolicyMode {
    #[default]
    Enforce,
    DryRun,
}

/// The kinds a policy can target.
pub const TARGET_SERVICE: &str = "Service";
pub const TARGET_NAMESPACE: &str = "Namespace";
pub const TARGET_MESH: &str = "Mesh";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.kind in ['Service', 'Namespace', 'Mesh']",
        "message": "targetRef.kind must be Service, Namespace or Mesh"
    },
    {
        "rule": "self.kind == 'Mesh' || has(self.name)",
        "message": "targetRef.name is required unless targetRef.kind is Mesh"
    },
    {
        "rule": "self.kind != 'Service' || !has(self.name) || self.name.matches('^[a-z]')",
        "message": "targetRef.name of a Service must start with a letter"
    }
]))]
pub struct PolicyTargetRef {
    /// `Service`, `Namespace` or `Mesh`.
    #[schemars(length(max = 63))]
    pub kind: String,
    /// The Service's name; for `Namespace`, the policy's own namespace; ignored for `Mesh`
    /// (may be omitted).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(transform = crate::schema::object_name)]
    pub name: String,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.perTry) || !has(self.request) || duration(self.perTry) <= duration(self.request)",
        "message": "timeouts.perTry must not be longer than timeouts.request"
    }
]))]
pub struct Timeouts {
    /// The whole call, all tries and backoff included, e.g. `10s`.
    #[schemars(transform = crate::schema::bounded_duration)]
    pub request: Option<String>,
    /// One try; a per-try timeout counts as a gateway error (504) for `retryOn`.
    #[schemars(transform = crate::schema::bounded_duration)]
    pub per_try: Option<String>,
    /// Establishing a connection to an endpoint.
    #[schemars(transform = crate::schema::bounded_duration)]
    pub connect: Option<String>,
    /// How long an idle connection is kept.
    #[schemars(transform = crate::schema::bounded_duration)]
    pub idle: Option<String>,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    /// Retries after the first try (0–10).
    #[schemars(range(min = weir_proxy_api::bounds::RETRY_ATTEMPTS.min, max = weir_proxy_api::bounds::RETRY_ATTEMPTS.max))]
    pub attempts: i32,
    /// Which failures are retried.
    #[schemars(
        with = "Option<Vec<String>>",
        transform = crate::schema::retry_classes,
        length(max = 16),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub retry_on: Option<Vec<RetryOn>>,
    /// Exponential backoff between tries.
    pub backoff: Option<Backoff>,
    /// Caps retries to a share of requests (a default budget applies when absent).
    pub budget: Option<RetryBudget>,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.base) || !has(self.max) || duration(self.base) <= duration(self.max)",
        "message": "backoff.max must not be shorter than backoff.base"
    }
]))]
pub struct Backoff {
    /// The first backoff, e.g. `100ms`.
    #[schemars(transform = crate::schema::bounded_duration)]
    pub base: Option<String>,
    /// The longest backoff, e.g. `5s`.
    #[schemars(transform = crate::schema::bounded_duration)]
    pub max: Option<String>,
    /// Growth per retry (1–10).
    #[schemars(range(min = weir_proxy_api::bounds::BACKOFF_MULTIPLIER.min, max = weir_proxy_api::bounds::BACKOFF_MULTIPLIER.max))]
    pub multiplier: Option<f64>,
    /// `full` (a random backoff up to the computed one) or `none`.
    #[schemars(with = "Option<String>", transform = crate::schema::jitters)]
    pub jitter: Option<Jitter>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries may add at most this share of requests (0–1; 1 = no cap from the ratio).
    #[schemars(range(min = weir_proxy_api::bounds::RATIO.min, max = weir_proxy_api::bounds::RATIO.max))]
    pub ratio: f64,
    /// Plus this many retries per second (0–1,000,000).
    #[schemars(range(min = weir_proxy_api::bounds::MIN_PER_SECOND.min, max = weir_proxy_api::bounds::MIN_PER_SECOND.max))]
    pub min_per_second: i32,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.failureThreshold) || has(self.failureRate)",
        "message": "circuitBreaker needs failureThreshold, failureRate or both"
    }
]))]
pub struct CircuitBreaker {
    /// Consecutive failures that open the breaker.
    #[schemars(range(min = weir_proxy_api::bounds::COUNT.min, max = weir_proxy_api::bounds::COUNT.max))]
    pub failure_threshold: Option<i32>,
    /// The share of failed calls (0–1) over `window` that opens the breaker once `minRequests`
    /// calls were seen; either trigger opens it.
    #[schemars(range(min = weir_proxy_api::bounds::RATIO.min, max = weir_proxy_api::bounds::RATIO.max))]
    pub failure_rate: Option<f64>,
    /// The sliding window `failureRate` is measured over (1s–24h, default 10s).
    #[schemars(transform = crate::schema::breaker_window)]
    pub window: Option<String>,
    /// Calls seen in `window` before `failureRate` is judged (default 20).
    #[schemars(range(min = weir_proxy_api::bounds::COUNT.min, max = weir_proxy_api::bounds::COUNT.max))]
    pub min_requests: Option<i32>,
    /// Consecutive successes in half-open state that close it again.
    #[schemars(range(min = weir_proxy_api::bounds::COUNT.min, max = weir_proxy_api::bounds::COUNT.max))]
    pub success_threshold: Option<i32>,
    /// How long the breaker stays open before letting a trial request through.
    #[schemars(transform = crate::schema::bounded_duration)]
    pub open_duration: Option<String>,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive 5xx responses that eject an endpoint.
    #[serde(rename = "consecutive5xxErrors")]
    #[schemars(range(min = weir_proxy_api::bounds::COUNT.min, max = weir_proxy_api::bounds::COUNT.max))]
    pub consecutive_5xx_errors: Option<i32>,
    /// Consecutive gateway errors (502, 503, 504, connect failures) that eject an endpoint.
    #[schemars(range(min = weir_proxy_api::bounds::COUNT.min, max = weir_proxy_api::bounds::COUNT.max))]
    pub consecutive_gateway_errors: Option<i32>,
    /// How often ejected endpoints are reconsidered and counters of healthy ones decay.
    #[schemars(transform = crate::schema::bounded_duration)]
    pub interval: Option<String>,
    /// The first ejection's length; grows with each re-ejection.
    #[schemars(transform = crate::schema::bounded_duration)]
    pub base_ejection_time: Option<String>,
    /// At most this percentage of endpoints is ejected at once (0–100).
    #[schemars(range(min = weir_proxy_api::bounds::PERCENT.min, max = weir_proxy_api::bounds::PERCENT.max))]
    pub max_ejection_percent: Option<i32>,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Bulkhead {
    /// Requests handled at once.
    #[schemars(range(min = weir_proxy_api::bounds::MAX_CONCURRENT.min, max = weir_proxy_api::bounds::MAX_CONCURRENT.max))]
    pub max_concurrent: i32,
    /// Requests waiting for a slot; more are refused with `bulkhead-full`.
    #[schemars(range(min = weir_proxy_api::bounds::MAX_QUEUED.min, max = weir_proxy_api::bounds::MAX_QUEUED.max))]
    pub max_queued: Option<i32>,
    /// How long a request may wait for a slot.
    #[schemars(transform = crate::schema::bounded_duration)]
    pub queue_timeout: Option<String>,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained rate per key, in requests per second (1–1,000,000).
    #[schemars(range(min = weir_proxy_api::bounds::REQUESTS_PER_SECOND.min, max = weir_proxy_api::bounds::REQUESTS_PER_SECOND.max))]
    pub requests_per_second: i32,
    /// Requests allowed at once above the rate (the bucket's size).
    #[schemars(range(min = weir_proxy_api::bounds::BURST.min, max = weir_proxy_api::bounds::BURST.max))]
    pub burst: i32,
    /// `none`, `source` or `header:NAME`.
    #[schemars(length(max = 256), pattern(crate::schema::RATE_LIMIT_KEY_PATTERN))]
    pub key: Option<String>,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    /// `round-robin`, `least-request` (power of two choices) or `ewma`.
    #[schemars(with = "Option<String>", transform = crate::schema::load_balancer_policies)]
    pub policy: Option<LoadBalancerPolicy>,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Fallback {
    /// The HTTP status to answer with (100–599).
    #[schemars(range(min = 100, max = 599))]
    pub status: i32,
    /// The response body.
    #[schemars(length(max = weir_proxy_api::bounds::FALLBACK_BODY_MAX_CHARS))]
    pub body: Option<String>,
    /// The `content-type` header of the response.
    #[schemars(length(max = 256), pattern(crate::schema::HEADER_VALUE_PATTERN))]
    pub content_type: Option<String>,
}

/// Faults injected by the caller's sidecar.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Faults {
    /// Holds `percent` % of the calls for `duration` before sending them.
    pub delay: Option<FaultDelay>,
    /// Answers `percent` % of the calls at once with `status` and
    /// `x-weir-reason: fault-injected`; never retried.
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FaultDelay {
    /// The share of calls delayed, 0–100 (fractions allowed: 0.1 is one call in a thousand).
    #[schemars(range(min = weir_proxy_api::bounds::FAULT_PERCENT.min, max = weir_proxy_api::bounds::FAULT_PERCENT.max))]
    pub percent: f64,
    /// How long each delayed call is held, e.g. `200ms`.
    #[schemars(transform = crate::schema::bounded_duration)]
    pub duration: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FaultAbort {
    /// The share of calls aborted, 0–100 (fractions allowed).
    #[schemars(range(min = weir_proxy_api::bounds::FAULT_PERCENT.min, max = weir_proxy_api::bounds::FAULT_PERCENT.max))]
    pub percent: f64,
    /// The status answered (200–599).
    #[schemars(range(min = weir_proxy_api::bounds::FAULT_ABORT_STATUS.min, max = weir_proxy_api::bounds::FAULT_ABORT_STATUS.max))]
    pub status: i32,
}

weir_status! {
    /// Status of a ResiliencePolicy or a LocalService: the generation seen and the conditions.
    pub struct PolicyStatus {
        /// ResiliencePolicy only: the rate limit and bulkhead in force across the target's current
        /// ready pods (each sidecar enforces its own share), e.g.
        /// `100 rps per pod × 3 pods = 300 rps; bulkhead 10 per pod × 3 pods = 30`.
        #[schemars(length(max = 1024))]
        pub effective_limits: Option<String>,
    }
}
