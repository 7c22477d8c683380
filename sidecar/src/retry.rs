//! What a failed attempt was, whether the policy retries it, and how long to wait first.
//!
//! The retry loop itself lives in the outbound proxy rather than in `tower::retry::Retry`:
//! each attempt must pick its own endpoint, charge its outcome to that endpoint's outlier
//! detection and to the breaker, run under a per-try timeout inside the overall deadline, and
//! never retry a refusal another sidecar made. The budget is our own: see `retry_budget`.

use crate::endpoint::Outcome;
use http::StatusCode;
use std::time::Duration;
use weir_proxy_api::{Backoff, Jitter, RetryOn};

/// An attempt that did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The endpoint answered with this status (5xx or 409).
    Status(StatusCode),
    /// No response headers within the per-try timeout.
    PerTryTimeout,
    /// No connection could be made.
    Connect,
    /// The connection broke before the response headers arrived.
    Reset,
}

impl Failure {
    /// Classifies an answer; `None` for a success (anything below 500 but 409).
    pub fn of_status(status: StatusCode) -> Option<Self> {
        (status.is_server_error() || status == StatusCode::CONFLICT).then_some(Self::Status(status))
    }

    fn is_gateway_error(self) -> bool {
        match self {
            Self::Status(s) => matches!(s.as_u16(), 502..=504),
            Self::PerTryTimeout | Self::Connect | Self::Reset => true,
        }
    }

    /// How outlier detection and the breaker count it.
    pub fn outcome(self) -> Outcome {
        match self {
            Self::Status(s) if !s.is_server_error() => Outcome::Success,
            f if f.is_gateway_error() => Outcome::GatewayError,
            _ => Outcome::ServerError,
        }
    }

    /// Whether the policy's `retryOn` classes cover it.
    pub fn is_retried_by(self, retry_on: &[RetryOn]) -> bool {
        retry_on.iter().any(|class| match class {
            RetryOn::ServerError => !matches!(self, Self::Status(StatusCode::CONFLICT)),
            RetryOn::GatewayError => self.is_gateway_error(),
            RetryOn::ConnectFailure => self == Self::Connect,
            RetryOn::Reset => self == Self::Reset,
            RetryOn::Retriable4xx => self == Self::Status(StatusCode::CONFLICT),
            // Wired by the 429-awareness and gRPC work of this wave.
            RetryOn::TooManyRequests
            | RetryOn::Cancelled
            | RetryOn::DeadlineExceeded
            | RetryOn::ResourceExhausted
            | RetryOn::Unavailable => false,
        })
    }
}

/// The wait before retry number `retry` (1 for the first retry): exponential, capped, and with
/// full jitter drawn uniformly from zero to that value, so that clients that failed together do
/// not come back together.
pub fn backoff(policy: &Backoff, retry: u32) -> Duration {
    let base = policy.base.get().as_secs_f64();
    let cap = policy.max.get().as_secs_f64();
    let exp = policy
        .multiplier
        .powi(retry.saturating_sub(1).min(64) as i32);
    let ceiling = (base * exp).min(cap);
    let secs = match policy.jitter {
        Jitter::Full => ceiling * fastrand::f64(),
        Jitter::None => ceiling,
    };
    // Within the bounds `secs` is at most `max`; a NaN or negative from values outside them
    // (a multiplier below zero, say) must not panic the request.
    Duration::try_from_secs_f64(secs)
        .unwrap_or(policy.max.get())
        .min(policy.max.get())
}

/// Methods that are safe to send twice; others need `x-weir-retry: true`.
pub fn is_idempotent(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::PUT
            | http::Method::DELETE
    )
}

/// The request header by which a client declares a non-idempotent request safe to retry.
pub const RETRY_OPT_IN_HEADER: &str = "x-weir-retry";

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proxy_api::Duration as D;

    #[test]
    fn classes_cover_what_they_say() {
        let s = |c: u16| Failure::Status(StatusCode::from_u16(c).unwrap());
        assert!(s(500).is_retried_by(&[RetryOn::ServerError]));
        assert!(!s(500).is_retried_by(&[RetryOn::GatewayError]));
        assert!(s(503).is_retried_by(&[RetryOn::GatewayError]));
        assert!(Failure::PerTryTimeout.is_retried_by(&[RetryOn::GatewayError]));
        assert!(Failure::Connect.is_retried_by(&[RetryOn::ConnectFailure]));
        assert!(!Failure::Reset.is_retried_by(&[RetryOn::ConnectFailure]));
        assert!(s(409).is_retried_by(&[RetryOn::Retriable4xx]));
        assert!(!s(409).is_retried_by(&[RetryOn::ServerError]));
        assert_eq!(Failure::of_status(StatusCode::NOT_FOUND), None);
        assert_eq!(s(500).outcome(), Outcome::ServerError);
        assert_eq!(Failure::PerTryTimeout.outcome(), Outcome::GatewayError);
        assert_eq!(s(409).outcome(), Outcome::Success);
    }

    #[test]
    fn backoff_grows_to_the_cap_with_full_jitter() {
        let mut p = Backoff {
            base: D::from_millis(100),
            max: D::from_millis(1000),
            multiplier: 2.0,
            jitter: Jitter::None,
        };
        let ms = |p: &Backoff, n| backoff(p, n).as_millis();
        assert_eq!(
            (ms(&p, 1), ms(&p, 2), ms(&p, 3), ms(&p, 10)),
            (100, 200, 400, 1000)
        );
        p.jitter = Jitter::Full;
        let draws: Vec<_> = (0..200).map(|_| ms(&p, 3)).collect();
        assert!(draws.iter().all(|&d| d <= 400));
        assert!(
            draws.iter().any(|&d| d < 200),
            "full jitter reaches below half"
        );
    }

    #[test]
    fn backoff_at_the_bounds_and_beyond_never_panics() {
        let day = D::from_secs(86_400);
        for (base, max, multiplier) in [
            (D::from_millis(1), D::from_millis(1), 1.0),
            (day, day, 10.0),
            (D::from_millis(1), day, 10.0),
            (day, D::from_millis(1), 10.0),
            (D(Duration::MAX), D(Duration::MAX), 10.0),
            (day, day, f64::NAN),
            (day, day, -3.0),
            (D(Duration::ZERO), day, f64::INFINITY),
        ] {
            for jitter in [Jitter::None, Jitter::Full] {
                let p = Backoff {
                    base,
                    max,
                    multiplier,
                    jitter,
                };
                for retry in [0, 1, 2, 10, 64, 65, u32::MAX] {
                    assert!(backoff(&p, retry) <= max.get());
                }
            }
        }
    }
}
