//! The `weir-operator` binary: thin; the work is in the library.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tokio::net::TcpListener;
use tokio::sync::watch;
use weir_operator::admin::Admin;
use weir_operator::autoscaler::status::AutoscalerList;
use weir_operator::config_api::ConfigApi;
use weir_operator::kubernetes;
use weir_operator::local::Resources;
use weir_operator::metrics::Metrics;
use weir_operator::snapshot::Snapshot;

#[derive(Debug, Parser)]
#[command(name = "weir-operator", version, about = "Weir's control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// In a cluster: watches the Kubernetes API and serves the config API, metrics and health.
    Run {
        /// Watch only this namespace (every namespace when absent).
        #[arg(long, env = "WEIR_NAMESPACE")]
        namespace: Option<String>,
        /// The config API the sidecars poll.
        #[arg(long, env = "WEIR_LISTEN", default_value = "0.0.0.0:15010")]
        listen: SocketAddr,
        /// /metrics, /ready, /live, /proxies, /autoscalers.
        #[arg(long, env = "WEIR_ADMIN", default_value = "127.0.0.1:15011")]
        admin: SocketAddr,
        /// This replica's name, unique among replicas (the pod's name).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Elect one leader through a Lease, so two replicas can run; only the leader writes status.
        #[arg(long, env = "WEIR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
        leader_election: bool,
        /// The Lease's name.
        #[arg(long, env = "WEIR_LEASE_NAME", default_value = "weir-operator")]
        lease_name: String,
        /// The Lease's namespace (default: the client's namespace, in a pod its own).
        #[arg(long, env = "POD_NAMESPACE")]
        lease_namespace: Option<String>,
        /// The sidecar injection webhook (`--webhook-listen` turns it on).
        #[command(flatten)]
        webhook: Box<weir_operator::webhook::WebhookArgs>,
    },
    /// The same control plane fed by YAML files in a folder instead of the Kubernetes API.
    Local {
        /// Every *.yaml under it (multi-document allowed): TrafficSplit, ResiliencePolicy,
        /// Autoscaler and LocalService resources.
        #[arg(long, env = "WEIR_DIR")]
        dir: PathBuf,
        /// The config API the sidecars poll.
        #[arg(long, env = "WEIR_LISTEN", default_value = "127.0.0.1:15010")]
        listen: SocketAddr,
        /// /metrics, /ready, /live, /proxies, /autoscalers.
        #[arg(long, env = "WEIR_ADMIN", default_value = "127.0.0.1:15011")]
        admin: SocketAddr,
    },
    /// Prints every CRD manifest as YAML (what `crds/` holds).
    Crds,
    /// Runs load curves through Weir's autoscaler and a plain HPA side by side.
    SimulateAutoscaler {
        /// step, ramp, spike, sine, noisy or all.
        #[arg(long, default_value = "all")]
        curve: String,
        /// Write one PNG chart per curve (autoscaler-CURVE.png) into this folder.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::SimulateAutoscaler { curve, out } => {
            match weir_operator::autoscaler::run_simulation_command(&curve, out.as_deref()) {
                Ok(table) => {
                    print!("{table}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("simulate-autoscaler: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Crds => {
            print!("{}", weir_crds::manifests_yaml());
            ExitCode::SUCCESS
        }
        Command::Local { dir, listen, admin } => block_on(local(dir, listen, admin)),
        Command::Run {
            namespace,
            listen,
            admin,
            identity,
            leader_election,
            lease_name,
            lease_namespace,
            webhook,
        } => block_on(async move {
            let client = match kube::Config::infer()
                .await
                .map_err(|e| e.to_string())
                .and_then(|config| kubernetes::client::client(config).map_err(|e| e.to_string()))
            {
                Ok(client) => client,
                Err(e) => {
                    tracing::error!(error = %e, "no Kubernetes API (in-cluster config or kubeconfig)");
                    return ExitCode::FAILURE;
                }
            };
            let identity = identity
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| format!("weir-operator-{}", std::process::id()));
            let mut settings = kubernetes::Settings::new(identity);
            settings.namespace = namespace;
            if leader_election {
                let lease_namespace =
                    lease_namespace.unwrap_or_else(|| client.default_namespace().to_owned());
                settings.lease = Some(kubernetes::LeaseSettings::new(lease_name, lease_namespace));
            }
            serve(
                listen,
                admin,
                // The controller writes each Autoscaler's status instead of `/autoscalers`.
                move |snapshots, ready, metrics, _autoscalers, _config_api, stopped| async move {
                    // The injection webhook (nothing without --webhook-listen).
                    let serving = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let webhook_task = tokio::spawn({
                        let (client, stopped) = (client.clone(), stopped.clone());
                        let serving = serving.clone();
                        let admissions = Some(metrics.webhook_admissions.clone());
                        async move {
                            if let Err(e) = weir_operator::webhook::run(
                                client, *webhook, None, serving, admissions, stopped,
                            )
                            .await
                            {
                                tracing::error!(error = %e, "the injection webhook stopped");
                            }
                        }
                    });
                    // Ready once the first translation of the cluster's state is published and
                    // the webhook, if any, has a certificate to serve.
                    let mut published = snapshots.subscribe();
                    let flag = ready.clone();
                    tokio::spawn(async move {
                        if published.changed().await.is_err() {
                            return;
                        }
                        while !serving.load(std::sync::atomic::Ordering::Acquire) {
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                        flag.store(true, std::sync::atomic::Ordering::Release);
                    });
                    if let Err(e) =
                        kubernetes::run(client, settings, snapshots, metrics, stopped).await
                    {
                        tracing::error!(error = %e, "the Kubernetes source stopped");
                    }
                    let _ = webhook_task.await;
                },
            )
            .await
        }),
    }
}

fn block_on(work: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(work),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            ExitCode::FAILURE
        }
    }
}

async fn local(dir: PathBuf, listen: SocketAddr, admin: SocketAddr) -> ExitCode {
    if !dir.is_dir() {
        tracing::error!(dir = %dir.display(), "--dir is not a folder");
        return ExitCode::FAILURE;
    }
    tracing::info!(dir = %dir.display(), "weir-operator local");
    serve(
        listen,
        admin,
        move |snapshots, ready, metrics, autoscalers, config_api, stopped| async move {
            // The Autoscalers of the folder, evaluated on what the folder source loaded; the
            // sidecar in front of an endpoint without `admin` is found among the proxies
            // connected to the config API, by its inbound listener.
            let (loaded, resources) = watch::channel(Arc::new(Resources::default()));
            let autoscaler_task = tokio::spawn(weir_operator::autoscaler::local::run(
                weir_operator::autoscaler::local::Settings::default(),
                resources,
                move |namespace: &str, service: &str, address| {
                    config_api.admin_of(namespace, service, address)
                },
                metrics,
                autoscalers,
                stopped.clone(),
            ));
            weir_operator::local::run(dir, snapshots, loaded, ready, stopped).await;
            let _ = autoscaler_task.await;
        },
    )
    .await
}

/// Runs a source with the config API and the admin listener beside it, until SIGTERM/SIGINT.
async fn serve<S, F>(listen: SocketAddr, admin: SocketAddr, source: S) -> ExitCode
where
    S: FnOnce(
        watch::Sender<Arc<Snapshot>>,
        Arc<AtomicBool>,
        Arc<Metrics>,
        watch::Sender<Arc<AutoscalerList>>,
        Arc<ConfigApi>,
        watch::Receiver<bool>,
    ) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (config_listener, admin_listener) = match (
        TcpListener::bind(listen).await,
        TcpListener::bind(admin).await,
    ) {
        (Ok(c), Ok(a)) => (c, a),
        (Err(e), _) => {
            tracing::error!(addr = %listen, error = %e, "cannot listen (--listen)");
            return ExitCode::FAILURE;
        }
        (_, Err(e)) => {
            tracing::error!(addr = %admin, error = %e, "cannot listen (--admin)");
            return ExitCode::FAILURE;
        }
    };
    let metrics = Arc::new(Metrics::new());
    let (snapshots, snapshot_rx) = watch::channel(Arc::new(Snapshot::starting_now()));
    let (stop, stopped) = watch::channel(false);
    let ready = Arc::new(AtomicBool::new(false));
    let (autoscalers, autoscalers_rx) = watch::channel(Arc::new(AutoscalerList::default()));
    let config_api = ConfigApi::new(snapshot_rx, metrics.clone());
    let admin_server = Admin {
        metrics: metrics.clone(),
        ready: ready.clone(),
        config_api: config_api.clone(),
        autoscalers: autoscalers_rx,
    };
    tracing::info!(config_api = %listen, admin = %admin, "serving");
    let source = tokio::spawn(source(
        snapshots,
        ready.clone(),
        metrics,
        autoscalers,
        config_api.clone(),
        stopped.clone(),
    ));
    let admin_task = tokio::spawn(admin_server.serve(admin_listener, stopped.clone()));
    // Serve proxies only once the source has loaded its first state: an early poll would
    // otherwise be told that services defined there do not exist.
    let mut signal = std::pin::pin!(wait_for_signal());
    loop {
        if ready.load(std::sync::atomic::Ordering::Acquire) {
            break;
        }
        tokio::select! {
            () = &mut signal => {
                let _ = stop.send(true);
                return ExitCode::SUCCESS;
            }
            _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => {}
        }
    }
    let config_task = tokio::spawn(config_api.serve(config_listener, stopped));
    signal.await;
    tracing::info!("stopping");
    let _ = stop.send(true);
    for task in [source, admin_task, config_task] {
        let _ = task.await;
    }
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
