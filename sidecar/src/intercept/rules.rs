//! The interception rule set as a pure function of the settings: input for
//! `iptables-restore --noflush`, tested as text.
//!
//! Everything lives in the `nat` table, in two chains of our own reached by one jump each, so that
//! installing again replaces exactly ours and removing touches nothing of anyone else's:
//! - `WEIR_INBOUND`, from `PREROUTING` (connections arriving from outside the pod): the admin port
//!   and the excluded ports pass, everything else goes to the inbound listener;
//! - `WEIR_OUTPUT`, from `OUTPUT` (connections the pod opens): the proxy's own (matched by uid,
//!   or its upstream connections would loop back into it), loopback traffic (the app's calls to
//!   itself and to the sidecar's listeners), the excluded CIDRs and ports pass; everything else
//!   goes to the outbound listener.
//!
//! Only TCP over IPv4 is redirected: the listeners read the original destination with
//! `SO_ORIGINAL_DST`, and IPv6 traffic flows as it would without Weir.

/// Every chain we create starts with this, and nothing else may.
pub const CHAIN_PREFIX: &str = "WEIR_";
pub const INBOUND_CHAIN: &str = "WEIR_INBOUND";
pub const OUTPUT_CHAIN: &str = "WEIR_OUTPUT";

/// What to intercept and what to leave alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interception {
    /// The uid the proxy runs as: its connections are never redirected.
    pub proxy_uid: u32,
    /// Where redirected inbound connections go (the inbound listener's port).
    pub inbound_port: u16,
    /// Where redirected outbound connections go (the outbound listener's port).
    pub outbound_port: u16,
    /// Never redirected inbound, so that probes and scrapes reach the admin listener.
    pub admin_port: u16,
    /// More inbound ports that reach the app directly (ssh, a debug port …).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports that bypass the proxy (a database the proxy cannot help with).
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destination networks that bypass the proxy.
    pub exclude_outbound_cidrs: Vec<Cidr>,
}

impl Interception {
    /// Settings that would make a loop or redirect one listener onto another.
    pub fn check(&self) -> Result<(), String> {
        let ports = [
            ("--inbound-port", self.inbound_port),
            ("--outbound-port", self.outbound_port),
            ("--admin-port", self.admin_port),
        ];
        for (i, (name, port)) in ports.iter().enumerate() {
            if *port == 0 {
                return Err(format!("{name} must not be 0"));
            }
            if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
                return Err(format!("{name} and {other} are both {port}"));
            }
        }
        if self.exclude_outbound_ports.contains(&0) || self.exclude_inbound_ports.contains(&0) {
            return Err("port 0 cannot be excluded".into());
        }
        Ok(())
    }

    /// The `iptables-restore --noflush` input that installs the rules, given the nat table as
    /// `iptables-save -t nat` prints it now: jumps to our chains are deleted first so that
    /// installing twice leaves one set, and chains of ours that this version no longer uses go.
    pub fn install_script(&self, current: &str) -> String {
        let existing = Existing::parse(current);
        let mut s = String::from("*nat\n");
        existing.delete_jumps(&mut s);
        // Declaring a chain creates it, or flushes it when it exists.
        for chain in [INBOUND_CHAIN, OUTPUT_CHAIN] {
            s.push_str(&format!(":{chain} - [0:0]\n"));
        }
        let stale: Vec<&str> = existing
            .chains
            .iter()
            .map(String::as_str)
            .filter(|c| ![INBOUND_CHAIN, OUTPUT_CHAIN].contains(c))
            .collect();
        delete_chains(&mut s, &stale);

        let rule = |s: &mut String, chain: &str, spec: &str| {
            s.push_str(&format!("-A {chain} {spec}\n"));
        };
        // Each port once, whoever named it twice (the admin port is always left alone).
        for port in unique(
            std::iter::once(self.admin_port).chain(self.exclude_inbound_ports.iter().copied()),
        ) {
            rule(
                &mut s,
                INBOUND_CHAIN,
                &format!("-p tcp -m tcp --dport {port} -j RETURN"),
            );
        }
        rule(
            &mut s,
            INBOUND_CHAIN,
            &format!("-p tcp -j REDIRECT --to-ports {}", self.inbound_port),
        );
        rule(
            &mut s,
            OUTPUT_CHAIN,
            &format!("-m owner --uid-owner {} -j RETURN", self.proxy_uid),
        );
        rule(&mut s, OUTPUT_CHAIN, "-o lo -j RETURN");
        for cidr in unique(self.exclude_outbound_cidrs.iter().map(Cidr::to_string)) {
            rule(&mut s, OUTPUT_CHAIN, &format!("-d {cidr} -j RETURN"));
        }
        for port in unique(self.exclude_outbound_ports.iter().copied()) {
            rule(
                &mut s,
                OUTPUT_CHAIN,
                &format!("-p tcp -m tcp --dport {port} -j RETURN"),
            );
        }
        rule(
            &mut s,
            OUTPUT_CHAIN,
            &format!("-p tcp -j REDIRECT --to-ports {}", self.outbound_port),
        );
        // The jumps come last: until the transaction commits nothing is redirected anyway, and
        // read top to bottom the script says what the chains do before it says who uses them.
        rule(&mut s, "PREROUTING", &format!("-p tcp -j {INBOUND_CHAIN}"));
        rule(&mut s, "OUTPUT", &format!("-p tcp -j {OUTPUT_CHAIN}"));
        s.push_str("COMMIT\n");
        s
    }
}

/// The input that removes every rule and chain of ours from the nat table printed in
/// `current`, or `None` when there is nothing of ours.
pub fn remove_script(current: &str) -> Option<String> {
    let existing = Existing::parse(current);
    if existing.chains.is_empty() && existing.jumps.is_empty() {
        return None;
    }
    let mut s = String::from("*nat\n");
    existing.delete_jumps(&mut s);
    let chains: Vec<&str> = existing.chains.iter().map(String::as_str).collect();
    delete_chains(&mut s, &chains);
    s.push_str("COMMIT\n");
    Some(s)
}

/// Whether `current` (an `iptables-save` listing) holds chains or jumps of ours.
pub fn has_ours(current: &str) -> bool {
    let existing = Existing::parse(current);
    !existing.chains.is_empty() || !existing.jumps.is_empty()
}

/// How many rules `current` holds: a back end with rules is the one the node uses.
pub fn rule_count(current: &str) -> usize {
    current.lines().filter(|l| l.starts_with("-A ")).count()
}

/// The items in their first order, each once: a rule listed twice is one rule too many to read
/// and to debug.
fn unique<T: PartialEq>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

fn delete_chains(s: &mut String, chains: &[&str]) {
    // Flush all before deleting any: a chain cannot go while another of ours still jumps to it.
    for chain in chains {
        s.push_str(&format!("-F {chain}\n"));
    }
    for chain in chains {
        s.push_str(&format!("-X {chain}\n"));
    }
}

/// What of ours a nat table listing holds.
#[derive(Debug, Default)]
struct Existing {
    /// Chains named `WEIR_*`.
    chains: Vec<String>,
    /// Rules in other chains that jump to ours, as `CHAIN SPEC` (what `-A` was followed by).
    jumps: Vec<String>,
}

impl Existing {
    fn parse(listing: &str) -> Self {
        let mut found = Self::default();
        let mut in_nat = false;
        for line in listing.lines().map(str::trim) {
            if let Some(table) = line.strip_prefix('*') {
                in_nat = table == "nat";
            } else if !in_nat {
                continue;
            } else if let Some(declared) = line.strip_prefix(':') {
                let name = declared.split_whitespace().next().unwrap_or_default();
                if name.starts_with(CHAIN_PREFIX) {
                    found.chains.push(name.to_owned());
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let mut words = rule.split_whitespace();
                let chain = words.next().unwrap_or_default();
                let mut words = words.peekable();
                let mut to_ours = false;
                while let Some(word) = words.next() {
                    if matches!(word, "-j" | "-g" | "--jump" | "--goto")
                        && words.peek().is_some_and(|t| t.starts_with(CHAIN_PREFIX))
                    {
                        to_ours = true;
                    }
                }
                if to_ours && !chain.starts_with(CHAIN_PREFIX) {
                    found.jumps.push(rule.to_owned());
                }
            }
        }
        found
    }

    fn delete_jumps(&self, s: &mut String) {
        for jump in &self.jumps {
            s.push_str(&format!("-D {jump}\n"));
        }
    }
}

/// An IPv4 network; the parser is shared with the injection webhook.
pub use weir_proxy_api::Ipv4Network as Cidr;

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Interception {
        Interception {
            proxy_uid: 1337,
            inbound_port: 15006,
            outbound_port: 15001,
            admin_port: 15020,
            exclude_inbound_ports: vec![22],
            exclude_outbound_ports: vec![5432, 6379],
            exclude_outbound_cidrs: vec!["169.254.169.254".parse().unwrap()],
        }
    }

    #[test]
    fn a_fresh_install_is_exactly_this() {
        assert_eq!(
            settings().install_script(""),
            "\
*nat
:WEIR_INBOUND - [0:0]
:WEIR_OUTPUT - [0:0]
-A WEIR_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A WEIR_INBOUND -p tcp -m tcp --dport 22 -j RETURN
-A WEIR_INBOUND -p tcp -j REDIRECT --to-ports 15006
-A WEIR_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A WEIR_OUTPUT -o lo -j RETURN
-A WEIR_OUTPUT -d 169.254.169.254/32 -j RETURN
-A WEIR_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN
-A WEIR_OUTPUT -p tcp -m tcp --dport 6379 -j RETURN
-A WEIR_OUTPUT -p tcp -j REDIRECT --to-ports 15001
-A PREROUTING -p tcp -j WEIR_INBOUND
-A OUTPUT -p tcp -j WEIR_OUTPUT
COMMIT
"
        );
    }

    /// What `iptables-save -t nat` prints after an install, with someone else's rule beside ours
    /// and a chain an older version of ours left.
    const INSTALLED: &str = "\
# Generated by iptables-nft-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:WEIR_INBOUND - [0:0]
:WEIR_OUTPUT - [0:0]
:WEIR_OLD - [0:0]
-A PREROUTING -p tcp -j WEIR_INBOUND
-A OUTPUT -j KUBE-SERVICES
-A OUTPUT -p tcp -j WEIR_OUTPUT
-A WEIR_INBOUND -p tcp -j REDIRECT --to-ports 15006
-A WEIR_OUTPUT -j WEIR_OLD
-A WEIR_OLD -p tcp -j REDIRECT --to-ports 15001
COMMIT
# Completed
";

    #[test]
    fn installing_again_replaces_ours_only() {
        let script = settings().install_script(INSTALLED);
        let head: Vec<&str> = script.lines().take(8).collect();
        assert_eq!(
            head,
            [
                "*nat",
                "-D PREROUTING -p tcp -j WEIR_INBOUND",
                "-D OUTPUT -p tcp -j WEIR_OUTPUT",
                ":WEIR_INBOUND - [0:0]",
                ":WEIR_OUTPUT - [0:0]",
                "-F WEIR_OLD",
                "-X WEIR_OLD",
                "-A WEIR_INBOUND -p tcp -m tcp --dport 15020 -j RETURN",
            ]
        );
        assert!(!script.contains("KUBE"), "{script}");
        assert_eq!(script.matches("-A PREROUTING").count(), 1);
    }

    #[test]
    fn removal_deletes_exactly_ours() {
        assert_eq!(
            remove_script(INSTALLED).unwrap(),
            "\
*nat
-D PREROUTING -p tcp -j WEIR_INBOUND
-D OUTPUT -p tcp -j WEIR_OUTPUT
-F WEIR_INBOUND
-F WEIR_OUTPUT
-F WEIR_OLD
-X WEIR_INBOUND
-X WEIR_OUTPUT
-X WEIR_OLD
COMMIT
"
        );
        let clean = "*nat\n:PREROUTING ACCEPT [0:0]\n-A OUTPUT -j KUBE-SERVICES\nCOMMIT\n";
        assert_eq!(remove_script(clean), None);
        assert!(has_ours(INSTALLED) && !has_ours(clean));
        assert_eq!(rule_count(INSTALLED), 6);
    }

    #[test]
    fn each_rule_appears_once_and_the_proxy_uid_is_1337() {
        let mut twice = settings();
        // The admin port named again as an excluded port (as the webhook once did), and
        // repeated exclusions.
        twice.exclude_inbound_ports = vec![15020, 22, 22];
        twice.exclude_outbound_ports = vec![5432, 6379, 5432];
        twice
            .exclude_outbound_cidrs
            .push("169.254.169.254/32".parse().unwrap());
        let script = twice.install_script("");
        assert_eq!(script, settings().install_script(""));
        let rules: Vec<&str> = script.lines().filter(|l| l.starts_with("-A ")).collect();
        for rule in &rules {
            assert_eq!(rules.iter().filter(|r| *r == rule).count(), 1, "{rule}");
        }
        assert!(script.contains("-m owner --uid-owner 1337 -j RETURN"));
        // The init's own default is the proxy's uid.
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            init: super::super::init::InitArgs,
        }
        let cli = Cli::try_parse_from(["init"]).unwrap();
        assert_eq!(cli.init.interception().proxy_uid, 1337);
        assert_eq!(cli.init.interception().install_script(""), {
            let mut defaults = settings();
            defaults.exclude_inbound_ports.clear();
            defaults.exclude_outbound_ports.clear();
            defaults.exclude_outbound_cidrs.clear();
            defaults.install_script("")
        });
    }

    #[test]
    fn other_tables_are_not_read() {
        let filter = "*filter\n:WEIR_X - [0:0]\n-A INPUT -j WEIR_X\nCOMMIT\n";
        assert_eq!(remove_script(filter), None);
    }

    #[test]
    fn settings_that_loop_are_refused() {
        let mut s = settings();
        s.outbound_port = 15006;
        assert!(s.check().unwrap_err().contains("--inbound-port"));
        let mut s = settings();
        s.exclude_outbound_ports.push(0);
        assert!(s.check().is_err());
        assert_eq!(settings().check(), Ok(()));
    }
}
