//! The Autoscaler: replicas of a Deployment from live sidecar telemetry.
//!
//! - [`algorithm`]: the decision, a pure deterministic function of the metric history — the
//!   HPA v2's semantics (tolerance, missing and unready pods, stabilization windows, rate
//!   policies, bounds, condition reasons) plus Weir's windows over live sidecar samples and a
//!   Knative-style panic mode. Its module docs are the specification.
//! - `simulate` (with the `simulation` feature, on by default): load curves through Weir's
//!   algorithm and through a plain HPA in simulated time and the figures that compare them;
//!   `plot` (with `font`) draws their charts; [`run_simulation_command`] is
//!   `weir-operator simulate-autoscaler`, in every build (without the feature it says so).
//! - [`scrape`]: reading a sidecar's `/metrics` into samples (in-flight requests, requests/s
//!   from counter deltas, p99 latency from histogram deltas).
//! - [`controller`]: the Kubernetes side — Autoscalers, Deployments' `scale` subresource, Pods,
//!   conflicting HPAs, metrics.k8s.io, status, Events.
//! - [`local`]: the same decision in `weir-operator local`, for the Autoscalers of the folder —
//!   LocalServices stand for Deployments, their endpoints' sidecars are scraped, and the desired
//!   counts are published on the admin listener (`/autoscalers`, `/metrics`) for a launcher.
//! - [`status`]: the status (conditions, values) of one evaluation, shared by both.
//!
//! # Driving the algorithm yourself (tests, other actuators)
//!
//! [`Scaler`] bundles a parsed spec, the tuning and the state. Every couple of seconds, hand it
//! what you observed and apply what it says:
//!
//! ```
//! use std::time::Duration;
//! use weir_operator::autoscaler::Scaler;
//! use weir_operator::autoscaler::algorithm::{Observation, Pod, Sample};
//! use weir_crds::{AutoscalerSpec, MetricType};
//!
//! let spec: AutoscalerSpec = serde_json::from_value(serde_json::json!({
//!     "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "orders"},
//!     "minReplicas": 1, "maxReplicas": 5,
//!     "metrics": [{"type": "Concurrency", "target": 10}],
//! })).unwrap();
//! let mut scaler = Scaler::new(&spec).unwrap();
//! let now = Duration::from_secs(100); // any monotonic clock; the same origin on every call
//! let decision = scaler.evaluate(&Observation {
//!     now,
//!     spec_replicas: 1,                       // how many instances you asked for last
//!     pods: vec![Pod::ready("orders-1", Duration::ZERO)],
//!     samples: vec![Sample {                  // e.g. from `scrape::Scraper::scrape`
//!         pod: "orders-1".into(),
//!         metric: MetricType::Concurrency,
//!         at: now,
//!         window: Duration::ZERO,
//!         value: 35.0,
//!     }],
//! });
//! assert_eq!(decision.desired_replicas, 4);   // ceil(1 × 35 / 10); panic mode: at once
//! scaler.record_scale(now, 1, decision.desired_replicas); // after starting the instances
//! ```
//!
//! [`local`] does exactly this in `weir-operator local`: it scrapes each endpoint's sidecar
//! admin `/metrics` with [`scrape::Scraper`] (which keeps the counters between scrapes to turn
//! them into rates), lists the endpoints as [`algorithm::Pod`]s (Ready once the sidecar
//! answers), publishes [`algorithm::Decision::desired_replicas`] for a launcher to start or stop
//! instances, and reports each change with [`Scaler::record_scale`].

pub mod algorithm;
pub mod controller;
#[cfg(feature = "simulation")]
mod font;
pub mod local;
pub mod metrics_api;
#[cfg(feature = "simulation")]
mod plot;
pub mod scrape;
#[cfg(feature = "simulation")]
pub mod simulate;
mod simulation_command;
pub mod status;

pub use simulation_command::run_simulation_command;

use algorithm::{Decision, Observation, Spec, SpecError, State, Tuning};
use std::time::Duration;
use weir_crds::AutoscalerSpec;

/// One Autoscaler's algorithm: its parsed spec, Weir's tuning and the state between calls.
#[derive(Debug, Clone)]
pub struct Scaler {
    pub spec: Spec,
    pub tuning: Tuning,
    pub state: State,
}

impl Scaler {
    /// Weir's tuning for `spec`; an error names the field at fault.
    pub fn new(spec: &AutoscalerSpec) -> Result<Self, SpecError> {
        Ok(Self {
            spec: Spec::from_crd(spec)?,
            tuning: Tuning::weir(),
            state: State::new(),
        })
    }

    /// Takes a new spec (an edited Autoscaler) and keeps the history.
    pub fn update(&mut self, spec: &AutoscalerSpec) -> Result<(), SpecError> {
        self.spec = Spec::from_crd(spec)?;
        Ok(())
    }

    /// The metrics of the spec that are read from the sidecars (all but `Cpu`).
    pub fn sidecar_metrics(&self) -> Vec<weir_crds::MetricType> {
        self.spec
            .metrics
            .iter()
            .map(|m| m.kind)
            .filter(|k| *k != weir_crds::MetricType::Cpu)
            .collect()
    }

    /// One evaluation; see [`algorithm`].
    pub fn evaluate(&mut self, observation: &Observation) -> Decision {
        self.state.evaluate(&self.spec, &self.tuning, observation)
    }

    /// Reports a scale change that was made, for the rate limits.
    pub fn record_scale(&mut self, now: Duration, from: i32, to: i32) {
        self.state.record_scale(now, from, to, &self.spec);
    }
}
