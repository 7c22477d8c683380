//! A config API answer's bytes into the proxy's reading of it (`protocol::read_answer`): each
//! resource checked on its own, or the answer refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = weir_proxy_api::protocol::read_answer(bytes);
});
