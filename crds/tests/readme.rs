//! Every shell block of README.md runs as written, so that the newcomer path cannot rot.
//!
//! Each fenced block whose info string is `sh`, `bash` or `shell` runs with `bash -euo pipefail`
//! from the repository root, in its own process group, with the environment a fresh login shell
//! would have (`PATH`, `HOME`, the cargo and rustup homes, `CARGO_TARGET_DIR`; none of the
//! variables cargo and nextest set for a test, which would make cargo rebuild). It must exit 0
//! and leave no process behind: a block starts its own upstreams and stops what it started.
//!
//! A block that cannot run here (a cluster, Docker, root, a long time) carries a comment on the
//! line just above it, which this test reads:
//! - `<!-- readme-test: skip: REASON -->`: not run; the reason is required;
//! - `<!-- readme-test: instead: REASON` then commands, then `-->`: the commands (a quick variant
//!   of the block: `--help`, a short duration, the dev profile) run in its place.
//!
//! A new block without a comment runs by default. Blocks run one after another in file order;
//! a block of commands that build (`cargo run`, `cargo build`) may take minutes from a cold
//! cache, so each has [`BLOCK_TIMEOUT`] (and `.config/nextest.toml` gives this test the time).

// Real processes in real time, waited for from plain threads: no tokio runtime, so tokio's
// clock (which the workspace asks for, for paused-time tests) has nothing to offer here.
#![allow(clippy::disallowed_types)]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The longest a block may run: a first dev build of the operator on 2 busy cores.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(900);
/// How long the processes a block stopped get to exit after it returned.
const EXIT_GRACE: Duration = Duration::from_secs(30);
const MARKER: &str = "<!-- readme-test:";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives in the workspace")
        .to_path_buf()
}

/// What the comment above a block says.
#[derive(Debug, Clone, PartialEq)]
enum Marker {
    Skip { reason: String },
    Instead { reason: String, commands: String },
}

#[derive(Debug, Clone, PartialEq)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    text: String,
    marker: Option<Marker>,
}

/// The shell blocks of `markdown`, each with the marker just above it; also every marker that
/// is not just above a shell block (an error: it marks nothing).
fn shell_blocks(markdown: &str) -> Result<Vec<Block>, String> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut blocks = Vec::new();
    let mut pending: Option<(usize, Marker)> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix(MARKER) {
            if let Some((at, _)) = &pending {
                return Err(format!(
                    "README.md:{}: a readme-test comment above nothing",
                    at + 1
                ));
            }
            // The comment runs to the line that holds `-->`.
            let mut body = rest.to_owned();
            let start = i;
            while !body.contains("-->") {
                i += 1;
                let next = lines.get(i).ok_or_else(|| {
                    format!("README.md:{}: unclosed readme-test comment", start + 1)
                })?;
                body.push('\n');
                body.push_str(next);
            }
            let body = body[..body.find("-->").expect("checked")].to_owned();
            pending = Some((
                start,
                parse_marker(&body).map_err(|e| format!("README.md:{}: {e}", start + 1))?,
            ));
            i += 1;
            continue;
        }
        if let Some(info) = trimmed.strip_prefix("```") {
            let indent = line.len() - trimmed.len();
            let lang = info.split_whitespace().next().unwrap_or("");
            let opening = i;
            let mut text = String::new();
            i += 1;
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                text.push_str(lines[i].get(indent..).unwrap_or(lines[i].trim_start()));
                text.push('\n');
                i += 1;
            }
            let marker = pending.take();
            if matches!(lang, "sh" | "bash" | "shell") {
                blocks.push(Block {
                    line: opening + 1,
                    text,
                    marker: marker.map(|(_, m)| m),
                });
            } else if let Some((at, _)) = marker {
                return Err(format!(
                    "README.md:{}: a readme-test comment above a `{lang}` block, not a shell one",
                    at + 1
                ));
            }
            i += 1;
            continue;
        }
        if !line.trim().is_empty()
            && let Some((at, _)) = pending.take()
        {
            return Err(format!(
                "README.md:{}: a readme-test comment must be just above a shell block",
                at + 1
            ));
        }
        i += 1;
    }
    if let Some((at, _)) = pending {
        return Err(format!(
            "README.md:{}: a readme-test comment above nothing",
            at + 1
        ));
    }
    Ok(blocks)
}

fn parse_marker(body: &str) -> Result<Marker, String> {
    let body = body.trim_start();
    let reason_of = |rest: &str| -> Result<String, String> {
        let reason = rest.trim();
        if reason.len() < 10 {
            return Err(format!(
                "{reason:?} is no reason: say why the block cannot run here"
            ));
        }
        Ok(reason.to_owned())
    };
    if let Some(rest) = body.strip_prefix("skip:") {
        if rest.contains('\n') {
            return Err("a skip is one line: `<!-- readme-test: skip: REASON -->`".into());
        }
        return Ok(Marker::Skip {
            reason: reason_of(rest)?,
        });
    }
    if let Some(rest) = body.strip_prefix("instead:") {
        let (reason, commands) = rest.split_once('\n').unwrap_or((rest, ""));
        if commands.trim().is_empty() {
            return Err(
                "`instead:` needs the commands to run, on the lines after the reason".into(),
            );
        }
        return Ok(Marker::Instead {
            reason: reason_of(reason)?,
            commands: commands.to_owned(),
        });
    }
    Err(format!(
        "unknown readme-test comment {:?}: `skip: REASON` or `instead: REASON` and commands",
        body.lines().next().unwrap_or("")
    ))
}

/// The processes whose process group is `group`, from `/proc`.
fn processes_in_group(group: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp …`: comm may hold spaces, so split after its `)`.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = tail.split_whitespace().collect();
        if fields.first() == Some(&"Z") {
            continue;
        }
        if fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(group) {
            let comm = head.split_once('(').map_or("", |(_, c)| c).to_owned();
            found.push((pid, comm));
        }
    }
    found
}

fn kill_group(group: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .stderr(Stdio::null())
        .status();
}

/// A fresh login shell's environment: what a newcomer's terminal has, nothing cargo or nextest
/// set for this test.
fn fresh_env(command: &mut Command) {
    command.env_clear();
    for name in [
        "PATH",
        "HOME",
        "USER",
        "LANG",
        "TERM",
        "TMPDIR",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
        "CI",
    ] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
}

/// Runs `script` as a block of README.md:`line`; the error says what went wrong with its output.
fn run_block(line: usize, script: &str, grace: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut command = Command::new("bash");
    command
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(workspace())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    fresh_env(&mut command);
    let mut child = command
        .spawn()
        .map_err(|e| format!("README.md:{line}: starting bash: {e}"))?;
    let group = child.id();
    // Read the output on threads, so that a chatty block never blocks on a full pipe.
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(status);
        }
        if started.elapsed() > BLOCK_TIMEOUT {
            kill_group(group);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let elapsed = started.elapsed();
    // What the block stopped may take a moment to exit; what it left running is an error.
    let deadline = Instant::now() + grace;
    let mut left = processes_in_group(group);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        left = processes_in_group(group);
    }
    if !left.is_empty() {
        kill_group(group);
    }
    // The pipes close once every process holding them is gone.
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let tail = |s: &str| {
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    let report = |what: String| {
        format!(
            "README.md:{line}: {what}\n--- block ---\n{script}--- stdout (end) ---\n{}\n--- stderr (end) ---\n{}",
            tail(&stdout),
            tail(&stderr)
        )
    };
    match status {
        None => return Err(report(format!("still running after {BLOCK_TIMEOUT:?}"))),
        Some(s) if !s.success() => return Err(report(format!("failed ({s})"))),
        Some(_) => {}
    }
    if !left.is_empty() {
        return Err(report(format!(
            "left processes running {grace:?} after it ended (killed now): {left:?}"
        )));
    }
    println!(
        "README.md:{line}: ran in {:.1} s\n{}",
        elapsed.as_secs_f64(),
        tail(&stdout)
    );
    Ok(elapsed)
}

#[test]
fn markers_are_read_and_checked() {
    let md = "text\n\n```sh\necho one\n```\n\
              <!-- readme-test: skip: needs a Kubernetes cluster -->\n```sh\nkubectl get pods\n```\n\
              <!-- readme-test: instead: takes ten minutes of load\ncmd --help\nother\n-->\n\
              ```bash\nlong thing\n```\n```text\nnot shell\n```\n  ```sh\n  indented\n  ```\n";
    let blocks = shell_blocks(md).unwrap();
    assert_eq!(blocks.len(), 4);
    assert_eq!(blocks[0].text, "echo one\n");
    assert_eq!(blocks[0].marker, None);
    assert_eq!(
        blocks[1].marker,
        Some(Marker::Skip {
            reason: "needs a Kubernetes cluster".into()
        })
    );
    assert_eq!(
        blocks[2].marker,
        Some(Marker::Instead {
            reason: "takes ten minutes of load".into(),
            commands: "cmd --help\nother\n".into()
        })
    );
    assert_eq!(blocks[3].text, "indented\n");

    for (bad, why) in [
        (
            "<!-- readme-test: skip: x -->\n```sh\na\n```\n",
            "no reason",
        ),
        (
            "<!-- readme-test: skip: needs a cluster -->\nprose\n```sh\na\n```\n",
            "just above",
        ),
        (
            "<!-- readme-test: skip: needs a cluster -->\n```text\na\n```\n",
            "not a shell one",
        ),
        (
            "<!-- readme-test: instead: a good long reason -->\n```sh\na\n```\n",
            "commands",
        ),
        (
            "<!-- readme-test: maybe: a good long reason -->\n```sh\na\n```\n",
            "unknown",
        ),
        (
            "<!-- readme-test: skip: needs a cluster -->\n",
            "above nothing",
        ),
        (
            "<!-- readme-test: instead: a good long reason\na\n",
            "unclosed",
        ),
    ] {
        let error = shell_blocks(bad).unwrap_err();
        assert!(error.contains(why), "{bad:?}: {error}");
    }
}

#[test]
fn a_block_that_fails_or_leaves_a_process_is_an_error() {
    const SHORT: Duration = Duration::from_secs(2);
    assert!(run_block(1, "true\n", SHORT).is_ok());
    let failed = run_block(2, "echo before\nfalse\necho after\n", SHORT).unwrap_err();
    assert!(failed.contains("README.md:2: failed"), "{failed}");
    assert!(
        failed.contains("before") && !failed.contains("\nafter"),
        "{failed}"
    );
    // A background process the block does not stop: found, reported and killed.
    let left = run_block(3, "sleep 300 &\necho started\n", SHORT).unwrap_err();
    assert!(left.contains("left processes running"), "{left}");
    assert!(left.contains("sleep"), "{left}");
    // One it stops is fine.
    assert!(run_block(4, "sleep 300 & PID=$!\nkill $PID\n", SHORT).is_ok());
    // The environment is a fresh shell's: nothing cargo set for this test.
    let env = run_block(
        5,
        "test -z \"${CARGO_MANIFEST_DIR:-}\" && test -n \"$PATH\"\n",
        SHORT,
    );
    assert!(env.is_ok(), "{env:?}");
}

#[test]
fn every_shell_block_of_the_readme_runs() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let blocks = shell_blocks(&readme).unwrap_or_else(|e| panic!("{e}"));
    let mut ran = 0;
    let mut failures = Vec::new();
    for block in &blocks {
        let script = match &block.marker {
            None => &block.text,
            Some(Marker::Skip { reason }) => {
                println!("README.md:{}: not run: {reason}", block.line);
                continue;
            }
            Some(Marker::Instead { reason, commands }) => {
                println!(
                    "README.md:{}: a quick variant instead: {reason}",
                    block.line
                );
                commands
            }
        };
        match run_block(block.line, script, EXIT_GRACE) {
            Ok(_) => ran += 1,
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // The two laptop sections and the demo at least: a parser that found nothing is a failure.
    assert!(ran >= 3, "only {ran} blocks ran");
    println!(
        "{ran} of {} shell blocks (or their quick variants) ran",
        blocks.len()
    );
}
