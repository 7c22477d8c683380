//! Protocol handling: the one route (`POST /v1/discovery`), the poll's parsing and its bounds
//! (body size, number of resources, DNS-label names), the JSON errors.

use super::{ConfigApi, MAX_RESOURCES};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use std::net::SocketAddr;
use tokio::sync::watch;
use weir_proxy_api::protocol::{DISCOVERY_PATH, DiscoveryRequest, Node};
/// A discovery request is a list of names and versions: a megabyte is plenty.
pub(super) const MAX_BODY_BYTES: usize = 1024 * 1024;

impl ConfigApi {
    pub(super) async fn respond<B>(
        &self,
        peer: SocketAddr,
        request: Request<B>,
        closed: Option<watch::Receiver<bool>>,
    ) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if request.uri().path() != DISCOVERY_PATH {
            return error_response(
                StatusCode::NOT_FOUND,
                &format!(
                    "no such path; the config API serves POST {DISCOVERY_PATH} (see weir_proxy_api::protocol)"
                ),
                None,
            );
        }
        if request.method() != Method::POST {
            let mut response = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!(
                    "method {} not allowed; {DISCOVERY_PATH} takes POST",
                    request.method()
                ),
                None,
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        let identity = match self.identify(request.headers()).await {
            Ok(identity) => identity,
            Err(refusal) => return refusal,
        };
        let body = match Limited::new(request.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
                    None,
                );
            }
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("reading the request body failed: {e}"),
                    None,
                );
            }
        };
        let mut poll: DiscoveryRequest = match weir_proxy_api::validate::parse_json(&body) {
            Ok(poll) => poll,
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("not a discovery request: {}", e.message),
                    Some(&e.field),
                );
            }
        };
        if poll.resources.len() > MAX_RESOURCES {
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!(
                    "a poll names at most {MAX_RESOURCES} resources, not {}",
                    poll.resources.len()
                ),
                Some("resources"),
            );
        }
        if let Some(identity) = identity {
            // Who the proxy is comes from its token, whatever its poll says.
            poll.node.namespace = identity.namespace;
            poll.node.pod = identity.pod;
        }
        if let Err((field, message)) = check_node(&poll.node) {
            return error_response(StatusCode::BAD_REQUEST, &message, Some(field));
        }
        match self.discover(peer, poll, closed).await {
            Ok(body) => json_response(StatusCode::OK, body),
            Err(e) => {
                tracing::error!(error = %e, "config API: encoding an answer failed");
                error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("encoding the answer failed: {e}"),
                    None,
                )
            }
        }
    }
}

pub(super) fn check_node(node: &Node) -> Result<(), (&'static str, String)> {
    if !dns_label(&node.namespace) {
        return Err((
            "node.namespace",
            format!("namespace {:?} is not a DNS label", node.namespace),
        ));
    }
    if !dns_label(&node.service) {
        return Err((
            "node.service",
            format!("service {:?} is not a DNS label", node.service),
        ));
    }
    if let Some(pod) = &node.pod
        && (pod.is_empty() || pod.len() > 253 || pod.chars().any(char::is_control))
    {
        return Err((
            "node.pod",
            "a pod name has 1 to 253 printable characters".to_owned(),
        ));
    }
    Ok(())
}

pub(super) fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub(super) fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(super) fn error_response(
    status: StatusCode,
    message: &str,
    field: Option<&str>,
) -> Response<Full<Bytes>> {
    let body = match field {
        Some(field) if !field.is_empty() => {
            serde_json::json!({"error": message, "field": field})
        }
        _ => serde_json::json!({ "error": message }),
    };
    json_response(status, body.to_string().into_bytes())
}
