//! The `weir-sidecar` binary: parse the command line, start, wait for SIGTERM, drain, exit 0;
//! or, as `weir-sidecar init`, install the interception rules and exit.

use clap::Parser;
use std::process::ExitCode;
use weir_sidecar::{Cli, Command};

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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let running = match weir_sidecar::start(options).await {
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
