//! Protocol detection on intercepted connections: HTTP is served with policies, anything else
//! passes through as opaque TCP.
//!
//! The first bytes decide, read with `peek` so that they stay in the socket for whoever serves
//! the connection. A connection that says nothing within the wait is opaque: server-speaks-first
//! protocols (MySQL, SMTP, …) wait for a greeting that only the real server can send.

use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a client-speaks-first protocol gets to say its first bytes. HTTP clients write their
/// request as soon as they are connected; 100 ms is what Istio settled on too.
pub const SNIFF_TIMEOUT: Duration = Duration::from_millis(100);

/// The HTTP/2 connection preface (RFC 9113 §3.4), sent first with prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Request methods recognized as HTTP/1 (RFC 9110 §9 and PATCH). A closed list rather than any
/// token: text protocols such as Redis's inline commands (`SET k v`) also start with a capitalised
/// word and a space.
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
];

/// What a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.x or HTTP/2 with prior knowledge: serve it.
    Http,
    /// Anything else: splice it.
    Opaque,
}

/// What the bytes seen so far say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Is(Protocol),
    /// Too few bytes to tell.
    NeedMore,
}

/// Classifies the first bytes of a connection.
pub fn classify(bytes: &[u8]) -> Verdict {
    if bytes.is_empty() {
        return Verdict::NeedMore;
    }
    let agrees = |pattern: &[u8]| {
        let n = bytes.len().min(pattern.len());
        bytes[..n] == pattern[..n]
    };
    if agrees(H2_PREFACE) {
        return if bytes.len() >= H2_PREFACE.len() {
            Verdict::Is(Protocol::Http)
        } else {
            Verdict::NeedMore
        };
    }
    let mut undecided = false;
    for method in METHODS {
        if !agrees(method) {
            continue;
        }
        // The request target must follow: origin form `/…`, asterisk form `*`, absolute form
        // `http://…`, or any authority after CONNECT. `GET key` (Redis inline) is not HTTP.
        match bytes.get(method.len()) {
            None => undecided = true,
            Some(b'/' | b'*' | b'h' | b'H') => return Verdict::Is(Protocol::Http),
            Some(_) if method == b"CONNECT " => return Verdict::Is(Protocol::Http),
            Some(_) => {}
        }
    }
    if undecided {
        Verdict::NeedMore
    } else {
        Verdict::Is(Protocol::Opaque)
    }
}

/// Peeks at `stream` until its first bytes tell what it is, or until `wait` has passed (then it
/// is opaque). A client that closes without a word is opaque too: the close passes on.
pub async fn sniff(stream: &TcpStream, wait: Duration) -> Protocol {
    let deadline = Instant::now() + wait;
    // Long enough for the HTTP/2 preface and the longest method with its target's first byte.
    let mut buf = [0u8; 32];
    loop {
        let peeked = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Err(_) => return Protocol::Opaque,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "peeking at an intercepted connection failed");
                return Protocol::Opaque;
            }
            Ok(Ok(0)) => return Protocol::Opaque,
            Ok(Ok(n)) => n,
        };
        match classify(&buf[..peeked]) {
            Verdict::Is(protocol) => return protocol,
            Verdict::NeedMore if peeked == buf.len() || Instant::now() >= deadline => {
                return Protocol::Opaque;
            }
            // `peek` answers at once while bytes are waiting, so wait a little for more rather
            // than spin on the same few.
            Verdict::NeedMore => {
                tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_millis(2)))
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[test]
    fn http_requests_are_http() {
        for start in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /orders HTTP/1.1",
            b"OPTIONS * HTTP/1.1",
            b"GET http://payments/ HTTP/1.1",
            b"CONNECT payments:443 HTTP/1.1",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0",
        ] {
            assert_eq!(classify(start), Verdict::Is(Protocol::Http), "{start:?}");
        }
    }

    #[test]
    fn other_protocols_are_opaque() {
        for start in [
            &b"\x16\x03\x01\x02\x00"[..], // a TLS ClientHello
            b"*2\r\n$3\r\nGET\r\n",       // Redis (RESP)
            b"GET key\r\n",               // Redis inline
            b"hello\n",
            b"get / HTTP/1.1", // methods are case-sensitive
            b"PRI * HTTP/1.1",
            b"\0\0\0\x08\x04\xd2\x16\x2f", // PostgreSQL SSLRequest
        ] {
            assert_eq!(classify(start), Verdict::Is(Protocol::Opaque), "{start:?}");
        }
    }

    #[test]
    fn a_prefix_of_http_needs_more() {
        for start in [&b"G"[..], b"GET", b"GET ", b"DELE", b"PRI * HTTP/2", b""] {
            assert_eq!(classify(start), Verdict::NeedMore, "{start:?}");
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn sniffing_leaves_the_bytes_in_place() {
        let (mut client, server) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(sniff(&server, SNIFF_TIMEOUT).await, Protocol::Http);
        let mut buf = [0u8; 64];
        let n = server.peek(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"GET / "));
    }

    #[tokio::test]
    async fn a_request_in_pieces_is_still_http() {
        let (mut client, server) = pair().await;
        client.write_all(b"GE").await.unwrap();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(b"T /x HTTP/1.1\r\n\r\n").await.unwrap();
            client
        });
        assert_eq!(sniff(&server, SNIFF_TIMEOUT).await, Protocol::Http);
        drop(writer.await);
    }

    #[tokio::test]
    async fn silence_is_opaque_after_the_wait() {
        let (_client, server) = pair().await;
        let start = Instant::now();
        assert_eq!(
            sniff(&server, Duration::from_millis(30)).await,
            Protocol::Opaque
        );
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    #[tokio::test]
    async fn a_stalled_prefix_is_opaque_after_the_wait() {
        let (mut client, server) = pair().await;
        client.write_all(b"GET").await.unwrap();
        assert_eq!(
            sniff(&server, Duration::from_millis(30)).await,
            Protocol::Opaque
        );
    }
}
