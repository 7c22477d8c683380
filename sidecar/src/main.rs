//! The `weir-sidecar` binary: parse the command line, start, wait for SIGTERM, drain, exit 0;
//! or, as `weir-sidecar init`, install the interception rules and exit.

use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;
use weir_sidecar::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let options = match cli.command {
        None => cli.proxy,
        Some(Command::Init(args)) => {
            return match weir_sidecar::intercept::init::run(&args) {
                Ok(done) if args.dry_run => {
                    print!("{done}");
                    ExitCode::SUCCESS
                }
                Ok(done) => {
                    tracing::info!("{done}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!(error = %e, "weir-sidecar init failed");
                    ExitCode::FAILURE
                }
            };
        }
    };
    let runtime = match weir_sidecar::runtime(options.threads) {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let running = match weir_sidecar::start_with(options, cli.connections).await {
            Ok(running) => running,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        let signal = wait_for_signal().await;
        tracing::info!(signal, "draining in-flight requests");
        if running.shutdown().await {
            tracing::info!("drained; bye");
        } else {
            tracing::warn!("drain timeout reached; closing the remaining connections");
        }
        ExitCode::SUCCESS
    })
}

/// Logs to stderr, filtered by `WEIR_LOG` (default `info`). Colour codes only when a person
/// reads stderr on a terminal: in a file or a log collector they are noise.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}
