//! `weir-operator check --dir`: each finding over a temporary folder, a clean folder reporting
//! nothing, and the binary's exit code and output forms.

use std::path::Path;
use std::process::Command;
use weir_operator::check::local::check;
use weir_operator::check::{Group, Report, Severity};

const SERVICES: &str = "\
apiVersion: weir.dev/v1alpha1
kind: LocalService
metadata: {name: payments, namespace: shop}
spec:
  port: 8080
  endpoints:
    - {address: 127.0.0.1:9101, labels: {version: v1}}
    - {address: 127.0.0.1:9102, labels: {version: v2}}
---
apiVersion: weir.dev/v1alpha1
kind: LocalService
metadata: {name: orders, namespace: shop}
spec:
  port: 8080
  endpoints:
    - {address: 127.0.0.1:9201}
";

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
        ("services.yaml", SERVICES),
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
    assert!(
        finding
            .message
            .starts_with("document 2: field `spec.backends[1].weight`"),
        "{}",
        finding.message
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
        let dir = folder(&[("bad.yaml", &text)]);
        let finding = only(&check(dir.path()), "FileInvalid");
        assert!(
            finding.message.contains(field),
            "{field}: {}",
            finding.message
        );
    }
}

#[test]
fn a_value_out_of_bounds_is_refused_by_the_translations_validation() {
    let dir = folder(&[(
        "policy.yaml",
        &POLICY.replace("attempts: 2", "attempts: 11"),
    )]);
    let finding = only(&check(dir.path()), "Invalid");
    assert_eq!(finding.subject, "ResiliencePolicy shop/payments");
    assert!(
        finding.message.contains("spec.retries.attempts"),
        "{}",
        finding.message
    );
}

#[test]
fn a_policy_or_split_whose_service_is_missing() {
    let dir = folder(&[(
        "policy.yaml",
        &POLICY.replace("name: payments}", "name: paymnts}"),
    )]);
    let finding = only(&check(dir.path()), "TargetNotFound");
    assert_eq!(finding.subject, "ResiliencePolicy shop/payments");
    assert!(
        finding.hint.contains("LocalService named paymnts"),
        "{}",
        finding.hint
    );

    let dir = folder(&[(
        "split.yaml",
        &SPLIT.replace("service: payments", "service: ledger"),
    )]);
    let finding = only(&check(dir.path()), "TargetNotFound");
    assert_eq!(finding.subject, "TrafficSplit shop/payments");
}

#[test]
fn a_weighted_subset_without_endpoints_is_an_error_an_unweighted_one_a_warning() {
    let dir = folder(&[("split.yaml", &SPLIT.replace("version: v2}", "version: v3}"))]);
    let report = check(dir.path());
    let finding = only(&report, "NoEndpoints");
    assert!(finding.message.contains("\"v2\""), "{}", finding.message);
    assert!(finding.hint.contains("version=v3"), "{}", finding.hint);
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
    let dir = folder(&[("more.yaml", &format!("{second}---\n{third}"))]);
    let finding = only(&check(dir.path()), "Conflict");
    assert_eq!(finding.subject, "ResiliencePolicy shop/payments");
    assert!(
        finding
            .message
            .contains("payments and payments-b, payments-c all target Service payments"),
        "{}",
        finding.message
    );
    // Another namespace's policy of the same name is no conflict.
    let elsewhere = POLICY.replace("namespace: shop", "namespace: other");
    let other_service = SERVICES.replace("namespace: shop", "namespace: other");
    let dir = folder(&[("other.yaml", &format!("{elsewhere}---\n{other_service}"))]);
    assert_eq!(check(dir.path()).findings, []);
}

#[test]
fn a_resource_defined_twice_and_a_bad_endpoint_address() {
    // Defined twice, in two files or in one: one finding, not also a conflict with itself.
    let dir = folder(&[("copy.yaml", SPLIT)]);
    let duplicate = only(&check(dir.path()), "Duplicate");
    assert_eq!(duplicate.subject, "TrafficSplit shop/payments");
    assert_eq!(
        duplicate.message,
        "defined 2 times, in copy.yaml, split.yaml"
    );
    let dir = folder(&[("policy.yaml", &format!("{POLICY}---\n{POLICY}"))]);
    let duplicate = only(&check(dir.path()), "Duplicate");
    assert_eq!(duplicate.message, "defined 2 times, in policy.yaml");

    let dir = folder(&[(
        "services.yaml",
        &SERVICES.replace("127.0.0.1:9201", "localhost:9201"),
    )]);
    let finding = only(&check(dir.path()), "LocalServiceInvalid");
    assert_eq!(finding.subject, "LocalService shop/orders");
    assert!(
        finding.message.contains("spec.endpoints[0].address"),
        "{}",
        finding.message
    );
}

#[test]
fn autoscalers_need_a_valid_spec_and_an_existing_local_service() {
    let dir = folder(&[(
        "autoscaler.yml",
        &AUTOSCALER.replace("name: orders}", "name: ordrs}"),
    )]);
    let finding = only(&check(dir.path()), "TargetNotFound");
    assert_eq!(finding.group, Group::Autoscalers);
    assert_eq!(finding.subject, "Autoscaler shop/orders");

    let dir = folder(&[(
        "autoscaler.yml",
        &AUTOSCALER.replace("metrics: [{type: Concurrency, target: 10}]", "metrics: []"),
    )]);
    let finding = only(&check(dir.path()), "Invalid");
    assert!(
        finding.message.contains("spec.metrics"),
        "{}",
        finding.message
    );
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
