//! Hop-by-hop headers (RFC 9110 §7.6.1) belong to one connection and are dropped at each hop;
//! everything else — `traceparent` included — passes untouched. Also the checks a request head
//! passes before it is routed, and the request as it leaves for the next hop
//! ([`forward_request`], shared by the outbound and inbound sides).

use crate::body::ProxyBody;
use crate::refusal::{Reason, Refusal};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version, request};
use hyper::upgrade::OnUpgrade;

/// Where `Connection` and `Upgrade` are in [`HOP_BY_HOP`].
const CONNECTION_INDEX: usize = 0;
const UPGRADE_INDEX: usize = 6;

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
///
/// Runs on every request and every answer, so it first finds what is there in one pass over the
/// names (no hashing, no allocation) and removes only that: most requests carry none of these
/// headers, and a typical answer only `Connection: keep-alive`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Bit i: HOP_BY_HOP[i] is present; TE_BIT: TE is.
    const TE_BIT: u32 = 1 << 7;
    let mut present = 0u32;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        } else if name == header::TE {
            present |= TE_BIT;
        }
    }
    if present == 0 {
        return;
    }
    // The usual case of an answer: `Connection: keep-alive` (or `close`) and nothing else of
    // the kind. Its value names no other header, so it goes in one lookup, unparsed.
    if present == 1 << CONNECTION_INDEX
        && let header::Entry::Occupied(connection) = headers.entry(header::CONNECTION)
        && connection.iter().all(|v| {
            let v = v.as_bytes();
            v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
        })
    {
        connection.remove_entry_mult();
        return;
    }
    // Other headers the Connection header names (its usual `keep-alive` or `close` name none
    // that is present); those names are looked up only when such a header is there.
    let mut named: Vec<HeaderName> = Vec::new();
    for token in headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        // The usual `keep-alive` goes anyway: no need to look for it.
        if HOP_BY_HOP
            .iter()
            .any(|h| h.as_str().eq_ignore_ascii_case(token))
        {
            continue;
        }
        let is_header_here = headers
            .keys()
            .any(|k| k.as_str().eq_ignore_ascii_case(token));
        if is_header_here && let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
            named.push(name);
        }
    }
    let upgrade_value = match upgrade && present & (1 << UPGRADE_INDEX) != 0 {
        true => headers.get(header::UPGRADE).cloned(),
        false => None,
    };
    for name in &named {
        headers.remove(name);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    // TE is hop-by-hop, but `te: trailers` must reach gRPC servers (unless Connection named
    // TE, which removed it above).
    if present & TE_BIT != 0 {
        let te_trailers = headers
            .get_all(header::TE)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        headers.remove(header::TE);
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    if let Some(value) = upgrade_value {
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

/// The request as it leaves for `authority`: HTTP/1 in origin form with `Host` as the app sent
/// it — or, for an absolute-form request, its URI's authority (RFC 9112 §3.2.2; a Host that
/// disagreed was refused before), or the endpoint's when there was none; HTTP/2 in absolute form
/// to the endpoint. Hop-by-hop headers gone.
pub fn forward_request(
    parts: &request::Parts,
    authority: &http::uri::Authority,
    body: ProxyBody,
    upgrade: bool,
) -> Request<ProxyBody> {
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let http2 = parts.version == http::Version::HTTP_2;
    let uri = if http2 {
        Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query(path)
            .build()
            .expect("scheme, authority and path make a URI")
    } else {
        Uri::from(path)
    };
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    let headers = request.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    if !http2 {
        if let Some(authority) = parts.uri.authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            headers.insert(header::HOST, host);
        } else if !headers.contains_key(header::HOST) {
            headers.insert(header::HOST, endpoint_host(authority));
        }
    }
    request
}

/// The `Host` naming an endpoint: its address, the port left out when it is HTTP's default.
fn endpoint_host(authority: &http::uri::Authority) -> HeaderValue {
    let host = match authority.port_u16() {
        Some(80) => authority.host(),
        _ => authority.as_str(),
    };
    HeaderValue::from_str(host).expect("an authority is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, value.parse().unwrap());
        }
        h
    }

    #[test]
    fn drops_hop_by_hop_and_connection_named_headers_only() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("te", "trailers"),
            ("traceparent", "00-abc-def-01"),
            ("transfer-encoding", "chunked"),
        ]);
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
    fn an_answers_own_connection_header_goes_and_what_it_names_with_it() {
        for (connection, gone) in [
            (&["keep-alive"][..], &[][..]),
            (&["Close"], &[]),
            (&["KEEP-ALIVE", "close"], &[]),
            (&["keep-alive, x-private"], &["x-private"]),
            (&["keep-alive", "x-private"], &["x-private"]),
        ] {
            let mut h = headers(&[("content-length", "2"), ("x-private", "1")]);
            for value in connection {
                h.append(header::CONNECTION, value.parse().unwrap());
            }
            strip_hop_by_hop(&mut h, false);
            let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
            let expected: Vec<&str> = ["content-length", "x-private"]
                .into_iter()
                .filter(|n| !gone.contains(n))
                .collect();
            assert_eq!(left, expected, "Connection: {connection:?}");
        }
    }

    #[test]
    fn what_is_not_hop_by_hop_stays_as_it_was() {
        let mut h = headers(&[("host", "payments"), ("accept", "a"), ("accept", "b")]);
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);

        // Named in any case and with any spacing; TE named by Connection goes, trailers or not;
        // a named header that is absent changes nothing.
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.append("connection", "close ,  X-Private".parse().unwrap());
        h.append("connection", "TE, x-absent".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);

        h.insert("te", "gzip".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before, "TE other than trailers goes");
        assert_eq!(HOP_BY_HOP[UPGRADE_INDEX], header::UPGRADE);
    }

    #[test]
    fn keeps_the_upgrade_handshake() {
        let mut h = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
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
