//! The inbound rate limit: a token bucket of `burst` tokens refilled at `requestsPerSecond`,
//! one bucket for all callers or one per source address or header value.
//!
//! Our own rather than `tower::limit::RateLimit`: tower's limiter is per service instance (not
//! shared across connections), cannot be keyed per client, and delays instead of refusing with a
//! `Retry-After`. Keyed buckets live in a map that forgets full buckets once it grows, so a
//! client inventing keys cannot grow memory without bound.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;
use tokio::time::Instant;
use weir_proxy_api::{RateLimit as Config, RateLimitKey};

/// Keyed buckets kept before full (idle) ones are forgotten.
const MAX_KEYS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
pub struct RateLimiter {
    pub config: Config,
    shared: Mutex<Bucket>,
    keyed: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(config: Config, now: Instant) -> Self {
        let full = Bucket {
            tokens: f64::from(config.burst),
            at: now,
        };
        Self {
            config,
            shared: Mutex::new(full),
            keyed: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for this request, or says how long until one is there.
    pub fn check(
        &self,
        source: IpAddr,
        headers: &http::HeaderMap,
        now: Instant,
    ) -> Result<(), Duration> {
        let key = match &self.config.key {
            RateLimitKey::None => return self.take(&mut self.shared.lock(), now),
            RateLimitKey::Source => source.to_string(),
            RateLimitKey::Header(name) => headers
                .get(name.as_str())
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default(),
        };
        let mut keyed = self.keyed.lock();
        if keyed.len() >= MAX_KEYS && !keyed.contains_key(&key) {
            let burst = f64::from(self.config.burst);
            let rate = self.config.requests_per_second;
            keyed.retain(|_, b| refilled(b, rate, burst, now) < burst);
        }
        let burst = f64::from(self.config.burst);
        let bucket = keyed.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        self.take(bucket, now)
    }

    fn take(&self, bucket: &mut Bucket, now: Instant) -> Result<(), Duration> {
        let rate = self.config.requests_per_second;
        let tokens = refilled(bucket, rate, f64::from(self.config.burst), now);
        bucket.at = now;
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            Ok(())
        } else {
            bucket.tokens = tokens;
            Err(Duration::from_secs_f64((1.0 - tokens) / rate))
        }
    }
}

fn refilled(bucket: &Bucket, rate: f64, burst: f64, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    (bucket.tokens + elapsed * rate).min(burst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(key: RateLimitKey, now: Instant) -> RateLimiter {
        RateLimiter::new(
            Config {
                requests_per_second: 10.0,
                burst: 5,
                key,
            },
            now,
        )
    }

    #[test]
    fn admits_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let l = limiter(RateLimitKey::None, t0);
        let ip = IpAddr::from([127, 0, 0, 1]);
        let h = http::HeaderMap::new();
        let mut admitted = 0;
        // 2 s at 1 ms steps: 5 + 10 × 2.
        for ms in 0..2000 {
            if l.check(ip, &h, t0 + Duration::from_millis(ms)).is_ok() {
                admitted += 1;
            }
        }
        assert!((24..=26).contains(&admitted), "{admitted}");
        let t_end = t0 + Duration::from_millis(2000);
        let _ = l.check(ip, &h, t_end);
        let wait = l.check(ip, &h, t_end).unwrap_err();
        assert!(wait <= Duration::from_millis(100));
    }

    #[test]
    fn keyed_buckets_are_separate() {
        let t0 = Instant::now();
        let l = limiter(RateLimitKey::Header("x-user".into()), t0);
        let ip = IpAddr::from([127, 0, 0, 1]);
        let mut alice = http::HeaderMap::new();
        alice.insert("x-user", "alice".parse().unwrap());
        let mut bob = http::HeaderMap::new();
        bob.insert("x-user", "bob".parse().unwrap());
        for _ in 0..5 {
            assert!(l.check(ip, &alice, t0).is_ok());
        }
        assert!(l.check(ip, &alice, t0).is_err());
        assert!(l.check(ip, &bob, t0).is_ok());

        let by_source = limiter(RateLimitKey::Source, t0);
        for _ in 0..5 {
            assert!(by_source.check(ip, &alice, t0).is_ok());
        }
        assert!(by_source.check(ip, &alice, t0).is_err());
        assert!(
            by_source
                .check(IpAddr::from([127, 0, 0, 2]), &alice, t0)
                .is_ok()
        );
    }
}
