//! `weir-sidecar init`: installs the interception rules (or, with `--remove`, takes them out).
//! The only step that needs NET_ADMIN; in a pod it runs as an init container before the app and
//! the proxy start, and the proxy itself needs no privilege.
//!
//! The rules are applied in one `iptables-restore --noflush` transaction, with whichever iptables
//! back end the machine uses: nftables (`iptables-nft-restore`) or the legacy xtables
//! (`iptables-legacy-restore`). `auto` picks the one that already holds our rules, else the one
//! holding more rules (what the node's network set up), else nft when it works, else legacy.
//!
//! Looking never creates anything: each back end is read with a bare `iptables-*-save`, which
//! lists the tables that exist, not with `-t nat`, which for the legacy back end instantiates the
//! nat table in the pod's namespace — a stray legacy table beside nft's that makes `iptables-nft`
//! warn about legacy tables and confuses whoever debugs the pod. So an install touches one back
//! end, and `--remove` takes out every chain and jump of ours from each back end that has any.

use super::rules::{self, Cidr, Interception};
use std::io::Write;
use std::process::{Command, Stdio};

/// `weir-sidecar init`'s command line. Every flag has a `WEIR_*` environment equivalent.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// The uid the proxy runs as: its own connections are never redirected (else they would loop
    /// back into it).
    #[arg(long, env = "WEIR_PROXY_UID", default_value_t = 1337)]
    pub proxy_uid: u32,
    /// The inbound listener's port: where calls to the app are redirected.
    #[arg(long, env = "WEIR_INBOUND_PORT", default_value_t = 15006)]
    pub inbound_port: u16,
    /// The outbound listener's port: where the app's calls out are redirected.
    #[arg(long, env = "WEIR_OUTBOUND_PORT", default_value_t = 15001)]
    pub outbound_port: u16,
    /// The admin port: never redirected, so probes and scrapes reach the admin listener.
    #[arg(long, env = "WEIR_ADMIN_PORT", default_value_t = 15020)]
    pub admin_port: u16,
    /// More inbound ports that reach the app directly, comma-separated.
    #[arg(long, env = "WEIR_EXCLUDE_INBOUND_PORTS", value_delimiter = ',')]
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports that bypass the proxy, comma-separated.
    #[arg(long, env = "WEIR_EXCLUDE_OUTBOUND_PORTS", value_delimiter = ',')]
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destination networks (IPv4 CIDRs) that bypass the proxy, comma-separated.
    #[arg(long, env = "WEIR_EXCLUDE_OUTBOUND_CIDRS", value_delimiter = ',')]
    pub exclude_outbound_cidrs: Vec<Cidr>,
    /// Which iptables to use.
    #[arg(long, env = "WEIR_IPTABLES_BACKEND", value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Remove Weir's rules and chains instead of installing them.
    #[arg(long)]
    pub remove: bool,
    /// Print the rules a clean install would apply, and change nothing.
    #[arg(long, conflicts_with = "remove")]
    pub dry_run: bool,
}

impl InitArgs {
    pub fn interception(&self) -> Interception {
        Interception {
            proxy_uid: self.proxy_uid,
            inbound_port: self.inbound_port,
            outbound_port: self.outbound_port,
            admin_port: self.admin_port,
            exclude_inbound_ports: self.exclude_inbound_ports.clone(),
            exclude_outbound_ports: self.exclude_outbound_ports.clone(),
            exclude_outbound_cidrs: self.exclude_outbound_cidrs.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    Auto,
    Nft,
    Legacy,
}

/// One iptables implementation, by the commands that read and write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
    /// Plain `iptables-restore`, for systems without the `-nft`/`-legacy` names.
    Plain,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Nft => "nft",
            Self::Legacy => "legacy",
            Self::Plain => "iptables",
        }
    }

    fn save_command(self) -> &'static str {
        match self {
            Self::Nft => "iptables-nft-save",
            Self::Legacy => "iptables-legacy-save",
            Self::Plain => "iptables-save",
        }
    }

    fn restore_command(self) -> &'static str {
        match self {
            Self::Nft => "iptables-nft-restore",
            Self::Legacy => "iptables-legacy-restore",
            Self::Plain => "iptables-restore",
        }
    }

    /// Every table this back end holds, as `iptables-save` prints them (without naming a table,
    /// so that reading creates none; see the module doc).
    pub fn read(self) -> Result<String, InitError> {
        run_command(self.save_command(), &[], None)
    }

    /// Applies `script` in one `iptables-restore --noflush` transaction (rules of others stay).
    pub fn apply(self, script: &str) -> Result<(), InitError> {
        let command = self.restore_command();
        // Wait up to 5 s for the xtables lock when something else is changing rules.
        match run_command(command, &["--noflush", "-w", "5"], Some(script)) {
            Ok(_) => Ok(()),
            Err(e @ InitError::Failed { .. }) => {
                tracing::debug!(command, script, "iptables-restore refused this input");
                Err(e)
            }
            Err(e) => Err(e),
        }
    }
}

/// Runs `command` with `args` and `input` on its standard input (none when `None`), and returns
/// what it printed; an exit other than success is [`InitError::Failed`] with its stderr. The one
/// way both the `-save` and the `-restore` commands are run.
fn run_command(
    command: &'static str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, InitError> {
    let cannot_run = |source| InitError::Run { command, source };
    let stdin = match input {
        Some(_) => Stdio::piped(),
        None => Stdio::null(),
    };
    let mut child = Command::new(command)
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(cannot_run)?;
    // A write error means the command already exited; its status and stderr say why.
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        let _ = stdin.write_all(input.as_bytes());
    }
    let output = child.wait_with_output().map_err(cannot_run)?;
    if !output.status.success() {
        return Err(InitError::Failed {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Why `init` failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("invalid settings: {0}")]
    Settings(String),
    #[error("cannot run {command}: {source} (is the iptables package installed?)")]
    Run {
        command: &'static str,
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: &'static str,
        status: String,
        stderr: String,
    },
    #[error("no working iptables found: {0}")]
    NoBackend(String),
}

/// Runs `weir-sidecar init` and says what it did.
pub fn run(args: &InitArgs) -> Result<String, InitError> {
    let interception = args.interception();
    interception.check().map_err(InitError::Settings)?;
    if args.dry_run {
        return Ok(interception.install_script(""));
    }
    let tables = read_tables(args.backend)?;
    if args.remove {
        let mut removed = Vec::new();
        for (backend, current) in &tables {
            if let Some(script) = rules::remove_script(current) {
                backend.apply(&script)?;
                removed.push(backend.name());
            }
        }
        return Ok(if removed.is_empty() {
            "no Weir interception rules were installed; nothing to remove".to_owned()
        } else {
            format!(
                "removed Weir's interception rules ({} back end)",
                removed.join(" and ")
            )
        });
    }
    let (backend, current) = choose(&tables).ok_or_else(|| {
        InitError::NoBackend("none of iptables-nft, iptables-legacy, iptables answered".into())
    })?;
    backend.apply(&interception.install_script(current))?;
    fn list<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
        let items: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
        if items.is_empty() {
            "none".to_owned()
        } else {
            items.join(",")
        }
    }
    let i = &interception;
    Ok(format!(
        "installed Weir's interception rules ({} back end): inbound TCP to port {}, outbound TCP \
         to port {}; left alone: uid {}, inbound ports {}, outbound ports {}, outbound networks {}",
        backend.name(),
        i.inbound_port,
        i.outbound_port,
        i.proxy_uid,
        list(std::iter::once(&i.admin_port).chain(&i.exclude_inbound_ports)),
        list(&i.exclude_outbound_ports),
        list(&i.exclude_outbound_cidrs),
    ))
}

/// The tables of each usable back end the choice allows, in order of preference.
fn read_tables(choice: BackendChoice) -> Result<Vec<(Backend, String)>, InitError> {
    let explicit = |backend: Backend| backend.read().map(|t| vec![(backend, t)]);
    match choice {
        BackendChoice::Nft => explicit(Backend::Nft),
        BackendChoice::Legacy => explicit(Backend::Legacy),
        BackendChoice::Auto => {
            let mut tables = Vec::new();
            let mut errors = Vec::new();
            for backend in [Backend::Nft, Backend::Legacy] {
                match backend.read() {
                    Ok(table) => tables.push((backend, table)),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            if tables.is_empty() {
                match Backend::Plain.read() {
                    Ok(table) => tables.push((Backend::Plain, table)),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            if tables.is_empty() {
                return Err(InitError::NoBackend(errors.join("; ")));
            }
            Ok(tables)
        }
    }
}

/// Where to install, given each usable back end's nat table (in order of preference): where our
/// rules already are, else where the most rules are (the node's network set them up there and
/// mixing back ends confuses whoever debugs it), else the first.
fn choose(tables: &[(Backend, String)]) -> Option<(Backend, &str)> {
    let pick = tables
        .iter()
        .find(|(_, t)| rules::has_ours(t))
        .or_else(|| {
            tables
                .iter()
                .rev()
                .max_by_key(|(_, t)| rules::rule_count(t))
        })?;
    Some((pick.0, pick.1.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";

    #[test]
    fn commands_get_their_input_and_fail_with_their_stderr() {
        assert_eq!(
            run_command("cat", &[], Some("*nat\nCOMMIT\n")).unwrap(),
            "*nat\nCOMMIT\n"
        );
        // Without input, stdin is empty: `cat` ends at once.
        assert_eq!(run_command("cat", &[], None).unwrap(), "");
        match run_command("sh", &["-c", "echo refused >&2; exit 2"], Some("x")) {
            Err(InitError::Failed {
                command, stderr, ..
            }) => assert_eq!((command, stderr.as_str()), ("sh", "refused")),
            other => panic!("{other:?}"),
        }
        // A command that exits without reading its input is judged by its status alone.
        assert_eq!(
            run_command("true", &[], Some(&"x".repeat(1 << 20))).unwrap(),
            ""
        );
        assert!(matches!(
            run_command("weir-no-such-iptables", &[], None),
            Err(InitError::Run { .. })
        ));
    }

    #[test]
    fn auto_prefers_ours_then_the_busier_then_nft() {
        let ours = "*nat\n:WEIR_OUTPUT - [0:0]\n-A OUTPUT -p tcp -j WEIR_OUTPUT\nCOMMIT\n";
        let busy = "*nat\n-A OUTPUT -j KUBE-SERVICES\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n";
        let t = |a: &str, b: &str| {
            vec![
                (Backend::Nft, a.to_owned()),
                (Backend::Legacy, b.to_owned()),
            ]
        };
        assert_eq!(choose(&t(EMPTY, EMPTY)).unwrap().0, Backend::Nft);
        assert_eq!(choose(&t(EMPTY, busy)).unwrap().0, Backend::Legacy);
        assert_eq!(choose(&t(busy, ours)).unwrap().0, Backend::Legacy);
        assert_eq!(choose(&t(ours, busy)).unwrap().0, Backend::Nft);
        assert_eq!(choose(&[]), None);
    }
}
