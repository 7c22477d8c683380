//! Temporary folders (on `tempfile`) and atomic file replacement.

use std::path::Path;

/// A fresh folder under the system temp dir whose name starts with `prefix` (so a leftover is
/// recognisable), removed when dropped; call `keep()` on it to look at it after a failure.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("{prefix}-"))
        .tempdir()
        .expect("a temporary folder")
}

/// Replaces `path` at once: a temporary file beside it renamed over it, as editors save and
/// Kubernetes updates a mounted ConfigMap, so a watcher never reads half a file.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("renaming to {}: {e}", path.display()));
}
