//! Who a proxy is, when the config API requires credentials (in a cluster): the bearer token of
//! its poll, checked by an [`Authenticate`] (the Kubernetes TokenReview in a cluster).

use super::ConfigApi;
use super::routes::error_response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// Who a polling proxy is, as its credentials prove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyIdentity {
    pub namespace: String,
    pub pod: Option<String>,
}

/// Checks the bearer token a proxy presents; `None` refuses the poll (401).
pub trait Authenticate: Send + Sync + std::fmt::Debug {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> futures::future::BoxFuture<'a, Option<ProxyIdentity>>;
}

impl ConfigApi {
    /// The identity a poll's token proves: `Ok(None)` when no authentication is required, the
    /// 401 answer when it is and the token is missing or refused.
    pub(super) async fn identify(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<ProxyIdentity>, Response<Full<Bytes>>> {
        let Some(authenticator) = self.authenticator.get() else {
            return Ok(None);
        };
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let identity = match token {
            Some(token) => authenticator.authenticate(token).await,
            None => None,
        };
        identity.map(Some).ok_or_else(|| {
            let mut response = error_response(
                StatusCode::UNAUTHORIZED,
                "present the pod's projected ServiceAccount token (audience weir) as \
                 `Authorization: Bearer <token>`",
                None,
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        })
    }
}
