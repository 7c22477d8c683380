//! The config API between the operator and its sidecars: JSON long-poll over HTTP.
//!
//! ```text
//! POST /v1/discovery            content-type: application/json
//! {"node": {"service": "checkout", "namespace": "shop", "pod": "checkout-7d9f",
//!           "inbound": "0.0.0.0:15006", "admin": "127.0.0.1:15020"},
//!  "resources": [{"name": "inbound", "version": 41},
//!                {"name": "service/shop/payments", "version": 40},
//!                {"name": "service/shop/inventory"}],           // new subscription: no version
//!  "rejected": [{"name": "service/shop/payments", "version": 42,
//!                "message": "field `subsets`: at least one weight must be greater than 0"}],
//!  "waitSeconds": 30}
//! ```
//!
//! The proxy names every resource it wants and the version it holds. The operator answers at once
//! with every resource whose current version differs from the one held (a resource the proxy
//! does not name is not sent: a proxy receives only what it uses), or, when nothing differs,
//! holds the request until something does or `waitSeconds` pass and then answers with an empty
//! list. The proxy applies what it received and polls again with its new versions; that next poll
//! is its acknowledgement (the versions it names are the ones it runs), and `rejected` is its
//! negative acknowledgement: an update that failed validation, which it did not apply.
//!
//! To add a subscription (the first call to a service) the proxy abandons its pending poll and
//! sends a new one naming the new resource without a version, which is answered at once. A proxy
//! that reconnects after the operator went away names what it holds and so receives only what
//! changed meanwhile.
//!
//! The node says who is asking and, optionally, where the proxy listens: `inbound`, its inbound
//! listener as bound (`0.0.0.0:15006` when it listens on every address: the unspecified address
//! is kept, not guessed), and `admin`, its admin listener (`/metrics`, `/ready`). The operator
//! lists both on its `/proxies`, and in local mode finds by them the sidecar in front of a
//! LocalService endpoint (the proxy of that service whose inbound listener is the endpoint's
//! address: same port, and the same IP unless the listener's is unspecified) to read its
//! `/metrics` for the Autoscaler. Both are omitted when unknown, and a node's unknown fields
//! are ignored rather than refused, so proxies and operators from before these fields still talk
//! to each other (an older proxy is simply not found by address).
//!
//! Why long-poll rather than a stream: one request shape serves subscription, acknowledgement and
//! resync, every hop is plain HTTP/1.1 (easy to debug with curl, no stream state to rebuild after
//! a restart), and the latency of a push is one response write.

use crate::validate::{check_size, from_value, parse_json};
use crate::{InboundPolicy, InvalidConfig, ServiceConfig};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Where the proxies poll.
pub const DISCOVERY_PATH: &str = "/v1/discovery";

/// The name of a proxy's own inbound policy.
pub const INBOUND_RESOURCE: &str = "inbound";

/// Who is asking. In a cluster, `pod` names the pod; locally it may be any instance name.
/// Unknown fields are ignored (not refused), so that a node can grow fields that an older peer
/// does not read.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub service: String,
    pub namespace: String,
    pub pod: Option<String>,
    /// The proxy's inbound listener as bound (`weir-sidecar --inbound`; an unspecified address
    /// such as `0.0.0.0:15006` stays unspecified).
    pub inbound: Option<SocketAddr>,
    /// The proxy's admin listener (`weir-sidecar --admin`): `/metrics`, `/ready`, `/config`.
    pub admin: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryRequest {
    pub node: Node,
    /// Every resource the proxy wants, with the version it holds (none for a new subscription).
    pub resources: Vec<HeldResource>,
    /// Updates the proxy refused since its last poll.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<Rejection>,
    /// How long the operator may hold the request when nothing changed.
    #[serde(default = "DiscoveryRequest::default_wait_seconds")]
    pub wait_seconds: u32,
}

impl DiscoveryRequest {
    pub const DEFAULT_WAIT_SECONDS: u32 = 30;
    fn default_wait_seconds() -> u32 {
        Self::DEFAULT_WAIT_SECONDS
    }
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldResource {
    pub name: String,
    pub version: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejection {
    pub name: String,
    pub version: u64,
    pub message: String,
}

/// The operator's answer: the resources that changed. `C` is [`ResourceContent`] when typed;
/// the proxy reads it as `serde_json::Value` first so that one bad resource is refused alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryResponse<C = ResourceContent> {
    pub resources: Vec<ResourceUpdate<C>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceUpdate<C = ResourceContent> {
    pub name: String,
    pub version: u64,
    pub content: C,
}

/// One resource's content: `{"inbound": {...}}`, `{"service": {...}}` or
/// `{"notFound": "why"}` (the control plane knows no such service; callers get 503
/// `no-healthy-endpoints` with this message).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ResourceContent {
    Inbound(InboundPolicy),
    Service(Box<ServiceConfig>),
    NotFound(String),
}

/// The resource name of a service's outbound config: `service/<namespace>/<name>`.
pub fn service_resource(namespace: &str, name: &str) -> String {
    format!("service/{namespace}/{name}")
}

/// The inverse of [`service_resource`]: `(namespace, name)`.
pub fn parse_service_resource(resource: &str) -> Option<(&str, &str)> {
    let rest = resource.strip_prefix("service/")?;
    let (namespace, name) = rest.split_once('/')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains('/')).then_some((namespace, name))
}

/// One resource of an answer, checked on its own: a bad resource is refused alone (and reported
/// back as `rejected`), the others still apply.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedUpdate {
    pub name: String,
    pub version: u64,
    pub content: Result<ResourceContent, InvalidConfig>,
}

/// Reads an answer's bytes (at most [`crate::bounds::CONFIG_MAX_BYTES`]) into its resources, each
/// parsed and validated against its name. An error means the answer as a whole is unreadable.
/// Pure, so that the proxy's reading of whatever a control plane sends is fuzzed on its own.
pub fn read_answer(bytes: &[u8]) -> Result<Vec<CheckedUpdate>, InvalidConfig> {
    check_size(bytes.len())?;
    let answer: DiscoveryResponse<serde_json::Value> = parse_json(bytes)?;
    Ok(answer
        .resources
        .into_iter()
        .enumerate()
        .map(|(index, update)| CheckedUpdate {
            content: check_resource(&update.name, update.content, index),
            name: update.name,
            version: update.version,
        })
        .collect())
}

/// Parses and validates the content of resource `index` of an answer against the resource's
/// name; refusals name the field below `resources[index].content`.
pub fn check_resource(
    name: &str,
    content: serde_json::Value,
    index: usize,
) -> Result<ResourceContent, InvalidConfig> {
    let prefix = format!("resources[{index}].content");
    let content: ResourceContent = from_value(content, &prefix)?;
    let invalid = |field: &str, message: String| InvalidConfig {
        field: if field.is_empty() {
            prefix.clone()
        } else {
            format!("{prefix}.{field}")
        },
        message,
    };
    match (&content, parse_service_resource(name)) {
        (ResourceContent::Inbound(policy), None) if name == INBOUND_RESOURCE => {
            policy
                .validate()
                .map_err(|e| invalid(&format!("inbound.{}", e.field), e.message))?
        }
        (ResourceContent::Service(config), Some((namespace, service))) => {
            config
                .validate()
                .map_err(|e| invalid(&format!("service.{}", e.field), e.message))?;
            if config.namespace != namespace || config.name != service {
                return Err(invalid(
                    "service.name",
                    format!(
                        "the resource {name} holds service {}.{}",
                        config.name, config.namespace
                    ),
                ));
            }
        }
        (ResourceContent::NotFound(_), _) => {}
        _ => {
            return Err(invalid(
                "",
                format!("content of the wrong kind for resource {name}"),
            ));
        }
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_round_trip() {
        let name = service_resource("shop", "payments");
        assert_eq!(name, "service/shop/payments");
        assert_eq!(parse_service_resource(&name), Some(("shop", "payments")));
        assert_eq!(parse_service_resource("inbound"), None);
        assert_eq!(parse_service_resource("service/shop/"), None);
    }

    #[test]
    fn the_node_carries_the_listeners_and_reads_without_them() {
        let node = Node {
            service: "orders".into(),
            namespace: "shop".into(),
            pod: Some("orders-1".into()),
            inbound: Some("0.0.0.0:15006".parse().unwrap()),
            admin: Some("127.0.0.1:15020".parse().unwrap()),
        };
        let json = serde_json::to_value(&node).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"service": "orders", "namespace": "shop", "pod": "orders-1",
                               "inbound": "0.0.0.0:15006", "admin": "127.0.0.1:15020"})
        );
        assert_eq!(serde_json::from_value::<Node>(json).unwrap(), node);
        // An older proxy sends neither; an unknown field (a newer proxy's) is ignored.
        let old: Node = serde_json::from_value(serde_json::json!(
            {"service": "orders", "namespace": "shop", "listeners": []}))
        .unwrap();
        assert_eq!((old.inbound, old.admin), (None, None));
        let bare = serde_json::to_value(&old).unwrap();
        assert_eq!(
            bare,
            serde_json::json!({"service": "orders", "namespace": "shop"})
        );
        let ipv6: Node = serde_json::from_value(serde_json::json!(
            {"service": "orders", "namespace": "shop", "inbound": "[::]:15006"}))
        .unwrap();
        assert_eq!(ipv6.inbound, Some("[::]:15006".parse().unwrap()));
    }

    #[test]
    fn an_answer_is_read_resource_by_resource() {
        let answer = br#"{"resources": [
            {"name": "inbound", "version": 2,
             "content": {"inbound": {"rateLimit": {"requestsPerSecond": 1e-300, "burst": 1}}}},
            {"name": "service/shop/payments", "version": 3,
             "content": {"service": {"name": "payments", "namespace": "shop",
                                     "subsets": [{"name": "v1", "weight": 1}],
                                     "policy": {"retries": {"attempts": 1,
                                                "budget": {"ratio": 0.2, "minPerSecond": 2147483647}}}}}},
            {"name": "service/shop/orders", "version": 4,
             "content": {"service": {"name": "orders", "namespace": "shop",
                                     "subsets": [{"name": "v1", "weight": 1}]}}},
            {"name": "service/shop/ghost", "version": 5, "content": {"inbound": {}}}
        ]}"#;
        let updates = read_answer(answer).unwrap();
        let fields: Vec<_> = updates
            .iter()
            .map(|u| u.content.as_ref().err().map(|e| e.field.as_str()))
            .collect();
        assert_eq!(
            fields,
            [
                Some("resources[0].content.inbound.rateLimit.requestsPerSecond"),
                Some("resources[1].content.service.policy.retries.budget.minPerSecond"),
                None,
                Some("resources[3].content"),
            ]
        );
        assert_eq!(
            (updates[2].name.as_str(), updates[2].version),
            ("service/shop/orders", 4)
        );
        // The answer as a whole: not JSON, or too long.
        assert!(read_answer(b"{").is_err());
        let huge = vec![b' '; crate::bounds::CONFIG_MAX_BYTES + 1];
        assert!(read_answer(&huge).unwrap_err().message.contains("16 MiB"));
    }

    #[test]
    fn content_is_externally_tagged() {
        let update = ResourceUpdate {
            name: "service/shop/x".into(),
            version: 3,
            content: ResourceContent::NotFound("no such service".into()),
        };
        let json = serde_json::to_value(&update).unwrap();
        assert_eq!(json["content"]["notFound"], "no such service");
    }
}
