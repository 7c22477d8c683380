//! Temporary folders (on `tempfile`), atomic file replacement, and a lock between tests.

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

/// The folder type [`temp_dir`] returns (tempfile's), for fields that hold one.
pub use tempfile::TempDir;

/// An exclusive lock on the file `name` in the system temp dir, held until dropped: what tests
/// that need fixed ports (the demo's) take so they run one at a time, across test threads and
/// test processes alike (`flock`, through `nix`). Blocks until the lock is free.
pub fn exclusive_lock(name: &str) -> nix::fcntl::Flock<std::fs::File> {
    let path = std::env::temp_dir().join(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("locking {}: {e}", path.display()))
}
