//! The `soak` and `instructions` commands end to end: the real `weir-bench` binary driving the
//! real `weir-sidecar` binary: `WEIR_SIDECAR_BIN`, else the one next to `weir-bench` in the
//! target directory, built there first (`cargo build -p weir-sidecar`) when a narrower test run
//! (`-p weir-bench`) did not build it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn sidecar() -> PathBuf {
    static SIDECAR: OnceLock<PathBuf> = OnceLock::new();
    SIDECAR
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("WEIR_SIDECAR_BIN") {
                return PathBuf::from(path);
            }
            let bench = Path::new(env!("CARGO_BIN_EXE_weir-bench"));
            let path = bench.with_file_name("weir-sidecar");
            if !path.is_file() {
                build_sidecar_beside(bench);
            }
            path
        })
        .clone()
}

/// Builds `weir-sidecar` into the target directory and profile `bench` was built in.
fn build_sidecar_beside(bench: &Path) {
    let profile_dir = bench.parent().expect("the bench is in a profile directory");
    let target_dir = profile_dir
        .parent()
        .expect("profiles are in a target directory");
    let mut command = Command::new(env!("CARGO"));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "-p", "weir-sidecar", "--target-dir"])
        .arg(target_dir);
    if profile_dir.file_name().is_some_and(|p| p == "release") {
        command.arg("--release");
    }
    let status = command.status().expect("cargo runs");
    assert!(status.success(), "building weir-sidecar failed: {status}");
}

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir-bench"))
        .args(args)
        .arg("--sidecar")
        .arg(sidecar())
        .output()
        .expect("weir-bench runs")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_short_soak_prints_the_report() {
    let output = bench(&[
        "soak",
        "--duration",
        "5s",
        "--rate",
        "200",
        "--warmup",
        "1s",
        "--churn-every",
        "1s",
        "--header-read-timeout",
        "1s",
    ]);
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success(),
        "the sidecar neither died nor hung, so the soak exits 0:\n{stdout}\n{stderr}"
    );
    for line in [
        "weir-bench soak: 5s at 200 req/s (set by --rate)",
        "Requests by outcome (",
        "  normal               2xx ",
        "  x-weir-reason seen by clients: ",
        "Unexpected (should not happen): ",
        "Config churn: ",
        "  RSS after warm-up ",
        "  open file descriptors after warm-up ",
        "  state: ran for the whole duration",
        "Counted by the sidecar (/metrics)",
        "  weir_config_rejected_total: ",
        "  weir_requests_total: ",
        "Shutdown: the sidecar exited by itself after SIGTERM",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}\n{stderr}");
    }
    // One generation a second after the first (fewer if the machine is very busy).
    let written: u32 = stdout
        .split("Config churn: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the churn line has a count");
    assert!((2..=5).contains(&written), "{stdout}");
    // Normal requests to healthy upstreams never fail.
    assert!(
        !stdout.contains("normal request failed"),
        "{stdout}\n{stderr}"
    );
}

#[test]
fn a_soak_with_a_sidecar_that_cannot_start_fails() {
    let output = Command::new(env!("CARGO_BIN_EXE_weir-bench"))
        .args([
            "soak",
            "--duration",
            "5s",
            "--sidecar",
            "/nonexistent/weir-sidecar",
        ])
        .output()
        .expect("weir-bench runs");
    assert!(!output.status.success());
    let (_, stderr) = text(&output);
    assert!(
        stderr.contains("no sidecar binary at /nonexistent/weir-sidecar"),
        "{stderr}"
    );
}

#[test]
fn instructions_prints_the_table() {
    let output = bench(&[
        "instructions",
        "--low",
        "5",
        // A hundred requests apart: time-driven work (config polls, timers) differs between the
        // two runs of a loaded machine by a few dozen syscalls, which twenty requests' worth
        // (120) could not outweigh.
        "--high",
        "105",
        "--skip-haproxy",
        "--skip-nginx",
    ]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("marginal cost of one proxied keep-alive HTTP/1.1 GET (requests 5 to 105"),
        "{stdout}"
    );
    for proxy in ["weir-sidecar (plain)", "weir-sidecar (every policy on)"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(proxy))
            .unwrap_or_else(|| panic!("no {proxy} line in:\n{stdout}\n{stderr}"));
        let figures: Vec<&str> = line[proxy.len()..].split_whitespace().collect();
        let installed = |tool: &str| {
            Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        };
        // Instructions, then syscalls, each a number when its tool is installed.
        let (instructions, syscalls) = (figures[0], figures[3]);
        if installed("valgrind") {
            let n: f64 = instructions.replace(',', "").parse().expect(line);
            assert!(n > 1000.0, "{line}");
        } else {
            assert!(stdout.contains("instructions: valgrind is not installed"));
            eprintln!("SKIPPED: {proxy} instructions: valgrind is not installed");
        }
        if installed("strace") {
            let n: f64 = syscalls.parse().expect(line);
            // With every policy on, a machine loaded by the rest of the suite can time requests
            // out and open the breaker, so fewer calls reach the upstream: only the plain
            // proxy's figure is a stable lower bound.
            if proxy == "weir-sidecar (plain)" {
                assert!(n > 1.0, "{line}");
            }
        } else {
            assert!(stdout.contains("syscalls: strace is not installed"));
            eprintln!("SKIPPED: {proxy} syscalls: strace is not installed");
        }
    }
    // h2c through the sidecar: measured when nginx, its h2c upstream, is installed.
    let nginx = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .any(|dir| dir.join("nginx").is_file());
    let h2c = "weir-sidecar (plain), h2c";
    match stdout.lines().find(|l| l.starts_with(h2c)) {
        Some(line) => {
            assert!(nginx, "{stdout}");
            let instructions = line[h2c.len()..].split_whitespace().next().unwrap();
            if let Ok(n) = instructions.replace(',', "").parse::<f64>() {
                assert!(n > 1000.0, "{line}");
            }
        }
        None => {
            assert!(!nginx, "no {h2c} line in:\n{stdout}\n{stderr}");
            assert!(stdout.contains("not measured: the sidecar over h2c"));
        }
    }
    assert!(stdout.contains("not measured: HAProxy (--skip-haproxy)"));
    assert!(stdout.contains("not measured: nginx (--skip-nginx)"));
}

/// A `--sidecar` that runs the real one and does `then` to it after 3 s: a shell script, whose
/// exit the soak sees as the sidecar's. On SIGTERM it kills the real one, so nothing is left.
fn doomed_sidecar(name: &str, then: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("weir-bench-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("weir-sidecar");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\"{}\" \"$@\" &\npid=$!\ntrap 'kill -9 $pid; exit 143' TERM\nsleep 3\n{then}\nwait $pid\n",
            sidecar().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn soak_with(sidecar: &PathBuf) -> (Output, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_weir-bench"))
        .args([
            "soak",
            "--duration",
            "30s",
            "--rate",
            "100",
            "--warmup",
            "1s",
        ])
        .arg("--sidecar")
        .arg(sidecar)
        .output()
        .expect("weir-bench runs");
    let (stdout, stderr) = text(&output);
    (output, stdout, stderr)
}

#[test]
fn a_sidecar_that_dies_fails_the_soak_after_the_report() {
    let script = doomed_sidecar("dies", "kill -9 $pid\nexit 137");
    let (output, stdout, stderr) = soak_with(&script);
    assert!(!output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("  state: DIED: "), "{stdout}");
    assert!(stdout.contains("Requests by outcome ("), "{stdout}");
    assert!(stderr.contains("the sidecar died"), "{stderr}");
    let _ = std::fs::remove_dir_all(script.parent().unwrap());
}

#[test]
fn a_sidecar_that_hangs_fails_the_soak_after_the_report() {
    // SIGSTOP: the process is there, but answers nothing, /live included.
    let script = doomed_sidecar("hangs", "kill -STOP $pid");
    let (output, stdout, stderr) = soak_with(&script);
    assert!(!output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("  state: HUNG: GET /live has not answered 200 for "),
        "{stdout}"
    );
    assert!(stderr.contains("the sidecar hung"), "{stderr}");
    let _ = std::fs::remove_dir_all(script.parent().unwrap());
}
