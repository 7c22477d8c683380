//! The `weir-operator` binary: its command line, parsed and dispatched; the work is in the
//! library (each mode's wiring in `weir_operator::app`).

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use weir_operator::app;

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
    Run(Box<weir_operator::app::cluster::Args>),
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
        } => block_on_current_thread(app::local::serve(dir, listen, admin, operator_namespace)),
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
        Command::Run(args) => block_on(app::cluster::serve(*args)),
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
