//! The real operator binary for the tests that run it (`local*.rs`, `operator_run.rs`,
//! `log_format.rs`, `dashboard.rs`): `weir-operator local` on a folder and loopback ports (a
//! [`weir_testkit::Process`], logging at `info`); the folder as a `Path`, and the upstreams,
//! sidecars, calls and files of the shop's payments those tests share.

#![allow(dead_code)] // each test binary uses a different part

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tokio::time::Instant;
use weir_testkit::{Process, client, free_addr};

/// A fresh folder under the system's temp dir (`weir_testkit::temp_dir`), removed when dropped;
/// a `Path` otherwise, so the tests join and pass it as they would a path.
#[derive(Debug)]
pub struct Folder(tempfile::TempDir);

/// A fresh folder whose name starts with `prefix`.
pub fn temp_dir(prefix: &str) -> Folder {
    Folder(weir_testkit::temp_dir(prefix))
}

impl Deref for Folder {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for Folder {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<OsStr> for Folder {
    fn as_ref(&self) -> &OsStr {
        self.0.path().as_os_str()
    }
}

/// The operator binary logging at `info`, as a command to add arguments to.
pub fn operator_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_weir-operator"));
    command.env("WEIR_LOG", "info");
    command
}

/// `GET path` on `addr`: status and body, None if nothing answers within 2 s.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let request = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(2), client().request(request))
        .await
        .ok()?
        .ok()?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `POST path` on `addr` with a JSON `body` (and a bearer `token`): status and body, None if
/// the request fails.
pub async fn http_post(
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
    token: Option<&str>,
) -> Option<(u16, Bytes)> {
    let mut request =
        Request::post(format!("http://{addr}{path}")).header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = client().request(request).await.ok()?;
    let status = response.status().as_u16();
    Some((
        status,
        response.into_body().collect().await.ok()?.to_bytes(),
    ))
}

/// Asks `ask` every `every` until `wanted` holds for its answer, which it returns; panics after
/// `within` naming `what`, with the last answer and `log()` (the operator's).
pub async fn until_answer<T: std::fmt::Debug, Fut: std::future::Future<Output = T>>(
    what: &str,
    (within, every): (Duration, Duration),
    mut ask: impl FnMut() -> Fut,
    wanted: impl Fn(&T) -> bool,
    log: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let answer = ask().await;
        if wanted(&answer) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: last {answer:?}\nlog:\n{}",
            log()
        );
        tokio::time::sleep(every).await;
    }
}

/// A running `weir-operator local`.
pub struct LocalOperator {
    process: Process,
    /// Its config API.
    pub listen: SocketAddr,
    /// Its admin listener.
    pub admin: SocketAddr,
}

impl LocalOperator {
    /// On `dir`, with free ports.
    pub fn start(dir: &Path) -> Self {
        Self::start_at(dir, free_addr(), free_addr())
    }

    /// On `dir`, with these ports (a restart on the ports its proxies know).
    pub fn start_at(dir: &Path, listen: SocketAddr, admin: SocketAddr) -> Self {
        Self::start_with(dir, listen, admin, &[])
    }

    /// On `dir`, with these ports and more arguments.
    pub fn start_with(dir: &Path, listen: SocketAddr, admin: SocketAddr, more: &[&str]) -> Self {
        let mut command = operator_command();
        command
            .args(["local", "--dir"])
            .arg(dir)
            .args(["--listen", &listen.to_string()])
            .args(["--admin", &admin.to_string()])
            .args(more);
        Self {
            process: Process::spawn(command),
            listen,
            admin,
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// `GET path` on its admin listener: the body of a 2xx answer within 2 s.
    pub async fn get(&self, path: &str) -> Option<String> {
        let (status, body) = http_get(self.admin, path).await?;
        (200..300).contains(&status).then_some(body)
    }

    /// The status of `namespace/name` in the list `kind` (`trafficSplits`,
    /// `resiliencePolicies`) of its admin's `GET /status`.
    pub async fn status_of(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<serde_json::Value> {
        let body = self.get("/status").await?;
        let all: serde_json::Value = serde_json::from_str(&body).ok()?;
        all[kind]
            .as_array()?
            .iter()
            .find(|s| s["namespace"] == namespace && s["name"] == name)
            .map(|s| s["status"].clone())
    }

    /// Waits (`within` at most) until its log says `part`.
    pub async fn until_logged(&self, part: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.log().contains(part) {
            assert!(Instant::now() < deadline, "no {part:?} in\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

/// The sidecar of `checkout` pod `pod`, a caller of payments (its own app is never called),
/// once it holds its config from the config API at `control_plane` (5 s at most).
pub async fn checkout_sidecar(control_plane: SocketAddr, pod: &str) -> weir_sidecar::Running {
    let app = "127.0.0.1:9".parse().unwrap();
    sidecar_with_config(control_plane, "checkout", pod, app, Duration::from_secs(5))
        .await
        .expect("the sidecar did not get its config from the operator")
}

/// `GET /` through a sidecar's `outbound` listener with this `Host`: status and body.
pub async fn call(outbound: SocketAddr, host: &str) -> (u16, String) {
    let (status, _, body) = weir_testkit::get(outbound, "/", host).await;
    (status, body)
}

/// The same, None if the call fails (no answer, or the body cut short).
pub async fn try_call(outbound: SocketAddr, host: &str) -> Option<(u16, String)> {
    let request = Request::get(format!("http://{outbound}/"))
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client().request(request).await.ok()?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The LocalService payments (port 8080) with an endpoint `v1` and an endpoint `v2`, each
/// labelled with its version.
pub fn payments_service(v1: SocketAddr, v2: SocketAddr) -> String {
    let endpoint =
        |address, version| format!("address: \"{address}\", labels: {{version: {version}}}");
    weir_testkit::local_service(
        "shop",
        "payments",
        Some(8080),
        [endpoint(v1, "v1"), endpoint(v2, "v2")],
    )
}

/// The TrafficSplit `name` of payments: `v1` and `v2` at these weights, and `more` of its spec
/// (YAML lines indented by two).
pub fn payments_split(name: &str, v1: u32, v2: u32, more: &str) -> String {
    format!(
        "apiVersion: weir.dev/v1alpha1\nkind: TrafficSplit\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  service: payments\n  backends:\n    - {{subset: v1, selector: {{version: v1}}, weight: {v1}}}\n    - {{subset: v2, selector: {{version: v2}}, weight: {v2}}}\n{more}"
    )
}

/// payments' subset weights in the config `proxy` runs now.
pub fn weights(proxy: &weir_sidecar::Running) -> Vec<(String, u32)> {
    let table = proxy.store.table();
    table
        .config
        .services
        .iter()
        .filter(|s| s.name == "payments")
        .flat_map(|s| s.subsets.iter().map(|b| (b.name.clone(), b.weight)))
        .collect()
}

/// Waits (`limit` at most) until `proxy` runs these subset weights for payments.
pub async fn until_weights(
    proxy: &weir_sidecar::Running,
    want: &[(&str, u32)],
    limit: Duration,
) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        let now = weights(proxy);
        if now
            .iter()
            .map(|(n, w)| (n.as_str(), *w))
            .eq(want.iter().copied())
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}
