//! The client's faults are the client's: a broken or cut-short request body, an ambiguous
//! request head, a client that goes away — answered `bad-request` where someone still listens,
//! never charged to an endpoint or the breaker, never retried; and a request timeout that cuts
//! an attempt charges that attempt. Real sidecar, real upstreams, raw sockets for what a
//! well-behaved client library would refuse to send.

mod common;

use common::{Sidecar, config, status_and_reason};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_testkit::{Action, Upstream, get, metric, raw_exchange, raw_status};

const HOST: &str = "upstream";

/// A breaker that opens on the third failure and outlier detection that ejects on the third:
/// one charge too many shows.
const STRICT: &str = r#"{
    "circuitBreaker": {"failureThreshold": 3, "successThreshold": 1, "openDuration": "60s"},
    "outlierDetection": {"consecutive5xxErrors": 3, "consecutiveGatewayErrors": 3,
                         "baseEjectionTime": "60s", "maxEjectionPercent": 100}
}"#;

async fn breaker_and_ejections(sidecar: &Sidecar) -> (Option<f64>, Option<f64>) {
    let m = sidecar.metrics().await;
    (
        metric(&m, r#"weir_circuit_breaker_state{service="upstream"}"#),
        metric(&m, r#"weir_outlier_ejections_total{service="upstream"}"#),
    )
}

/// Reads whatever answer comes before the connection ends (or 3 s pass).
async fn read_answer(stream: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_the_clients_fault() {
    let up = Upstream::start(|_, _| Action::Respond(200, "ok")).await;
    let sidecar = Sidecar::with_policy(up.addr, STRICT).await;
    for _ in 0..5 {
        let request = "POST /upload HTTP/1.1\r\nHost: upstream\r\nTransfer-Encoding: chunked\r\n\r\n\
                       5\r\nhello\r\nzz-not-hex\r\nmore\r\n0\r\n\r\n";
        let mut stream = tokio::net::TcpStream::connect(sidecar.outbound)
            .await
            .unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_answer(&mut stream).await;
        if !answer.is_empty() {
            assert_eq!(raw_status(&answer), 400, "{answer}");
            assert!(answer.contains("x-weir-reason: bad-request"), "{answer}");
        }
    }
    assert_eq!(
        breaker_and_ejections(&sidecar).await,
        (Some(0.0), None),
        "five broken bodies neither opened the breaker nor ejected the endpoint"
    );
    let (status, _, body) = get(sidecar.outbound, "/", HOST).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_cut_short_by_the_client_charge_nothing() {
    let up = Upstream::start(|_, _| Action::Respond(200, "ok")).await;
    for policy in [
        STRICT.to_owned(),
        // With retries the body is buffered first: the same must hold on that path.
        STRICT.replace(
            r#""circuitBreaker""#,
            r#""retries": {"attempts": 2, "retryOn": ["5xx", "reset"]}, "circuitBreaker""#,
        ),
    ] {
        let sidecar =
            Sidecar::start(&config(&[("default", 1, &[up.addr])], &policy), up.addr).await;
        for _ in 0..5 {
            let mut stream = tokio::net::TcpStream::connect(sidecar.outbound)
                .await
                .unwrap();
            let head = "PUT /upload HTTP/1.1\r\nHost: upstream\r\nContent-Length: 100000\r\n\r\n";
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.write_all(&[b'x'; 2000]).await.unwrap();
            // The client gives up half-way: its side of the connection ends.
            stream.shutdown().await.unwrap();
            let answer = read_answer(&mut stream).await;
            if !answer.is_empty() {
                assert_eq!(raw_status(&answer), 400, "{answer}");
            }
        }
        assert_eq!(
            breaker_and_ejections(&sidecar).await,
            (Some(0.0), None),
            "{policy}"
        );
        let (status, _, _) = get(sidecar.outbound, "/", HOST).await;
        assert_eq!(status, 200, "{policy}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_heads_and_connect_are_refused_before_routing() {
    let up = Upstream::start(|_, _| Action::Respond(200, "ok")).await;
    let sidecar = Sidecar::start(&config(&[("default", 1, &[up.addr])], "{}"), up.addr).await;
    let cases: [(&str, u16); 4] = [
        (
            "GET / HTTP/1.1\r\nHost: upstream\r\nHost: elsewhere\r\n\r\n",
            400,
        ),
        (
            "GET http://upstream/x HTTP/1.1\r\nHost: elsewhere\r\n\r\n",
            400,
        ),
        (
            "CONNECT upstream:80 HTTP/1.1\r\nHost: upstream:80\r\n\r\n",
            405,
        ),
        (
            "GET http://upstream/x HTTP/1.1\r\nHost: UPSTREAM:80\r\n\r\n",
            200,
        ),
    ];
    for (request, expected) in cases {
        let (head, _, _) = raw_exchange(sidecar.outbound, request.as_bytes()).await;
        assert_eq!(raw_status(&head), expected, "{request:?} → {head}");
        if expected != 200 {
            assert!(head.contains("x-weir-reason: bad-request"), "{head}");
        }
    }
    assert_eq!(
        up.hits(),
        1,
        "only the unambiguous request reached the upstream"
    );
    // The absolute form's authority is what the upstream sees as Host.
    let host = up.last_headers.lock().as_ref().unwrap()["host"].clone();
    assert_eq!(host, "upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_timeout_that_cuts_an_attempt_charges_it() {
    let up = Upstream::start(|_, _| Action::Hang).await;
    let policy = STRICT.replace(
        r#""circuitBreaker""#,
        r#""timeouts": {"request": "150ms"}, "circuitBreaker""#,
    );
    let sidecar = Sidecar::start(&config(&[("default", 1, &[up.addr])], &policy), up.addr).await;
    for _ in 0..3 {
        assert_eq!(
            status_and_reason(sidecar.outbound, HOST).await,
            (504, "timeout".into())
        );
    }
    let (status, headers, _) = get(sidecar.outbound, "/", HOST).await;
    assert_eq!(
        (status, headers["x-weir-reason"].to_str().unwrap()),
        (503, "circuit-open"),
        "three timed-out attempts opened the breaker"
    );
    assert_eq!(up.hits(), 3);
    let (breaker, ejections) = breaker_and_ejections(&sidecar).await;
    assert_eq!((breaker, ejections), (Some(1.0), Some(1.0)));
    let m = sidecar.metrics().await;
    assert_eq!(
        weir_testkit::metric_with(
            &m,
            "weir_timeouts_total",
            &[("service", "upstream"), ("kind", "request")]
        ),
        Some(3.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_releases_its_in_flight_count() {
    let up = Upstream::start(|_, _| Action::Hang).await;
    let policy = r#"{"retries": {"attempts": 3, "retryOn": ["5xx"]}}"#;
    let sidecar = Sidecar::with_policy(up.addr, policy).await;
    let in_flight = r#"weir_in_flight_requests{direction="outbound",service="upstream"}"#;
    for _ in 0..10 {
        // Read before sending: a fast proxy may reach the upstream before the next line runs.
        let seen = up.hits();
        let stream = weir_testkit::raw_request(
            sidecar.outbound,
            b"GET / HTTP/1.1\r\nHost: upstream\r\n\r\n",
        )
        .await;
        // Generous: a loaded machine may take seconds, and nothing here depends on speed.
        let reached = weir_testkit::eventually(Duration::from_secs(15), || {
            let up = up.clone();
            async move { up.hits() > seen }
        })
        .await;
        assert!(reached, "the request reached the upstream");
        drop(stream);
    }
    let released = weir_testkit::eventually(Duration::from_secs(5), || {
        let sidecar = &sidecar;
        async move { metric(&sidecar.metrics().await, in_flight) == Some(0.0) }
    })
    .await;
    assert!(
        released,
        "in flight after the clients left: {:?}",
        metric(&sidecar.metrics().await, in_flight)
    );
}

/// A listener whose accept queue is full: further connection attempts hang in SYN-SENT, as to a
/// host that does not answer, without leaving loopback.
async fn unanswering_address() -> (std::net::SocketAddr, Vec<tokio::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(stream)) => held.push(stream),
            _ => {
                // Leaked on purpose: the listener must outlive the test's requests.
                std::mem::forget(listener);
                return (addr, held);
            }
        }
    }
    panic!("the accept queue never filled up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_sharing_an_endpoint_keep_their_own_connect_timeouts() {
    let (addr, _held) = unanswering_address().await;
    let service = |name: &str, connect: &str| {
        serde_json::json!({
            "name": name, "namespace": "default",
            "subsets": [{"name": "default", "weight": 1, "endpoints": [addr.to_string()]}],
            "policy": {"timeouts": {"connect": connect}},
        })
    };
    let config = serde_json::json!({
        "version": 1,
        "services": [service("quick", "100ms"), service("patient", "1500ms")],
    });
    let sidecar = Sidecar::start(&config.to_string(), addr).await;
    for (host, at_least, below) in [
        ("quick", Duration::ZERO, Duration::from_millis(1000)),
        (
            "patient",
            Duration::from_millis(1400),
            Duration::from_secs(5),
        ),
    ] {
        let start = tokio::time::Instant::now();
        let (status, headers, _) = get(sidecar.outbound, "/", host).await;
        let waited = start.elapsed();
        assert_eq!(
            (status, headers["x-weir-reason"].to_str().unwrap()),
            (502, "upstream-connect-failure"),
            "{host}"
        );
        assert!(
            waited >= at_least && waited < below,
            "{host} gave up after {waited:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbound_side_refuses_ambiguous_heads_before_the_app_sees_them() {
    let app = Upstream::start(|_, _| Action::Respond(200, "ok")).await;
    let sidecar = Sidecar::start(&config(&[("default", 1, &[app.addr])], "{}"), app.addr).await;
    for (request, expected) in [
        ("GET / HTTP/1.1\r\nHost: app\r\nHost: admin\r\n\r\n", 400),
        ("CONNECT app:80 HTTP/1.1\r\nHost: app:80\r\n\r\n", 405),
        ("GET http://app/x HTTP/1.1\r\nHost: other\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: app\r\n\r\n", 200),
    ] {
        let (head, _, _) = raw_exchange(sidecar.inbound, request.as_bytes()).await;
        assert_eq!(raw_status(&head), expected, "{request:?} → {head}");
    }
    assert_eq!(
        app.hits(),
        1,
        "only the unambiguous request reached the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_body_sent_to_the_app_is_the_callers_fault_too() {
    let app = Upstream::start(|_, _| Action::Respond(200, "ok")).await;
    let sidecar = Sidecar::start(&config(&[("default", 1, &[app.addr])], "{}"), app.addr).await;
    for request in [
        "POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\nzz-not-hex\r\nmore\r\n0\r\n\r\n",
        "PUT /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 100000\r\n\r\nshort",
    ] {
        let mut stream = tokio::net::TcpStream::connect(sidecar.inbound)
            .await
            .unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        stream.shutdown().await.unwrap();
        let answer = read_answer(&mut stream).await;
        if !answer.is_empty() {
            assert_eq!(raw_status(&answer), 400, "{answer}");
            assert!(answer.contains("x-weir-reason: bad-request"), "{answer}");
        }
    }
    let m = sidecar.metrics().await;
    assert_eq!(
        weir_testkit::metric_with(
            &m,
            "weir_requests_total",
            &[
                ("direction", "inbound"),
                ("service", "test"),
                ("subset", ""),
                ("code", "502")
            ]
        ),
        None,
        "no broken body was answered as the app's failure"
    );
}
