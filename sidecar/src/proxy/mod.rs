//! Moving requests: the outbound side (the app's calls out), the inbound side (calls to the app),
//! the upstream client they share, and header hygiene.

pub mod headers;
pub mod inbound;
pub mod outbound;
pub mod upstream;
