//! The real `weir-operator local` binary for the tests that run it (`local.rs`,
//! `local_autoscaler.rs`): started on a folder and loopback ports, its log kept in a file beside
//! the folder, killed when dropped; and the folder helpers those tests share.

#![allow(dead_code)] // each test binary uses a different part

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A loopback port nothing listens on right now.
pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A fresh folder under the system temp dir (left for a look when a test fails).
pub fn temp_dir(prefix: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Replaces `path` at once (a temporary file renamed over it), as editors save.
pub fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A running `weir-operator local`.
pub struct LocalOperator {
    child: Child,
    log: PathBuf,
    /// Its config API.
    pub listen: SocketAddr,
    /// Its admin listener.
    pub admin: SocketAddr,
}

impl LocalOperator {
    /// On `dir`, with free ports.
    pub fn start(dir: &Path) -> Self {
        Self::start_at(dir, free_port(), free_port())
    }

    /// On `dir`, with these ports (a restart on the ports its proxies know).
    pub fn start_at(dir: &Path, listen: SocketAddr, admin: SocketAddr) -> Self {
        Self::start_with(dir, listen, admin, &[])
    }

    /// On `dir`, with these ports and more arguments.
    pub fn start_with(dir: &Path, listen: SocketAddr, admin: SocketAddr, more: &[&str]) -> Self {
        let log = dir.with_extension("log");
        let child = Command::new(env!("CARGO_BIN_EXE_weir-operator"))
            .args(["local", "--dir"])
            .arg(dir)
            .args([
                "--listen",
                &listen.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .args(more)
            .env("WEIR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            log,
            listen,
            admin,
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` on its admin listener: the body of a 2xx answer within 2 s.
    pub async fn get(&self, path: &str) -> Option<String> {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let request = Request::get(format!("http://{}{path}", self.admin))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(2), client.request(request))
            .await
            .ok()?
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some(String::from_utf8_lossy(&body).into_owned())
    }
}

impl Drop for LocalOperator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real sidecar (in process) of `service` in namespace `shop`, named `pod`, polling the config
/// API at `control_plane`, forwarding inbound calls to `app`, every listener on a free loopback
/// port. Some once it holds its config from the operator, None if that takes longer than
/// `within`.
pub async fn sidecar_with_config(
    control_plane: SocketAddr,
    service: &str,
    pod: &str,
    app: SocketAddr,
    within: Duration,
) -> Option<weir_sidecar::Running> {
    let running = weir_sidecar::start(weir_sidecar::Options {
        config: None,
        control_plane: Some(format!("http://{control_plane}").parse().unwrap()),
        service: service.into(),
        namespace: "shop".into(),
        pod: Some(pod.into()),
        outbound: "127.0.0.1:0".parse().unwrap(),
        inbound: "127.0.0.1:0".parse().unwrap(),
        app,
        admin: "127.0.0.1:0".parse().unwrap(),
        threads: 1,
        drain_timeout: Duration::from_secs(1),
        subscription_idle: Duration::from_secs(600),
        token_file: None,
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + within;
    while !running.store.is_ready() {
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some(running)
}
