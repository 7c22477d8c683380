//! `weir-operator test-connection`: what `helm test` runs, from the operator's own image, so a
//! cluster without access to a public registry can run it (no busybox, no shell).
//!
//! It asks what a sidecar depends on, the way a sidecar asks it: the operator Service's `/ready`
//! answers 200, then a poll of the config API for an inbound policy answers 200, presenting the
//! test pod's projected ServiceAccount token (audience `weir`) when `--token-file` is given, as
//! the injected proxy does. A poll refused with 401 therefore says the chart's token review (its
//! RBAC, the API server's TokenReview) is broken, not merely that the operator is up.
//!
//! A plain HTTP/1 client of hyper-util is enough: both endpoints are the operator's own, in
//! plain HTTP inside the cluster.

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::path::Path;
use std::time::Duration;

/// How long each request may take, the long-poll included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The poll's own wait: short, since the inbound policy is answered at once.
const WAIT_SECONDS: u64 = 1;
/// At most this much of an answer is shown.
const SHOWN: usize = 512;

/// What to test.
#[derive(Debug, Clone)]
pub struct Target {
    /// The operator's admin listener, e.g. `http://weir-operator.weir-system.svc:15011`.
    pub admin: Uri,
    /// The config API, e.g. `http://weir-operator.weir-system.svc:15010`.
    pub config_api: Uri,
    /// The namespace the poll names (the test pod's).
    pub namespace: String,
    /// The token to present, read once.
    pub token_file: Option<std::path::PathBuf>,
}

/// Runs both checks; `Ok` holds one line per check passed, `Err` says which failed and why.
pub async fn run(target: &Target) -> Result<Vec<String>, String> {
    let client: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut passed = Vec::new();
    let ready = join(&target.admin, "/ready")?;
    let (status, body) = send(
        &client,
        Request::get(&ready)
            .body(Full::default())
            .map_err(|e| e.to_string())?,
    )
    .await?;
    if status != StatusCode::OK {
        return Err(format!("GET {ready}: {status}: {body}"));
    }
    passed.push(format!("GET {ready}: {status}"));

    let discovery = join(&target.config_api, "/v1/discovery")?;
    let poll = serde_json::json!({
        "node": {"service": "helm-test", "namespace": target.namespace},
        "resources": [{"name": "inbound"}],
        "waitSeconds": WAIT_SECONDS,
    });
    let mut request =
        Request::post(&discovery).header(http::header::CONTENT_TYPE, "application/json");
    if let Some(path) = &target.token_file {
        let token = read_token(path)?;
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from(poll.to_string())))
        .map_err(|e| e.to_string())?;
    let (status, body) = send(&client, request).await?;
    if status != StatusCode::OK {
        let hint = if status == StatusCode::UNAUTHORIZED {
            if target.token_file.is_some() {
                " (the operator could not have the token reviewed: check its tokenreviews RBAC and log)"
            } else {
                " (the operator requires a token: give --token-file)"
            }
        } else {
            ""
        };
        return Err(format!("POST {discovery}: {status}{hint}: {body}"));
    }
    passed.push(format!("POST {discovery}: {status}"));
    Ok(passed)
}

fn join(base: &Uri, path: &str) -> Result<Uri, String> {
    let text = format!("{}{path}", base.to_string().trim_end_matches('/'));
    text.parse().map_err(|e| format!("{text:?}: {e}"))
}

fn read_token(path: &Path) -> Result<String, String> {
    let token = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(format!("{}: empty token", path.display()));
    }
    Ok(token.to_owned())
}

async fn send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, String), String> {
    let what = format!("{} {}", request.method(), request.uri());
    let response = tokio::time::timeout(REQUEST_TIMEOUT, client.request(request))
        .await
        .map_err(|_| format!("{what}: no answer within {}s", REQUEST_TIMEOUT.as_secs()))?
        .map_err(|e| format!("{what}: {}", chain(&e)))?;
    let status = response.status();
    let body = tokio::time::timeout(REQUEST_TIMEOUT, response.into_body().collect())
        .await
        .map_err(|_| {
            format!(
                "{what}: body not finished within {}s",
                REQUEST_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("{what}: {e}"))?
        .to_bytes();
    let mut shown = String::from_utf8_lossy(&body[..body.len().min(SHOWN)]).into_owned();
    if body.len() > SHOWN {
        shown.push('…');
    }
    Ok((status, shown))
}

/// An error with its causes: hyper-util says only "client error (Connect)"; the cause says
/// whether the name did not resolve or the connection was refused.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
