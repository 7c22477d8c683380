//! The operator's web dashboard as a person sees it: the demo runs headless (the control plane
//! in local mode, the shop's five services with their sidecars, traffic), and headless Chromium
//! opens `/dashboard` on the control plane's admin listener. The rendered page must name the five
//! services, show calls with non-zero rates, and leave nothing in the browser console; a
//! screenshot is kept under the target folder (`target/dashboard/dashboard.png`).
//!
//! Needs Debian's `chromium` (`.ci/run` installs it); without it the test passes after printing
//! `SKIPPED:`. The shop runs with `--port-base 25000` (out of the way of a demo a developer may
//! be running on the default ports); it takes the same lock as the scenario tests and is in their
//! nextest group, since two shops at once would share two cores.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const SHOP: &str = env!("CARGO_BIN_EXE_weir-shop");
/// The demo's ports start here (`--port-base`).
const PORT_BASE: &str = "25000";
/// The demo's control plane admin listener: the table's 18011, moved to [`PORT_BASE`].
const ADMIN: &str = "127.0.0.1:25011";
const SERVICES: [&str; 5] = ["gateway", "orders", "inventory", "payments", "shipping"];

/// Held while a shop runs (the same lock as `scenarios.rs`).
const PORTS_LOCK: &str = "weir-shop-demo-ports.lock";

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// The folder cargo builds into: this test binary is `<target>/<profile>/deps/<name>`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir)
}

/// The body of `GET path` on `addr` when it answers 200 within 2 s.
fn get(addr: &str, path: &str) -> Option<String> {
    let mut stream =
        TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// Stops the demo (as Ctrl-C does) when dropped.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        // Up to 20 s for the shop to stop.
        for _ in 0..200 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Headless Chromium on `url` with `extra` arguments, its console written to stderr.
fn browse(chromium: &Path, profile: &Path, url: &str, extra: &[&str]) -> Output {
    Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1400,1200",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", chromium.display()))
}

/// The rates of the edge labels (`12.5/s · …`) in the rendered page.
fn edge_rates(dom: &str) -> Vec<f64> {
    dom.match_indices("/s · ")
        .filter_map(|(at, _)| {
            let before = &dom[..at];
            let start = before
                .rfind(|c: char| !(c.is_ascii_digit() || c == '.'))
                .map_or(0, |i| i + 1);
            before[start..].parse().ok()
        })
        .collect()
}

#[test]
fn the_dashboard_renders_the_running_shop_in_a_browser() {
    let Some(chromium) = chromium() else {
        println!("SKIPPED: no chromium (Debian package `chromium`) to open the dashboard in");
        return;
    };
    let _ports = weir_testkit::exclusive_lock(PORTS_LOCK);
    let scratch = weir_testkit::temp_dir("weir-dashboard-test");
    let scratch = scratch.path();
    let demo_log = scratch.join("demo.log");
    let demo = Demo(
        Command::new(SHOP)
            .args(["demo", "--duration", "120s", "--port-base", PORT_BASE])
            .arg("--report")
            .arg(scratch.join("report.json"))
            .arg("--data")
            .arg(scratch.join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&demo_log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {SHOP}: {e}")),
    );
    let log = || std::fs::read_to_string(&demo_log).unwrap_or_default();

    // The demo announces the dashboard; wait until its graph has the five services with calls.
    // Up to 2 minutes for the shop to start and its calls to show.
    let mut attempts = 0;
    loop {
        let ready = get(ADMIN, "/api/graph")
            .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
            .is_some_and(|graph| {
                let named = |name: &str| {
                    graph["services"]
                        .as_array()
                        .is_some_and(|s| s.iter().any(|s| s["name"] == name))
                };
                let busy = graph["edges"].as_array().is_some_and(|edges| {
                    edges
                        .iter()
                        .filter(|e| e["requestsPerSecond"].as_f64().unwrap_or(0.0) > 0.0)
                        .count()
                        >= 3
                });
                let autoscaled = graph["autoscalers"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|a| a["name"] == "orders"));
                SERVICES.iter().all(|s| named(s)) && busy && autoscaled
            });
        if ready {
            break;
        }
        attempts += 1;
        assert!(
            attempts < 240,
            "the dashboard's graph never showed the shop:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        log().contains(&format!("http://{ADMIN}/dashboard")),
        "the demo does not print the dashboard's URL:\n{}",
        log()
    );

    let url = format!("http://{ADMIN}/dashboard");
    let page = browse(
        &chromium,
        &scratch.join("profile-dom"),
        &url,
        &["--dump-dom"],
    );
    let dom = String::from_utf8_lossy(&page.stdout);
    let console = String::from_utf8_lossy(&page.stderr);
    assert!(page.status.success(), "chromium failed:\n{console}");
    for service in SERVICES {
        assert!(
            dom.contains(&format!("data-service=\"{service}.shop\"")),
            "{service} is not drawn:\n{dom}"
        );
    }
    assert!(
        dom.contains("<th>autoscaler</th>") && dom.contains("<td>orders.shop</td>"),
        "the orders Autoscaler is not shown:\n{dom}"
    );
    let rates = edge_rates(&dom);
    assert!(
        rates.iter().filter(|r| **r > 0.0).count() >= 3,
        "no calls with non-zero rates drawn ({rates:?}):\n{dom}"
    );
    assert!(
        dom.contains("data-updated="),
        "the page never read /api/graph:\n{dom}"
    );
    // Chromium logs every console message (errors, failed loads, policy violations) as
    // `…:CONSOLE…`; the page logs nothing when all is well.
    let messages: Vec<&str> = console
        .lines()
        .filter(|line| line.contains(":CONSOLE"))
        .collect();
    assert!(
        messages.is_empty(),
        "console messages:\n{}",
        messages.join("\n")
    );

    let shots = target_dir().join("dashboard");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let screenshot = browse(
        &chromium,
        &scratch.join("profile-shot"),
        &url,
        &[&format!("--screenshot={}", shot.display())],
    );
    assert!(
        screenshot.status.success() && shot.is_file(),
        "no screenshot:\n{}",
        String::from_utf8_lossy(&screenshot.stderr)
    );
    println!("screenshot: {}", shot.display());
    drop(demo);
}
