//! The ProxyConfig documents the sidecar runs with (field names: `weir_proxy_api::config`).

use serde_json::{Value, json};
use std::net::SocketAddr;

/// The name the load generator puts in `Host` and the config gives the one service.
pub const SERVICE: &str = "upstream";

/// Every outbound policy block, set so that none of them changes an answer: the upstream never
/// fails, so retries, the breaker and outlier detection only do their bookkeeping.
fn every_outbound_policy() -> Value {
    json!({
        "timeouts": {"request": "30s", "perTry": "10s", "connect": "1s", "idle": "60s"},
        "retries": {
            "attempts": 2,
            "retryOn": ["5xx", "connect-failure", "reset"],
            "budget": {"ratio": 0.2, "minPerSecond": 10}
        },
        "circuitBreaker": {"failureThreshold": 50, "successThreshold": 1, "openDuration": "10s"},
        "outlierDetection": {
            "consecutive5xxErrors": 50,
            "consecutiveGatewayErrors": 50,
            "interval": "10s",
            "baseEjectionTime": "30s",
            "maxEjectionPercent": 50
        },
        "loadBalancer": {"policy": "least-request"}
    })
}

/// Every inbound policy block, with a rate limit and a bulkhead too large to ever refuse.
fn every_inbound_policy() -> Value {
    json!({
        "rateLimit": {"requestsPerSecond": 1_000_000.0, "burst": 1_000_000, "key": "none"},
        "bulkhead": {"maxConcurrent": 10_000, "maxQueued": 10_000, "queueTimeout": "1s"},
        "timeouts": {"request": "30s"}
    })
}

/// One service, [`SERVICE`] in namespace `default`, whose only endpoint is `endpoint`; with
/// `all_policies`, every outbound and inbound policy is on.
pub fn proxy_config(endpoint: SocketAddr, all_policies: bool) -> Value {
    let mut service = json!({
        "name": SERVICE,
        "namespace": "default",
        "subsets": [{"name": "default", "weight": 1, "endpoints": [endpoint.to_string()]}]
    });
    let mut config = json!({"version": 1});
    if all_policies {
        service["policy"] = every_outbound_policy();
        config["inbound"] = every_inbound_policy();
    }
    config["services"] = json!([service]);
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proxy_api::ProxyConfig;

    fn parse(value: &Value) -> ProxyConfig {
        ProxyConfig::from_json(&serde_json::to_vec(value).unwrap())
            .unwrap_or_else(|e| panic!("{e}: {value}"))
    }

    #[test]
    fn the_plain_config_validates_and_has_no_policy() {
        let endpoint: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let config = parse(&proxy_config(endpoint, false));
        assert_eq!(config.version, 1);
        assert_eq!(config.inbound, Default::default());
        let service = &config.services[0];
        assert_eq!(
            (service.name.as_str(), service.namespace.as_str()),
            (SERVICE, "default")
        );
        assert_eq!(service.subsets[0].endpoints, [endpoint]);
        assert_eq!(service.policy, Default::default());
    }

    #[test]
    fn the_all_policies_config_validates_with_every_block_on() {
        let config = parse(&proxy_config("127.0.0.1:4000".parse().unwrap(), true));
        let policy = &config.services[0].policy;
        let timeouts = policy.timeouts.as_ref().unwrap();
        assert!(timeouts.request.is_some() && timeouts.per_try.is_some());
        assert!(timeouts.connect.is_some() && timeouts.idle.is_some());
        assert_eq!(policy.retries.as_ref().unwrap().attempts, 2);
        assert!(policy.circuit_breaker.is_some());
        assert!(policy.outlier_detection.is_some());
        assert!(policy.load_balancer.is_some());
        let inbound = &config.inbound;
        let rate_limit = inbound.rate_limit.as_ref().unwrap();
        // As large as DESIGN's Bounds allow, so that it never refuses a request.
        assert_eq!(rate_limit.requests_per_second, 1_000_000.0);
        assert!(inbound.bulkhead.is_some());
        assert!(inbound.timeouts.as_ref().unwrap().request.is_some());
    }
}
