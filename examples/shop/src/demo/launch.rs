//! Getting a run going: the binaries (built once when missing), the data, log and mesh folders,
//! the fixed ports, the signals, and the processes themselves, started and waited for.

use super::mesh_folder::{self, MeshFiles};
use super::procs::{Child, Children};
use super::topology::{self, INSTANCES, Instance};
use super::{DemoArgs, RUNNING, STOP, STOP_NOW, scenario, web};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The folder this crate's sources are in (the mesh folder's default parent, and where cargo
/// builds the other binaries from).
pub(super) fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where things are for one run.
#[derive(Debug)]
pub(super) struct Layout {
    pub(super) operator: PathBuf,
    pub(super) sidecar: PathBuf,
    pub(super) own_exe: PathBuf,
    pub(super) data: PathBuf,
    pub(super) logs: PathBuf,
    /// The run's mesh folder, which the control plane reads.
    pub(super) mesh: PathBuf,
    /// The mesh folder it was made from (where a plain run's edits go).
    pub(super) source_mesh: PathBuf,
    /// Source and run paths of the mesh file with the orders LocalService.
    pub(super) orders_file: Option<(PathBuf, PathBuf)>,
    /// The data folder is a temporary one of this run.
    pub(super) temporary: bool,
}

/// `weir-operator` and `weir-sidecar`: in `--bin-dir`, else next to this executable, else built
/// there with cargo.
pub(super) fn find_binaries(args: &DemoArgs, own_exe: &Path) -> Result<(PathBuf, PathBuf)> {
    let names = ["weir-operator", "weir-sidecar"];
    let dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => own_exe
            .parent()
            .context("this executable has no folder")?
            .to_owned(),
    };
    let found = |dir: &Path| names.iter().all(|n| dir.join(n).is_file());
    if !found(&dir) {
        if args.bin_dir.is_some() {
            bail!(
                "--bin-dir {} does not hold both weir-operator and weir-sidecar",
                dir.display()
            );
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let release = !cfg!(debug_assertions);
        let mut command = build_command(&cargo, release, std::env::vars_os().map(|(k, _)| k));
        eprintln!(
            "weir-shop demo: weir-operator and weir-sidecar are not in {}; building them once with `cargo build{} -p weir-operator -p weir-sidecar` …",
            dir.display(),
            if release { " --release" } else { "" }
        );
        let status = command
            .status()
            .with_context(|| format!("running {}", Path::new(&cargo).display()))?;
        if !status.success() {
            bail!("building weir-operator and weir-sidecar failed ({status})");
        }
        if !found(&dir) {
            bail!(
                "cargo built weir-operator and weir-sidecar, but not into {} (is CARGO_TARGET_DIR \
                 set differently?); pass --bin-dir",
                dir.display()
            );
        }
    }
    Ok((dir.join(names[0]), dir.join(names[1])))
}

/// What `cargo run` sets for the program it runs, and a build run from inside it must not see.
/// Build scripts (ring, rustls, kube's dependencies) rerun when such a variable changes, so a build
/// that inherited them would make the user's next plain `cargo build` redo minutes of work.
fn set_by_cargo_run(name: &std::ffi::OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    matches!(
        name,
        "CARGO_MANIFEST_DIR"
            | "CARGO_MANIFEST_PATH"
            | "CARGO_CRATE_NAME"
            | "CARGO_BIN_NAME"
            | "CARGO_PRIMARY_PACKAGE"
            | "CARGO_RUSTC_CURRENT_DIR"
            | "OUT_DIR"
    ) || name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_BIN_EXE_")
}

/// `cargo build` of the operator and the sidecar in the workspace, in the environment the user's
/// own shell would give it: without the variables `cargo run` set for this process.
fn build_command(
    cargo: &std::ffi::OsStr,
    release: bool,
    inherited: impl Iterator<Item = std::ffi::OsString>,
) -> Command {
    let mut command = Command::new(cargo);
    command.current_dir(crate_dir().join("../..")).args([
        "build",
        "-p",
        "weir-operator",
        "-p",
        "weir-sidecar",
    ]);
    if release {
        command.arg("--release");
    }
    for name in inherited.filter(|n| set_by_cargo_run(n)) {
        command.env_remove(name);
    }
    command
}

impl Layout {
    pub(super) fn prepare(args: &DemoArgs) -> Result<Self> {
        let own_exe = std::env::current_exe().context("finding this executable")?;
        let (operator, sidecar) = find_binaries(args, &own_exe)?;
        let (data, temporary) = match (&args.data, args.scenario) {
            (Some(dir), _) => (dir.clone(), false),
            (None, Some(s)) => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos();
                let dir = std::env::temp_dir().join(format!(
                    "weir-shop-{}-{}-{nanos}",
                    s.name(),
                    std::process::id()
                ));
                (dir, true)
            }
            (None, None) => (
                own_exe
                    .parent()
                    .context("this executable has no folder")?
                    .join("weir-shop-data"),
                false,
            ),
        };
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        let data = data.canonicalize()?;
        let logs = data.join("logs");
        std::fs::create_dir_all(&logs)?;
        let source_mesh = args
            .mesh
            .clone()
            .unwrap_or_else(|| crate_dir().join("mesh"));
        if !source_mesh.is_dir() {
            bail!(
                "the mesh folder {} does not exist (pass --mesh DIR)",
                source_mesh.display()
            );
        }
        // The run's own mesh folder: the orders LocalService there follows the orders instances
        // (see `scaling`); a scenario edits its copies of the other files, starting at 90/10.
        let mesh = data.join("mesh");
        let files = match args.scenario {
            Some(s) => MeshFiles::Copy {
                autoscale: s == scenario::Scenario::Autoscale,
            },
            None => MeshFiles::Link,
        };
        let source_mesh = source_mesh.canonicalize()?;
        let orders_file = mesh_folder::prepare_mesh(&source_mesh, &mesh, files)?;
        if args.scenario.is_some() {
            scenario::write_weights(&mesh, 90, 10)?;
        }
        Ok(Self {
            operator,
            sidecar,
            own_exe,
            data,
            logs,
            mesh,
            source_mesh,
            orders_file,
            temporary,
        })
    }
}

/// Fails, naming the address and what it is for, when one of the fixed ports is taken.
pub(super) fn check_ports_free() -> Result<()> {
    for (what, addr) in topology::all_addresses() {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            bail!(
                "{addr} ({what}) is not free: {e}. Is another demo running? \
                 (`ss -ltnp 'sport = :{}'` shows what holds it.) The demo uses ports {} to {}; \
                 `--port-base N` (or WEIR_DEMO_PORT_BASE=N) moves them all to N to N+{}",
                addr.port(),
                topology::port_base(),
                topology::port_base() + topology::PORT_SPAN,
                topology::PORT_SPAN
            );
        }
    }
    Ok(())
}

/// Turns SIGINT, SIGTERM and SIGHUP into [`STOP`], then [`STOP_NOW`].
pub(super) fn watch_signals(stop: watch::Sender<u8>) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = hup.recv() => {}
                _ = int.recv() => {}
            }
            let next = if *stop.borrow() == RUNNING {
                STOP
            } else {
                STOP_NOW
            };
            if next == STOP_NOW {
                eprintln!("weir-shop demo: stopping now");
            }
            let _ = stop.send(next);
        }
    });
    Ok(())
}

/// Environment variables of the launcher that would change what a child does (`WEIR_CONFIG`
/// conflicts with `--control-plane`, `WEIR_ADMIN` …); `WEIR_LOG` is kept.
pub(super) fn clean_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if let Some(k) = key.to_str()
            && k.starts_with("WEIR_")
            && k != "WEIR_LOG"
        {
            command.env_remove(k);
        }
    }
}

/// A readiness probe: `GET addr path` must answer 200.
#[derive(Debug, Clone)]
pub(super) struct Probe {
    pub(super) child: String,
    pub(super) addr: std::net::SocketAddr,
    pub(super) path: &'static str,
}

impl Probe {
    /// Whether it answers 200 within `timeout`.
    pub(super) async fn answers(&self, client: &web::Client, timeout: Duration) -> bool {
        let answer = web::send(
            client,
            web::Method::GET,
            self.addr,
            self.path,
            &[],
            None,
            timeout,
        )
        .await;
        matches!(answer, Ok(ref a) if a.status == 200)
    }
}

/// Waits until every probe answers 200, failing with the names of those that did not (and the
/// end of their logs) after `limit`, when one of the children exits, or when `stop` is set.
pub(super) async fn wait_ready(
    children: &mut Children,
    client: &web::Client,
    probes: &[Probe],
    limit: Duration,
    stop: &watch::Receiver<u8>,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    let mut pending: Vec<Probe> = probes.to_vec();
    loop {
        if let Some((child, status)) = children.first_exited() {
            bail!(
                "the {} exited while starting ({})\n{}",
                child.name,
                super::procs::describe(status),
                child.log_tail(15)
            );
        }
        let mut still = Vec::new();
        for probe in pending {
            if !probe.answers(client, Duration::from_millis(500)).await {
                still.push(probe);
            }
        }
        pending = still;
        if pending.is_empty() {
            return Ok(());
        }
        if *stop.borrow() != RUNNING {
            bail!("interrupted while starting");
        }
        if Instant::now() >= deadline {
            let mut message = format!("not up within {} s:", limit.as_secs());
            for p in &pending {
                message.push_str(&format!(
                    "\n- the {}: GET http://{}{} does not answer 200",
                    p.child, p.addr, p.path
                ));
            }
            for p in &pending {
                if let Some(child) = children.get_mut(&p.child) {
                    message.push_str(&format!("\n{}", child.log_tail(10)));
                }
            }
            bail!(message);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts the control plane, then every app and sidecar, and waits until all are ready.
pub(super) async fn start_everything(
    layout: &Layout,
    children: &mut Children,
    client: &web::Client,
    stop: &watch::Receiver<u8>,
) -> Result<()> {
    let mut operator = Command::new(&layout.operator);
    operator
        .arg("local")
        .arg("--dir")
        .arg(&layout.mesh)
        .args(["--listen", &topology::control_plane().to_string()])
        .args(["--admin", &topology::control_plane_admin().to_string()]);
    clean_env(&mut operator);
    children.push(Child::spawn(
        "control plane",
        operator,
        &layout.logs.join("control-plane.log"),
        true,
    )?);
    let cp_probe = Probe {
        child: "control plane".into(),
        addr: topology::control_plane_admin(),
        path: "/ready",
    };
    wait_ready(children, client, &[cp_probe], Duration::from_secs(15), stop).await?;

    let mut probes = Vec::new();
    for instance in INSTANCES {
        probes.extend(spawn_instance(layout, &instance, children)?);
    }
    wait_ready(children, client, &probes, Duration::from_secs(30), stop).await
}

/// Starts one instance, its app and its sidecar, and returns the probes that say it is ready
/// (the app's `/health`, the sidecar's `/ready`).
pub(super) fn spawn_instance(
    layout: &Layout,
    instance: &Instance,
    children: &mut Children,
) -> Result<[Probe; 2]> {
    let label = instance.label();
    let slug = instance.slug();
    let mut app = Command::new(&layout.own_exe);
    app.arg(instance.service)
        .args(["--listen", &instance.app_addr().to_string()])
        .arg("--data")
        // One folder for all: each service keeps `<service>.db` there, so payments v1 and
        // v2 share one database, as two versions of one Deployment share one database, and
        // so do the orders instances the autoscaler adds.
        .arg(&layout.data)
        .args(["--outbound", &instance.outbound_addr().to_string()]);
    if let Some(variant) = instance.variant {
        app.args(["--variant", variant]);
    }
    // Both processes run without the launcher's WEIR_ variables, each logging to its own file.
    let mut start = |name: String, mut command: Command, log: String| -> Result<String> {
        clean_env(&mut command);
        children.push(Child::spawn(&name, command, &layout.logs.join(log), false)?);
        Ok(name)
    };
    let app_name = start(format!("{label} app"), app, format!("{slug}.log"))?;

    let mut sidecar = Command::new(&layout.sidecar);
    sidecar
        .args([
            "--control-plane",
            &format!("http://{}", topology::control_plane()),
        ])
        .args(["--service", instance.service])
        .args(["--namespace", topology::NAMESPACE])
        .args(["--pod", &instance.pod()])
        .args(["--outbound", &instance.outbound_addr().to_string()])
        .args(["--inbound", &instance.inbound_addr().to_string()])
        .args(["--app", &instance.app_addr().to_string()])
        .args(["--admin", &instance.admin_addr().to_string()])
        .args(["--drain-timeout", "5s"]);
    let sidecar_name = start(
        format!("{label} sidecar"),
        sidecar,
        format!("{slug}-sidecar.log"),
    )?;
    Ok([
        Probe {
            child: app_name,
            addr: instance.app_addr(),
            path: "/health",
        },
        Probe {
            child: sidecar_name,
            addr: instance.admin_addr(),
            path: "/ready",
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::{OsStr, OsString};

    #[test]
    fn the_inner_build_does_not_inherit_what_cargo_run_set() {
        let inherited = [
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION",
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "OUT_DIR",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_JOBS",
            "PATH",
            "RUSTFLAGS",
        ];
        let command = build_command(
            OsStr::new("cargo"),
            true,
            inherited.iter().map(OsString::from),
        );
        let mut removed: Vec<String> = command
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect();
        removed.sort();
        assert_eq!(
            removed,
            [
                "CARGO_BIN_NAME",
                "CARGO_CRATE_NAME",
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_PKG_NAME",
                "CARGO_PKG_VERSION",
                "CARGO_PRIMARY_PACKAGE",
                "OUT_DIR",
            ]
        );
        // The user's own settings stay: where to build, how, with which flags.
        assert_eq!(command.get_envs().filter(|(_, v)| v.is_some()).count(), 0);
        let args: Vec<&OsStr> = command.get_args().collect();
        assert_eq!(
            args,
            [
                "build",
                "-p",
                "weir-operator",
                "-p",
                "weir-sidecar",
                "--release"
            ]
        );
    }
}
