//! The app's probes, forwarded by the admin listener: `GET /app-health/<container>/<kind>`.
//!
//! Probes are not traffic. The injection webhook rewrites the app containers' liveness,
//! readiness and startup probes to the admin port (which interception leaves alone) and hands
//! the original targets to this proxy in [`ENV`]. A probe arriving here goes straight to the
//! app on loopback: no inbound policy (rate limit, bulkhead, timeouts of a policy) applies and
//! no request metric counts it, so neither a policy sized for callers nor a flood of callers
//! can make the pod unready or get it restarted, and probes never feed the Autoscaler's rps.
//!
//! [`ENV`] holds a JSON object keyed by `<container>/<kind>`, each value one target and the
//! probe's `timeoutSeconds` (default 1, the kubelet's):
//!
//! ```json
//! {"orders/readiness": {"http": {"port": 8080, "path": "/health",
//!                                "headers": [{"name": "X-Probe", "value": "1"}]},
//!                       "timeoutSeconds": 2},
//!  "orders/liveness":  {"tcp": {"port": 8080}, "timeoutSeconds": 1},
//!  "rpc/startup":      {"grpc": {"port": 9090, "service": "shop.Orders"}, "timeoutSeconds": 1}}
//! ```
//!
//! - `http`: a GET of `path` with `headers` to `127.0.0.1:port`; the app's status is the answer
//!   (the kubelet counts 200–399 as success), with at most 1 KiB of its body for the kubelet's
//!   event message. A `Location` is not passed on: the kubelet must not follow it to our port.
//! - `tcp`: 200 when a connection to `127.0.0.1:port` opens, 503 otherwise. (Left to the
//!   kubelet, a TCP probe would be accepted by the inbound listener whatever the app's state.)
//! - `grpc`: the `grpc.health.v1.Health/Check` call over HTTP/2 without TLS, as the kubelet
//!   makes it: 200 for `SERVING`, 503 for anything else.
//!
//! The table is read from the environment once, at the first probe: it is fixed for the pod's
//! life (the webhook writes it when the pod is created), and reading it here keeps the proxy's
//! command line and start-up untouched. A table that does not parse answers every probe 500
//! naming the problem (and logs it), so the pod visibly fails its probes rather than passing
//! them unchecked. The gRPC health messages are two one-field protobuf messages, written and read
//! here by hand rather than pulling a protobuf code generator into the proxy for them.

use crate::body::{ProxyBody, full};
use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable holding the original probe targets.
pub const ENV: &str = "WEIR_APP_PROBES";
/// The admin listener's path prefix for forwarded probes.
pub const PATH_PREFIX: &str = "/app-health/";
/// How much of the app's answer to a probe is passed on (the kubelet keeps 10 KiB at most, and
/// only shows it when the probe fails).
const BODY_LIMIT: usize = 1024;

/// One probe's original target, as [`ENV`] states it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Entry {
    http: Option<HttpTarget>,
    tcp: Option<TcpTarget>,
    grpc: Option<GrpcTarget>,
    timeout_seconds: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpTarget {
    port: u16,
    path: String,
    #[serde(default)]
    headers: Vec<NamedValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedValue {
    name: String,
    value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpTarget {
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrpcTarget {
    port: u16,
    #[serde(default)]
    service: String,
}

/// A probe's target, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Http {
        port: u16,
        path: http::uri::PathAndQuery,
        headers: HeaderMap,
    },
    Tcp {
        port: u16,
    },
    Grpc {
        port: u16,
        service: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct AppProbe {
    target: Target,
    timeout: Duration,
}

/// The app's probes, by `<container>/<kind>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppProbes {
    probes: HashMap<String, AppProbe>,
}

impl AppProbes {
    /// Parses and checks [`ENV`]'s value; the error names the probe and field at fault.
    pub fn parse(json: &str) -> Result<Self, String> {
        let entries: HashMap<String, Entry> =
            serde_json::from_str(json).map_err(|e| format!("{ENV} is not valid: {e}"))?;
        let mut probes = HashMap::new();
        for (key, entry) in entries {
            let problem = |what: String| format!("{ENV} {key:?}: {what}");
            let port = |port: u16| {
                if port == 0 {
                    Err(problem("port 0 is not a port".to_owned()))
                } else {
                    Ok(port)
                }
            };
            let target = match (entry.http, entry.tcp, entry.grpc) {
                (Some(http), None, None) => {
                    if !http.path.starts_with('/') {
                        return Err(problem(format!("path {:?} must start with /", http.path)));
                    }
                    let path = http
                        .path
                        .parse()
                        .map_err(|e| problem(format!("path {:?}: {e}", http.path)))?;
                    let mut headers = HeaderMap::new();
                    for h in http.headers {
                        let name = HeaderName::from_bytes(h.name.as_bytes())
                            .map_err(|_| problem(format!("header name {:?}", h.name)))?;
                        let value = HeaderValue::from_str(&h.value)
                            .map_err(|_| problem(format!("header {:?} value", h.name)))?;
                        headers.append(name, value);
                    }
                    Target::Http {
                        port: port(http.port)?,
                        path,
                        headers,
                    }
                }
                (None, Some(tcp), None) => Target::Tcp {
                    port: port(tcp.port)?,
                },
                (None, None, Some(grpc)) => Target::Grpc {
                    port: port(grpc.port)?,
                    service: grpc.service,
                },
                _ => return Err(problem("needs exactly one of http, tcp, grpc".to_owned())),
            };
            let seconds = entry.timeout_seconds.unwrap_or(1).max(1);
            probes.insert(
                key,
                AppProbe {
                    target,
                    timeout: Duration::from_secs(u64::from(seconds)),
                },
            );
        }
        Ok(Self { probes })
    }

    /// Answers `GET /app-health/<container>/<kind>` by probing the app (see the module doc).
    pub async fn answer(&self, request: &Request<impl Sized>) -> Response<ProxyBody> {
        let key = request
            .uri()
            .path()
            .strip_prefix(PATH_PREFIX)
            .unwrap_or_default();
        let Some(probe) = self.probes.get(key) else {
            return text(
                StatusCode::NOT_FOUND,
                format!("no app probe {key:?} (known: the {ENV} table)\n"),
            );
        };
        let user_agent = request.headers().get(header::USER_AGENT).cloned();
        let outcome = tokio::time::timeout(probe.timeout, probe.target.check(user_agent)).await;
        let answer = match outcome {
            Ok(answer) => answer,
            Err(_) => text(
                StatusCode::GATEWAY_TIMEOUT,
                format!("the app did not answer within {:?}\n", probe.timeout),
            ),
        };
        if !answer.status().is_success() {
            tracing::debug!(probe = key, status = %answer.status(), "app probe failed");
        }
        answer
    }
}

/// The table from [`ENV`], read once (see the module doc for why here).
fn from_env() -> &'static Result<AppProbes, String> {
    static PROBES: OnceLock<Result<AppProbes, String>> = OnceLock::new();
    PROBES.get_or_init(|| {
        let parsed = match std::env::var(ENV) {
            Ok(json) => AppProbes::parse(&json),
            Err(std::env::VarError::NotPresent) => Ok(AppProbes::default()),
            Err(e) => Err(format!("{ENV}: {e}")),
        };
        match &parsed {
            Ok(table) => tracing::info!(probes = table.probes.len(), "app probes loaded"),
            Err(error) => tracing::error!(%error, "app probes cannot be forwarded"),
        }
        parsed
    })
}

/// The admin listener's hook: answers a probe with the table from [`ENV`].
pub async fn answer(request: &Request<impl Sized>) -> Response<ProxyBody> {
    match from_env() {
        Ok(table) => table.answer(request).await,
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

fn app(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

impl Target {
    async fn check(&self, user_agent: Option<HeaderValue>) -> Response<ProxyBody> {
        match self {
            Target::Http {
                port,
                path,
                headers,
            } => http_get(*port, path, headers, user_agent).await,
            Target::Tcp { port } => match tokio::net::TcpStream::connect(app(*port)).await {
                Ok(_) => text(StatusCode::OK, format!("port {port} accepts connections\n")),
                Err(e) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot connect to port {port}: {e}\n"),
                ),
            },
            Target::Grpc { port, service } => grpc_health(*port, service).await,
        }
    }
}

async fn http_get(
    port: u16,
    path: &http::uri::PathAndQuery,
    headers: &HeaderMap,
    user_agent: Option<HeaderValue>,
) -> Response<ProxyBody> {
    // A connection per probe, none kept: as the kubelet probes, and nothing idles in the app.
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http::<Full<Bytes>>();
    let uri = format!("http://127.0.0.1:{port}{path}");
    let mut request = Request::new(Full::default());
    *request.uri_mut() = uri
        .parse()
        .expect("an address and a checked path make a URI");
    if let Some(agent) = user_agent {
        request.headers_mut().insert(header::USER_AGENT, agent);
    }
    for (name, value) in headers {
        request.headers_mut().insert(name, value.clone());
    }
    let response = match client.request(request).await {
        Ok(response) => response,
        Err(e) => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot reach the app on port {port}: {e}\n"),
            );
        }
    };
    let status = response.status();
    let mut body = response.into_body();
    let mut kept = Vec::new();
    while kept.len() < BODY_LIMIT {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let room = BODY_LIMIT - kept.len();
                    kept.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            // The status is the answer; a body cut short does not change it.
            Some(Err(_)) | None => break,
        }
    }
    let mut answer = Response::new(full(kept));
    *answer.status_mut() = status;
    answer
}

/// `grpc.health.v1.Health/Check` with h2c (see the module doc).
async fn grpc_health(port: u16, service: &str) -> Response<ProxyBody> {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .pool_max_idle_per_host(0)
        .build_http::<Full<Bytes>>();
    let mut request = Request::new(Full::new(grpc_frame(&health_check_request(service))));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = format!("http://127.0.0.1:{port}/grpc.health.v1.Health/Check")
        .parse()
        .expect("a fixed path on an address is a URI");
    let h = request.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    let unavailable = |why: String| text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"));
    let response = match client.request(request).await {
        Ok(response) => response,
        Err(e) => return unavailable(format!("gRPC health check on port {port}: {e}")),
    };
    let headers = response.headers().clone();
    let collected = match response.into_body().collect().await {
        Ok(collected) => collected,
        Err(e) => return unavailable(format!("gRPC health check on port {port}: {e}")),
    };
    let grpc_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("missing")
        .to_owned();
    if grpc_status != "0" {
        return unavailable(format!("gRPC health check: grpc-status {grpc_status}"));
    }
    match serving_status(collected.to_bytes()) {
        Some(1) => text(StatusCode::OK, "SERVING\n".to_owned()),
        Some(status) => unavailable(format!("gRPC health: status {status}, not SERVING (1)")),
        None => unavailable("gRPC health: the answer is not a HealthCheckResponse".to_owned()),
    }
}

/// `HealthCheckRequest { string service = 1; }` in protobuf's wire format.
fn health_check_request(service: &str) -> Vec<u8> {
    if service.is_empty() {
        return Vec::new();
    }
    let mut message = vec![0x0a]; // field 1, length-delimited
    varint(service.len() as u64, &mut message);
    message.extend_from_slice(service.as_bytes());
    message
}

/// gRPC's length-prefixed message: no compression, a 4-byte big-endian length.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame.into()
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn read_varint(buf: &mut Bytes) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return None;
        }
        let byte = buf.get_u8();
        n |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// The `status` (field 1) of the first `HealthCheckResponse` in a gRPC body; 0 (`UNKNOWN`) when
/// the field is absent, as protobuf defaults it. `None` when the body is not one.
fn serving_status(mut body: Bytes) -> Option<u64> {
    if body.len() < 5 || body[0] != 0 {
        return None;
    }
    body.advance(1);
    let length = body.get_u32() as usize;
    if body.len() < length {
        return None;
    }
    let mut message = body.split_to(length);
    let mut status = 0;
    while message.has_remaining() {
        let key = read_varint(&mut message)?;
        match key & 7 {
            0 => {
                let value = read_varint(&mut message)?;
                if key >> 3 == 1 {
                    status = value;
                }
            }
            2 => {
                let len = usize::try_from(read_varint(&mut message)?).ok()?;
                if message.len() < len {
                    return None;
                }
                message.advance(len);
            }
            1 if message.len() >= 8 => message.advance(8),
            5 if message.len() >= 4 => message.advance(4),
            _ => return None,
        }
    }
    Some(status)
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests;
