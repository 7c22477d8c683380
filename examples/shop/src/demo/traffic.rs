//! The traffic generator: customers placing orders and opening their home page through the
//! gateway's sidecar inbound listener — the shop's edge, where the gateway's rate limit applies —
//! at a set rate (open loop: a slow answer does not slow the offered load; a scenario may change
//! the rate as it goes), plus bursts on demand. Every answer is logged with what the checks need: status, latency, `Retry-After`, the
//! order id.

use super::web::Method;
use super::web::{self, Client};
use parking_lot::Mutex;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The gateway's demo customers and their bearer tokens (the shop README's auth section).
pub const CUSTOMERS: [(&str, &str); 3] = [
    ("alice", "alice-token"),
    ("bob", "bob-token"),
    ("carol", "carol-token"),
];

/// How long a customer waits for an answer before counting the request as unanswered.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests in flight beyond which the generator skips ticks rather than pile up without bound.
const MAX_IN_FLIGHT: usize = 2000;
/// One home page visit per this many orders.
const ORDERS_PER_HOME: u64 = 4;
/// Outcomes older than this are dropped when the run has no end (cumulative tallies stay).
const KEEP_FOR: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Kind {
    /// `POST /api/orders`.
    Order,
    /// `GET /api/home`.
    Home,
}

/// One answered (or unanswered) request.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub kind: Kind,
    /// When it was sent, since the start of the run.
    pub sent: Duration,
    /// When its answer was complete (or given up on), since the start of the run.
    pub done: Duration,
    /// `None`: no answer (connection refused or reset, or no answer within the client timeout).
    pub status: Option<u16>,
    /// A 429 that carried `Retry-After`.
    pub retry_after: bool,
    /// The order id the gateway answered with.
    pub order_id: Option<String>,
    /// The reason of a 409 (compensated) answer.
    pub reason: Option<String>,
    /// Part of a burst rather than the steady load.
    pub burst: bool,
}

impl Outcome {
    pub fn latency(&self) -> Duration {
        self.done.saturating_sub(self.sent)
    }
}

/// Counts over a set of outcomes, as the report shows them.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClientFigures {
    /// Requests answered or given up on.
    pub requests: u64,
    /// 2xx answers.
    pub ok: u64,
    /// 201: an order whose saga completed.
    pub completed: u64,
    /// 409: an order whose saga was compensated.
    pub compensated: u64,
    /// 429 answers (refused by the gateway's rate limit).
    pub rate_limited: u64,
    /// 429 answers without a `Retry-After` header (the contract says there are none).
    pub rate_limited_without_retry_after: u64,
    /// 5xx answers.
    pub server_errors: u64,
    /// Other 4xx answers (401, 400 …).
    pub other_client_errors: u64,
    /// No answer at all (connection failure or client timeout).
    pub unanswered: u64,
    /// The share of requests the edge let in (all but 429) that succeeded: 2xx (for orders: 201,
    /// the saga completed), in percent; `null` when there were none.
    pub success_percent: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Answers that took a second or longer.
    pub over_1s: u64,
}

impl ClientFigures {
    pub fn of<'a>(outcomes: impl IntoIterator<Item = &'a Outcome>) -> Self {
        let mut f = Self::default();
        let mut latencies = Vec::new();
        for o in outcomes {
            f.requests += 1;
            match o.status {
                None => f.unanswered += 1,
                Some(s) => {
                    latencies.push(o.latency());
                    match s {
                        201 if o.kind == Kind::Order => {
                            f.ok += 1;
                            f.completed += 1;
                        }
                        200..=299 => f.ok += 1,
                        409 if o.kind == Kind::Order => f.compensated += 1,
                        429 => {
                            f.rate_limited += 1;
                            if !o.retry_after {
                                f.rate_limited_without_retry_after += 1;
                            }
                        }
                        500..=599 => f.server_errors += 1,
                        _ => f.other_client_errors += 1,
                    }
                }
            }
        }
        let let_in = f.requests - f.rate_limited;
        if let_in > 0 {
            f.success_percent = Some(100.0 * f.ok as f64 / let_in as f64);
        }
        latencies.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        if let Some(max) = latencies.last() {
            f.max_ms = Some(ms(*max));
            f.p50_ms = Some(ms(percentile(&latencies, 0.50)));
            f.p99_ms = Some(ms(percentile(&latencies, 0.99)));
        }
        f.over_1s = latencies
            .iter()
            .filter(|d| **d >= Duration::from_secs(1))
            .count() as u64;
        f
    }
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The generator and everything it has seen.
#[derive(Debug)]
pub struct Traffic {
    client: Client,
    /// The gateway sidecar's inbound listener.
    target: SocketAddr,
    start: Instant,
    /// SKUs to order (from the inventory's stock).
    skus: Vec<String>,
    outcomes: Mutex<Vec<Outcome>>,
    /// Keep every outcome (a run with an end) or only the last [`KEEP_FOR`].
    keep_all: bool,
    /// Cumulative per kind, kept even when old outcomes are dropped.
    totals: Mutex<[ClientFigures; 2]>,
    in_flight: AtomicUsize,
    /// Ticks skipped because too many requests were in flight.
    skipped: AtomicU64,
    sequence: AtomicU64,
    /// The orders per second now, as the bits of an `f64`.
    rate_bits: AtomicU64,
}

impl Traffic {
    pub fn new(target: SocketAddr, start: Instant, skus: Vec<String>, keep_all: bool) -> Self {
        Self {
            client: web::client(),
            target,
            start,
            skus,
            outcomes: Mutex::new(Vec::new()),
            keep_all,
            totals: Mutex::new([ClientFigures::default(), ClientFigures::default()]),
            in_flight: AtomicUsize::new(0),
            skipped: AtomicU64::new(0),
            sequence: AtomicU64::new(0),
            rate_bits: AtomicU64::new(0),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Places `rate` orders per second (and a home page visit every [`ORDERS_PER_HOME`]) until
    /// `stop` turns true; [`Traffic::set_rate`] changes the rate on the way (a scenario's ramp).
    pub async fn run(self: Arc<Self>, rate: f64, mut stop: watch::Receiver<bool>) {
        self.set_rate(rate);
        let mut next = Instant::now();
        let mut n: u64 = 0;
        loop {
            let rate = self.rate();
            if rate <= 0.0 {
                // Idle: look at the rate again in a while.
                next = Instant::now() + Duration::from_millis(100);
            } else {
                next += Duration::from_secs_f64(1.0 / rate);
            }
            // Ticks missed by more than a second are skipped, not sent at once.
            let now = Instant::now();
            if next + Duration::from_secs(1) < now {
                next = now;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if rate <= 0.0 {
                continue;
            }
            if self.in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            n += 1;
            let customer = CUSTOMERS[(n % CUSTOMERS.len() as u64) as usize];
            let me = self.clone();
            tokio::spawn(async move { me.request(Kind::Order, customer.1, false).await });
            if n.is_multiple_of(ORDERS_PER_HOME) {
                let me = self.clone();
                let customer = CUSTOMERS[((n / ORDERS_PER_HOME) % 3) as usize];
                tokio::spawn(async move { me.request(Kind::Home, customer.1, false).await });
            }
        }
    }

    /// Moves the rate from `from` to `to` in steps of a second over `over`.
    pub async fn ramp(self: Arc<Self>, from: f64, to: f64, over: Duration) {
        let steps = over.as_secs().max(1);
        for step in 1..=steps {
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.set_rate(from + (to - from) * step as f64 / steps as f64);
        }
    }

    /// Orders per second from now on.
    pub fn set_rate(&self, rate: f64) {
        self.rate_bits
            .store(rate.max(0.0).to_bits(), Ordering::Relaxed);
    }

    /// Orders per second now.
    pub fn rate(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Ordering::Relaxed))
    }

    /// `count` orders at once with one customer's token; resolves when all are answered.
    pub async fn burst(self: Arc<Self>, count: usize, token: &'static str) {
        let tasks: Vec<_> = (0..count)
            .map(|_| {
                let me = self.clone();
                tokio::spawn(async move { me.request(Kind::Order, token, true).await })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn request(&self, kind: Kind, token: &str, burst: bool) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let sent = self.elapsed();
        let auth = format!("Bearer {token}");
        let headers = [("authorization", auth.as_str())];
        let answer = match kind {
            Kind::Order => {
                let body = self.order_body();
                web::send(
                    &self.client,
                    Method::POST,
                    self.target,
                    "/api/orders",
                    &headers,
                    Some(serde_json::to_vec(&body).unwrap_or_default()),
                    CLIENT_TIMEOUT,
                )
                .await
            }
            Kind::Home => {
                web::send(
                    &self.client,
                    Method::GET,
                    self.target,
                    "/api/home",
                    &headers,
                    None,
                    CLIENT_TIMEOUT,
                )
                .await
            }
        };
        let done = self.elapsed();
        let outcome = match answer {
            Ok(a) => {
                let json = a.json();
                let field = |name: &str| {
                    json.as_ref()
                        .and_then(|j| j.get(name))
                        .and_then(|v| v.as_str())
                        .map(str::to_owned)
                };
                Outcome {
                    kind,
                    sent,
                    done,
                    status: Some(a.status),
                    retry_after: a.headers.contains_key(::http::header::RETRY_AFTER),
                    order_id: if kind == Kind::Order {
                        field("orderId")
                    } else {
                        None
                    },
                    reason: if a.status == 409 {
                        field("reason")
                    } else {
                        None
                    },
                    burst,
                }
            }
            Err(_) => Outcome {
                kind,
                sent,
                done,
                status: None,
                retry_after: false,
                order_id: None,
                reason: None,
                burst,
            },
        };
        self.record(outcome);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    fn order_body(&self) -> serde_json::Value {
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        let sku = if self.skus.is_empty() {
            "SKU-1".to_owned()
        } else {
            self.skus[(n % self.skus.len() as u64) as usize].clone()
        };
        serde_json::json!({
            "items": [{"sku": sku, "quantity": 1}],
            "address": {
                "street": "Hauptstraße 1",
                "city": "Berlin",
                "postalCode": "10115",
                "country": "DE"
            }
        })
    }

    fn record(&self, outcome: Outcome) {
        {
            let mut totals = self.totals.lock();
            let slot = match outcome.kind {
                Kind::Order => 0,
                Kind::Home => 1,
            };
            // Cumulative figures without percentiles: merged by adding counts.
            let one = ClientFigures::of(std::iter::once(&outcome));
            add(&mut totals[slot], &one);
        }
        let mut outcomes = self.outcomes.lock();
        outcomes.push(outcome);
        if !self.keep_all
            && let Some(horizon) = self.elapsed().checked_sub(KEEP_FOR)
        {
            let cut = outcomes.partition_point(|o| o.done < horizon);
            if cut > 1000 {
                outcomes.drain(..cut);
            }
        }
    }

    /// Requests still waiting for an answer.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Figures of the outcomes of `kind` for which `pick` holds.
    pub fn figures(&self, kind: Kind, pick: impl Fn(&Outcome) -> bool) -> ClientFigures {
        let outcomes = self.outcomes.lock();
        ClientFigures::of(outcomes.iter().filter(|o| o.kind == kind && pick(o)))
    }

    /// Everything since the start (counts; percentiles over the outcomes still kept).
    pub fn cumulative(&self, kind: Kind) -> ClientFigures {
        let slot = match kind {
            Kind::Order => 0,
            Kind::Home => 1,
        };
        let mut f = self.totals.lock()[slot].clone();
        let kept = self.figures(kind, |_| true);
        f.p50_ms = kept.p50_ms;
        f.p99_ms = kept.p99_ms;
        f.max_ms = kept.max_ms;
        f
    }

    /// A copy of the outcomes for which `pick` holds.
    pub fn outcomes(&self, pick: impl Fn(&Outcome) -> bool) -> Vec<Outcome> {
        self.outcomes
            .lock()
            .iter()
            .filter(|o| pick(o))
            .cloned()
            .collect()
    }

    /// Waits until nothing is in flight, up to `limit`.
    pub async fn drain(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Adds the counts of `b` to `a` and recomputes the success share.
fn add(a: &mut ClientFigures, b: &ClientFigures) {
    a.requests += b.requests;
    a.ok += b.ok;
    a.completed += b.completed;
    a.compensated += b.compensated;
    a.rate_limited += b.rate_limited;
    a.rate_limited_without_retry_after += b.rate_limited_without_retry_after;
    a.server_errors += b.server_errors;
    a.other_client_errors += b.other_client_errors;
    a.unanswered += b.unanswered;
    a.over_1s += b.over_1s;
    let let_in = a.requests - a.rate_limited;
    a.success_percent = (let_in > 0).then(|| 100.0 * a.ok as f64 / let_in as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(kind: Kind, status: Option<u16>, ms: u64) -> Outcome {
        Outcome {
            kind,
            sent: Duration::ZERO,
            done: Duration::from_millis(ms),
            status,
            retry_after: status == Some(429),
            order_id: None,
            reason: None,
            burst: false,
        }
    }

    #[test]
    fn figures_count_classes_and_exclude_rate_limited_from_success() {
        let outcomes = vec![
            outcome(Kind::Order, Some(201), 10),
            outcome(Kind::Order, Some(201), 20),
            outcome(Kind::Order, Some(409), 30),
            outcome(Kind::Order, Some(429), 1),
            outcome(Kind::Order, Some(503), 1200),
            outcome(Kind::Order, None, 10_000),
        ];
        let f = ClientFigures::of(&outcomes);
        assert_eq!(f.requests, 6);
        assert_eq!(f.completed, 2);
        assert_eq!(f.compensated, 1);
        assert_eq!(f.rate_limited, 1);
        assert_eq!(f.rate_limited_without_retry_after, 0);
        assert_eq!(f.server_errors, 1);
        assert_eq!(f.unanswered, 1);
        assert_eq!(f.success_percent, Some(40.0));
        assert_eq!(f.max_ms, Some(1200.0));
        assert_eq!(f.over_1s, 1);
        // Answered: 1, 10, 20, 30, 1200 ms.
        assert_eq!(f.p50_ms, Some(20.0));
    }

    #[test]
    fn cumulative_counts_add_up() {
        let mut total = ClientFigures::default();
        for o in [
            outcome(Kind::Home, Some(200), 5),
            outcome(Kind::Home, Some(429), 5),
        ] {
            add(&mut total, &ClientFigures::of(std::iter::once(&o)));
        }
        assert_eq!(total.requests, 2);
        assert_eq!(total.ok, 1);
        assert_eq!(total.success_percent, Some(100.0));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&v[..1], 0.99), Duration::from_millis(1));
    }
}
