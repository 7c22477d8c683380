//! The control plane at scale: `cargo run --release -p weir-operator --example control_plane_bench`.
//!
//! For 1,000 and then 10,000 services (10 endpoints, a TrafficSplit and a ResiliencePolicy
//! each), in one run: the translation time; a real `weir-operator local` process serving 100
//! proxies that each call 5 services (99 protocol clients that count the bytes they receive, and
//! one real `weir-sidecar` process whose memory is read); the push latency from a weight edit on
//! disk to every proxy holding it (p50/p99 over proxies and edits); and the operator's RSS. Then
//! the ratios 10,000/1,000 of a proxy's RSS and bytes received: a proxy receives only what it
//! calls, so they should stay flat while the mesh grows tenfold.
//!
//! The figures are printed, never asserted: this machine is shared and noisy.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use weir_proxy_api::protocol::{
    DiscoveryRequest, DiscoveryResponse, HeldResource, INBOUND_RESOURCE, Node, service_resource,
};

const NAMESPACE: &str = "bench";
const SERVICES_PER_FILE: usize = 100;
const ENDPOINTS: usize = 10;
const PROXIES: usize = 100;
const CALLS: usize = 5;
const EDITS: usize = 10;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // `--services N` measures N services alone (for a profiler run, with `--wrap`).
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(services) = option(&args, "--services") {
        let services = services.parse().expect("--services N");
        runtime.block_on(run(services, option(&args, "--wrap")));
        return;
    }
    let small = runtime.block_on(run(1_000, None));
    let large = runtime.block_on(run(10_000, None));
    println!();
    println!("10,000 / 1,000 services:");
    println!(
        "  proxy RSS          {:.2}x  ({} KiB vs {} KiB)  target <= 1.10x",
        large.sidecar_rss_kib as f64 / small.sidecar_rss_kib as f64,
        large.sidecar_rss_kib,
        small.sidecar_rss_kib
    );
    println!(
        "  bytes per proxy    {:.2}x  ({} vs {})  target <= 1.10x",
        large.bytes_per_proxy as f64 / small.bytes_per_proxy as f64,
        large.bytes_per_proxy,
        small.bytes_per_proxy
    );
}

fn option<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

#[derive(Debug)]
struct Figures {
    sidecar_rss_kib: u64,
    bytes_per_proxy: u64,
}

fn service(i: usize) -> String {
    format!("svc-{i}")
}

fn files(dir: &Path, services: usize, edited_weight: u32) {
    for chunk in 0..services.div_ceil(SERVICES_PER_FILE) {
        file(dir, services, chunk, edited_weight);
    }
}

/// One file of SERVICES_PER_FILE services; svc-0, the one edited, is in chunk 0.
fn file(dir: &Path, services: usize, chunk: usize, edited_weight: u32) {
    {
        let mut text = String::new();
        for i in chunk * SERVICES_PER_FILE..((chunk + 1) * SERVICES_PER_FILE).min(services) {
            let name = service(i);
            let v1 = if i == 0 { edited_weight } else { 90 };
            text.push_str(&format!(
                "apiVersion: weir.dev/v1alpha1\nkind: LocalService\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\nspec:\n  endpoints:\n"
            ));
            for e in 0..ENDPOINTS {
                // Addresses nothing listens on: the bench measures config, not traffic.
                let port = 20_000 + (i * ENDPOINTS + e) % 40_000;
                let version = if e < 8 { "v1" } else { "v2" };
                text.push_str(&format!(
                    "    - {{address: \"127.0.{}.{}:{port}\", labels: {{version: {version}}}}}\n",
                    (i / 250) % 250 + 1,
                    i % 250 + 1
                ));
            }
            text.push_str(&format!(
                "---\napiVersion: weir.dev/v1alpha1\nkind: TrafficSplit\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\n\
                 spec:\n  service: {name}\n  backends:\n    - {{subset: v1, selector: {{version: v1}}, weight: {v1}}}\n    - {{subset: v2, selector: {{version: v2}}, weight: 10}}\n---\n\
                 apiVersion: weir.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\n\
                 spec:\n  targetRef: {{kind: Service, name: {name}}}\n  timeouts: {{request: 10s, perTry: 2s}}\n  retries: {{attempts: 2, retryOn: [5xx, connect-failure]}}\n  circuitBreaker: {{failureThreshold: 5}}\n  outlierDetection: {{consecutive5xxErrors: 5, maxEjectionPercent: 50}}\n  rateLimit: {{requestsPerSecond: 100, burst: 20}}\n---\n"
            ));
        }
        let path = dir.join(format!("services-{chunk:03}.yaml"));
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

fn binary(name: &str) -> PathBuf {
    // Examples live in target/<profile>/examples; the binaries one level up.
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("profile dir")
        .join(name)
}

fn peak_rss_kib(child: &Child) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

struct Killed(Option<Child>);
impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Stops an operator run under a wrapper (`--wrap`) with SIGTERM, so it exits cleanly and the
/// profiler writes its data: the `weir-operator` process among the wrapper's descendants (a
/// script like heaptrack's), else the wrapper itself (valgrind runs the program in its own
/// process). Then waits for the wrapper to finish.
fn terminate_wrapped(mut wrapper: Child) {
    fn descendants(pid: u32, out: &mut Vec<u32>) {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten();
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                out.push(child);
                descendants(child, out);
            }
        }
    }
    let mut all = Vec::new();
    descendants(wrapper.id(), &mut all);
    let target = all
        .into_iter()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "weir-operator")
        })
        .unwrap_or(wrapper.id());
    let _ = Command::new("kill")
        .args(["-TERM", &target.to_string()])
        .status();
    let _ = wrapper.wait();
}

async fn wait_ready(admin: SocketAddr, tries: usize) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    for _ in 0..tries {
        if let Ok(r) = client
            .get(format!("http://{admin}/ready").parse().expect("uri"))
            .await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not ready: {admin}");
}

/// One simulated proxy: long-polls like a sidecar, counts bytes, reports when it holds the
/// edited service at a new version.
async fn proxy(
    control_plane: SocketAddr,
    index: usize,
    services: usize,
    bytes: Arc<std::sync::atomic::AtomicU64>,
    versions: tokio::sync::watch::Sender<u64>,
) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut held: BTreeMap<String, Option<u64>> = BTreeMap::new();
    held.insert(INBOUND_RESOURCE.into(), None);
    held.insert(service_resource(NAMESPACE, &service(0)), None);
    let mut k = 1;
    while held.len() < CALLS + 1 {
        held.insert(
            service_resource(NAMESPACE, &service((index * 7919 + k * 104_729) % services)),
            None,
        );
        k += 1;
    }
    let edited = service_resource(NAMESPACE, &service(0));
    loop {
        let request = DiscoveryRequest {
            node: Node {
                service: format!("client-{index}"),
                namespace: NAMESPACE.into(),
                pod: Some(format!("client-{index}")),
                inbound: None,
                admin: None,
            },
            resources: held
                .iter()
                .map(|(name, version)| HeldResource {
                    name: name.clone(),
                    version: *version,
                })
                .collect(),
            rejected: Vec::new(),
            wait_seconds: 30,
        };
        let http = hyper::Request::post(format!("http://{control_plane}/v1/discovery"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                serde_json::to_vec(&request).expect("json"),
            )))
            .expect("request");
        let Ok(response) = client.request(http).await else {
            return;
        };
        let Ok(body) = response.into_body().collect().await else {
            return;
        };
        let body = body.to_bytes();
        bytes.fetch_add(body.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let Ok(answer) = serde_json::from_slice::<DiscoveryResponse<serde_json::Value>>(&body)
        else {
            return;
        };
        for update in answer.resources {
            if update.name == edited {
                versions.send_replace(update.version);
            }
            held.insert(update.name, Some(update.version));
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// `wrap`: a command (words split on spaces) the operator runs under, e.g. `heaptrack -o FILE`;
/// its RSS is then the wrapper's, so only the profiler's figures count.
async fn run(services: usize, wrap: Option<&str>) -> Figures {
    println!(
        "== {services} services x {ENDPOINTS} endpoints, a TrafficSplit and a ResiliencePolicy each; {PROXIES} proxies calling {CALLS} services each"
    );
    let dir = std::env::temp_dir().join(format!("weir-cp-bench-{}-{services}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    files(&dir, services, 90);

    // Translation alone, in process.
    let started = Instant::now();
    let mut folder = weir_operator::local::Folder::default();
    folder.refresh(&dir);
    let parsed = started.elapsed();
    let started = Instant::now();
    // As local mode translates the whole folder: a chunk of services at a time.
    let translation = weir_operator::incremental::retranslate(
        &folder,
        Default::default(),
        &weir_operator::incremental::Touched::All,
        &|_| {},
        &mut |_, _| {},
    );
    let translated = started.elapsed();
    assert_eq!(translation.services.len(), services);
    println!(
        "  parse {:>8.1} ms   translate {:>8.1} ms",
        parsed.as_secs_f64() * 1e3,
        translated.as_secs_f64() * 1e3
    );
    drop((folder, translation));

    let (listen, admin) = (free_port(), free_port());
    let mut command = match wrap {
        Some(wrap) => {
            let mut words = wrap.split_whitespace();
            let mut command = Command::new(words.next().expect("--wrap COMMAND"));
            command.args(words).arg(binary("weir-operator"));
            command
        }
        None => Command::new(binary("weir-operator")),
    };
    let operator = Killed(Some(
        command
            .args(["local", "--dir"])
            .arg(&dir)
            .args([
                "--listen",
                &listen.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .env("WEIR_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect(
                "weir-operator (build it: cargo build --release -p weir-operator -p weir-sidecar)",
            ),
    ));
    wait_ready(admin, if wrap.is_some() { 12_000 } else { 600 }).await;

    // One real sidecar, for its memory.
    let (outbound, sidecar_admin) = (free_port(), free_port());
    let sidecar = Killed(Some(
        Command::new(binary("weir-sidecar"))
            .args([
                "--control-plane",
                &format!("http://{listen}"),
                "--service",
                "client-real",
                "--namespace",
                NAMESPACE,
            ])
            .args([
                "--outbound",
                &outbound.to_string(),
                "--inbound",
                &free_port().to_string(),
            ])
            .args(["--admin", &sidecar_admin.to_string()])
            .env("WEIR_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("weir-sidecar"),
    ));
    wait_ready(sidecar_admin, 600).await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    for k in 0..CALLS {
        let request = hyper::Request::get(format!("http://{outbound}/"))
            .header(
                "host",
                format!("{}.{NAMESPACE}", service(k * 13 % services)),
            )
            .body(Full::new(Bytes::new()))
            .expect("request");
        let _ = client.request(request).await;
    }

    let mut receivers = Vec::new();
    let mut counters = Vec::new();
    for index in 1..PROXIES {
        let bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (tx, rx) = tokio::sync::watch::channel(0);
        tokio::spawn(proxy(listen, index, services, bytes.clone(), tx));
        counters.push(bytes);
        receivers.push(rx);
    }
    // Everyone holds the edited service.
    for rx in &mut receivers {
        let _ = rx.wait_for(|v| *v > 0).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let initial_bytes: u64 = counters
        .iter()
        .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        .sum::<u64>()
        / counters.len() as u64;

    let mut latencies = Vec::new();
    for edit in 0..EDITS {
        let before: Vec<u64> = receivers.iter().map(|rx| *rx.borrow()).collect();
        let written = Instant::now();
        // A weight edit rewrites the one file holding svc-0, as a user's edit would.
        file(&dir, services, 0, 80 - edit as u32);
        let mut waits = Vec::new();
        for (rx, old) in receivers.iter().zip(&before) {
            let mut rx = rx.clone();
            let old = *old;
            waits.push(tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|v| *v > old)).await;
                written.elapsed()
            }));
        }
        for w in waits {
            latencies.push(w.await.expect("join"));
        }
    }
    latencies.sort();
    let sidecar_rss = sidecar.0.as_ref().map_or(0, peak_rss_kib);
    let operator_rss = operator.0.as_ref().map_or(0, peak_rss_kib);
    println!(
        "  edit on disk -> all {} proxies hold it: p50 {:.1} ms  p99 {:.1} ms  (includes the 250 ms folder poll)",
        PROXIES - 1,
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    println!("  bytes received per proxy at sync: {initial_bytes}");
    println!(
        "  operator peak RSS {:.1} MiB   sidecar peak RSS {:.1} MiB",
        operator_rss as f64 / 1024.0,
        sidecar_rss as f64 / 1024.0
    );
    drop(sidecar);
    if wrap.is_some() {
        let mut operator = operator;
        if let Some(child) = operator.0.take() {
            terminate_wrapped(child);
        }
    } else {
        drop(operator);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Figures {
        sidecar_rss_kib: sidecar_rss,
        bytes_per_proxy: initial_bytes,
    }
}
