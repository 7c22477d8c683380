//! Test fixtures: real upstream servers on loopback, an in-process sidecar fed by a config file,
//! and a small client. Nothing of HTTP is mocked.
#![allow(dead_code)]

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// What a test upstream does with one request.
#[derive(Debug, Clone)]
pub enum Action {
    Respond(u16, &'static str),
    /// Answer after a delay.
    Delay(Duration, u16),
    /// Never answer (the connection stays open).
    Hang,
}

type Behaviour = Arc<dyn Fn(&http::request::Parts, usize) -> Action + Send + Sync>;

/// A real HTTP/1.1 + HTTP/2 server on 127.0.0.1 that answers as told and counts what it sees.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    /// The headers of the last request seen.
    pub last_headers: Arc<parking_lot::Mutex<Option<http::HeaderMap>>>,
    /// The body length of the last request seen.
    pub last_body_len: Arc<AtomicUsize>,
}

impl Upstream {
    pub async fn start(
        behaviour: impl Fn(&http::request::Parts, usize) -> Action + Send + Sync + 'static,
    ) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), behaviour).await
    }

    /// As [`Upstream::start`], listening on `addr`.
    pub async fn start_on(
        addr: SocketAddr,
        behaviour: impl Fn(&http::request::Parts, usize) -> Action + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let behaviour: Behaviour = Arc::new(behaviour);
        let upstream = Self {
            addr,
            hits: Arc::default(),
            connections: Arc::default(),
            last_headers: Arc::default(),
            last_body_len: Arc::default(),
        };
        let u = upstream.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                u.connections.fetch_add(1, Ordering::SeqCst);
                let u = u.clone();
                let behaviour = behaviour.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let u = u.clone();
                        let behaviour = behaviour.clone();
                        async move {
                            let n = u.hits.fetch_add(1, Ordering::SeqCst);
                            let (parts, body) = req.into_parts();
                            *u.last_headers.lock() = Some(parts.headers.clone());
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            u.last_body_len.store(body.len(), Ordering::SeqCst);
                            let (status, text): (u16, String) = match behaviour(&parts, n) {
                                Action::Respond(s, t) => (s, t.to_owned()),
                                Action::Delay(d, s) => {
                                    tokio::time::sleep(d).await;
                                    (s, "slow".to_owned())
                                }
                                Action::Hang => {
                                    std::future::pending::<()>().await;
                                    unreachable!()
                                }
                            };
                            let text = if text == "echo" {
                                format!("{}", body.len())
                            } else {
                                text
                            };
                            // "refused:REASON" plays a target sidecar's refusal.
                            let refusal = text.strip_prefix("refused:").map(str::to_owned);
                            let mut r = Response::new(Full::new(Bytes::from(text)));
                            *r.status_mut() = StatusCode::from_u16(status).unwrap();
                            if let Some(reason) = refusal {
                                r.headers_mut()
                                    .insert("x-weir-reason", reason.parse().unwrap());
                            }
                            r.headers_mut()
                                .insert("x-served-by", addr.to_string().parse().unwrap());
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        upstream
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// An in-process sidecar reading a config file in a temporary directory.
pub struct Sidecar {
    pub running: Option<weir_sidecar::Running>,
    pub config_path: PathBuf,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        // The temporary directory is the config file's own (see temp_path).
        if let Some(dir) = self.config_path.parent()
            && dir
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("weir-test-"))
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "weir-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

impl Sidecar {
    /// Starts with `config` (JSON) and waits until it is ready.
    pub async fn start(config: &str, app: SocketAddr) -> Self {
        let config_path = temp_path("proxy.json");
        std::fs::write(&config_path, config).unwrap();
        let options = weir_sidecar::Options {
            config: Some(config_path.clone()),
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
        };
        let running = weir_sidecar::start(options).await.unwrap();
        let sidecar = Self {
            outbound: running.outbound,
            inbound: running.inbound,
            admin: running.admin,
            running: Some(running),
            config_path,
        };
        for _ in 0..100 {
            if sidecar.running.as_ref().unwrap().store.is_ready() {
                return sidecar;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the sidecar did not become ready");
    }

    pub fn write_config(&self, config: &str) {
        // Write-then-rename, as editors and ConfigMaps do.
        let tmp = self.config_path.with_extension("tmp");
        std::fs::write(&tmp, config).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    pub fn store(&self) -> &weir_sidecar::store::Store {
        &self.running.as_ref().unwrap().store
    }

    pub async fn metrics(&self) -> String {
        let (status, _, body) = get(self.admin, "/metrics", "admin").await;
        assert_eq!(status, 200);
        body
    }
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

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request with `Host: host` to `addr` and reads the whole answer.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (u16, http::HeaderMap, String) {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", host);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let response = client()
        .request(builder.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

pub async fn get(addr: SocketAddr, path: &str, host: &str) -> (u16, http::HeaderMap, String) {
    send(addr, "GET", path, host, &[], Bytes::new()).await
}

/// The value of a metric line (exact name with labels) in Prometheus text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

// ---- Additions for tests/http.rs and tests/control_plane.rs -----------------------------------

/// The value of a series given by metric name and labels in any order (the text format does not
/// promise an order), or None when no such line exists.
pub fn metric_with(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let inner = if rest.is_empty() {
                ""
            } else {
                rest.strip_prefix('{')?.strip_suffix('}')?
            };
            let have: Vec<(&str, &str)> = inner
                .split(',')
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect();
            let same = have.len() == labels.len() && labels.iter().all(|l| have.contains(l));
            same.then(|| value.parse().ok()).flatten()
        })
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

impl Sidecar {
    /// Starts with the given options; waits until ready only when `wait_ready`.
    pub async fn start_with(options: weir_sidecar::Options, wait_ready: bool) -> Self {
        let config_path = options.config.clone().unwrap_or_default();
        let running = weir_sidecar::start(options).await.unwrap();
        let sidecar = Self {
            outbound: running.outbound,
            inbound: running.inbound,
            admin: running.admin,
            running: Some(running),
            config_path,
        };
        if wait_ready {
            for _ in 0..150 {
                if sidecar.store().is_ready() {
                    return sidecar;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("the sidecar did not become ready");
        }
        sidecar
    }

    /// The value of one series of `/metrics` (labels in any order).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_with(&self.metrics().await, name, labels)
    }
}

/// A free loopback port (bound then released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` every 20 ms until it returns true or `limit` passes; returns whether it did.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `request` as is to `addr` and reads until the response head is complete (or the
/// connection ends). Returns the head (status line and headers) and the stream for more.
pub async fn raw_exchange(
    addr: SocketAddr,
    request: &[u8],
) -> (String, tokio::net::TcpStream, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before it read everything (an oversized header): a failed
    // write is not the test's concern, the answer is.
    let _ = stream.write_all(request).await;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut chunk))
            .await
            .expect("no answer within 3 s");
        match read {
            Ok(0) | Err(_) => break buf.len(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let rest = buf.split_off(head_end);
    (String::from_utf8_lossy(&buf).into_owned(), stream, rest)
}

/// The status code of a raw response head.
pub fn raw_status(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response head: {head:?}"))
}

/// A connector that sends every connection to one address whatever the URI says: how an app
/// with `HTTP_PROXY` (or with transparent interception) reaches the outbound listener while
/// the URI names the service.
#[derive(Clone, Debug)]
pub struct FixedConnector(pub SocketAddr);

impl tower::Service<http::Uri> for FixedConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let addr = self.0;
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// The real `weir-sidecar` binary in file mode, its log (stderr) kept in a file beside its
/// config; killed when dropped.
pub struct SidecarProcess {
    child: std::process::Child,
    pub config_path: PathBuf,
    log_path: PathBuf,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
}

impl SidecarProcess {
    /// Starts the binary on `config` (JSON) and waits until `/ready` answers 200.
    pub async fn start(config: &str, app: SocketAddr) -> Self {
        let config_path = temp_path("proxy.json");
        std::fs::write(&config_path, config).unwrap();
        let log_path = config_path.with_file_name("sidecar.log");
        let port = |_| format!("127.0.0.1:{}", free_port());
        let [outbound, inbound, admin] = [0, 1, 2].map(port);
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_weir-sidecar"))
            .arg("--config")
            .arg(&config_path)
            .args(["--outbound", &outbound, "--inbound", &inbound])
            .args(["--admin", &admin, "--app", &app.to_string()])
            .env("WEIR_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap();
        let process = Self {
            child,
            config_path,
            log_path,
            outbound: outbound.parse().unwrap(),
            admin: admin.parse().unwrap(),
        };
        let ready = eventually(Duration::from_secs(5), || async {
            match tokio::net::TcpStream::connect(process.admin).await {
                Ok(_) => get(process.admin, "/ready", "admin").await.0 == 200,
                Err(_) => false,
            }
        })
        .await;
        assert!(
            ready,
            "the sidecar binary did not become ready:\n{}",
            process.log()
        );
        process
    }

    /// Write-then-rename, as editors and ConfigMaps do.
    pub fn write_config(&self, config: &str) {
        let tmp = self.config_path.with_extension("tmp");
        std::fs::write(&tmp, config).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// What the process logged so far, without terminal colour codes.
    pub fn log(&self) -> String {
        let raw = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let mut plain = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // CSI: ESC [ parameters final-byte
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                plain.push(c);
            }
        }
        plain
    }

    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let (status, _, body) = get(self.admin, "/metrics", "admin").await;
        assert_eq!(status, 200);
        metric_with(&body, name, labels)
    }
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = self.config_path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
