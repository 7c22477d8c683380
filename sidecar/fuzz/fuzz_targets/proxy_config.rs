//! A config file's bytes through parsing and validation, as the sidecar reads one in file mode:
//! any input either parses into a config that validation accepts or refuses with a field named,
//! never a panic. An accepted config is also printed and read back, which must give it again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_proxy_api::ProxyConfig;

fuzz_target!(|data: &[u8]| {
    // Parsing and validation, with the size check first, as the file source does.
    let Ok(config) = ProxyConfig::from_json(data) else {
        return;
    };
    let again = serde_json::to_vec(&config).expect("a parsed config serializes");
    let back = ProxyConfig::from_json(&again).expect("a config reads back what it printed");
    assert_eq!(back, config);
});
