//! The operator's wiring, in one place: what each mode starts, side by side.
//!
//! - [`cluster`]: `weir-operator run` — the config API, the admin listener, the injection webhook
//!   and the cluster's controllers ([`cluster::run`]: watches and stores, leader election, the
//!   translation loop, the status writer, canary analysis and the Autoscaler controller).
//! - [`local`]: `weir-operator local` — the config API, the admin listener, the folder source,
//!   the local rollouts and the local Autoscaler loop.
//!
//! Both share `Core`: the listeners are bound first (a taken port fails the start at once),
//! the admin listener answers from the start (`/live`, and `/ready` saying what is missing), and
//! the config API is served only once the source has loaded its first state — notified on a
//! `watch`, not polled — since an early poll would be told that services defined there do not
//! exist. Each subsystem is a named task of one `Subsystems` set: on SIGTERM/SIGINT every one
//! is told to stop through the same shutdown channel ([`crate::shutdown`]) and awaited, and a
//! subsystem that panicked is named in the log.

pub mod cluster;
pub mod local;
#[cfg(test)]
mod tests;

use crate::admin::{Admin, CONFIG_API, Readiness, StatusFeeds};
use crate::autoscaler::status::AutoscalerList;
use crate::config_api::ConfigApi;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The config API's and the admin's listeners, bound before anything else starts.
struct Listeners {
    config_api: TcpListener,
    admin: TcpListener,
}

impl Listeners {
    /// Binds both, logging which flag's address could not be taken (or that both are served).
    async fn bind(listen: SocketAddr, admin: SocketAddr) -> Result<Self, ExitCode> {
        match (
            TcpListener::bind(listen).await,
            TcpListener::bind(admin).await,
        ) {
            (Ok(config_api), Ok(admin_listener)) => {
                tracing::info!(config_api = %listen, admin = %admin, "serving");
                Ok(Self {
                    config_api,
                    admin: admin_listener,
                })
            }
            (Err(e), _) => {
                tracing::error!(addr = %listen, error = %e, "cannot listen (--listen)");
                Err(ExitCode::FAILURE)
            }
            (_, Err(e)) => {
                tracing::error!(addr = %admin, error = %e, "cannot listen (--admin)");
                Err(ExitCode::FAILURE)
            }
        }
    }
}

/// The named tasks of one mode. Why not a crate: a `JoinSet` and a name per task is all the
/// supervision the operator needs (stop together, name a task that panicked); a supervisor crate
/// would add restart policies nothing here wants.
#[derive(Default)]
pub(crate) struct Subsystems {
    tasks: JoinSet<()>,
    names: HashMap<tokio::task::Id, &'static str>,
}

impl Subsystems {
    /// Starts `work` as the subsystem `name`.
    pub(crate) fn start(
        &mut self,
        name: &'static str,
        work: impl Future<Output = ()> + Send + 'static,
    ) {
        let task = self.tasks.spawn(work);
        self.names.insert(task.id(), name);
    }

    /// Waits for every subsystem to end, naming any that panicked.
    pub(crate) async fn join(mut self) {
        while let Some(ended) = self.tasks.join_next_with_id().await {
            if let Err(e) = ended {
                let subsystem = self.names.get(&e.id()).copied().unwrap_or("unknown");
                tracing::error!(subsystem, error = %e, "a subsystem of the operator failed");
            }
        }
    }
}

/// What every mode shares: the published snapshots the config API serves, readiness and
/// metrics the admin listener serves, and the shutdown channel.
pub(crate) struct Core {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) snapshots: watch::Sender<Arc<Snapshot>>,
    pub(crate) readiness: Arc<Readiness>,
    pub(crate) config_api: Arc<ConfigApi>,
    /// What `/autoscalers` serves (local mode; in a cluster the controller writes status).
    pub(crate) autoscalers: watch::Sender<Arc<AutoscalerList>>,
    /// Where the canary analysis publishes its rollouts (the dashboard and `/status`).
    pub(crate) rollouts: watch::Sender<Arc<crate::analysis::Published>>,
    pub(crate) stopped: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    admin: Admin,
    subsystems: Subsystems,
}

impl Core {
    /// The core, and the feeds where a source publishes its verdicts and reads the rollouts'
    /// weights (for `/status`; a cluster lists nothing there and drops them).
    fn new() -> (Self, StatusFeeds) {
        let metrics = Arc::new(Metrics::new());
        let (snapshots, snapshot_rx) = watch::channel(Arc::new(Snapshot::starting_now()));
        let (stop, stopped) = watch::channel(false);
        let readiness = Arc::new(Readiness::default());
        readiness.not_ready(
            CONFIG_API,
            true,
            "the first state is not loaded and published yet",
        );
        let (autoscalers, autoscalers_rx) = watch::channel(Arc::new(AutoscalerList::default()));
        let config_api = ConfigApi::new(snapshot_rx, metrics.clone());
        let (feeds, status, rollouts) = StatusFeeds::channels();
        let admin = Admin {
            metrics: metrics.clone(),
            readiness: readiness.clone(),
            config_api: config_api.clone(),
            autoscalers: autoscalers_rx,
            status,
        };
        let core = Self {
            metrics,
            snapshots,
            readiness,
            config_api,
            autoscalers,
            rollouts,
            stopped,
            stop,
            admin,
            subsystems: Subsystems::default(),
        };
        (core, feeds)
    }

    /// Starts a subsystem beside the others.
    fn start(&mut self, name: &'static str, work: impl Future<Output = ()> + Send + 'static) {
        self.subsystems.start(name, work);
    }

    /// Serves the admin listener at once and the config API once `first_state` resolves (the
    /// source loaded and published its first state; it never resolves if the source gave up),
    /// until SIGTERM/SIGINT; then stops every subsystem and waits for them.
    async fn serve(
        self,
        listeners: Listeners,
        first_state: impl Future<Output = ()> + Send + 'static,
    ) -> ExitCode {
        let Self {
            readiness,
            config_api,
            stopped,
            stop,
            admin,
            mut subsystems,
            ..
        } = self;
        subsystems.start("admin", admin.serve(listeners.admin, stopped.clone()));
        let mut signal = std::pin::pin!(crate::shutdown::signal());
        tokio::select! {
            () = &mut signal => {
                // Nothing was served to proxies yet: no drain to wait for.
                let _ = stop.send(true);
                return ExitCode::SUCCESS;
            }
            () = first_state => readiness.ready(CONFIG_API),
        }
        subsystems.start(
            "config API",
            config_api.serve(listeners.config_api, stopped),
        );
        signal.await;
        tracing::info!("stopping");
        let _ = stop.send(true);
        subsystems.join().await;
        ExitCode::SUCCESS
    }
}

/// Resolves at the first change `changes` sees; never when its sender is gone first (the
/// source gave up: the operator stays unready, as `/ready` then says).
async fn first_change<T>(mut changes: watch::Receiver<T>) {
    if changes.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}
