//! The config the proxy runs now, swapped atomically as a whole, and the wait of a first request
//! for a service the proxy has not subscribed to yet.

use crate::metrics::Metrics;
use crate::table::{RouteTable, ServiceKey, ServiceRoute};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use weir_proxy_api::ProxyConfig;

#[derive(Debug)]
pub struct Store {
    table: ArcSwap<RouteTable>,
    ready: AtomicBool,
    /// Bumped after every swap so that waiting requests look again.
    changed: watch::Sender<u64>,
    pub metrics: Metrics,
    /// In control-plane mode: where first requests ask for a subscription.
    subscriptions: OnceLock<mpsc::UnboundedSender<ServiceKey>>,
    /// Reference point of `ServiceRoute::last_used`.
    epoch: Instant,
}

/// Why a service cannot be called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved(pub String);

impl Store {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            table: ArcSwap::from_pointee(RouteTable::default()),
            ready: AtomicBool::new(false),
            changed: watch::channel(0).0,
            metrics,
            subscriptions: OnceLock::new(),
            epoch: Instant::now(),
        }
    }

    pub fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// True once a valid config has been applied.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Runs `config` from now on. The caller has validated it. Called from one task at a time
    /// (the config source), so reading the previous table here cannot race another apply.
    pub fn apply(&self, config: ProxyConfig, unknown: HashMap<ServiceKey, String>) {
        let previous = self.table.load();
        let version = config.version;
        let table = RouteTable::build(config, unknown, &previous, Instant::now());
        self.table.store(Arc::new(table));
        self.metrics
            .config_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        self.ready.store(true, Ordering::Release);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Turns on subscriptions: unknown services are asked for on `tx`.
    pub fn enable_subscriptions(&self, tx: mpsc::UnboundedSender<ServiceKey>) {
        let _ = self.subscriptions.set(tx);
    }

    pub fn seconds_since_epoch(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    /// The route of `key`, subscribing to it first when needed and waiting up to `wait` for the
    /// control plane's answer.
    pub async fn resolve(
        &self,
        key: &ServiceKey,
        wait: Duration,
    ) -> Result<Arc<ServiceRoute>, Unresolved> {
        if let Some(found) = self.lookup(key) {
            return found;
        }
        // Subscribe to changes before looking again, so an apply in between is not missed.
        let mut changes = self.changed.subscribe();
        if let Some(found) = self.lookup(key) {
            return found;
        }
        let Some(subscribe) = self.subscriptions.get() else {
            return Err(Unresolved(format!(
                "service {key} is not in this proxy's config"
            )));
        };
        let _ = subscribe.send(key.clone());
        let waited = tokio::time::timeout(wait, async {
            loop {
                if changes.changed().await.is_err() {
                    return None;
                }
                if let Some(found) = self.lookup(key) {
                    return Some(found);
                }
            }
        })
        .await;
        match waited {
            Ok(Some(found)) => found,
            Ok(None) | Err(_) => Err(Unresolved(format!(
                "no config for service {key} arrived from the control plane within {wait:?}"
            ))),
        }
    }

    fn lookup(&self, key: &ServiceKey) -> Option<Result<Arc<ServiceRoute>, Unresolved>> {
        let table = self.table.load();
        if let Some(route) = table.service(&key.namespace, &key.name) {
            // Written at most once a second: a shared cache line per request would cost more.
            let now = self.seconds_since_epoch();
            if route.last_used.load(Ordering::Relaxed) != now {
                route.last_used.store(now, Ordering::Relaxed);
            }
            return Some(Ok(route.clone()));
        }
        table
            .unknown
            .get(key)
            .map(|why| Err(Unresolved(format!("service {key}: {why}"))))
    }

    /// Brings gauges that change with time alone (breakers turning half-open, ejections
    /// expiring) up to date; called before each scrape.
    pub fn refresh_gauges(&self) {
        let now = Instant::now();
        let table = self.table.load();
        for route in table.services() {
            let name = route.key.name.as_str();
            if let Some(b) = &route.breaker {
                self.metrics
                    .circuit_breaker_state
                    .with_label_values(&[name])
                    .set(b.state(now).gauge());
            }
            if route.outlier.is_some() {
                let ejected = route.endpoints.iter().filter(|e| e.is_ejected(now)).count();
                self.metrics
                    .endpoints_ejected
                    .with_label_values(&[name])
                    .set(ejected as i64);
            }
        }
    }
}
