//! `weir-operator`: Weir's control plane.
//!
//! Module map (each module's own doc says more):
//! - `app`: the wiring, in one place — what `weir-operator run` (`app::cluster`) and
//!   `weir-operator local` (`app::local`) start side by side: listeners, sources, controllers,
//!   readiness and shutdown. `main.rs` only parses the command line and calls it.
//! - `shutdown`: the shutdown channel every long-running task waits on, and the signals.
//! - `snapshot`: what is served — per service its outbound config and inbound policy, versioned.
//! - `translate`: the pure function from resources, Services and endpoints to proxy config
//!   (`translate::policy`: ResiliencePolicy blocks; `translate::precedence`: Service, Namespace
//!   and Mesh policies combined; `translate::split`: a TrafficSplit's subsets, kept weights
//!   included; `translate::verdict`: the verdict on each resource and its log line).
//! - `incremental`: translating again only the Services a change touches (local mode).
//! - `kubernetes`: the cluster source — watches and stores, the translation loop, the status
//!   writer, leader election, TokenReview, the client naming the field manager.
//! - `local`: the YAML folder source — parsing documents, reading the folder, the local loop.
//! - `server`: the accept loop every operator listener runs on (config API, admin, webhook):
//!   header-read timeout, connection cap, bounded graceful drain, optional TLS.
//! - `config_api`: the config API the sidecars long-poll (protocol in `weir_proxy_api::protocol`):
//!   routes, auth, long-poll, proxy tracking, NACK memory, push accounting.
//! - `admin`: the admin listener (`/metrics`, `/ready`, `/live`, `/proxies`, `/status`,
//!   `/autoscalers`, the dashboard's routes).
//! - `dashboard`: the live web dashboard (`/dashboard`) and the service graph it draws
//!   (`/api/graph`), from the connected sidecars' metrics.
//! - `metrics`: the operator's Prometheus registry (names from the design's sidecar contract).
//! - `autoscaler`: the Autoscaler — the pure HPA-style algorithm with panic mode, its simulation
//!   against a plain HPA, sidecar scraping, the local loop and the Kubernetes controller.
//! - `analysis`: canary analysis — TrafficSplit rollouts judged from the callers' sidecars, in a
//!   cluster (`analysis::cluster`) and in local mode (`analysis::local`).
//! - `webhook`: the sidecar injection webhook (admission, the pod patch, its TLS).
//! - `install_test`: `weir-operator test-connection`, what `helm test` runs.
//! - `check`: `weir-operator check`, diagnostics of a cluster or a folder.
//!
//! Dependencies point one way: `app` uses the sources and listeners, the sources use
//! `translate` and `snapshot`, and nothing below `app` starts another subsystem.
#![forbid(unsafe_code)]

pub mod admin;
pub mod analysis;
pub mod app;
pub mod autoscaler;
pub mod check;
pub mod config_api;
pub mod dashboard;
pub mod incremental;
pub mod install_test;
pub mod kubernetes;
pub mod local;
pub mod metrics;
pub mod server;
pub mod shutdown;
pub mod snapshot;
pub mod translate;
pub mod webhook;
