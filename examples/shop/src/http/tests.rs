use super::*;

#[test]
fn percent_decoding() {
    assert_eq!(percent_decode("a%20b+c"), "a b c");
    assert_eq!(percent_decode("100%"), "100%");
    assert_eq!(percent_decode("%zz"), "%zz");
    assert_eq!(percent_decode("%41"), "A");
}

/// What the sidecar's outbound listener receives: the service in Host, the retry opt-in on
/// keyed POSTs, JSON.
#[tokio::test]
async fn calls_through_the_sidecar_name_the_service_in_host() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sidecar = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = Client::new(
        Routing::new(Some(sidecar.local_addr().unwrap()), []),
        Duration::from_secs(5),
    );
    let seen = tokio::spawn(async move {
        let (mut stream, _) = sidecar.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            head.extend_from_slice(&buf[..n]);
        }
        let body = br#"{"ok":true}"#;
        let answer = format!(
            "HTTP/1.1 201 Created\r\ncontent-length: {}\r\ncontent-type: application/json\r\n\r\n",
            body.len()
        );
        stream.write_all(answer.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        String::from_utf8_lossy(&head).to_lowercase()
    });
    let reply = client
        .post_idempotent("payments", "/charges", &serde_json::json!({"orderId": "o"}))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::CREATED);
    let head = seen.await.unwrap();
    assert!(head.starts_with("post /charges http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nhost: payments\r\n"), "{head}");
    assert!(head.contains("\r\nx-weir-retry: true\r\n"), "{head}");
    assert!(
        head.contains("\r\ncontent-type: application/json\r\n"),
        "{head}"
    );
}

#[tokio::test]
async fn a_refused_connection_is_told_apart_from_a_lost_answer() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let client = Client::new(Routing::default().peer("x", closed), Duration::from_secs(5));
    let refused = client.get("x", "/").await;
    assert!(
        matches!(refused, Err(CallError::Connect { .. })),
        "{refused:?}"
    );
    assert!(matches!(
        client.get("y", "/").await,
        Err(CallError::NoRoute(_))
    ));
}

#[test]
fn peers_parse() {
    let p: Peer = "inventory=127.0.0.1:18002".parse().unwrap();
    assert_eq!(p.service, "inventory");
    assert!("inventory".parse::<Peer>().is_err());
    assert!("inventory=nowhere".parse::<Peer>().is_err());
    let routing = Routing::new(Some("127.0.0.1:1".parse().unwrap()), [p]);
    assert_eq!(routing.target("inventory").unwrap().port(), 18002);
    assert_eq!(routing.target("payments").unwrap().port(), 1);
    assert_eq!(Routing::default().target("payments"), None);
}

/// Answers every request after `delay`, to hold a request in flight.
#[derive(Debug)]
struct Slow {
    delay: Duration,
}

impl Routes for Slow {
    async fn route(&self, _: (&str, &[&str]), _request: Request) -> Result<Response, ApiError> {
        tokio::time::sleep(self.delay).await;
        Ok(json(StatusCode::OK, &serde_json::json!({"done": true})))
    }
}

async fn start(delay: Duration, max_connections: usize) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let routes = Arc::new(Slow { delay });
    serve_with_cap(
        listener,
        routes,
        Faults::default(),
        HeaderMap::new(),
        max_connections,
    )
    .unwrap()
}

/// Sends one kept-alive request on `stream` and reads its answer's status line.
async fn ask(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /x HTTP/1.1\r\nhost: shop\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Reads until the server closes `stream`; how long after `since` that was, or `None` if it is
/// still open at `since + limit`.
async fn closed_after(
    stream: &mut tokio::net::TcpStream,
    since: tokio::time::Instant,
    limit: Duration,
) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    tokio::time::timeout_at(since + limit, async {
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await
    .ok()
    .map(|()| since.elapsed())
}

#[tokio::test(start_paused = true)]
async fn a_client_silent_or_trickling_its_headers_is_cut_off() {
    use tokio::io::AsyncWriteExt;
    let server = start(Duration::ZERO, MAX_CONNECTIONS).await;
    let since = tokio::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let mut trickling = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    trickling
        .write_all(b"GET /x HTTP/1.1\r\nhost: sh")
        .await
        .unwrap();
    let mut kept_alive = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    assert_eq!(ask(&mut kept_alive).await, "HTTP/1.1 200 OK");
    for (what, stream) in [
        ("silent", &mut silent),
        ("trickling", &mut trickling),
        ("kept alive, idle", &mut kept_alive),
    ] {
        let closed = closed_after(stream, since, HEADER_READ_TIMEOUT * 2).await;
        assert!(
            closed.is_some_and(|after| after >= HEADER_READ_TIMEOUT - Duration::from_secs(1)),
            "{what}: closed after {closed:?}"
        );
    }
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn past_the_connection_cap_a_client_waits_for_a_free_slot() {
    let server = start(Duration::ZERO, 2).await;
    let mut first = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let mut second = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    assert_eq!(ask(&mut first).await, "HTTP/1.1 200 OK");
    assert_eq!(ask(&mut second).await, "HTTP/1.1 200 OK");
    // The kernel completes the handshake (backlog); the server does not take the connection.
    let mut third = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(2), ask(&mut third)).await;
    assert!(waited.is_err(), "served past the cap: {waited:?}");
    drop(first);
    assert_eq!(ask(&mut third).await, "HTTP/1.1 200 OK");
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_the_request_in_flight_finish_and_refuses_new_ones() {
    let server = start(Duration::from_secs(2), MAX_CONNECTIONS).await;
    let addr = server.addr();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let in_flight = tokio::spawn(async move { ask(&mut stream).await });
    // Let the request reach the handler before the shutdown starts.
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.shutdown().await;
    assert_eq!(in_flight.await.unwrap(), "HTTP/1.1 200 OK");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_hung_request_does_not_hold_the_shutdown_past_the_drain_timeout() {
    let server = start(Duration::from_secs(3600), MAX_CONNECTIONS).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let hung = tokio::spawn(async move { ask(&mut stream).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = tokio::time::Instant::now();
    server.shutdown().await;
    assert!(started.elapsed() <= DRAIN_TIMEOUT + Duration::from_secs(1));
    hung.abort();
}
