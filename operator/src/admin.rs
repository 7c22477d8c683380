//! The operator's admin listener: `/metrics`, `/ready`, `/live`, `/proxies` (the connected
//! proxies and the versions they hold, for people debugging a push) and `/autoscalers` (each
//! Autoscaler's desired and current replicas, metrics and conditions, as JSON: what a launcher
//! in local mode acts on; see [`crate::autoscaler::local`]), `/status`, and the live dashboard:
//! `/dashboard` and `/api/graph` ([`crate::dashboard`]).
//!
//! `/status` shows every resource's status as JSON, as a cluster would hold it on the objects
//! (the only way to see status in local mode): `trafficSplits` (with `conditions` — `Accepted`,
//! `Programmed` from the connected proxies' acknowledgements, and `Analysis` for a split with
//! an analysis — `weights`, `backends` and `analysis`), `resiliencePolicies` (`conditions`) and
//! `autoscalers` (what `/autoscalers` serves). Local mode fills it; in a cluster the status is
//! on the objects themselves (`kubectl get ts -o yaml`) and `/status` lists nothing.
//!
//! `/ready` lists the operator's parts ([`Readiness`]), one line each, and answers 200 when
//! every part that gates readiness is ready, 503 otherwise:
//!
//! ```text
//! ready
//! config API: ready
//! injection webhook: not ready: stopped: cannot listen on 0.0.0.0:9443 (--webhook-listen): Address in use
//! ```
//!
//! The config API gates readiness (a replica that has not published its first state must not
//! be sent proxies). The injection webhook gates it only while it may still come up (starting,
//! for a grace period): a fresh replica is not sent admission calls it would fail, but a webhook
//! that cannot start never takes the config API — and with it the whole mesh's config — out of
//! the Service.
//!
//! The listener runs on [`Server`], the operator's accept loop, with its default bounds: a request head within 10 s, at most 1,024 connections,
//! 5 s on shutdown for requests in flight.

use crate::autoscaler::status::AutoscalerList;
use crate::config_api::ConfigApi;
use crate::dashboard::{Dashboard, Settings as DashboardSettings};
use crate::kubernetes::status::Published;
use crate::metrics::Metrics;
use crate::server::Server;
use crate::translate::{Kind, Verdict};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use parking_lot::Mutex;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The name of the config API's part in [`Readiness`].
pub const CONFIG_API: &str = "config API";
/// The name of the injection webhook's part in [`Readiness`].
pub const WEBHOOK: &str = "injection webhook";

/// Whether each part of the operator is ready, and why not.
#[derive(Debug, Default)]
pub struct Readiness {
    /// In the order they were first named.
    parts: Mutex<Vec<Part>>,
}

#[derive(Debug, Clone)]
struct Part {
    name: &'static str,
    ready: bool,
    /// While not ready, the operator as a whole is not ready.
    gates: bool,
    /// Why it is not ready.
    detail: String,
}

impl Readiness {
    /// Marks `name` ready.
    pub fn ready(&self, name: &'static str) {
        self.set(name, true, false, String::new());
    }

    /// Marks `name` not ready for `detail`; `gates`: whether the operator is not ready meanwhile.
    pub fn not_ready(&self, name: &'static str, gates: bool, detail: impl Into<String>) {
        self.set(name, false, gates, detail.into());
    }

    fn set(&self, name: &'static str, ready: bool, gates: bool, detail: String) {
        let part = Part {
            name,
            ready,
            gates,
            detail,
        };
        let mut parts = self.parts.lock();
        match parts.iter_mut().find(|p| p.name == name) {
            Some(old) => *old = part,
            None => parts.push(part),
        }
    }

    /// Whether `name` is ready (false when never named).
    pub fn is_ready(&self, name: &str) -> bool {
        self.parts.lock().iter().any(|p| p.name == name && p.ready)
    }

    /// Whether no gating part is unready; false before any part is named.
    pub fn all_ready(&self) -> bool {
        let parts = self.parts.lock();
        !parts.is_empty() && parts.iter().all(|p| p.ready || !p.gates)
    }

    /// The `/ready` body: `ready` or `not ready`, then one line per part.
    pub fn report(&self) -> String {
        let mut text = String::from(if self.all_ready() {
            "ready\n"
        } else {
            "not ready\n"
        });
        for part in self.parts.lock().iter() {
            if part.ready {
                text.push_str(&format!("{}: ready\n", part.name));
            } else {
                text.push_str(&format!("{}: not ready: {}\n", part.name, part.detail));
            }
        }
        text
    }
}

/// The sending side of what `/status` shows: the source's verdicts (with the snapshot they were
/// published in) and the rollouts' states. Made with [`StatusFeeds::channels`].
#[derive(Debug)]
pub struct StatusFeeds {
    pub(crate) verdicts: VerdictFeed,
    pub(crate) rollouts: watch::Receiver<Arc<crate::analysis::local::Published>>,
}

/// Where a source publishes the verdicts of each translation.
#[derive(Debug)]
pub(crate) struct VerdictFeed(watch::Sender<Arc<Published>>);

impl VerdictFeed {
    pub(crate) fn publish(&self, verdicts: Vec<Verdict>, snapshot: Arc<crate::snapshot::Snapshot>) {
        self.0
            .send_replace(Arc::new(Published { verdicts, snapshot }));
    }
}

/// The receiving side, for [`Admin`].
#[derive(Debug, Clone)]
pub struct StatusSources {
    verdicts: watch::Receiver<Arc<Published>>,
    rollouts: watch::Receiver<Arc<crate::analysis::local::Published>>,
}

impl StatusFeeds {
    /// The feeds for a source, the sources for the admin, and the sender of the rollouts'
    /// states (for the rollout loop).
    pub fn channels() -> (
        Self,
        StatusSources,
        watch::Sender<Arc<crate::analysis::local::Published>>,
    ) {
        let (verdicts, verdicts_rx) = watch::channel(Arc::new(Published::default()));
        let (rollouts, rollouts_rx) = watch::channel(Arc::default());
        (
            Self {
                verdicts: VerdictFeed(verdicts),
                rollouts: rollouts_rx.clone(),
            },
            StatusSources {
                verdicts: verdicts_rx,
                rollouts: rollouts_rx,
            },
            rollouts,
        )
    }
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub metrics: Arc<Metrics>,
    /// What `/ready` reports.
    pub readiness: Arc<Readiness>,
    pub config_api: Arc<ConfigApi>,
    /// What `/autoscalers` serves: the latest evaluation of every Autoscaler (local mode; empty
    /// in a cluster, where each Autoscaler's status holds the same).
    pub autoscalers: watch::Receiver<Arc<AutoscalerList>>,
    /// What `/status` shows besides the Autoscalers.
    pub status: StatusSources,
}

impl Admin {
    pub fn handle(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        }
        match request.uri().path() {
            "/metrics" => {
                let mut response = Response::new(Full::new(Bytes::from(self.metrics.encode())));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    Metrics::content_type().parse().expect("valid header"),
                );
                response
            }
            "/live" => text(StatusCode::OK, "live\n"),
            "/ready" => {
                let status = if self.readiness.all_ready() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                let mut response = text(status, "");
                *response.body_mut() = Full::new(Bytes::from(self.readiness.report()));
                response
            }
            "/proxies" => json(&self.config_api.proxies()),
            "/autoscalers" => {
                let list = self.autoscalers.borrow().clone();
                json(&*list)
            }
            "/status" => json(&self.status_list()),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /ready, /live, /proxies, /autoscalers or /status\n",
            ),
        }
    }

    /// Serves the admin listener on `listener` until `shutdown` turns true (or its sender is
    /// dropped), with [`Server`]'s bounds: a request head within 10 s, at most 1,024
    /// connections, 5 s for requests in flight to finish on shutdown.
    pub async fn serve(self, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        // `/dashboard` and `/api/graph` (see `crate::dashboard`), answered before `handle`.
        let dashboard = Dashboard::start(
            self.config_api.clone(),
            self.autoscalers.clone(),
            self.metrics.clone(),
            DashboardSettings::default(),
            shutdown.clone(),
        );
        dashboard.follow_rollouts(self.status.rollouts.clone(), shutdown.clone());
        let admin = Arc::new(self);
        let handler = move |_peer, request: Request<Incoming>| {
            let admin = admin.clone();
            let dashboard = dashboard.clone();
            async move {
                match dashboard.route(&request).await {
                    Some(response) => response,
                    None => admin.handle(&request),
                }
            }
        };
        Server::new("admin")
            .serve(listener, handler, async move {
                crate::shutdown::stopped(&mut shutdown).await;
            })
            .await;
    }
}

/// One resource in `/status`.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceStatus<S> {
    namespace: String,
    name: String,
    status: S,
}

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusList {
    traffic_splits: Vec<ResourceStatus<weir_crds::TrafficSplitStatus>>,
    resilience_policies: Vec<ResourceStatus<weir_crds::PolicyStatus>>,
    autoscalers: Vec<crate::autoscaler::status::AutoscalerView>,
}

impl Admin {
    /// Every resource's status as the verdicts, the proxies' acknowledgements and the rollouts
    /// give it now.
    fn status_list(&self) -> StatusList {
        let published = self.status.verdicts.borrow().clone();
        let rollouts = self.status.rollouts.borrow().clone();
        let acks = self
            .config_api
            .acknowledgements(&crate::kubernetes::status::targets(&published));
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        );
        let mut list = StatusList {
            traffic_splits: Vec::new(),
            resilience_policies: Vec::new(),
            autoscalers: self.autoscalers.borrow().autoscalers.clone(),
        };
        for verdict in &published.verdicts {
            let ack = if verdict.is_default() {
                crate::kubernetes::status::acknowledgement_of(verdict, &acks)
            } else {
                acks.get(&verdict.service).cloned().unwrap_or_default()
            };
            let conditions = crate::kubernetes::status::conditions(verdict, &ack, &[], &now);
            let (namespace, name) = (verdict.namespace.clone(), verdict.name.clone());
            match verdict.kind {
                Kind::TrafficSplit => {
                    let key = (namespace.clone(), name.clone());
                    let analysis = rollouts.states.get(&key).cloned();
                    let mut status = weir_crds::TrafficSplitStatus {
                        observed_generation: verdict.generation,
                        conditions,
                        weights: verdict.weights.clone(),
                        backends: verdict
                            .backends
                            .iter()
                            .map(|(subset, endpoints)| weir_crds::BackendStatus {
                                subset: subset.clone(),
                                endpoints: *endpoints,
                            })
                            .collect(),
                        analysis: None,
                    };
                    if let Some(condition) =
                        crate::analysis::condition(analysis.as_ref(), rollouts.refused.get(&key))
                    {
                        status.conditions.push(crate::kubernetes::status::condition(
                            &[],
                            crate::analysis::CONDITION,
                            condition.0,
                            condition.1,
                            condition.2,
                            verdict.generation,
                            &now,
                        ));
                    }
                    status.analysis = analysis;
                    list.traffic_splits.push(ResourceStatus {
                        namespace,
                        name,
                        status,
                    });
                }
                Kind::ResiliencePolicy => list.resilience_policies.push(ResourceStatus {
                    namespace,
                    name,
                    status: weir_crds::PolicyStatus {
                        observed_generation: verdict.generation,
                        conditions,
                        effective_limits: verdict.effective_limits.clone(),
                    },
                }),
            }
        }
        list
    }
}

fn json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(value).unwrap_or_default(),
    )));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/json".parse().expect("valid header"),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("valid header"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_gating_parts_make_the_operator_unready_and_every_part_is_listed() {
        let readiness = Readiness::default();
        assert!(!readiness.all_ready(), "nothing named yet");
        readiness.not_ready(CONFIG_API, true, "the first state is not published yet");
        readiness.not_ready(WEBHOOK, true, "no certificate yet");
        assert!(!readiness.all_ready());
        readiness.ready(CONFIG_API);
        assert!(!readiness.all_ready(), "the starting webhook gates");
        assert!(readiness.is_ready(CONFIG_API));
        readiness.not_ready(WEBHOOK, false, "cannot listen on 0.0.0.0:9443");
        assert!(
            readiness.all_ready(),
            "a webhook that cannot start does not gate"
        );
        assert_eq!(
            readiness.report(),
            "ready\nconfig API: ready\ninjection webhook: not ready: cannot listen on 0.0.0.0:9443\n"
        );
    }
}
