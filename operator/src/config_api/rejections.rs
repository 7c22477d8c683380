//! NACK memory: a proxy's rejected versions, remembered per pod (or per IP without a pod name)
//! so they are not sent to it again, counted and logged; forgotten once the resource moves on
//! or the proxy has not been heard from for 10 minutes.

use super::ConfigApi;
use super::state::{Rejected, RejectorKey, State};
use super::state::{Resource, resource_version};
use std::collections::HashMap;
use std::net::SocketAddr;
use tokio::time::Instant;
use weir_proxy_api::protocol::{Node, Rejection};

/// A rejection message is logged up to this many characters.
pub(super) const MAX_LOGGED_MESSAGE: usize = 512;

impl ConfigApi {
    pub(super) fn note_rejection(
        &self,
        state: &mut State,
        node: &Node,
        peer: SocketAddr,
        rejector: &RejectorKey,
        rejection: &Rejection,
        now: Instant,
    ) {
        let resource = Resource::parse(&rejection.name);
        self.metrics
            .config_rejected
            .with_label_values(&[resource.kind()])
            .inc();
        let message: String = rejection.message.chars().take(MAX_LOGGED_MESSAGE).collect();
        tracing::warn!(
            namespace = %node.namespace,
            service = %node.service,
            pod = node.pod.as_deref().unwrap_or("-"),
            %peer,
            resource = ?rejection.name,
            version = rejection.version,
            message = ?message,
            "a proxy rejected a config update (NACK); it keeps running its last good config"
        );
        let current =
            resource_version(&state.seen, &node.namespace, &node.service, &rejection.name);
        // Only a current version is worth remembering (an old one is never sent again anyway),
        // which also keeps what a client can make us store bounded by the snapshot.
        if current == rejection.version && !matches!(resource, Resource::Unknown) {
            state
                .rejections
                .entry(rejector.clone())
                .or_insert_with(|| Rejected {
                    versions: HashMap::new(),
                    messages: HashMap::new(),
                    last_seen: now,
                });
            let rejected = state.rejections.get_mut(rejector).expect("just inserted");
            rejected
                .versions
                .insert(rejection.name.clone(), rejection.version);
            rejected.messages.insert(rejection.name.clone(), message);
        }
    }
}
