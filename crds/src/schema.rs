//! Building blocks for the CRD schemas: the bounds every field gets and the schema fragments that
//! the derived [`JsonSchema`](schemars::JsonSchema) cannot express by itself.
//!
//! The resource types use these through `#[schemars(transform = ...)]` and
//! `#[schemars(schema_with = ...)]` attributes, so `Kind::crd()` (kube's `CustomResourceExt`) and
//! [`crate::crds`] produce the same, complete schema.
//!
//! What the Kubernetes API server needs (see DESIGN.md, "CRD schema facts"):
//! - every integer and number has an explicit `minimum` and `maximum` (a `format` is only a label);
//! - every string, array and map is bounded (`maxLength`, `maxItems`, `maxProperties`), so the
//!   API server's static cost estimate of the CEL rules (`x-kubernetes-validations`) stays small;
//! - durations are Go-style strings (`250ms`, `1m30s`) checked by [`DURATION_PATTERN`].

use schemars::{Schema, SchemaGenerator, json_schema};
use serde_json::{Value, json};

/// Go/Kubernetes duration syntax, as CEL's `duration()` and the sidecar accept it.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";
/// The longest duration string accepted.
pub const DURATION_MAX_LENGTH: u64 = 32;
/// A Kubernetes object name that must be a DNS-1035 label (a Service name).
pub const DNS_LABEL_PATTERN: &str = r"^[a-z]([-a-z0-9]*[a-z0-9])?$";
/// A namespace name (DNS-1123 label: may start with a digit).
pub const DNS_1123_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A subset name: label-value syntax, so it can appear in metrics labels and in the
/// `v1=90,v2=10` weights summary without escaping.
pub const SUBSET_PATTERN: &str = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$";
/// The rate-limit key: `none`, `source` or `header:NAME` with an HTTP token as NAME.
pub const RATE_LIMIT_KEY_PATTERN: &str = r"^(none|source|header:[A-Za-z0-9!#$%&'*+.^_`|~-]+)$";
/// An HTTP header value without control characters (for `fallback.contentType`).
pub const HEADER_VALUE_PATTERN: &str = r"^[^\x00-\x1F\x7F]+$";
/// `IP:port` (IPv4, or IPv6 in brackets), for LocalService endpoints.
pub const ADDRESS_PATTERN: &str = r"^([0-9]{1,3}(\.[0-9]{1,3}){3}|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$";
/// The largest `observedGeneration` the schema accepts: 2^53 - 1, exact in every JSON parser.
pub const MAX_GENERATION: i64 = 9_007_199_254_740_991;
/// The largest backend weight ([`weir_proxy_api::bounds::WEIGHT`]).
pub const MAX_WEIGHT: i32 = weir_proxy_api::bounds::WEIGHT.max as i32;
/// At most this many backends in a TrafficSplit (bounds the CEL rules over them).
pub const MAX_BACKENDS: u64 = 64;
/// At most this many analysis steps ([`weir_proxy_api::bounds::ANALYSIS_MAX_STEPS`]).
pub const MAX_ANALYSIS_STEPS: u64 = weir_proxy_api::bounds::ANALYSIS_MAX_STEPS as u64;
/// At most this many routing rules in a TrafficSplit.
pub const MAX_RULES: u64 = 64;

/// Appends a CEL rule to the schema's `x-kubernetes-validations`.
pub(crate) fn add_rule(schema: &mut Schema, rule: &str, message: &str) {
    let rules = schema
        .ensure_object()
        .entry("x-kubernetes-validations")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(rules) = rules {
        rules.push(json!({ "rule": rule, "message": message }));
    }
}

fn insert(schema: &mut Schema, key: &str, value: Value) {
    schema.insert(key.to_owned(), value);
}

/// A Go-style duration string (`250ms`, `2s`, `1m30s`) by its syntax alone.
pub(crate) fn duration(schema: &mut Schema) {
    insert(schema, "pattern", DURATION_PATTERN.into());
    insert(schema, "maxLength", DURATION_MAX_LENGTH.into());
}

/// The CEL rule that holds a duration to `min..=max` (the API server's CEL parses durations as Go
/// does, so an absurd one such as `5000000000000000h` fails to parse and is refused as well).
pub fn duration_rule(min: Option<std::time::Duration>, max: std::time::Duration) -> String {
    let max = format!(
        "duration(self) <= duration('{}')",
        weir_proxy_api::Duration(max)
    );
    match min {
        Some(min) => format!(
            "duration(self) >= duration('{}') && {max}",
            weir_proxy_api::Duration(min)
        ),
        None => max,
    }
}

/// A duration held to `bound` by a CEL rule whose message gives the range and `examples`.
fn duration_within(
    schema: &mut Schema,
    bound: &weir_proxy_api::bounds::Bound<std::time::Duration>,
    examples: &str,
) {
    duration(schema);
    add_rule(
        schema,
        &duration_rule(Some(bound.min), bound.max),
        &format!(
            "{}, such as {examples}",
            weir_proxy_api::bounds::duration_message(bound)
        ),
    );
}

/// A duration of a policy: 1ms–24h ([`weir_proxy_api::bounds::DURATION`]).
pub(crate) fn bounded_duration(schema: &mut Schema) {
    duration_within(schema, &weir_proxy_api::bounds::DURATION, "250ms or 2s");
}

/// An analysis `interval`: 1s–24h ([`weir_proxy_api::bounds::ANALYSIS_INTERVAL`]).
pub(crate) fn analysis_interval(schema: &mut Schema) {
    duration_within(
        schema,
        &weir_proxy_api::bounds::ANALYSIS_INTERVAL,
        "30s or 5m",
    );
}

/// Analysis `steps`: unique (a `set`) and sorted, so strictly increasing.
pub(crate) fn increasing_steps(schema: &mut Schema) {
    insert(schema, "x-kubernetes-list-type", "set".into());
    add_rule(
        schema,
        "self.isSorted()",
        "analysis.steps must be strictly increasing",
    );
}

/// A window that may be empty (an Autoscaler's `stabilizationWindow`: `0s` means none): at most
/// the longest duration, 24h.
pub(crate) fn window_duration(schema: &mut Schema) {
    let max = weir_proxy_api::bounds::DURATION.max;
    duration(schema);
    add_rule(
        schema,
        &duration_rule(None, max),
        &format!(
            "must be at most {}, such as 0s or 5m",
            weir_proxy_api::Duration(max)
        ),
    );
}

/// A `circuitBreaker.window`: 1s–24h ([`weir_proxy_api::bounds::BREAKER_WINDOW`]).
pub(crate) fn breaker_window(schema: &mut Schema) {
    duration_within(schema, &weir_proxy_api::bounds::BREAKER_WINDOW, "10s or 1m");
}

/// A DNS-1123 label, the name of a Service or of a namespace (a Service's must also start with
/// a letter: a CEL rule where the kind is known).
pub(crate) fn object_name(schema: &mut Schema) {
    insert(schema, "pattern", DNS_1123_LABEL_PATTERN.into());
    insert(schema, "maxLength", 63.into());
}

/// A Service name in the same namespace (DNS-1035 label).
pub(crate) fn service_name(schema: &mut Schema) {
    insert(schema, "pattern", DNS_LABEL_PATTERN.into());
    insert(schema, "maxLength", 63.into());
}

/// A subset name (see [`SUBSET_PATTERN`]).
pub(crate) fn subset_name(schema: &mut Schema) {
    insert(schema, "pattern", SUBSET_PATTERN.into());
    insert(schema, "maxLength", 63.into());
}

/// Pod labels: at most 64, values as Kubernetes allows them (at most 63 characters).
pub(crate) fn labels(schema: &mut Schema) {
    insert(schema, "maxProperties", 64.into());
    if let Some(Value::Object(values)) = schema.get_mut("additionalProperties") {
        values.insert("maxLength".into(), 63.into());
    }
}

/// Request headers to match: at most 16, values at most 1024 characters.
pub(crate) fn headers(schema: &mut Schema) {
    insert(schema, "maxProperties", 16.into());
    if let Some(Value::Object(values)) = schema.get_mut("additionalProperties") {
        values.insert("maxLength".into(), 1024.into());
    }
}

/// The target of an Autoscaler metric: `x-kubernetes-int-or-string`. The bounds apply by value
/// type (the API server checks `minimum`/`maximum` only on integers and `pattern`/`maxLength` only
/// on strings); which type each metric needs is a CEL rule on the metric.
pub(crate) fn metric_target(schema: &mut Schema) {
    insert(schema, "minimum", 1.into());
    insert(schema, "maximum", 1_000_000.into());
    duration(schema);
}

/// The values `all` serialize to, as a schema's `enum`: the CRD lists exactly what the proxy
/// config's type reads.
fn values_of<T: serde::Serialize>(all: &[T]) -> Value {
    serde_json::to_value(all).expect("unit variants serialize to strings")
}

/// `retryOn`: a list of [`weir_proxy_api::RetryOn`] classes.
pub(crate) fn retry_classes(schema: &mut Schema) {
    let items = json!({ "type": "string", "enum": values_of(&weir_proxy_api::RetryOn::ALL) });
    insert(schema, "items", items);
}

/// An optional field holding one of `all`: null is listed too, or the API server would refuse
/// an explicit null.
fn optional_one_of<T: serde::Serialize>(schema: &mut Schema, all: &[T]) {
    let mut values = values_of(all);
    if let Value::Array(values) = &mut values {
        values.push(Value::Null);
    }
    insert(schema, "enum", values);
}

/// `backoff.jitter`: one of [`weir_proxy_api::Jitter`].
pub(crate) fn jitters(schema: &mut Schema) {
    optional_one_of(schema, &weir_proxy_api::Jitter::ALL);
}

/// `loadBalancer.policy`: one of [`weir_proxy_api::LoadBalancerPolicy`].
pub(crate) fn load_balancer_policies(schema: &mut Schema) {
    optional_one_of(schema, &weir_proxy_api::LoadBalancerPolicy::ALL);
}

/// `status.conditions`: the Kubernetes `metav1.Condition` shape with the bounds that
/// `controller-gen` puts on it, as a list keyed by `type`.
pub(crate) fn conditions(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "The latest observations of the resource's state: `Accepted` (the spec is valid and its targets exist) and `Programmed` (pushed to every proxy that needs it).",
        "type": "array",
        "maxItems": 16,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "description": "Condition contains details for one aspect of the current state of this API Resource.",
            "type": "object",
            "required": ["lastTransitionTime", "message", "reason", "status", "type"],
            "properties": {
                "lastTransitionTime": {
                    "description": "The last time the condition transitioned from one status to another.",
                    "type": "string",
                    "format": "date-time"
                },
                "message": {
                    "description": "A human readable message indicating details about the transition. This may be an empty string.",
                    "type": "string",
                    "maxLength": 32768
                },
                "observedGeneration": {
                    "description": "The .metadata.generation that the condition was set based upon.",
                    "type": "integer",
                    "format": "int64",
                    "minimum": 0,
                    "maximum": MAX_GENERATION
                },
                "reason": {
                    "description": "A programmatic identifier for the reason of the condition's last transition, in CamelCase.",
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 1024,
                    "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
                },
                "status": {
                    "description": "Status of the condition: True, False or Unknown.",
                    "type": "string",
                    "enum": ["True", "False", "Unknown"]
                },
                "type": {
                    "description": "Type of condition in CamelCase or in foo.example.com/CamelCase.",
                    "type": "string",
                    "maxLength": 316,
                    "pattern": "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
                }
            }
        }
    })
}
