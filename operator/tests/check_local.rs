//! `weir-operator check --dir`: each finding over a temporary folder, a clean folder reporting
//! nothing, and the binary's exit code and output forms.

use std::path::Path;
use std::process::Command;
use std::sync::LazyLock;
use weir_operator::check::local::check;
use weir_operator::check::{Group, Report, Severity};
use weir_testkit::local_service;

/// payments (subsets v1 and v2) and orders.
static SERVICES: LazyLock<String> = LazyLock::new(|| {
    let payments = local_service(
        "shop",
        "payments",
        Some(8080),
        [
            "address: 127.0.0.1:9101, labels: {version: v1}",
            "address: 127.0.0.1:9102, labels: {version: v2}",
        ],
    );
    let orders = local_service("shop", "orders", Some(8080), ["address: 127.0.0.1:9201"]);
    format!("{payments}---\n{orders}")
});

const SPLIT: &str = "\
apiVersion: weir.dev/v1alpha1
kind: TrafficSplit
metadata: {name: payments, namespace: shop}
spec:
  service: payments
  backends:
    - {subset: v1, selector: {version: v1}, weight: 90}
    - {subset: v2, selector: {version: v2}, weight: 10}
";

const POLICY: &str = "\
apiVersion: weir.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: payments, namespace: shop}
spec:
  targetRef: {kind: Service, name: payments}
  retries: {attempts: 2}
";

const AUTOSCALER: &str = "\
apiVersion: weir.dev/v1alpha1
kind: Autoscaler
metadata: {name: orders, namespace: shop}
spec:
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: orders}
  minReplicas: 1
  maxReplicas: 4
  metrics: [{type: Concurrency, target: 10}]
";

/// A folder holding the clean mesh plus `extra` files.
fn folder(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("services.yaml", SERVICES.as_str()),
        ("split.yaml", SPLIT),
        ("policy.yaml", POLICY),
        ("autoscaler.yml", AUTOSCALER),
    ]
    .iter()
    .chain(extra)
    {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

/// The (code, subject) of every finding.
fn codes(report: &Report) -> Vec<(&'static str, String)> {
    report
        .findings
        .iter()
        .map(|f| (f.code, f.subject.clone()))
        .collect()
}

/// Asserts that `text` (a finding's message or hint) starts withs `part`.
fn starts(text: &str, part: &str) {
    assert!(
        text.starts_with(part),
        "{text:?} does not starts with {part:?}"
    );
}

/// Asserts that `text` (a finding's message or hint) says `part`.
fn says(text: &str, part: &str) {
    assert!(text.contains(part), "{part:?} not in {text:?}");
}

/// The one finding of checking the clean mesh plus `extra` files, which must have `code`.
fn only_in(extra: &[(&str, &str)], code: &str) -> weir_operator::check::Finding {
    only(&check(folder(extra).path()), code)
}

fn only(report: &Report, code: &str) -> weir_operator::check::Finding {
    let found: Vec<_> = report.findings.iter().filter(|f| f.code == code).collect();
    assert_eq!(found.len(), 1, "{:#?}", report.findings);
    assert_eq!(report.findings.len(), 1, "{:#?}", report.findings);
    found[0].clone()
}

#[test]
fn a_clean_folder_reports_nothing() {
    let dir = folder(&[]);
    let report = check(dir.path());
    assert_eq!(report.findings, [], "{}", report.text(false));
    assert_eq!(report.exit_code(), 0);
    assert_eq!(
        report.checked,
        [Group::Files, Group::Resources, Group::Autoscalers]
    );
}

#[test]
fn the_demo_shops_mesh_folder_is_clean() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop/mesh");
    let report = check(&dir);
    assert_eq!(report.findings, [], "{}", report.text(false));
}

#[test]
fn a_file_that_does_not_parse_names_file_document_and_field() {
    let bad = SPLIT.replace("weight: 10", "weight: ten");
    let dir = folder(&[("nested/bad.yaml", &format!("{POLICY}---\n{bad}"))]);
    let report = check(dir.path());
    let finding = report
        .findings
        .iter()
        .find(|f| f.code == "FileInvalid")
        .expect("FileInvalid");
    assert_eq!(finding.subject, "file nested/bad.yaml");
    starts(
        &finding.message,
        "document 2: field `spec.backends[1].weight`",
    );
    assert_eq!(finding.severity, Severity::Error);
    assert_eq!(report.exit_code(), 1);
    // Its other document is not loaded: local mode takes a file all or nothing.
    assert_eq!(
        codes(&report),
        [("FileInvalid", "file nested/bad.yaml".into())]
    );
}

#[test]
fn unknown_fields_kinds_and_missing_names_are_refused() {
    for (text, field) in [
        (
            POLICY.replace("attempts: 2", "attempts: 2, attemps: 3"),
            "attemps`: unknown field",
        ),
        (SPLIT.replace("TrafficSplit", "TrafficSplat"), "kind"),
        (SPLIT.replace("name: payments, ", ""), "metadata.name"),
    ] {
        let finding = only_in(&[("bad.yaml", &text)], "FileInvalid");
        assert!(
            finding.message.contains(field),
            "{field}: {}",
            finding.message
        );
    }
}

/// One edit of the clean mesh, and the one finding it must make.
struct Edit {
    case: &'static str,
    file: &'static str,
    text: &'static str,
    from: &'static str,
    to: &'static str,
    code: &'static str,
    /// Its group, when the case is about it.
    group: Option<Group>,
    subject: &'static str,
    /// What its message says (empty: not looked at).
    message: &'static str,
    /// What its hint says (empty: not looked at).
    hint: &'static str,
}

/// Out-of-bounds values (refused by the translation's validation), missing targets and bad
/// endpoint addresses: each edit makes its one finding, named by case when it does not.
#[test]
fn each_broken_resource_is_the_one_finding() {
    for edit in [
        Edit {
            case: "a value out of bounds",
            file: "policy.yaml",
            text: POLICY,
            from: "attempts: 2",
            to: "attempts: 11",
            code: "Invalid",
            group: None,
            subject: "ResiliencePolicy shop/payments",
            message: "spec.retries.attempts",
            hint: "",
        },
        Edit {
            case: "a policy whose Service is missing",
            file: "policy.yaml",
            text: POLICY,
            from: "name: payments}",
            to: "name: paymnts}",
            code: "TargetNotFound",
            group: None,
            subject: "ResiliencePolicy shop/payments",
            message: "",
            hint: "LocalService named paymnts",
        },
        Edit {
            case: "a split whose Service is missing",
            file: "split.yaml",
            text: SPLIT,
            from: "service: payments",
            to: "service: ledger",
            code: "TargetNotFound",
            group: None,
            subject: "TrafficSplit shop/payments",
            message: "",
            hint: "",
        },
        Edit {
            case: "a bad endpoint address",
            file: "services.yaml",
            text: SERVICES.as_str(),
            from: "127.0.0.1:9201",
            to: "localhost:9201",
            code: "LocalServiceInvalid",
            group: None,
            subject: "LocalService shop/orders",
            message: "spec.endpoints[0].address",
            hint: "",
        },
        Edit {
            case: "an Autoscaler whose LocalService is missing",
            file: "autoscaler.yml",
            text: AUTOSCALER,
            from: "name: orders}",
            to: "name: ordrs}",
            code: "TargetNotFound",
            group: Some(Group::Autoscalers),
            subject: "Autoscaler shop/orders",
            message: "",
            hint: "",
        },
        Edit {
            case: "an Autoscaler without metrics",
            file: "autoscaler.yml",
            text: AUTOSCALER,
            from: "metrics: [{type: Concurrency, target: 10}]",
            to: "metrics: []",
            code: "Invalid",
            group: None,
            subject: "Autoscaler shop/orders",
            message: "spec.metrics",
            hint: "",
        },
    ] {
        let Edit { case, file, .. } = edit;
        assert!(edit.text.contains(edit.from), "{case}: nothing to edit");
        let report = check(folder(&[(file, &edit.text.replace(edit.from, edit.to))]).path());
        let codes = codes(&report);
        assert_eq!(report.findings.len(), 1, "{case}: {codes:?}");
        let finding = &report.findings[0];
        assert_eq!(finding.code, edit.code, "{case}");
        if let Some(group) = edit.group {
            assert_eq!(finding.group, group, "{case}");
        }
        assert_eq!(finding.subject, edit.subject, "{case}");
        for (what, text, part) in [
            ("message", &finding.message, edit.message),
            ("hint", &finding.hint, edit.hint),
        ] {
            assert!(
                text.contains(part),
                "{case}: {what} {text:?} without {part:?}"
            );
        }
    }
}

#[test]
fn a_weighted_subset_without_endpoints_is_an_error_an_unweighted_one_a_warning() {
    let dir = folder(&[("split.yaml", &SPLIT.replace("version: v2}", "version: v3}"))]);
    let report = check(dir.path());
    let finding = only(&report, "NoEndpoints");
    says(&finding.message, "\"v2\"");
    says(&finding.hint, "version=v3");
    assert_eq!(report.exit_code(), 1);

    let dir = folder(&[(
        "split.yaml",
        &SPLIT
            .replace("version: v2}", "version: v3}")
            .replace("weight: 10", "weight: 0"),
    )]);
    let report = check(dir.path());
    let finding = only(&report, "SubsetEmpty");
    assert_eq!(finding.severity, Severity::Warning);
    assert_eq!(report.exit_code(), 0, "a warning alone passes");
}

#[test]
fn conflicting_policies_make_one_finding_naming_each() {
    let second = POLICY.replace("name: payments, namespace", "name: payments-b, namespace");
    let third = POLICY.replace("name: payments, namespace", "name: payments-c, namespace");
    let finding = only_in(
        &[("more.yaml", &format!("{second}---\n{third}"))],
        "Conflict",
    );
    assert_eq!(finding.subject, "ResiliencePolicy shop/payments");
    says(
        &finding.message,
        "payments and payments-b, payments-c all target Service payments",
    );
    // Another namespace's policy of the same name is no conflict.
    let elsewhere = POLICY.replace("namespace: shop", "namespace: other");
    let other_service = SERVICES.replace("namespace: shop", "namespace: other");
    let dir = folder(&[("other.yaml", &format!("{elsewhere}---\n{other_service}"))]);
    assert_eq!(check(dir.path()).findings, []);
}

#[test]
fn a_resource_defined_twice_is_one_finding() {
    // Defined twice, in two files or in one: one finding, not also a conflict with itself.
    let duplicate = only_in(&[("copy.yaml", SPLIT)], "Duplicate");
    assert_eq!(duplicate.subject, "TrafficSplit shop/payments");
    assert_eq!(
        duplicate.message,
        "defined 2 times, in copy.yaml, split.yaml"
    );
    let duplicate = only_in(
        &[("policy.yaml", &format!("{POLICY}---\n{POLICY}"))],
        "Duplicate",
    );
    assert_eq!(duplicate.message, "defined 2 times, in policy.yaml");
}

#[test]
fn an_empty_folder_warns_a_missing_one_fails() {
    let dir = tempfile::tempdir().unwrap();
    let report = check(dir.path());
    assert_eq!(only(&report, "NoFiles").severity, Severity::Warning);
    let report = check(&dir.path().join("absent"));
    assert_eq!(only(&report, "NotAFolder").severity, Severity::Error);
    assert_eq!(report.exit_code(), 1);
}

#[test]
fn a_file_over_16_mib_is_refused_unread() {
    let dir = folder(&[]);
    let big = std::fs::File::create(dir.path().join("big.yaml")).unwrap();
    big.set_len(16 * 1024 * 1024 + 1).unwrap();
    let finding = only(&check(dir.path()), "FileTooLarge");
    assert_eq!(finding.subject, "file big.yaml");
}

fn run(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_weir-operator"))
        .arg("check")
        .args(args)
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
    )
}

#[test]
fn the_binary_exits_non_zero_on_errors_and_prints_text_without_colour_or_json() {
    let clean = folder(&[]);
    let (code, text) = run(&["--dir", clean.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    assert!(text.ends_with("\nno problems found\n"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "no colour when stdout is no terminal"
    );

    let broken = folder(&[(
        "split.yaml",
        &SPLIT.replace("service: payments", "service: ledger"),
    )]);
    let (code, text) = run(&["--dir", broken.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("  error: TrafficSplit shop/payments: Service ledger does not exist in namespace shop\n    hint: "),
        "{text}"
    );
    let (code, json) = run(&["--dir", broken.path().to_str().unwrap(), "--output", "json"]);
    assert_eq!(code, 1);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["errors"], 1);
    assert_eq!(json["findings"][0]["code"], "TargetNotFound");
    assert_eq!(json["findings"][0]["group"], "resources");
}
