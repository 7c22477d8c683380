//! Weir's custom resources (group `weir.dev`, version `v1alpha1`, namespaced): TrafficSplit,
//! ResiliencePolicy and Autoscaler, installed into clusters, and LocalService, read only by
//! `weir-operator local`. Field names are the public API (see the README's CRD reference).
//!
//! | kind | short name | what it does | `kubectl get` columns |
//! | --- | --- | --- | --- |
//! | [`TrafficSplit`] | `ts` | weighted routing across subsets of one Service (canary) | Service, Weights, Phase, Canary, Accepted, Age |
//! | [`ResiliencePolicy`] | `rp` | timeouts, retries, breaker, outlier detection, bulkhead, rate limit, load balancing, fallback, faults for calls to one Service, or defaults for a namespace or the mesh; `mode: DryRun` only counts | Kind, Target, Mode, Accepted, Age (and Effective with `-o wide`) |
//! | [`Autoscaler`] | `as` | replicas of a Deployment from live sidecar telemetry | Target, Min, Max, Desired, Current, Age (and Accepted with `-o wide`) |
//! | [`LocalService`] | — | where a service's endpoints are when there is no cluster | Port, Age |
//!
//! All four are in the category `weir` (`kubectl get weir`) and have a status subresource with
//! `observedGeneration` and `conditions` (the Kubernetes `Condition` shape: `Accepted`,
//! `Programmed`). The TrafficSplit's `Weights` column shows `status.weights`, a summary such as
//! `v1=90,v2=10` that the operator writes with [`weights_summary`] (a column over
//! `.spec.backends[*].weight` would show only the first weight).
//!
//! # Validation by the API server
//!
//! The schemas are structural `apiextensions.k8s.io/v1` schemas (no `$ref`, no
//! `additionalProperties` beside `properties`, no typed `anyOf` branches) that make the API server
//! refuse a bad resource on its own, before the operator sees it:
//! - required fields, and bounds on every value: integers and numbers have `minimum` and
//!   `maximum`, strings `maxLength` (and patterns for names, durations, keys), lists `maxItems`,
//!   maps `maxProperties` (see [`schema`] for the patterns and limits). The ranges of policy
//!   values and durations are DESIGN.md's Bounds table, taken from the constants of
//!   `weir_proxy_api::bounds` that the sidecar's validation uses, so the two cannot drift (a test
//!   walks the schemas against the table);
//! - durations are Go-style strings (`250ms`, `1m30s`) matching [`schema::DURATION_PATTERN`];
//! - unique keys: a TrafficSplit's backends are a list map keyed by `subset`, an Autoscaler's
//!   metrics by `type`, conditions by `type`;
//! - CEL rules (`x-kubernetes-validations`) for what spans fields: at least one non-zero weight,
//!   rule subsets name a backend, `targetRef.kind` is `Service`, `Namespace` or `Mesh` (with a
//!   `name` unless `Mesh`), a breaker has `failureThreshold` or `failureRate`, `perTry <= request`,
//!   `backoff.base <= backoff.max`, every policy duration between 1ms and 24h (a breaker's
//!   `window` between 1s and 24h; an
//!   Autoscaler's `stabilizationWindow` may be `0s`),
//!   `minReplicas <= maxReplicas`, and the type of each metric's target (a duration for
//!   `LatencyP99`, an integer otherwise; a `Cpu` target may exceed 100, as the HPA's
//!   utilization may, when pods may use more than their requests). Every rule is bounded so the API
//!   server's cost estimate stays far below its limits.
//!
//! # Modules
//!
//! One private module per kind, its types re-exported at the crate root: `traffic_split`,
//! `resilience_policy` (also [`PolicyStatus`], the status a LocalService shares; the retry
//! classes, jitter and balancing policy are `weir_proxy_api`'s own types, re-exported), `autoscaler`,
//! `local_service`, each declaring its spec with `weir_resource!` (the attributes all four kinds
//! share) and its status with `weir_status!` (the `observedGeneration` and `conditions` every
//! status starts with), both defined here; and [`schema`], the schema fragments, patterns and
//! limits they use.
//!
//! # Manifests
//!
//! [`crds`] returns the four CustomResourceDefinitions and [`manifests_yaml`] prints them as one
//! multi-document YAML (what `weir-operator crds` prints). The same YAML is checked in, one file per
//! kind, as `crds/<plural>.yaml` ([`manifest_files`]); a test fails when those files are stale. After
//! changing a type, regenerate them with
//!
//! ```text
//! WEIR_UPDATE_CRDS=1 cargo test -p weir-crds
//! ```
#![forbid(unsafe_code)]

/// Declares the spec of one Weir kind: every kind is namespaced, in group `weir.dev` at `v1alpha1`
/// and in category `weir`, derives the same traits, leaves unset optional fields out, and ends its
/// `kubectl get` columns with `Age`; the kinds reconciled in a cluster show their `Accepted`
/// condition in an `Accepted` column, the same JSONPath in each. Said once here rather than on
/// each kind: the `#[kube]` attribute takes only literals, so nothing but a macro can share it.
/// The caller gives the spec's docs, the rest of its `#[kube]` arguments (each ending with a
/// comma) as `kube(...)`, then optionally `accepted(DESCRIPTION)` (with `, priority = N` to show
/// it only with `-o wide`) and the columns that follow it as `after_accepted(...)`, its other
/// attributes and the (public) struct.
macro_rules! weir_resource {
    (
        $(#[doc = $doc:literal])*
        kube($($kube:tt)*)
        $(accepted($accepted:literal $(, priority = $priority:literal)?))?
        $(after_accepted($($after:tt)*))?
        $(#[$($attr:tt)*])*
        pub struct $name:ident { $($body:tt)* }
    ) => {
        $(#[doc = $doc])*
        // Each `printcolumn(...)` repeats `name = `, `type_ = `...: not a duplicated attribute.
        #[allow(clippy::duplicated_attributes)]
        #[serde_with::skip_serializing_none]
        #[derive(
            kube::CustomResource,
            Debug,
            Clone,
            PartialEq,
            serde::Serialize,
            serde::Deserialize,
            schemars::JsonSchema
        )]
        #[kube(
            group = "weir.dev",
            version = "v1alpha1",
            namespaced,
            category = "weir",
            $($kube)*
            $(
                printcolumn(
                    name = "Accepted",
                    type_ = "string",
                    json_path = r#".status.conditions[?(@.type=="Accepted")].status"#,
                    description = $accepted
                    $(, priority = $priority)?
                ),
            )?
            $($($after)*)?
            printcolumn(
                name = "Age",
                type_ = "date",
                json_path = ".metadata.creationTimestamp"
            )
        )]
        #[serde(rename_all = "camelCase")]
        $(#[$($attr)*])*
        pub struct $name { $($body)* }
    };
}

/// Declares the status of one Weir kind: every status starts with the `metadata.generation` it
/// describes and the conditions (`Accepted`, `Programmed`), with the same schema in every kind,
/// then the kind's own fields. Said once here because those two fields are the contract
/// `kubectl wait` and the operator's status writers rely on in every kind; the caller gives the
/// status's docs and its own fields.
macro_rules! weir_status {
    (
        $(#[doc = $doc:literal])*
        $vis:vis struct $name:ident { $($body:tt)* }
    ) => {
        $(#[doc = $doc])*
        #[serde_with::skip_serializing_none]
        #[derive(
            Debug,
            Clone,
            Default,
            PartialEq,
            serde::Serialize,
            serde::Deserialize,
            schemars::JsonSchema
        )]
        #[serde(rename_all = "camelCase")]
        $vis struct $name {
            /// The `metadata.generation` this status describes.
            #[schemars(range(min = 0, max = crate::schema::MAX_GENERATION))]
            pub observed_generation: Option<i64>,
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            #[schemars(schema_with = "crate::schema::conditions")]
            pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
            $($body)*
        }
    };
}

mod autoscaler;
mod local_service;
mod resilience_policy;
pub mod schema;
mod traffic_split;

pub use autoscaler::*;
pub use local_service::*;
pub use resilience_policy::*;
pub use traffic_split::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every Weir resource.
pub const GROUP: &str = "weir.dev";
/// The version of every Weir resource.
pub const VERSION: &str = "v1alpha1";

/// The first lines of every generated manifest.
pub const MANIFEST_HEADER: &str = "# Generated by the weir-crds crate (crds/src); do not edit.\n\
     # Regenerate with: WEIR_UPDATE_CRDS=1 cargo test -p weir-crds\n";

/// Every Weir CustomResourceDefinition: TrafficSplit, ResiliencePolicy, Autoscaler, LocalService.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        TrafficSplit::crd(),
        ResiliencePolicy::crd(),
        Autoscaler::crd(),
        LocalService::crd(),
    ]
}

/// One CRD as a YAML document (starting with [`MANIFEST_HEADER`], without `---`).
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    // Long one-line descriptions stay on one line (no folded `>-` blocks); multi-line ones are
    // literal `|-` blocks: the manifests read as they always did.
    let options = serde_saphyr::ser_options! { folded_wrap_chars: usize::MAX };
    let body = serde_saphyr::to_string_with_options(crd, options)
        .expect("a CustomResourceDefinition serializes to YAML");
    format!("{MANIFEST_HEADER}{body}")
}

/// The checked-in manifest files: (file name under `crds/`, content), one per kind, named after
/// the plural (`trafficsplits.yaml`, ...).
pub fn manifest_files() -> Vec<(String, String)> {
    crds()
        .iter()
        .map(|crd| (format!("{}.yaml", crd.spec.names.plural), crd_yaml(crd)))
        .collect()
}

/// Every CRD as one multi-document YAML, documents separated by `---` lines.
pub fn manifests_yaml() -> String {
    crds()
        .iter()
        .map(crd_yaml)
        .collect::<Vec<_>>()
        .join("---\n")
}
