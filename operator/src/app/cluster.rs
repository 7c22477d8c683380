//! `weir-operator run`: the control plane in a cluster.
//!
//! [`serve`] is the whole command: the Kubernetes client, the listeners, the injection webhook
//! and [`run`]. [`run`] is the cluster's controllers, started here side by side on one shared
//! set of stores: the watches (`crate::kubernetes::stores`), leader election
//! (`crate::kubernetes::leader`), the Autoscaler controller ([`crate::autoscaler::controller`],
//! reading the Pods from the same store: one Pod watch for the whole operator), canary analysis
//! (`crate::analysis::cluster`), the status writer (`crate::kubernetes::status`) and the
//! translation loop (`crate::kubernetes::translation`), which publishes the snapshots.

use super::{Core, Listeners, first_change};
use crate::admin::{Readiness, WEBHOOK};
use crate::kubernetes::leader::{self, LeaseSettings};
use crate::kubernetes::translation::{Loop, translate_loop};
use crate::kubernetes::{client, status, stores, token_review};
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What the cluster's controllers need to know; every field maps to a `weir-operator run` flag.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Watch only this namespace; every namespace when `None` (needs cluster-wide RBAC).
    pub namespace: Option<String>,
    /// This replica's name, unique among replicas (the pod's name, from `POD_NAME`): the Lease
    /// holder identity and the reporting instance of Events.
    pub identity: String,
    /// Leader election; `None` makes this replica the leader for good (one replica, tests).
    pub lease: Option<LeaseSettings>,
    /// How long a burst of watch events is collected before one translation: long enough to
    /// fold a rollout's events together, short enough to keep a weight edit well under 1 s.
    pub debounce: Duration,
    /// The config API serving what this source publishes: `Programmed` counts its proxies'
    /// acknowledgements. Without it no proxy is known and `Programmed` says `0/0 proxies`.
    pub config_api: Option<Arc<crate::config_api::ConfigApi>>,
    /// Where the canary analysis publishes its rollouts besides the translation and the status
    /// (the admin's dashboard); a channel of its own when `None`.
    pub rollouts: Option<watch::Sender<Arc<crate::analysis::Published>>>,
    /// The operator's own namespace: the only one where a `kind: Mesh` ResiliencePolicy is
    /// honoured (`weir-system` when `None`).
    pub operator_namespace: Option<String>,
    /// The Autoscaler controller's settings; its `namespace` and `identity` are taken from
    /// the fields above.
    pub autoscaler: crate::autoscaler::controller::Settings,
}

impl Settings {
    /// Every namespace, no leader election, a 75 ms debounce.
    pub fn new(identity: impl Into<String>) -> Self {
        let identity = identity.into();
        Self {
            namespace: None,
            autoscaler: crate::autoscaler::controller::Settings::new(identity.clone()),
            identity,
            lease: None,
            debounce: Duration::from_millis(75),
            config_api: None,
            rollouts: None,
            operator_namespace: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A reflector task stopped (it only does when it panicked): the stores would go stale.
    #[error("the {0} watch stopped")]
    WatchStopped(&'static str),
}

// The flags of `weir-operator run` (no doc comment: clap would take it for the command's about,
// which the binary's `Run` variant says).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Watch only this namespace (every namespace when absent).
    #[arg(long, env = "WEIR_NAMESPACE")]
    pub namespace: Option<String>,
    /// The config API the sidecars poll.
    #[arg(long, env = "WEIR_LISTEN", default_value = "0.0.0.0:15010")]
    pub listen: SocketAddr,
    /// /metrics, /ready, /live, /proxies, /autoscalers.
    #[arg(long, env = "WEIR_ADMIN", default_value = "127.0.0.1:15011")]
    pub admin: SocketAddr,
    /// This replica's name, unique among replicas (the pod's name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Elect one leader through a Lease, so two replicas can run; only the leader writes status.
    #[arg(long, env = "WEIR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// The Lease's name.
    #[arg(long, env = "WEIR_LEASE_NAME", default_value = "weir-operator")]
    pub lease_name: String,
    /// The Lease's namespace (default: the client's namespace, in a pod its own).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// The sidecar injection webhook (`--webhook-listen` turns it on).
    #[command(flatten)]
    pub webhook: crate::webhook::WebhookArgs,
    /// How long a starting webhook (no certificate yet) keeps the operator unready; after
    /// it, `/ready` still names the webhook but answers 200, so the config API stays in
    /// the Service whatever happens to the webhook.
    #[arg(long, env = "WEIR_WEBHOOK_READY_GRACE_SECONDS", default_value_t = 30)]
    pub webhook_ready_grace_seconds: u64,
    /// How proxies polling the config API prove who they are: `token-review` (their pod's
    /// projected ServiceAccount token, audience `weir`, checked by TokenReview; 401
    /// otherwise) or `none` (trust what the poll says; the default until every sidecar
    /// presents its token).
    #[arg(long, env = "WEIR_CONFIG_API_AUTH", value_enum, default_value_t = ConfigApiAuth::None)]
    pub config_api_auth: ConfigApiAuth,
}

/// `--config-api-auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConfigApiAuth {
    None,
    TokenReview,
}

/// Runs `weir-operator run` until SIGTERM/SIGINT.
pub async fn serve(args: Args) -> ExitCode {
    let client = match kube::Config::infer()
        .await
        .map_err(|e| e.to_string())
        .and_then(|config| client::client(config).map_err(|e| e.to_string()))
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "no Kubernetes API (in-cluster config or kubeconfig)");
            return ExitCode::FAILURE;
        }
    };
    let identity = args
        .identity
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("weir-operator-{}", std::process::id()));
    let mut settings = Settings::new(identity);
    settings.namespace = args.namespace;
    // The operator's own namespace (in a pod, `POD_NAMESPACE`): the Lease's, and the only one
    // where a Mesh ResiliencePolicy is honoured.
    let lease_namespace = args
        .lease_namespace
        .unwrap_or_else(|| client.default_namespace().to_owned());
    settings.operator_namespace = Some(lease_namespace.clone());
    if args.leader_election {
        settings.lease = Some(LeaseSettings::new(args.lease_name, lease_namespace));
    }
    let listeners = match Listeners::bind(args.listen, args.admin).await {
        Ok(listeners) => listeners,
        Err(code) => return code,
    };
    let (mut core, _no_status) = Core::new();
    if args.config_api_auth == ConfigApiAuth::TokenReview {
        core.config_api
            .require_authentication(Arc::new(token_review::TokenReviewer::new(client.clone())));
    }
    settings.config_api = Some(core.config_api.clone());
    // The rollouts, for the dashboard (`/status` lists nothing in a cluster, and the
    // Autoscaler controller writes each Autoscaler's status instead of `/autoscalers`).
    settings.rollouts = Some(core.rollouts.clone());
    core.start(
        "webhook",
        webhook(
            client.clone(),
            args.webhook,
            core.readiness.clone(),
            Duration::from_secs(args.webhook_ready_grace_seconds),
            core.metrics.webhook_admissions.clone(),
            core.stopped.clone(),
        ),
    );
    // The config API is ready once the first translation of the cluster's state is
    // published, whatever the webhook does.
    let first_state = first_change(core.snapshots.subscribe());
    let controllers = run(
        client,
        settings,
        core.snapshots.clone(),
        core.metrics.clone(),
        core.stopped.clone(),
    );
    core.start("Kubernetes controllers", async move {
        if let Err(e) = controllers.await {
            tracing::error!(error = %e, "the Kubernetes source stopped");
        }
    });
    core.serve(listeners, first_state).await
}

/// The cluster's controllers: watches the cluster and publishes snapshots on `snapshots` until
/// `shutdown` turns true; writes status and Events while this replica leads; scales the
/// Autoscalers' targets; runs the canary analyses. Returns an error only when a watch stops for
/// good; API errors are retried with backoff.
pub async fn run(
    client: kube::Client,
    settings: Settings,
    snapshots: watch::Sender<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let (changed_tx, changed_rx) = watch::channel(());
    let mut reflectors = JoinSet::new();
    let stores = stores::Stores::start(
        &client,
        settings.namespace.as_deref(),
        changed_tx,
        &mut reflectors,
    );
    let mut leader = leader::spawn(
        client.clone(),
        settings.identity.clone(),
        settings.lease.clone(),
        shutdown.clone(),
    );
    // The Autoscaler controller: actuation and status, leader-gated like ours. It reads the
    // Pods from our store and watches only what no one else reads (Autoscalers, HPAs).
    let mut autoscaling = settings.autoscaler.clone();
    autoscaling.identity = settings.identity.clone();
    autoscaling.namespace = settings.namespace.clone();
    let autoscaler_task = tokio::spawn(crate::autoscaler::controller::run(
        client.clone(),
        autoscaling,
        stores.pods.clone(),
        metrics.clone(),
        leader.receiver(),
        shutdown.clone(),
    ));
    // Canary analysis: the rollouts' weights feed the translation, their states the status.
    let analysis_tx = settings
        .rollouts
        .clone()
        .unwrap_or_else(|| watch::channel(Arc::default()).0);
    let analysis_rx = analysis_tx.subscribe();
    let (synced_tx, synced_rx) = watch::channel(false);
    let analysis_task = tokio::spawn(crate::analysis::cluster::run(
        client.clone(),
        settings.identity.clone(),
        stores.splits.clone(),
        stores.pods.clone(),
        settings.config_api.clone(),
        leader.receiver(),
        metrics.clone(),
        analysis_tx,
        synced_rx,
        shutdown.clone(),
    ));
    let (verdicts_tx, verdicts_rx) = watch::channel(Arc::new(status::Published::default()));
    let writer = status::StatusWriter::new(client, &settings.identity, stores.clone());
    let status_task = tokio::spawn(status::run(
        writer,
        verdicts_rx,
        analysis_rx.clone(),
        settings.config_api.clone(),
        leader.receiver(),
        metrics.clone(),
        shutdown.clone(),
    ));

    let result = translate_loop(
        Loop {
            stores: &stores,
            namespace: settings.namespace.as_deref(),
            operator_namespace: settings.operator_namespace.as_deref(),
            debounce: settings.debounce,
            snapshots: &snapshots,
            metrics: &metrics,
            reflectors: &mut reflectors,
            rollouts: analysis_rx,
            synced: synced_tx,
            verdicts: verdicts_tx,
        },
        changed_rx,
        shutdown,
    )
    .await
    .map_err(Error::WatchStopped);

    reflectors.shutdown().await;
    // The status task ends when the verdicts channel closes (dropped with the loop above) or
    // on shutdown; the leader task releases the Lease so another replica takes over at once.
    let _ = status_task.await;
    let _ = analysis_task.await;
    if let Ok(Err(e)) = autoscaler_task.await {
        tracing::error!(error = %e, "the autoscaler controller stopped");
    }
    leader.stop().await;
    result
}

/// Runs the injection webhook (nothing without `--webhook-listen`) and keeps its part of
/// `/ready`: not ready and gating while it starts, for at most `grace`; ready once it has a
/// certificate; not ready but no longer gating when it stopped or `grace` ran out.
async fn webhook(
    client: kube::Client,
    args: crate::webhook::WebhookArgs,
    readiness: Arc<Readiness>,
    grace: Duration,
    admissions: prometheus::IntCounterVec,
    stopped: watch::Receiver<bool>,
) {
    if args.webhook_listen.is_none() {
        return;
    }
    readiness.not_ready(WEBHOOK, true, "starting: no certificate yet");
    // The webhook says it serves through a flag (its entry function's interface), looked at
    // every 100 ms: a certificate arrives once, and a tenth of a second is nothing to `/ready`.
    let serving = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let run = crate::webhook::run(
        client,
        args,
        None,
        serving.clone(),
        Some(admissions),
        stopped,
    );
    let mut run = std::pin::pin!(run);
    let started = tokio::time::Instant::now();
    let mut given_up = false;
    loop {
        let state = tokio::select! {
            result = &mut run => {
                let detail = match result {
                    Ok(()) => "stopped".to_owned(),
                    Err(e) => {
                        tracing::error!(error = %e, "the injection webhook stopped");
                        format!("stopped: {e}")
                    }
                };
                readiness.not_ready(WEBHOOK, false, detail);
                return;
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                serving.load(std::sync::atomic::Ordering::Acquire)
            }
        };
        if state {
            if !readiness.is_ready(WEBHOOK) {
                readiness.ready(WEBHOOK);
            }
        } else if !given_up && started.elapsed() >= grace {
            given_up = true;
            tracing::warn!(
                ?grace,
                "the injection webhook has no certificate yet; the operator \
                is reported ready without it so the config API stays served"
            );
            readiness.not_ready(
                WEBHOOK,
                false,
                format!("no certificate after {}s (see the log)", grace.as_secs()),
            );
        }
    }
}
