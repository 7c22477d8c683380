//! The sidecar's public contract, shared with the operator without pulling in the proxy.
//!
//! - [`config`]: [`ProxyConfig`], what one sidecar runs — its inbound policy and the services it
//!   calls, each with subsets, route rules, endpoints (per port for a multi-port service) and a
//!   resilience policy.
//! - [`bounds`]: the one table of ranges (DESIGN.md "Bounds"), also read by the CRD schemas.
//! - [`validate`]: parsing with errors that name the field (`services[0].subsets[1].weight`) and
//!   the semantic rules a config must pass before any sidecar applies it.
//! - [`protocol`]: the config API's wire types (JSON long-poll; see the module for the exchange).
//! - [`metrics_text`]: reading the sidecar's `/metrics` (the Prometheus text format as the
//!   sidecar writes it, bounded against hostile input) and its histogram quantiles.
//! - [`metrics_registry`]: the writing side, one Prometheus registry per process holding a
//!   binary's [`metrics_registry::MetricSet`] (the operator's and the sidecar's), encoded for
//!   `/metrics`.
//! - [`Duration`]: durations in the Go/Kubernetes syntax (`250ms`, `1m30s`).
//! - [`FileStamp`]: how a polled file (the sidecar's config file, the operator's YAML folder)
//!   tells it may have changed without being read.
//! - [`Ipv4Network`]: the one parser of IPv4 networks (`10.0.0.0/8`) for the interception rules
//!   and the injection webhook.
//!
//! `config` defines the types, `validate` checks them (and the ranges come from `bounds`);
//! `protocol` wraps configs for the wire. [`config::RetryOn`], [`config::Jitter`] and
//! [`config::LoadBalancerPolicy`] are also the ResiliencePolicy CRD's types (their `ALL` tables
//! give its schema's enums).
//!
//! Only serde, std and prometheus's registry here: no kube, no tokio, no hyper.
#![forbid(unsafe_code)]

pub mod bounds;
pub mod config;
mod duration;
mod file_stamp;
pub mod metrics_registry;
pub mod metrics_text;
mod network;
pub mod protocol;
pub mod validate;

pub use config::*;
pub use duration::{Duration, ParseDurationError};
pub use file_stamp::FileStamp;
pub use network::Ipv4Network;
pub use validate::InvalidConfig;
