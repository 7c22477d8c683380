//! `--log-format json` (and `WEIR_LOG_FORMAT`): every line the operator writes to stderr is one
//! JSON object, for log collectors; text lines carry no colour codes when stderr is a file.

mod local_operator;

use local_operator::temp_dir;
use std::time::Duration;
use weir_testkit::{Process, free_addr, write_atomically};

/// Runs `weir-operator local` on a folder holding one refused file until it has logged the
/// refusal, and returns its stderr.
fn logs_of(args_before: &[&str], args_after: &[&str], env: Option<(&str, &str)>) -> String {
    let dir = temp_dir("weir-log-format");
    write_atomically(
        &dir.join("bad.yaml"),
        "apiVersion: weir.dev/v1alpha1\nkind: Nonsense\n",
    );
    let mut command = local_operator::operator_command();
    command
        .args(args_before)
        .args(["local", "--dir"])
        .arg(&dir)
        .args(["--listen", &free_addr().to_string()])
        .args(["--admin", &free_addr().to_string()])
        .args(args_after)
        .env_remove("WEIR_LOG_FORMAT");
    if let Some((key, value)) = env {
        command.env(key, value);
    }
    let operator = Process::spawn(command);
    let mut text = String::new();
    for _ in 0..400 {
        // Read as written: `log()` would strip the colour codes the tests look for.
        text = std::fs::read_to_string(operator.log_path()).unwrap_or_default();
        if text.contains("Nonsense") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(operator);
    assert!(
        text.contains("Nonsense"),
        "the refusal was not logged: {text}"
    );
    text
}

fn every_line_is_a_json_object(text: &str) {
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(
            value.get("level").is_some() && value.get("timestamp").is_some(),
            "{line}"
        );
    }
}

#[test]
fn json_lines_after_or_before_the_subcommand_and_from_the_environment() {
    every_line_is_a_json_object(&logs_of(&[], &["--log-format", "json"], None));
    every_line_is_a_json_object(&logs_of(&["--log-format", "json"], &[], None));
    every_line_is_a_json_object(&logs_of(&[], &[], Some(("WEIR_LOG_FORMAT", "json"))));
}

#[test]
fn text_lines_have_no_colour_codes_in_a_file() {
    let text = logs_of(&[], &[], None);
    assert!(!text.contains('\u{1b}'), "{text}");
    assert!(
        text.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_err())
    );
}
