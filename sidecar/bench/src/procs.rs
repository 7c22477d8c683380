//! The processes a run starts (upstream, sidecar, HAProxy): their files, ports, readiness,
//! peak memory and termination.

use crate::load;
use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// How long a started proxy gets to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a proxy gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A directory under the system temp dir, removed with everything in it on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let path = std::env::temp_dir().join(format!("weir-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free port on 127.0.0.1 (free when asked; another process could take it before us).
pub fn free_addr() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    /// Where its stdout and stderr go, shown when it fails.
    log: Option<PathBuf>,
    /// Held open so that the upstream exits when it closes.
    stdin: Option<ChildStdin>,
    /// How long it gets to exit after SIGTERM before it is killed.
    stop_timeout: Duration,
}

impl Proc {
    /// Starts `command` with stdout and stderr going to `log`.
    fn spawn_logged(name: &str, mut command: Command, log: PathBuf) -> Result<Self> {
        let file = std::fs::File::create(&log)?;
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: Some(log),
            stdin: None,
            stop_timeout: STOP_TIMEOUT,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its peak resident set size (VmHWM) in KiB, while it runs.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        parse_vm_hwm_kib(&status)
    }

    /// Its resident set size (VmRSS) in KiB, while it runs.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        parse_status_kib(&status, "VmRSS:")
    }

    /// How many file descriptors it has open, while it runs.
    pub fn open_fds(&self) -> Option<usize> {
        let dir = std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).ok()?;
        Some(dir.count())
    }

    /// An error if it has exited, with the end of its log.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}){}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let Some(text) = self
            .log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
        else {
            return String::new();
        };
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            return String::new();
        }
        let tail = lines[lines.len().saturating_sub(20)..].join("\n  ");
        format!("; its output ends with:\n  {tail}")
    }

    /// Given back once it accepts connections on `listen` (within the launch's ready timeout).
    async fn accepting(
        mut self,
        listen: SocketAddr,
        launch: &Launch,
    ) -> Result<(Self, SocketAddr)> {
        self.stop_timeout = launch.stop_timeout;
        self.wait_ready(
            &format!("{listen} never accepted a connection"),
            launch.ready_timeout,
            || async move { tokio::net::TcpStream::connect(listen).await.is_ok() },
        )
        .await?;
        Ok((self, listen))
    }

    /// Waits up to `timeout` until `probe` succeeds, failing early if the process exits.
    async fn wait_ready<F, Fut>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut probe: F,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            if probe().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not become ready within {}s: {what}{}",
                    self.name,
                    timeout.as_secs(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then SIGKILL if it is still there after its stop timeout ([`STOP_TIMEOUT`]
    /// unless set otherwise).
    pub fn stop(mut self) {
        self.terminate();
    }

    /// SIGTERM and wait for it to exit (SIGKILL after its stop timeout); whether it exited by
    /// itself.
    pub fn stop_and_wait(mut self) -> bool {
        self.terminate()
    }

    /// Whether it exited by itself (or had already).
    fn terminate(&mut self) -> bool {
        drop(self.stdin.take());
        if !matches!(self.child.try_wait(), Ok(None)) {
            return true; // Already reaped: its pid may belong to someone else by now.
        }
        if sigterm(self.child.id()).is_ok() {
            let deadline = Instant::now() + self.stop_timeout;
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "{} still running {}s after SIGTERM; killing it",
                self.name,
                self.stop_timeout.as_secs()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn sigterm(pid: u32) -> std::io::Result<()> {
    send_signal(pid, Signal::SIGTERM)
}

/// Sends `signal` to `pid`, which must be a child of ours that has not been reaped yet (so its
/// pid cannot have been reused).
pub fn send_signal(pid: u32, signal: Signal) -> std::io::Result<()> {
    let pid = i32::try_from(pid).map_err(std::io::Error::other)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).map_err(std::io::Error::from)
}

/// The `VmHWM` (peak resident set size) line of `/proc/PID/status`, in KiB.
pub fn parse_vm_hwm_kib(status: &str) -> Option<u64> {
    parse_status_kib(status, "VmHWM:")
}

/// The line of `/proc/PID/status` that starts with `key` (e.g. `VmRSS:`), in KiB.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// The upstream server, re-executing this binary.
pub fn start_upstream() -> Result<(Proc, SocketAddr)> {
    start_upstream_with(&Launch::default())
}

/// [`start_upstream`], started as `launch` says (its wrapper and environment).
pub fn start_upstream_with(launch: &Launch) -> Result<(Proc, SocketAddr)> {
    let exe = std::env::current_exe().context("finding the bench's own executable")?;
    let mut child = launch
        .command(&exe)
        .args(["upstream", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the upstream")?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("stdout is piped");
    let proc = Proc {
        name: "upstream".into(),
        child,
        log: None,
        stdin,
        stop_timeout: STOP_TIMEOUT,
    };
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("the upstream did not report its address (it said {line:?})"))?;
    Ok((proc, addr))
}

/// A running sidecar and its listeners.
#[derive(Debug)]
pub struct Sidecar {
    pub proc: Proc,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    /// The `--config` file it watches: rewriting it changes its config.
    pub config_path: PathBuf,
}

/// The addresses a sidecar will listen on, chosen before its config is written because the
/// two-hop config points the service at the sidecar's own inbound listener.
#[derive(Debug, Clone, Copy)]
pub struct SidecarAddrs {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
}

impl SidecarAddrs {
    pub fn pick() -> Result<Self> {
        Ok(Self {
            outbound: free_addr()?,
            inbound: free_addr()?,
            admin: free_addr()?,
        })
    }
}

/// How a process is started beyond its own command line.
#[derive(Debug, Clone)]
pub struct Launch {
    /// A program (and its arguments) the process runs under, such as valgrind.
    pub wrapper: Vec<OsString>,
    /// Arguments added to the process's own.
    pub extra_args: Vec<String>,
    /// Environment variables added to ours.
    pub env: Vec<(String, String)>,
    /// How long it gets to become ready.
    pub ready_timeout: Duration,
    /// How long it gets to exit after SIGTERM.
    pub stop_timeout: Duration,
}

impl Default for Launch {
    fn default() -> Self {
        Self {
            wrapper: Vec::new(),
            extra_args: Vec::new(),
            env: Vec::new(),
            ready_timeout: READY_TIMEOUT,
            stop_timeout: STOP_TIMEOUT,
        }
    }
}

impl Launch {
    /// A command for `program` under the wrapper, with the environment; callers add the
    /// program's own arguments, then [`Launch::extra_args`].
    fn command(&self, program: &Path) -> Command {
        let mut command = match self.wrapper.split_first() {
            Some((wrapper, args)) => {
                let mut command = Command::new(wrapper);
                command.args(args).arg(program);
                command
            }
            None => Command::new(program),
        };
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }
}

/// Starts `bin` with `config`, as `launch` says, and waits until admin `/ready` answers 200.
pub async fn start_sidecar(
    bin: &Path,
    dir: &Path,
    label: &str,
    config: &serde_json::Value,
    addrs: SidecarAddrs,
    app: SocketAddr,
    launch: &Launch,
) -> Result<Sidecar> {
    let config_path = dir.join(format!("sidecar-{label}.json"));
    std::fs::write(&config_path, serde_json::to_vec_pretty(config)?)?;
    let mut command = launch.command(bin);
    command
        .arg("--config")
        .arg(&config_path)
        .arg("--outbound")
        .arg(addrs.outbound.to_string())
        .arg("--inbound")
        .arg(addrs.inbound.to_string())
        .arg("--app")
        .arg(app.to_string())
        .arg("--admin")
        .arg(addrs.admin.to_string())
        .args(["--service", "bench"])
        .args(&launch.extra_args);
    let mut proc = Proc::spawn_logged(
        &format!("weir-sidecar ({label})"),
        command,
        dir.join(format!("sidecar-{label}.log")),
    )?;
    proc.stop_timeout = launch.stop_timeout;
    let admin = addrs.admin;
    proc.wait_ready(
        &format!("GET http://{admin}/ready never answered 200"),
        launch.ready_timeout,
        || async move {
            matches!(load::get_once(admin, &admin.to_string(), "/ready").await, Ok(s) if s == 200)
        },
    )
    .await?;
    Ok(Sidecar {
        proc,
        outbound: addrs.outbound,
        inbound: addrs.inbound,
        admin: addrs.admin,
        config_path,
    })
}

/// `name` from `PATH`, or from the sbin directories that a non-root `PATH` often lacks.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `haproxy` from `PATH`, or from the sbin directories that a non-root `PATH` often lacks.
pub fn find_haproxy() -> Option<PathBuf> {
    find_program("haproxy")
}

/// The HAProxy configuration: a plain HTTP reverse proxy with keep-alive on both sides.
/// `nbthread` is HAProxy's default, one thread per CPU, as the sidecar's tokio runtime gets
/// one worker per CPU, unless `threads` sets it.
pub fn haproxy_config(
    listen: SocketAddr,
    upstream: SocketAddr,
    connections: u32,
    threads: Option<u32>,
) -> String {
    // Room for the client and the server side of every connection; a larger maxconn makes
    // HAProxy want a larger file descriptor limit than it may be allowed.
    let maxconn = connections.saturating_mul(2).saturating_add(100);
    let nbthread = threads.map_or_else(String::new, |n| format!("    nbthread {n}\n"));
    format!(
        "global
    maxconn {maxconn}
{nbthread}
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 1s
    timeout client 30s
    timeout server 30s

frontend bench
    bind {listen}
    default_backend upstream

backend upstream
    server upstream {upstream}
"
    )
}

/// Starts HAProxy in the foreground (`-db`) in front of `upstream` and waits until its port
/// accepts connections.
pub async fn start_haproxy(
    bin: &Path,
    dir: &Path,
    upstream: SocketAddr,
    connections: u32,
) -> Result<(Proc, SocketAddr)> {
    start_haproxy_with(bin, dir, upstream, connections, None, &Launch::default()).await
}

/// [`start_haproxy`] with `nbthread` set to `threads`, started as `launch` says.
pub async fn start_haproxy_with(
    bin: &Path,
    dir: &Path,
    upstream: SocketAddr,
    connections: u32,
    threads: Option<u32>,
    launch: &Launch,
) -> Result<(Proc, SocketAddr)> {
    let listen = free_addr()?;
    let config_path = dir.join("haproxy.cfg");
    std::fs::write(
        &config_path,
        haproxy_config(listen, upstream, connections, threads),
    )?;
    let mut command = launch.command(bin);
    command
        .arg("-f")
        .arg(&config_path)
        .arg("-db")
        .args(&launch.extra_args);
    let proc = Proc::spawn_logged("haproxy", command, dir.join("haproxy.log"))?;
    proc.accepting(listen, launch).await
}

/// What an nginx instance does.
#[derive(Debug, Clone, Copy)]
pub enum NginxRole {
    /// Answers every request itself with 200 and [`crate::upstream::BODY`].
    Static,
    /// As `Static`, over HTTP/2 with prior knowledge (h2c) only.
    StaticH2c,
    /// Proxies to `upstream`, keeping up to 64 idle connections to it (`keepalive 64`).
    Proxy { upstream: SocketAddr },
}

/// An nginx configuration for one process (no master, one worker, in the foreground), with
/// every file it writes under `dir`.
pub fn nginx_config(dir: &Path, listen: SocketAddr, role: NginxRole) -> String {
    let dir = dir.display();
    let listen_options = match role {
        NginxRole::StaticH2c => " http2",
        NginxRole::Static | NginxRole::Proxy { .. } => "",
    };
    let (upstream_block, location) = match role {
        NginxRole::Static | NginxRole::StaticH2c => (
            String::new(),
            format!(
                "return 200 \"{}\";",
                String::from_utf8_lossy(crate::upstream::BODY).replace('\n', "\\n")
            ),
        ),
        NginxRole::Proxy { upstream } => (
            format!(
                "    upstream app {{\n        server {upstream};\n        keepalive 64;\n    }}\n"
            ),
            "proxy_pass http://app;\n            proxy_http_version 1.1;\n            \
             proxy_set_header Connection \"\";"
                .to_owned(),
        ),
    };
    format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx-{port}.pid;
error_log {dir}/nginx-{port}-error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    client_body_temp_path {dir}/nginx-body;
    proxy_temp_path {dir}/nginx-proxy;
    fastcgi_temp_path {dir}/nginx-fastcgi;
    uwsgi_temp_path {dir}/nginx-uwsgi;
    scgi_temp_path {dir}/nginx-scgi;
    keepalive_requests 1000000;
{upstream_block}
    server {{
        listen {listen}{listen_options};
        location / {{
            {location}
        }}
    }}
}}
",
        port = listen.port(),
    )
}

/// Starts nginx in `role` on a free port and waits until it accepts connections.
pub async fn start_nginx(
    bin: &Path,
    dir: &Path,
    role: NginxRole,
    launch: &Launch,
) -> Result<(Proc, SocketAddr)> {
    let listen = free_addr()?;
    let config_path = dir.join(format!("nginx-{}.conf", listen.port()));
    std::fs::write(&config_path, nginx_config(dir, listen, role))?;
    let mut command = launch.command(bin);
    command
        .arg("-c")
        .arg(&config_path)
        .arg("-p")
        .arg(dir)
        .args(&launch.extra_args);
    let name = match role {
        NginxRole::Static | NginxRole::StaticH2c => "nginx (upstream)",
        NginxRole::Proxy { .. } => "nginx",
    };
    let proc = Proc::spawn_logged(
        name,
        command,
        dir.join(format!("nginx-{}.log", listen.port())),
    )?;
    proc.accepting(listen, launch).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_is_read_in_kib() {
        let status =
            "Name:\tweir-sidecar\nVmPeak:\t  123456 kB\nVmHWM:\t    8192 kB\nVmRSS:\t 7000 kB\n";
        assert_eq!(parse_vm_hwm_kib(status), Some(8192));
        assert_eq!(parse_vm_hwm_kib("Name:\tx\n"), None);
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(parse_vm_hwm_kib(&own).unwrap() > 0);
    }

    #[test]
    fn haproxy_config_names_both_ends() {
        let cfg = haproxy_config(
            "127.0.0.1:1000".parse().unwrap(),
            "127.0.0.1:2000".parse().unwrap(),
            32,
            None,
        );
        assert!(cfg.contains("maxconn 164"));
        assert!(!cfg.contains("nbthread"));
        assert!(cfg.contains("bind 127.0.0.1:1000"));
        assert!(cfg.contains("server upstream 127.0.0.1:2000"));
    }
}
