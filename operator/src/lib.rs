//! `weir-operator`: Weir's control plane.
//!
//! - `snapshot`: what is served — per service its outbound config and inbound policy, versioned.
//! - `translate`: the pure function from resources, Services and endpoints to proxy config.
//! - `local`: the YAML folder source of `weir-operator local`.
//! - `config_api`: the config API the sidecars long-poll (protocol in `weir_proxy_api::protocol`).
//! - `dashboard`: the live web dashboard (`/dashboard`) and the service graph it draws
//!   (`/api/graph`), from the connected sidecars' metrics.
//! - `metrics`: the operator's Prometheus registry (names from the design's sidecar contract).
//! - `autoscaler`: the Autoscaler — the pure HPA-style algorithm with panic mode, its simulation
//!   against a plain HPA, sidecar scraping and the Kubernetes controller.
//! - `analysis`: canary analysis — TrafficSplit rollouts judged from the callers' sidecars.
//! - `webhook`: the sidecar injection webhook (admission, the pod patch, its TLS).
//! - `install_test`: `weir-operator test-connection`, what `helm test` runs.
//! - `check`: `weir-operator check`, diagnostics of a cluster or a folder.
#![forbid(unsafe_code)]

pub mod admin;
pub mod analysis;
pub mod autoscaler;
pub mod check;
pub mod config_api;
pub mod dashboard;
pub mod incremental;
pub mod install_test;
pub mod kubernetes;
pub mod local;
pub mod metrics;
pub mod snapshot;
pub mod translate;
pub mod webhook;
