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
    /// The endpoint answered with this status (5xx, 409, or the app's own 429).
    Status(StatusCode),
    /// A gRPC answer whose `grpc-status` (in the headers or the trailers) is this non-zero code.
    Grpc(u16),
    /// No response headers within the per-try timeout.
    PerTryTimeout,
    /// No connection could be made.
    Connect,
    /// The connection broke before the response headers arrived.
    Reset,
}

/// gRPC status codes `retryOn` names.
const GRPC_CANCELLED: u16 = 1;
const GRPC_DEADLINE_EXCEEDED: u16 = 4;
const GRPC_RESOURCE_EXHAUSTED: u16 = 8;
const GRPC_UNAVAILABLE: u16 = 14;

impl Failure {
    /// Classifies an answer; `None` for a success (anything below 500 but 409 and 429).
    pub fn of_status(status: StatusCode) -> Option<Self> {
        (status.is_server_error()
            || status == StatusCode::CONFLICT
            || status == StatusCode::TOO_MANY_REQUESTS)
            .then_some(Self::Status(status))
    }

    /// The failure a `grpc-status` header or trailer says, if any (0 is OK; garbage is no
    /// status).
    pub fn of_grpc_status(headers: &http::HeaderMap) -> Option<Self> {
        let code = std::str::from_utf8(headers.get("grpc-status")?.as_bytes())
            .ok()?
            .trim()
            .parse::<u16>()
            .ok()?;
        (code != 0).then_some(Self::Grpc(code))
    }

    fn is_gateway_error(self) -> bool {
        match self {
            Self::Status(s) => matches!(s.as_u16(), 502..=504),
            Self::Grpc(_) => false,
            Self::PerTryTimeout | Self::Connect | Self::Reset => true,
        }
    }

    /// How outlier detection and the breaker count it: a 409, an app's 429 (an overload
    /// signal, answered by avoiding the endpoint for a while, not by ejecting it) and a gRPC
    /// status (the HTTP exchange worked) are not the endpoint failing.
    pub fn outcome(self) -> Outcome {
        match self {
            Self::Status(s) if !s.is_server_error() => Outcome::Success,
            Self::Grpc(_) => Outcome::Success,
            f if f.is_gateway_error() => Outcome::GatewayError,
            _ => Outcome::ServerError,
        }
    }

    /// Whether the policy's `retryOn` classes cover it.
    pub fn is_retried_by(self, retry_on: &[RetryOn]) -> bool {
        retry_on.iter().any(|class| match class {
            RetryOn::ServerError => match self {
                Self::Status(s) => s.is_server_error(),
                Self::Grpc(_) => false,
                Self::PerTryTimeout | Self::Connect | Self::Reset => true,
            },
            RetryOn::GatewayError => self.is_gateway_error(),
            RetryOn::ConnectFailure => self == Self::Connect,
            RetryOn::Reset => self == Self::Reset,
            RetryOn::Retriable4xx => self == Self::Status(StatusCode::CONFLICT),
            RetryOn::TooManyRequests => self == Self::Status(StatusCode::TOO_MANY_REQUESTS),
            RetryOn::Cancelled => self == Self::Grpc(GRPC_CANCELLED),
            RetryOn::DeadlineExceeded => self == Self::Grpc(GRPC_DEADLINE_EXCEEDED),
            RetryOn::ResourceExhausted => self == Self::Grpc(GRPC_RESOURCE_EXHAUSTED),
            RetryOn::Unavailable => self == Self::Grpc(GRPC_UNAVAILABLE),
        })
    }

    /// A short label for `x-weir-route`: the status code, or what happened.
    pub fn label(self) -> String {
        match self {
            Self::Status(s) => s.as_u16().to_string(),
            Self::Grpc(code) => format!("grpc-{code}"),
            Self::PerTryTimeout => "per-try-timeout".to_owned(),
            Self::Connect => "connect-failure".to_owned(),
            Self::Reset => "reset".to_owned(),
        }
    }
}

/// Whether `retryOn` names a gRPC class: only then are `grpc-status` headers and trailers read.
pub fn retries_grpc(retry_on: &[RetryOn]) -> bool {
    retry_on.iter().any(|class| {
        matches!(
            class,
            RetryOn::Cancelled
                | RetryOn::DeadlineExceeded
                | RetryOn::ResourceExhausted
                | RetryOn::Unavailable
        )
    })
}

// The overload waits belong to the endpoint that is avoided; named here too for the retry loop.
pub use crate::endpoint::{DEFAULT_OVERLOAD_WAIT, MAX_OVERLOAD_WAIT};

/// The wait a `Retry-After` header asks for: delay-seconds, or an HTTP-date (IMF-fixdate, the
/// form RFC 9110 §5.6.7 has senders use) measured against `now`. `None` when absent or
/// unreadable; a date in the past is no wait.
pub fn retry_after(headers: &http::HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long numbers saturate: the caller caps the wait anyway.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = parse_imf_fixdate(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` as a time. Our own few lines: the format is fixed, and a
/// dependency for one header is not worth it.
fn parse_imf_fixdate(value: &str) -> Option<std::time::SystemTime> {
    let fields: Vec<&str> = value.split_ascii_whitespace().collect();
    let [_weekday, day, month, year, time, "GMT"] = fields.as_slice() else {
        return None;
    };
    let day: u64 = day.parse().ok().filter(|d| (1..=31).contains(d))?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as u64
        + 1;
    let year: u64 = year.parse().ok().filter(|y| (1970..=9999).contains(y))?;
    let hms: Vec<u64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, s] = hms.as_slice() else {
        return None;
    };
    if *h > 23 || *m > 59 || *s > 60 {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (the civil-from-days algorithm, read
    // backwards), with March as the first month so the leap day ends the year.
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    let secs = days * 86_400 + h * 3_600 + m * 60 + s;
    std::time::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
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
    use weir_proxy_api::Retries;

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
        assert_eq!(
            s(429).outcome(),
            Outcome::Success,
            "an app's 429 is not charged"
        );
        assert!(s(429).is_retried_by(&[RetryOn::TooManyRequests]));
        assert!(!s(429).is_retried_by(&[RetryOn::ServerError, RetryOn::Retriable4xx]));
        assert!(!s(503).is_retried_by(&[RetryOn::TooManyRequests]));
    }

    #[test]
    fn grpc_classes_come_from_grpc_status() {
        let of = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-status", v.parse().unwrap());
            Failure::of_grpc_status(&h)
        };
        assert_eq!(of("0"), None);
        assert_eq!(of("x"), None);
        assert_eq!(of("99999999"), None);
        assert_eq!(Failure::of_grpc_status(&http::HeaderMap::new()), None);
        for (code, class) in [
            ("1", RetryOn::Cancelled),
            ("4", RetryOn::DeadlineExceeded),
            ("8", RetryOn::ResourceExhausted),
            ("14", RetryOn::Unavailable),
        ] {
            let f = of(code).unwrap();
            assert!(f.is_retried_by(&[class]), "{code}");
            assert!(!f.is_retried_by(&[RetryOn::ServerError, RetryOn::GatewayError]));
            assert_eq!(f.outcome(), Outcome::Success);
        }
        assert!(!of("2").unwrap().is_retried_by(&[
            RetryOn::Cancelled,
            RetryOn::DeadlineExceeded,
            RetryOn::ResourceExhausted,
            RetryOn::Unavailable
        ]));
        assert!(retries_grpc(&[RetryOn::Unavailable]));
        assert!(!retries_grpc(&Retries::default_retry_on()));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        use std::time::{Duration as StdDuration, UNIX_EPOCH};
        let at = |v: &str, now_secs: u64| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::RETRY_AFTER, v.parse().unwrap());
            retry_after(&h, UNIX_EPOCH + StdDuration::from_secs(now_secs))
        };
        assert_eq!(at("3", 0), Some(StdDuration::from_secs(3)));
        assert_eq!(at(" 0 ", 0), Some(StdDuration::ZERO));
        assert_eq!(
            at("99999999999999999999999", 0),
            Some(StdDuration::from_secs(u64::MAX))
        );
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's example).
        assert_eq!(
            at("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_770),
            Some(StdDuration::from_secs(7))
        );
        assert_eq!(
            at("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_800),
            Some(StdDuration::ZERO)
        );
        assert_eq!(
            at("Thu, 29 Feb 2024 00:00:00 GMT", 1_709_164_790),
            Some(StdDuration::from_secs(10))
        );
        for junk in [
            "",
            "soon",
            "-1",
            "Sun, 06 Nov 1994 08:49:37 CET",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
        ] {
            assert_eq!(at(junk, 0), None, "{junk:?}");
        }
        assert_eq!(retry_after(&http::HeaderMap::new(), UNIX_EPOCH), None);
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
