//! An in-process fake of the Kubernetes API server: the real paths and wire formats of what
//! the operator uses, over HTTP on 127.0.0.1:0, so `kube::Client` talks to it unchanged.
//!
//! It keeps objects in memory with one resourceVersion counter and implements list, watch
//! (`?watch=true`, JSON lines from the given resourceVersion, label selectors), get, create,
//! merge / strategic-merge / apply patches (apply on a Lease refuses to take another holder's
//! `holderIdentity` without `force`, as field ownership makes the real server do), status
//! subresource patches (apply replaces the status: the operator is its only manager), the
//! `scale` subresource (get, and patch of `spec.replicas`), and delete. `metrics.k8s.io`
//! PodMetrics are ordinary objects of kind `PodMetrics`, served under `.../v1beta1/.../pods`. Writes that change nothing leave the resourceVersion alone and send no watch event,
//! as the real server does. A spec change bumps `metadata.generation`; a status write does not.
//!
//! Tests seed and edit objects with [`FakeApi::put`] / [`FakeApi::delete`], read every request
//! back with [`FakeApi::requests`] (with when it arrived, and [`FakeApi::watches`] counts the
//! watches opened on a path), and inject failures with [`FakeApi::fail`]. It can also
//! behave like a restarting API server: [`FakeApi::go_away`] closes every connection and stops
//! listening (connections are refused), [`FakeApi::come_back`] listens again on the same
//! address, and [`FakeApi::expire_resource_versions`] makes a watch from any resourceVersion
//! seen so far answer `410 Gone` (compacted), as a real server may after a restart.

#![allow(dead_code)] // each test binary uses a different part

mod proxy;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
    /// The HTTP status the fake answered with.
    pub code: u16,
    /// When it arrived (tokio's clock: paused in paused-time tests).
    pub at: tokio::time::Instant,
}

impl Recorded {
    pub fn param(&self, name: &str) -> Option<String> {
        query_params(&self.query).remove(name)
    }
}

#[derive(Debug)]
struct Fault {
    method: String,
    path_suffix: String,
    code: u16,
    reason: String,
    remaining: usize,
}

#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    collection: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

type Key = (String, String, String); // collection, namespace, name

#[derive(Debug, Default)]
struct State {
    rv: u64,
    next_uid: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<Change>,
    requests: Vec<Recorded>,
    faults: Vec<Fault>,
    /// A watch from a resourceVersion below this gets `410 Gone`.
    expired_below: u64,
    /// Tokens a TokenReview vouches for: token → (namespace, service account, pod, audiences).
    tokens: BTreeMap<String, (String, String, String, Vec<String>)>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Bumped with every change, so watches wake.
    changed: watch::Sender<u64>,
    /// True while the server is away: nothing listens and every connection is closed.
    away: watch::Sender<bool>,
}

/// A running fake API server; stops when dropped.
#[derive(Debug)]
pub struct FakeApi {
    pub url: String,
    shared: Arc<Shared>,
    _stop: watch::Sender<bool>,
}

impl FakeApi {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("addr");
        let url = format!("http://{address}");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 100,
                ..State::default()
            }),
            changed: watch::channel(0).0,
            away: watch::channel(false).0,
        });
        let (stop, mut stopped) = watch::channel(false);
        let server = shared.clone();
        tokio::spawn(async move {
            let mut away = server.away.subscribe();
            let mut listener = Some(listener);
            loop {
                let Some(open) = &listener else {
                    tokio::select! {
                        _ = away.wait_for(|away| !*away) => {}
                        _ = stopped.changed() => return,
                    }
                    // The port was ours a moment ago; retry while the kernel lets it go.
                    loop {
                        match TcpListener::bind(address).await {
                            Ok(bound) => break listener = Some(bound),
                            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                    continue;
                };
                let accepted = tokio::select! {
                    accepted = open.accept() => accepted,
                    _ = away.wait_for(|away| *away) => {
                        listener = None; // refuse connections
                        continue;
                    }
                    _ = stopped.changed() => return,
                };
                let Ok((stream, _)) = accepted else { continue };
                let shared = server.clone();
                let mut stopped = stopped.clone();
                let mut away = server.away.subscribe();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, request).await) }
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        _ = stopped.changed() => {}
                        _ = away.wait_for(|away| *away) => {}
                    }
                });
            }
        });
        Self {
            url,
            shared,
            _stop: stop,
        }
    }

    /// The server goes away: every open connection (watches included) is closed and new ones
    /// are refused until [`FakeApi::come_back`]. The objects stay.
    pub fn go_away(&self) {
        self.shared.away.send_replace(true);
    }

    /// The server listens again on its address.
    pub fn come_back(&self) {
        self.shared.away.send_replace(false);
    }

    /// A TokenReview of `token` says it is the projected token of `pod` in `namespace` (service
    /// account `default`) for `audiences`; any other token is not authenticated.
    pub fn add_token(&self, token: &str, namespace: &str, pod: &str, audiences: &[&str]) {
        self.shared.state.lock().tokens.insert(
            token.to_owned(),
            (
                namespace.to_owned(),
                "default".to_owned(),
                pod.to_owned(),
                audiences.iter().map(|a| a.to_string()).collect(),
            ),
        );
    }

    /// Every resourceVersion handed out so far is compacted: a watch from one gets `410 Gone`.
    pub fn expire_resource_versions(&self) {
        let mut state = self.shared.state.lock();
        state.expired_below = state.rv + 1;
    }

    /// The client config of this server (default namespace `default`).
    pub fn config(&self) -> kube::Config {
        kube::Config::new(self.url.parse().expect("url"))
    }

    /// A client of this server (default namespace `default`).
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().expect("url"));
        kube::Client::try_from(config).expect("client")
    }

    /// Creates or replaces an object (by `apiVersion`, `kind`, namespace and name), as
    /// `kubectl apply` would: a replace keeps the status and bumps the generation when the spec
    /// changed.
    pub fn put(&self, object: Value) {
        let collection = collection_of(&object);
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let mut state = self.shared.state.lock();
        let name = object["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_owned();
        let key = (collection.clone(), namespace.clone(), name);
        let mut object = object;
        object["metadata"]["namespace"] = json!(namespace);
        match state.objects.get(&key).cloned() {
            Some(old) => {
                object["metadata"]["uid"] = old["metadata"]["uid"].clone();
                object["metadata"]["creationTimestamp"] =
                    old["metadata"]["creationTimestamp"].clone();
                let mut generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                if old.get("spec") != object.get("spec") {
                    generation += 1;
                }
                object["metadata"]["generation"] = json!(generation);
                if object.get("status").is_none()
                    && let Some(status) = old.get("status")
                {
                    object["status"] = status.clone();
                }
                state.store(key, object, "MODIFIED");
            }
            None => {
                state.stamp_new(&mut object);
                state.store(key, object, "ADDED");
            }
        }
        drop(state);
        self.shared.changed.send_modify(|n| *n += 1);
    }

    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) {
        let key = (
            collection(api_version, kind),
            namespace.to_owned(),
            name.to_owned(),
        );
        let mut state = self.shared.state.lock();
        if let Some(mut object) = state.objects.remove(&key) {
            state.rv += 1;
            let rv = state.rv;
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            state.log.push(Change {
                rv,
                collection: key.0,
                namespace: key.1,
                kind: "DELETED",
                object,
            });
        }
        drop(state);
        self.shared.changed.send_modify(|n| *n += 1);
    }

    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (
            collection(api_version, kind),
            namespace.to_owned(),
            name.to_owned(),
        );
        self.shared.state.lock().objects.get(&key).cloned()
    }

    /// Every object of a kind, in all namespaces.
    pub fn objects(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let collection = collection(api_version, kind);
        self.shared
            .state
            .lock()
            .objects
            .iter()
            .filter(|((c, _, _), _)| *c == collection)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.state.lock().requests.clone()
    }

    /// The requests so far with this method and path, in order.
    pub fn requests_to(&self, method: &str, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path == path)
            .collect()
    }

    /// metrics.k8s.io is not served, as in a cluster without metrics-server.
    pub fn without_metrics_server(&self) {
        let pods = "/apis/metrics.k8s.io/v1beta1/namespaces/shop/pods";
        self.fail("GET", pods, 404, "NotFound", usize::MAX);
    }

    /// How many watches were opened on `path` (list requests not counted).
    pub fn watches(&self, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == path)
            .filter(|r| matches!(r.param("watch").as_deref(), Some("true" | "1")))
            .count()
    }

    /// The next `times` requests with this method whose path ends with `path_suffix` fail with
    /// `code` and `reason` (a Kubernetes `Status` body).
    pub fn fail(&self, method: &str, path_suffix: &str, code: u16, reason: &str, times: usize) {
        self.shared.state.lock().faults.push(Fault {
            method: method.to_owned(),
            path_suffix: path_suffix.to_owned(),
            code,
            reason: reason.to_owned(),
            remaining: times,
        });
    }
}

impl State {
    fn stamp_new(&mut self, object: &mut Value) {
        self.next_uid += 1;
        object["metadata"]["uid"] = json!(format!("00000000-0000-0000-0000-{:012}", self.next_uid));
        object["metadata"]["generation"] = json!(1);
        if object["metadata"].get("creationTimestamp").is_none() {
            // Distinct, increasing creation times keep "oldest wins" deterministic.
            object["metadata"]["creationTimestamp"] =
                json!(format!("2025-01-01T00:00:{:02}Z", self.next_uid % 60));
        }
    }

    /// Stores `object` at a new resourceVersion and logs the change for watches.
    fn store(&mut self, key: Key, mut object: Value, kind: &'static str) -> Value {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.log.push(Change {
            rv: self.rv,
            collection: key.0.clone(),
            namespace: key.1.clone(),
            kind,
            object: object.clone(),
        });
        self.objects.insert(key, object.clone());
        object
    }
}

fn plural(kind: &str) -> String {
    match kind {
        "ResiliencePolicy" => "resiliencepolicies".to_owned(),
        // metrics.k8s.io serves PodMetrics under `pods`.
        "PodMetrics" => "pods".to_owned(),
        other => format!("{}s", other.to_lowercase()),
    }
}

fn collection(api_version: &str, kind: &str) -> String {
    format!("{api_version}/{}", plural(kind))
}

fn collection_of(object: &Value) -> String {
    collection(
        object["apiVersion"].as_str().expect("apiVersion"),
        object["kind"].as_str().expect("kind"),
    )
}

/// The query's parameters, percent- and `+`-decoded as a form (`form_urlencoded`).
fn query_params(query: &str) -> BTreeMap<String, String> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// `a=b,c!=d,e,!f`, the subset of label selectors the operator and tests use.
fn selects(selector: &str, object: &Value) -> bool {
    let labels = &object["metadata"]["labels"];
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()].as_str() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once('=') {
            labels[k.trim()].as_str() == Some(v.trim_start_matches('=').trim())
        } else if let Some(k) = term.strip_prefix('!') {
            labels.get(k.trim()).is_none()
        } else {
            labels.get(term.trim()).is_some()
        }
    })
}

/// RFC 7386 JSON merge patch (also used for strategic merge: the operator's patches have no
/// lists to merge).
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            let object = target.as_object_mut().expect("object");
            for (key, value) in fields {
                if value.is_null() {
                    object.remove(key);
                } else {
                    merge(object.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

fn reply(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).expect("status"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed_unsync())
        .expect("response")
}

struct Target {
    collection: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest) = match *segments.first()? {
        "api" => (segments.get(1)?.to_string(), segments.get(2..)?),
        "apis" => (
            format!("{}/{}", segments.get(1)?, segments.get(2)?),
            segments.get(3..)?,
        ),
        _ => return None,
    };
    let (namespace, rest) = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        (Some(rest[1].to_owned()), &rest[2..])
    } else {
        (None, rest)
    };
    Some(Target {
        collection: format!("{group_version}/{}", rest.first()?),
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    })
}

async fn handle(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    if let Some(response) = proxy::serve(shared, &request).await {
        return response;
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let params = query_params(&query);

    let mut record = Recorded {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        content_type: content_type.clone(),
        body: body.clone(),
        code: 200,
        at: tokio::time::Instant::now(),
    };
    let injected = {
        let mut state = shared.state.lock();
        let fault = state.faults.iter_mut().find(|f| {
            f.remaining > 0 && f.method == method.as_str() && path.ends_with(&f.path_suffix)
        });
        fault.map(|f| {
            f.remaining -= 1;
            (f.code, f.reason.clone())
        })
    };
    let response = match (injected, parse_path(&path)) {
        (Some((code, reason)), _) => {
            record.code = code;
            reply(code, &status_body(code, &reason, "injected by the test"))
        }
        (None, None) => {
            record.code = 404;
            reply(404, &status_body(404, "NotFound", "no such path"))
        }
        (None, Some(target)) => {
            let is_watch = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
            if method == Method::GET && target.name.is_none() && is_watch {
                shared.state.lock().requests.push(record);
                return watch(shared.clone(), target, params);
            }
            // Recorded before it is served: a test that sees the change it makes (a status
            // written) then also sees the request.
            let index = {
                let mut state = shared.state.lock();
                state.requests.push(record);
                state.requests.len() - 1
            };
            let (code, value) = serve(shared, &method, &target, &params, &content_type, body);
            shared.state.lock().requests[index].code = code;
            return reply(code, &value);
        }
    };
    shared.state.lock().requests.push(record);
    response
}

fn serve(
    shared: &Shared,
    method: &Method,
    target: &Target,
    params: &BTreeMap<String, String>,
    content_type: &str,
    body: Value,
) -> (u16, Value) {
    let mut state = shared.state.lock();
    let key = |name: &str| {
        (
            target.collection.clone(),
            target.namespace.clone().unwrap_or_default(),
            name.to_owned(),
        )
    };
    if target.collection == "authentication.k8s.io/v1/tokenreviews" && method == Method::POST {
        // The review's answer, as the real server gives it: authenticated when the token is
        // known and one of its audiences is asked for.
        let token = body["spec"]["token"].as_str().unwrap_or_default();
        let wanted: Vec<String> = body["spec"]["audiences"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let mut review = body.clone();
        review["status"] = match state.tokens.get(token) {
            Some((namespace, account, pod, audiences))
                if wanted.iter().any(|w| audiences.contains(w)) =>
            {
                json!({
                    "authenticated": true,
                    "audiences": wanted.iter().filter(|w| audiences.contains(w)).collect::<Vec<_>>(),
                    "user": {
                        "username": format!("system:serviceaccount:{namespace}:{account}"),
                        "extra": {"authentication.kubernetes.io/pod-name": [pod]},
                    },
                })
            }
            _ => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        return (201, review);
    }
    if let (Some(name), Some("scale")) = (&target.name, target.subresource.as_deref()) {
        // The scale subresource of an object with `spec.replicas` and `spec.selector` (a
        // Deployment): GET reads it, PATCH/PUT set `spec.replicas` on the object.
        let Some(object) = state.objects.get(&key(name)).cloned() else {
            return (404, status_body(404, "NotFound", "NotFound"));
        };
        return match method.as_str() {
            "GET" => (200, scale_of(&object)),
            "PATCH" | "PUT" => {
                let mut updated = object.clone();
                if let Some(replicas) = body["spec"]["replicas"].as_i64() {
                    updated["spec"]["replicas"] = json!(replicas);
                }
                if updated != object {
                    let generation = object["metadata"]["generation"].as_i64().unwrap_or(1);
                    updated["metadata"]["generation"] = json!(generation + 1);
                    updated = state.store(key(name), updated, "MODIFIED");
                    drop(state);
                    shared.changed.send_modify(|n| *n += 1);
                }
                (200, scale_of(&updated))
            }
            _ => (
                405,
                status_body(405, "MethodNotAllowed", "MethodNotAllowed"),
            ),
        };
    }
    let result = match (method.as_str(), &target.name, target.subresource.as_deref()) {
        ("GET", None, _) => {
            let selector = params.get("labelSelector").cloned().unwrap_or_default();
            let items: Vec<Value> = state
                .objects
                .iter()
                .filter(|((c, ns, _), o)| {
                    *c == target.collection
                        && target.namespace.as_ref().is_none_or(|n| n == ns)
                        && selects(&selector, o)
                })
                .map(|(_, o)| o.clone())
                .collect();
            return (
                200,
                json!({
                    "apiVersion": "v1", "kind": "List",
                    "metadata": {"resourceVersion": state.rv.to_string()},
                    "items": items,
                }),
            );
        }
        ("GET", Some(name), _) => match state.objects.get(&key(name)) {
            Some(object) => return (200, object.clone()),
            None => Err((404, "NotFound")),
        },
        ("POST", None, _) => {
            let mut object = body;
            let name = match object["metadata"]["name"].as_str() {
                Some(name) => name.to_owned(),
                None => {
                    let prefix = object["metadata"]["generateName"].as_str().unwrap_or("x-");
                    format!("{prefix}{}", state.next_uid + 1)
                }
            };
            object["metadata"]["name"] = json!(name);
            if let Some(namespace) = &target.namespace {
                object["metadata"]["namespace"] = json!(namespace);
            }
            if state.objects.contains_key(&key(&name)) {
                Err((409, "AlreadyExists"))
            } else {
                state.stamp_new(&mut object);
                Ok(state.store(key(&name), object, "ADDED"))
            }
        }
        ("PATCH", Some(name), subresource) => {
            let apply = content_type.starts_with("application/apply-patch");
            let force = params.get("force").is_some_and(|f| f == "true");
            match state.objects.get(&key(name)).cloned() {
                None if apply && subresource.is_none() => {
                    let mut object = body;
                    object["metadata"]["name"] = json!(name);
                    if let Some(namespace) = &target.namespace {
                        object["metadata"]["namespace"] = json!(namespace);
                    }
                    state.stamp_new(&mut object);
                    Ok(state.store(key(name), object, "ADDED"))
                }
                None => Err((404, "NotFound")),
                Some(old) => {
                    let mut object = old.clone();
                    if subresource == Some("status") {
                        if apply {
                            object["status"] = body.get("status").cloned().unwrap_or(Value::Null);
                        } else if let Some(status) = body.get("status") {
                            merge(&mut object["status"], status);
                        }
                    } else {
                        let holder =
                            |o: &Value| o["spec"]["holderIdentity"].as_str().map(str::to_owned);
                        if apply
                            && !force
                            && let (Some(have), Some(want)) = (holder(&old), holder(&body))
                            && have != want
                        {
                            drop(state);
                            return (
                                409,
                                status_body(
                                    409,
                                    "Conflict",
                                    "Apply failed with 1 conflict: conflict with another manager: .spec.holderIdentity",
                                ),
                            );
                        }
                        let mut patch = body;
                        if let Some(meta) = patch.get_mut("metadata").and_then(Value::as_object_mut)
                        {
                            meta.retain(|k, _| k == "labels" || k == "annotations");
                        }
                        merge(&mut object, &patch);
                        if old.get("spec") != object.get("spec") {
                            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                            object["metadata"]["generation"] = json!(generation + 1);
                        }
                    }
                    if object == old {
                        Ok(old) // a no-op write: no new resourceVersion, no watch event
                    } else {
                        Ok(state.store(key(name), object, "MODIFIED"))
                    }
                }
            }
        }
        ("DELETE", Some(name), None) => match state.objects.remove(&key(name)) {
            Some(mut object) => {
                state.rv += 1;
                let rv = state.rv;
                object["metadata"]["resourceVersion"] = json!(rv.to_string());
                state.log.push(Change {
                    rv,
                    collection: target.collection.clone(),
                    namespace: target.namespace.clone().unwrap_or_default(),
                    kind: "DELETED",
                    object: object.clone(),
                });
                Ok(object)
            }
            None => Err((404, "NotFound")),
        },
        _ => Err((405, "MethodNotAllowed")),
    };
    drop(state);
    match result {
        Ok(object) => {
            shared.changed.send_modify(|n| *n += 1);
            (200, object)
        }
        Err((code, reason)) => (code, status_body(code, reason, reason)),
    }
}

/// The `autoscaling/v1` Scale of an object: its `spec.replicas`, `status.replicas` and
/// `spec.selector.matchLabels` as a selector string.
fn scale_of(object: &Value) -> Value {
    let selector: Vec<String> = object["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {
            "name": object["metadata"]["name"],
            "namespace": object["metadata"]["namespace"],
            "uid": object["metadata"]["uid"],
            "resourceVersion": object["metadata"]["resourceVersion"],
        },
        "spec": {"replicas": object["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {
            "replicas": object["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": selector.join(","),
        },
    })
}

/// A watch: JSON lines of the changes after `resourceVersion` (or of every object, then the
/// changes, without one), until `timeoutSeconds` or the client goes away.
fn watch(shared: Arc<Shared>, target: Target, params: BTreeMap<String, String>) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let selector = params.get("labelSelector").cloned().unwrap_or_default();
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .unwrap_or(290u64);
    let from: Option<u64> = params
        .get("resourceVersion")
        .and_then(|rv| rv.parse().ok())
        .filter(|rv| *rv != 0);
    tokio::spawn(async move {
        let expired_below = shared.state.lock().expired_below;
        if let Some(rv) = from
            && rv < expired_below
        {
            // As the real server does: a 200 whose only event is an ERROR with a 410 Status.
            let gone = status_body(410, "Expired", "too old resource version");
            let _ = tx.send(line("ERROR", &gone)).await;
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut wake = shared.changed.subscribe();
        let matches = |collection: &str, namespace: &str, object: &Value| {
            collection == target.collection
                && target.namespace.as_deref().is_none_or(|n| n == namespace)
                && selects(&selector, object)
        };
        // Without a resourceVersion: every current object as ADDED first, then the changes.
        let (mut cursor, initial) = {
            let state = shared.state.lock();
            match from {
                Some(rv) => (rv, Vec::new()),
                None => (
                    state.rv,
                    state
                        .objects
                        .iter()
                        .filter(|((c, ns, _), o)| matches(c, ns, o))
                        .map(|(_, o)| line("ADDED", o))
                        .collect::<Vec<Bytes>>(),
                ),
            }
        };
        for l in initial {
            if tx.send(l).await.is_err() {
                return;
            }
        }
        loop {
            let lines: Vec<Bytes> = {
                let state = shared.state.lock();
                let lines = state
                    .log
                    .iter()
                    .filter(|c| c.rv > cursor && matches(&c.collection, &c.namespace, &c.object))
                    .map(|c| line(c.kind, &c.object))
                    .collect();
                cursor = state.rv;
                lines
            };
            for l in lines {
                if tx.send(l).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                changed = wake.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), rx))
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(StreamBody::new(stream).boxed_unsync())
        .expect("response")
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}
