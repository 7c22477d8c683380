//! The config the proxy runs now, swapped atomically as a whole, and the wait of a first request
//! for a service the proxy has not subscribed to yet.
//!
//! Applying a config is isolated: a panic while building the new route table (a bug, or a value
//! some policy type cannot take) is caught, the running table stays, and the failure is kept
//! until a config applies again so that `/ready` reports it. The config sources run under
//! [`supervised`], which restarts a source task that panics anywhere else. A config source that
//! silently stopped would leave the proxy on an old config forever while it looks healthy.

use crate::metrics::Metrics;
use crate::refusal::{Reason, Refusal};
use crate::table::{PortMiss, RouteTable, ServiceKey, ServiceName, ServiceRoute};
use arc_swap::ArcSwap;
use futures::FutureExt;
use parking_lot::Mutex;
use std::any::Any;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
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
    /// Why the config source is failing (an apply or the source task panicked), until a config
    /// applies again; `/ready` answers 503 with it meanwhile.
    failure: Mutex<Option<String>>,
    /// Bumped after every swap so that waiting requests look again.
    changed: watch::Sender<u64>,
    pub metrics: Metrics,
    /// In control-plane mode: where first requests ask for a subscription.
    subscriptions: OnceLock<mpsc::UnboundedSender<ServiceKey>>,
    /// Reference point of `ServiceRoute::last_used`.
    epoch: Instant,
}

/// Applying a config failed: building its route table panicked. The running config stays.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("applying config version {version} failed: {why}")]
pub struct ApplyFailed {
    pub version: u64,
    /// The panic's message.
    pub why: String,
}

/// How a route table is built from a config; [`RouteTable::build`] but in tests.
pub type Build = fn(ProxyConfig, HashMap<ServiceKey, String>, &RouteTable, Instant) -> RouteTable;

/// Why a service cannot be called, as the refusal the caller gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// `no-healthy-endpoints` for what the mesh cannot serve (an unknown service or port);
    /// `bad-request` for a call that must say more (which port of a multi-port service).
    pub reason: Reason,
    pub message: String,
}

impl Unresolved {
    fn unavailable(message: String) -> Self {
        Self {
            reason: Reason::NoHealthyEndpoints,
            message,
        }
    }
}

impl From<Unresolved> for Refusal {
    fn from(why: Unresolved) -> Self {
        Refusal::new(why.reason, why.message)
    }
}

impl Store {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            table: ArcSwap::from_pointee(RouteTable::default()),
            ready: AtomicBool::new(false),
            failure: Mutex::new(None),
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

    /// What `/ready` says: ready, or why not (no config yet, or the config source failing).
    pub fn readiness(&self) -> Result<(), String> {
        if let Some(why) = self.failure.lock().as_ref() {
            return Err(why.clone());
        }
        if !self.is_ready() {
            return Err("no valid config loaded yet".to_owned());
        }
        Ok(())
    }

    /// Records that the config source is failing; `/ready` says so until a config applies.
    pub fn report_failure(&self, why: String) {
        *self.failure.lock() = Some(why);
    }

    /// Runs `config` from now on. The caller has validated it. Called from one task at a time
    /// (the config source), so reading the previous table here cannot race another apply.
    pub fn apply(
        &self,
        config: ProxyConfig,
        unknown: HashMap<ServiceKey, String>,
    ) -> Result<(), ApplyFailed> {
        self.apply_with(config, unknown, RouteTable::build)
    }

    /// [`Store::apply`] with the table built by `build`. A panic in `build` leaves the running
    /// table in force, is reported (see [`Store::readiness`]) and returned. Unwind safety: the
    /// state that `build` carries over from the previous table (breakers, endpoint health) lives
    /// behind atomics and non-poisoning locks, so a half-done build leaves it usable.
    pub fn apply_with(
        &self,
        config: ProxyConfig,
        unknown: HashMap<ServiceKey, String>,
        build: Build,
    ) -> Result<(), ApplyFailed> {
        let previous = self.table.load();
        let version = config.version;
        let built = std::panic::catch_unwind(AssertUnwindSafe(|| {
            build(config, unknown, &previous, Instant::now())
        }));
        let table = match built {
            Ok(table) => table,
            Err(panic) => {
                let failed = ApplyFailed {
                    version,
                    why: panic_message(panic.as_ref()),
                };
                self.report_failure(format!("{failed}; running the last good config"));
                return Err(failed);
            }
        };
        self.table.store(Arc::new(table));
        self.metrics
            .config_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        *self.failure.lock() = None;
        self.ready.store(true, Ordering::Release);
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Turns on subscriptions: unknown services are asked for on `tx`.
    pub fn enable_subscriptions(&self, tx: mpsc::UnboundedSender<ServiceKey>) {
        let _ = self.subscriptions.set(tx);
    }

    pub fn seconds_since_epoch(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    /// The route of a call to `port` of `key` (`None`: the call named no port), subscribing to
    /// the service first when needed and waiting up to `wait` for the control plane's answer.
    pub async fn resolve(
        &self,
        key: &ServiceName<'_>,
        port: Option<u16>,
        wait: Duration,
    ) -> Result<Arc<ServiceRoute>, Unresolved> {
        if let Some(found) = self.lookup(key, port) {
            return found;
        }
        // Subscribe to changes before looking again, so an apply in between is not missed.
        let mut changes = self.changed.subscribe();
        if let Some(found) = self.lookup(key, port) {
            return found;
        }
        let Some(subscribe) = self.subscriptions.get() else {
            return Err(Unresolved::unavailable(format!(
                "service {key} is not in this proxy's config"
            )));
        };
        let _ = subscribe.send(key.to_key());
        let waited = tokio::time::timeout(wait, async {
            loop {
                if changes.changed().await.is_err() {
                    return None;
                }
                if let Some(found) = self.lookup(key, port) {
                    return Some(found);
                }
            }
        })
        .await;
        match waited {
            Ok(Some(found)) => found,
            Ok(None) | Err(_) => Err(Unresolved::unavailable(format!(
                "no config for service {key} arrived from the control plane within {wait:?}"
            ))),
        }
    }

    fn lookup(
        &self,
        key: &ServiceName<'_>,
        port: Option<u16>,
    ) -> Option<Result<Arc<ServiceRoute>, Unresolved>> {
        let table = self.table.load();
        if let Some(found) = table.route(&key.namespace, &key.name, port) {
            return Some(match found {
                Ok(route) => {
                    // Written at most once a second: a shared cache line per request would
                    // cost more.
                    let now = self.seconds_since_epoch();
                    if route.last_used.load(Ordering::Relaxed) != now {
                        route.last_used.store(now, Ordering::Relaxed);
                    }
                    Ok(route.clone())
                }
                Err(miss) => Err(Unresolved {
                    reason: match miss {
                        PortMiss::Unknown { .. } => Reason::NoHealthyEndpoints,
                        PortMiss::Ambiguous { .. } => Reason::BadRequest,
                    },
                    message: format!("service {key} {miss}"),
                }),
            });
        }
        table
            .unknown
            .get(&key.to_key())
            .map(|why| Err(Unresolved::unavailable(format!("service {key}: {why}"))))
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
            if let Some(detector) = &route.outlier {
                self.metrics
                    .endpoints_ejected
                    .with_label_values(&[name])
                    .set(detector.ejected(now) as i64);
            }
        }
    }
}

/// The text of a panic's payload (`panic!("...")` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// How long a config source that panicked waits before it runs again: long enough that a
/// source panicking at once on every start does not spin, short enough that the next config
/// is not noticeably late.
pub const RESTART_DELAY: Duration = Duration::from_secs(1);

/// One run of the config source `task`, supervised: returns true when the task returned (at
/// shutdown). When it panicked, the panic is reported (an error log,
/// `weir_config_rejected_total{source}`, `/ready` not ready until a config applies again), and
/// false is returned after [`RESTART_DELAY`]: the caller runs the task again, with what it keeps
/// between runs. (A loop here taking an `AsyncFnMut` would be neater, but its futures are not
/// `Send` for `tokio::spawn` on today's compilers.)
pub async fn supervised(
    source: &'static str,
    store: &Store,
    task: impl std::future::Future<Output = ()>,
) -> bool {
    let Err(panic) = AssertUnwindSafe(task).catch_unwind().await else {
        return true;
    };
    let why = panic_message(panic.as_ref());
    store
        .metrics
        .config_rejected
        .with_label_values(&[source])
        .inc();
    tracing::error!(source, panic = %why, "the config task failed; restarting it, the last good config stays in force");
    store.report_failure(format!(
        "the {source} config task failed ({why}) and is restarting; running the last good config"
    ));
    tokio::time::sleep(RESTART_DELAY).await;
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(version: u64, weight: u32) -> ProxyConfig {
        ProxyConfig::from_json(
            format!(
                r#"{{"version": {version}, "services": [{{"name": "payments", "namespace": "shop",
                    "subsets": [{{"name": "v1", "weight": {weight}}}]}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    fn panicking(
        _: ProxyConfig,
        _: HashMap<ServiceKey, String>,
        _: &RouteTable,
        _: Instant,
    ) -> RouteTable {
        panic!("tower's budget asserts")
    }

    #[test]
    fn a_panicking_apply_keeps_the_running_table_and_is_reported_until_one_applies() {
        let store = Store::new(Metrics::new());
        assert_eq!(
            store.readiness(),
            Err("no valid config loaded yet".to_owned())
        );
        store.apply(config(1, 10), HashMap::new()).unwrap();
        assert_eq!(store.readiness(), Ok(()));

        let failed = store
            .apply_with(config(2, 20), HashMap::new(), panicking)
            .unwrap_err();
        assert_eq!(failed.version, 2);
        assert_eq!(failed.why, "tower's budget asserts");
        let why = store.readiness().unwrap_err();
        assert!(
            why.contains("applying config version 2 failed: tower's budget asserts"),
            "{why}"
        );
        assert_eq!(store.table().config.version, 1);
        assert_eq!(store.table().config.services[0].subsets[0].weight, 10);
        assert_eq!(store.metrics.config_version.get(), 1);

        store.apply(config(3, 30), HashMap::new()).unwrap();
        assert_eq!(store.readiness(), Ok(()));
        assert_eq!(store.table().config.services[0].subsets[0].weight, 30);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_reported_and_run_again() {
        let store = Store::new(Metrics::new());
        store.apply(config(1, 10), HashMap::new()).unwrap();
        let mut runs = 0;
        let started = Instant::now();
        loop {
            runs += 1;
            let run = runs;
            let finished = supervised("file", &store, async move {
                tokio::task::yield_now().await;
                assert!(run > 2, "run {run} fails");
            })
            .await;
            if finished {
                break;
            }
            let why = store.readiness().unwrap_err();
            assert!(why.contains("the file config task failed (run"), "{why}");
        }
        assert_eq!(runs, 3);
        assert_eq!(started.elapsed(), RESTART_DELAY * 2);
        assert_eq!(
            store
                .metrics
                .config_rejected
                .with_label_values(&["file"])
                .get(),
            2
        );
        // Still reported: no config has applied since.
        assert!(store.readiness().is_err());
        store.apply(config(2, 20), HashMap::new()).unwrap();
        assert_eq!(store.readiness(), Ok(()));
    }
}
