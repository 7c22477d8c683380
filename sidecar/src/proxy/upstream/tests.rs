use super::*;
use crate::body::empty;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An endpoint that answers each request on a connection with `answer` and counts the
/// connections it accepted and those that have ended (and the request heads it read).
struct Endpoint {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
    heads: Arc<AtomicUsize>,
}

impl Endpoint {
    async fn start(answer: &'static [u8], close_after_answer: bool) -> Self {
        Self::start_in_pieces(vec![answer], close_after_answer).await
    }

    /// Writes each answer in `pieces`, a millisecond apart: the proxy reads it in as many parts.
    async fn start_in_pieces(pieces: Vec<&'static [u8]>, close_after_answer: bool) -> Self {
        let pieces = Arc::new(pieces);
        let heads = Arc::new(AtomicUsize::new(0));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let (a, e, h) = (accepted.clone(), ended.clone(), heads.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (ended, heads, pieces) = (e.clone(), h.clone(), pieces.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        // Heads only (GETs): one answer per complete head.
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            heads.fetch_add(1, Ordering::SeqCst);
                            for (i, piece) in pieces.iter().enumerate() {
                                if i > 0 {
                                    tokio::time::sleep(Duration::from_millis(1)).await;
                                }
                                if stream.write_all(piece).await.is_err() {
                                    break;
                                }
                            }
                            if close_after_answer {
                                ended.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                        }
                    }
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            accepted,
            ended,
            heads,
        }
    }

    fn heads(&self) -> usize {
        self.heads.load(Ordering::SeqCst)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn ended(&self) -> usize {
        self.ended.load(Ordering::SeqCst)
    }
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

fn get() -> Request<ProxyBody> {
    Request::get("/")
        .header("host", "endpoint")
        .body(empty())
        .unwrap()
}

/// A GET's answer, or the reason there is none.
async fn try_get(
    upstream: &Upstream,
    addr: SocketAddr,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    upstream.send(addr, get(), Duration::from_secs(1)).await
}

async fn exchange(upstream: &Upstream, addr: SocketAddr) -> Bytes {
    let response = try_get(upstream, addr).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test(start_paused = true)]
async fn one_connection_serves_requests_in_turn_and_closes_when_unused_long_enough() {
    let endpoint = Endpoint::start(OK, false).await;
    let upstream = Upstream::new();
    for _ in 0..5 {
        assert_eq!(exchange(&upstream, endpoint.addr).await, "ok");
    }
    assert_eq!(endpoint.accepted(), 1);

    tokio::time::sleep(POOL_IDLE_TIMEOUT - Duration::from_secs(1)).await;
    assert_eq!(endpoint.ended(), 0, "closed before its idle timeout");
    // Used again: its idle time starts over.
    assert_eq!(exchange(&upstream, endpoint.addr).await, "ok");
    tokio::time::sleep(POOL_IDLE_TIMEOUT - Duration::from_secs(1)).await;
    assert_eq!((endpoint.accepted(), endpoint.ended()), (1, 0));

    tokio::time::sleep(SWEEP_PERIOD + Duration::from_secs(1)).await;
    assert_eq!(
        endpoint.ended(),
        1,
        "an unused connection outlived its idle timeout"
    );
    assert!(
        !upstream.pool.state.lock().sweeping,
        "the sweep ends with the pool empty"
    );

    assert_eq!(exchange(&upstream, endpoint.addr).await, "ok");
    assert_eq!(endpoint.accepted(), 2);
    assert!(upstream.pool.state.lock().sweeping, "and starts again");
}

#[tokio::test(start_paused = true)]
async fn an_answer_saying_connection_close_closes_its_connection_at_once() {
    const CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
    // The endpoint keeps its side open: only the proxy closing ends the connection.
    let endpoint = Endpoint::start(CLOSE, false).await;
    let upstream = Upstream::new();
    for i in 1..=3 {
        assert_eq!(exchange(&upstream, endpoint.addr).await, "ok");
        assert_eq!(endpoint.accepted(), i, "a closed connection was used again");
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(
            endpoint.ended(),
            i,
            "the connection outlived its last answer"
        );
    }
    assert!(upstream.pool.state.lock().plain.values().all(Vec::is_empty));
}

#[tokio::test(start_paused = true)]
async fn a_connection_the_endpoint_closed_is_not_handed_out_again() {
    // Closed after each answer, without saying so (no `Connection: close`).
    let endpoint = Endpoint::start(OK, true).await;
    let upstream = Upstream::new();
    for i in 1..=3 {
        assert_eq!(exchange(&upstream, endpoint.addr).await, "ok");
        assert_eq!(endpoint.accepted(), i);
        // Gives the connection's task the time to see the close.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_answer_abandoned_half_way_closes_its_connection() {
    // Announces more than it sends: the body never ends.
    let endpoint =
        Endpoint::start(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhalf", false).await;
    let upstream = Upstream::new();
    for i in 1..=2 {
        let response = try_get(&upstream, endpoint.addr).await.unwrap();
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "half");
        drop(body);
        assert_eq!(endpoint.accepted(), i, "a connection mid-answer was reused");
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(endpoint.ended(), 2);
    assert!(upstream.pool.state.lock().plain.is_empty());
}

#[tokio::test]
async fn a_refused_connect_is_a_connect_failure_and_no_timeout() {
    // (The timeout itself: tests/client_faults.rs, with an address that never answers.)
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let refused = try_get(&Upstream::new(), closed).await.unwrap_err();
    assert!(refused.is_connect(), "{refused}");
    assert!(!caused_by::<ConnectTimeout>(&refused));
}

fn idle_counts(upstream: &Upstream) -> (usize, usize) {
    let state = upstream.pool.state.lock();
    let plain = state.plain.values().map(Vec::len).sum();
    let hyper = state.idle.values().map(Vec::len).sum();
    (plain, hyper)
}

#[tokio::test(start_paused = true)]
async fn a_chunked_answer_arriving_a_byte_at_a_time_is_read_whole_and_its_connection_reused() {
    const WIRE: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nx-sum: 5\r\n\r\n";
    let pieces = (0..WIRE.len()).map(|i| &WIRE[i..=i]).collect();
    let endpoint = Endpoint::start_in_pieces(pieces, false).await;
    let upstream = Upstream::new();
    for _ in 0..2 {
        let response = try_get(&upstream, endpoint.addr).await.unwrap();
        assert_eq!(response.headers()["transfer-encoding"], "chunked");
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-sum"], "5");
        assert_eq!(collected.to_bytes(), "abcde");
    }
    assert_eq!(endpoint.accepted(), 1, "the connection was not reused");
    assert_eq!(idle_counts(&upstream), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn bytes_past_an_answer_close_its_connection() {
    let endpoint = Endpoint::start(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
        false,
    )
    .await;
    let upstream = Upstream::new();
    for i in 1..=2 {
        assert_eq!(exchange(&upstream, endpoint.addr).await, "ok");
        assert_eq!(
            endpoint.accepted(),
            i,
            "a connection with stray bytes was reused"
        );
    }
    assert_eq!(idle_counts(&upstream), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_close_delimited_answer_is_read_to_the_close_and_its_connection_not_reused() {
    // HTTP/1.0 without a length: the body is whatever comes before the close.
    let endpoint =
        Endpoint::start_in_pieces(vec![b"HTTP/1.0 200 OK\r\n\r\nfirst ", b"second"], true).await;
    let upstream = Upstream::new();
    for i in 1..=2 {
        let response = try_get(&upstream, endpoint.addr).await.unwrap();
        assert_eq!(response.version(), http::Version::HTTP_10);
        assert!(response.body().size_hint().exact().is_none());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "first second");
        assert_eq!(endpoint.accepted(), i);
    }
    assert_eq!(idle_counts(&upstream), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_head_request_reads_no_body_and_keeps_its_connection() {
    // The length is that of the GET's body, which a HEAD answer does not carry.
    let endpoint = Endpoint::start(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n", false).await;
    let upstream = Upstream::new();
    for _ in 0..3 {
        let head = Request::head("/")
            .header("host", "endpoint")
            .body(empty())
            .unwrap();
        let response = upstream
            .send(endpoint.addr, head, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(response.headers()["content-length"], "1000");
        assert!(response.body().is_end_stream());
        drop(response);
    }
    assert_eq!((endpoint.accepted(), endpoint.heads()), (1, 3));
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_that_closes_or_garbles_instead_of_answering_fails_the_exchange() {
    for (case, answer) in [
        ("closed", &b""[..]),
        ("half a head", b"HTTP/1.1 200 OK\r\ncontent-"),
        ("not HTTP", b"220 smtp.example ESMTP\r\n\r\n"),
    ] {
        let endpoint = Endpoint::start(answer, true).await;
        let upstream = Upstream::new();
        let failed = try_get(&upstream, endpoint.addr).await.unwrap_err();
        assert!(
            matches!(failed, UpstreamError::Exchange { .. }),
            "{case}: {failed}"
        );
        assert_eq!(idle_counts(&upstream), (0, 0), "{case}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_caller_gone_while_the_answer_is_awaited_closes_the_connection() {
    // Never answers.
    let endpoint = Endpoint::start_in_pieces(Vec::new(), false).await;
    let upstream = Upstream::new();
    let sending = try_get(&upstream, endpoint.addr);
    assert!(
        tokio::time::timeout(Duration::from_secs(5), sending)
            .await
            .is_err()
    );
    assert_eq!(endpoint.heads(), 1);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(endpoint.ended(), 1, "the abandoned connection stayed open");
    assert_eq!(idle_counts(&upstream), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn only_a_request_with_a_body_to_stream_goes_through_hyper() {
    let endpoint = Endpoint::start(OK, false).await;
    let upstream = Upstream::new();
    let post = |body: &'static str| {
        Request::post("/")
            .header("host", "endpoint")
            .header("content-length", body.len().to_string())
            .body(crate::body::full(body))
            .unwrap()
    };
    // An empty `Full` is at its end already: plain.
    for (body, idle) in [("", (1, 0)), ("x", (1, 1))] {
        let response = upstream
            .send(endpoint.addr, post(body), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "ok"
        );
        assert_eq!(idle_counts(&upstream), idle, "body {body:?}");
    }
}

#[tokio::test]
async fn a_large_body_is_read_in_growing_pieces_and_its_buffer_let_go_when_idle() {
    const SIZE: usize = 1 << 20;
    let mut answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {SIZE}\r\n\r\n").into_bytes();
    answer.extend((0..SIZE).map(|i| (i % 251) as u8));
    let answer: &'static [u8] = Box::leak(answer.into_boxed_slice());
    let endpoint = Endpoint::start(answer, false).await;
    let upstream = Upstream::new();
    let response = try_get(&upstream, endpoint.addr).await.unwrap();
    let mut body = response.into_body();
    let (mut frames, mut content) = (0, Vec::with_capacity(SIZE));
    while let Some(frame) = body.frame().await {
        content.extend_from_slice(&frame.unwrap().into_data().unwrap());
        frames += 1;
    }
    assert!(
        content
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 251) as u8)
    );
    assert_eq!(content.len(), SIZE);
    // 128 frames or more in 8 KiB reads (9 when the reads grow, on an idle machine).
    assert!(frames < 100, "{frames} frames for 1 MiB");
    drop(body);
    let state = upstream.pool.state.lock();
    let idle = &state.plain[&endpoint.addr];
    assert_eq!(idle.len(), 1, "the connection went back");
    assert!(
        idle[0].connection.read_capacity() <= 2 * 8192,
        "an idle connection keeps {} bytes of buffer",
        idle[0].connection.read_capacity()
    );
}
