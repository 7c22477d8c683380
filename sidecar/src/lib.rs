//! `weir-sidecar`: Weir's data-plane proxy.
//!
//! One process beside each application container, with three listeners: **outbound** (the app's
//! calls to other services: routing, split, retries, timeouts, breaker, outlier detection, load
//! balancing, fallback), **inbound** (calls to the app: rate limit, bulkhead, timeouts) and
//! **admin** (`/metrics`, `/ready`, `/live`, `/config`).
//!
//! Layout:
//! - [`Options`] and [`start`]: the command line and the running proxy; `main.rs` is thin.
//! - `store`, `table`: the running config as an immutable [`table::RouteTable`] swapped whole;
//!   per-service state (endpoints, breaker, budget) carries over across reloads.
//! - `config_file`, `control_plane`: the two config sources (a file, or the operator's config
//!   API); both validate before applying and keep the last good config.
//! - `proxy::outbound`, `proxy::inbound`, `proxy::upstream`, `proxy::headers`: moving requests.
//! - `breaker`, `endpoint` (outlier detection, balancers), `bulkhead`, `rate_limit`, `retry`:
//!   the policies, each small, pure where it can be, and unit-tested with tokio's paused clock.
//! - `refusal`: the one place where refusals become responses with `x-weir-reason`.
//! - `metrics`: the contract's Prometheus metrics.
//! - `intercept`: transparent interception — `weir-sidecar init` and its iptables rules, the
//!   original destination of redirected connections, protocol detection and opaque TCP.
#![forbid(unsafe_code)]

pub mod admin;
pub mod body;
pub mod breaker;
pub mod bulkhead;
pub mod config_file;
pub mod control_plane;
pub mod endpoint;
pub mod intercept;
pub mod metrics;
pub mod probe;
pub mod proxy;
pub mod rate_limit;
pub mod refusal;
pub mod retry;
pub mod server;
pub mod store;
pub mod table;

use crate::metrics::Metrics;
use crate::proxy::{inbound::Inbound, outbound::Outbound, upstream::Upstream};
use crate::store::Store;
use hyper_util::server::graceful::GracefulShutdown;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The command line: the proxy's options, or a subcommand.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "weir-sidecar",
    version,
    about = "Weir's data-plane proxy",
    // `weir-sidecar init` needs none of the proxy's required options.
    subcommand_negates_reqs = true
)]
pub struct Cli {
    // Flattened so that `weir-sidecar --config FILE …` stays as it was before subcommands.
    #[command(flatten)]
    pub proxy: Options,
    // None: run the proxy.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Install the iptables rules that send the pod's TCP traffic through the sidecar (needs
    /// NET_ADMIN; run once, before the app starts), or remove them with --remove.
    Init(intercept::init::InitArgs),
}

/// The proxy's command line. Every flag has a `WEIR_*` environment equivalent.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// A ProxyConfig file (JSON), reloaded when it changes.
    #[arg(
        long,
        env = "WEIR_CONFIG",
        conflicts_with = "control_plane",
        required_unless_present = "control_plane"
    )]
    pub config: Option<PathBuf>,
    /// The operator's config API, e.g. http://127.0.0.1:15010.
    #[arg(long, env = "WEIR_CONTROL_PLANE")]
    pub control_plane: Option<http::Uri>,
    /// This proxy's service: the inbound policy it asks for and its metrics' service label.
    #[arg(long, env = "WEIR_SERVICE", default_value = "unknown")]
    pub service: String,
    /// This proxy's namespace: where bare service names resolve.
    #[arg(long, env = "WEIR_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// This proxy's pod (or instance) name, reported to the control plane.
    #[arg(long, env = "WEIR_POD")]
    pub pod: Option<String>,
    /// Where the application's outbound calls arrive.
    #[arg(long, env = "WEIR_OUTBOUND", default_value = "127.0.0.1:15001")]
    pub outbound: SocketAddr,
    /// Where calls to the application arrive.
    #[arg(long, env = "WEIR_INBOUND", default_value = "0.0.0.0:15006")]
    pub inbound: SocketAddr,
    /// The application itself.
    #[arg(long, env = "WEIR_APP", default_value = "127.0.0.1:8080")]
    pub app: SocketAddr,
    /// Metrics, health and the running config.
    #[arg(long, env = "WEIR_ADMIN", default_value = "127.0.0.1:15020")]
    pub admin: SocketAddr,
    /// Worker threads. One (the default, as Linkerd's proxy) runs everything on a single
    /// thread without cross-thread wake-ups, which costs the least CPU per request; more threads
    /// raise the ceiling for a busy pod.
    #[arg(long, env = "WEIR_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[arg(long, env = "WEIR_DRAIN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// A service not called for this long is unsubscribed (control-plane mode).
    #[arg(long, env = "WEIR_SUBSCRIPTION_IDLE", default_value = "10m", value_parser = parse_duration)]
    pub subscription_idle: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<weir_proxy_api::Duration>()
        .map(|d| d.get())
        .map_err(|e| e.to_string())
}

/// A started proxy.
#[derive(Debug)]
pub struct Running {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    pub store: Arc<Store>,
    stop: watch::Sender<bool>,
    listeners: Vec<JoinHandle<()>>,
    graceful: Arc<GracefulShutdown>,
    drain_timeout: Duration,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({which}): {source}")]
    Bind {
        which: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("--service {0:?} is not a DNS label (lower case letters, digits, '-')")]
    Service(String),
    #[error("--namespace {0:?} is not a DNS label (lower case letters, digits, '-')")]
    Namespace(String),
}

async fn bind(which: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            which,
            addr,
            source,
        })
}

/// Binds the listeners and starts the config source. Listening on port 0 picks free ports;
/// [`Running`] says which.
pub async fn start(options: Options) -> Result<Running, StartError> {
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if !label(&options.service) {
        return Err(StartError::Service(options.service));
    }
    if !label(&options.namespace) {
        return Err(StartError::Namespace(options.namespace));
    }
    let store = Arc::new(Store::new(Metrics::new()));
    let (stop, stopped) = watch::channel(false);
    let graceful_ref = Arc::new(GracefulShutdown::new());

    let outbound_listener = bind("outbound", options.outbound).await?;
    let inbound_listener = bind("inbound", options.inbound).await?;
    let admin_listener = bind("admin", options.admin).await?;
    let addr = |l: &TcpListener, fallback| l.local_addr().unwrap_or(fallback);
    let outbound_addr = addr(&outbound_listener, options.outbound);
    let inbound_addr = addr(&inbound_listener, options.inbound);
    let admin_addr = addr(&admin_listener, options.admin);

    let upstream = Upstream::new(store.clone(), table::DEFAULT_CONNECT_TIMEOUT);
    let outbound = Arc::new(Outbound {
        store: store.clone(),
        upstream: upstream.clone(),
        namespace: options.namespace.clone(),
    });
    let inbound = Arc::new(Inbound {
        store: store.clone(),
        upstream,
        app: http::uri::Authority::try_from(options.app.to_string())
            .expect("a socket address is an authority"),
        service: options.service.clone(),
    });

    let mut listeners = Vec::new();
    listeners.push(tokio::spawn(server::serve(
        outbound_listener,
        server::Interception::ToOriginalDst,
        move |accepted: server::Accepted, request| {
            outbound.clone().handle(accepted.original_dst, request)
        },
        stopped.clone(),
        graceful_ref.clone(),
    )));
    // An intercepted call to the app goes to the port the caller dialed: a pod's app may listen
    // on more than one.
    let app_ip = options.app.ip();
    listeners.push(tokio::spawn(server::serve(
        inbound_listener,
        server::Interception::ToApp(app_ip),
        move |accepted: server::Accepted, request| {
            let app = accepted
                .original_dst
                .map(|original| SocketAddr::new(app_ip, original.port()));
            inbound.clone().handle(accepted.peer, app, request)
        },
        stopped.clone(),
        graceful_ref.clone(),
    )));
    let admin_store = store.clone();
    listeners.push(tokio::spawn(server::serve(
        admin_listener,
        server::Interception::Off,
        move |_, request| admin::handle(admin_store.clone(), request),
        stopped.clone(),
        graceful_ref.clone(),
    )));

    match (&options.config, &options.control_plane) {
        (Some(path), _) => {
            tokio::spawn(config_file::watch(
                path.clone(),
                store.clone(),
                stopped.clone(),
            ));
        }
        (None, Some(url)) => {
            let (tx, rx) = mpsc::unbounded_channel();
            store.enable_subscriptions(tx);
            let settings = control_plane::Settings {
                url: url.clone(),
                node: weir_proxy_api::protocol::Node {
                    service: options.service.clone(),
                    namespace: options.namespace.clone(),
                    pod: options.pod.clone(),
                    // As bound: the port picked for port 0, an unspecified IP kept as given.
                    inbound: Some(inbound_addr),
                    admin: Some(admin_addr),
                },
                wait: Duration::from_secs(u64::from(
                    weir_proxy_api::protocol::DiscoveryRequest::DEFAULT_WAIT_SECONDS,
                )),
                subscription_idle: options.subscription_idle,
            };
            tokio::spawn(control_plane::run(
                settings,
                store.clone(),
                rx,
                stopped.clone(),
            ));
        }
        (None, None) => {}
    }

    tracing::info!(
        outbound = %outbound_addr, inbound = %inbound_addr, admin = %admin_addr, app = %options.app,
        service = %options.service, namespace = %options.namespace, "weir-sidecar listening"
    );
    Ok(Running {
        outbound: outbound_addr,
        inbound: inbound_addr,
        admin: admin_addr,
        store,
        stop,
        listeners,
        graceful: graceful_ref,
        drain_timeout: options.drain_timeout,
    })
}

impl Running {
    /// Stops accepting, lets in-flight requests finish up to the drain timeout, and returns
    /// whether everything drained in time.
    pub async fn shutdown(self) -> bool {
        let _ = self.stop.send(true);
        for listener in self.listeners {
            let _ = listener.await;
        }
        // The accept loops are done and dropped their handles: this is the last one.
        let Some(graceful) = Arc::into_inner(self.graceful) else {
            return false;
        };
        tokio::time::timeout(self.drain_timeout, graceful.shutdown())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};
    use intercept::init::BackendChoice;

    #[test]
    fn the_proxy_and_init_share_one_command_line() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["weir-sidecar", "--config", "proxy.json"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.proxy.config, Some(PathBuf::from("proxy.json")));
        assert_eq!(cli.proxy.outbound, "127.0.0.1:15001".parse().unwrap());

        let cli = Cli::try_parse_from([
            "weir-sidecar",
            "init",
            "--proxy-uid",
            "101",
            "--exclude-outbound-ports",
            "5432,6379",
            "--exclude-outbound-cidrs",
            "10.0.0.0/8",
            "--backend",
            "legacy",
        ])
        .unwrap();
        let Some(Command::Init(init)) = cli.command else {
            panic!("not init: {cli:?}");
        };
        assert_eq!(init.proxy_uid, 101);
        assert_eq!(init.inbound_port, 15006);
        assert_eq!(init.exclude_outbound_ports, [5432, 6379]);
        assert_eq!(init.exclude_outbound_cidrs[0].to_string(), "10.0.0.0/8");
        assert_eq!(init.backend, BackendChoice::Legacy);
        assert!(!init.remove);

        assert!(Cli::try_parse_from(["weir-sidecar"]).is_err());
        assert!(Cli::try_parse_from(["weir-sidecar", "init", "--remove", "--dry-run"]).is_err());
        assert!(
            Cli::try_parse_from([
                "weir-sidecar",
                "init",
                "--exclude-outbound-cidrs",
                "10.0.0.1/8"
            ])
            .is_err()
        );
    }
}
