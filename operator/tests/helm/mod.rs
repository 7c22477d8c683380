//! The Helm chart as the tests read it (`chart.rs`, `webhook.rs`): `helm template` of
//! `charts/weir` with `--set` values, the rendered objects as JSON documents, and the strict
//! parse of one into its k8s-openapi type. A machine without helm skips these tests (saying
//! so): `.ci/run` installs it.

#![allow(dead_code)] // each test binary uses a different part

use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The chart's folder.
pub fn chart() -> PathBuf {
    root().join("charts/weir")
}

/// A `helm` command, or None (the test skips) when helm is not installed.
pub fn helm() -> Option<Command> {
    match Command::new("helm").arg("version").output() {
        Ok(o) if o.status.success() => Some(Command::new("helm")),
        _ => {
            eprintln!("SKIPPED: helm is not installed (.ci/run installs it)");
            None
        }
    }
}

/// `helm template weir` in `weir-system` with `values` (`--set`).
fn run_template(values: &[&str]) -> Option<Output> {
    let mut helm = helm()?;
    helm.args(["template", "weir"])
        .arg(chart())
        .args(["--namespace", "weir-system"]);
    for v in values {
        helm.args(["--set", v]);
    }
    Some(helm.output().unwrap())
}

/// The objects the chart renders with `values`, in order; None without helm.
pub fn template(values: &[&str]) -> Option<Vec<Value>> {
    let out = run_template(values)?;
    assert!(
        out.status.success(),
        "helm template {values:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text).expect("YAML");
    Some(documents.into_iter().filter(|v| !v.is_null()).collect())
}

/// What `helm template` says when `values` must make it fail; None without helm.
pub fn template_error(values: &[&str]) -> Option<String> {
    let out = run_template(values)?;
    assert!(!out.status.success(), "helm template {values:?} succeeded");
    Some(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The rendered object of `kind` named `name`.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

/// Parses `value` (`what`, for the message) as `K`, failing on any field the type does not
/// know: a misspelt field would otherwise vanish silently.
pub fn strict<K: DeserializeOwned>(value: &Value, what: &str) -> K {
    let mut unknown = Vec::new();
    let parsed: K =
        serde_ignored::deserialize(value.clone(), |path| unknown.push(path.to_string()))
            .unwrap_or_else(|e| panic!("{what}: {e}: {value:#}"));
    assert!(unknown.is_empty(), "{what}: unknown fields {unknown:?}");
    parsed
}
