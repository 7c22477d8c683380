//! Transparent interception: the app calls services by their usual addresses and the pod's
//! iptables rules bring every TCP connection to the sidecar.
//!
//! - [`rules`]: the rule set as a pure function of the settings (tested as text);
//! - [`init`]: `weir-sidecar init`, which applies or removes it with `iptables-restore` (nft or
//!   legacy back end) — the only step that needs NET_ADMIN;
//! - [`original_dst`]: where a redirected connection was going (`SO_ORIGINAL_DST`);
//! - [`detect`]: HTTP or not, from the first bytes;
//! - [`opaque`]: what is not HTTP is spliced through unchanged.
//!
//! The listeners (`crate::server`) tie these together: a connection whose original destination
//! is not the listener itself was intercepted; it is sniffed, and served as HTTP or spliced.

pub mod detect;
pub mod init;
pub mod opaque;
pub mod original_dst;
pub mod rules;
