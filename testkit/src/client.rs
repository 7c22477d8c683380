//! Clients for the tests: whole requests and answers as plain values, raw bytes on a socket,
//! and a connector that sends everything to one address.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::time::Duration;

/// A pooled HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request with `Host: host` to `addr` and reads the whole answer: status, headers and
/// body (lossy UTF-8). Panics when no answer comes (the test's server is expected to answer).
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (u16, http::HeaderMap, String) {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", host);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder.body(Full::new(body)).expect("a request");
    let response = client()
        .request(request)
        .await
        .unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"));
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("the whole body").to_bytes();
    (
        status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// `GET path` with `Host: host`.
pub async fn get(addr: SocketAddr, path: &str, host: &str) -> (u16, http::HeaderMap, String) {
    send(addr, "GET", path, host, &[], Bytes::new()).await
}

/// `GET path` with `Host: host` and more `headers`.
pub async fn get_with(
    addr: SocketAddr,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, String) {
    send(addr, "GET", path, host, headers, Bytes::new()).await
}

/// `GET path`: the body of a 2xx answer within `within`, None for anything else (refused
/// connection, other status, no answer in time) — for polling a server that may not be up yet.
pub async fn get_ok(addr: SocketAddr, path: &str, within: Duration) -> Option<String> {
    let request = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .ok()?;
    let response = tokio::time::timeout(within, client().request(request))
        .await
        .ok()?
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body = tokio::time::timeout(within, response.into_body().collect())
        .await
        .ok()?
        .ok()?
        .to_bytes();
    Some(String::from_utf8_lossy(&body).into_owned())
}

/// Writes `request` as is to `addr` and reads until the response head is complete (or the
/// connection ends). Returns the head (status line and headers), the stream for more, and what
/// was read past the head.
pub async fn raw_exchange(
    addr: SocketAddr,
    request: &[u8],
) -> (String, tokio::net::TcpStream, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    // The server may answer and close before it read everything (an oversized header): a failed
    // write is not the test's concern, the answer is.
    let _ = stream.write_all(request).await;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut chunk))
            .await
            .expect("no answer within 3 s");
        match read {
            Ok(0) | Err(_) => break buf.len(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let rest = buf.split_off(head_end);
    (String::from_utf8_lossy(&buf).into_owned(), stream, rest)
}

/// Connects to `addr` and writes `request` as is; the stream, for the test to read, keep or drop
/// (a client gone at a chosen moment).
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream
        .write_all(request)
        .await
        .unwrap_or_else(|e| panic!("writing to {addr}: {e}"));
    stream
}

/// The status code of a raw response head.
pub fn raw_status(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response head: {head:?}"))
}

/// A connector that sends every connection to one address whatever the URI says: how an app
/// with `HTTP_PROXY` (or with transparent interception) reaches the outbound listener while
/// the URI names the service.
#[derive(Clone, Debug)]
pub struct FixedConnector(pub SocketAddr);

impl tower::Service<http::Uri> for FixedConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let addr = self.0;
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            Ok(TokioIo::new(stream))
        })
    }
}
