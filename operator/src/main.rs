//! The `weir-operator` binary: thin; the work is in the library.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use weir_operator::admin::{Admin, CONFIG_API, Readiness, StatusFeeds, WEBHOOK};
use weir_operator::autoscaler::status::AutoscalerList;
use weir_operator::config_api::ConfigApi;
use weir_operator::kubernetes;
use weir_operator::local::Resources;
use weir_operator::metrics::Metrics;
use weir_operator::snapshot::Snapshot;

#[derive(Debug, Parser)]
#[command(name = "weir-operator", version, about = "Weir's control plane")]
struct Cli {
    /// How log lines are written to stderr: `text` (coloured only when stderr is a terminal) or
    /// `json` (one object a line, for log collectors). Given before or after the subcommand.
    #[arg(long, global = true, env = "WEIR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The form of log lines, as the sidecar's `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
        /// How long a starting webhook (no certificate yet) keeps the operator unready; after
        /// it, `/ready` still names the webhook but answers 200, so the config API stays in
        /// the Service whatever happens to the webhook.
        #[arg(long, env = "WEIR_WEBHOOK_READY_GRACE_SECONDS", default_value_t = 30)]
        webhook_ready_grace_seconds: u64,
        /// How proxies polling the config API prove who they are: `token-review` (their pod's
        /// projected ServiceAccount token, audience `weir`, checked by TokenReview; 401
        /// otherwise) or `none` (trust what the poll says; the default until every sidecar
        /// presents its token).
        #[arg(long, env = "WEIR_CONFIG_API_AUTH", value_enum, default_value_t = ConfigApiAuth::None)]
        config_api_auth: ConfigApiAuth,
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
        /// The operator's namespace: the only one where a ResiliencePolicy of kind Mesh
        /// (mesh-wide defaults) is honoured.
        #[arg(long, env = "WEIR_OPERATOR_NAMESPACE", default_value = weir_operator::translate::precedence::DEFAULT_OPERATOR_NAMESPACE)]
        operator_namespace: String,
    },
    /// Diagnoses the mesh: one finding per problem, each with a hint; exits non-zero when any
    /// finding is an error. Checks the cluster of the kubeconfig, or with --dir a local folder.
    Check {
        /// Check this folder (what `weir-operator local --dir` reads) instead of a cluster.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// In a cluster: check the pods, proxies and resources of this namespace only.
        #[arg(long, short = 'n', conflicts_with = "dir")]
        namespace: Option<String>,
        /// text (grouped, for people) or json (for scripts).
        #[arg(long, short = 'o', value_enum, default_value_t = weir_operator::check::Output::Text)]
        output: weir_operator::check::Output,
    },
    /// Prints every CRD manifest as YAML (what `crds/` holds).
    Crds,
    /// What `helm test` runs: the operator answers `/ready` and the config API a poll
    /// (presenting `--token-file`, as a sidecar does); exits non-zero naming what failed.
    TestConnection {
        /// The operator's admin listener.
        #[arg(long)]
        admin: http::Uri,
        /// The config API.
        #[arg(long)]
        config_api: http::Uri,
        /// The namespace the poll names.
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        namespace: String,
        /// A token to present (the pod's projected ServiceAccount token, audience `weir`).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
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

/// `--config-api-auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ConfigApiAuth {
    None,
    TokenReview,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        // Colour codes only for a person at a terminal: `kubectl logs` and files show them raw.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
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
        Command::Check {
            dir,
            namespace,
            output,
        } => block_on(check(dir, namespace, output)),
        Command::Crds => {
            print!("{}", weir_crds::manifests_yaml());
            ExitCode::SUCCESS
        }
        Command::Local {
            dir,
            listen,
            admin,
            operator_namespace,
        } => block_on_current_thread(local(dir, listen, admin, operator_namespace)),
        Command::TestConnection {
            admin,
            config_api,
            namespace,
            token_file,
        } => block_on(async move {
            let target = weir_operator::install_test::Target {
                admin,
                config_api,
                namespace,
                token_file,
            };
            match weir_operator::install_test::run(&target).await {
                Ok(passed) => {
                    for line in passed {
                        println!("ok: {line}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("test-connection: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
        Command::Run {
            namespace,
            listen,
            admin,
            identity,
            leader_election,
            lease_name,
            lease_namespace,
            webhook,
            webhook_ready_grace_seconds,
            config_api_auth,
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
            // The operator's own namespace (in a pod, `POD_NAMESPACE`): the Lease's, and the
            // only one where a Mesh ResiliencePolicy is honoured.
            let lease_namespace =
                lease_namespace.unwrap_or_else(|| client.default_namespace().to_owned());
            settings.operator_namespace = Some(lease_namespace.clone());
            if leader_election {
                settings.lease = Some(kubernetes::LeaseSettings::new(lease_name, lease_namespace));
            }
            serve(
                listen,
                admin,
                // The controller writes each Autoscaler's status instead of `/autoscalers`.
                move |snapshots, readiness, metrics, _autoscalers, config_api, status, stopped| async move {
                    if config_api_auth == ConfigApiAuth::TokenReview {
                        config_api.require_authentication(Arc::new(
                            kubernetes::token_review::TokenReviewer::new(client.clone()),
                        ));
                    }
                    let mut settings = settings;
                    settings.config_api = Some(config_api);
                    // The rollouts, for the dashboard (`/status` lists nothing in a cluster).
                    settings.rollouts = Some(status.1);
                    let webhook_task = tokio::spawn(run_webhook(
                        client.clone(),
                        *webhook,
                        readiness.clone(),
                        Duration::from_secs(webhook_ready_grace_seconds),
                        metrics.webhook_admissions.clone(),
                        stopped.clone(),
                    ));
                    // The config API is ready once the first translation of the cluster's state
                    // is published, whatever the webhook does.
                    let mut published = snapshots.subscribe();
                    tokio::spawn(async move {
                        if published.changed().await.is_ok() {
                            readiness.ready(CONFIG_API);
                        }
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

/// Runs the injection webhook (nothing without `--webhook-listen`) and keeps its part of
/// `/ready`: not ready and gating while it starts, for at most `grace`; ready once it has a
/// certificate; not ready but no longer gating when it stopped or `grace` ran out.
async fn run_webhook(
    client: kube::Client,
    args: weir_operator::webhook::WebhookArgs,
    readiness: Arc<Readiness>,
    grace: Duration,
    admissions: prometheus::IntCounterVec,
    stopped: watch::Receiver<bool>,
) {
    if args.webhook_listen.is_none() {
        return;
    }
    readiness.not_ready(WEBHOOK, true, "starting: no certificate yet");
    let serving = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let run = weir_operator::webhook::run(
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

async fn check(
    dir: Option<PathBuf>,
    namespace: Option<String>,
    output: weir_operator::check::Output,
) -> ExitCode {
    use weir_operator::check;
    let report = match dir {
        Some(dir) => check::local::check(&dir),
        None => {
            let settings = check::cluster::Settings {
                namespace,
                ..check::cluster::Settings::default()
            };
            check::cluster::check_with_config(kube::Config::infer().await, &settings).await
        }
    };
    match output {
        check::Output::Text => print!("{}", report.text(check::colour_for_stdout())),
        check::Output::Json => print!("{}", report.json()),
    }
    ExitCode::from(report.exit_code())
}

fn block_on(work: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    run_on(tokio::runtime::Builder::new_multi_thread(), work)
}

/// Local mode on one async thread: it serves the proxies of one machine, and its heavy work
/// (reading, parsing, translating) runs on tokio's blocking pool anyway. Fewer threads
/// allocating means fewer glibc malloc arenas, each holding memory freed into it: at 10,000
/// services the operator's peak RSS fell by some 18 MiB (the README's memory figures).
fn block_on_current_thread(work: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    run_on(tokio::runtime::Builder::new_current_thread(), work)
}

fn run_on(
    mut builder: tokio::runtime::Builder,
    work: impl std::future::Future<Output = ExitCode>,
) -> ExitCode {
    match builder.enable_all().build() {
        Ok(runtime) => runtime.block_on(work),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            ExitCode::FAILURE
        }
    }
}

async fn local(
    dir: PathBuf,
    listen: SocketAddr,
    admin: SocketAddr,
    operator_namespace: String,
) -> ExitCode {
    if !dir.is_dir() {
        tracing::error!(dir = %dir.display(), "--dir is not a folder");
        return ExitCode::FAILURE;
    }
    tracing::info!(dir = %dir.display(), "weir-operator local");
    serve(
        listen,
        admin,
        move |snapshots, readiness, metrics, autoscalers, config_api, status, stopped| async move {
            // The Autoscalers of the folder, evaluated on what the folder source loaded; the
            // sidecar in front of an endpoint without `admin` is found among the proxies
            // connected to the config API, by its inbound listener.
            let (loaded, resources) = watch::channel(Arc::new(Resources::default()));
            let reconciles = metrics.clone();
            // The rollouts of the folder's splits, judged on the callers' sidecars: the
            // proxies connected to the config API.
            let (feeds, rollouts) = status;
            let callers_api = config_api.clone();
            let analysis_task = tokio::spawn(weir_operator::analysis::local::run(
                resources.clone(),
                move |service| weir_operator::analysis::local::callers_of(&callers_api, service),
                metrics.clone(),
                rollouts,
                stopped.clone(),
            ));
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
            weir_operator::local::run(
                dir,
                operator_namespace,
                snapshots,
                loaded,
                readiness,
                reconciles,
                feeds,
                stopped,
            )
            .await;
            let _ = autoscaler_task.await;
            let _ = analysis_task.await;
        },
    )
    .await
}

/// Runs a source with the config API and the admin listener beside it, until SIGTERM/SIGINT.
/// The config API is served once the source marks it ready in the [`Readiness`] it is given
/// (its first state loaded), independently of any other part.
async fn serve<S, F>(listen: SocketAddr, admin: SocketAddr, source: S) -> ExitCode
where
    S: FnOnce(
        watch::Sender<Arc<Snapshot>>,
        Arc<Readiness>,
        Arc<Metrics>,
        watch::Sender<Arc<AutoscalerList>>,
        Arc<ConfigApi>,
        (
            StatusFeeds,
            watch::Sender<Arc<weir_operator::analysis::local::Published>>,
        ),
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
    let readiness = Arc::new(Readiness::default());
    readiness.not_ready(
        CONFIG_API,
        true,
        "the first state is not loaded and published yet",
    );
    let (autoscalers, autoscalers_rx) = watch::channel(Arc::new(AutoscalerList::default()));
    let config_api = ConfigApi::new(snapshot_rx, metrics.clone());
    let (feeds, status, rollouts) = StatusFeeds::channels();
    let admin_server = Admin {
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        config_api: config_api.clone(),
        autoscalers: autoscalers_rx,
        status,
    };
    tracing::info!(config_api = %listen, admin = %admin, "serving");
    let source = tokio::spawn(source(
        snapshots,
        readiness.clone(),
        metrics,
        autoscalers,
        config_api.clone(),
        (feeds, rollouts),
        stopped.clone(),
    ));
    let admin_task = tokio::spawn(admin_server.serve(admin_listener, stopped.clone()));
    // Serve proxies only once the source has loaded its first state: an early poll would
    // otherwise be told that services defined there do not exist.
    let mut signal = std::pin::pin!(wait_for_signal());
    while !readiness.is_ready(CONFIG_API) {
        tokio::select! {
            () = &mut signal => {
                let _ = stop.send(true);
                return ExitCode::SUCCESS;
            }
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
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
