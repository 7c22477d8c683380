//! Leader election through a `coordination.k8s.io/v1` Lease, with `kube-lease-manager`.
//!
//! kube-runtime has no leader election; `kube-lease-manager` follows current kube, renews the
//! Lease with server-side apply (two replicas cannot both take a free Lease) and tolerates
//! clock skew up to the grace period. Leadership is only about status and Events: both replicas
//! watch, translate and serve the config API whatever this says. Losing the API server keeps
//! the last known leadership until the manager sees the Lease again; a replica that shuts down
//! releases the Lease so the other takes over without waiting for it to expire.
//!
//! The manager of a standby sleeps until the holder's Lease would expire (up to its full
//! duration) and would only then see that it was released. So while it stands by, this replica
//! also reads the Lease every 0.5–1 s (a GET: the chart grants get, not watch, on Leases) and,
//! once it is free (released or deleted), starts its manager afresh, which takes it at once: a
//! standby leads within about a second of a graceful stop.

use super::recovery::ApiBackoff;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::utils::Backoff;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where the Lease of leader election lives and how long a holder keeps it.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub name: String,
    /// Usually the operator's own namespace.
    pub namespace: String,
    /// How long the lock holds after its last renewal: how long a dead leader's status duties
    /// stay undone before another replica takes over.
    pub duration_seconds: u64,
    /// How long before expiry the holder renews (the clock skew tolerated between nodes).
    pub grace_seconds: u64,
}

impl LeaseSettings {
    /// A 15 s lease renewed 5 s before it expires (client-go's defaults are 15 s and 10 s).
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            duration_seconds: 15,
            grace_seconds: 5,
        }
    }
}

/// How long a shutting-down replica waits for the Lease release before it goes anyway.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a standby reads the Lease to see it released (jittered down to half of it).
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// Whether this replica leads, and the task that keeps finding out.
#[derive(Debug)]
pub(crate) struct Leadership {
    receiver: watch::Receiver<bool>,
    /// Kept so that without election (`lease: None`) the channel stays open.
    _sender: Option<watch::Sender<bool>>,
    task: Option<JoinHandle<()>>,
}

impl Leadership {
    pub fn receiver(&self) -> watch::Receiver<bool> {
        self.receiver.clone()
    }

    /// Waits for the election task, which ends on shutdown after releasing the Lease.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Starts the election; without a Lease this replica leads for good.
pub(crate) fn spawn(
    client: Client,
    identity: String,
    lease: Option<LeaseSettings>,
    shutdown: watch::Receiver<bool>,
) -> Leadership {
    let Some(lease) = lease else {
        let (sender, receiver) = watch::channel(true);
        return Leadership {
            receiver,
            _sender: Some(sender),
            task: None,
        };
    };
    let identity = if identity.is_empty() {
        // Two replicas with one identity would both think they hold the Lease.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let made_up = format!("weir-operator-{nanos:08x}");
        tracing::warn!(identity = %made_up, "no replica identity given (POD_NAME); using a made-up one");
        made_up
    } else {
        identity
    };
    let (sender, receiver) = watch::channel(false);
    let task = tokio::spawn(elect(client, identity, lease, sender, shutdown));
    Leadership {
        receiver,
        _sender: None,
        task: Some(task),
    }
}

async fn elect(
    client: Client,
    identity: String,
    lease: LeaseSettings,
    leader: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    // LeaseParams panics unless 0 < grace < duration.
    let duration = lease.duration_seconds.max(2);
    let grace = lease.grace_seconds.clamp(1, duration - 1);
    let mut backoff = ApiBackoff::default();
    'manager: loop {
        let build = LeaseManagerBuilder::new(client.clone(), &lease.name)
            .with_namespace(&lease.namespace)
            .with_parameters(
                LeaseParams::new(identity.clone(), duration, grace)
                    .with_field_manager(lease_field_manager(&identity)),
            )
            .build();
        let manager = tokio::select! {
            built = build => built,
            _ = crate::shutdown::stopped(&mut shutdown) => return,
        };
        let manager = match manager {
            Ok(manager) => manager,
            Err(error) => {
                tracing::error!(lease = %lease.name, namespace = %lease.namespace, %error,
                    "cannot read or create the leader election Lease; retrying");
                if pause(&mut backoff, &mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        let (mut state, task) = manager.watch().await;
        let leases: Api<Lease> = Api::namespaced(client.clone(), &lease.namespace);
        let mut leads = *state.borrow_and_update();
        loop {
            tokio::select! {
                changed = state.changed() => {
                    if changed.is_err() {
                        break; // the manager's task ended
                    }
                    leads = *state.borrow_and_update();
                    tracing::info!(identity = %identity, lease = %lease.name, leader = leads,
                        "leadership changed");
                    leader.send_replace(leads);
                }
                () = free(&leases, &lease.name), if !leads => {
                    tracing::info!(identity = %identity, lease = %lease.name,
                        "the Lease was released; taking it");
                    // Closing the channel ends the manager (it holds nothing to release).
                    drop(state);
                    let _ = tokio::time::timeout(RELEASE_TIMEOUT, task).await;
                    continue 'manager;
                }
                _ = crate::shutdown::stopped(&mut shutdown) => {
                    leader.send_replace(false);
                    // Closing the channel makes the manager release the Lease and return.
                    drop(state);
                    match tokio::time::timeout(RELEASE_TIMEOUT, task).await {
                        Ok(Ok(Err(error))) => tracing::warn!(%error, "releasing the Lease failed"),
                        Err(_) => tracing::warn!("releasing the Lease timed out"),
                        _ => tracing::info!(lease = %lease.name, "Lease released"),
                    }
                    return;
                }
            }
        }
        leader.send_replace(false);
        match task.await {
            Ok(Err(error)) => {
                tracing::error!(%error, "leader election stopped; restarting it")
            }
            Err(error) => tracing::error!(%error, "leader election task failed; restarting it"),
            Ok(Ok(_)) => {}
        }
        if pause(&mut backoff, &mut shutdown).await {
            return;
        }
    }
}

/// Resolves once the Lease is free: released by its holder (no `holderIdentity`) or deleted.
/// Read errors are left to the manager, which reports them.
async fn free(leases: &Api<Lease>, name: &str) {
    loop {
        tokio::time::sleep(STANDBY_POLL.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
        match leases.get_opt(name).await {
            Ok(None) => return,
            Ok(Some(lease))
                if lease
                    .spec
                    .as_ref()
                    .and_then(|spec| spec.holder_identity.as_deref())
                    .is_none_or(str::is_empty) =>
            {
                return;
            }
            Ok(Some(_)) => {}
            Err(error) => tracing::debug!(%error, "reading the Lease failed"),
        }
    }
}

/// The Lease's field manager: `weir-operator-IDENTITY`. One manager per replica, not
/// `weir-operator` for all: taking a free Lease is a server-side apply of `holderIdentity`
/// without force, and only a field owned by *another* manager makes a second replica's apply
/// fail (409) instead of silently taking the Lease from the first.
pub(crate) fn lease_field_manager(identity: &str) -> String {
    format!("{}-{identity}", super::FIELD_MANAGER)
}

/// Sleeps the next backoff delay; true when shutdown came first.
async fn pause(backoff: &mut ApiBackoff, shutdown: &mut watch::Receiver<bool>) -> bool {
    let delay = backoff.next().unwrap_or(super::recovery::MAX_DELAY);
    tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = crate::shutdown::stopped(shutdown) => true,
    }
}
