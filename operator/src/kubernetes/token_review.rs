//! Who a proxy polling the config API is, from the projected ServiceAccount token it presents:
//! checked by the API server with a TokenReview (audience `weir`), cached briefly.
//!
//! The identity comes from the review, never from the poll: the namespace from the username
//! (`system:serviceaccount:<namespace>:<name>`), the pod from the token's pod binding
//! (`authentication.kubernetes.io/pod-name`, present in every projected token). A token the API
//! server does not vouch for (unauthenticated, another audience, not a ServiceAccount's) has no
//! identity; so has any token while the API server cannot be asked, and that answer is not
//! cached.
//!
//! While the API server cannot be asked (down, restarting, its RBAC not loaded yet: 403s for a
//! second after a restart), a token it vouched for at most [`STALE_GRACE`] ago keeps its
//! identity: the proxies stay connected through an API server outage and get the first change
//! after it at once, instead of being refused (401) and backing off. A token it refused, or never
//! saw, is refused as before.
//!
//! Answers are cached for [`CACHE_TTL`] so a poll every few seconds per proxy costs one review
//! per proxy per TTL; at most [`CACHE_ENTRIES`] tokens are kept (expired ones are dropped first,
//! then everything), so a flood of made-up tokens bounds memory, not the API server's load —
//! which each costs one review.
//!
//! RBAC: `create` on `authentication.k8s.io` `tokenreviews` (cluster-scoped: a ClusterRole even
//! in namespaced mode).

use crate::config_api::{Authenticate, ProxyIdentity};
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// The audience the sidecar's projected token is issued for.
pub const AUDIENCE: &str = "weir";
/// How long a review's answer is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// While reviews fail, a token vouched for at most this long ago is still taken as its pod's:
/// a projected token lives an hour at least, and nothing about a pod changes while the API
/// server is away.
pub const STALE_GRACE: Duration = Duration::from_secs(600);
/// At most this many tokens are remembered.
pub const CACHE_ENTRIES: usize = 10_000;

const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// Token → the identity a review gave it (none: not vouched for) and until when it holds.
type Cache = HashMap<String, (Option<ProxyIdentity>, Instant)>;

/// Authenticates proxies by TokenReview.
#[derive(Clone)]
pub struct TokenReviewer {
    client: kube::Client,
    cache: std::sync::Arc<Mutex<Cache>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("cached", &self.cache.lock().len())
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            cache: Default::default(),
        }
    }

    async fn review(&self, token: &str) -> Result<Option<ProxyIdentity>, kube::Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api.create(&PostParams::default(), &review).await?;
        Ok(answer.status.and_then(|status| {
            if status.authenticated != Some(true)
                || !status
                    .audiences
                    .as_ref()
                    .is_none_or(|a| a.iter().any(|a| a == AUDIENCE))
            {
                return None;
            }
            let user = status.user?;
            let namespace = user
                .username?
                .strip_prefix("system:serviceaccount:")?
                .split_once(':')?
                .0
                .to_owned();
            let pod = user
                .extra
                .and_then(|mut extra| extra.remove(POD_NAME_EXTRA))
                .and_then(|names| names.into_iter().next());
            Some(ProxyIdentity { namespace, pod })
        }))
    }
}

impl Authenticate for TokenReviewer {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Option<ProxyIdentity>> {
        Box::pin(async move {
            let now = Instant::now();
            let held = self.cache.lock().get(token).cloned();
            if let Some((identity, until)) = &held
                && *until > now
            {
                return identity.clone();
            }
            let identity = match self.review(token).await {
                Ok(identity) => identity,
                Err(error) => {
                    // Fail static: an identity the API server gave this very token lately.
                    let now = Instant::now();
                    if let Some((Some(identity), until)) = held
                        && until + STALE_GRACE > now
                    {
                        tracing::warn!(%error, "TokenReview failed; the token's last review stands");
                        return Some(identity);
                    }
                    tracing::warn!(%error, "TokenReview failed; the poll is refused");
                    return None;
                }
            };
            let mut cache = self.cache.lock();
            if cache.len() >= CACHE_ENTRIES {
                cache.retain(|_, (identity, until)| {
                    *until > now || (identity.is_some() && *until + STALE_GRACE > now)
                });
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(token.to_owned(), (identity.clone(), now + CACHE_TTL));
            identity
        })
    }
}
