//! The launcher's HTTP client: hyper's pooled client over plain HTTP/1.1 on loopback, every call
//! bounded by a timeout so that a hanging service never stalls the dashboard.

use anyhow::{Context, Result};
use bytes::Bytes;
pub use http::Method;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::time::Duration;

/// Pooled keep-alive connections per address.
pub type Client = HyperClient<HttpConnector, Full<Bytes>>;

pub fn client() -> Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(1)));
    HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// A whole answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// One request, with its whole answer read, within `timeout`.
pub async fn send(
    client: &Client,
    method: Method,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Answer> {
    let mut request = Request::builder()
        .method(method.clone())
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    if body.is_some() {
        request = request.header(http::header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .context("building the request")?;
    let call = async {
        let response = client.request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        anyhow::Ok(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.with_context(|| format!("{method} http://{addr}{path}")),
        Err(_) => anyhow::bail!("{method} http://{addr}{path}: no answer within {timeout:?}"),
    }
}

pub async fn get(client: &Client, addr: SocketAddr, path: &str) -> Result<Answer> {
    send(
        client,
        Method::GET,
        addr,
        path,
        &[],
        None,
        Duration::from_secs(2),
    )
    .await
}

/// A JSON body sent with `method`.
pub async fn send_json(
    client: &Client,
    method: Method,
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
) -> Result<Answer> {
    let bytes = serde_json::to_vec(body)?;
    send(
        client,
        method,
        addr,
        path,
        &[],
        Some(bytes),
        Duration::from_secs(5),
    )
    .await
}
