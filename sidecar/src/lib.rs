//! `weir-sidecar`: Weir's data-plane proxy.
//!
//! One process beside each application container, with three listeners: **outbound** (the app's
//! calls to other services: routing, split, retries, timeouts, breaker, outlier detection, load
//! balancing, fallback), **inbound** (calls to the app: rate limit, bulkhead, timeouts) and
//! **admin** (`/metrics`, `/ready`, `/live`, `/config`).
//!
//! Layout:
//! - [`Options`] and [`start`]: the command line and the running proxy; [`runtime`]: the async
//!   runtime `--threads` asks for; `main.rs` is thin.
//! - `server`: the one accept loop every listener goes through — outbound, inbound and admin
//!   (the app's probes arrive on admin) — with the connection cap, the header-read and idle
//!   deadlines ([`server::Limits`]), descriptor exhaustion and the graceful drain.
//! - `store`, `table`: the running config as an immutable [`table::RouteTable`] swapped whole;
//!   per-service state (endpoints, breaker, budget) carries over across reloads.
//! - `config_file`, `control_plane`: the two config sources (a file, or the operator's config
//!   API); both validate before applying and keep the last good config.
//! - `admin`: metrics, health and the running config; `probe`: the app's probes forwarded.
//! - `proxy::outbound` (its `target`, `faults` and `tries` inside), `proxy::inbound`,
//!   `proxy::upstream` (the connection pool; its `plain` exchange and `codec` send body-less
//!   HTTP/1.1 requests on connections of our own, hyper the rest), `proxy::headers`: moving
//!   requests.
//! - `body`: streamed bodies, buffered only for retries, guards held until the last byte.
//! - `breaker`, `endpoint` (outlier detection, balancers), `bulkhead`, `rate_limit` (both tower
//!   layers through `gate`), `retry`, `retry_budget`: the policies, each small, pure where it
//!   can be, and unit-tested with tokio's paused clock; `clock`: deadlines from configured
//!   durations that saturate, never panic.
//! - `refusal`: the one place where refusals become responses with `x-weir-reason`;
//!   `route_trace`: the `x-weir-route` answer to `x-weir-debug: 1`.
//! - `metrics`: the contract's Prometheus metrics.
//! - `intercept`: transparent interception — `weir-sidecar init` and its iptables rules, the
//!   original destination of redirected connections, protocol detection and opaque TCP.
#![forbid(unsafe_code)]

pub mod admin;
pub mod body;
pub mod breaker;
pub mod bulkhead;
pub mod clock;
pub mod config_file;
pub mod control_plane;
pub mod endpoint;
pub mod gate;
pub mod intercept;
pub mod metrics;
pub mod probe;
pub mod proxy;
pub mod rate_limit;
pub mod refusal;
pub mod retry;
pub mod retry_budget;
pub mod route_trace;
pub mod server;
pub mod store;
pub mod table;

use crate::metrics::Metrics;
use crate::proxy::{inbound::Inbound, outbound::Outbound, upstream::Upstream};
use crate::store::Store;
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
    // Beside `Options` rather than in it, so that code building `Options` by hand keeps
    // compiling; `start` uses the defaults, `start_with` takes them.
    #[command(flatten)]
    pub connections: server::Limits,
    /// How log lines are written to stderr: `text` (coloured only when stderr is a terminal) or
    /// `json` (one object a line, for log collectors).
    #[arg(long, env = "WEIR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    // None: run the proxy.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The form of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
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
    /// Worker threads. One (the default, as Linkerd's proxy) runs everything on a single-threaded
    /// runtime without cross-thread wake-ups, which costs the least CPU per request; N > 1 runs
    /// a multi-threaded runtime with N workers, a higher ceiling for a busy pod.
    #[arg(long, env = "WEIR_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[arg(long, env = "WEIR_DRAIN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// A service not called for this long is unsubscribed (control-plane mode).
    #[arg(long, env = "WEIR_SUBSCRIPTION_IDLE", default_value = "10m", value_parser = parse_duration)]
    pub subscription_idle: Duration,
    /// A token presented to the control plane on every poll (`Authorization: Bearer`), read
    /// again each time since it rotates: in a cluster, the pod's projected ServiceAccount token
    /// (audience `weir`), mounted by the injector.
    #[arg(long, env = "WEIR_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<weir_proxy_api::Duration>()
        .map(|d| d.get())
        .map_err(|e| e.to_string())
}

/// The async runtime `--threads` asks for: one thread (the default) runs everything on the
/// calling thread; N > 1 runs N workers, named `weir-worker-0`… so that they can be counted.
///
/// Threads tokio starts later for blocking work (file reads) are named `weir-blocking`: tokio
/// names every thread it starts with the one function and starts its workers when the runtime is
/// built, before any blocking work can exist, so the first N names go to the workers.
pub fn runtime(threads: u16) -> std::io::Result<tokio::runtime::Runtime> {
    let workers = usize::from(threads);
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    let started = std::sync::atomic::AtomicUsize::new(0);
    builder
        .enable_all()
        .thread_name_fn(move || {
            let n = started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if workers > 1 && n < workers {
                format!("weir-worker-{n}")
            } else {
                "weir-blocking".to_owned()
            }
        })
        .build()
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
    drain: Arc<server::Drain>,
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

/// Binds the listeners and starts the config source, with the default connection limits.
/// Listening on port 0 picks free ports; [`Running`] says which.
pub async fn start(options: Options) -> Result<Running, StartError> {
    start_with(options, server::Limits::default()).await
}

/// As [`start`], each listener bounded by `limits`.
pub async fn start_with(options: Options, limits: server::Limits) -> Result<Running, StartError> {
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
    let drain = Arc::new(server::Drain::new());
    let serving = server::Serving {
        limits,
        metrics: store.metrics.clone(),
        shutdown: stopped.clone(),
        drain: drain.clone(),
    };

    let outbound_listener = bind("outbound", options.outbound).await?;
    let inbound_listener = bind("inbound", options.inbound).await?;
    let admin_listener = bind("admin", options.admin).await?;
    let addr = |l: &TcpListener, fallback| l.local_addr().unwrap_or(fallback);
    let outbound_addr = addr(&outbound_listener, options.outbound);
    let inbound_addr = addr(&inbound_listener, options.inbound);
    let admin_addr = addr(&admin_listener, options.admin);

    let upstream = Upstream::new();
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
        app_addr: options.app,
        service: options.service.clone(),
    });

    let mut listeners = Vec::new();
    listeners.push(tokio::spawn(server::serve(
        outbound_listener,
        server::Interception::ToOriginalDst,
        move |accepted: server::Accepted, request| {
            outbound.clone().handle(accepted.original_dst, request)
        },
        serving.clone(),
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
        serving.clone(),
    )));
    let admin_store = store.clone();
    listeners.push(tokio::spawn(server::serve(
        admin_listener,
        server::Interception::Off,
        move |_, request| admin::handle(admin_store.clone(), request),
        serving,
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
                token_file: options.token_file.clone(),
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
        drain,
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
        // The accept loops are done: the connections still open were told to close once idle.
        tokio::time::timeout(self.drain_timeout, self.drain.finished())
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
    fn threads_pick_the_runtime() {
        let one = runtime(1).unwrap();
        assert_eq!(
            one.handle().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::CurrentThread
        );
        let three = runtime(3).unwrap();
        assert_eq!(
            three.handle().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::MultiThread
        );
        assert_eq!(three.metrics().num_workers(), 3);
    }

    #[test]
    fn connection_limits_and_log_format_come_from_the_command_line() {
        let cli = Cli::try_parse_from(["weir-sidecar", "--config", "proxy.json"]).unwrap();
        assert_eq!(cli.connections, server::Limits::default());
        assert_eq!(cli.connections.header_read_timeout, Duration::from_secs(10));
        assert_eq!(cli.connections.max_connections, 10_000);
        assert_eq!(cli.log_format, LogFormat::Text);
        assert_eq!(cli.proxy.threads, 1);

        let cli = Cli::try_parse_from([
            "weir-sidecar",
            "--config",
            "proxy.json",
            "--header-read-timeout",
            "300ms",
            "--max-connections",
            "5",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(
            cli.connections.header_read_timeout,
            Duration::from_millis(300)
        );
        assert_eq!(cli.connections.max_connections, 5);
        assert_eq!(cli.log_format, LogFormat::Json);

        for absurd in [
            &["--max-connections", "0"][..],
            &["--max-connections", "99999999999"],
            &["--header-read-timeout", "forever"],
            &["--header-read-timeout", "0s"],
            &["--header-read-timeout", "5000000000000000h"],
            &["--log-format", "xml"],
        ] {
            let args = ["weir-sidecar", "--config", "proxy.json"];
            let parsed = Cli::try_parse_from(args.iter().chain(absurd));
            assert!(parsed.is_err(), "{absurd:?} accepted");
        }
    }

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
