//! What `weir-operator check` asks of the API server besides objects: `GET /version`, and GETs
//! through the proxy subresources of pods (`/api/v1/namespaces/NS/pods/NAME:PORT/proxy/PATH`)
//! and Services (`.../services/[https:]NAME:PORT/proxy/PATH`), forwarded as the real server
//! forwards them: to the pod's `status.podIP`, or to the first ready endpoint of the Service's
//! EndpointSlices at the target port of that Service port, over HTTP or, for `https:`, TLS
//! without verifying the backend's certificate (the real API server does not verify it either).
//! When the backend cannot be reached the answer is the API server's own `Status` (503), as
//! the real server's `error trying to reach service` is.

use super::{Body, Shared, reply, status_body};
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use kube::client::ConfigExt;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// The answer to a request this file serves, `None` for every other request.
pub(super) async fn serve(
    shared: &Arc<Shared>,
    request: &Request<Incoming>,
) -> Option<Response<Body>> {
    if request.method() != Method::GET {
        return None;
    }
    let path = request.uri().path();
    if path == "/version" {
        return Some(reply(
            200,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "platform": "linux/amd64"}),
        ));
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let [
        "api",
        "v1",
        "namespaces",
        namespace,
        kind @ ("pods" | "services"),
        target,
        "proxy",
        rest @ ..,
    ] = segments.as_slice()
    else {
        return None;
    };
    let rest = format!("/{}", rest.join("/"));
    let (https, target) = match target.strip_prefix("https:") {
        Some(target) => (true, target),
        None => (false, target.strip_prefix("http:").unwrap_or(target)),
    };
    let (name, port) = target.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let backend = {
        let state = shared.state.lock();
        let object = |collection: &str, name: &str| {
            state
                .objects
                .get(&(
                    collection.to_owned(),
                    namespace.to_string(),
                    name.to_owned(),
                ))
                .cloned()
        };
        if *kind == "pods" {
            let Some(pod) = object("v1/pods", name) else {
                return Some(reply(
                    404,
                    &status_body(404, "NotFound", &format!("pods \"{name}\" not found")),
                ));
            };
            pod["status"]["podIP"]
                .as_str()
                .and_then(|ip| ip.parse().ok())
                .map(|ip| SocketAddr::new(ip, port))
        } else {
            let Some(service) = object("v1/services", name) else {
                return Some(reply(
                    404,
                    &status_body(404, "NotFound", &format!("services \"{name}\" not found")),
                ));
            };
            let target_port = service["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["port"].as_u64() == Some(u64::from(port)))
                .and_then(|p| p["targetPort"].as_u64().or(p["port"].as_u64()));
            let address = state
                .objects
                .iter()
                .filter(|((c, ns, _), o)| {
                    c == "discovery.k8s.io/v1/endpointslices"
                        && ns == namespace
                        && o["metadata"]["labels"]["kubernetes.io/service-name"] == *name
                })
                .flat_map(|(_, o)| o["endpoints"].as_array().cloned().unwrap_or_default())
                .find(|e| e["conditions"]["ready"] != json!(false))
                .and_then(|e| e["addresses"][0].as_str().and_then(|a| a.parse().ok()));
            match (address, target_port) {
                (Some(ip), Some(port)) => u16::try_from(port).ok().map(|p| SocketAddr::new(ip, p)),
                _ => {
                    return Some(reply(
                        503,
                        &status_body(
                            503,
                            "ServiceUnavailable",
                            &format!("no endpoints available for service \"{name}\""),
                        ),
                    ));
                }
            }
        }
    };
    let Some(backend) = backend else {
        return Some(reply(
            503,
            &status_body(503, "ServiceUnavailable", "no address to proxy to"),
        ));
    };
    Some(
        match tokio::time::timeout(Duration::from_secs(5), forward(backend, https, &rest)).await {
            Ok(Ok((code, body))) => Response::builder()
                .status(code)
                .body(http_body_util::Full::new(body).boxed_unsync())
                .expect("response"),
            Ok(Err(e)) => reply(
                503,
                &status_body(
                    503,
                    "ServiceUnavailable",
                    &format!("error trying to reach service: {e}"),
                ),
            ),
            Err(_) => reply(
                503,
                &status_body(
                    503,
                    "ServiceUnavailable",
                    "error trying to reach service: timeout",
                ),
            ),
        },
    )
}

/// One GET to `backend`, over TLS when `https`.
async fn forward(backend: SocketAddr, https: bool, path: &str) -> Result<(u16, Bytes), String> {
    let tcp = TcpStream::connect(backend)
        .await
        .map_err(|e| e.to_string())?;
    let request = Request::get(path)
        .header(http::header::HOST, backend.to_string())
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = if https {
        // kube's own TLS client with `insecure-skip-tls-verify`: any backend certificate.
        let mut insecure = kube::Config::new(http::Uri::from_static("https://backend"));
        insecure.accept_invalid_certs = true;
        let config = insecure.rustls_client_config().map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("backend").expect("name");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        send(TokioIo::new(tls), request).await?
    } else {
        send(TokioIo::new(tcp), request).await?
    };
    Ok(response)
}

async fn send<S>(io: S, request: Request<Empty<Bytes>>) -> Result<(u16, Bytes), String>
where
    S: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let code = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((code, body))
}
