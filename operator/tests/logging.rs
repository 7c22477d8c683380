//! The operator's log lines as `kubectl logs` shows them: stderr is not a terminal there, so
//! no colour codes (a real cluster showed `\x1b[2m…` in every line).

use std::process::Command;

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    // No Kubernetes API to be found: `run` logs an error and stops at once.
    let output = Command::new(env!("CARGO_BIN_EXE_weir-operator"))
        .arg("run")
        .env("KUBECONFIG", "/nonexistent/weir-kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("HOME", "/nonexistent")
        .env("WEIR_LOG", "info")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no Kubernetes API"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "colour codes in {stderr:?}");
}
