//! What Weir's tests share, in one dev-dependency: every crate's tests start real servers on
//! loopback, run the real binaries and wait for something to become true, and before this crate
//! each test folder carried its own copy of those helpers.
//!
//! Module map:
//! - [`poll`]: [`eventually`] (an async check polled until it holds or a limit passes),
//!   [`eventually_some`] (a check that yields a value, panicking with what it waited for),
//!   [`free_port`] / [`free_addr`] and [`wait_for_port`] on 127.0.0.1.
//! - [`temp`]: named temporary folders on `tempfile` (removed on drop, `keep()` to look after a
//!   failure), [`write_atomically`], the write-then-rename editors and ConfigMaps do, and
//!   [`exclusive_lock`], which serialises tests that need the same fixed ports.
//! - [`serve`](mod@serve): [`serve()`], the one accept loop of every in-test server (HTTP/1.1
//!   and h2c); [`Upstream`], an app that answers as its [`Action`] says (or as `fixed`, `flaky`
//!   and `switched` build it) and counts requests and connections; [`upgrade_echo`], an app
//!   that switches protocols and echoes bytes.
//! - [`scripted`]: [`Scripted`], a server whose [`Answer`]s are any status, headers, body frames
//!   and trailers (gRPC over h2c), per request or in a fixed `sequence`.
//! - [`admin`]: [`FakeAdmin`], a stand-in for a sidecar's admin listener serving a `/metrics`
//!   text the test sets and changes (what the operator's autoscaler and canary scrape).
//! - [`client`](mod@client): a plain HTTP client ([`send`], [`get`], [`get_with`],
//!   [`get_ok`]), raw bytes on a socket ([`raw_exchange`], [`raw_request`]) and
//!   [`FixedConnector`] (every connection to one address, as `HTTP_PROXY`).
//! - [`process`]: [`Process`], a real binary in its own process group with its output in a log
//!   file, waited for by port or log line, stopped with SIGTERM then SIGKILL of the whole group.
//! - [`metrics`]: [`metric`] and [`metric_with`], lookups in Prometheus text.
//! - [`mesh`]: [`local_service`], a `LocalService` as the YAML text of a local mesh folder.
//!
//! Why hand-written: hyper has no ready-made "serve this closure on this listener" for tests, and
//! the polling, the process-group handling and the Prometheus lookups are a few lines each whose
//! crates (e.g. a full Prometheus parser) would weigh more than they save. Temporary folders are
//! `tempfile`'s, signals `nix`'s.

pub mod admin;
pub mod client;
pub mod mesh;
pub mod metrics;
pub mod poll;
pub mod process;
pub mod scripted;
pub mod serve;
pub mod temp;

pub use admin::FakeAdmin;
pub use client::{
    FixedConnector, client, get, get_ok, get_with, raw_exchange, raw_request, raw_status, send,
};
pub use mesh::local_service;
pub use metrics::{metric, metric_with};
pub use poll::{eventually, eventually_some, free_addr, free_port, wait_for_port};
pub use process::{Process, strip_ansi};
pub use scripted::{Answer, Scripted};
pub use serve::{Action, Upstream, serve, upgrade_echo};
pub use temp::{exclusive_lock, temp_dir, write_atomically};
