//! Connections are bounded (DESIGN "Sidecar contract"): the header-read timeout counted from
//! accept, the idle close, `--max-connections`, running out of file descriptors, the connection
//! metrics; and the process itself: `--threads` and the log format. Over real loopback sockets,
//! with the real binary where the command line matters and tokio's paused clock where time does.

mod common;

use common::{Launch, Sidecar, SidecarProcess, config, config_file};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use weir_sidecar::server::{IDLE_TIMEOUT, Limits};
use weir_testkit::{Action, Upstream, get, metric_with};

// ---- The real binary ---------------------------------------------------------------------------

/// The binary with a config routing `upstream` to `endpoint`, `args` and, when given, a
/// descriptor limit.
async fn binary(endpoint: SocketAddr, args: &[&str], max_files: Option<u32>) -> SidecarProcess {
    let config = config(&[("default", 100, &[endpoint])], "{}");
    let launch = Launch {
        args,
        max_files,
        ..Launch::default()
    };
    SidecarProcess::launch(&config, endpoint, launch).await
}

/// One series of the binary's `/metrics`, asked on a connection of its own (counted on `admin`).
async fn raw_metric(sidecar: &SidecarProcess, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut stream = TcpStream::connect(sidecar.admin).await.unwrap();
    let (status, body) = exchange(&mut stream, "/metrics").await;
    assert_eq!(status, 200);
    metric_with(&body, name, labels)
}

/// The names of the threads of process `pid`.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| {
            let comm = task.unwrap().path().join("comm");
            std::fs::read_to_string(comm).unwrap().trim().to_owned()
        })
        .collect()
}

async fn ok_upstream() -> Upstream {
    Upstream::fixed(200, "hello").await
}

// ---- Raw HTTP/1.1 over one connection ------------------------------------------------------------

/// Sends `GET path` with `Host: upstream` on `stream` (kept alive) and reads the answer: its
/// status and body (by Content-Length).
async fn exchange(stream: &mut TcpStream, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nhost: upstream\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_answer(stream).await
}

async fn read_answer(stream: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed before an answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed in the middle of a body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    (status, body)
}

/// Whether the server closes `stream` within `limit` (end of stream or reset; whatever it sent
/// first is skipped).
async fn closes_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut chunk = [0u8; 1024];
    timeout(limit, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

// ---- Header-read timeout, from accept ------------------------------------------------------------

#[tokio::test]
async fn silent_connections_are_closed_after_the_header_read_timeout_on_every_listener() {
    let up = ok_upstream().await;
    let sidecar = binary(up.addr, &["--header-read-timeout", "300ms"], None).await;
    for (listener, addr) in [
        ("outbound", sidecar.outbound),
        ("inbound", sidecar.inbound),
        ("admin", sidecar.admin),
    ] {
        let opened = Instant::now();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        // A slowloris: a head begun, never finished.
        let mut trickle = TcpStream::connect(addr).await.unwrap();
        trickle.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(
            closes_within(&mut silent, Duration::from_secs(5)).await,
            "a silent connection to {listener} stayed open"
        );
        assert!(
            closes_within(&mut trickle, Duration::from_secs(5)).await,
            "an unfinished head on {listener} stayed open"
        );
        assert!(
            opened.elapsed() >= Duration::from_millis(300),
            "{listener}: closed too soon"
        );
        let closed = [("listener", listener), ("reason", "header-timeout")];
        assert_eq!(
            raw_metric(&sidecar, "weir_connections_closed_total", &closed).await,
            Some(2.0),
            "{listener}"
        );
    }
    // A request sent at once is served as ever.
    let mut prompt = TcpStream::connect(sidecar.outbound).await.unwrap();
    assert_eq!(exchange(&mut prompt, "/").await, (200, "hello".into()));
}

#[tokio::test]
async fn two_hundred_silent_connections_do_not_hold_up_a_request() {
    let up = ok_upstream().await;
    let sidecar = binary(up.addr, &[], None).await;
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(sidecar.outbound).await.unwrap());
    }
    let all_open = weir_testkit::eventually(Duration::from_secs(5), || async {
        raw_metric(&sidecar, "weir_connections", &[("listener", "outbound")]).await == Some(200.0)
    })
    .await;
    assert!(all_open, "the 200 silent connections were not all accepted");

    // Well inside the default 10 s header-read timeout: nothing had to be closed first.
    let mut caller = TcpStream::connect(sidecar.outbound).await.unwrap();
    let answer = timeout(Duration::from_secs(5), exchange(&mut caller, "/")).await;
    assert_eq!(answer.expect("no prompt answer"), (200, "hello".into()));
    assert_eq!(up.hits(), 1);
    drop(silent);
}

// ---- --max-connections -------------------------------------------------------------------------

#[tokio::test]
async fn past_max_connections_a_new_connection_waits_until_one_closes() {
    let up = ok_upstream().await;
    let args = ["--max-connections", "5", "--header-read-timeout", "60s"];
    let sidecar = binary(up.addr, &args, None).await;
    // Five kept-alive connections, idle after one request each.
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut stream = TcpStream::connect(sidecar.outbound).await.unwrap();
        assert_eq!(exchange(&mut stream, "/").await.0, 200);
        held.push(stream);
    }
    // The sixth connects (the kernel queues it) but is not served …
    let mut sixth = TcpStream::connect(sidecar.outbound).await.unwrap();
    sixth
        .write_all(b"GET /sixth HTTP/1.1\r\nhost: upstream\r\n\r\n")
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let early = timeout(Duration::from_millis(500), sixth.peek(&mut byte)).await;
    assert!(
        early.is_err(),
        "the sixth connection was served past the limit"
    );
    assert_eq!(up.hits(), 5);
    assert_eq!(
        raw_metric(&sidecar, "weir_connections", &[("listener", "outbound")]).await,
        Some(5.0)
    );
    // … until one of the five closes.
    drop(held.pop());
    let answer = timeout(Duration::from_secs(5), read_answer(&mut sixth)).await;
    assert_eq!(
        answer.expect("the sixth was never served"),
        (200, "hello".into())
    );
    assert_eq!(up.hits(), 6);
    // The other listeners have limits of their own, and nothing crashed.
    assert_eq!(get(sidecar.admin, "/live", "admin").await.0, 200);
    let closed = [("listener", "outbound"), ("reason", "closed")];
    assert_eq!(
        raw_metric(&sidecar, "weir_connections_closed_total", &closed).await,
        Some(1.0)
    );
}

// ---- Out of file descriptors -------------------------------------------------------------------

#[tokio::test]
async fn out_of_file_descriptors_open_connections_are_still_served_and_accept_recovers() {
    let up = ok_upstream().await;
    let sidecar = binary(up.addr, &["--header-read-timeout", "60s"], Some(64)).await;
    let mut established = TcpStream::connect(sidecar.admin).await.unwrap();
    assert_eq!(exchange(&mut established, "/live").await.0, 200);

    // More connections than the process has descriptors: accept runs dry.
    let mut flood = Vec::new();
    for _ in 0..100 {
        flood.push(TcpStream::connect(sidecar.admin).await.unwrap());
    }
    let warned = weir_testkit::eventually(Duration::from_secs(5), || async {
        sidecar.log().contains("cannot accept connections")
    })
    .await;
    assert!(warned, "no warning: {}", sidecar.log());
    // Spend a while out of descriptors, then check the open connection is still served.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answer = timeout(Duration::from_secs(5), exchange(&mut established, "/live")).await;
    assert_eq!(answer.expect("the open connection hung").0, 200);
    let log = sidecar.log();
    assert_eq!(
        log.matches("cannot accept connections").count(),
        1,
        "logged more than once in one spell: {log}"
    );

    drop(flood);
    let recovered = weir_testkit::eventually(Duration::from_secs(10), || async {
        sidecar.log().contains("accepting connections again")
    })
    .await;
    assert!(recovered, "accept did not recover: {}", sidecar.log());
    let mut fresh = TcpStream::connect(sidecar.admin).await.unwrap();
    assert_eq!(exchange(&mut fresh, "/live").await.0, 200);
    // Closing the flood lets the kernel's queue in at once, which may run dry again briefly:
    // a spell of its own, logged once as well.
    let log = sidecar.log();
    assert_eq!(
        log.matches("cannot accept connections").count(),
        log.matches("accepting connections again").count(),
        "{log}"
    );
}

// ---- In-process, on tokio's paused clock ---------------------------------------------------------

/// An in-process sidecar with the default limits in front of an upstream answering `hello`.
async fn in_process_ok() -> (Upstream, Sidecar) {
    let up = ok_upstream().await;
    let sidecar = in_process(up.addr).await;
    (up, sidecar)
}

/// An in-process sidecar with the default limits, `upstream` routed to `endpoint`.
async fn in_process(endpoint: SocketAddr) -> Sidecar {
    let (dir, config_path) = config_file(&config(&[("default", 100, &[endpoint])], "{}"));
    let mut options = common::options(endpoint);
    options.config = Some(config_path);
    let running = weir_sidecar::start_with(options, Limits::default())
        .await
        .unwrap();
    Sidecar::new(running, Some(dir)).ready().await
}

fn local_metric(sidecar: &Sidecar, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = String::from_utf8(sidecar.store().metrics.encode()).unwrap();
    metric_with(&text, name, labels)
}

/// The connections `listener` holds open now.
fn open(sidecar: &Sidecar, listener: &str) -> Option<f64> {
    local_metric(sidecar, "weir_connections", &[("listener", listener)])
}

/// Waits (up to a second) until one connection of `listener` was closed for `reason`.
async fn closed_once(sidecar: &Sidecar, listener: &str, reason: &str) {
    let counted = weir_testkit::eventually(Duration::from_secs(1), || async {
        closed(sidecar, listener, reason) == Some(1.0)
    })
    .await;
    assert!(counted, "{listener}: no connection closed for {reason}");
}

fn closed(sidecar: &Sidecar, listener: &str, reason: &str) -> Option<f64> {
    let labels = [("listener", listener), ("reason", reason)];
    local_metric(sidecar, "weir_connections_closed_total", &labels)
}

#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_closes_after_thirty_seconds_not_before() {
    let (_up, sidecar) = in_process_ok().await;
    let mut stream = TcpStream::connect(sidecar.admin).await.unwrap();
    assert_eq!(exchange(&mut stream, "/live").await.0, 200);
    // Idle for longer than the header-read timeout: still kept alive.
    tokio::time::sleep(IDLE_TIMEOUT - Duration::from_secs(1)).await;
    assert_eq!(exchange(&mut stream, "/live").await.0, 200);
    let idle_from = Instant::now();
    assert!(closes_within(&mut stream, Duration::from_secs(60)).await);
    let idle = idle_from.elapsed();
    assert!(
        idle >= IDLE_TIMEOUT && idle < IDLE_TIMEOUT + Duration::from_secs(1),
        "closed after {idle:?} idle"
    );
    closed_once(&sidecar, "admin", "idle").await;
    assert_eq!(open(&sidecar, "admin"), Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn an_idle_http2_connection_is_sent_away_after_thirty_seconds() {
    let (_up, sidecar) = in_process_ok().await;
    let stream = TcpStream::connect(sidecar.admin).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get(format!("http://{}/live", sidecar.admin))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    let idle_from = Instant::now();
    let ended = timeout(Duration::from_secs(60), connection).await;
    assert!(ended.is_ok(), "the HTTP/2 connection stayed open");
    assert!(idle_from.elapsed() >= IDLE_TIMEOUT);
    closed_once(&sidecar, "admin", "idle").await;
}

#[tokio::test(start_paused = true)]
async fn a_request_in_progress_longer_than_the_idle_timeout_is_not_cut() {
    let slow = Upstream::start(|_, _| Action::Delay(Duration::from_secs(45), 200)).await;
    let sidecar = in_process(slow.addr).await;
    let mut stream = TcpStream::connect(sidecar.outbound).await.unwrap();
    assert_eq!(exchange(&mut stream, "/slow").await, (200, "slow".into()));
    assert_eq!(closed(&sidecar, "outbound", "idle"), Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn a_later_head_on_a_kept_alive_connection_has_the_header_read_timeout_from_its_first_byte() {
    let (_up, sidecar) = in_process_ok().await;
    let mut stream = TcpStream::connect(sidecar.admin).await.unwrap();
    assert_eq!(exchange(&mut stream, "/live").await.0, 200);
    tokio::time::sleep(Duration::from_secs(15)).await;
    stream.write_all(b"GET /live HTTP/1.1\r\n").await.unwrap();
    let header = Limits::default().header_read_timeout;
    assert!(
        !closes_within(&mut stream, header - Duration::from_millis(100)).await,
        "closed before the header-read timeout"
    );
    assert!(closes_within(&mut stream, Duration::from_millis(200)).await);
    closed_once(&sidecar, "admin", "header-timeout").await;
}

#[tokio::test(start_paused = true)]
async fn a_head_trickled_byte_by_byte_is_closed_a_header_read_timeout_after_accept() {
    let (_up, sidecar) = in_process_ok().await;
    let accepted = Instant::now();
    let mut stream = TcpStream::connect(sidecar.inbound).await.unwrap();
    let head = b"GET / HTTP/1.1\r\nhost: upstream\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    for byte in head {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(closes_within(&mut stream, Duration::from_secs(1)).await);
    let open_for = accepted.elapsed();
    let header = Limits::default().header_read_timeout;
    assert!(
        open_for >= header && open_for <= header + Duration::from_secs(2),
        "{open_for:?}"
    );
    assert_eq!(closed(&sidecar, "inbound", "header-timeout"), Some(1.0));
}

#[tokio::test(start_paused = true)]
async fn closes_are_counted_by_reason_and_the_gauge_comes_back_to_zero() {
    let (_up, sidecar) = in_process_ok().await;
    let mut polite = TcpStream::connect(sidecar.outbound).await.unwrap();
    let mut rude = TcpStream::connect(sidecar.outbound).await.unwrap();
    assert_eq!(exchange(&mut polite, "/").await.0, 200);
    assert!(
        weir_testkit::eventually(Duration::from_secs(1), || async {
            local_metric(&sidecar, "weir_connections", &[("listener", "outbound")]) == Some(2.0)
        })
        .await
    );
    drop(polite);
    rude.write_all(b"NOT HTTP AT ALL\r\n\r\n").await.unwrap();
    assert!(closes_within(&mut rude, Duration::from_secs(1)).await);
    let counted = weir_testkit::eventually(Duration::from_secs(1), || async {
        closed(&sidecar, "outbound", "closed") == Some(1.0)
            && closed(&sidecar, "outbound", "error") == Some(1.0)
    })
    .await;
    assert!(
        counted,
        "{}",
        String::from_utf8_lossy(&sidecar.store().metrics.encode())
    );
    assert_eq!(open(&sidecar, "outbound"), Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn the_drain_does_not_wait_for_idle_or_silent_connections() {
    let up = ok_upstream().await;
    let mut sidecar = in_process(up.addr).await;
    let mut idle = TcpStream::connect(sidecar.outbound).await.unwrap();
    assert_eq!(exchange(&mut idle, "/").await.0, 200);
    let mut silent = TcpStream::connect(sidecar.admin).await.unwrap();
    let running = sidecar.running.take().unwrap();
    let started = Instant::now();
    assert!(running.shutdown().await, "the drain timed out");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(closes_within(&mut idle, Duration::from_secs(1)).await);
    assert!(closes_within(&mut silent, Duration::from_secs(1)).await);
}

// ---- --threads ------------------------------------------------------------------------------------

#[tokio::test]
async fn threads_one_runs_on_the_main_thread_and_threads_three_on_three_workers() {
    let up = ok_upstream().await;
    let one = binary(up.addr, &["--threads", "1"], None).await;
    let threads = thread_names(one.process.pid());
    assert!(
        threads
            .iter()
            .all(|name| name == "weir-sidecar" || name == "weir-blocking"),
        "{threads:?}"
    );
    assert_eq!(threads.iter().filter(|n| *n == "weir-sidecar").count(), 1);

    let three = binary(up.addr, &["--threads", "3"], None).await;
    let threads = thread_names(three.process.pid());
    let workers = threads
        .iter()
        .filter(|n| n.starts_with("weir-worker"))
        .count();
    assert_eq!(workers, 3, "{threads:?}");
}

// ---- Logs -----------------------------------------------------------------------------------------

#[tokio::test]
async fn logs_in_a_file_have_no_colour_codes_and_json_lines_parse() {
    let up = ok_upstream().await;
    // The file as written, colour codes included if there were any.
    let written =
        |sidecar: &SidecarProcess| std::fs::read_to_string(sidecar.process.log_path()).unwrap();
    let text = binary(up.addr, &[], None).await;
    let log = written(&text);
    assert!(log.contains("weir-sidecar listening"), "{log}");
    assert!(!log.contains("\x1b["), "colour codes in a file: {log:?}");

    let json = binary(up.addr, &["--log-format", "json"], None).await;
    let log = written(&json);
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let listening = lines
        .iter()
        .find(|line| line["message"] == "weir-sidecar listening")
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["outbound"], json.outbound.to_string());
    assert!(!log.contains("\x1b["));
}

// ---- Upgrades ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_upgraded_connection_stays_counted_until_its_tunnel_closes() {
    let upstream = weir_testkit::upgrade_echo().await;
    let sidecar = in_process(upstream).await;
    let mut client = TcpStream::connect(sidecar.outbound).await.unwrap();
    client
        .write_all(
            b"GET /ws HTTP/1.1\r\nhost: upstream\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            client.read(&mut byte).await.unwrap(),
            1,
            "closed before 101"
        );
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    client.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    client.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");

    // The HTTP connection is over, the tunnel is not: it keeps its place.
    let outbound = [("listener", "outbound")];
    assert_eq!(
        local_metric(&sidecar, "weir_connections", &outbound),
        Some(1.0)
    );
    assert_eq!(closed(&sidecar, "outbound", "closed"), Some(0.0));
    drop(client);
    let released = weir_testkit::eventually(Duration::from_secs(3), || async {
        local_metric(&sidecar, "weir_connections", &outbound) == Some(0.0)
            && closed(&sidecar, "outbound", "closed") == Some(1.0)
    })
    .await;
    assert!(released, "the tunnel's place was not given back");
}
