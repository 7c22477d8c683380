use super::*;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n";

/// A server on a loopback port whose handler reports each request it starts and answers only
/// once `gate` lets it.
struct Running {
    addr: SocketAddr,
    started: mpsc::UnboundedReceiver<()>,
    gate: Arc<Semaphore>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

async fn start(server: Server, open_gate: bool) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (report, started) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(if open_gate {
        Semaphore::MAX_PERMITS
    } else {
        0
    }));
    let (stop, stopped) = oneshot::channel::<()>();
    let handler = {
        let gate = gate.clone();
        move |_peer: SocketAddr, _request: Request<Incoming>| {
            let report = report.clone();
            let gate = gate.clone();
            async move {
                let _ = report.send(());
                gate.acquire().await.expect("the gate stays").forget();
                Response::new(Full::new(Bytes::from_static(b"served\n")))
            }
        }
    };
    let task = tokio::spawn(server.serve(listener, handler, async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        started,
        gate,
        stop: Some(stop),
        task,
    }
}

impl Running {
    fn shut_down(&mut self) {
        let _ = self.stop.take().expect("shut down once").send(());
    }
}

/// Whatever the server sends until it closes (a reset counts as a close).
async fn read_all(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    // What came before a reset stays in `received`.
    let _ = stream.read_to_end(&mut received).await;
    String::from_utf8_lossy(&received).into_owned()
}

async fn send(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // A server that closed at once may make the write fail: what it answered is what counts.
    let _ = stream.write_all(bytes).await;
    stream
}

fn served(response: &str) -> bool {
    response.starts_with("HTTP/1.1 200 OK") && response.ends_with("served\n")
}

#[tokio::test(start_paused = true)]
async fn a_connection_without_a_complete_request_head_is_closed_after_the_header_read_timeout() {
    let timeout = Duration::from_secs(10);
    let running = start(Server::new("test").header_read_timeout(timeout), true).await;
    let cases: [(&str, &[u8]); 4] = [
        ("nothing at all", b""),
        ("half an HTTP/1.1 head", b"GET / HTTP/1.1\r\nhost: test\r\n"),
        ("half the HTTP/2 preface", b"PRI * HTTP/2.0\r\n"),
        ("a single byte", b"G"),
    ];
    for (case, bytes) in cases {
        let sent_at = Instant::now();
        let mut stream = send(running.addr, bytes).await;
        let response = read_all(&mut stream).await;
        let waited = sent_at.elapsed();
        assert!(!served(&response), "{case}: answered {response:?}");
        assert!(
            waited >= timeout && waited < timeout + Duration::from_secs(1),
            "{case}: closed after {waited:?}, not {timeout:?}"
        );
    }
    let mut stream = send(running.addr, REQUEST).await;
    let response = read_all(&mut stream).await;
    assert!(served(&response), "a complete request: {response:?}");
}

#[tokio::test(start_paused = true)]
async fn connections_past_the_cap_are_closed_at_once_while_the_first_ones_are_served() {
    let server = Server::new("test").max_connections(2);
    let mut running = start(server.clone(), false).await;
    let mut first = send(running.addr, REQUEST).await;
    let mut second = send(running.addr, REQUEST).await;
    running.started.recv().await.expect("first request");
    running.started.recv().await.expect("second request");

    let mut third = send(running.addr, REQUEST).await;
    let refused = tokio::time::timeout(Duration::from_secs(1), read_all(&mut third)).await;
    assert_eq!(
        refused.as_deref(),
        Ok(""),
        "past the cap: closed at once, unanswered"
    );
    assert_eq!(server.refused(), 1);

    running.gate.add_permits(2);
    for (which, stream) in [("first", &mut first), ("second", &mut second)] {
        let response = read_all(stream).await;
        assert!(served(&response), "{which}: {response:?}");
    }

    // Their slots free as their tasks end, which the client cannot see: try a few times.
    running.gate.add_permits(Semaphore::MAX_PERMITS - 2);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut stream = send(running.addr, REQUEST).await;
        if served(&read_all(&mut stream).await) {
            break;
        }
        assert!(
            attempts < 100,
            "no slot freed after the first connections ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A server with one request in flight (held by the closed gate), told to shut down: the
/// server, the request's connection and when shutdown started.
async fn shutting_down_with_a_request_in_flight(drain: Duration) -> (Running, TcpStream, Instant) {
    let mut running = start(Server::new("test").drain_timeout(drain), false).await;
    let in_flight = send(running.addr, REQUEST).await;
    running.started.recv().await.expect("the request");
    let stopping_at = Instant::now();
    running.shut_down();
    (running, in_flight, stopping_at)
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_the_request_in_flight_and_then_returns() {
    let drain = Duration::from_secs(5);
    let (mut running, mut in_flight, stopping_at) =
        shutting_down_with_a_request_in_flight(drain).await;
    tokio::time::sleep(drain / 2).await;
    assert!(
        !running.task.is_finished(),
        "returned with a request in flight"
    );
    assert!(
        TcpStream::connect(running.addr).await.is_err(),
        "still accepting while draining"
    );

    running.gate.add_permits(1);
    let response = read_all(&mut in_flight).await;
    assert!(served(&response), "{response:?}");
    (&mut running.task).await.expect("the server task");
    assert!(stopping_at.elapsed() < drain, "{:?}", stopping_at.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_hung_request_is_cut_after_the_drain_bound() {
    let drain = Duration::from_secs(5);
    let (mut running, mut hung, stopping_at) = shutting_down_with_a_request_in_flight(drain).await;
    (&mut running.task).await.expect("the server task");
    let took = stopping_at.elapsed();
    assert!(
        took >= drain && took < drain + Duration::from_secs(1),
        "returned after {took:?}"
    );
    let response = read_all(&mut hung).await;
    assert!(!served(&response), "{response:?}");
}

#[tokio::test(start_paused = true)]
async fn an_idle_kept_alive_connection_does_not_hold_up_shutdown() {
    let mut running = start(Server::new("test"), true).await;
    let mut idle = send(running.addr, b"GET / HTTP/1.1\r\nhost: test\r\n\r\n").await;
    running.started.recv().await.expect("the request");
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.expect("the answer");
    assert!(served(&String::from_utf8_lossy(&buf[..n])));

    let stopping_at = Instant::now();
    running.shut_down();
    (&mut running.task).await.expect("the server task");
    assert!(stopping_at.elapsed() < Duration::from_secs(1));
    assert_eq!(read_all(&mut idle).await, "", "closed by the drain");
}

#[tokio::test(start_paused = true)]
async fn a_tls_handshake_is_bounded_and_a_client_that_does_not_speak_tls_is_closed_at_once() {
    let cert = crate::webhook::tls::ServingCert::new();
    let acceptor = TlsAcceptor::from(cert.server_config().expect("a TLS config"));
    let handshake = Duration::from_secs(3);
    let server = Server::new("test")
        .tls(acceptor, handshake)
        .header_read_timeout(Duration::from_secs(100));
    let running = start(server, true).await;

    let sent_at = Instant::now();
    let mut silent = send(running.addr, b"").await;
    assert_eq!(read_all(&mut silent).await, "", "silent client");
    let waited = sent_at.elapsed();
    assert!(
        waited >= handshake && waited < handshake + Duration::from_secs(1),
        "silent client: closed after {waited:?}, not {handshake:?}"
    );

    let sent_at = Instant::now();
    let mut plain = send(running.addr, REQUEST).await;
    let response = read_all(&mut plain).await;
    assert!(!served(&response), "plain HTTP: {response:?}");
    assert!(
        sent_at.elapsed() < handshake,
        "plain HTTP: {:?}",
        sent_at.elapsed()
    );
}
