//! The webhook's HTTPS server: tokio-rustls for TLS (the certificate from [`ServingCert`], so
//! a renewal needs no restart), hyper-util's auto builder for HTTP/1.1 and HTTP/2 (the API
//! server speaks either), [`admission::handle`] for the requests.

use super::admission::{self, MAX_BODY_BYTES};
use super::inject::InjectionSettings;
use super::tls::ServingCert;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::IntCounterVec;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// A TLS handshake must finish within this (a client that stalls holds a task, not a thread,
/// but should not hold it forever).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The API server waits `timeoutSeconds` (5 s) for an answer; reading the body longer than
/// that is pointless.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `POST /inject` over HTTPS on `listener` until `shutdown` turns true, then lets open
/// requests finish (up to 5 s).
pub async fn serve(
    listener: TcpListener,
    cert: Arc<ServingCert>,
    settings: Arc<InjectionSettings>,
    admissions: Option<IntCounterVec>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), rustls::Error> {
    let acceptor = TlsAcceptor::from(cert.server_config()?);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "injection webhook listening (HTTPS)");
    }
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = super::stopped(&mut shutdown) => break,
        };
        while connections.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let settings = settings.clone();
        let admissions = admissions.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        connections.spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "webhook: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "webhook: TLS handshake timed out");
                    return;
                }
            };
            let service = service_fn(move |request: Request<Incoming>| {
                let settings = settings.clone();
                let admissions = admissions.clone();
                async move {
                    Ok::<_, Infallible>(respond(request, &settings, admissions.as_ref()).await)
                }
            });
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, error = %e, "webhook connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("webhook: connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
    connections.shutdown().await;
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
