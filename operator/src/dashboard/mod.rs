//! The live dashboard of the mesh on the operator's admin listener, in both modes:
//! `GET /dashboard` (a web page) and `GET /api/graph` (the JSON it draws, for scripts too).
//!
//! # Where the figures come from
//!
//! The operator already knows every connected proxy and its admin listener (from its polls of
//! the config API, [`ConfigApi::proxies`]); while someone reads `/api/graph`, a background task
//! scrapes each proxy's `/metrics` every [`Settings::interval`] (1 s), all proxies at once (at
//! most [`Settings::concurrency`] in flight), each scrape cut after [`Settings::timeout`]
//! (500 ms) — so a hung or dead sidecar never holds up the answer: its last known figures stay
//! and it is marked `stale`. Rates are the differences between a proxy's two latest scrapes
//! ([`graph`] has the rules: restarts never go negative, success = neither 5xx nor 429). No
//! Prometheus is needed.
//!
//! Scraping runs only while the graph is read: it starts with the first read and stops
//! [`Settings::idle`] (60 s) after the last, forgetting what it held, so an operator nobody
//! looks at costs its sidecars nothing. The first read after a pause waits for one scrape
//! round (at most about a second) and shows services and edges without rates; rates appear
//! from the second round, a second later. Memory is bounded: two reduced scrapes per
//! connected proxy (at most [`series::MAX_SERIES`] series each, bodies of at most 4 MiB), and
//! proxies that disconnect are forgotten at the next round.
//!
//! # `GET /api/graph`
//!
//! ```json
//! {
//!   "services": [{
//!     "id": "payments.shop", "namespace": "shop", "name": "payments",
//!     "proxies": 2, "staleProxies": 0, "stale": false,
//!     "inbound": {"requestsPerSecond": 18.5, "successPercent": 99.2, "p50Ms": 3.1, "p99Ms": 24.0},
//!     "subsets": [{"name": "v1", "desiredWeight": 90, "desiredPercent": 90.0,
//!                  "observedPercent": 89.4, "requestsPerSecond": 16.5, "endpoints": 1}],
//!     "breaker": "closed", "endpointsEjected": 0,
//!     "rateLimitedPerSecond": 0.0, "rateLimitedTotal": 0,
//!     "bulkheadRejectedPerSecond": 0.0, "bulkheadRejectedTotal": 0,
//!     "canary": {"split": "payments-canary", "canary": "v2", "phase": "Progressing",
//!                "step": 2, "steps": 3, "canaryWeight": 50, "failures": 0,
//!                "lastJudgement": {"requests": 240, "successRate": 1.0,
//!                                  "latencyP99": "24ms", "result": "Passed"},
//!                "message": "step 2 of 3: canary at 50%"}
//!   }],
//!   "edges": [{"from": "orders.shop", "to": "payments.shop", "requestsPerSecond": 18.5,
//!              "successPercent": 99.2, "p50Ms": 3.4, "p99Ms": 25.0,
//!              "breaker": "closed", "endpointsEjected": 0, "stale": false}],
//!   "autoscalers": [{"namespace": "shop", "name": "orders", "target": "orders",
//!                    "desiredReplicas": 2, "currentReplicas": 2}],
//!   "proxies": [{"namespace": "shop", "service": "orders", "pod": "orders-v1",
//!                "admin": "127.0.0.1:18301", "stale": false, "error": null, "scrapedMsAgo": 130}]
//! }
//! ```
//!
//! - `services`: every service with a connected proxy or called by one, and every service
//!   under canary analysis (called or not). `inbound`: the calls it
//!   received as its own proxies saw them (per second; success % and latency over the window;
//!   `null` without calls). `subsets`: each subset's weight in the config (`desiredWeight`, and
//!   as a share, `desiredPercent`) beside the share of calls its callers actually sent to it
//!   (`observedPercent`). `breaker` (`closed`, `half-open`, `open`; `null` when no caller runs
//!   one) and `endpointsEjected` are what its callers hold (the worst breaker, the most
//!   ejections). `rateLimited*` and `bulkheadRejected*`: refusals its own proxies made (per
//!   second, and since they started). `canary`: the progress of the canary analysis of its
//!   TrafficSplit ([`canaries_of`]), `null` without one: the split's `status.analysis`
//!   (`phase`, `step`, `canaryWeight`, `failures`, `lastJudgement`, `message`) with `split`
//!   (its name), `canary` (the canary subset) and `steps` (how many steps), as the operator's
//!   rollouts have it now — in a cluster, a replica that does not lead shows what the leader
//!   last recorded.
//! - `edges`: calls from one service to another, as the callers' proxies saw them.
//! - `autoscalers`: each Autoscaler's desired and current replicas, from the operator's own
//!   evaluation (in a cluster, where the controller writes them to each Autoscaler's status,
//!   the desired replicas of `weir_autoscaler_desired_replicas` and no current count).
//! - `proxies`: each connected proxy, whether its latest scrape failed (`stale`, `error`) and
//!   how long ago the latest good one was.
//!
//! # `GET /dashboard`
//!
//! One HTML page with its script and styles inline, embedded in the binary
//! (`include_str!`), that reads `/api/graph` every second and draws the service graph (SVG)
//! and tables. Hand-written and dependency-free rather than a bundled front-end build: the
//! page is a few hundred lines, needs no build step, no `node_modules` in the repository and
//! no network at run time (its Content-Security-Policy lets it reach only its own origin), and
//! what it does is readable in one file.

pub mod graph;
pub mod series;

use crate::autoscaler::scrape::Scraper;
use crate::autoscaler::status::AutoscalerList;
use crate::config_api::{ConfigApi, reachable_admin};
use crate::metrics::Metrics;
use crate::snapshot::ServiceKey;
use bytes::Bytes;
use futures::StreamExt;
use graph::{AutoscalerFigures, Context, Graph, ProxyScrapes};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use prometheus::core::Collector;
use series::Scrape;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use weir_proxy_api::protocol::parse_service_resource;

/// The `service` label a sidecar gives calls to services it does not know.
pub const UNKNOWN_SERVICE: &str = "unknown";

/// The page, served as it is.
const PAGE: &str = include_str!("page.html");

/// What the page may load: nothing but itself and `/api/graph`.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:";

/// How the dashboard scrapes.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Between the starts of two scrape rounds.
    pub interval: Duration,
    /// One scrape (connect, answer, body) gives up after this.
    pub timeout: Duration,
    /// Scraping stops this long after the last read of the graph.
    pub idle: Duration,
    /// Scrapes in flight at once.
    pub concurrency: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            idle: Duration::from_secs(60),
            concurrency: 64,
        }
    }
}

/// The dashboard's state, shared by the admin listener's connections and its scraping task.
#[derive(Debug)]
pub struct Dashboard {
    config_api: Arc<ConfigApi>,
    autoscalers: watch::Receiver<Arc<AutoscalerList>>,
    metrics: Arc<Metrics>,
    settings: Settings,
    /// Canary analysis progress by Service, for whoever runs the analysis to publish.
    canaries: watch::Sender<BTreeMap<ServiceKey, serde_json::Value>>,
    /// The latest graph as JSON; `None` while scraping is paused or has not finished a round.
    graph: watch::Sender<Option<Bytes>>,
    /// When the graph was last read: wakes the scraping task.
    read: watch::Sender<Option<Instant>>,
}

/// A proxy as the scraping task knows it across rounds: namespace, service, and pod (or the
/// peer address of its polls when it names no pod).
type ProxyKey = (String, String, String);

impl Dashboard {
    /// A dashboard of the proxies connected to `config_api`, and its scraping task (idle until
    /// the graph is read), which ends with `shutdown` or when the dashboard is dropped.
    pub fn start(
        config_api: Arc<ConfigApi>,
        autoscalers: watch::Receiver<Arc<AutoscalerList>>,
        metrics: Arc<Metrics>,
        settings: Settings,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let (read, reads) = watch::channel(None);
        let dashboard = Arc::new(Self {
            config_api,
            autoscalers,
            metrics,
            settings,
            canaries: watch::channel(BTreeMap::new()).0,
            graph: watch::channel(None).0,
            read,
        });
        tokio::spawn(scrape_while_read(
            Arc::downgrade(&dashboard),
            reads,
            shutdown,
        ));
        dashboard
    }

    /// Where canary analysis publishes each TrafficSplit's `status.analysis`, by its Service;
    /// `/api/graph` shows it on the service's node.
    pub fn canaries(&self) -> &watch::Sender<BTreeMap<ServiceKey, serde_json::Value>> {
        &self.canaries
    }

    /// Shows the rollouts published on `rollouts` (either mode's canary analysis) as
    /// [`Dashboard::canaries`], as they change, until `shutdown` or until the dashboard or the
    /// rollouts' sender is gone.
    pub fn follow_rollouts(
        self: &Arc<Self>,
        mut rollouts: watch::Receiver<Arc<crate::analysis::Published>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let dashboard = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let canaries = canaries_of(&rollouts.borrow_and_update());
                match dashboard.upgrade() {
                    Some(dashboard) => dashboard.canaries.send_replace(canaries),
                    None => return,
                };
                tokio::select! {
                    changed = rollouts.changed() => if changed.is_err() { return },
                    _ = shutdown.changed() => return,
                }
            }
        });
    }

    /// Answers `GET`/`HEAD` of `/dashboard` and `/api/graph`; `None` for anything else.
    pub async fn route<B>(&self, request: &Request<B>) -> Option<Response<Full<Bytes>>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return None;
        }
        match request.uri().path() {
            "/dashboard" | "/dashboard/" => Some(respond(
                "text/html; charset=utf-8",
                Bytes::from_static(PAGE.as_bytes()),
                Some(PAGE_POLICY),
            )),
            "/api/graph" => Some(respond("application/json", self.graph().await, None)),
            _ => None,
        }
    }

    /// The latest graph as JSON; the first read after a pause starts scraping and waits for
    /// its first round.
    pub async fn graph(&self) -> Bytes {
        self.read.send_replace(Some(Instant::now()));
        let mut graph = self.graph.subscribe();
        let first_round = self.settings.interval + self.settings.timeout * 2;
        let _ = tokio::time::timeout(first_round, graph.wait_for(Option::is_some)).await;
        let latest = graph.borrow().clone();
        latest.unwrap_or_else(|| to_json(&Graph::default()))
    }

    /// One round: scrape every connected proxy at once, then publish the graph.
    async fn round(
        &self,
        scraper: &Scraper,
        held: &mut HashMap<ProxyKey, ProxyScrapes>,
        origin: Instant,
    ) {
        let listed = self.config_api.proxies();
        let mut keys = Vec::with_capacity(listed.len());
        let mut targets = Vec::with_capacity(listed.len());
        for status in listed {
            let node = &status.node;
            let key = (
                node.namespace.clone(),
                node.service.clone(),
                node.pod.clone().unwrap_or_else(|| status.peer.to_string()),
            );
            let admin = node.admin.map(|admin| reachable_admin(admin, status.peer));
            let proxy = held.entry(key.clone()).or_default();
            proxy.namespace.clone_from(&node.namespace);
            proxy.service.clone_from(&node.service);
            proxy.pod.clone_from(&node.pod);
            proxy.admin = admin;
            proxy.calls = status
                .held
                .keys()
                .filter_map(|resource| parse_service_resource(resource))
                .map(|(namespace, name)| ServiceKey::new(namespace, name))
                .collect();
            keys.push(key.clone());
            targets.push((key, admin));
        }
        let results: Vec<(ProxyKey, Result<String, String>, Instant)> =
            futures::stream::iter(targets)
                .map(|(key, admin)| async move {
                    let result = match admin {
                        Some(admin) => scraper.fetch(admin).await.map_err(|e| format!("{e:#}")),
                        None => Err("the proxy names no admin listener".to_owned()),
                    };
                    (key, result, Instant::now())
                })
                .buffer_unordered(self.settings.concurrency.max(1))
                .collect()
                .await;
        let now = Instant::now();
        for (key, result, at) in results {
            let Some(proxy) = held.get_mut(&key) else {
                continue;
            };
            match result.and_then(|text| {
                Scrape::parse(&text, at.duration_since(origin)).map_err(|e| e.to_string())
            }) {
                Ok(scrape) => {
                    proxy.previous = proxy.latest.replace(Arc::new(scrape));
                    proxy.error = None;
                }
                Err(error) => proxy.error = Some(error),
            }
        }
        held.retain(|key, _| keys.contains(key));
        let mut proxies: Vec<ProxyScrapes> = keys
            .iter()
            .filter_map(|key| held.get(key))
            .cloned()
            .collect();
        for proxy in &mut proxies {
            proxy.scraped_ago = proxy
                .latest
                .as_ref()
                .map(|s| now.duration_since(origin).saturating_sub(s.at));
        }
        let context = Context {
            config: self.config_api.snapshot(),
            autoscalers: self.autoscaler_figures(),
            canaries: self.canaries.borrow().clone(),
        };
        let graph = graph::graph(&proxies, &context);
        self.graph.send_replace(Some(to_json(&graph)));
    }

    /// The Autoscalers this operator evaluates: local mode publishes them whole; in a
    /// cluster only the desired replicas gauge is at hand.
    fn autoscaler_figures(&self) -> Vec<AutoscalerFigures> {
        let list = self.autoscalers.borrow().clone();
        if !list.autoscalers.is_empty() {
            return list
                .autoscalers
                .iter()
                .map(|a| AutoscalerFigures {
                    namespace: a.namespace.clone(),
                    name: a.name.clone(),
                    target: a.target.clone(),
                    desired_replicas: a.status.desired_replicas,
                    current_replicas: a.status.current_replicas,
                })
                .collect();
        }
        let mut out: Vec<AutoscalerFigures> = self
            .metrics
            .autoscaler_desired_replicas
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|metric| {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_owned())
                        .unwrap_or_default()
                };
                AutoscalerFigures {
                    namespace: label("namespace"),
                    name: label("name"),
                    target: String::new(),
                    desired_replicas: i32::try_from(metric.get_gauge().get_value() as i64).ok(),
                    current_replicas: None,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }
}

/// The scraping task: rounds every `interval` while the graph was read within `idle`, parked
/// otherwise (what it held forgotten, so rates never span a pause).
async fn scrape_while_read(
    dashboard: Weak<Dashboard>,
    mut reads: watch::Receiver<Option<Instant>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(settings) = dashboard.upgrade().map(|d| d.settings) else {
        return;
    };
    let scraper = Scraper::new(settings.timeout);
    let origin = Instant::now();
    let mut held: HashMap<ProxyKey, ProxyScrapes> = HashMap::new();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let last_read = *reads.borrow_and_update();
        if last_read.is_none_or(|at| at.elapsed() >= settings.idle) {
            held.clear();
            if let Some(dashboard) = dashboard.upgrade() {
                dashboard.graph.send_replace(None);
            }
            tokio::select! {
                changed = reads.changed() => if changed.is_err() { return },
                _ = shutdown.changed() => return,
            }
            continue;
        }
        let started = Instant::now();
        {
            let Some(dashboard) = dashboard.upgrade() else {
                return;
            };
            tokio::select! {
                () = dashboard.round(&scraper, &mut held, origin) => {}
                _ = shutdown.changed() => return,
            }
        }
        tokio::select! {
            () = tokio::time::sleep_until(started + settings.interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Each rollout as `/api/graph` shows it on its Service: the split's `status.analysis`
/// (`phase`, `step`, `canaryWeight`, `lastJudgement`, `message`...) with the split's name
/// (`split`), the canary subset (`canary`) and the rollout's number of steps (`steps`). Of two
/// splits with an analysis on one Service (only the oldest routes), the first by name shows.
pub fn canaries_of(
    published: &crate::analysis::Published,
) -> BTreeMap<ServiceKey, serde_json::Value> {
    let mut canaries = BTreeMap::new();
    for (key, state) in &published.states {
        let Some(shape) = published.rollouts.get(key) else {
            continue;
        };
        let Ok(serde_json::Value::Object(mut canary)) = serde_json::to_value(state) else {
            continue;
        };
        canary.insert("split".to_owned(), key.1.clone().into());
        canary.insert("canary".to_owned(), shape.canary.clone().into());
        canary.insert("steps".to_owned(), shape.steps.into());
        canaries
            .entry(shape.service.clone())
            .or_insert(serde_json::Value::Object(canary));
    }
    canaries
}

fn to_json(graph: &Graph) -> Bytes {
    Bytes::from(serde_json::to_vec_pretty(graph).unwrap_or_default())
}

fn respond(
    content_type: &'static str,
    body: Bytes,
    policy: Option<&'static str>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type.parse().expect("valid"));
    headers.insert(header::CACHE_CONTROL, "no-store".parse().expect("valid"));
    if let Some(policy) = policy {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            policy.parse().expect("valid"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaler::status::AutoscalerView;
    use crate::snapshot::Snapshot;

    /// A dashboard, and the shutdown sender that keeps its scraping task alive.
    fn dashboard(
        autoscalers: AutoscalerList,
        metrics: Arc<Metrics>,
    ) -> (Arc<Dashboard>, watch::Sender<bool>) {
        let (_snapshots, snapshot_rx) = watch::channel(Arc::new(Snapshot::default()));
        let config_api = ConfigApi::new(snapshot_rx, metrics.clone());
        let (_list, list_rx) = watch::channel(Arc::new(autoscalers));
        let (stop, stopped) = watch::channel(false);
        let board = Dashboard::start(config_api, list_rx, metrics, Settings::default(), stopped);
        (board, stop)
    }

    #[tokio::test]
    async fn autoscalers_come_from_local_evaluations_else_from_the_desired_gauge() {
        let metrics = Arc::new(Metrics::new());
        for (name, desired) in [("web", 4), ("orders", 2)] {
            metrics
                .autoscaler_desired_replicas
                .with_label_values(&["shop", name])
                .set(desired);
        }
        // In a cluster the controller only sets the gauge: desired replicas, no current count.
        let (cluster, _stop) = dashboard(AutoscalerList::default(), metrics.clone());
        let figures = cluster.autoscaler_figures();
        assert_eq!(
            figures
                .iter()
                .map(|a| (a.name.as_str(), a.desired_replicas, a.current_replicas))
                .collect::<Vec<_>>(),
            [("orders", Some(2), None), ("web", Some(4), None)]
        );
        // Local mode publishes its evaluations whole.
        let mut view: AutoscalerView = serde_json::from_value(serde_json::json!({
            "namespace": "shop", "name": "orders", "target": "orders",
            "currentReplicas": 1, "desiredReplicas": 3
        }))
        .unwrap();
        view.target = "orders-local".into();
        let (local, _stop) = dashboard(
            AutoscalerList {
                autoscalers: vec![view],
            },
            metrics,
        );
        let figures = local.autoscaler_figures();
        assert_eq!(figures.len(), 1);
        assert_eq!(figures[0].target, "orders-local");
        assert_eq!(
            (figures[0].desired_replicas, figures[0].current_replicas),
            (Some(3), Some(1))
        );
    }

    #[tokio::test]
    async fn only_the_dashboard_routes_are_answered_and_the_page_is_self_contained() {
        let (board, _stop) = dashboard(AutoscalerList::default(), Arc::new(Metrics::new()));
        let get = |path: &str| Request::get(path).body(()).unwrap();
        assert!(board.route(&get("/metrics")).await.is_none());
        assert!(
            board
                .route(&Request::post("/api/graph").body(()).unwrap())
                .await
                .is_none(),
            "other methods are the admin listener's (405)"
        );
        let page = board.route(&get("/dashboard")).await.unwrap();
        assert_eq!(
            page.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        // Nothing loaded from elsewhere: no absolute URL in the page but the SVG namespace.
        for url in PAGE.match_indices("http") {
            assert!(
                PAGE[url.0..].starts_with("http://www.w3.org/2000/svg"),
                "{}",
                &PAGE[url.0..url.0 + 40]
            );
        }
        // No proxy connected: an empty graph, at once.
        let graph = board.route(&get("/api/graph")).await.unwrap();
        assert_eq!(graph.headers()[header::CONTENT_TYPE], "application/json");
    }
}
