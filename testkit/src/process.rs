//! The real binaries (`env!("CARGO_BIN_EXE_…")`) as child processes a test can wait for and stop.
//!
//! Hand-written on `std::process` and `nix`: each child runs in its own process group, so what it
//! starts itself (the demo launcher's services, a shell's children) is signalled with it and
//! nothing outlives the test; SIGTERM first, so the binary's own shutdown path runs, SIGKILL of the
//! whole group after a grace period. Its stdout and stderr go to one log file, read back for
//! assertions and shown when a wait fails.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// How long a dropped process gets between SIGTERM and SIGKILL.
pub const DROP_GRACE: Duration = Duration::from_secs(2);

/// A running child process in its own process group; stopped (group and all) when dropped.
#[derive(Debug)]
pub struct Process {
    child: parking_lot::Mutex<Child>,
    pid: u32,
    log: PathBuf,
    /// The folder holding the log when the kit chose it (removed on drop).
    _log_dir: Option<tempfile::TempDir>,
}

impl Process {
    /// Spawns `command` with its output in a log file of its own temporary folder.
    pub fn spawn(command: Command) -> Self {
        let dir = crate::temp_dir("weir-process");
        let log = dir.path().join("output.log");
        let mut process = Self::spawn_logging_to(command, &log);
        process._log_dir = Some(dir);
        process
    }

    /// Spawns `command` with its output (stdout and stderr) in the file `log`, created or
    /// truncated, which the test keeps (e.g. beside the folder the binary works on).
    pub fn spawn_logging_to(mut command: Command, log: &Path) -> Self {
        let file = std::fs::File::create(log)
            .unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let stdout = file.try_clone().expect("a second handle on the log");
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {command:?}: {e}"));
        Self {
            pid: child.id(),
            child: parking_lot::Mutex::new(child),
            log: log.to_owned(),
            _log_dir: None,
        }
    }

    /// The child's process id (also its process group's).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What it wrote so far, without terminal colour codes.
    pub fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Its exit status if it has ended (it is reaped then), None while it runs.
    pub fn try_status(&self) -> Option<ExitStatus> {
        self.child.lock().try_wait().ok().flatten()
    }

    /// Waits up to `within` for it to end on its own.
    pub async fn wait_exit(&self, within: Duration) -> Option<ExitStatus> {
        let mut status = None;
        crate::eventually(within, || {
            status = self.try_status();
            std::future::ready(status.is_some())
        })
        .await;
        status
    }

    /// Waits until something accepts connections on `addr`. Err (with the log) when the process
    /// ends first or `within` passes.
    pub async fn wait_for_port(
        &self,
        addr: std::net::SocketAddr,
        within: Duration,
    ) -> Result<(), String> {
        self.wait_until(&format!("a listener on {addr}"), within, || async move {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await
    }

    /// Waits until its output contains `needle`. Err (with the log) when the process ends without
    /// writing it or `within` passes.
    pub async fn wait_for_log(&self, needle: &str, within: Duration) -> Result<(), String> {
        self.wait_until(&format!("{needle:?} in its output"), within, || {
            std::future::ready(self.log().contains(needle))
        })
        .await
    }

    /// Polls `check` until it holds; Err naming `what`, with the log, when the process ends
    /// first or `within` passes.
    pub async fn wait_until<F, Fut>(
        &self,
        what: &str,
        within: Duration,
        mut check: F,
    ) -> Result<(), String>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + within;
        let (held, ended) = loop {
            if check().await {
                break (true, None);
            }
            if let Some(status) = self.try_status() {
                break (false, Some(status));
            }
            if tokio::time::Instant::now() >= deadline {
                break (false, None);
            }
            tokio::time::sleep(crate::poll::POLL_EVERY).await;
        };
        match ended {
            Some(status) => Err(format!(
                "process {} ended ({status}) before {what}; its output:\n{}",
                self.pid,
                self.log()
            )),
            None if held => Ok(()),
            None => Err(format!(
                "process {}: {what} did not come within {within:?}; its output:\n{}",
                self.pid,
                self.log()
            )),
        }
    }

    /// Sends `signal` to its whole process group (nothing happens once the group is gone).
    pub fn signal(&self, signal: Signal) {
        let _ = killpg(Pid::from_raw(self.pid as i32), signal);
    }

    /// Stops it: SIGTERM to the group, up to `grace` for the child to end, then SIGKILL to
    /// whatever of the group is left. Returns the child's exit status.
    pub fn stop(&self, grace: Duration) -> ExitStatus {
        let mut child = self.child.lock();
        if let Ok(Some(status)) = child.try_wait() {
            drop(child);
            // The leader is gone; what it started may not be.
            self.signal(Signal::SIGKILL);
            return status;
        }
        self.signal(Signal::SIGTERM);
        // Counted sleeps, not a clock: a test on tokio's paused clock drops processes too.
        let step = Duration::from_millis(10);
        let mut status = None;
        for _ in 0..=grace.as_millis() / step.as_millis() {
            if let Ok(Some(ended)) = child.try_wait() {
                status = Some(ended);
                break;
            }
            std::thread::sleep(step);
        }
        drop(child);
        self.signal(Signal::SIGKILL);
        status.unwrap_or_else(|| self.child.lock().wait().expect("the child's status"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop(DROP_GRACE);
    }
}

/// `text` without ANSI escape sequences (CSI: ESC [ parameters final-byte), as logs written for a
/// terminal carry.
pub fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
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
