//! A test that cannot run on this machine (a tool it needs is missing) passes after printing a
//! line starting with `SKIPPED:`. nextest hides a passing test's output, so such a skip would look
//! like a pass: `.config/nextest.toml` shows the output of the tests that can skip. This test keeps
//! that list honest: every test file that prints a `SKIPPED:` line must be named there by its
//! binary id (`crate::file`).

use std::fs;
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives in the workspace")
        .to_path_buf()
}

/// The package name in a crate's `Cargo.toml`.
fn package_name(crate_dir: &Path) -> String {
    let manifest = fs::read_to_string(crate_dir.join("Cargo.toml")).expect("Cargo.toml");
    manifest
        .lines()
        .find_map(|line| {
            let value = line.trim().strip_prefix("name")?.trim().strip_prefix('=')?;
            Some(value.trim().trim_matches('"').to_owned())
        })
        .expect("a package name")
}

/// Whether a test source prints a `SKIPPED:` line (a string literal starting with it).
fn prints_a_skip(text: &str) -> bool {
    text.contains("\"SKIPPED:")
}

/// Binary ids (`crate::file`) of the integration test files that print a `SKIPPED:` line, by
/// themselves or through a shared module of their folder (`tests/helm/mod.rs` declared as
/// `mod helm;`).
fn skipping_test_binaries() -> Vec<String> {
    let root = workspace();
    let mut found = Vec::new();
    for crate_dir in [
        "crds",
        "operator",
        "sidecar",
        "sidecar/api",
        "sidecar/bench",
        "examples/shop",
    ] {
        let crate_dir = root.join(crate_dir);
        let Ok(entries) = fs::read_dir(crate_dir.join("tests")) else {
            continue;
        };
        let mut files = Vec::new();
        let mut skipping_modules = Vec::new();
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            let shared = path.join("mod.rs");
            if shared.is_file() {
                if prints_a_skip(&fs::read_to_string(&shared).expect("a test module")) {
                    let name = path.file_name().unwrap().to_string_lossy().into_owned();
                    skipping_modules.push(name);
                }
            } else if path.extension().is_some_and(|e| e == "rs")
                && !path.ends_with("crds/tests/skips.rs")
            {
                files.push(path);
            }
        }
        for path in files {
            let text = fs::read_to_string(&path).expect("a test file");
            let uses_a_skipping_module = skipping_modules
                .iter()
                .any(|m| text.lines().any(|l| l.trim() == format!("mod {m};")));
            if prints_a_skip(&text) || uses_a_skipping_module {
                let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
                found.push(format!("{}::{stem}", package_name(&crate_dir)));
            }
        }
    }
    found.sort();
    found
}

#[test]
fn every_test_that_can_skip_shows_its_output() {
    let config =
        fs::read_to_string(workspace().join(".config/nextest.toml")).expect("nextest.toml");
    let binaries = skipping_test_binaries();
    // The list this guards: a scan that finds nothing would make the check vacuous.
    assert!(
        binaries.contains(&"weir-operator::chart".to_owned()),
        "the scan found {binaries:?}"
    );
    let unlisted: Vec<&String> = binaries
        .iter()
        .filter(|id| !config.contains(&format!("binary_id({id})")))
        .collect();
    assert!(
        unlisted.is_empty(),
        "these test files print SKIPPED: but .config/nextest.toml does not show their output: {unlisted:?}"
    );
}
