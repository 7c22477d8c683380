//! The inbound rate limit: a token bucket of `burst` tokens refilled at `requestsPerSecond`,
//! one bucket for all callers or one per source address or header value.
//!
//! Our own rather than `tower::limit::RateLimit`: tower's limiter is per service instance (not
//! shared across connections), cannot be keyed per client, and delays instead of refusing with a
//! `Retry-After`. Nor `governor`: its keyed store grows with every key until someone calls
//! `retain_recent`, a scan, while a client inventing keys must not grow the sidecar.
//!
//! **Keyed buckets are bounded**: a key is stored as a 64-bit hash (SipHash with a key drawn at
//! start, so clients cannot aim collisions), never as the raw header value; at most
//! [`MAX_KEYS`] buckets are kept (under 10 MiB) in an LRU map (`hashlink`), and a new key past
//! the cap evicts the least recently used one in constant time. An evicted key that comes back
//! starts with a full bucket, as a new client does.

use crate::body::BoxError;
use crate::gate::{BoxFuture, GateLayer, Gated};
use hashlink::LruCache;
use parking_lot::Mutex;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv4Addr};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use weir_proxy_api::{RateLimit as Config, RateLimitKey};

/// Keyed buckets kept at most; past it the least recently used key is forgotten.
pub const MAX_KEYS: usize = 100_000;

/// The longest `Retry-After` given: with a rate of at least one per second (the bounds) a token
/// is never further away; the cap only keeps absurd configured rates harmless.
const MAX_WAIT: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct RateLimiter {
    pub config: Config,
    shared: Mutex<Bucket>,
    keyed: Mutex<LruCache<u64, Bucket>>,
    hasher: RandomState,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("config", &self.config)
            .field("keys", &self.keys())
            .finish()
    }
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
            keyed: Mutex::new(LruCache::new(MAX_KEYS)),
            hasher: RandomState::new(),
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
            RateLimitKey::Source => self.hasher.hash_one(source),
            // Requests without the header share one bucket (the hash of no bytes).
            RateLimitKey::Header(name) => self.hasher.hash_one(
                headers
                    .get(name.as_str())
                    .map(|v| v.as_bytes())
                    .unwrap_or_default(),
            ),
        };
        let mut keyed = self.keyed.lock();
        if let Some(bucket) = keyed.get_mut(&key) {
            return self.take(bucket, now);
        }
        let mut bucket = Bucket {
            tokens: f64::from(self.config.burst),
            at: now,
        };
        let taken = self.take(&mut bucket, now);
        // At the cap, inserting evicts the least recently used key.
        keyed.insert(key, bucket);
        taken
    }

    /// How many keyed buckets are held.
    pub fn keys(&self) -> usize {
        self.keyed.lock().len()
    }

    fn take(&self, bucket: &mut Bucket, now: Instant) -> Result<(), Duration> {
        let rate = self.config.requests_per_second;
        let tokens = refilled(bucket, rate, f64::from(self.config.burst), now);
        bucket.at = bucket.at.max(now);
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            Ok(())
        } else {
            bucket.tokens = tokens;
            let wait = Duration::try_from_secs_f64((1.0 - tokens) / rate).unwrap_or(MAX_WAIT);
            Err(wait.min(MAX_WAIT))
        }
    }
}

/// A request refused by the rate limit; a token is there again after the duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited: a token is there again in {0:?}")]
pub struct RateLimited(pub Duration);

/// The address a request came from, in its extensions: the key of `key: source`.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

/// The rate limit as a tower layer: it refuses (a [`RateLimited`] error) rather than delays.
pub type RateLimitLayer = GateLayer<RateLimiter>;

impl<S, B> tower::Service<http::Request<B>> for Gated<RateLimiter, S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let source = request
            .extensions()
            .get::<ClientAddr>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0);
        match self.gate.check(source, request.headers(), Instant::now()) {
            Err(wait) if self.dry_run.is_none() => {
                Box::pin(std::future::ready(Err(RateLimited(wait).into())))
            }
            result => {
                if let (Err(_), Some(counter)) = (result, &self.dry_run) {
                    counter.inc();
                    tracing::debug!("dry run: the rate limit would have refused this request");
                }
                let answer = self.inner.call(request);
                Box::pin(async move { answer.await.map_err(Into::into) })
            }
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
                dry_run: false,
            },
            now,
        )
    }

    /// Takes the limiter's burst of 5 for `source` and `headers`; the next one is refused.
    fn spend_the_burst(l: &RateLimiter, source: IpAddr, headers: &http::HeaderMap, now: Instant) {
        for n in 0..5 {
            assert!(
                l.check(source, headers, now).is_ok(),
                "request {n} of the burst"
            );
        }
        assert!(l.check(source, headers, now).is_err(), "past the burst");
    }

    /// Headers with `x-user: user`.
    fn user(user: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("x-user", user.parse().unwrap());
        h
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
        let (alice, bob) = (user("alice"), user("bob"));
        spend_the_burst(&l, ip, &alice, t0);
        assert!(l.check(ip, &bob, t0).is_ok());

        let by_source = limiter(RateLimitKey::Source, t0);
        spend_the_burst(&by_source, ip, &alice, t0);
        assert!(
            by_source
                .check(IpAddr::from([127, 0, 0, 2]), &alice, t0)
                .is_ok()
        );
    }

    #[test]
    fn a_million_invented_keys_stay_within_the_cap_and_a_busy_key_stays_limited() {
        // By source address: a million IPv6 addresses, as one host with a /64 can invent.
        let t0 = Instant::now();
        let l = limiter(RateLimitKey::Source, t0);
        let none = http::HeaderMap::new();
        let busy = IpAddr::from([10, 0, 0, 1]);
        for _ in 0..5 {
            assert!(l.check(busy, &none, t0).is_ok());
        }
        for n in 0..1_000_000u128 {
            let invented = IpAddr::from(std::net::Ipv6Addr::from(0xfd00_u128 << 112 | n));
            assert!(
                l.check(invented, &none, t0).is_ok(),
                "a new key has its burst"
            );
            if n % 10_000 == 0 {
                // The busy client keeps calling: still recent, still limited.
                assert!(l.check(busy, &none, t0).is_err(), "after {n} keys");
            }
        }
        assert_eq!(l.keys(), MAX_KEYS);
        assert!(l.check(busy, &none, t0).is_err());
        assert!(
            l.check(busy, &none, t0 + Duration::from_millis(100))
                .is_ok()
        );
    }

    #[test]
    fn header_keys_are_hashed_whatever_their_size() {
        let t0 = Instant::now();
        let l = limiter(RateLimitKey::Header("x-user".into()), t0);
        let ip = IpAddr::from([127, 0, 0, 1]);
        // 64 KiB values, 100 distinct ones: the store holds 100 hashes, not 6.4 MiB.
        let padding = "x".repeat(64 * 1024);
        for n in 0..100 {
            let h = user(&format!("{padding}{n}"));
            spend_the_burst(&l, ip, &h, t0);
        }
        assert_eq!(l.keys(), 100);
        // No header at all is a key of its own.
        assert!(l.check(ip, &http::HeaderMap::new(), t0).is_ok());
        assert_eq!(l.keys(), 101);
    }

    #[test]
    fn rates_and_bursts_at_the_bounds_neither_panic_nor_overflow() {
        let t0 = Instant::now();
        let ip = IpAddr::from([10, 0, 0, 1]);
        let h = http::HeaderMap::new();
        for (rate, burst) in [
            (1.0, 1),
            (1_000_000.0, 1_000_000),
            (1e-300, 1),
            (0.0, 1),
            (f64::NAN, 1),
            (f64::INFINITY, 1),
            (-5.0, u32::MAX),
        ] {
            let l = RateLimiter::new(
                Config {
                    requests_per_second: rate,
                    burst,
                    key: RateLimitKey::Source,
                    dry_run: false,
                },
                t0,
            );
            for now in [t0, t0 + Duration::from_secs(86_400 * 365 * 1000), t0] {
                for _ in 0..3 {
                    if let Err(wait) = l.check(ip, &h, now) {
                        assert!(wait <= MAX_WAIT, "{rate}: {wait:?}");
                    }
                }
            }
        }
        // A rate of one per second waits at most one second.
        let l = RateLimiter::new(
            Config {
                requests_per_second: 1.0,
                burst: 1,
                key: RateLimitKey::None,
                dry_run: false,
            },
            t0,
        );
        assert!(l.check(ip, &h, t0).is_ok());
        assert_eq!(l.check(ip, &h, t0), Err(Duration::from_secs(1)));
    }
}
