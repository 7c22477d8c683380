//! Probes are not traffic: the app containers' probes are rewritten to the sidecar's admin
//! listener, which forwards them to the app without any inbound policy and without counting
//! them (`weir-sidecar`'s `probe` module). Without this, the kubelet's probes would arrive at the
//! pod IP, be redirected to the inbound listener like any caller's request, and meet its rate
//! limit, bulkhead and timeouts: a policy sized for callers could make the pod unready or get it
//! restarted, and every probe would count as a request (metrics, the Autoscaler's rps).
//!
//! What becomes what, per app container and per probe (liveness, readiness, startup):
//! - `httpGet` (HTTP) → `httpGet` on the admin port at `/app-health/<container>/<kind>`; the
//!   sidecar sends the original path and headers to `127.0.0.1:<port>`;
//! - `tcpSocket` → the same `httpGet`; the sidecar answers 200 when a TCP connection to the app's
//!   port opens. Left as it was, the probe would be answered by the inbound listener itself,
//!   which accepts every connection: the probe would test the sidecar, not the app;
//! - `grpc` → the same `httpGet`; the sidecar makes the `grpc.health.v1.Health/Check` call over
//!   h2c and answers 200 for `SERVING`. Left as it was, the call would be HTTP/2 through the
//!   inbound listener, policed and counted.
//!
//! Left alone: `exec` probes (they never touch the network); `httpGet` with scheme `HTTPS` (the
//! inbound listener does not read TLS: it splices the bytes to the app unchanged, and no HTTP
//! policy applies to a spliced connection); a probe with a `host` of its own (it does not go to
//! this pod); a probe whose port is excluded from inbound interception (it reaches the app
//! directly); a probe naming a port the container does not declare (the kubelet fails it either
//! way, and the error it gives is clearer than ours would be).
//!
//! The original targets travel to the sidecar in its environment as [`ENV`], a JSON object keyed
//! by `<container>/<kind>` (the format is specified in `weir-sidecar`'s `probe` module).
//! The probe's own timing (`periodSeconds`, `timeoutSeconds`, thresholds) is kept, and its
//! `timeoutSeconds` is passed on so that the sidecar gives up when the kubelet does.

use super::settings::ADMIN_PORT;
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Map, Value, json};

/// The proxy container's environment variable holding the original probe targets.
pub const ENV: &str = "WEIR_APP_PROBES";
/// The admin listener's path prefix for forwarded probes.
pub const PATH_PREFIX: &str = "/app-health/";

/// The probes of one pod, rewritten.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Rewrite {
    /// JSON Patch operations replacing the probes (container indices as in the admitted pod:
    /// apply them before anything that inserts a container).
    pub ops: Vec<Value>,
    /// `<container>/<kind>` → the original target, the value of [`ENV`].
    pub table: Map<String, Value>,
}

impl Rewrite {
    /// [`ENV`]'s value, or `None` when no probe was rewritten.
    pub fn env_value(&self) -> Option<String> {
        (!self.table.is_empty()).then(|| Value::Object(self.table.clone()).to_string())
    }
}

/// Rewrites every probe of the pod's app containers that the sidecar would otherwise see.
/// `excluded_inbound_ports` are the ports interception leaves alone (besides the admin port).
pub fn rewrite(pod: &Pod, excluded_inbound_ports: &[u16]) -> Rewrite {
    let mut out = Rewrite::default();
    let Some(spec) = pod.spec.as_ref() else {
        return out;
    };
    for (index, container) in spec.containers.iter().enumerate() {
        let probes = [
            ("liveness", "livenessProbe", &container.liveness_probe),
            ("readiness", "readinessProbe", &container.readiness_probe),
            ("startup", "startupProbe", &container.startup_probe),
        ];
        for (kind, field, probe) in probes {
            let Some(probe) = probe else { continue };
            let Some(target) = original_target(container, probe, excluded_inbound_ports) else {
                continue;
            };
            let key = format!("{}/{kind}", container.name);
            let mut rewritten = probe.clone();
            rewritten.exec = None;
            rewritten.tcp_socket = None;
            rewritten.grpc = None;
            rewritten.http_get = Some(HTTPGetAction {
                path: Some(format!("{PATH_PREFIX}{key}")),
                port: IntOrString::Int(i32::from(ADMIN_PORT)),
                scheme: Some("HTTP".to_owned()),
                ..Default::default()
            });
            out.ops.push(json!({
                "op": "replace",
                "path": format!("/spec/containers/{index}/{field}"),
                "value": serde_json::to_value(&rewritten).expect("a Probe serializes"),
            }));
            out.table.insert(key, target);
        }
    }
    out
}

/// What the sidecar must probe instead, or `None` when this probe stays as it is (see the
/// module doc for which).
fn original_target(container: &Container, probe: &Probe, excluded: &[u16]) -> Option<Value> {
    let port = |port: &IntOrString| -> Option<u16> {
        let number = match port {
            IntOrString::Int(n) => *n,
            IntOrString::String(name) => {
                container
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))?
                    .container_port
            }
        };
        u16::try_from(number)
            .ok()
            .filter(|p| *p != 0 && *p != ADMIN_PORT && !excluded.contains(p))
    };
    let mut target = if let Some(http) = &probe.http_get {
        let https = http
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
        if https || http.host.as_deref().is_some_and(|h| !h.is_empty()) {
            return None;
        }
        let mut target = json!({
            "port": port(&http.port)?,
            "path": http.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".to_owned()),
        });
        let headers: Vec<Value> = http
            .http_headers
            .iter()
            .flatten()
            .map(|h| json!({"name": h.name, "value": h.value}))
            .collect();
        if !headers.is_empty() {
            target["headers"] = Value::Array(headers);
        }
        json!({"http": target})
    } else if let Some(tcp) = &probe.tcp_socket {
        if tcp.host.as_deref().is_some_and(|h| !h.is_empty()) {
            return None;
        }
        json!({"tcp": {"port": port(&tcp.port)?}})
    } else if let Some(grpc) = &probe.grpc {
        let mut target = json!({"port": port(&IntOrString::Int(grpc.port))?});
        if let Some(service) = grpc.service.as_deref().filter(|s| !s.is_empty()) {
            target["service"] = json!(service);
        }
        json!({"grpc": target})
    } else {
        return None;
    };
    // The kubelet's default is 1 s.
    target["timeoutSeconds"] = json!(probe.timeout_seconds.unwrap_or(1).max(1));
    Some(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: Value) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": containers},
        }))
        .unwrap()
    }

    #[test]
    fn http_tcp_and_grpc_probes_point_at_the_admin_listener() {
        let pod = pod(json!([
            {"name": "web", "image": "web",
             "ports": [{"name": "http", "containerPort": 8080}],
             "livenessProbe": {"httpGet": {"path": "/live", "port": "http",
                 "httpHeaders": [{"name": "X-Probe", "value": "1"}]},
                 "periodSeconds": 10, "timeoutSeconds": 3},
             "readinessProbe": {"tcpSocket": {"port": 8080}},
             "startupProbe": {"exec": {"command": ["true"]}}},
            {"name": "rpc", "image": "rpc",
             "readinessProbe": {"grpc": {"port": 9090, "service": "shop.Orders"}},
             "livenessProbe": {"httpGet": {"path": "/x", "port": 9443, "scheme": "HTTPS"}}},
        ]));
        let rewrite = rewrite(&pod, &[]);
        let paths: Vec<&str> = rewrite
            .ops
            .iter()
            .map(|op| op["path"].as_str().unwrap())
            .collect();
        assert_eq!(
            paths,
            [
                "/spec/containers/0/livenessProbe",
                "/spec/containers/0/readinessProbe",
                "/spec/containers/1/readinessProbe",
            ],
            "exec and HTTPS probes stay as they are"
        );
        let liveness = &rewrite.ops[0]["value"];
        assert_eq!(
            liveness,
            &json!({"httpGet": {"path": "/app-health/web/liveness", "port": 15020, "scheme": "HTTP"},
                    "periodSeconds": 10, "timeoutSeconds": 3})
        );
        let readiness = &rewrite.ops[2]["value"];
        assert_eq!(readiness["httpGet"]["path"], "/app-health/rpc/readiness");
        assert!(readiness.get("grpc").is_none(), "{readiness}");
        assert_eq!(
            Value::Object(rewrite.table.clone()),
            json!({
                "web/liveness": {"http": {"port": 8080, "path": "/live",
                    "headers": [{"name": "X-Probe", "value": "1"}]}, "timeoutSeconds": 3},
                "web/readiness": {"tcp": {"port": 8080}, "timeoutSeconds": 1},
                "rpc/readiness": {"grpc": {"port": 9090, "service": "shop.Orders"},
                                  "timeoutSeconds": 1},
            })
        );
    }

    #[test]
    fn probes_that_bypass_the_sidecar_stay_as_they_are() {
        let pod = pod(json!([
            {"name": "web", "image": "web",
             "livenessProbe": {"httpGet": {"path": "/", "port": 9000}},
             "readinessProbe": {"httpGet": {"path": "/", "port": 8080, "host": "10.0.0.9"}},
             "startupProbe": {"httpGet": {"path": "/", "port": "undeclared"}}},
        ]));
        let rewrite = rewrite(&pod, &[9000]);
        assert!(rewrite.ops.is_empty(), "{:?}", rewrite.ops);
        assert_eq!(rewrite.env_value(), None);
    }
}
