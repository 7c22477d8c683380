//! Canary analysis in `weir-operator local`: the rollouts of the folder's TrafficSplits, judged
//! from the callers' sidecars, published for the folder source (which applies the canary
//! weights before translating) and for the admin's `/status`.
//!
//! **The callers** of a split's Service are the proxies connected to the config API that hold
//! its outbound config (`service/<namespace>/<name>`) and name an admin listener; each is
//! scraped at the start and at the end of every interval (1 s timeout, 32 at once, once per
//! round for all the rollouts it calls). A caller that does not answer counts nothing for that
//! interval. Local mode has no status to resume from: a restarted `weir-operator local` starts
//! every rollout over at step 1.
//!
//! Events are log lines here (a cluster records them as Kubernetes Events).

pub use super::Published;
use super::{Key, Outcome, Rollouts};
use crate::autoscaler::scrape::Scraper;
use crate::local::Resources;
use crate::metrics::Metrics;
use crate::snapshot::ServiceKey;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use weir_crds::AnalysisStatus;

/// How often the rollouts are looked at: an interval (at least 1 s) ends at most this late.
const TICK: Duration = Duration::from_millis(250);

/// Runs the rollouts of the splits in `resources` until `shutdown`. `callers` names the admin
/// listeners of the proxies that call a Service.
pub async fn run(
    mut resources: watch::Receiver<Arc<Resources>>,
    callers: impl Fn(&ServiceKey) -> Vec<SocketAddr> + Send + 'static,
    metrics: Arc<Metrics>,
    published: watch::Sender<Arc<Published>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut rollouts = Rollouts::default();
    let scraper = Scraper::new(super::SCRAPE_TIMEOUT);
    resources.mark_changed();
    loop {
        if resources.has_changed().unwrap_or(false) {
            let current = resources.borrow_and_update().clone();
            for change in rollouts.sync(&current.splits) {
                tracing::info!(namespace = %change.key.0, name = %change.key.1, reason = change.reason, message = %change.message, "rollout");
            }
        }
        let now = tokio::time::Instant::now();
        // A round over many hung sidecars can take a while: it never holds up shutdown.
        let judged = tokio::select! {
            judged = super::observe_due(&mut rollouts, &scraper, now, &callers) => judged,
            changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { return } else { Vec::new() },
        };
        for (key, outcome, state) in judged {
            report(&metrics, &key, outcome, &state);
        }
        super::publish(&published, Published::of(&rollouts), &metrics);
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { return },
        }
    }
}

pub(super) fn report(metrics: &Metrics, key: &Key, outcome: Outcome, state: &AnalysisStatus) {
    if let Some(judgement) = &state.last_judgement {
        metrics
            .analysis_judgements
            .with_label_values(&[&key.0, &key.1, judgement.result.as_str()])
            .inc();
    }
    match outcome {
        Outcome::RolledBack => {
            tracing::warn!(namespace = %key.0, name = %key.1, reason = outcome.reason(), message = %state.message, "rollout")
        }
        _ => {
            tracing::info!(namespace = %key.0, name = %key.1, reason = outcome.reason(), message = %state.message, "rollout")
        }
    }
}

/// The admin listeners of the proxies connected to `api` that hold `service`'s outbound config:
/// its callers. An admin listener on every address is dialed at the address the proxy polls
/// from.
pub fn callers_of(api: &crate::config_api::ConfigApi, service: &ServiceKey) -> Vec<SocketAddr> {
    let resource = weir_proxy_api::protocol::service_resource(&service.namespace, &service.name);
    let mut admins: Vec<SocketAddr> = api
        .proxies()
        .into_iter()
        .filter(|proxy| proxy.held.contains_key(&resource))
        .filter_map(|proxy| {
            let admin = proxy.node.admin?;
            Some(crate::config_api::reachable_admin(
                admin,
                SocketAddr::new(proxy.peer.ip(), admin.port()),
            ))
        })
        .collect();
    admins.sort();
    admins.dedup();
    admins
}
