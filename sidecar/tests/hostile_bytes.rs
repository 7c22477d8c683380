//! Raw bytes into the outbound and inbound listeners: random bytes, mutations of valid requests
//! and a list of known-nasty heads and bodies. Every connection must end with an HTTP answer or
//! a close, promptly — never a hang, never a crash — and afterwards the sidecar serves a normal
//! request with nothing left in flight. The generator is seeded, so a failure replays; the case
//! that failed is printed.

mod common;

use common::{Sidecar, config};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_testkit::{Action, Upstream, get, metric_with};

/// Requests a client could send, good and bad; the mutations start from these.
const SEEDS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: upstream\r\n\r\n",
    b"POST /orders HTTP/1.1\r\nHost: upstream\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: upstream\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET http://upstream/x HTTP/1.1\r\nHost: upstream\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: upstream\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
];

/// Known-nasty requests, sent as they are.
const NASTY: &[&[u8]] = &[
    b"",
    b"\r\n\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: upstream\r\nHost: other\r\n\r\n",
    b"CONNECT upstream:80 HTTP/1.1\r\nHost: upstream:80\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: upstream\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: upstream\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: upstream\r\nContent-Length: 99999999999999999999\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: upstream\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
    b"POST / HTTP/1.1\r\nHost: upstream\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    b"GET / HTTP/1.1\r\nHost: up\x00stream\r\n\r\n",
    b"GET /\x7f HTTP/1.1\r\nHost: upstream\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: upstream\r\n\r\n",
    b"GET  /  HTTP/1.1\r\nHost: upstream\r\n\r\n",
    b"GET / HTTP/1.1\nHost: upstream\n\n",
    b"GET / HTTP/1.1\r\n Host: upstream\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: upstream:99999\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: upstream\r\nx-weir-retry: true\r\nx-weir-reason: rate-limited\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
];

/// What a case does to the listener, for the failure message.
fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        .escape_debug()
        .to_string()
}

/// Sends `bytes`, ends the client's side, and reads until the server closes. Fails the test if
/// the server neither answers nor closes within 5 s.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> bool {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before reading everything: a failed write is fine.
    let _ = stream.write_all(bytes).await;
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "no answer and no close within 5 s for {:?}",
        show(bytes)
    );
    let http1 = answer.starts_with(b"HTTP/1.");
    // An HTTP/2 answer starts with the server's SETTINGS frame (type 4).
    let http2 = answer.len() >= 9 && answer[3] == 4;
    assert!(
        answer.is_empty() || http1 || http2,
        "not an HTTP answer for {:?}: {:?}",
        show(bytes),
        show(&answer)
    );
    http1
}

fn mutate(rng: &mut fastrand::Rng, seed: &[u8]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..rng.usize(1..6) {
        let at = rng.usize(0..=bytes.len());
        match rng.u8(0..5) {
            0 if !bytes.is_empty() => {
                let i = rng.usize(0..bytes.len());
                bytes[i] = rng.u8(..);
            }
            1 => bytes.insert(at, rng.u8(..)),
            2 => bytes.truncate(at),
            3 => {
                let piece = seed[rng.usize(0..seed.len())..].to_vec();
                bytes.splice(at..at, piece);
            }
            _ => {
                let piece = NASTY[rng.usize(0..NASTY.len())].to_vec();
                bytes.splice(at..at, piece);
            }
        }
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bytes_get_an_answer_or_a_close_and_leave_nothing_behind() {
    let app = Upstream::start(|_, _| Action::Respond(200, "ok")).await;
    // Every policy on, outbound and inbound, so that the bytes go through every path that can
    // hold a resource.
    let policy = r#"{
        "timeouts": {"request": "2s", "perTry": "1s"},
        "retries": {"attempts": 2, "retryOn": ["5xx", "reset"]},
        "circuitBreaker": {"failureThreshold": 1000, "successThreshold": 1, "openDuration": "1s"},
        "outlierDetection": {"consecutive5xxErrors": 1000}
    }"#;
    let mut config: serde_json::Value =
        serde_json::from_str(&config(&[("default", 1, &[app.addr])], policy)).unwrap();
    config["inbound"] = serde_json::json!({
        "rateLimit": {"requestsPerSecond": 100000, "burst": 100000},
        "bulkhead": {"maxConcurrent": 100, "maxQueued": 100, "queueTimeout": "1s"},
        "timeouts": {"request": "2s"}
    });
    let sidecar = Sidecar::start(&config.to_string(), app.addr).await;
    let mut rng = fastrand::Rng::with_seed(0x005e_ed0f_3e12);
    for listener in [sidecar.outbound, sidecar.inbound] {
        let mut answered = 0;
        for bytes in NASTY {
            answered += usize::from(exchange(listener, bytes).await);
        }
        for _ in 0..150 {
            let seed = SEEDS[rng.usize(0..SEEDS.len())];
            answered += usize::from(exchange(listener, &mutate(&mut rng, seed)).await);
        }
        for _ in 0..50 {
            let bytes: Vec<u8> = (0..rng.usize(0..512)).map(|_| rng.u8(..)).collect();
            answered += usize::from(exchange(listener, &bytes).await);
        }
        // The cases reach the proxy's logic, not only hyper's parser.
        assert!(answered >= 40, "{listener}: only {answered} HTTP answers");
    }
    let (status, _, body) = get(sidecar.outbound, "/", "upstream").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let m = sidecar.metrics().await;
    for direction in ["outbound", "inbound"] {
        let in_flight = metric_with(
            &m,
            "weir_in_flight_requests",
            &[("direction", direction), ("service", "upstream")],
        )
        .unwrap_or(0.0);
        assert_eq!(in_flight, 0.0, "{direction} requests left in flight");
    }
}
