//! `weir-operator local`: the control plane fed by a folder, started side by side: the folder
//! source ([`crate::local`]), the rollouts of its splits ([`crate::analysis::local`]) judged on
//! the callers' sidecars (the proxies connected to the config API), and its Autoscalers
//! ([`crate::autoscaler::local`]) evaluated on what the folder source loaded.

use super::{Core, Listeners, first_change};
use crate::local::Resources;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::sync::watch;

/// Runs `weir-operator local` on `dir` until SIGTERM/SIGINT.
pub async fn serve(
    dir: PathBuf,
    listen: SocketAddr,
    admin: SocketAddr,
    operator_namespace: String,
) -> ExitCode {
    if !dir.is_dir() {
        tracing::error!(dir = %dir.display(), "--dir is not a folder");
        return ExitCode::FAILURE;
    }
    tracing::info!(dir = %dir.display(), "weir-operator local");
    let listeners = match Listeners::bind(listen, admin).await {
        Ok(listeners) => listeners,
        Err(code) => return code,
    };
    let (mut core, feeds) = Core::new();
    // What the folder source loaded: its first state makes the config API ready.
    let (loaded, resources) = watch::channel(Arc::new(Resources::default()));
    let first_state = first_change(resources.clone());
    let callers_api = core.config_api.clone();
    core.start(
        "rollouts",
        crate::analysis::local::run(
            resources.clone(),
            move |service| crate::analysis::local::callers_of(&callers_api, service),
            core.metrics.clone(),
            core.rollouts.clone(),
            core.stopped.clone(),
        ),
    );
    // The sidecar in front of an endpoint without `admin` is found among the proxies
    // connected to the config API, by its inbound listener.
    let sidecars_api = core.config_api.clone();
    core.start(
        "autoscalers",
        crate::autoscaler::local::run(
            crate::autoscaler::local::Settings::default(),
            resources,
            move |namespace: &str, service: &str, address| {
                sidecars_api.admin_of(namespace, service, address)
            },
            core.metrics.clone(),
            core.autoscalers.clone(),
            core.stopped.clone(),
        ),
    );
    core.start(
        "folder",
        crate::local::run(
            dir,
            operator_namespace,
            core.snapshots.clone(),
            loaded,
            core.metrics.clone(),
            feeds,
            core.stopped.clone(),
        ),
    );
    core.serve(listeners, first_state).await
}
