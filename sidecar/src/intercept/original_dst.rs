//! Where an intercepted connection was going before `REDIRECT` sent it to us: the kernel keeps
//! it in the connection's conntrack entry and hands it out with `SO_ORIGINAL_DST`.
//!
//! Read through `nix`'s safe socket options: the workspace denies unsafe code.

use std::net::SocketAddr;
use tokio::net::TcpStream;

/// The original destination of `stream` when it differs from the address it arrived at (the
/// connection was redirected); `None` for a connection made to the listener itself, and
/// whenever the kernel cannot say (no conntrack entry, not Linux).
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let local = canonical(stream.local_addr().ok()?);
    match query(stream, local) {
        Ok(original) => {
            let original = canonical(original);
            (original != local).then_some(original)
        }
        Err(e) => {
            // ENOENT: no NAT entry, the usual answer for a connection that was not redirected.
            if e.raw_os_error() != Some(2) {
                tracing::debug!(%local, error = %e, "cannot read the original destination");
            }
            None
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a dual-stack socket shows) as IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn query(stream: &TcpStream, local: SocketAddr) -> std::io::Result<SocketAddr> {
    use nix::sys::socket::{SockaddrIn, SockaddrIn6, getsockopt, sockopt};
    let result = match local {
        SocketAddr::V4(_) => getsockopt(stream, sockopt::OriginalDst)
            .map(|raw| SocketAddr::from(std::net::SocketAddrV4::from(SockaddrIn::from(raw)))),
        SocketAddr::V6(_) => getsockopt(stream, sockopt::Ip6tOriginalDst)
            .map(|raw| SocketAddr::from(std::net::SocketAddrV6::from(SockaddrIn6::from(raw)))),
    };
    result.map_err(std::io::Error::from)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn query(_: &TcpStream, _: SocketAddr) -> std::io::Result<SocketAddr> {
    Err(std::io::ErrorKind::Unsupported.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_direct_connection_was_not_intercepted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(original_dst(&server), None);
    }

    #[test]
    fn mapped_addresses_compare_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        assert_eq!(canonical(mapped), "10.0.0.1:80".parse().unwrap());
    }
}
