//! The tower layer both admission gates of the inbound side share (the bulkhead and the rate
//! limit): one gate for every connection of a service, enforced, or in dry run counting what it
//! would have refused. Each gate says in its own `tower::Service` impl how it admits.

use crate::body::BoxError;
use prometheus::IntCounter;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A gate as a tower layer.
#[derive(Debug)]
pub struct GateLayer<G> {
    gate: Arc<G>,
    /// For a dry-run gate: its `weir_dry_run_total` series, counted for each request that
    /// would have been refused and is let through instead.
    dry_run: Option<IntCounter>,
}

impl<G> GateLayer<G> {
    /// Enforced, or with `dry_run` counting on `counter` (resolved only then).
    pub fn new(gate: Arc<G>, dry_run: bool, counter: impl FnOnce() -> IntCounter) -> Self {
        let dry_run = dry_run.then(counter);
        Self { gate, dry_run }
    }
}

impl<G> Clone for GateLayer<G> {
    fn clone(&self) -> Self {
        Self {
            gate: self.gate.clone(),
            dry_run: self.dry_run.clone(),
        }
    }
}

impl<G, S> tower::Layer<S> for GateLayer<G> {
    type Service = Gated<G, S>;

    fn layer(&self, inner: S) -> Self::Service {
        Gated {
            inner,
            gate: self.gate.clone(),
            dry_run: self.dry_run.clone(),
        }
    }
}

/// A service behind a gate.
#[derive(Debug)]
pub struct Gated<G, S> {
    pub(crate) inner: S,
    pub(crate) gate: Arc<G>,
    pub(crate) dry_run: Option<IntCounter>,
}

impl<G, S: Clone> Clone for Gated<G, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            gate: self.gate.clone(),
            dry_run: self.dry_run.clone(),
        }
    }
}

/// The answer of a gated service.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;
