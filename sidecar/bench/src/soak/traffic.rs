//! The soak's requests: what each kind sends, what it may get back, and the tally.
//!
//! Well-formed requests go through a pooled keep-alive client, as an app's calls would.
//! Cancelled and malformed ones are written as raw bytes on a connection of their own, since
//! no HTTP client will send a broken chunked body or two `Host` headers, and each is judged
//! against the sidecar contract: what the client may get back, and what should not happen.

use super::churn::{FLAKY, NORMAL, SLOW};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// What a request kind does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// GET through the outbound listener to [`NORMAL`], whose upstreams are healthy.
    Normal,
    /// GET through the inbound listener to the app (rate limit and bulkhead come and go).
    Inbound,
    /// GET to [`SLOW`] (a request timeout comes and goes).
    Slow,
    /// GET to [`FLAKY`], one of whose two endpoints answers 503.
    Flaky,
    /// GET to [`SLOW`], then the client goes away before the answer.
    Cancelled,
    /// POST announcing 64 KiB, 4 KiB sent, then the client stops sending.
    CutUpload,
    /// POST with a chunked body that breaks off into garbage.
    BrokenChunked,
    /// A request line that is not one.
    BadRequestLine,
    /// Two `Host` headers naming different services.
    TwoHosts,
    /// `CONNECT`, which the sidecar does not tunnel.
    Connect,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Inbound => "inbound",
            Self::Slow => "slow",
            Self::Flaky => "failing",
            Self::Cancelled => "cancelled",
            Self::CutUpload => "cut-short upload",
            Self::BrokenChunked => "broken chunked body",
            Self::BadRequestLine => "bad request line",
            Self::TwoHosts => "two Host headers",
            Self::Connect => "CONNECT",
        }
    }
}

/// The share of each kind among requests on keep-alive connections.
pub const KEEP_ALIVE_MIX: [(Kind, u32); 4] = [
    (Kind::Normal, 60),
    (Kind::Inbound, 15),
    (Kind::Slow, 10),
    (Kind::Flaky, 15),
];

/// The share of each kind among requests on connections of their own.
pub const OWN_CONNECTION_MIX: [(Kind, u32); 6] = [
    (Kind::Cancelled, 25),
    (Kind::CutUpload, 25),
    (Kind::BrokenChunked, 15),
    (Kind::BadRequestLine, 10),
    (Kind::TwoHosts, 15),
    (Kind::Connect, 10),
];

/// Picks a kind from `mix` with probability proportional to its share.
pub fn pick(mix: &[(Kind, u32)], rng: &mut fastrand::Rng) -> Kind {
    let total: u32 = mix.iter().map(|(_, share)| share).sum();
    let mut at = rng.u32(0..total.max(1));
    for &(kind, share) in mix {
        if at < share {
            return kind;
        }
        at -= share;
    }
    mix[0].0
}

/// Outcomes by kind, and what should not have happened.
#[derive(Debug, Default)]
pub struct Tally {
    inner: Mutex<TallyInner>,
}

#[derive(Debug, Default, Clone)]
pub struct TallyInner {
    /// (kind, outcome) → count.
    pub outcomes: BTreeMap<(&'static str, String), u64>,
    /// What should not have happened → count.
    pub unexpected: BTreeMap<String, u64>,
    /// The first occurrence's details of each kind of unexpected event that has some.
    pub first_details: BTreeMap<String, String>,
    /// Requests not sent because too many were in flight already.
    pub not_sent: u64,
}

impl TallyInner {
    pub fn requests(&self) -> u64 {
        self.outcomes.values().sum()
    }

    pub fn unexpected_total(&self) -> u64 {
        self.unexpected.values().sum()
    }

    /// Requests whose outcome starts with `prefix`, over all kinds.
    pub fn count_outcome(&self, prefix: &str) -> u64 {
        self.outcomes
            .iter()
            .filter(|((_, outcome), _)| outcome.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    }
}

impl Tally {
    pub fn record(&self, kind: &'static str, judged: Judged) {
        let mut inner = self.inner.lock();
        *inner.outcomes.entry((kind, judged.outcome)).or_insert(0) += 1;
        if let Some(what) = judged.unexpected {
            *inner.unexpected.entry(what).or_insert(0) += 1;
        }
    }

    /// Something that should not have happened outside any one request, counted under
    /// `what`; the `detail` of its first occurrence is kept.
    pub fn unexpected(&self, what: &str, detail: Option<String>) {
        let mut inner = self.inner.lock();
        *inner.unexpected.entry(what.to_owned()).or_insert(0) += 1;
        if let Some(detail) = detail {
            inner.first_details.entry(what.to_owned()).or_insert(detail);
        }
    }

    pub fn not_sent(&self) {
        self.inner.lock().not_sent += 1;
    }

    pub fn snapshot(&self) -> TallyInner {
        self.inner.lock().clone()
    }
}

/// An outcome, and what was wrong with it if it should not have happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    pub outcome: String,
    pub unexpected: Option<String>,
}

impl Judged {
    fn fine(outcome: String) -> Self {
        Self {
            outcome,
            unexpected: None,
        }
    }

    fn wrong(outcome: String, why: impl Into<String>) -> Self {
        let why = why.into();
        Self {
            unexpected: Some(format!("{why}: {outcome}")),
            outcome,
        }
    }
}

/// What came back on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Answer {
        status: u16,
        reason: Option<String>,
    },
    /// The connection closed (or was reset) before an answer.
    Closed,
    /// Neither an answer nor a close before the deadline.
    Hang,
    /// The client gave up on purpose.
    Cancelled,
    /// No connection could be made, or a well-formed request failed in transport.
    Failed,
}

impl Reply {
    fn outcome(&self) -> String {
        match self {
            Self::Answer {
                status,
                reason: Some(reason),
            } => format!("{status} {reason}"),
            Self::Answer {
                status,
                reason: None,
            } if (200..300).contains(status) => "2xx".into(),
            Self::Answer {
                status,
                reason: None,
            } => format!("{status} (no x-weir-reason)"),
            Self::Closed => "closed without an answer".into(),
            Self::Hang => "no answer before the deadline".into(),
            Self::Cancelled => "cancelled by the client".into(),
            Self::Failed => "transport error".into(),
        }
    }
}

/// Judges `reply` to a request of `kind` against the sidecar contract.
pub fn judge(kind: Kind, reply: &Reply) -> Judged {
    let outcome = reply.outcome();
    let (status, reason) = match reply {
        Reply::Answer { status, reason } => (Some(*status), reason.as_deref()),
        _ => (None, None),
    };
    let is_2xx = status.is_some_and(|s| (200..300).contains(&s));
    let is_5xx = status.is_some_and(|s| s >= 500);
    if matches!(reply, Reply::Hang) {
        return Judged::wrong(outcome, format!("{} request hung", kind.name()));
    }
    match kind {
        Kind::Normal if is_2xx => Judged::fine(outcome),
        Kind::Normal => Judged::wrong(outcome, "normal request failed with a healthy upstream"),
        Kind::Inbound
            if is_2xx || matches!(reason, Some("rate-limited" | "bulkhead-full" | "timeout")) =>
        {
            Judged::fine(outcome)
        }
        Kind::Inbound => Judged::wrong(outcome, "inbound request failed with a healthy app"),
        Kind::Slow if is_2xx || reason == Some("timeout") => Judged::fine(outcome),
        Kind::Slow => Judged::wrong(outcome, "slow request failed other than by its timeout"),
        Kind::Flaky if status.is_some() => Judged::fine(outcome),
        Kind::Flaky => Judged::wrong(outcome, "failing service's request got no answer"),
        Kind::Cancelled => Judged::fine(outcome),
        // An overloaded inbound side refuses before it reads the request's body or headers.
        _ if matches!(reason, Some("rate-limited" | "bulkhead-full")) => Judged::fine(outcome),
        // The client's faults are the client's: never a 5xx, never charged upstream.
        Kind::CutUpload | Kind::BrokenChunked | Kind::BadRequestLine if is_5xx => Judged::wrong(
            outcome,
            format!("{} answered as an upstream failure", kind.name()),
        ),
        Kind::CutUpload => Judged::fine(outcome),
        Kind::BrokenChunked | Kind::BadRequestLine if !is_2xx => Judged::fine(outcome),
        Kind::BrokenChunked | Kind::BadRequestLine => {
            Judged::wrong(outcome, format!("{} was accepted", kind.name()))
        }
        Kind::TwoHosts if status == Some(400) => Judged::fine(outcome),
        Kind::TwoHosts => Judged::wrong(outcome, "two Host headers not refused with 400"),
        Kind::Connect if status == Some(405) => Judged::fine(outcome),
        Kind::Connect => Judged::wrong(outcome, "CONNECT not refused with 405"),
    }
}

/// Where requests go and how long they may take.
#[derive(Debug, Clone)]
pub struct Traffic {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    /// A request with neither an answer nor a close by then has hung.
    pub deadline: Duration,
    pub client: Client<HttpConnector, Empty<Bytes>>,
    pub tally: Arc<Tally>,
    /// Bounds the requests in flight, whatever the sidecar does.
    pub in_flight: Arc<Semaphore>,
}

impl Traffic {
    pub fn new(
        outbound: SocketAddr,
        inbound: SocketAddr,
        deadline: Duration,
        max_in_flight: usize,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(deadline));
        Self {
            outbound,
            inbound,
            deadline,
            client: Client::builder(TokioExecutor::new()).build(connector),
            tally: Arc::new(Tally::default()),
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
        }
    }

    /// Sends one request of `kind` in a task of its own, unless too many are in flight.
    pub fn spawn(&self, kind: Kind, rng_seed: u64) {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            self.tally.not_sent();
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let reply = this
                .send(kind, &mut fastrand::Rng::with_seed(rng_seed))
                .await;
            this.tally.record(kind.name(), judge(kind, &reply));
            drop(permit);
        });
    }

    async fn send(&self, kind: Kind, rng: &mut fastrand::Rng) -> Reply {
        // Malformed requests go to either listener; both parse requests the same way.
        let either = if rng.bool() {
            self.outbound
        } else {
            self.inbound
        };
        match kind {
            Kind::Normal => self.get(self.outbound, NORMAL).await,
            Kind::Inbound => self.get(self.inbound, "app").await,
            Kind::Slow => self.get(self.outbound, SLOW).await,
            Kind::Flaky => self.get(self.outbound, FLAKY).await,
            Kind::Cancelled => {
                let head = format!("GET / HTTP/1.1\r\nHost: {SLOW}\r\n\r\n");
                let patience = Duration::from_millis(rng.u64(5..150));
                self.raw(self.outbound, head.as_bytes(), Some(patience), false)
                    .await
            }
            Kind::CutUpload => {
                let mut bytes = format!(
                    "POST /upload HTTP/1.1\r\nHost: {NORMAL}\r\nContent-Length: 65536\r\n\r\n"
                )
                .into_bytes();
                bytes.extend(std::iter::repeat_n(b'x', 4096));
                // Either the client vanishes, or it stops sending and waits for the answer.
                if rng.bool() {
                    self.raw(either, &bytes, Some(Duration::ZERO), false).await
                } else {
                    self.raw(either, &bytes, None, true).await
                }
            }
            Kind::BrokenChunked => {
                let bytes = format!(
                    "POST /upload HTTP/1.1\r\nHost: {NORMAL}\r\nTransfer-Encoding: chunked\r\n\r\n\
                     5\r\nhello\r\nZZ not a chunk size\r\n\r\n"
                );
                self.raw(either, bytes.as_bytes(), None, false).await
            }
            Kind::BadRequestLine => {
                self.raw(either, b"NOT A REQUEST LINE\r\n\r\n", None, false)
                    .await
            }
            Kind::TwoHosts => {
                let bytes = format!("GET / HTTP/1.1\r\nHost: {NORMAL}\r\nHost: {SLOW}\r\n\r\n");
                self.raw(either, bytes.as_bytes(), None, false).await
            }
            Kind::Connect => {
                let bytes = format!("CONNECT {NORMAL}:80 HTTP/1.1\r\nHost: {NORMAL}:80\r\n\r\n");
                self.raw(self.outbound, bytes.as_bytes(), None, false).await
            }
        }
    }

    /// `GET /` with `Host: host` on a pooled keep-alive connection.
    async fn get(&self, addr: SocketAddr, host: &str) -> Reply {
        let Ok(request) = Request::get(format!("http://{addr}/"))
            .header(hyper::header::HOST, host)
            .body(Empty::new())
        else {
            return Reply::Failed;
        };
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let reason = response
                .headers()
                .get("x-weir-reason")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            response.into_body().collect().await?;
            anyhow::Ok(Reply::Answer {
                status: status.as_u16(),
                reason,
            })
        };
        match tokio::time::timeout(self.deadline, exchange).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Reply::Failed,
            Err(_) => Reply::Hang,
        }
    }

    /// Writes `bytes` on a connection of its own and reads the answer's head. With `patience`
    /// the client gives up after that long (at once for zero) and drops the connection; with
    /// `half_close` it shuts its sending side first (no more body is coming).
    async fn raw(
        &self,
        addr: SocketAddr,
        bytes: &[u8],
        patience: Option<Duration>,
        half_close: bool,
    ) -> Reply {
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(self.deadline, TcpStream::connect(addr)).await
        else {
            return Reply::Failed;
        };
        if stream.write_all(bytes).await.is_err() {
            return Reply::Closed;
        }
        if half_close && stream.shutdown().await.is_err() {
            return Reply::Closed;
        }
        match patience {
            Some(wait) if wait.is_zero() => Reply::Cancelled,
            Some(wait) => match tokio::time::timeout(wait, read_head(&mut stream)).await {
                Ok(reply) => reply,
                Err(_) => Reply::Cancelled,
            },
            None => tokio::time::timeout(self.deadline, read_head(&mut stream))
                .await
                .unwrap_or(Reply::Hang),
        }
    }
}

/// Reads an answer's head (status line and headers, at most 16 KiB).
async fn read_head(stream: &mut TcpStream) -> Reply {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.len() > 16 * 1024 {
            break;
        }
    }
    parse_head(&head)
}

/// The status and `x-weir-reason` of an answer's head; [`Reply::Closed`] if there is none.
pub fn parse_head(head: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| {
            line.strip_prefix("HTTP/1.1 ")
                .or(line.strip_prefix("HTTP/1.0 "))
        })
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|code| StatusCode::from_u16(*code).is_ok());
    let Some(status) = status else {
        return Reply::Closed;
    };
    let reason = lines.take_while(|l| !l.is_empty()).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("x-weir-reason")
            .then(|| value.trim().to_owned())
    });
    Reply::Answer { status, reason }
}

/// Connections that never send a byte: the sidecar must close each within its
/// `--header-read-timeout`. At most `max` are open at once; each is given up (and counted as
/// not closed) `grace` after that timeout.
pub async fn silent_connections(
    targets: [SocketAddr; 3],
    header_read_timeout: Duration,
    grace: Duration,
    max: usize,
    end: Instant,
    tally: Arc<Tally>,
) {
    let mut open = tokio::task::JoinSet::new();
    let mut next = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    while Instant::now() < end {
        tick.tick().await;
        while open.try_join_next().is_some() {}
        if open.len() >= max {
            continue;
        }
        let addr = targets[next % targets.len()];
        next += 1;
        let tally = tally.clone();
        open.spawn(async move {
            let Ok(mut stream) = TcpStream::connect(addr).await else {
                return;
            };
            let opened = Instant::now();
            let limit = header_read_timeout + grace;
            let mut byte = [0u8; 1];
            let outcome = match tokio::time::timeout(limit, stream.read(&mut byte)).await {
                Ok(_) => format!(
                    "closed by the sidecar within {}s",
                    opened.elapsed().as_secs().max(1)
                ),
                Err(_) => format!("still open after {}s", limit.as_secs()),
            };
            let unexpected = outcome.starts_with("still open").then(|| {
                format!("silent connection not closed by --header-read-timeout: {outcome}")
            });
            tally.record(
                "silent connection",
                Judged {
                    outcome,
                    unexpected,
                },
            );
        });
    }
    // Those still waiting at the end are neither closed nor late yet: not counted.
    open.abort_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, reason: Option<&str>) -> Reply {
        Reply::Answer {
            status,
            reason: reason.map(str::to_owned),
        }
    }

    #[test]
    fn heads_parse_status_and_reason() {
        let head = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
                     X-Weir-Reason: circuit-open\r\n\r\n{\"reason\":";
        assert_eq!(parse_head(head), answer(503, Some("circuit-open")));
        assert_eq!(
            parse_head(b"HTTP/1.1 400 Bad Request\r\n\r\n"),
            answer(400, None)
        );
        assert_eq!(parse_head(b""), Reply::Closed);
        assert_eq!(parse_head(b"garbage\r\n\r\n"), Reply::Closed);
        assert_eq!(parse_head(b"HTTP/1.1 99"), Reply::Closed);
    }

    #[test]
    fn judging_follows_the_contract() {
        // (kind, reply, whether it is unexpected)
        use Kind::*;
        let cases = [
            (Normal, answer(200, None), false),
            (Normal, answer(502, Some("upstream-reset")), true),
            (Normal, Reply::Failed, true),
            (Inbound, answer(429, Some("rate-limited")), false),
            (Inbound, answer(503, Some("bulkhead-full")), false),
            (Inbound, answer(502, None), true),
            (Slow, answer(504, Some("timeout")), false),
            (Slow, answer(503, Some("circuit-open")), true),
            (Flaky, answer(503, None), false),
            (Flaky, answer(503, Some("circuit-open")), false),
            (Flaky, Reply::Failed, true),
            (Cancelled, Reply::Cancelled, false),
            (CutUpload, answer(400, Some("bad-request")), false),
            (CutUpload, Reply::Closed, false),
            (CutUpload, answer(502, Some("upstream-reset")), true),
            (BrokenChunked, answer(502, Some("upstream-reset")), true),
            (BrokenChunked, answer(400, None), false),
            (BadRequestLine, answer(200, None), true),
            (BadRequestLine, Reply::Closed, false),
            (TwoHosts, answer(200, None), true),
            (TwoHosts, answer(400, Some("bad-request")), false),
            (Connect, Reply::Closed, true),
            (TwoHosts, answer(429, Some("rate-limited")), false),
            (BrokenChunked, answer(503, Some("bulkhead-full")), false),
            (Connect, answer(405, Some("bad-request")), false),
        ];
        for (kind, reply, expected) in cases {
            let judged = judge(kind, &reply);
            assert_eq!(
                judged.unexpected.is_some(),
                expected,
                "{} request answered {reply:?}: {:?}",
                kind.name(),
                judged.unexpected
            );
        }
        for kind in [Kind::Normal, Kind::Cancelled, Kind::Flaky] {
            let judged = judge(kind, &Reply::Hang);
            assert_eq!(
                judged.unexpected.unwrap(),
                format!(
                    "{} request hung: no answer before the deadline",
                    kind.name()
                )
            );
        }
    }

    #[test]
    fn picks_follow_the_shares() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut normal = 0;
        for _ in 0..10_000 {
            if pick(&KEEP_ALIVE_MIX, &mut rng) == Kind::Normal {
                normal += 1;
            }
        }
        assert!((5_700..6_300).contains(&normal), "{normal}");
        assert_eq!(pick(&[(Kind::Slow, 1)], &mut rng), Kind::Slow);
    }
}
