//! Reflector stores of the five kinds the translation reads, and the change signal.
//!
//! Each kind has a kube-runtime `watcher` (list, then watch from the list's resourceVersion;
//! resumes after a dropped connection, re-lists after `410 Gone`) paused after errors by
//! [`super::recovery::recovering`] (0.2 s doubling to 2 s, reset on success, a 410 relisted at
//! once) and a `reflector` that keeps the store. Pods are watched whole: the translation reads
//! only their labels, but the Autoscaler controller shares this store (one Pod watch and cache
//! for the operator, not two) and reads their phase, IP, readiness and CPU requests, and canary
//! analysis finds the mesh's sidecars there (the injected container's admin port, see
//! [`super::pods`]). To keep that cache small, every object is stored without its
//! `managedFields` (nobody here reads them; on a Pod they are a large part of the object), and
//! a Pod without the parts of its spec that no reader looks at (volumes, environment,
//! commands, probes, the ports of containers other than the sidecar...).
//!
//! The change signal fires only when a field the translation reads changed (a per-object
//! fingerprint): a custom resource's spec, a Service's ports, an EndpointSlice's endpoints and
//! ports, a Pod's labels. So Pod status churn and the operator's own status writes do not cause
//! translations, and a status write can never loop back into another one.

use super::inputs::{self, World};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::NamespaceResourceScope;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{DefaultHasher, Hash, Hasher};
use tokio::sync::watch;
use tokio::task::JoinSet;
use weir_crds::{ResiliencePolicy, TrafficSplit};

/// The reflector stores; cheap to clone (each is a shared handle).
#[derive(Clone)]
pub(crate) struct Stores {
    pub splits: Store<TrafficSplit>,
    pub policies: Store<ResiliencePolicy>,
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    pub pods: Store<Pod>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("splits", &self.splits.len())
            .field("policies", &self.policies.len())
            .field("services", &self.services.len())
            .field("slices", &self.slices.len())
            .field("pods", &self.pods.len())
            .finish()
    }
}

impl Stores {
    /// Starts one reflector task per kind in `tasks` (each task's output names its kind);
    /// every relevant change sends on `changed`.
    pub fn start(
        client: &Client,
        namespace: Option<&str>,
        changed: watch::Sender<()>,
        tasks: &mut JoinSet<&'static str>,
    ) -> Self {
        let config = watcher::Config::default;
        Self {
            splits: spawn(
                tasks,
                "TrafficSplit",
                api(client, namespace),
                config(),
                &changed,
                |s: &TrafficSplit| fingerprint(&(s.metadata.generation, json(&s.spec))),
            ),
            policies: spawn(
                tasks,
                "ResiliencePolicy",
                api(client, namespace),
                config(),
                &changed,
                |p: &ResiliencePolicy| fingerprint(&(p.metadata.generation, json(&p.spec))),
            ),
            services: spawn(
                tasks,
                "Service",
                api(client, namespace),
                config(),
                &changed,
                |s: &Service| fingerprint(&json(&s.spec.as_ref().map(|spec| spec.ports.clone()))),
            ),
            // Slices without the label belong to no Service (or are mirrored by hand): skip
            // them on the server.
            slices: spawn(
                tasks,
                "EndpointSlice",
                api(client, namespace),
                config().labels(inputs::SERVICE_NAME_LABEL),
                &changed,
                |s: &EndpointSlice| {
                    fingerprint(&(
                        s.metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(inputs::SERVICE_NAME_LABEL).cloned()),
                        &s.address_type,
                        json(&s.endpoints),
                        json(&s.ports),
                    ))
                },
            ),
            pods: spawn(
                tasks,
                "Pod",
                api(client, namespace),
                config(),
                &changed,
                |p: &Pod| fingerprint(&p.metadata.labels),
            ),
        }
    }

    /// Resolves once every store holds its first complete list; `Err` names a kind whose
    /// reflector is gone.
    pub async fn ready(&self) -> Result<(), &'static str> {
        until_ready(&self.splits)
            .await
            .map_err(|_| "TrafficSplit")?;
        until_ready(&self.policies)
            .await
            .map_err(|_| "ResiliencePolicy")?;
        until_ready(&self.services).await.map_err(|_| "Service")?;
        until_ready(&self.slices)
            .await
            .map_err(|_| "EndpointSlice")?;
        until_ready(&self.pods).await.map_err(|_| "Pod")?;
        Ok(())
    }

    /// Everything the translation reads, as of now.
    pub fn world(&self) -> World {
        let services = self.services.state();
        let slices = self.slices.state();
        let (services, endpoints) = inputs::services_and_endpoints(
            services.iter().map(|s| s.as_ref()),
            slices.iter().map(|s| s.as_ref()),
            |namespace, name| {
                self.pods
                    .get(&reflector::ObjectRef::new(name).within(namespace))
                    .map(|pod| pod.metadata.labels.clone().unwrap_or_default())
            },
        );
        World {
            splits: self.splits.state().iter().map(|s| (**s).clone()).collect(),
            policies: self
                .policies
                .state()
                .iter()
                .map(|p| (**p).clone())
                .collect(),
            services,
            endpoints,
        }
    }
}

/// [`Store::wait_until_ready`] for a store several tasks wait on (the Pod store is shared by the
/// translation and the Autoscaler controller). kube's readiness future keeps the waker of the
/// last task that polled it only (a oneshot channel underneath), so of two waiters one could
/// wait forever; asking again every 100 ms bounds that waiter's delay.
pub async fn until_ready<K>(store: &Store<K>) -> Result<(), reflector::store::WriterDropped>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    loop {
        if let Ok(ready) = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            store.wait_until_ready(),
        )
        .await
        {
            return ready;
        }
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn fingerprint<T: Hash>(value: &T) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// Starts the watcher + reflector of one kind; returns its store.
fn spawn<K>(
    tasks: &mut JoinSet<&'static str>,
    kind: &'static str,
    api: Api<K>,
    config: watcher::Config,
    changed: &watch::Sender<()>,
    fingerprint: fn(&K) -> u64,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let writer = Writer::default();
    let store = writer.as_reader();
    let changed = changed.clone();
    tasks.spawn(reflect(kind, api, config, writer, changed, fingerprint));
    store
}

/// Runs one reflector for good, signalling `changed` when an object's fingerprint changed,
/// an object was deleted, or a (re-)list completed.
async fn reflect<K>(
    kind: &'static str,
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    changed: watch::Sender<()>,
    fingerprint: fn(&K) -> u64,
) -> &'static str
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let key = |object: &K| {
        let meta = object.meta();
        (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    };
    let mut seen: HashMap<(String, String), u64> = HashMap::new();
    let mut relist: HashMap<(String, String), u64> = HashMap::new();
    let stream = super::recovery::recovering(watcher(api, config))
        .modify(slim::<K>)
        .reflect(writer);
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Apply(object)) => {
                let print = fingerprint(&object);
                if seen.insert(key(&object), print) != Some(print) {
                    changed.send_replace(());
                }
            }
            Ok(Event::Delete(object)) => {
                seen.remove(&key(&object));
                changed.send_replace(());
            }
            Ok(Event::Init) => relist.clear(),
            Ok(Event::InitApply(object)) => {
                relist.insert(key(&object), fingerprint(&object));
            }
            Ok(Event::InitDone) => {
                tracing::debug!(kind, objects = relist.len(), "listed");
                seen = std::mem::take(&mut relist);
                changed.send_replace(());
            }
            // The watcher recovers on the next poll, after the recovery delay.
            Err(error) => tracing::warn!(
                kind,
                code = super::recovery::status_code(&error),
                %error,
                "watch failed; retrying"
            ),
        }
    }
    kind
}

/// What the stores keep of an object: no `managedFields`, and of a Pod only the spec parts
/// the readers use (the containers' names and resources; the injected sidecar's ports, where
/// canary analysis finds its admin listener, also when it is a native sidecar among the init
/// containers), so the Pod cache stays small.
fn slim<K: Resource + 'static>(object: &mut K) {
    use crate::webhook::inject::PROXY_CONTAINER;
    use k8s_openapi::api::core::v1::Container;
    object.meta_mut().managed_fields = None;
    if let Some(pod) = (object as &mut dyn std::any::Any).downcast_mut::<Pod>()
        && let Some(spec) = pod.spec.take()
    {
        let sidecar_ports = |c: &mut Container| {
            if c.name == PROXY_CONTAINER {
                c.ports.take()
            } else {
                None
            }
        };
        let init_containers: Vec<Container> = spec
            .init_containers
            .into_iter()
            .flatten()
            .filter(|c| c.name == PROXY_CONTAINER)
            .map(|mut c| Container {
                ports: sidecar_ports(&mut c),
                name: c.name,
                ..Default::default()
            })
            .collect();
        pod.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            containers: spec
                .containers
                .into_iter()
                .map(|mut c| Container {
                    ports: sidecar_ports(&mut c),
                    name: c.name,
                    resources: c.resources,
                    ..Default::default()
                })
                .collect(),
            init_containers: (!init_containers.is_empty()).then_some(init_containers),
            ..Default::default()
        });
    }
}

#[cfg(test)]
mod slim_tests {
    use super::*;

    #[test]
    fn a_stored_pod_keeps_what_the_translation_and_the_autoscaler_read() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "orders-a", "namespace": "shop", "labels": {"app": "orders"},
                         "managedFields": [{"manager": "kubelet", "operation": "Update"}]},
            "spec": {"containers": [{"name": "app", "image": "orders",
                                     "env": [{"name": "BIG", "value": "x"}],
                                     "resources": {"requests": {"cpu": "100m"}}}],
                     "volumes": [{"name": "data", "emptyDir": {}}]},
            "status": {"phase": "Running", "podIP": "10.0.0.7"},
        }))
        .unwrap();
        slim(&mut pod);
        let kept = serde_json::to_value(&pod).unwrap();
        assert_eq!(
            kept,
            serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "orders-a", "namespace": "shop", "labels": {"app": "orders"}},
                "spec": {"containers": [{"name": "app",
                                         "resources": {"requests": {"cpu": "100m"}}}]},
                "status": {"phase": "Running", "podIP": "10.0.0.7"},
            })
        );
        // The injected sidecar keeps its ports, as a container or as a native sidecar.
        for field in ["containers", "initContainers"] {
            let mut pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "orders-a"},
                "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 8080}]}],
                         "initContainers": [{"name": "weir-init", "image": "init"}]},
            }))
            .unwrap();
            let spec = pod.spec.as_mut().unwrap();
            let sidecar: k8s_openapi::api::core::v1::Container =
                serde_json::from_value(serde_json::json!({
                    "name": "weir-proxy", "image": "proxy", "restartPolicy": "Always",
                    "ports": [{"name": "weir-admin", "containerPort": 15020}],
                }))
                .unwrap();
            if field == "containers" {
                spec.containers.push(sidecar);
            } else {
                spec.init_containers.as_mut().unwrap().push(sidecar);
            }
            slim(&mut pod);
            let kept = serde_json::to_value(&pod).unwrap();
            let proxy = serde_json::json!({"name": "weir-proxy",
                "ports": [{"name": "weir-admin", "containerPort": 15020}]});
            let mut want = serde_json::json!({"containers": [{"name": "app"}]});
            if field == "containers" {
                want["containers"].as_array_mut().unwrap().push(proxy);
            } else {
                want["initContainers"] = serde_json::json!([proxy]);
            }
            assert_eq!(kept["spec"], want, "{field}");
        }
        // Other kinds lose their managedFields only.
        let mut service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "orders", "managedFields": [{"manager": "kubectl"}]},
            "spec": {"ports": [{"port": 80}]},
        }))
        .unwrap();
        slim(&mut service);
        assert!(service.metadata.managed_fields.is_none());
        assert!(service.spec.is_some());
    }
}

#[cfg(test)]
mod injected_tests {
    use super::*;
    use crate::webhook::inject::{ADMIN_PORT, InjectionSettings, inject};

    /// What the webhook injects, kept by the store, names the sidecar's admin listener to
    /// canary analysis: as a plain container and as a native sidecar.
    #[test]
    fn an_injected_pod_in_the_store_gives_its_sidecars_admin_listener() {
        for native in [false, true] {
            let pod = serde_json::json!({
                "metadata": {"name": "orders-a", "namespace": "shop", "labels": {"app": "orders"}},
                "spec": {"containers": [{"name": "app", "image": "orders",
                                         "ports": [{"containerPort": 8080}]}]},
            });
            let mut settings = InjectionSettings::new("proxy", "init", "http://weir:15010");
            settings.native_sidecars = native;
            let namespace = [("weir.dev/inject".to_owned(), "enabled".to_owned())].into();
            let patch = inject(
                &serde_json::from_value(pod.clone()).unwrap(),
                &namespace,
                &settings,
            )
            .unwrap()
            .expect("injected");
            let mut injected = pod;
            json_patch::patch(&mut injected, &patch).unwrap();
            injected["status"] = serde_json::json!({"phase": "Running", "podIP": "10.0.0.9",
                "conditions": [{"type": "Ready", "status": "True"}]});
            let mut stored: Pod = serde_json::from_value(injected).unwrap();
            slim(&mut stored);
            assert_eq!(
                crate::kubernetes::pods::sidecar_admin(&stored),
                Some(std::net::SocketAddr::new(
                    "10.0.0.9".parse().unwrap(),
                    ADMIN_PORT
                )),
                "native: {native}"
            );
        }
    }
}

#[cfg(test)]
mod readiness_tests {
    use super::*;

    /// Two tasks waiting for one store both see it ready (kube's own future wakes only one).
    #[tokio::test]
    async fn every_waiter_of_a_shared_store_sees_it_ready() {
        let (store, mut writer) = reflector::store::<Pod>();
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { until_ready(&store).await })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitDone);
        for waiter in waiters {
            tokio::time::timeout(std::time::Duration::from_secs(2), waiter)
                .await
                .expect("every waiter wakes")
                .unwrap()
                .unwrap();
        }
    }
}
