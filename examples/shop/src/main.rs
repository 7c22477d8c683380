//! `weir-shop`: every service of the demo shop, and the demo launcher. The services live in the
//! library; this only reads the command line and runs one of them.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::net::TcpListener;
use weir_shop::http::{Peer, Routing, Server};
use weir_shop::services::{DEFAULT_CALL_TIMEOUT, gateway, inventory, orders, payments, shipping};

#[derive(Debug, Parser)]
#[command(
    name = "weir-shop",
    version,
    about = "The Weir demo shop: its services and its launcher"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The API gateway / BFF: bearer-token auth, order placement, the aggregated home page.
    Gateway(GatewayArgs),
    /// Orders: the Order aggregate, the order history read model and the saga orchestrator.
    Orders(ServiceArgs),
    /// Inventory: stock and reservations.
    Inventory(ServiceArgs),
    /// Payments: event-sourced accounts, charges and refunds.
    Payments(PaymentsArgs),
    /// Shipping: shipments.
    Shipping(ServiceArgs),
    /// Runs the whole shop with Weir on this machine, with a live dashboard.
    Demo(weir_shop::demo::DemoArgs),
}

/// Where a service listens and how it reaches the others.
#[derive(Debug, Args)]
struct Network {
    /// The address this service listens on.
    #[arg(long)]
    listen: SocketAddr,
    /// The sidecar's outbound listener: calls to other services go there with `Host: <service>`.
    #[arg(long)]
    outbound: Option<SocketAddr>,
    /// Call a service straight at an address instead (`--peer inventory=127.0.0.1:18002`),
    /// for running without sidecars; repeatable, and wins over `--outbound`.
    #[arg(long = "peer", value_name = "SERVICE=ADDR")]
    peers: Vec<Peer>,
}

impl Network {
    fn routing(&self) -> Routing {
        Routing::new(self.outbound, self.peers.iter().cloned())
    }
}

#[derive(Debug, Args)]
struct ServiceArgs {
    #[command(flatten)]
    network: Network,
    /// The folder of the service's SQLite database (`DIR/<service>.db`), created if missing.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
}

#[derive(Debug, Args)]
struct GatewayArgs {
    #[command(flatten)]
    network: Network,
    /// Accepted like every service's; the gateway keeps no data.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct PaymentsArgs {
    #[command(flatten)]
    service: ServiceArgs,
    /// Which build to be: `v2` is the canary.
    #[arg(long, value_enum, default_value = "v1")]
    variant: payments::Variant,
    /// Store an account's snapshot every this many events (0: never).
    #[arg(long, default_value_t = payments::SNAPSHOT_EVERY)]
    snapshot_every: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Demo(args) = cli.command {
        return weir_shop::demo::run(args);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // The launcher sends each service's stderr to a log file: no colour codes there.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("weir-shop: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    let (name, listen) = match &command {
        Command::Gateway(a) => ("gateway", a.network.listen),
        Command::Orders(a) => ("orders", a.network.listen),
        Command::Inventory(a) => ("inventory", a.network.listen),
        Command::Payments(a) => ("payments", a.service.network.listen),
        Command::Shipping(a) => ("shipping", a.network.listen),
        Command::Demo(_) => unreachable!("handled in main"),
    };
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let server: Server = match command {
        Command::Gateway(a) => {
            let config = gateway::Config {
                routing: a.network.routing(),
                call_timeout: DEFAULT_CALL_TIMEOUT,
            };
            gateway::start(listener, config).await?
        }
        Command::Orders(a) => {
            let config = orders::Config {
                data_dir: a.data,
                routing: a.network.routing(),
                call_timeout: DEFAULT_CALL_TIMEOUT,
                saga: Default::default(),
            };
            orders::start(listener, config).await?
        }
        Command::Inventory(a) => {
            inventory::start(listener, inventory::Config { data_dir: a.data }).await?
        }
        Command::Payments(a) => {
            let config = payments::Config {
                data_dir: a.service.data,
                variant: a.variant,
                snapshot_every: a.snapshot_every,
            };
            payments::start(listener, config).await?
        }
        Command::Shipping(a) => {
            shipping::start(listener, shipping::Config { data_dir: a.data }).await?
        }
        Command::Demo(_) => unreachable!("handled in main"),
    };
    tracing::info!(service = name, addr = %server.addr(), "serving");
    server.run_until(shutdown_signal()).await;
    Ok(())
}

/// Ctrl-C or SIGTERM (what the launcher and Kubernetes send).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
