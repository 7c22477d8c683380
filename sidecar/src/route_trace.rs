//! `x-weir-debug: 1`: the story of one call, told in an `x-weir-route` header on its answer.
//!
//! The format is one line of ASCII, `; `-separated fields, at most [`MAX_LEN`] bytes:
//!
//! ```text
//! service=payments.shop; subset=v2; attempt=1 endpoint=10.0.0.5:8080 outcome=503 wait=25ms; attempt=2 endpoint=10.0.0.6:8080 outcome=200; decisions=retry,fault-delay:200ms; answer=200
//! ```
//!
//! - `service` (`NAME.NAMESPACE`, or `unknown` when the request named none this proxy knows),
//!   `subset`;
//! - one `attempt=N` per try: the `endpoint` it went to, its `outcome` (the status code, or
//!   `per-try-timeout`, `connect-failure`, `reset`, `deadline`, `grpc-N` for a gRPC status,
//!   `client-error`) and, when it was retried, the backoff `wait` before the next;
//! - `decisions`: what the policies did, in order — `retry`, `fault-delay:DURATION`,
//!   `fault-abort:STATUS`, `circuit-open`, `no-healthy-endpoints`, `retry-budget-exhausted`,
//!   `timeout`, `avoid-429:ENDPOINT`, `fallback`, and `dry-run:REASON` for what a dry-run block
//!   would have done;
//! - `answer`: the status answered, with `refused:REASON` when the sidecar refused.
//!
//! Only built when asked: a request without the header allocates nothing for it. The request
//! header is removed before the call goes on, so the application never sees it.

use http::{HeaderMap, HeaderValue};
use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;

/// The request header that asks for the trace, and the response header that carries it.
pub const DEBUG_HEADER: &str = "x-weir-debug";
/// The same as a header name, made once: looking a `&str` up parses it on every request.
static DEBUG_HEADER_NAME: http::HeaderName = http::HeaderName::from_static(DEBUG_HEADER);
pub const ROUTE_HEADER: &str = "x-weir-route";

/// Longest `x-weir-route` value: a longer story is cut, ending in `...`.
pub const MAX_LEN: usize = 2048;

/// Bounds what a trace holds however many attempts a call makes (at most 11 by the bounds).
const MAX_ENTRIES: usize = 32;

#[derive(Debug, Default)]
pub struct RouteTrace {
    service: Option<String>,
    subset: Option<String>,
    attempts: Vec<Attempt>,
    decisions: Vec<String>,
}

#[derive(Debug)]
struct Attempt {
    endpoint: SocketAddr,
    outcome: String,
    wait: Option<Duration>,
}

impl RouteTrace {
    /// Removes the debug header from `headers` (it is never forwarded) and starts a trace when
    /// it asked for one (`1`).
    pub fn requested(headers: &mut HeaderMap) -> Option<Box<Self>> {
        let asked = headers.remove(&DEBUG_HEADER_NAME)?;
        (asked.as_bytes().trim_ascii() == b"1").then(Box::default)
    }

    pub fn route(&mut self, service: String, subset: &str) {
        self.service = Some(service);
        self.subset = Some(subset.to_owned());
    }

    pub fn attempt(&mut self, endpoint: SocketAddr, outcome: impl Into<String>) {
        if self.attempts.len() < MAX_ENTRIES {
            self.attempts.push(Attempt {
                endpoint,
                outcome: outcome.into(),
                wait: None,
            });
        }
    }

    /// The backoff waited after the last attempt, before the next.
    pub fn wait(&mut self, wait: Duration) {
        if let Some(last) = self.attempts.last_mut() {
            last.wait = Some(wait);
        }
    }

    pub fn decision(&mut self, decision: impl Into<String>) {
        if self.decisions.len() < MAX_ENTRIES {
            self.decisions.push(decision.into());
        }
    }

    /// The header value, given the answer's status and the sidecar's refusal reason if any.
    pub fn header(&self, status: http::StatusCode, refused: Option<&str>) -> HeaderValue {
        let mut out = String::with_capacity(256);
        let _ = write!(
            out,
            "service={}",
            self.service.as_deref().unwrap_or("unknown")
        );
        if let Some(subset) = &self.subset {
            let _ = write!(out, "; subset={subset}");
        }
        for (i, a) in self.attempts.iter().enumerate() {
            let _ = write!(
                out,
                "; attempt={} endpoint={} outcome={}",
                i + 1,
                a.endpoint,
                a.outcome
            );
            if let Some(wait) = a.wait {
                let _ = write!(out, " wait={}", millis(wait));
            }
        }
        if !self.decisions.is_empty() {
            let _ = write!(out, "; decisions={}", self.decisions.join(","));
        }
        let _ = write!(out, "; answer={}", status.as_u16());
        if let Some(reason) = refused {
            let _ = write!(out, " refused:{reason}");
        }
        // Everything above is from the config and the sidecar's own words, but a service or
        // subset name is the operator's text: keep the header visible ASCII whatever it holds.
        let mut safe: String = out
            .chars()
            .map(|c| {
                if c == ' ' || c.is_ascii_graphic() {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        if safe.len() > MAX_LEN {
            safe.truncate(MAX_LEN - 3);
            safe.push_str("...");
        }
        HeaderValue::from_str(&safe).expect("visible ASCII is a valid header value")
    }
}

/// A duration as whole milliseconds (`25ms`), or microseconds below one (`250us`).
pub fn millis(d: Duration) -> String {
    if d < Duration::from_millis(1) && !d.is_zero() {
        format!("{}us", d.as_micros())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_reads_as_documented_and_stays_bounded() {
        let mut headers = HeaderMap::new();
        assert!(RouteTrace::requested(&mut headers).is_none());
        headers.insert(DEBUG_HEADER, HeaderValue::from_static("0"));
        assert!(RouteTrace::requested(&mut headers).is_none());
        assert!(headers.is_empty(), "removed whatever it said");
        headers.insert(DEBUG_HEADER, HeaderValue::from_static("1"));
        let mut t = RouteTrace::requested(&mut headers).unwrap();
        t.route("payments.shop".into(), "v2");
        t.attempt("10.0.0.5:8080".parse().unwrap(), "503");
        t.wait(Duration::from_millis(25));
        t.attempt("10.0.0.6:8080".parse().unwrap(), "200");
        t.decision("retry");
        t.decision("fault-delay:200ms");
        assert_eq!(
            t.header(http::StatusCode::OK, None),
            "service=payments.shop; subset=v2; attempt=1 endpoint=10.0.0.5:8080 outcome=503 wait=25ms; attempt=2 endpoint=10.0.0.6:8080 outcome=200; decisions=retry,fault-delay:200ms; answer=200"
        );

        let mut long = RouteTrace::default();
        long.route("é\n".repeat(1000), "x");
        for _ in 0..1000 {
            long.attempt("[::1]:1".parse().unwrap(), "reset");
            long.decision("retry");
        }
        let v = long.header(http::StatusCode::SERVICE_UNAVAILABLE, Some("circuit-open"));
        assert!(v.len() <= MAX_LEN);
        assert!(
            v.as_bytes()
                .iter()
                .all(|b| b.is_ascii_graphic() || *b == b' ')
        );
        assert!(v.to_str().unwrap().ends_with("..."));
        assert_eq!(millis(Duration::from_micros(250)), "250us");
    }
}
