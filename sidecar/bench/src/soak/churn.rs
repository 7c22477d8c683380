//! The churning configs of the soak: a sequence of ProxyConfig documents, one per generation,
//! each a few edits away from the last (weights, load-balancing policy, policies on and off),
//! with every fifth one invalid in a way the contract says must be refused.
//!
//! Pure: the generation number decides everything, so a run can be replayed and the documents
//! tested without a sidecar.

use serde_json::{Value, json};
use std::net::SocketAddr;

/// The services the soak calls (in namespace `default`) and the `Host` it uses for each.
pub const NORMAL: &str = "normal";
pub const SLOW: &str = "slow";
pub const FLAKY: &str = "flaky";

/// The upstreams the configs point at.
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    /// Two healthy upstreams: the two subsets of [`NORMAL`]; the first is also the app.
    pub healthy: [SocketAddr; 2],
    /// An upstream that pauses before answering: [`SLOW`].
    pub slow: SocketAddr,
    /// An upstream that answers 503: with the second healthy one, [`FLAKY`].
    pub failing: SocketAddr,
}

/// One config document the soak writes.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Its `version` (the generation number plus one).
    pub version: u64,
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// `None` for a valid config; else what makes it invalid.
    pub invalid: Option<&'static str>,
}

/// What makes each invalid generation invalid, in turn. The last three are the numbers issue
/// 11 found to freeze or crash a sidecar; DESIGN's Bounds table puts them out of range.
const INVALID: [&str; 5] = [
    "not JSON",
    "all weights zero",
    "retries.attempts 11 (range 0-10)",
    "timeouts.request 5000000000000000h (range 1ms-24h)",
    "retries.budget.minPerSecond 2147483647 (range 0-1,000,000)",
];

/// Generation `n`: every fifth (n = 4, 9, 14…) is invalid.
pub fn generation(n: u64, endpoints: &Endpoints, inbound_rate: f64) -> Generation {
    let version = n + 1;
    let mut config = valid(n, endpoints, inbound_rate);
    config["version"] = json!(version);
    if n % 5 != 4 {
        return Generation {
            version,
            bytes: serde_json::to_vec_pretty(&config).unwrap_or_default(),
            invalid: None,
        };
    }
    let which = INVALID[((n / 5) % INVALID.len() as u64) as usize];
    let normal = &mut config["services"][0];
    match which {
        "not JSON" => {
            let mut bytes = serde_json::to_vec_pretty(&config).unwrap_or_default();
            bytes.truncate(bytes.len() / 2);
            return Generation {
                version,
                bytes,
                invalid: Some(which),
            };
        }
        "all weights zero" => {
            normal["subsets"][0]["weight"] = json!(0);
            normal["subsets"][1]["weight"] = json!(0);
        }
        w if w.starts_with("retries.attempts") => {
            normal["policy"]["retries"]["attempts"] = json!(11);
        }
        w if w.starts_with("timeouts.request") => {
            normal["policy"]["timeouts"]["request"] = json!("5000000000000000h");
        }
        _ => {
            normal["policy"]["retries"]["budget"] =
                json!({"ratio": 0.2, "minPerSecond": 2147483647u64});
        }
    }
    Generation {
        version,
        bytes: serde_json::to_vec_pretty(&config).unwrap_or_default(),
        invalid: Some(which),
    }
}

/// The valid document of generation `n`, before its version is set.
fn valid(n: u64, e: &Endpoints, inbound_rate: f64) -> Value {
    // Weights walk 0/100 → 100/0 and back; never both zero.
    let v1 = (n % 5) * 25;
    let balancer = ["round-robin", "least-request", "ewma"][(n % 3) as usize];
    let normal = json!({
        "name": NORMAL,
        "namespace": "default",
        "subsets": [
            {"name": "v1", "weight": v1, "endpoints": [e.healthy[0].to_string()]},
            {"name": "v2", "weight": 100 - v1, "endpoints": [e.healthy[1].to_string()]},
        ],
        // Never changes an answer of a healthy upstream.
        "policy": {
            "timeouts": {"request": "10s", "connect": "1s"},
            "retries": {"attempts": 2, "retryOn": ["connect-failure", "reset"]},
            "loadBalancer": {"policy": balancer},
        },
    });
    let mut slow = json!({
        "name": SLOW,
        "namespace": "default",
        "subsets": [{"name": "default", "weight": 1, "endpoints": [e.slow.to_string()]}],
    });
    if n.is_multiple_of(2) {
        // Cuts the slowest answers of the slow upstream: 504 `timeout`.
        slow["policy"] = json!({"timeouts": {"request": "250ms"}});
    }
    let mut flaky_policy = json!({
        "retries": {
            "attempts": 2,
            "retryOn": ["5xx"],
            "budget": {"ratio": 0.2, "minPerSecond": 10},
        },
        "loadBalancer": {"policy": balancer},
    });
    if n % 3 != 2 {
        flaky_policy["outlierDetection"] = json!({
            "consecutive5xxErrors": 3,
            "interval": "5s",
            "baseEjectionTime": "5s",
            "maxEjectionPercent": 50,
        });
    }
    if n % 2 == 1 {
        flaky_policy["circuitBreaker"] =
            json!({"failureThreshold": 5, "successThreshold": 1, "openDuration": "2s"});
    }
    let flaky = json!({
        "name": FLAKY,
        "namespace": "default",
        "subsets": [{
            "name": "default",
            "weight": 1,
            "endpoints": [e.healthy[1].to_string(), e.failing.to_string()],
        }],
        "policy": flaky_policy,
    });
    let mut inbound = json!({"timeouts": {"request": "5s"}});
    if n.is_multiple_of(2) {
        // Half the inbound traffic's rate: some requests are refused `rate-limited`.
        let rps = (inbound_rate / 2.0).clamp(1.0, 1_000_000.0).round();
        let burst = (rps / 10.0).clamp(1.0, 1_000_000.0).round();
        inbound["rateLimit"] =
            json!({"requestsPerSecond": rps, "burst": burst as u64, "key": "none"});
    }
    if n.is_multiple_of(3) {
        inbound["bulkhead"] = json!({"maxConcurrent": 8, "maxQueued": 8, "queueTimeout": "50ms"});
    }
    json!({"version": 0, "inbound": inbound, "services": [normal, slow, flaky]})
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proxy_api::ProxyConfig;

    fn endpoints() -> Endpoints {
        Endpoints {
            healthy: [
                "127.0.0.1:4001".parse().unwrap(),
                "127.0.0.1:4002".parse().unwrap(),
            ],
            slow: "127.0.0.1:4003".parse().unwrap(),
            failing: "127.0.0.1:4004".parse().unwrap(),
        }
    }

    #[test]
    fn valid_generations_validate_and_change_every_time() {
        let mut last = Vec::new();
        for n in (0..60).filter(|n| n % 5 != 4) {
            let generation = generation(n, &endpoints(), 500.0);
            assert_eq!(generation.invalid, None);
            assert_eq!(generation.version, n + 1);
            let config = ProxyConfig::from_json(&generation.bytes)
                .unwrap_or_else(|e| panic!("generation {n}: {e}"));
            assert_eq!(config.version, n + 1);
            assert_eq!(config.services.len(), 3);
            let weights: u32 = config.services[0].subsets.iter().map(|s| s.weight).sum();
            assert_eq!(weights, 100);
            assert_ne!(generation.bytes, last);
            last = generation.bytes;
        }
    }

    #[test]
    fn policies_go_on_and_off() {
        let on = |n| ProxyConfig::from_json(&generation(n, &endpoints(), 500.0).bytes).unwrap();
        let (even, odd) = (on(0), on(1));
        assert!(even.inbound.rate_limit.is_some() && odd.inbound.rate_limit.is_none());
        assert_eq!(
            even.inbound
                .rate_limit
                .as_ref()
                .unwrap()
                .requests_per_second,
            250.0
        );
        assert!(even.services[1].policy.timeouts.is_some());
        assert!(odd.services[1].policy.timeouts.is_none());
        assert!(odd.services[2].policy.circuit_breaker.is_some());
        assert!(even.services[2].policy.circuit_breaker.is_none());
        assert!(on(0).inbound.bulkhead.is_some() && on(1).inbound.bulkhead.is_none());
        assert!(on(2).services[2].policy.outlier_detection.is_none());
    }

    #[test]
    fn every_fifth_generation_is_invalid_in_turn() {
        let invalid: Vec<_> = (0..25)
            .map(|n| generation(n, &endpoints(), 500.0))
            .filter_map(|g| g.invalid)
            .collect();
        assert_eq!(invalid, INVALID);
        // The ones the API refused before DESIGN's Bounds table existed; the others are out of
        // that table's ranges, and the soak reports whether the sidecar refused them.
        for n in [4, 9, 14] {
            let generation = generation(n, &endpoints(), 500.0);
            assert!(
                ProxyConfig::from_json(&generation.bytes).is_err(),
                "{:?}",
                generation.invalid
            );
        }
        let huge = String::from_utf8(generation(24, &endpoints(), 500.0).bytes).unwrap();
        assert!(huge.contains("2147483647"));
        let long = String::from_utf8(generation(19, &endpoints(), 500.0).bytes).unwrap();
        assert!(long.contains("5000000000000000h"));
    }
}
