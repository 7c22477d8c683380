//! Waiting for something to become true, and free loopback ports.
//!
//! Hand-written: a loop on tokio's clock, so a test on the paused clock (`start_paused`) waits
//! in virtual time; no crate offers this for async checks without pulling in a test framework.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// How long the polls wait between two checks.
pub const POLL_EVERY: Duration = Duration::from_millis(20);

/// Polls `check` every [`POLL_EVERY`] until it returns true or `limit` passes; returns whether it
/// did. The check runs at least once, and once more at the limit.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Polls `check` every [`POLL_EVERY`] until it yields a value, which it returns; panics with
/// "timed out waiting for {what}" when `within` passes first.
pub async fn eventually_some<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// A loopback address nothing listens on right now (bound then released: another process may
/// take it in between, which is rare enough for tests).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// The port of [`free_addr`].
pub fn free_port() -> u16 {
    free_addr().port()
}

/// Whether something accepts TCP connections on `addr` within `limit`.
pub async fn wait_for_port(addr: SocketAddr, limit: Duration) -> bool {
    eventually(limit, || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await
}
