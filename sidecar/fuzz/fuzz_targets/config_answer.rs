//! A config API answer's bytes, as the sidecar's control-plane client reads them: refused as a
//! whole, or each resource accepted or refused on its own — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = weir_proxy_api::protocol::read_answer(data);
});
