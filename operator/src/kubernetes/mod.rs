//! The Kubernetes source of `weir-operator run`: watches the cluster, translates, publishes
//! snapshots, and (on the leader) writes status and Events. These parts are started side by side,
//! with the Autoscaler controller and canary analysis, by [`crate::app::cluster::run`].
//!
//! Layout:
//! - `stores`: one kube-runtime `watcher` + `reflector` per kind (TrafficSplit,
//!   ResiliencePolicy, Service, EndpointSlice, and Pods: their labels for subsets, for the
//!   Autoscaler controller, which shares this store, their status and CPU requests, and for
//!   canary analysis, the mesh's sidecars (`pods`)), each paused
//!   after errors by `recovery` (short capped backoff reset on success, 410 relisted at once) so
//!   watches resume within seconds of an API server outage, without a busy loop. Each reflector nudges one "something changed" channel, but only when a field
//!   the translation reads changed: a Pod's status churn or our own status writes re-translate
//!   nothing.
//! - `inputs`: the pure conversion of Services, EndpointSlices and Pods into the
//!   translation's `ServiceInfo`/`EndpointInfo` (port choice, readiness, labels).
//! - `translation`: the translation loop. A change wakes it, it waits `debounce` so a burst of
//!   watch events (a rollout touching many Pods and slices) makes one translation, then
//!   translates everything from the stores and publishes `Snapshot::next` when anything changed.
//! - `status`: the leader's status writer: `observedGeneration`, `Accepted` and `Programmed`
//!   conditions, the weights summary and per-backend endpoint counts, written with server-side
//!   apply on the status subresource only when they differ from what the object holds, plus an
//!   Event (kube-runtime's `Recorder`) whenever `Accepted` flips.
//! - canary analysis (`crate::analysis::cluster`, started beside): a task of its own whose rollout weights are
//!   applied to the splits before each translation (a weight change translates again) and whose
//!   states the status writer records in `status.analysis`.
//! - `leader`: leader election through a Lease (`kube-lease-manager`).
//! - `token_review`: who a proxy polling the config API is (`--config-api-auth token-review`).
//! - `recovery`: the retry delays of every API call (watches, status writes, the Lease).
//! - `client`: the kube client whose every write names the field manager `weir-operator`.
//!
//! Why reflectors and one debounced translation rather than a kube-runtime `Controller` per
//! kind: the translation is global — one EndpointSlice or Pod change can change many services'
//! config, a ResiliencePolicy and a TrafficSplit meet in one ServiceConfig, and the oldest of two
//! splits for one Service wins — so reconciling objects one by one would need a hand-kept
//! dependency graph (`watches` mappers for every relation) and would still have to see every
//! object to decide conflicts. Translating everything from the reflectors' stores on each
//! (debounced) change is simpler and deterministic: the same stores always give the same
//! snapshot, and `Snapshot::next` keeps the versions of untouched services, so proxies only get
//! what changed (an EndpointSlice change re-programs exactly the splits of its Service). We still
//! use kube-runtime for what it does well: watcher (list + watch, resume, re-list on 410),
//! reflector stores and the events `Recorder`.
//!
//! Status is written by a task of its own so a slow or failing API server never delays a
//! published config: it takes the verdicts of the latest published translation with the
//! snapshot they were published in and, while this replica holds the Lease, brings every
//! resource's status up to date — again 250 ms after proxies poll, since `Programmed` counts
//! the connected proxies (of `Settings::config_api`) that acknowledged those versions. Failures (API down,
//! 403, repeated 409) are logged with the resource named, counted as
//! `weir_reconcile_total{result="error"}`, and retried with backoff; a 409 re-reads the object
//! and retries at once. Non-leaders translate and publish the same config (both replicas serve
//! the config API) but never write status or Events.
//!
//! Metrics: each translation counts one `weir_reconcile_total{kind,result="success"}` per
//! resource it judged (refused resources too: the reconcile worked, the resource did not) and
//! observes the translation's duration in `weir_reconcile_duration_seconds{kind}`; a status
//! write that fails counts `result="error"`.
//!
//! RBAC this source needs (cluster-wide, or in the one watched namespace):
//! - `weir.dev` `trafficsplits`, `resiliencepolicies`: get, list, watch; their `/status`:
//!   get, patch;
//! - core `services`, `pods` and `discovery.k8s.io` `endpointslices`: list, watch;
//! - `events.k8s.io` `events`: create, patch;
//! - `coordination.k8s.io` `leases` in the Lease's namespace: get, create, patch.

pub mod client;
pub(crate) mod inputs;
pub(crate) mod leader;
pub(crate) mod pods;
pub(crate) mod recovery;
pub(crate) mod status;
pub(crate) mod stores;
#[cfg(test)]
mod tests;
pub mod token_review;
pub(crate) mod translation;

/// The cluster's controllers and their settings live with the rest of the wiring; kept here
/// under their old path for the integration tests.
pub use crate::app::cluster::{Error, Settings, run};
pub(crate) use crate::shutdown::stopped;

pub use client::FIELD_MANAGER;
pub use leader::LeaseSettings;
