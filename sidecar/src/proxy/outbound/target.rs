//! Which service a request names: the proxy-form URI's authority or the Host header, read as
//! Kubernetes DNS reads a name.

use crate::refusal::{Reason, Refusal};
use crate::table::ServiceName;
use http::{header, request};
use std::borrow::Cow;

/// The service a request is for, and the port it names if any: the proxy-form URI's
/// authority, else the Host header.
pub fn target_of<'a>(
    parts: &'a request::Parts,
    own_namespace: &'a str,
) -> Result<(ServiceName<'a>, Option<u16>), Refusal> {
    let authority = match parts.uri.authority() {
        // Without any `user@` part, which names no service.
        Some(authority) => authority
            .as_str()
            .rsplit_once('@')
            .map_or(authority.as_str(), |(_, host)| host),
        None => parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .ok_or_else(|| {
                Refusal::new(
                    Reason::BadRequest,
                    "the request names no service: no Host header and no absolute URI",
                )
            })?,
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => (host, port),
        _ => (authority, ""),
    };
    // An empty port is the default one (RFC 3986 §3.2.3).
    let port = match port {
        "" => None,
        digits => match digits.parse::<u16>() {
            Ok(port) if port > 0 => Some(port),
            _ => {
                return Err(Refusal::new(
                    Reason::BadRequest,
                    format!("port {digits:?} of {authority:?} is not a port (1 to 65535)"),
                ));
            }
        },
    };
    // Borrowed unless the app wrote capitals: every request goes through here, and the route
    // lookup takes the names as they are.
    let host = host.trim_end_matches('.');
    let refusal = |host: &str| {
        Refusal::new(
            Reason::BadRequest,
            format!(
                "host {host:?} does not name a service (expected NAME, NAME.NAMESPACE or NAME.NAMESPACE.svc.cluster.local)"
            ),
        )
    };
    let service = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        let host = host.to_ascii_lowercase();
        let (name, namespace) =
            service_labels(&host, own_namespace).ok_or_else(|| refusal(&host))?;
        ServiceName {
            namespace: Cow::Owned(namespace.to_owned()),
            name: Cow::Owned(name.to_owned()),
        }
    } else {
        let (name, namespace) = service_labels(host, own_namespace).ok_or_else(|| refusal(host))?;
        ServiceName {
            namespace: Cow::Borrowed(namespace),
            name: Cow::Borrowed(name),
        }
    };
    Ok((service, port))
}

/// The name and namespace a lower-case host names, as Kubernetes DNS reads it: `NAME`,
/// `NAME.NAMESPACE`, `NAME.NAMESPACE.svc` or `NAME.NAMESPACE.svc.cluster.local`.
fn service_labels<'h>(host: &'h str, own_namespace: &'h str) -> Option<(&'h str, &'h str)> {
    // One pass over the host for its dots rather than a label iterator: every request goes
    // through here.
    let (name, namespace) = match host.split_once('.') {
        None => (host, own_namespace),
        Some((name, rest)) => match rest.split_once('.') {
            None => (name, rest),
            Some((namespace, "svc" | "svc.cluster.local")) => (name, namespace),
            Some(_) => return None,
        },
    };
    let label_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
    };
    let numeric = name.bytes().all(|b| b.is_ascii_digit());
    (label_ok(name) && label_ok(namespace) && !numeric).then_some((name, namespace))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::ServiceKey;
    use http::Request;

    fn key_of(uri: &str, host: Option<&str>) -> Result<ServiceKey, Refusal> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        target_of(&b.body(()).unwrap().into_parts().0, "shop").map(|(name, _)| name.to_key())
    }

    fn ok(uri: &str, host: Option<&str>) -> (String, String) {
        let k = key_of(uri, host).unwrap();
        (k.namespace, k.name)
    }

    #[test]
    fn names_resolve_like_kubernetes_dns() {
        let p = |ns: &str, n: &str| (ns.to_owned(), n.to_owned());
        assert_eq!(ok("/x", Some("payments")), p("shop", "payments"));
        assert_eq!(ok("/x", Some("payments:8080")), p("shop", "payments"));
        assert_eq!(ok("/x", Some("payments.billing")), p("billing", "payments"));
        assert_eq!(
            ok("/x", Some("payments.billing.svc.cluster.local:80")),
            p("billing", "payments")
        );
        assert_eq!(
            ok("http://Payments/x", Some("ignored")),
            p("shop", "payments")
        );
        assert_eq!(
            ok("http://payments.billing.svc:8080/x", None),
            p("billing", "payments")
        );
        // DNS names are case-insensitive, and a trailing dot is the root.
        assert_eq!(
            ok("/x", Some("PAYMENTS.Billing.")),
            p("billing", "payments")
        );
    }

    #[test]
    fn the_port_comes_from_the_uri_else_the_host() {
        let port_of = |uri: &str, host: Option<&str>| {
            let mut b = Request::builder().uri(uri);
            if let Some(h) = host {
                b = b.header("host", h);
            }
            target_of(&b.body(()).unwrap().into_parts().0, "shop")
                .map(|(_, port)| port)
                .map_err(|refusal| (refusal.reason, refusal.message))
        };
        assert_eq!(port_of("/x", Some("payments:81")), Ok(Some(81)));
        assert_eq!(port_of("/x", Some("payments")), Ok(None));
        assert_eq!(port_of("/x", Some("payments:")), Ok(None));
        assert_eq!(
            port_of("http://payments.shop:8080/x", Some("payments:81")),
            Ok(Some(8080))
        );
        assert_eq!(port_of("http://user@payments:81/x", None), Ok(Some(81)));
        assert_eq!(port_of("http://payments/x", Some("payments:81")), Ok(None));
        for host in [
            "payments:0",
            "payments:65536",
            "payments:99999999999999999999",
        ] {
            let (reason, message) = port_of("/x", Some(host)).unwrap_err();
            assert_eq!(reason, Reason::BadRequest, "{host}");
            assert!(message.contains("not a port"), "{message}");
        }
    }

    #[test]
    fn non_service_hosts_are_bad_requests() {
        for host in [
            "127.0.0.1:9000",
            "a.b.c",
            "under_score",
            "example.com.evil.org.x",
            "payments.billing.svc.cluster",
            "payments.billing.svc.cluster.local.x",
            "a.b.c.d.e.f.g",
        ] {
            let r = key_of("/", Some(host)).unwrap_err();
            assert_eq!(r.reason, Reason::BadRequest, "{host}");
        }
        assert_eq!(key_of("/", None).unwrap_err().reason, Reason::BadRequest);
    }
}
