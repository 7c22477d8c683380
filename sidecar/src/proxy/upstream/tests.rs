use super::*;
use crate::body::empty;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An endpoint that answers each request on a connection with `answer` and counts the
/// connections it accepted and those that have ended.
struct Endpoint {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
}

impl Endpoint {
    async fn start(answer: &'static [u8], close_after_answer: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let (a, e) = (accepted.clone(), ended.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let ended = e.clone();
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
                            if stream.write_all(answer).await.is_err() {
                                break;
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
        }
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

async fn exchange(upstream: &Upstream, addr: SocketAddr) -> Bytes {
    let response = upstream
        .send(addr, get(), Duration::from_secs(1))
        .await
        .unwrap();
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
    assert!(upstream.pool.state.lock().idle.values().all(Vec::is_empty));
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
        let response = upstream
            .send(endpoint.addr, get(), Duration::from_secs(1))
            .await
            .unwrap();
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "half");
        drop(body);
        assert_eq!(endpoint.accepted(), i, "a connection mid-answer was reused");
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(endpoint.ended(), 2);
    assert!(upstream.pool.state.lock().idle.is_empty());
}

#[tokio::test]
async fn a_refused_connect_is_a_connect_failure_and_no_timeout() {
    // (The timeout itself: tests/client_faults.rs, with an address that never answers.)
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let refused = Upstream::new()
        .send(closed, get(), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(refused.is_connect(), "{refused}");
    assert!(!caused_by::<ConnectTimeout>(&refused));
}
