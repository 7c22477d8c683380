//! The mesh's resources as the YAML text a local mesh folder holds, for tests that write one
//! (the operator's `local` and `check --dir` tests, the shop's demo). Text, not typed values: the
//! tests are about how that text is read, comments and document separators included.

use std::fmt::Write;

/// A `LocalService` document: `port` when given (else the spec has none, as a service whose
/// callers name the endpoint's port), then one endpoint a line, each given as the inside of its
/// flow map (`address: "127.0.0.1:9101", labels: {version: v1}`).
pub fn local_service(
    namespace: &str,
    name: &str,
    port: Option<u16>,
    endpoints: impl IntoIterator<Item = impl AsRef<str>>,
) -> String {
    let mut text = format!(
        "apiVersion: weir.dev/v1alpha1\nkind: LocalService\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n"
    );
    if let Some(port) = port {
        let _ = writeln!(text, "  port: {port}");
    }
    let mut endpoints = endpoints.into_iter().peekable();
    if endpoints.peek().is_none() {
        text.push_str("  endpoints: []\n");
    } else {
        text.push_str("  endpoints:\n");
    }
    for endpoint in endpoints {
        let _ = writeln!(text, "    - {{{}}}", endpoint.as_ref());
    }
    text
}
