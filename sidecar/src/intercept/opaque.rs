//! Connections that are not HTTP pass through unchanged: connect to where they were going and
//! copy both ways until both sides are done.
//!
//! No policy applies (Weir's policies are about requests, and there are none to see), and the
//! graceful drain does not wait for them: a database connection may stay open for hours, and
//! the app that holds it is shutting down too.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// Connecting to the real destination. Longer than a service's default connect timeout: an
/// opaque destination may be anywhere, and the app would have waited for it without Weir.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Splices `client` (from `peer`) to `target`. `direction` names the listener in logs.
pub async fn splice(mut client: TcpStream, peer: SocketAddr, target: SocketAddr, direction: &str) {
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await;
    let mut upstream = match connected {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(e)) => {
            tracing::info!(direction, %peer, %target, error = %e, "opaque connection: cannot connect");
            return;
        }
        Err(_) => {
            tracing::info!(direction, %peer, %target, timeout = ?CONNECT_TIMEOUT, "opaque connection: connect timed out");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((sent, received)) => {
            tracing::debug!(direction, %peer, %target, sent, received, "opaque connection closed");
        }
        Err(e) => {
            tracing::debug!(direction, %peer, %target, error = %e, "opaque connection ended with an error");
        }
    }
}
