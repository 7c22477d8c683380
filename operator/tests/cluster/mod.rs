//! The harness of the cluster-mode tests (`kubernetes*.rs`, `autoscaler_controller.rs`,
//! `autoscaler_scheduling.rs`): the objects they seed in the fake API server (`fake_api`), the
//! operator's Kubernetes source and the Autoscaler controller started against it and stopped
//! cleanly, and the reads of what the operator wrote back (status, conditions).
//!
//! A test binary using it declares `mod fake_api;` beside `mod cluster;`.

#![allow(dead_code)] // each test binary uses a different part

use crate::fake_api::FakeApi;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, watcher};
use serde_json::{Value, json};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_operator::analysis::Published;
use weir_operator::autoscaler::controller;
use weir_operator::config_api::ConfigApi;
use weir_operator::kubernetes::{self, LeaseSettings, Settings};
use weir_operator::metrics::Metrics;
use weir_operator::snapshot::{ServiceKey, Snapshot};

/// The namespace of the shop's Services in these tests.
pub const NS: &str = "shop";

/// How long a test waits for the operator to act on what it saw.
pub const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- objects

/// Service `name` in `shop`, port 80 `http` to target port 8080.
pub fn service(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    })
}

/// Pod `name` in `shop` with these labels.
pub fn pod(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "payments"}]},
    })
}

/// A running, ready Pod `name` of the Deployment `app` at `ip` (the address its admin
/// listener is scraped on).
pub fn running_pod(name: &str, app: &str, ip: &str) -> Value {
    let mut pod = pod(name, json!({"app": app}));
    pod["spec"]["containers"][0]["image"] = json!(app);
    pod["status"] = json!({
        "phase": "Running", "podIP": ip, "startTime": "2025-01-01T00:00:00Z",
        "conditions": [{"type": "Ready", "status": "True",
                        "lastTransitionTime": "2025-01-01T00:00:10Z"}],
    });
    pod
}

/// payments' EndpointSlice `payments-x1`: these `ports` (name, port), and per endpoint its IP,
/// its Pod (none if empty) and whether it is ready.
pub fn payments_slice<I: AsRef<str>, P: AsRef<str>>(
    ports: Value,
    endpoints: impl IntoIterator<Item = (I, P, bool)>,
) -> Value {
    let endpoints: Vec<Value> = endpoints
        .into_iter()
        .map(|(ip, pod, ready)| {
            let mut endpoint = json!({"addresses": [ip.as_ref()], "conditions": {"ready": ready}});
            if !pod.as_ref().is_empty() {
                endpoint["targetRef"] =
                    json!({"kind": "Pod", "name": pod.as_ref(), "namespace": NS});
            }
            endpoint
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "payments-x1", "namespace": NS,
                     "labels": {"kubernetes.io/service-name": "payments"}},
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    })
}

/// TrafficSplit `name` of payments in `shop` with these backends: (subset, version label,
/// weight).
pub fn payments_split(name: &str, backends: &[(&str, &str, i32)]) -> Value {
    let backends: Vec<Value> = backends
        .iter()
        .map(|(subset, version, weight)| {
            json!({"subset": subset, "selector": {"version": version}, "weight": weight})
        })
        .collect();
    json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "TrafficSplit",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"service": "payments", "backends": backends},
    })
}

/// ResiliencePolicy `name` in `namespace` with this spec.
pub fn policy(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "ResiliencePolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}

/// Deployment `name` in `shop` at `replicas` (spec and status), selecting `app: name`.
pub fn deployment(name: &str, replicas: i64) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "app", "image": name}]}},
        },
        "status": {"replicas": replicas},
    })
}

/// Autoscaler `name` of the Deployment `name`, 1 to 10 replicas, on these metrics.
pub fn autoscaler(name: &str, metrics: Value) -> Value {
    json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "Autoscaler",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": 1, "maxReplicas": 10,
            "metrics": metrics,
        },
    })
}

/// payments in `shop` as the config API serves it: one subset `default` of `endpoints`, or no
/// subset at all when there are none.
pub fn payments_config(endpoints: &[SocketAddr]) -> weir_proxy_api::ServiceConfig {
    let subsets = (!endpoints.is_empty()).then(|| weir_proxy_api::Subset {
        name: "default".into(),
        weight: 1,
        endpoints: endpoints.to_vec(),
    });
    weir_proxy_api::ServiceConfig {
        name: "payments".into(),
        namespace: NS.into(),
        addresses: Vec::new(),
        subsets: subsets.into_iter().collect(),
        rules: Vec::new(),
        ports: Vec::new(),
        policy: Default::default(),
    }
}

/// A snapshot feed that holds `services` for good: its sender is leaked, so it never changes
/// and never closes.
pub fn fixed_snapshot(
    services: Vec<weir_proxy_api::ServiceConfig>,
) -> watch::Receiver<Arc<Snapshot>> {
    let services: std::collections::HashMap<_, _> = services
        .into_iter()
        .map(|s| (ServiceKey::new(&s.namespace, &s.name), s))
        .collect();
    let snapshot = Snapshot::default()
        .next(&services, &std::collections::HashMap::new())
        .unwrap();
    let (tx, rx) = watch::channel(Arc::new(snapshot));
    std::mem::forget(tx);
    rx
}

// ---------------------------------------------------------------- what the operator wrote

/// The status of a `weir.dev` object (`kind` TrafficSplit, ResiliencePolicy, Autoscaler), or
/// null while it has none (or the object is gone).
pub fn weir_status(api: &FakeApi, kind: &str, namespace: &str, name: &str) -> Value {
    api.get("weir.dev/v1alpha1", kind, namespace, name)
        .map(|o| o["status"].clone())
        .unwrap_or(Value::Null)
}

/// The condition `type_` of `status`, or null.
pub fn condition(status: &Value, type_: &str) -> Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or(Value::Null)
}

/// The replicas the Deployment `name` in `shop` asks for now.
pub fn replicas(api: &FakeApi, name: &str) -> i64 {
    api.get("apps/v1", "Deployment", NS, name).unwrap()["spec"]["replicas"]
        .as_i64()
        .unwrap()
}

/// Every Event the operator recorded.
pub fn events(api: &FakeApi) -> Vec<Value> {
    api.objects("events.k8s.io/v1", "Event")
}

// ---------------------------------------------------------------- the operator

/// Settings of a replica `identity` taking part in leader election with a Lease of
/// `duration_seconds` (1 s grace).
pub fn with_lease(identity: &str, duration_seconds: u64) -> Settings {
    let mut settings = Settings::new(identity);
    settings.lease = Some(LeaseSettings {
        duration_seconds,
        grace_seconds: 1,
        ..LeaseSettings::new("weir-operator", "weir-system")
    });
    settings
}

/// The operator's Kubernetes source (`kubernetes::run`) against the fake, with a config API
/// whose proxies' acknowledgements `Programmed` counts and a feed of the rollouts it publishes.
pub struct Operator {
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub metrics: Arc<Metrics>,
    pub config_api: Arc<ConfigApi>,
    /// The rollouts as the analysis publishes them (for the dashboard).
    pub rollouts: watch::Receiver<Arc<Published>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), kubernetes::Error>>,
}

impl Operator {
    pub fn start(api: &FakeApi, mut settings: Settings) -> Self {
        // Logs to the test's output with `RUST_LOG=weir_operator=debug` and `--nocapture`.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let (snapshots_tx, snapshots) = watch::channel(Arc::new(Snapshot::default()));
        let metrics = Arc::new(Metrics::new());
        let config_api = ConfigApi::new(snapshots.clone(), metrics.clone());
        settings.config_api = Some(config_api.clone());
        let (rollouts_tx, rollouts) = watch::channel(Arc::default());
        settings.rollouts = Some(rollouts_tx);
        let (stop, shutdown) = watch::channel(false);
        let client = kubernetes::client::client(api.config()).expect("client");
        let task = tokio::spawn(kubernetes::run(
            client,
            settings,
            snapshots_tx,
            metrics.clone(),
            shutdown,
        ));
        Self {
            snapshots,
            metrics,
            config_api,
            rollouts,
            stop,
            task,
        }
    }

    /// Asks it to stop and waits (10 s at most) for a clean end.
    pub async fn stop(self) {
        stop_cleanly(self.stop, self.task, Duration::from_secs(10)).await;
    }

    /// A signal that turns true when the test stops it (for what the test starts beside it).
    pub fn shutdown(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    /// The first route of `service` in `shop` as published now: (subset, weight, endpoints).
    pub fn subsets_of(&self, service: &str) -> Option<Vec<(String, u32, Vec<SocketAddr>)>> {
        let snapshot = self.snapshot();
        let service = snapshot.services.get(&ServiceKey::new(NS, service))?;
        let route = *service.value.routes().first()?;
        Some(
            route
                .subsets
                .iter()
                .map(|s| (s.name.clone(), s.weight, s.endpoints.clone()))
                .collect(),
        )
    }

    /// Reconciles of `kind` that ended with `result` (`success`, `error`).
    pub fn reconciles(&self, kind: &str, result: &str) -> u64 {
        self.metrics
            .reconcile
            .with_label_values(&[kind, result])
            .get()
    }
}

async fn stop_cleanly<E: std::fmt::Debug>(
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), E>>,
    within: Duration,
) {
    stop.send_replace(true);
    tokio::time::timeout(within, task)
        .await
        .expect("stops on shutdown")
        .expect("no panic")
        .expect("no error");
}

// ---------------------------------------------------------------- the Autoscaler controller

/// Controller settings for `shop`: evaluations every `interval`, sidecars' admin listeners on
/// `admin_port`.
pub fn autoscaler_settings(admin_port: u16, interval: Duration) -> controller::Settings {
    let mut settings = controller::Settings::new("weir-operator-0");
    settings.namespace = Some(NS.to_owned());
    settings.interval = interval;
    settings.admin_port = admin_port;
    settings
}

/// The Autoscaler controller against the fake, with a Pod store of `shop` standing for the one
/// `kubernetes::run` shares, and a leadership the test switches.
pub struct AutoscalerController {
    pub metrics: Arc<Metrics>,
    pub leader: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), controller::Error>>,
}

impl AutoscalerController {
    pub fn start(api: &FakeApi, settings: controller::Settings, leader: bool) -> Self {
        let metrics = Arc::new(Metrics::new());
        let (leader, leader_rx) = watch::channel(leader);
        let (stop, shutdown) = watch::channel(false);
        let (pods, pod_watch) = pod_store(api.client());
        let (client, for_run) = (api.client(), metrics.clone());
        let task = tokio::spawn(async move {
            let result =
                controller::run(client, settings, pods, for_run, leader_rx, shutdown).await;
            pod_watch.abort();
            result
        });
        Self {
            metrics,
            leader,
            stop,
            task,
        }
    }

    /// Asks it to stop and waits (10 s at most) for a clean end.
    pub async fn stop(self) {
        self.stop_within(Duration::from_secs(10)).await;
    }

    /// Asks it to stop and waits (`within` at most) for a clean end.
    pub async fn stop_within(self, within: Duration) {
        stop_cleanly(self.stop, self.task, within).await;
    }

    /// Reconciles of Autoscalers that ended with `result`.
    pub fn reconciles(&self, result: &str) -> u64 {
        self.metrics
            .reconcile
            .with_label_values(&["Autoscaler", result])
            .get()
    }
}

/// A reflector of the Pods in `shop`.
fn pod_store(client: kube::Client) -> (Store<Pod>, JoinHandle<()>) {
    let (store, writer) = reflector::store();
    let task = tokio::spawn(async move {
        let stream = watcher(
            Api::<Pod>::namespaced(client, NS),
            watcher::Config::default(),
        )
        .reflect(writer);
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    (store, task)
}

/// Listeners on one port at each of `hosts` (127.0.0.x): the admin listeners of pods, whose
/// IPs differ and whose port is the same.
pub async fn listeners(hosts: &[u8]) -> (u16, Vec<TcpListener>) {
    'port: for _ in 0..20 {
        let first = TcpListener::bind((Ipv4Addr::new(127, 0, 0, hosts[0]), 0))
            .await
            .expect("bind");
        let port = first.local_addr().unwrap().port();
        let mut all = vec![first];
        for host in &hosts[1..] {
            match TcpListener::bind((Ipv4Addr::new(127, 0, 0, *host), port)).await {
                Ok(listener) => all.push(listener),
                Err(_) => continue 'port,
            }
        }
        return (port, all);
    }
    panic!("no port free on every host");
}
