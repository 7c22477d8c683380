//! The demo's scenarios, end to end: `weir-shop demo --scenario NAME --report FILE` starts the
//! control plane, every service and its sidecar as real processes on the shop's fixed loopback
//! ports, drives traffic, and writes its figures; the checks here read those figures.
//!
//! The shops run with `--port-base 24000`, out of the way of a demo a developer may be running on
//! the default ports. They go one at a time all the same (a shop is some 15 processes and its
//! traffic: two at once on two cores would distort the figures the checks judge): each test holds
//! an exclusive lock on a file in the temp dir while its shop runs (test threads of `cargo test`
//! and test processes of nextest alike; `.config/nextest.toml` also puts these tests in a group
//! of one, so that waiting for the lock does not count against nextest's timeout).
//! `weir-operator` and `weir-sidecar` are taken from next to the `weir-shop` binary (a workspace
//! build puts them there); when they are missing the launcher builds them with cargo.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use weir_testkit::temp::TempDir;
use weir_testkit::{exclusive_lock, temp_dir};

const SHOP: &str = env!("CARGO_BIN_EXE_weir-shop");
/// Where the scenarios' ports start (`--port-base`).
const PORT_BASE: &str = "24000";

/// The lock held while a shop runs on fixed ports (also taken by `dashboard.rs`).
const PORTS_LOCK: &str = "weir-shop-demo-ports.lock";

/// A scratch folder for one run, removed on drop (kept by the caller when checks fail).
fn scratch(name: &str) -> TempDir {
    temp_dir(&format!("weir-shop-test-{name}"))
}

/// `weir-shop demo ARGS` writing its report and data into `scratch`.
fn demo(scratch: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(SHOP);
    command
        .arg("demo")
        .args(args)
        .arg("--report")
        .arg(scratch.join("report.json"))
        .arg("--data")
        .arg(scratch.join("data"))
        .stdin(Stdio::null());
    command
}

/// Runs one scenario headless and returns its report, or why there is none.
fn run(scenario: &str, duration: &str, scratch: &Path) -> Result<Value, String> {
    let report = scratch.join("report.json");
    let args = ["--scenario", scenario, "--duration", duration];
    let output = demo(scratch, &args)
        .args(["--port-base", PORT_BASE])
        .output()
        .map_err(|e| format!("starting {SHOP}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "weir-shop demo --scenario {scenario} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    // Headless, it still says how far it got (a line every 5 s naming the phase) and where the
    // report went.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let progress = stdout
        .lines()
        .filter(|l| l.contains(&format!("scenario {scenario}, phase ")))
        .count();
    if progress < 2 {
        return Err(format!(
            "weir-shop demo --scenario {scenario} printed {progress} progress lines naming the phase:\n{stdout}"
        ));
    }
    if !stdout.contains(&format!("report written to {}", report.display())) {
        return Err(format!(
            "weir-shop demo --scenario {scenario} did not say where the report went:\n{stdout}"
        ));
    }
    let text = std::fs::read_to_string(&report)
        .map_err(|e| format!("reading {}: {e}", report.display()))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| format!("report: {e}"))?;
    eprintln!(
        "scenario {scenario}: checks {}",
        serde_json::to_string_pretty(&json["checks"]).unwrap_or_default()
    );
    Ok(json)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn phase<'a>(report: &'a Value, name: &str) -> Result<&'a Value, String> {
    report["phases"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .ok_or_else(|| format!("no phase {name:?} in the report"))
}

/// Collects failed expectations instead of stopping at the first.
#[derive(Default)]
struct Verdicts(Vec<String>);

impl Verdicts {
    fn expect(&mut self, scenario: &str, ok: bool, what: String) {
        if !ok {
            self.0.push(format!("{scenario}: {what}"));
        }
    }
}

fn check_canary(r: &Value, v: &mut Verdicts) -> Result<(), String> {
    for (name, v2, edited) in [
        ("90/10", 10.0, false),
        ("50/50", 50.0, true),
        ("0/100", 100.0, true),
    ] {
        let p = phase(r, name)?;
        let split = &p["mesh"]["split"];
        let total = f(&split["total"]);
        let observed = split["percent"]["v2"].as_f64().unwrap_or(0.0);
        v.expect(
            "canary",
            total >= 100.0 && (observed - v2).abs() <= 5.0,
            format!("phase {name}: v2 got {observed:.1} % of {total} calls, expected {v2} ± 5"),
        );
        if edited {
            let applied = f(&p["weightsAppliedAfterMs"]);
            v.expect(
                "canary",
                applied <= 1000.0,
                format!("phase {name}: the orders sidecar ran the new weights after {applied} ms"),
            );
        }
    }
    Ok(())
}

fn check_outlier(r: &Value, v: &mut Verdicts) -> Result<(), String> {
    let p = phase(r, "v2 failing 30 %")?;
    let success = f(&p["orders"]["successPercent"]);
    v.expect(
        "outlier",
        success >= 99.5,
        format!(
            "order success {success:.2} % while v2 failed (orders: {})",
            p["orders"]
        ),
    );
    let ejections: f64 = p["mesh"]["calls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["service"] == "payments")
        .map(|c| f(&c["ejections"]))
        .sum();
    v.expect(
        "outlier",
        ejections >= 1.0,
        format!("{ejections} ejections of payments endpoints"),
    );
    Ok(())
}

fn check_hang(r: &Value, v: &mut Verdicts) -> Result<(), String> {
    let p = phase(r, "inventory hanging")?;
    let g = &p["gateway"];
    let p99 = f(&g["p99Ms"]);
    v.expect(
        "hang",
        p99 < 1000.0 && f(&g["unanswered"]) == 0.0 && f(&g["requests"]) > 0.0,
        format!("the gateway while inventory hung: {g}"),
    );
    let opened = p["mesh"]["calls"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["service"] == "inventory" && c["breakerWorst"] != "closed");
    v.expect(
        "hang",
        opened,
        "no circuit breaker to inventory opened".into(),
    );
    Ok(())
}

fn check_burst(r: &Value, v: &mut Verdicts) -> Result<(), String> {
    let g = &r["cumulative"]["gateway"];
    v.expect(
        "burst",
        f(&g["rateLimited"]) > 0.0 && f(&g["rateLimitedWithoutRetryAfter"]) == 0.0,
        format!("429s with Retry-After: {g}"),
    );
    let other = f(&g["serverErrors"])
        + f(&g["otherClientErrors"])
        + f(&g["unanswered"])
        + f(&r["cumulative"]["orders"]["compensated"]);
    v.expect(
        "burst",
        other == 0.0,
        format!("nothing but the excess may fail: {g}"),
    );
    Ok(())
}

fn check_compensate(r: &Value, v: &mut Verdicts) -> Result<(), String> {
    let c = &r["compensation"];
    v.expect(
        "compensate",
        f(&c["compensated"]) > 0.0,
        format!("no saga compensated: {c}"),
    );
    v.expect(
        "compensate",
        f(&c["compensatedStillCharged"]) == 0.0
            && f(&c["compensatedStillReserved"]) == 0.0
            && f(&c["unknown"]) == 0.0,
        format!("compensated orders left charges or reservations: {c}"),
    );
    Ok(())
}

fn sigint(pid: u32) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("kill");
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &Path) -> Vec<String> {
    let needle = needle.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

/// Ctrl-C in the middle of a run: the launcher exits 0, every child is gone, every port free.
fn interrupted_run(v: &mut Verdicts) -> Result<(), String> {
    let scratch = scratch("interrupt");
    let data = scratch.path().join("data");
    let mut child = Command::new(SHOP)
        .args(["demo", "--scenario", "compensate", "--duration", "60s"])
        .arg("--data")
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    // Wait until the shop is up and taking orders (the gateway's sidecar answers).
    let deadline = std::time::SystemTime::now() + Duration::from_secs(120);
    loop {
        if std::net::TcpStream::connect("127.0.0.1:18300").is_ok()
            && processes_mentioning(&data).len() >= 7
        {
            break;
        }
        if std::time::SystemTime::now() > deadline {
            let _ = child.kill();
            return Err("the shop did not come up within 120 s".into());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            return Err(format!(
                "the demo exited early ({status}): {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    sigint(child.id());
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    v.expect(
        "interrupt",
        out.status.success(),
        format!(
            "Ctrl-C ended the demo with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    );
    v.expect(
        "interrupt",
        stdout.contains("stopped cleanly"),
        format!("not stopped cleanly:\n{stdout}"),
    );
    let left = processes_mentioning(&data);
    v.expect(
        "interrupt",
        left.is_empty(),
        format!("processes left behind: {left:?}"),
    );
    for port in [
        18010, 18011, 18000, 18100, 18200, 18300, 18004, 18104, 18304,
    ] {
        v.expect(
            "interrupt",
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            format!("port {port} still taken after Ctrl-C"),
        );
    }
    Ok(())
}

fn check_autoscale(r: &Value, v: &mut Verdicts) -> Result<(), String> {
    let scaling = &r["ordersScaling"];
    let timeline = scaling["timeline"]
        .as_array()
        .ok_or("no ordersScaling.timeline in the report")?;
    let quiet_again = f(&phase(r, "quiet again")?["fromSeconds"]);
    let peak = timeline
        .iter()
        .filter(|p| f(&p["atSeconds"]) < quiet_again)
        .map(|p| f(&p["serving"]))
        .fold(0.0, f64::max);
    let desired_peak = timeline
        .iter()
        .map(|p| f(&p["desired"]))
        .filter(|d| !d.is_nan())
        .fold(0.0, f64::max);
    v.expect(
        "autoscale",
        peak >= 3.0 && desired_peak >= 3.0,
        format!(
            "orders instances serving peaked at {peak} (desired {desired_peak}), expected 3 or more"
        ),
    );
    let last = timeline.last().ok_or("an empty timeline")?;
    let events = scaling["events"].as_array().ok_or("no events")?;
    let stopped = events.iter().filter(|e| e["action"] == "stop").count();
    v.expect(
        "autoscale",
        f(&last["serving"]) < peak && stopped > 0,
        format!(
            "after the load fell: {} serving at the end, {stopped} stopped (peak {peak})",
            last["serving"]
        ),
    );
    // Replica 1 is never stopped, and no instance was given up on.
    v.expect(
        "autoscale",
        events
            .iter()
            .all(|e| e["instance"] != "orders" && e["action"] != "gave-up"),
        format!("unexpected events: {events:?}"),
    );
    let orders = &r["cumulative"]["orders"];
    let failed = f(&orders["serverErrors"]) + f(&orders["unanswered"]) + f(&orders["compensated"]);
    v.expect(
        "autoscale",
        f(&orders["requests"]) > 500.0 && failed == 0.0,
        format!("orders while scaling: {orders}"),
    );
    // The gateway's sidecar saw every call to orders succeed, whichever instance served it.
    let calls = r["cumulative"]["mesh"]["calls"]
        .as_array()
        .ok_or("no calls in the report")?;
    let to_orders = calls
        .iter()
        .find(|c| c["caller"] == "gateway" && c["service"] == "orders")
        .ok_or("no gateway → orders calls")?;
    v.expect(
        "autoscale",
        f(&to_orders["failed"]) == 0.0,
        format!("gateway → orders: {to_orders}"),
    );
    Ok(())
}

/// The rollout scenarios: the analysis ended in `phase`, and orders kept succeeding.
fn check_rollout(r: &Value, v: &mut Verdicts, phase: &str) -> Result<(), String> {
    let rollout = &r["rollout"];
    v.expect(
        "rollout",
        rollout["phase"] == phase,
        format!("the analysis did not end {phase}: {rollout}"),
    );
    let weight = if phase == "Succeeded" { 100 } else { 0 };
    v.expect(
        "rollout",
        rollout["canaryWeight"] == weight,
        format!(
            "canary weight {} instead of {weight}",
            rollout["canaryWeight"]
        ),
    );
    let success = f(&r["cumulative"]["orders"]["successPercent"]);
    v.expect(
        "rollout",
        success >= 99.0,
        format!("order success {success:.2} % below 99 %"),
    );
    v.expect(
        "rollout",
        r["passed"] == true,
        format!("the report's checks failed: {}", r["checks"]),
    );
    Ok(())
}

fn check_rollout_healthy(r: &Value, v: &mut Verdicts) -> Result<(), String> {
    check_rollout(r, v, "Succeeded")
}

fn check_rollout_failing(r: &Value, v: &mut Verdicts) -> Result<(), String> {
    check_rollout(r, v, "RolledBack")
}

type Check = fn(&Value, &mut Verdicts) -> Result<(), String>;

/// Runs `scenario` for `duration` and applies `check` and the common expectations.
fn scenario(name: &str, duration: &str, check: Check) {
    let _ports = exclusive_lock(PORTS_LOCK);
    let mut verdicts = Verdicts::default();
    let scratch = scratch(name);
    match run(name, duration, scratch.path()) {
        Ok(report) => {
            if let Err(e) = check(&report, &mut verdicts) {
                verdicts.0.push(format!("{name}: {e}"));
            }
            verdicts.expect(
                name,
                report["cleanShutdown"] == true,
                format!("unclean shutdown: {}", report["shutdown"]),
            );
        }
        Err(e) => verdicts.0.push(format!("{name}: {e}")),
    }
    if !verdicts.0.is_empty() {
        eprintln!("kept {} for a look", scratch.keep().display());
    }
    assert!(
        verdicts.0.is_empty(),
        "{} failed:\n- {}",
        verdicts.0.len(),
        verdicts.0.join("\n- ")
    );
}

/// One test per scenario: `test_name: "scenario", "duration", check;`.
macro_rules! scenarios {
    ($($test:ident: $name:literal, $duration:literal, $check:ident;)*) => {$(
        #[test]
        fn $test() {
            scenario($name, $duration, $check);
        }
    )*};
}

// Durations: long enough for each check's figures to mean something, short enough for CI.
scenarios! {
    canary_split_follows_the_weights: "canary", "36s", check_canary;
    outlier_detection_ejects_the_failing_canary: "outlier", "25s", check_outlier;
    hanging_inventory_does_not_hang_the_gateway: "hang", "22s", check_hang;
    a_burst_is_rate_limited_and_nothing_else_fails: "burst", "15s", check_burst;
    failing_shipping_compensates_sagas_completely: "compensate", "20s", check_compensate;
    orders_scales_out_under_the_ramp_and_back_in: "autoscale", "100s", check_autoscale;
    a_healthy_payments_v2_is_rolled_out_to_succeeded: "rollout", "30s", check_rollout_healthy;
    a_failing_payments_v2_is_rolled_back_while_orders_keep_succeeding: "rollout-failing", "30s", check_rollout_failing;
}

#[test]
fn ctrl_c_stops_everything_cleanly() {
    let _ports = exclusive_lock(PORTS_LOCK);
    let mut verdicts = Verdicts::default();
    if let Err(e) = interrupted_run(&mut verdicts) {
        verdicts.0.push(format!("interrupt: {e}"));
    }
    assert!(
        verdicts.0.is_empty(),
        "{} failed:\n- {}",
        verdicts.0.len(),
        verdicts.0.join("\n- ")
    );
}

/// A port of the demo already taken: the run stops before starting anything, naming the address,
/// what it is for, and the flag that moves every port.
#[test]
fn a_taken_port_is_named_with_the_flag_that_moves_it() {
    // A base of its own, so that a scenario's shop cannot be the one holding it.
    let held = std::net::TcpListener::bind("127.0.0.1:26011").unwrap();
    let scratch = scratch("taken-port");
    let output = demo(
        scratch.path(),
        &["--duration", "5s", "--port-base", "26000"],
    )
    .output()
    .unwrap();
    drop(held);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("127.0.0.1:26011 (control plane admin) is not free"),
        "{stderr}"
    );
    assert!(stderr.contains("ports 26000 to 26328"), "{stderr}");
    assert!(stderr.contains("--port-base N"), "{stderr}");
    assert!(!scratch.path().join("report.json").exists());

    // The environment variable works as the flag does; a base that leaves no room is refused.
    let output = Command::new(SHOP)
        .args(["demo", "--duration", "5s"])
        .env("WEIR_DEMO_PORT_BASE", "65300")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("--port-base 65300: the demo uses ports base to base+328"),
        "{stderr}"
    );
}

/// A mesh edit the control plane refuses shows with its reason while the demo runs (here in the
/// headless progress lines; the terminal dashboard lists the same notes).
#[test]
fn a_refused_split_is_shown_with_its_reason() {
    let _ports = exclusive_lock(PORTS_LOCK);
    let scratch = scratch("refused");
    let mesh = scratch.path().join("mesh");
    std::fs::create_dir_all(&mesh).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("mesh");
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, mesh.join(path.file_name().unwrap())).unwrap();
    }
    let split = mesh.join("payments-split.yaml");
    let text = std::fs::read_to_string(&split).unwrap();
    assert!(text.contains("weight: 10}"), "{text}");
    std::fs::write(&split, text.replace("weight: 10}", "weight: -5}")).unwrap();
    let output = demo(
        scratch.path(),
        &["--duration", "8s", "--port-base", PORT_BASE],
    )
    .arg("--mesh")
    .arg(&mesh)
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(
            "! TrafficSplit shop/payments refused (Invalid): spec.backends[1].weight: must not be \
             negative (-5); its last good version stays in force"
        ),
        "{stdout}"
    );
}
