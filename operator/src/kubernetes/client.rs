//! The operator's Kubernetes client: kube's default stack, plus a layer that names the field
//! manager `weir-operator` on every write that does not name one.
//!
//! The API server records who owns each field (`managedFields`); a write without
//! `fieldManager` is filed under a name guessed from the User-Agent, which for kube-rs is no
//! useful name. Our own calls name it (status applies, the scale patch), but kube-runtime's
//! events `Recorder` and any future call could forget: the layer makes it hold for every POST,
//! PUT and PATCH this client sends. A write that names its own manager keeps it (the Lease: its
//! election needs one manager per replica, see `leader`).

use http::{Method, Request};
use kube::client::{Body, ClientBuilder};

/// The name this operator writes status (the server-side apply field manager) and Events as.
pub const FIELD_MANAGER: &str = "weir-operator";

/// A client for `config` whose writes all name a field manager.
pub fn client(config: kube::Config) -> Result<kube::Client, kube::Error> {
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&tower::util::MapRequestLayer::new(name_the_manager))
        .build())
}

/// Adds `fieldManager=weir-operator` to a write that names none.
pub fn name_the_manager(mut request: Request<Body>) -> Request<Body> {
    if ![Method::POST, Method::PUT, Method::PATCH].contains(request.method()) {
        return request;
    }
    let uri = request.uri();
    let query = uri.query().unwrap_or_default();
    if query
        .split('&')
        .any(|pair| pair.split('=').next() == Some("fieldManager"))
    {
        return request;
    }
    let path_and_query = if query.is_empty() {
        format!("{}?fieldManager={FIELD_MANAGER}", uri.path())
    } else {
        format!("{}?{query}&fieldManager={FIELD_MANAGER}", uri.path())
    };
    let mut parts = uri.clone().into_parts();
    match path_and_query.parse() {
        Ok(parsed) => parts.path_and_query = Some(parsed),
        Err(_) => return request,
    }
    if let Ok(named) = http::Uri::from_parts(parts) {
        *request.uri_mut() = named;
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(method: Method, uri: &str) -> String {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        name_the_manager(request).uri().to_string()
    }

    #[test]
    fn writes_get_the_manager_reads_and_named_writes_are_left_alone() {
        assert_eq!(
            named(
                Method::POST,
                "https://api/apis/events.k8s.io/v1/namespaces/a/events"
            ),
            "https://api/apis/events.k8s.io/v1/namespaces/a/events?fieldManager=weir-operator"
        );
        assert_eq!(
            named(
                Method::PATCH,
                "/apis/apps/v1/namespaces/a/deployments/b/scale?dryRun=All"
            ),
            "/apis/apps/v1/namespaces/a/deployments/b/scale?dryRun=All&fieldManager=weir-operator"
        );
        assert_eq!(
            named(Method::PATCH, "/x?fieldManager=weir-operator-w0&force=true"),
            "/x?fieldManager=weir-operator-w0&force=true"
        );
        assert_eq!(
            named(Method::GET, "/api/v1/pods?watch=true"),
            "/api/v1/pods?watch=true"
        );
        assert_eq!(named(Method::DELETE, "/api/v1/pods/x"), "/api/v1/pods/x");
    }
}
