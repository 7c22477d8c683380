//! The one place where the sidecar's own answers are made: a status, an `x-weir-reason` header
//! and a short JSON body, as the sidecar contract's refusal table says.

use crate::body::{ProxyBody, full};
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use std::time::Duration;

/// The header that marks an answer made by a sidecar rather than by the application.
pub const REASON_HEADER: &str = "x-weir-reason";

/// Why the sidecar answered instead of the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    RateLimited,
    BulkheadFull,
    CircuitOpen,
    NoHealthyEndpoints,
    RetryBudgetExhausted,
    Timeout,
    UpstreamConnectFailure,
    /// The connection to the endpoint broke before the response headers arrived.
    UpstreamReset,
    /// The request itself is at fault: it cannot be routed (no Host, bad authority), its head
    /// is ambiguous (two Hosts), its method is not proxied (`CONNECT`) or its body broke.
    BadRequest,
    /// An abort injected by the policy's `faults` (answered with its configured status).
    FaultInjected,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate-limited",
            Self::BulkheadFull => "bulkhead-full",
            Self::CircuitOpen => "circuit-open",
            Self::NoHealthyEndpoints => "no-healthy-endpoints",
            Self::RetryBudgetExhausted => "retry-budget-exhausted",
            Self::Timeout => "timeout",
            Self::UpstreamConnectFailure => "upstream-connect-failure",
            Self::UpstreamReset => "upstream-reset",
            Self::BadRequest => "bad-request",
            Self::FaultInjected => "fault-injected",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::BulkheadFull
            | Self::CircuitOpen
            | Self::NoHealthyEndpoints
            | Self::RetryBudgetExhausted => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamConnectFailure | Self::UpstreamReset => StatusCode::BAD_GATEWAY,
            Self::BadRequest => StatusCode::BAD_REQUEST,
            // Always answered with the fault's own status; this is only the fallback.
            Self::FaultInjected => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A refusal with a human message (kept short and free of request data beyond names).
#[derive(Debug, Clone)]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
    /// For `rate-limited`: when a token will be there again.
    pub retry_after: Option<Duration>,
    /// A status other than the reason's own (`bad-request` is 405 for `CONNECT`).
    pub status: Option<StatusCode>,
}

impl Refusal {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            retry_after: None,
            status: None,
        }
    }

    /// The same refusal answered with `status` instead of the reason's own.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let body = serde_json::json!({
            "reason": self.reason.as_str(),
            "message": self.message,
        });
        let mut response = Response::new(full(Bytes::from(body.to_string())));
        *response.status_mut() = self.status.unwrap_or_else(|| self.reason.status());
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            REASON_HEADER,
            HeaderValue::from_static(self.reason.as_str()),
        );
        if let Some(after) = self.retry_after {
            // Whole seconds, rounded up: a client that waits this long finds a token.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}
