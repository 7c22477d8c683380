//! Weir's custom resources (group `weir.dev`, version `v1alpha1`, namespaced): TrafficSplit,
//! ResiliencePolicy and Autoscaler, installed into clusters, and LocalService, read only by
//! `weir-operator local`. Field names are the public API (see the README's CRD reference).
#![forbid(unsafe_code)]

mod autoscaler;
mod local_service;
mod resilience_policy;
mod traffic_split;

pub use autoscaler::*;
pub use local_service::*;
pub use resilience_policy::*;
pub use traffic_split::*;

/// The API group of every Weir resource.
pub const GROUP: &str = "weir.dev";
/// The version of every Weir resource.
pub const VERSION: &str = "v1alpha1";

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
