//! Hop-by-hop headers (RFC 9110 §7.6.1) belong to one connection and are dropped at each hop;
//! everything else — `traceparent` included — passes untouched.

use crate::refusal::{Reason, Refusal};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version, request};
use hyper::upgrade::OnUpgrade;

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers and those the `Connection` header names. With `upgrade`, keeps
/// `Connection: upgrade` and `Upgrade` so that a protocol switch reaches the next hop.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let upgrade_value = headers.get(header::UPGRADE).cloned();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    // TE is hop-by-hop, but `te: trailers` must reach gRPC servers.
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade && let Some(value) = upgrade_value {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, value);
    }
}

/// What [`check_request_head`] reads of a request, borrowed from its parts or from the whole
/// request.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a Method,
    pub uri: &'a http::Uri,
    pub headers: &'a HeaderMap,
}

impl<'a> RequestHead<'a> {
    pub fn of_parts(parts: &'a request::Parts) -> Self {
        Self {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
        }
    }

    pub fn of<B>(request: &'a http::Request<B>) -> Self {
        Self {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
        }
    }
}

/// Refuses a request head that is ambiguous about where it goes, before anything is routed or
/// forwarded (RFC 9112 §3.2): two `Host` headers, or an absolute-form URI whose authority
/// disagrees with `Host` — a proxy and the application behind it could read such a request as
/// going to two different places. `CONNECT` is not proxied (405): the mesh routes requests, not
/// tunnels, and a silently closed connection would tell the client nothing.
pub fn check_request_head(head: &RequestHead<'_>) -> Result<(), Refusal> {
    if *head.method == Method::CONNECT {
        return Err(Refusal::new(
            Reason::BadRequest,
            "CONNECT is not proxied: send the request itself, in origin or absolute form",
        )
        .with_status(StatusCode::METHOD_NOT_ALLOWED));
    }
    let mut hosts = head.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::new(
            Reason::BadRequest,
            "the request has more than one Host header",
        ));
    }
    if let (Some(authority), Some(host)) = (head.uri.authority(), host)
        && !same_authority(authority, head.uri.scheme_str(), host.as_bytes())
    {
        return Err(Refusal::new(
            Reason::BadRequest,
            "the request URI's authority and its Host header name different hosts",
        ));
    }
    Ok(())
}

/// Whether `host` (a Host header) names the same host and port as `authority`, the ports
/// defaulting by scheme (`payments` is `payments:80` for http).
fn same_authority(authority: &http::uri::Authority, scheme: Option<&str>, host: &[u8]) -> bool {
    let Ok(host) = http::uri::Authority::try_from(host) else {
        return false;
    };
    let default_port = if scheme == Some("https") { 443 } else { 80 };
    authority.host().eq_ignore_ascii_case(host.host())
        && authority.port_u16().unwrap_or(default_port) == host.port_u16().unwrap_or(default_port)
}

/// An HTTP/1.1 request asking to switch protocols (WebSocket and the like).
pub fn is_upgrade(parts: &request::Parts) -> bool {
    parts.version == Version::HTTP_11
        && parts.headers.contains_key(header::UPGRADE)
        && parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Splices the two upgraded connections of a protocol switch once both sides have switched;
/// `hold` (a bulkhead permit, an in-flight count) lives as long as the tunnel.
pub fn splice(client_side: OnUpgrade, server_side: OnUpgrade, hold: impl Send + 'static) {
    tokio::spawn(async move {
        let _hold = hold;
        let (Ok(client), Ok(server)) = (client_side.await, server_side.await) else {
            tracing::debug!("upgrade abandoned by one side");
            return;
        };
        let mut client = hyper_util::rt::TokioIo::new(client);
        let mut server = hyper_util::rt::TokioIo::new(server);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_hop_by_hop_and_connection_named_headers_only() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-private".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("traceparent", "00-abc-def-01".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("connection").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("x-private").is_none());
        assert!(h.get("transfer-encoding").is_none());
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["traceparent"], "00-abc-def-01");
    }

    fn head(method: &str, uri: &str, hosts: &[&str]) -> request::Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for h in hosts {
            b = b.header("host", *h);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn ambiguous_heads_and_connect_are_refused() {
        let refused =
            |p: &request::Parts| check_request_head(&RequestHead::of_parts(p)).unwrap_err();
        let two = refused(&head("GET", "/", &["payments", "evil"]));
        assert_eq!(
            (two.reason, two.into_response().status()),
            (Reason::BadRequest, StatusCode::BAD_REQUEST)
        );
        // Even two identical ones: the sender is broken or smuggling.
        refused(&head("GET", "/", &["payments", "payments"]));
        let connect = refused(&head("CONNECT", "payments:443", &["payments:443"]));
        assert_eq!(
            connect.into_response().status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        refused(&head("GET", "http://payments/x", &["orders"]));
        refused(&head("GET", "http://payments:8080/x", &["payments"]));

        for ok in [
            head("GET", "/x", &["payments"]),
            head("GET", "/x", &[]),
            head("GET", "http://payments/x", &[]),
            head("GET", "http://Payments/x", &["payments:80"]),
            head("GET", "http://payments:8080/x", &["PAYMENTS:8080"]),
        ] {
            assert!(
                check_request_head(&RequestHead::of_parts(&ok)).is_ok(),
                "{ok:?}"
            );
        }
    }

    #[test]
    fn keeps_the_upgrade_handshake() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        let parts = {
            let mut r = http::Request::new(());
            *r.headers_mut() = h.clone();
            r.into_parts().0
        };
        assert!(is_upgrade(&parts));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }
}
