//! The webhook's HTTPS server: tokio-rustls for TLS (the certificate from [`ServingCert`], so
//! a renewal needs no restart), the operator's accept loop ([`crate::server`]:
//! HTTP/1.1 and HTTP/2, which the API server speaks either, with its bounds),
//! [`admission::handle`] for the requests.

use super::admission::{self, MAX_BODY_BYTES};
use super::inject::InjectionSettings;
use super::tls::ServingCert;
use crate::server::Server;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use prometheus::IntCounterVec;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// A TLS handshake must finish within this (a client that stalls holds a task, not a thread,
/// but should not hold it forever).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The API server waits `timeoutSeconds` (5 s) for an answer; reading the body longer than
/// that is pointless.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `POST /inject` over HTTPS on `listener` until `shutdown` turns true, then lets open
/// requests finish (up to 5 s). The bounds are [`Server`]'s defaults: a request head within
/// 10 s of the handshake, at most 1,024 connections.
pub async fn serve(
    listener: TcpListener,
    cert: Arc<ServingCert>,
    settings: Arc<InjectionSettings>,
    admissions: Option<IntCounterVec>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), rustls::Error> {
    let acceptor = TlsAcceptor::from(cert.server_config()?);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "injection webhook listening (HTTPS)");
    }
    let handler = move |_peer, request: Request<Incoming>| {
        let settings = settings.clone();
        let admissions = admissions.clone();
        async move { respond(request, &settings, admissions.as_ref()).await }
    };
    Server::new("injection webhook")
        .tls(acceptor, HANDSHAKE_TIMEOUT)
        .serve(listener, handler, async move {
            super::stopped(&mut shutdown).await;
        })
        .await;
    tracing::info!("injection webhook stopped");
    Ok(())
}

async fn respond(
    request: Request<Incoming>,
    settings: &InjectionSettings,
    admissions: Option<&IntCounterVec>,
) -> http::Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = match tokio::time::timeout(
        BODY_READ_TIMEOUT,
        Limited::new(body, MAX_BODY_BYTES).collect(),
    )
    .await
    {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            let mut response = http::Response::new(Full::new(Bytes::from(format!(
                "the body is over {MAX_BODY_BYTES} bytes\n"
            ))));
            *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return response;
        }
        Ok(Err(e)) => Err(format!("cannot read the body: {e}")),
        Err(_) => Err("the body did not arrive in time".to_owned()),
    };
    admission::handle(&parts.method, parts.uri.path(), body, settings, admissions)
}
