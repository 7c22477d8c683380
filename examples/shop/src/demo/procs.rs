//! The child processes of a demo run: started with their output in a log file each, watched for
//! an early exit, and stopped with SIGTERM (then SIGKILL after a grace period) so that none is
//! left behind.
//!
//! Each child runs in its own process group, so a Ctrl-C in the terminal reaches only the
//! launcher, which then stops the traffic, reads the last figures and stops the children in
//! order. The launcher stops them on SIGINT, SIGTERM and SIGHUP, and when it fails on the way
//! ([`Children`] stops them when dropped); only `kill -9` of the launcher itself leaves them
//! running (the crate forbids the `unsafe` a parent-death signal would need).

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// One child process and where its output goes.
#[derive(Debug)]
pub struct Child {
    /// How messages name it: `orders app`, `payments v2 sidecar`, `control plane`.
    pub name: String,
    /// Stopped in the second round (the control plane outlives its proxies' shutdown).
    pub late: bool,
    child: std::process::Child,
    log: PathBuf,
    /// Set once reaped: its pid may belong to someone else afterwards.
    status: Option<ExitStatus>,
    /// Asked to stop while the run goes on (an orders instance the autoscaler let go): its
    /// exit is expected, not a failure of the run.
    retired_at: Option<Instant>,
    /// Got SIGKILL because it did not exit after SIGTERM.
    killed: bool,
}

/// How a child ended when stopped.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stopped {
    pub name: String,
    /// `exited 0`, `exited 1`, `killed by signal 9` …
    pub status: String,
    /// Whether it exited by itself (code 0) within the grace period after SIGTERM.
    pub clean: bool,
    /// It had exited before it was asked to.
    pub early: bool,
}

impl Child {
    /// Starts `command` with stdin closed and stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path, late: bool) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        {
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting the {name} ({:?})", command.get_program()))?;
        Ok(Self {
            name: name.to_owned(),
            late,
            child,
            log: log.to_owned(),
            status: None,
            retired_at: None,
            killed: false,
        })
    }

    /// Its exit status once it has exited (reaping it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.status = Some(status);
        }
        self.status
    }

    /// The last lines of its log, indented, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        if all.is_empty() {
            return format!("  (its log {} is empty)", self.log.display());
        }
        let tail = &all[all.len().saturating_sub(lines)..];
        format!(
            "  its log {} ends with:\n    {}",
            self.log.display(),
            tail.join("\n    ")
        )
    }

    fn terminate(&mut self) {
        if self.exited().is_none() {
            let _ = sigterm(self.child.id());
        }
    }

    fn kill(&mut self) {
        if self.exited().is_none() {
            self.killed = true;
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.status = Some(status);
            }
        }
    }
}

/// Every child of a run.
#[derive(Debug, Default)]
pub struct Children {
    list: Vec<Child>,
    stopped: bool,
}

impl Children {
    pub fn push(&mut self, child: Child) {
        self.list.push(child);
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Child> {
        self.list.iter_mut().find(|c| c.name == name)
    }

    /// The first child that has exited, if any: a run cannot go on without one of its parts
    /// (retired children excepted).
    pub fn first_exited(&mut self) -> Option<(&Child, ExitStatus)> {
        let index = self
            .list
            .iter_mut()
            .position(|c| c.retired_at.is_none() && c.exited().is_some())?;
        let child = &self.list[index];
        Some((child, child.status.expect("checked above")))
    }

    /// Stops `name` while the run goes on: SIGTERM now, SIGKILL from [`Children::reap_retired`]
    /// once `grace` has passed. False when there is no such child.
    pub fn retire(&mut self, name: &str) -> bool {
        let Some(child) = self.get_mut(name) else {
            return false;
        };
        if child.retired_at.is_none() {
            child.retired_at = Some(Instant::now());
            child.terminate();
        }
        true
    }

    /// Whether `name` has exited (true when there is no such child).
    pub fn has_exited(&mut self, name: &str) -> bool {
        self.get_mut(name).is_none_or(|c| c.exited().is_some())
    }

    /// SIGKILL to retired children still running `grace` after their SIGTERM.
    pub fn reap_retired(&mut self, grace: Duration) {
        for child in &mut self.list {
            if child.retired_at.is_some_and(|at| at.elapsed() >= grace) && child.exited().is_none()
            {
                eprintln!(
                    "weir-shop demo: the {} has not exited after SIGTERM; killing it",
                    child.name
                );
                child.kill();
            }
        }
    }

    /// SIGTERM to every child (the control plane last), waiting up to `grace` for each round
    /// before SIGKILL — or not waiting any more once `now` turns [`super::STOP_NOW`].
    pub async fn stop(&mut self, grace: Duration, now: watch::Receiver<u8>) -> Vec<Stopped> {
        self.stopped = true;
        let early: Vec<bool> = self
            .list
            .iter_mut()
            .map(|c| c.retired_at.is_none() && c.exited().is_some())
            .collect();
        for late in [false, true] {
            for child in self.list.iter_mut().filter(|c| c.late == late) {
                child.terminate();
            }
            let deadline = Instant::now() + grace;
            loop {
                let mut running = 0;
                for child in self.list.iter_mut().filter(|c| c.late == late) {
                    if child.exited().is_none() {
                        running += 1;
                    }
                }
                if running == 0 || Instant::now() >= deadline || *now.borrow() == super::STOP_NOW {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            for child in &mut self.list {
                if child.late == late && child.exited().is_none() {
                    eprintln!(
                        "weir-shop demo: the {} has not exited after SIGTERM; killing it",
                        child.name
                    );
                    child.kill();
                }
            }
        }
        self.list
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let status = c.status.map_or_else(|| "unknown".to_owned(), describe);
                Stopped {
                    name: c.name.clone(),
                    clean: !c.killed && !early[i] && c.status.is_some_and(|s| s.success()),
                    early: early[i],
                    status,
                }
            })
            .collect()
    }
}

impl Drop for Children {
    /// The last resort when a run ends without [`Children::stop`] (an error on the way): SIGTERM,
    /// a short wait, SIGKILL.
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        for child in &mut self.list {
            child.terminate();
        }
        let deadline = std::time::SystemTime::now() + Duration::from_secs(5);
        while self.list.iter_mut().any(|c| c.exited().is_none())
            && std::time::SystemTime::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        for child in &mut self.list {
            child.kill();
        }
    }
}

/// `exited 0`, `killed by signal 9`.
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

fn sigterm(pid: u32) -> std::io::Result<()> {
    let pid = i32::try_from(pid).map_err(std::io::Error::other)?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .map_err(std::io::Error::from)
}
