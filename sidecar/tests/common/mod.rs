//! What the sidecar's tests need beyond `weir-testkit` (servers, clients, polling, processes):
//! the sidecar itself, in process or as the real binary, and the config it reads.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use weir_testkit::temp::TempDir;
use weir_testkit::{Process, eventually, get, get_ok, metric_with, temp_dir, write_atomically};

/// How long a sidecar gets to become ready.
const READY_WITHIN: Duration = Duration::from_secs(15);

/// `text` in a file `proxy.json` of a fresh temporary folder (removed with the folder).
pub fn config_file(text: &str) -> (TempDir, PathBuf) {
    let dir = temp_dir("weir-test");
    let path = dir.path().join("proxy.json");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// A config with one service `upstream` in namespace `default` whose subsets are given as
/// (name, weight, endpoints), and a policy (JSON object text).
pub fn config(subsets: &[(&str, u32, &[SocketAddr])], policy: &str) -> String {
    let subsets: Vec<serde_json::Value> = subsets
        .iter()
        .map(|(name, weight, endpoints)| {
            serde_json::json!({
                "name": name,
                "weight": weight,
                "endpoints": endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let policy: serde_json::Value = serde_json::from_str(policy).unwrap();
    serde_json::json!({
        "version": 1,
        "services": [{"name": "upstream", "namespace": "default", "subsets": subsets, "policy": policy}],
    })
    .to_string()
}

/// Options for an in-process sidecar on free loopback ports, reading nothing yet: set `config`
/// or `control_plane` before starting.
pub fn options(app: SocketAddr) -> weir_sidecar::Options {
    weir_sidecar::Options {
        config: None,
        control_plane: None,
        service: "test".into(),
        namespace: "default".into(),
        pod: None,
        outbound: "127.0.0.1:0".parse().unwrap(),
        inbound: "127.0.0.1:0".parse().unwrap(),
        app,
        admin: "127.0.0.1:0".parse().unwrap(),
        drain_timeout: Duration::from_secs(5),
        subscription_idle: Duration::from_secs(600),
        token_file: None,
        threads: 1,
    }
}

/// An in-process sidecar, its config file (if any) in a temporary folder it owns.
pub struct Sidecar {
    pub running: Option<weir_sidecar::Running>,
    pub config_path: PathBuf,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    _dir: Option<TempDir>,
}

impl Sidecar {
    /// Starts on `config` (JSON) and waits until it is ready.
    pub async fn start(config: &str, app: SocketAddr) -> Self {
        let (dir, path) = config_file(config);
        let mut options = options(app);
        options.config = Some(path);
        let running = weir_sidecar::start(options).await.unwrap();
        Self::new(running, Some(dir)).ready().await
    }

    /// Routes service `upstream` to the one `endpoint` (also its app) under `policy` (JSON).
    pub async fn with_policy(endpoint: SocketAddr, policy: &str) -> Self {
        Self::start(&config(&[("default", 1, &[endpoint])], policy), endpoint).await
    }

    /// Starts with the given options; waits until ready only when `wait_ready`.
    pub async fn start_with(options: weir_sidecar::Options, wait_ready: bool) -> Self {
        let running = weir_sidecar::start(options).await.unwrap();
        let sidecar = Self::new(running, None);
        if wait_ready {
            sidecar.ready().await
        } else {
            sidecar
        }
    }

    /// Wraps a started sidecar whose config file (if any) lies in `dir`.
    pub fn new(running: weir_sidecar::Running, dir: Option<TempDir>) -> Self {
        Self {
            outbound: running.outbound,
            inbound: running.inbound,
            admin: running.admin,
            config_path: dir
                .as_ref()
                .map(|d| d.path().join("proxy.json"))
                .unwrap_or_default(),
            running: Some(running),
            _dir: dir,
        }
    }

    /// Waits until it holds a valid config.
    pub async fn ready(self) -> Self {
        let ready = eventually(READY_WITHIN, || async { self.store().is_ready() }).await;
        assert!(ready, "the sidecar did not become ready");
        self
    }

    /// Replaces its config file, as editors and ConfigMaps do.
    pub fn write_config(&self, config: &str) {
        write_atomically(&self.config_path, config);
    }

    pub fn store(&self) -> &weir_sidecar::store::Store {
        &self.running.as_ref().unwrap().store
    }

    pub async fn metrics(&self) -> String {
        let (status, _, body) = get(self.admin, "/metrics", "admin").await;
        assert_eq!(status, 200);
        body
    }

    /// The value of one series of `/metrics` (labels in any order).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_with(&self.metrics().await, name, labels)
    }

    /// The value of metric `name` for service `upstream`, its only label.
    pub async fn upstream_metric(&self, name: &str) -> Option<f64> {
        self.metric(name, &[("service", "upstream")]).await
    }
}

/// `GET /` through `addr` with `Host: host`: the status and the `x-weir-reason` (empty when
/// there is none).
pub async fn status_and_reason(addr: SocketAddr, host: &str) -> (u16, String) {
    let (status, headers, _) = get(addr, "/", host).await;
    let reason = headers
        .get("x-weir-reason")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, reason)
}

/// `calls` calls of `GET /` through `addr` with `Host: host`: how many were refused with
/// `status` (each naming `reason` in `x-weir-reason`), and the statuses of the others.
pub async fn refusals(
    addr: SocketAddr,
    host: &str,
    calls: usize,
    (status, reason): (u16, &str),
) -> (u32, Vec<u16>) {
    let mut refused = 0;
    let mut others = Vec::new();
    for _ in 0..calls {
        let (got, headers, _) = get(addr, "/", host).await;
        if got == status {
            assert_eq!(headers["x-weir-reason"], reason);
            refused += 1;
        } else {
            others.push(got);
        }
    }
    (refused, others)
}

/// `GET path` through `addr` with `Host: host`, answered 200 `ok`: how long it took (on
/// tokio's clock, paused in most tests).
pub async fn timed_ok(addr: SocketAddr, path: &str, host: &str) -> Duration {
    let start = tokio::time::Instant::now();
    let (status, _, body) = get(addr, path, host).await;
    assert_eq!((status, body.as_str()), (200, "ok"), "{path}");
    start.elapsed()
}

/// `GET /` through `addr` with `Host: host`, refused with (`status`, `reason`): how long it took.
pub async fn timed_refusal(
    addr: SocketAddr,
    host: &str,
    (status, reason): (u16, &str),
) -> Duration {
    let start = tokio::time::Instant::now();
    let answer = status_and_reason(addr, host).await;
    assert_eq!(answer, (status, reason.to_owned()));
    start.elapsed()
}

/// How to start the real binary beyond its config and app.
#[derive(Debug, Default, Clone, Copy)]
pub struct Launch<'a> {
    /// More command-line arguments.
    pub args: &'a [&'a str],
    /// More environment variables.
    pub env: &'a [(&'a str, &'a str)],
    /// Run it under `ulimit -n N`.
    pub max_files: Option<u32>,
}

/// The real `weir-sidecar` binary in file mode, every listener on port 0 (read back from its
/// start-up line: ports picked by the test could be taken by a parallel test meanwhile), its
/// output in a log beside its config; stopped with its process group when dropped.
pub struct SidecarProcess {
    pub process: Process,
    pub config_path: PathBuf,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    _dir: TempDir,
}

impl SidecarProcess {
    /// Starts the binary on `config` (JSON) and waits until `/ready` answers 200.
    pub async fn start(config: &str, app: SocketAddr) -> Self {
        Self::launch(config, app, Launch::default()).await
    }

    /// As [`SidecarProcess::start`], with more arguments, environment or a descriptor limit.
    pub async fn launch(config: &str, app: SocketAddr, launch: Launch<'_>) -> Self {
        let (dir, config_path) = config_file(config);
        let binary = env!("CARGO_BIN_EXE_weir-sidecar");
        let mut command = match launch.max_files {
            None => std::process::Command::new(binary),
            Some(n) => {
                let mut sh = std::process::Command::new("sh");
                let script = format!("ulimit -n {n} && exec \"$0\" \"$@\"");
                sh.args(["-c", &script, binary]);
                sh
            }
        };
        let any = "127.0.0.1:0";
        command
            .arg("--config")
            .arg(&config_path)
            .args(["--outbound", any, "--inbound", any, "--admin", any])
            .args(["--app", &app.to_string()])
            .args(launch.args)
            .env("WEIR_LOG", "info")
            .envs(launch.env.iter().copied());
        let process = Process::spawn_logging_to(command, &dir.path().join("sidecar.log"));
        let listening = "weir-sidecar listening";
        process
            .wait_for_log(listening, READY_WITHIN)
            .await
            .unwrap_or_else(|e| panic!("the sidecar binary did not start: {e}"));
        let log = process.log();
        let line = log.lines().find(|l| l.contains(listening)).unwrap();
        let sidecar = Self {
            outbound: logged_addr(line, "outbound"),
            inbound: logged_addr(line, "inbound"),
            admin: logged_addr(line, "admin"),
            process,
            config_path,
            _dir: dir,
        };
        let admin = sidecar.admin;
        sidecar
            .process
            .wait_until("/ready answering 200", READY_WITHIN, || async move {
                get_ok(admin, "/ready", Duration::from_secs(2))
                    .await
                    .is_some()
            })
            .await
            .unwrap_or_else(|e| panic!("the sidecar binary did not become ready: {e}"));
        sidecar
    }

    /// Replaces its config file, as editors and ConfigMaps do.
    pub fn write_config(&self, config: &str) {
        write_atomically(&self.config_path, config);
    }

    /// What the process logged so far, without terminal colour codes.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The value of one series of `/metrics` (labels in any order).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let (status, _, body) = get(self.admin, "/metrics", "admin").await;
        assert_eq!(status, 200);
        metric_with(&body, name, labels)
    }
}

/// The address logged as `key` in the start-up `line`, text (`key=addr`) or JSON (`"key":"addr"`).
fn logged_addr(line: &str, key: &str) -> SocketAddr {
    let at = [format!(" {key}="), format!("\"{key}\":\"")]
        .iter()
        .find_map(|k| line.find(k.as_str()).map(|i| i + k.len()))
        .unwrap_or_else(|| panic!("no {key} in {line}"));
    let addr: String = line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    addr.parse()
        .unwrap_or_else(|e| panic!("{e}: {addr:?} in {line}"))
}
