//! `weir-operator`: Weir's control plane.
//!
//! - `snapshot`: what is served — per service its outbound config and inbound policy, versioned.
//! - `config_api`: the config API the sidecars long-poll (protocol in `weir_proxy_api::protocol`).
#![forbid(unsafe_code)]

pub mod config_api;
pub mod snapshot;
