//! ProxyConfig: everything one sidecar needs, and nothing about the rest of the mesh.
//!
//! Field names follow the custom resources (camelCase, the same block names) so that a user who
//! knows a ResiliencePolicy can read `/config`. Unlike the CRD types these refuse unknown fields:
//! a typo in a hand-written config file must be an error naming the field, not a silently
//! ignored setting.

use crate::Duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// The whole configuration of one sidecar, as a `--config` file holds it and as admin `/config`
/// shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    /// Monotonic version; the sidecar reports it as `weir_config_version`.
    #[serde(default)]
    pub version: u64,
    /// Policy enforced on calls to this proxy's own application.
    #[serde(default)]
    pub inbound: InboundPolicy,
    /// Services the application may call, each with its split, endpoints and policy.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// Proxy-wide limits.
    #[serde(default)]
    pub limits: Limits,
}

/// What the target's sidecar enforces, whoever calls it: overload protection and timeouts.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundPolicy {
    /// The subset this proxy's pod belongs to, used only as the `subset` metric label.
    pub subset: Option<String>,
    pub timeouts: Option<InboundTimeouts>,
    pub rate_limit: Option<RateLimit>,
    pub bulkhead: Option<Bulkhead>,
}

/// Inbound timeouts: the application's whole answer, and silence on a streaming body.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundTimeouts {
    pub request: Option<Duration>,
    pub idle: Option<Duration>,
    /// Set when the block came from a `mode: DryRun` policy: the sidecar changes no request for
    /// it, and counts what it would have done in `weir_dry_run_total{service,reason}`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// Proxy-wide limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Request bodies up to this size are buffered so that they can be retried; larger bodies
    /// stream through and their requests are not retried.
    #[serde(default = "Limits::default_retry_buffer_bytes")]
    pub retry_buffer_bytes: u64,
}

impl Limits {
    pub const DEFAULT_RETRY_BUFFER_BYTES: u64 = 64 * 1024;
    fn default_retry_buffer_bytes() -> u64 {
        Self::DEFAULT_RETRY_BUFFER_BYTES
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            retry_buffer_bytes: Self::DEFAULT_RETRY_BUFFER_BYTES,
        }
    }
}

/// One service the application may call.
///
/// A service is routed either as one route for every port (`subsets`, `rules` and `addresses`
/// here, as a single-port config always was written) or per port (`ports`, each with its own
/// subsets, rules and addresses), never both. The policy is the service's, shared by its ports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    pub namespace: String,
    /// The addresses callers dial to reach the service: its ClusterIP(s), one entry per port
    /// (`10.96.0.12:8080`). With transparent interception a connection's original destination
    /// names the service when its Host header does not. Empty when callers use names only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<SocketAddr>,
    /// Subsets with their weights and endpoints, for a service routed as one whatever the port.
    /// A service without a TrafficSplit has one subset (the operator names it `default`)
    /// holding every endpoint. Empty when `ports` routes the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    /// Checked in order before the weights; the first match picks the subset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RouteRule>,
    /// One route per port of a multi-port service: each port has its own endpoints (a pod
    /// serves each port on its own target port) and, when a TrafficSplit names the port, its
    /// own split. A call names the port in its Host or URI (`payments:81`), or by the address
    /// interception caught it going to; without a port it goes to port 80, or to the only port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortConfig>,
    #[serde(default)]
    pub policy: Policy,
}

/// The route of one port of a service.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortConfig {
    /// The service port callers use (`payments:81`), not the pods' target port: endpoints
    /// carry that.
    pub port: u16,
    /// The port's name in the Service, for people reading `/config`.
    pub name: Option<String>,
    /// This port's ClusterIP addresses (`10.96.0.12:81`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<SocketAddr>,
    pub subsets: Vec<Subset>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RouteRule>,
}

impl ServiceConfig {
    /// The routes of this service: `(port, addresses, subsets, rules)`, one with port `None`
    /// for a service routed as one.
    pub fn routes(&self) -> Vec<Route<'_>> {
        if self.ports.is_empty() {
            vec![Route {
                port: None,
                addresses: &self.addresses,
                subsets: &self.subsets,
                rules: &self.rules,
            }]
        } else {
            self.ports
                .iter()
                .map(|p| Route {
                    port: Some(p.port),
                    addresses: &p.addresses,
                    subsets: &p.subsets,
                    rules: &p.rules,
                })
                .collect()
        }
    }
}

/// One route of a service, borrowed from its config (see [`ServiceConfig::routes`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Route<'a> {
    /// `None`: the route of a service routed as one, whatever the port.
    pub port: Option<u16>,
    pub addresses: &'a [SocketAddr],
    pub subsets: &'a [Subset],
    pub rules: &'a [RouteRule],
}

/// A named group of endpoints that receives `weight` parts of the traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    pub name: String,
    pub weight: u32,
    #[serde(default)]
    pub endpoints: Vec<SocketAddr>,
}

/// Sends requests that match to one subset, whatever the weights say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRule {
    #[serde(rename = "match")]
    pub matches: RouteMatch,
    pub subset: String,
}

/// All given conditions must hold. Header names compare case-insensitively, values exactly.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    pub path_prefix: Option<String>,
}

/// How calls to one service behave; every block is optional and absent means off.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    pub timeouts: Option<Timeouts>,
    pub retries: Option<Retries>,
    pub circuit_breaker: Option<CircuitBreaker>,
    pub outlier_detection: Option<OutlierDetection>,
    pub load_balancer: Option<LoadBalancer>,
    pub fallback: Option<Fallback>,
    /// Delays and aborts injected by the caller's sidecar, to rehearse the bad day.
    pub faults: Option<Faults>,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timeouts {
    /// The whole call, retries and backoff included.
    pub request: Option<Duration>,
    /// One attempt, until the response headers arrive.
    pub per_try: Option<Duration>,
    /// Establishing a connection to an endpoint.
    pub connect: Option<Duration>,
    /// Silence on a response body being streamed.
    pub idle: Option<Duration>,
    /// From a `mode: DryRun` policy: see [`InboundTimeouts::dry_run`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retries {
    /// Retries after the first try (at most 10).
    pub attempts: u32,
    #[serde(default = "Retries::default_retry_on")]
    pub retry_on: Vec<RetryOn>,
    #[serde(default)]
    pub backoff: Backoff,
    pub budget: Option<RetryBudget>,
    /// From a `mode: DryRun` policy: see [`InboundTimeouts::dry_run`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

impl Retries {
    pub fn default_retry_on() -> Vec<RetryOn> {
        vec![
            RetryOn::ServerError,
            RetryOn::ConnectFailure,
            RetryOn::Reset,
        ]
    }
}

/// Classes of failed attempts worth another try. The ResiliencePolicy CRD uses this type too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RetryOn {
    /// Any 5xx answer, and everything `gateway-error` covers.
    #[serde(rename = "5xx")]
    ServerError,
    /// 502, 503, 504 and per-try timeouts.
    #[serde(rename = "gateway-error")]
    GatewayError,
    /// No connection could be made.
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    /// The connection broke before the response headers arrived.
    #[serde(rename = "reset")]
    Reset,
    /// 409 Conflict.
    #[serde(rename = "retriable-4xx")]
    Retriable4xx,
    /// The application's own 429 Too Many Requests, retried no earlier than its `Retry-After`
    /// (capped by `backoff.max`). The sidecars' `rate-limited` refusals are never retried.
    #[serde(rename = "429")]
    TooManyRequests,
    /// gRPC status 1 `CANCELLED` (from `grpc-status` in the headers or the trailers).
    #[serde(rename = "cancelled")]
    Cancelled,
    /// gRPC status 4 `DEADLINE_EXCEEDED`.
    #[serde(rename = "deadline-exceeded")]
    DeadlineExceeded,
    /// gRPC status 8 `RESOURCE_EXHAUSTED`.
    #[serde(rename = "resource-exhausted")]
    ResourceExhausted,
    /// gRPC status 14 `UNAVAILABLE`.
    #[serde(rename = "unavailable")]
    Unavailable,
}

impl RetryOn {
    /// Every class, in the order the CRD schema lists them.
    pub const ALL: [RetryOn; 10] = [
        RetryOn::ServerError,
        RetryOn::GatewayError,
        RetryOn::ConnectFailure,
        RetryOn::Reset,
        RetryOn::Retriable4xx,
        RetryOn::TooManyRequests,
        RetryOn::Cancelled,
        RetryOn::DeadlineExceeded,
        RetryOn::ResourceExhausted,
        RetryOn::Unavailable,
    ];
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backoff {
    #[serde(default = "Backoff::default_base")]
    pub base: Duration,
    #[serde(default = "Backoff::default_max")]
    pub max: Duration,
    #[serde(default = "Backoff::default_multiplier")]
    pub multiplier: f64,
    #[serde(default)]
    pub jitter: Jitter,
}

impl Backoff {
    fn default_base() -> Duration {
        Duration::from_millis(25)
    }
    fn default_max() -> Duration {
        Duration::from_millis(250)
    }
    fn default_multiplier() -> f64 {
        2.0
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Self::default_base(),
            max: Self::default_max(),
            multiplier: Self::default_multiplier(),
            jitter: Jitter::Full,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Jitter {
    /// Sleep a uniformly random time between zero and the computed backoff.
    #[default]
    Full,
    None,
}

impl Jitter {
    /// Every choice, in the order the CRD schema lists them.
    pub const ALL: [Jitter; 2] = [Jitter::Full, Jitter::None];
}

/// Retries may add at most `ratio` of the requests, plus `minPerSecond`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    pub ratio: f64,
    pub min_per_second: u32,
}

impl Default for RetryBudget {
    /// On even when a policy sets none: retry storms are how meshes amplify outages.
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
        }
    }
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: Option<u32>,
    /// The share of failed calls (0–1) over `window` that opens the breaker, once `minRequests`
    /// calls were seen in it. Either trigger (this or `failureThreshold`) opens it; at least one
    /// is set.
    pub failure_rate: Option<f64>,
    /// The sliding window `failureRate` is measured over.
    #[serde(default = "CircuitBreaker::default_window")]
    pub window: Duration,
    /// Calls that must be seen in `window` before `failureRate` is judged.
    #[serde(default = "CircuitBreaker::default_min_requests")]
    pub min_requests: u32,
    /// Consecutive successes in half-open that close it again.
    #[serde(default = "CircuitBreaker::default_success_threshold")]
    pub success_threshold: u32,
    /// How long it stays open before letting trial calls through.
    #[serde(default = "CircuitBreaker::default_open_duration")]
    pub open_duration: Duration,
    /// From a `mode: DryRun` policy: see [`InboundTimeouts::dry_run`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

impl CircuitBreaker {
    pub fn default_window() -> Duration {
        Duration::from_secs(10)
    }
    pub fn default_min_requests() -> u32 {
        20
    }
    fn default_success_threshold() -> u32 {
        1
    }
    fn default_open_duration() -> Duration {
        Duration::from_secs(30)
    }
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default = "OutlierDetection::default_interval")]
    pub interval: Duration,
    #[serde(default = "OutlierDetection::default_base_ejection_time")]
    pub base_ejection_time: Duration,
    #[serde(default = "OutlierDetection::default_max_ejection_percent")]
    pub max_ejection_percent: u32,
    /// From a `mode: DryRun` policy: see [`InboundTimeouts::dry_run`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

impl OutlierDetection {
    fn default_interval() -> Duration {
        Duration::from_secs(10)
    }
    fn default_base_ejection_time() -> Duration {
        Duration::from_secs(30)
    }
    fn default_max_ejection_percent() -> u32 {
        10
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bulkhead {
    pub max_concurrent: u32,
    #[serde(default)]
    pub max_queued: u32,
    #[serde(default = "Bulkhead::default_queue_timeout")]
    pub queue_timeout: Duration,
    /// From a `mode: DryRun` policy: see [`InboundTimeouts::dry_run`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

impl Bulkhead {
    fn default_queue_timeout() -> Duration {
        Duration::from_secs(1)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    pub requests_per_second: f64,
    /// Tokens the bucket holds: how many requests may come at once after a quiet spell.
    pub burst: u32,
    #[serde(default)]
    pub key: RateLimitKey,
    /// From a `mode: DryRun` policy: see [`InboundTimeouts::dry_run`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// Whose requests share one bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum RateLimitKey {
    /// One bucket for everyone.
    #[default]
    None,
    /// One bucket per source IP address.
    Source,
    /// One bucket per value of this request header (lower case); requests without it share one.
    Header(String),
}

impl std::fmt::Display for RateLimitKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Source => f.write_str("source"),
            Self::Header(name) => write!(f, "header:{name}"),
        }
    }
}

impl std::str::FromStr for RateLimitKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "source" => Ok(Self::Source),
            _ => match s.strip_prefix("header:") {
                Some(name) if is_header_name(name) => Ok(Self::Header(name.to_ascii_lowercase())),
                Some(_) => Err(format!("{s:?}: the header name is not a valid HTTP token")),
                None => Err(format!("{s:?}: expected `none`, `source` or `header:NAME`")),
            },
        }
    }
}

/// Whether `s` is a valid HTTP header name (an RFC 9110 token).
pub fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Serialize for RateLimitKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RateLimitKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    #[serde(default)]
    pub policy: LoadBalancerPolicy,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancerPolicy {
    RoundRobin,
    /// Power of two random choices, fewer requests in flight wins.
    #[default]
    LeastRequest,
    /// Power of two random choices over a peak-sensitive moving average of latency.
    Ewma,
}

impl LoadBalancerPolicy {
    /// Every policy, in the order the CRD schema lists them.
    pub const ALL: [LoadBalancerPolicy; 3] = [
        LoadBalancerPolicy::RoundRobin,
        LoadBalancerPolicy::LeastRequest,
        LoadBalancerPolicy::Ewma,
    ];
}

/// The answer given instead of a failure (a 5xx or one of the sidecar's own refusals).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fallback {
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default = "Fallback::default_content_type")]
    pub content_type: String,
}

impl Fallback {
    fn default_content_type() -> String {
        "text/plain".to_owned()
    }
}

/// Faults the caller's sidecar injects into calls to the service.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Faults {
    /// Holds `percent` % of the calls for `duration` before sending them.
    pub delay: Option<FaultDelay>,
    /// Answers `percent` % of the calls at once with `status` and
    /// `x-weir-reason: fault-injected`; never retried.
    pub abort: Option<FaultAbort>,
    /// From a `mode: DryRun` policy: see [`InboundTimeouts::dry_run`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// The share of calls delayed, 0–100 (fractions allowed: 0.1 is one call in a thousand).
    pub percent: f64,
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// The share of calls aborted, 0–100.
    pub percent: f64,
    /// The status answered, 200–599.
    pub status: u16,
}
