//! `--config FILE`: a ProxyConfig document, reloaded when it changes.
//!
//! The file is polled (its size, modification time and inode, then its bytes) every 200 ms
//! rather than watched through inotify: polling sees editors' rename-on-save, Kubernetes
//! ConfigMap symlink swaps and network file systems alike, needs no extra crate, and one `stat`
//! five times a second costs nothing. A change is live within the 1 s the design asks for.
//!
//! A file longer than 16 MiB ([`bounds::CONFIG_MAX_BYTES`]) is refused from its length, before
//! it is read, and the read itself stops past the limit (the file may grow in between). A file
//! that fails validation, or whose apply fails, is refused (an error log naming the field,
//! `weir_config_rejected_total{source="file"}`) and the last good config stays; the next edit is
//! read again. The task runs under [`store::supervised`].

use crate::store::{self, Build, Store};
use crate::table::RouteTable;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use weir_proxy_api::{FileStamp, InvalidConfig, ProxyConfig, bounds, validate};

const POLL_INTERVAL: Duration = Duration::from_millis(200);
const SOURCE: &str = "file";

/// What the watcher has seen; kept across restarts of a panicked task so that the content that
/// was being loaded is not loaded again until it changes.
#[derive(Debug, Default)]
struct Seen {
    stamp: Option<FileStamp>,
    bytes: Option<Vec<u8>>,
    reported_missing: bool,
}

/// Loads `path` once now and then whenever it changes, until `shutdown`.
pub async fn watch(path: PathBuf, store: Arc<Store>, shutdown: watch::Receiver<bool>) {
    watch_with(path, store, shutdown, RouteTable::build).await
}

/// [`watch`] with route tables built by `build` (tests inject a panicking one).
pub async fn watch_with(
    path: PathBuf,
    store: Arc<Store>,
    mut shutdown: watch::Receiver<bool>,
    build: Build,
) {
    let mut seen = Seen::default();
    while !store::supervised(
        SOURCE,
        &store,
        poll(&path, &store, &mut seen, &mut shutdown, build),
    )
    .await
    {}
}

async fn poll(
    path: &Path,
    store: &Store,
    seen: &mut Seen,
    shutdown: &mut watch::Receiver<bool>,
    build: Build,
) {
    loop {
        match tokio::fs::metadata(path).await {
            Ok(meta) if Some(FileStamp::of(&meta)) != seen.stamp => {
                seen.stamp = Some(FileStamp::of(&meta));
                seen.reported_missing = false;
                match read(path, meta.len()).await {
                    Ok(Ok(bytes)) if Some(&bytes) != seen.bytes.as_ref() => {
                        // Marked as seen first: if loading it panics, it is not loaded again.
                        seen.bytes = Some(bytes);
                        if let Some(bytes) = &seen.bytes {
                            load(path, bytes, store, build);
                        }
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(too_long)) => {
                        seen.bytes = None;
                        refused(path, store, &too_long);
                    }
                    Err(e) => {
                        tracing::error!(file = %path.display(), error = %e, "cannot read the config file; keeping the running config");
                        seen.stamp = None;
                    }
                }
            }
            Ok(_) => {}
            Err(e) if !seen.reported_missing => {
                tracing::error!(file = %path.display(), error = %e, "cannot read the config file; keeping the running config");
                seen.reported_missing = true;
                seen.stamp = None;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            () = crate::server::stopped(shutdown) => return,
        }
    }
}

/// The file's bytes, or a refusal when it is longer than a config may be: `len` (from `stat`)
/// is checked first, and the read stops one byte past the limit in case the file grew.
async fn read(path: &Path, len: u64) -> std::io::Result<Result<Vec<u8>, InvalidConfig>> {
    let too_long = |len: usize| validate::check_size(len);
    if let Err(e) = too_long(usize::try_from(len).unwrap_or(usize::MAX)) {
        return Ok(Err(e));
    }
    let file = tokio::fs::File::open(path).await?;
    let limit = bounds::CONFIG_MAX_BYTES as u64 + 1;
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(limit).read_to_end(&mut bytes).await?;
    Ok(too_long(bytes.len()).map(|()| bytes))
}

fn load(path: &Path, bytes: &[u8], store: &Store, build: Build) {
    match ProxyConfig::from_json(bytes) {
        Ok(config) => {
            let version = config.version;
            let services = config.services.len();
            match store.apply_with(config, HashMap::new(), build) {
                Ok(()) => {
                    tracing::info!(file = %path.display(), version, services, "config applied")
                }
                Err(failed) => {
                    store
                        .metrics
                        .config_rejected
                        .with_label_values(&[SOURCE])
                        .inc();
                    tracing::error!(file = %path.display(), error = %failed,
                        "config could not be applied; keeping the last good config");
                }
            }
        }
        Err(e) => refused(path, store, &e),
    }
}

fn refused(path: &Path, store: &Store, e: &InvalidConfig) {
    store
        .metrics
        .config_rejected
        .with_label_values(&[SOURCE])
        .inc();
    tracing::error!(
        file = %path.display(),
        field = %e.field,
        error = %e,
        "config refused; keeping the last good config"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::table::ServiceKey;
    use tokio::time::Instant;

    /// Builds tables as the proxy does, except that version 2 panics, as a value a policy type
    /// cannot take would.
    fn panics_on_version_2(
        config: ProxyConfig,
        unknown: HashMap<ServiceKey, String>,
        previous: &RouteTable,
        now: Instant,
    ) -> RouteTable {
        assert!(config.version != 2, "version 2 cannot be built");
        RouteTable::build(config, unknown, previous, now)
    }

    fn config(version: u64, weight: u32) -> String {
        format!(
            r#"{{"version": {version}, "services": [{{"name": "payments", "namespace": "shop",
                "subsets": [{{"name": "v1", "weight": {weight}, "endpoints": ["127.0.0.1:9"]}}]}}]}}"#
        )
    }

    fn rejected(store: &Store) -> u64 {
        store
            .metrics
            .config_rejected
            .with_label_values(&[SOURCE])
            .get()
    }

    fn weight(store: &Store) -> u32 {
        store.table().config.services[0].subsets[0].weight
    }

    /// Waits (polling, real time: the watcher reads a real file) until `done` holds.
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..200 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("timed out waiting until {what}");
    }

    #[tokio::test]
    async fn a_panicking_apply_is_reported_and_the_next_edit_applies() {
        let dir = std::env::temp_dir().join(format!("weir-config-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("proxy.json");
        std::fs::write(&path, config(1, 10)).unwrap();
        let store = Arc::new(Store::new(Metrics::new()));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(watch_with(
            path.clone(),
            store.clone(),
            stopped,
            panics_on_version_2,
        ));
        until("version 1 runs", || store.readiness().is_ok()).await;
        assert_eq!(weight(&store), 10);

        // Rewritten in place: a new length and modification time mark the change.
        std::fs::write(&path, config(2, 200)).unwrap();
        until("the failure is reported", || store.readiness().is_err()).await;
        let why = store.readiness().unwrap_err();
        assert!(why.contains("version 2 cannot be built"), "{why}");
        assert_eq!(rejected(&store), 1);
        assert_eq!(weight(&store), 10, "the last good config stays");
        assert!(!task.is_finished());

        std::fs::write(&path, config(3, 3000)).unwrap();
        until("version 3 runs", || weight(&store) == 3000).await;
        assert_eq!(store.readiness(), Ok(()));
        assert_eq!(rejected(&store), 1);

        stop.send(true).unwrap();
        task.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_file_longer_than_16_mib_is_refused_unread() {
        let dir = std::env::temp_dir().join(format!("weir-config-big-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("proxy.json");
        let file = std::fs::File::create(&path).unwrap();
        // Sparse: 1 GiB long, nothing written.
        file.set_len(1 << 30).unwrap();
        assert!(read(&path, 1 << 30).await.unwrap().is_err());
        // A file that grew past the limit after its `stat` is cut at the limit and refused.
        let err = read(&path, 10).await.unwrap().unwrap_err();
        assert!(err.message.contains("16 MiB"), "{err}");
        std::fs::write(&path, config(1, 1)).unwrap();
        assert!(read(&path, 10).await.unwrap().is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
