//! `--config FILE`: a ProxyConfig document, reloaded when it changes.
//!
//! The file is polled (its size, modification time and inode, then its bytes) every 200 ms
//! rather than watched through inotify: polling sees editors' rename-on-save, Kubernetes
//! ConfigMap symlink swaps and network file systems alike, needs no extra crate, and one `stat`
//! five times a second costs nothing. A change is live within the 1 s the design asks for.

use crate::store::Store;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use weir_proxy_api::ProxyConfig;

const POLL_INTERVAL: Duration = Duration::from_millis(200);

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(meta);
    #[cfg(not(unix))]
    let inode = 0;
    Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode,
    }
}

/// Loads `path` once now and then whenever it changes, until `shutdown`.
pub async fn watch(path: PathBuf, store: Arc<Store>, mut shutdown: watch::Receiver<bool>) {
    let mut seen: Option<Stamp> = None;
    let mut last_bytes: Option<Vec<u8>> = None;
    let mut reported_missing = false;
    loop {
        match tokio::fs::metadata(&path).await {
            Ok(meta) if Some(stamp(&meta)) != seen => {
                seen = Some(stamp(&meta));
                reported_missing = false;
                match tokio::fs::read(&path).await {
                    Ok(bytes) if Some(&bytes) != last_bytes.as_ref() => {
                        load(&path, &bytes, &store);
                        last_bytes = Some(bytes);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(file = %path.display(), error = %e, "cannot read the config file; keeping the running config");
                        seen = None;
                    }
                }
            }
            Ok(_) => {}
            Err(e) if !reported_missing => {
                tracing::error!(file = %path.display(), error = %e, "cannot read the config file; keeping the running config");
                reported_missing = true;
                seen = None;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            () = crate::server::stopped(&mut shutdown) => return,
        }
    }
}

fn load(path: &std::path::Path, bytes: &[u8], store: &Store) {
    match ProxyConfig::from_json(bytes) {
        Ok(config) => {
            let version = config.version;
            let services = config.services.len();
            store.apply(config, HashMap::new());
            tracing::info!(file = %path.display(), version, services, "config applied");
        }
        Err(e) => {
            store
                .metrics
                .config_rejected
                .with_label_values(&["file"])
                .inc();
            tracing::error!(
                file = %path.display(),
                field = %e.field,
                error = %e,
                "config refused; keeping the last good config"
            );
        }
    }
}
