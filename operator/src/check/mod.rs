//! `weir-operator check`: diagnostics of a mesh, in the manner of `linkerd check` and
//! `istioctl analyze`. Every problem found is one [`Finding`] with a severity, the object it is
//! about, what is wrong and a hint (what to run or change); a [`Report`] groups them for a
//! terminal or prints them as JSON for scripts, and its exit code is non-zero when any finding
//! is an error.
//!
//! - [`local`]: `check --dir DIR`, the folder `weir-operator local` reads: every file parses
//!   (local mode's own [`crate::local::parse_file`]), then the same checks of the resources as in
//!   a cluster, over LocalServices.
//! - [`cluster`]: `check` against the cluster of the kubeconfig (or in-cluster config): CRDs,
//!   the operator Deployment and its Lease, the injection webhook and its certificate, injected
//!   pods and their proxies, then the resources.
//! - [`resources`]: the checks both modes share. Nothing is judged twice: a resource's
//!   validity, its target, its subsets' endpoints and conflicts are what the translation
//!   ([`crate::translate::translate`]) decides, turned into findings with hints; an
//!   Autoscaler's spec is judged by the autoscaler's own parser.
//! - [`tls`]: whether a caBundle verifies a serving certificate for a name (rustls's WebPKI
//!   verifier, as the API server's TLS client would).
//!
//! The report is hand-written text rather than a table crate: it is a few dozen lines, and its
//! only subtlety (colour only on a terminal, `NO_COLOR` honoured) is one `if`.

pub mod cluster;
pub mod local;
pub mod resources;
pub mod tls;

use serde::Serialize;
use std::fmt::Write as _;

/// How bad a finding is. Errors make `check` exit non-zero; warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    fn label(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warning => "warning",
        }
    }
}

/// What part of the mesh a finding is about; the report prints them in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Group {
    /// Reaching the Kubernetes API at all.
    Cluster,
    /// The files of `--dir`.
    Files,
    Crds,
    Operator,
    Webhook,
    /// Pods that should carry the sidecar.
    Injection,
    /// Sidecars and the operator they talk to.
    Proxies,
    /// TrafficSplits and ResiliencePolicies.
    Resources,
    Autoscalers,
}

impl Group {
    pub fn title(self) -> &'static str {
        match self {
            Self::Cluster => "Kubernetes API",
            Self::Files => "Files",
            Self::Crds => "CRDs",
            Self::Operator => "Operator",
            Self::Webhook => "Injection webhook",
            Self::Injection => "Injected pods",
            Self::Proxies => "Proxies",
            Self::Resources => "TrafficSplits and ResiliencePolicies",
            Self::Autoscalers => "Autoscalers",
        }
    }
}

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub severity: Severity,
    pub group: Group,
    /// A stable CamelCase name of the problem, for scripts (`TargetNotFound`, `CrdStale`...).
    pub code: &'static str,
    /// The object it is about: `TrafficSplit shop/payments`, `file splits.yaml`...
    pub subject: String,
    /// What is wrong.
    pub message: String,
    /// What to run or change.
    pub hint: String,
}

impl Finding {
    pub fn new(
        severity: Severity,
        group: Group,
        code: &'static str,
        subject: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self {
            severity,
            group,
            code,
            subject: subject.into(),
            message: message.into(),
            hint: hint.into(),
        }
    }
}

/// Everything one run found, and which groups it looked at (so a clean run can say what it
/// checked).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The groups looked at, in order.
    pub checked: Vec<Group>,
    /// Sorted by group, then severity (errors first), then subject.
    pub findings: Vec<Finding>,
}

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Grouped lines for people.
    Text,
    /// One JSON object: `{"checked": [...], "findings": [...], "errors": n, "warnings": n}`.
    Json,
}

impl Report {
    pub fn new(mut checked: Vec<Group>, mut findings: Vec<Finding>) -> Self {
        for finding in &findings {
            checked.push(finding.group);
        }
        checked.sort();
        checked.dedup();
        findings.sort_by(|a, b| {
            (a.group, a.severity, &a.subject, a.code, &a.message)
                .cmp(&(b.group, b.severity, &b.subject, b.code, &b.message))
        });
        findings.dedup();
        Self { checked, findings }
    }

    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }

    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning)
    }

    fn count(&self, severity: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == severity)
            .count()
    }

    /// 0 when no finding is an error, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.errors() > 0)
    }

    /// The JSON form (`--output json`).
    pub fn json(&self) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            checked: &'a [Group],
            findings: &'a [Finding],
            errors: usize,
            warnings: usize,
        }
        let out = Out {
            checked: &self.checked,
            findings: &self.findings,
            errors: self.errors(),
            warnings: self.warnings(),
        };
        let mut text = serde_json::to_string_pretty(&out).unwrap_or_default();
        text.push('\n');
        text
    }

    /// The text form: per group a title line with its verdict, then its findings, each with
    /// its hint; a summary line last. `colour` adds ANSI colours (only for a terminal).
    pub fn text(&self, colour: bool) -> String {
        let paint = |code: &str, text: &str| {
            if colour {
                format!("\x1b[{code}m{text}\x1b[0m")
            } else {
                text.to_owned()
            }
        };
        let mut out = String::new();
        for group in &self.checked {
            let found: Vec<&Finding> = self.findings.iter().filter(|f| f.group == *group).collect();
            let errors = found
                .iter()
                .filter(|f| f.severity == Severity::Error)
                .count();
            let verdict = match (errors, found.len() - errors) {
                (0, 0) => paint("32", "ok"),
                (0, w) => paint("33", &plural(w, "warning")),
                (e, 0) => paint("31", &plural(e, "error")),
                (e, w) => paint(
                    "31",
                    &format!("{}, {}", plural(e, "error"), plural(w, "warning")),
                ),
            };
            let _ = writeln!(out, "{}: {verdict}", group.title());
            for finding in found {
                let label = match finding.severity {
                    Severity::Error => paint("31", finding.severity.label()),
                    Severity::Warning => paint("33", finding.severity.label()),
                };
                let _ = writeln!(out, "  {label}: {}: {}", finding.subject, finding.message);
                for (i, line) in finding.hint.lines().enumerate() {
                    let lead = if i == 0 { "hint:" } else { "     " };
                    let _ = writeln!(out, "    {lead} {line}");
                }
            }
        }
        let summary = match (self.errors(), self.warnings()) {
            (0, 0) => paint("32", "no problems found"),
            (0, w) => paint("33", &format!("{}, no errors", plural(w, "warning"))),
            (e, w) => paint(
                "31",
                &format!("{}, {}", plural(e, "error"), plural(w, "warning")),
            ),
        };
        let _ = writeln!(out, "\n{summary}");
        out
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Whether the text report may use colours: stdout is a terminal and `NO_COLOR` is unset.
pub fn colour_for_stdout() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_groups_findings_with_hints_and_colours_only_when_asked() {
        let report = Report::new(
            vec![Group::Crds, Group::Resources],
            vec![
                Finding::new(
                    Severity::Warning,
                    Group::Resources,
                    "SubsetEmpty",
                    "TrafficSplit shop/payments",
                    "backend v3 selects no pod",
                    "label the pods, or remove the backend",
                ),
                Finding::new(
                    Severity::Error,
                    Group::Resources,
                    "TargetNotFound",
                    "ResiliencePolicy shop/orders",
                    "Service orders does not exist",
                    "create it\nor fix targetRef",
                ),
            ],
        );
        assert_eq!(report.exit_code(), 1);
        let text = report.text(false);
        assert_eq!(
            text,
            "CRDs: ok\n\
             TrafficSplits and ResiliencePolicies: 1 error, 1 warning\n  \
             error: ResiliencePolicy shop/orders: Service orders does not exist\n    \
             hint: create it\n          or fix targetRef\n  \
             warning: TrafficSplit shop/payments: backend v3 selects no pod\n    \
             hint: label the pods, or remove the backend\n\
             \n1 error, 1 warning\n"
        );
        assert!(!text.contains('\x1b'));
        assert!(report.text(true).contains("\x1b[31merror\x1b[0m"));
        let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(json["errors"], 1);
        assert_eq!(json["findings"][0]["code"], "TargetNotFound");
        assert_eq!(json["findings"][0]["severity"], "error");
        assert_eq!(json["checked"], serde_json::json!(["crds", "resources"]));
    }

    #[test]
    fn warnings_alone_exit_zero_and_a_clean_report_says_so() {
        let clean = Report::new(vec![Group::Files], Vec::new());
        assert_eq!(clean.exit_code(), 0);
        assert_eq!(clean.text(false), "Files: ok\n\nno problems found\n");
        let warned = Report::new(
            vec![],
            vec![Finding::new(
                Severity::Warning,
                Group::Files,
                "X",
                "s",
                "m",
                "h",
            )],
        );
        assert_eq!(warned.exit_code(), 0);
        assert_eq!(warned.checked, [Group::Files]);
    }
}
