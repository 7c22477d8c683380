//! A `--config` file's bytes into parsing and validation: a config or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_proxy_api::{ProxyConfig, bounds};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(config) = ProxyConfig::from_json(bytes) {
        // What validation promises: nothing outside the Bounds table gets through.
        assert!(config.services.len() <= bounds::MAX_SERVICES);
        for service in &config.services {
            for route in service.routes() {
                assert!(route.subsets.iter().all(|s| bounds::WEIGHT.contains(s.weight)));
                assert!(route.port != Some(0));
            }
            if let Some(t) = &service.policy.timeouts {
                for d in [t.request, t.per_try, t.connect, t.idle].into_iter().flatten() {
                    assert!(bounds::DURATION.contains(d.get()));
                }
            }
        }
        if let Some(rl) = &config.inbound.rate_limit {
            assert!(bounds::REQUESTS_PER_SECOND.contains_f64(rl.requests_per_second));
        }
    }
});
