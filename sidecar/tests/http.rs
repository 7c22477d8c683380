//! The sidecar as an HTTP proxy, over real loopback sockets: routing, pooling, HTTP/2, header
//! hygiene, streaming, upgrades, bad requests, refusals, admin, config reloads, the drain on
//! SIGTERM and the inbound direction. One test per behaviour.

mod common;

use bytes::Bytes;
use common::{Sidecar, SidecarProcess, config, config_file};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nix::sys::signal::Signal;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use weir_testkit::{Action, Upstream, get, metric_with, raw_exchange, raw_status, send};

async fn ok_upstream() -> Upstream {
    Upstream::start(|_, _| Action::Respond(200, "hello")).await
}

/// One service `upstream` (namespace `default`) with one subset of the given endpoints.
async fn sidecar_for(endpoints: &[SocketAddr], policy: &str) -> Sidecar {
    let app: SocketAddr = "127.0.0.1:9".parse().unwrap();
    Sidecar::start(&config(&[("default", 100, endpoints)], policy), app).await
}

fn served_by(headers: &http::HeaderMap) -> String {
    headers
        .get("x-served-by")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn host_header_and_proxy_form_route_to_the_service() {
    let up = ok_upstream().await;
    let sidecar = sidecar_for(&[up.addr], "{}").await;
    for (i, host) in [
        "upstream",
        "upstream.default",
        "upstream.default.svc.cluster.local:8080",
    ]
    .into_iter()
    .enumerate()
    {
        let (status, headers, body) = get(sidecar.outbound, "/x", host).await;
        assert_eq!(status, 200, "Host: {host}");
        assert_eq!(body, "hello", "Host: {host}");
        assert_eq!(served_by(&headers), up.addr.to_string());
        assert_eq!(up.hits(), i + 1, "Host: {host} reached the upstream");
        // The Host header travels as the app sent it.
        let seen = up.last_headers.lock().clone().unwrap();
        assert_eq!(seen["host"], host);
    }

    // Proxy form, as with HTTP_PROXY=http://127.0.0.1:15001: the URI names the service.
    let before = up.hits();
    let (head, mut stream, mut rest) = raw_exchange(
        sidecar.outbound,
        b"GET http://upstream.default/x HTTP/1.1\r\nHost: upstream.default\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&head), 200, "{head}");
    stream.read_to_end(&mut rest).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&rest), "hello");
    assert_eq!(up.hits(), before + 1);

    // A URI and a Host header that disagree are ambiguous (RFC 9112 §3.2): refused, not routed.
    let (head, _, _) = raw_exchange(
        sidecar.outbound,
        b"GET http://upstream/x HTTP/1.1\r\nHost: nosuch\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&head), 400, "{head}");
    assert!(head.contains("x-weir-reason: bad-request"), "{head}");
    assert_eq!(up.hits(), before + 1);
}

#[tokio::test]
async fn keep_alive_connections_to_the_upstream_are_pooled() {
    let up = ok_upstream().await;
    let sidecar = sidecar_for(&[up.addr], "{}").await;
    let client = weir_testkit::client();
    for _ in 0..50 {
        let request = Request::get(format!("http://{}/pooled", sidecar.outbound))
            .header("host", "upstream")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(up.hits(), 50);
    let connections = up.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        connections <= 2,
        "50 sequential requests opened {connections} upstream connections"
    );
}

#[tokio::test]
async fn http2_prior_knowledge_is_proxied_as_http2() {
    // The upstream answers 200 only to HTTP/2: the request must leave the sidecar as it came.
    let up = Upstream::start(|parts, _| {
        if parts.version == http::Version::HTTP_2 {
            Action::Respond(200, "h2")
        } else {
            Action::Respond(505, "not h2")
        }
    })
    .await;
    let sidecar = sidecar_for(&[up.addr], "{}").await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(weir_testkit::FixedConnector(sidecar.outbound));
    for _ in 0..3 {
        let response = client
            .request(
                Request::get("http://upstream/h2")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.status(), 200);
        assert_eq!(served_by(response.headers()), up.addr.to_string());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"h2");
    }
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_and_end_to_end_headers_kept() {
    let up = ok_upstream().await;
    let sidecar = sidecar_for(&[up.addr], "{}").await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let request = format!(
        "GET /h HTTP/1.1\r\nHost: upstream\r\nConnection: keep-alive, x-secret\r\nx-secret: 1\r\n\
         Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\ntraceparent: {traceparent}\r\n\
         x-custom: a, b\r\nAuthorization: Bearer t0k3n\r\n\r\n"
    );
    let (head, _, _) = raw_exchange(sidecar.outbound, request.as_bytes()).await;
    assert_eq!(raw_status(&head), 200, "{head}");
    let seen = up
        .last_headers
        .lock()
        .clone()
        .expect("the upstream saw the request");
    for gone in ["x-secret", "keep-alive", "proxy-connection"] {
        assert!(
            seen.get(gone).is_none(),
            "{gone} reached the upstream: {seen:?}"
        );
    }
    for value in seen.get_all("connection") {
        assert!(
            !value.to_str().unwrap().contains("x-secret"),
            "the app's Connection header reached the upstream: {seen:?}"
        );
    }
    assert_eq!(seen["traceparent"], traceparent);
    assert_eq!(seen["x-custom"], "a, b");
    assert_eq!(seen["authorization"], "Bearer t0k3n");
    assert_eq!(seen["host"], "upstream");
}

#[tokio::test]
async fn large_request_bodies_stream_through_whole() {
    const MIB: usize = 1024 * 1024;
    let up = Upstream::start(|_, _| Action::Respond(200, "echo")).await;
    // Retries on: the body is bigger than the 64 KiB retry buffer, so it must stream.
    let retrying = sidecar_for(&[up.addr], r#"{"retries": {"attempts": 2}}"#).await;
    let plain = sidecar_for(&[up.addr], "{}").await;
    let body = Bytes::from((0..MIB).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    for (sidecar, headers) in [
        (&plain, &[][..]),
        (&retrying, &[][..]),
        (&retrying, &[("x-weir-retry", "true")][..]),
    ] {
        let (status, _, answer) = send(
            sidecar.outbound,
            "POST",
            "/upload",
            "upstream",
            headers,
            body.clone(),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(answer, MIB.to_string(), "the upstream got the whole body");
        assert_eq!(
            up.last_body_len.load(std::sync::atomic::Ordering::SeqCst),
            MIB
        );
    }
    // An idempotent PUT is buffered for retries up to the limit; past it, it still streams.
    let (status, _, answer) = send(
        retrying.outbound,
        "PUT",
        "/upload",
        "upstream",
        &[],
        body.clone(),
    )
    .await;
    assert_eq!((status, answer), (200, MIB.to_string()));
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn upgrades_pass_through_and_bytes_flow_both_ways() {
    let upstream = weir_testkit::upgrade_echo().await;
    let sidecar = sidecar_for(&[upstream], "{}").await;
    let (head, mut stream, rest) = raw_exchange(
        sidecar.outbound,
        b"GET /ws HTTP/1.1\r\nHost: upstream\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&head), 101, "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(rest.is_empty());
    for message in [&b"hello through the mesh"[..], b"second frame"] {
        stream.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut echoed))
            .await
            .expect("no echo within 2 s")
            .unwrap();
        assert_eq!(echoed, message);
    }
}

#[tokio::test]
async fn malformed_requests_get_400_and_oversized_headers_431() {
    let up = ok_upstream().await;
    let sidecar = sidecar_for(&[up.addr], "{}").await;
    let (head, _, _) = raw_exchange(sidecar.outbound, b"GARBAGE\r\n\r\n").await;
    assert_eq!(raw_status(&head), 400, "{head}");

    let mut request = b"GET /big HTTP/1.1\r\nHost: upstream\r\nx-big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 100 * 1024));
    request.extend_from_slice(b"\r\n\r\n");
    let (head, _, _) = raw_exchange(sidecar.outbound, &request).await;
    assert_eq!(raw_status(&head), 431, "{head}");
    assert_eq!(up.hits(), 0, "nothing malformed reached the upstream");

    // The listener is still fine.
    let (status, _, _) = get(sidecar.outbound, "/", "upstream").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn unknown_services_get_503_and_ip_hosts_400() {
    let up = ok_upstream().await;
    let sidecar = sidecar_for(&[up.addr], "{}").await;
    let (status, headers, body) = get(sidecar.outbound, "/", "nosuch").await;
    assert_eq!(status, 503);
    assert_eq!(headers["x-weir-reason"], "no-healthy-endpoints");
    assert_eq!(headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
    assert_eq!(json["reason"], "no-healthy-endpoints");
    assert!(
        json["message"].as_str().unwrap().contains("nosuch"),
        "{body}"
    );

    let (status, headers, body) = get(sidecar.outbound, "/", &up.addr.to_string()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(headers["x-weir-reason"], "bad-request");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn a_dead_endpoint_gets_502_upstream_connect_failure() {
    let dead: SocketAddr = format!("127.0.0.1:{}", weir_testkit::free_port())
        .parse()
        .unwrap();
    let sidecar = sidecar_for(&[dead], "{}").await;
    let (status, headers, body) = get(sidecar.outbound, "/", "upstream").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(headers["x-weir-reason"], "upstream-connect-failure");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["reason"], "upstream-connect-failure");
}

#[tokio::test]
async fn admin_serves_health_config_and_metrics() {
    let up = ok_upstream().await;
    let sidecar = sidecar_for(&[up.addr], "{}").await;
    assert_eq!(get(sidecar.admin, "/live", "admin").await.0, 200);
    assert_eq!(get(sidecar.admin, "/ready", "admin").await.0, 200);
    let (status, headers, body) = get(sidecar.admin, "/config", "admin").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    let running: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(running["version"], 1);
    assert_eq!(running["services"][0]["name"], "upstream");
    assert_eq!(running["services"][0]["subsets"][0]["weight"], 100);
    assert_eq!(
        running["services"][0]["subsets"][0]["endpoints"][0],
        up.addr.to_string()
    );

    assert_eq!(get(sidecar.outbound, "/", "upstream").await.0, 200);
    let text = sidecar.metrics().await;
    let labels = [
        ("direction", "outbound"),
        ("service", "upstream"),
        ("subset", "default"),
        ("code", "200"),
    ];
    assert_eq!(
        metric_with(&text, "weir_requests_total", &labels),
        Some(1.0),
        "{text}"
    );
    assert_eq!(metric_with(&text, "weir_config_version", &[]), Some(1.0));
    assert!(
        text.contains("weir_request_duration_seconds_bucket{"),
        "{text}"
    );

    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED: the /metrics lint: promtool is not on PATH (.ci/run installs it)");
        }
        Err(e) => panic!("cannot run promtool: {e}"),
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn two_subsets(version: u64, a: (SocketAddr, u32), b: (SocketAddr, u32)) -> String {
    serde_json::json!({
        "version": version,
        "services": [{"name": "upstream", "namespace": "default", "subsets": [
            {"name": "v1", "weight": a.1, "endpoints": [a.0.to_string()]},
            {"name": "v2", "weight": b.1, "endpoints": [b.0.to_string()]},
        ]}],
    })
    .to_string()
}

#[tokio::test]
async fn a_new_config_file_takes_effect_within_a_second() {
    let v1 = ok_upstream().await;
    let v2 = ok_upstream().await;
    let app: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let sidecar = Sidecar::start(&two_subsets(1, (v1.addr, 100), (v2.addr, 0)), app).await;
    for _ in 0..10 {
        let (status, headers, _) = get(sidecar.outbound, "/", "upstream").await;
        assert_eq!(status, 200);
        assert_eq!(served_by(&headers), v1.addr.to_string());
    }

    sidecar.write_config(&two_subsets(2, (v1.addr, 0), (v2.addr, 100)));
    let written = Instant::now();
    let switched = weir_testkit::eventually(Duration::from_secs(2), || async {
        served_by(&get(sidecar.outbound, "/", "upstream").await.1) == v2.addr.to_string()
    })
    .await;
    let took = written.elapsed();
    assert!(switched, "the new weights were not applied");
    assert!(
        took <= Duration::from_secs(1),
        "the new weights took {took:?}"
    );
    let v1_hits = v1.hits();
    for _ in 0..10 {
        let (_, headers, _) = get(sidecar.outbound, "/", "upstream").await;
        assert_eq!(served_by(&headers), v2.addr.to_string());
    }
    assert_eq!(v1.hits(), v1_hits, "weight 0 sends nothing");

    let running: serde_json::Value =
        serde_json::from_str(&get(sidecar.admin, "/config", "admin").await.2).unwrap();
    assert_eq!(running["version"], 2);
    assert_eq!(running["services"][0]["subsets"][1]["weight"], 100);
    assert_eq!(
        metric_with(&sidecar.metrics().await, "weir_config_version", &[]),
        Some(2.0)
    );
}

#[tokio::test]
async fn a_bad_config_file_is_refused_and_the_last_good_one_kept() {
    let up = ok_upstream().await;
    let sidecar = sidecar_for(&[up.addr], "{}").await;
    let good_config = get(sidecar.admin, "/config", "admin").await.2;
    let rejected = [("source", "file")];
    let negative_weight = serde_json::json!({
        "version": 2,
        "services": [{"name": "upstream", "namespace": "default",
            "subsets": [{"name": "default", "weight": -5, "endpoints": ["127.0.0.1:9"]}]}],
    })
    .to_string();
    let unknown_field = serde_json::json!({
        "version": 3,
        "services": [{"name": "upstream", "namespace": "default",
            "subsets": [{"name": "default", "weight": 1, "endpoints": ["127.0.0.1:9"]}],
            "polcy": {}}],
    })
    .to_string();
    for (i, bad) in [negative_weight, unknown_field].into_iter().enumerate() {
        let before = sidecar
            .metric("weir_config_rejected_total", &rejected)
            .await
            .unwrap_or(0.0);
        assert_eq!(before, i as f64);
        sidecar.write_config(&bad);
        let refused = weir_testkit::eventually(Duration::from_secs(2), || async {
            sidecar
                .metric("weir_config_rejected_total", &rejected)
                .await
                == Some(before + 1.0)
        })
        .await;
        assert!(refused, "config {i} was not counted as rejected");
        let (status, headers, _) = get(sidecar.outbound, "/", "upstream").await;
        assert_eq!(status, 200, "the last good config serves");
        assert_eq!(served_by(&headers), up.addr.to_string());
        assert_eq!(get(sidecar.admin, "/config", "admin").await.2, good_config);
        assert_eq!(sidecar.metric("weir_config_version", &[]).await, Some(1.0));
        assert_eq!(get(sidecar.admin, "/ready", "admin").await.0, 200);
    }
}

#[tokio::test]
async fn a_sidecar_started_with_an_invalid_config_is_not_ready() {
    let (_dir, path) = config_file(r#"{"version": 1, "services": [{"name": "x"}]}"#);
    let mut options = common::options("127.0.0.1:9".parse().unwrap());
    options.config = Some(path);
    let sidecar = Sidecar::start_with(options, false).await;
    // Once the file has been read and refused …
    let refused = weir_testkit::eventually(Duration::from_secs(2), || async {
        sidecar
            .metric("weir_config_rejected_total", &[("source", "file")])
            .await
            == Some(1.0)
    })
    .await;
    assert!(refused, "the invalid config was not refused");
    // … the proxy is alive but not ready, and refuses to route.
    assert_eq!(get(sidecar.admin, "/live", "admin").await.0, 200);
    let (status, _, body) = get(sidecar.admin, "/ready", "admin").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(get(sidecar.outbound, "/", "x").await.0, 503);
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let slow = Upstream::start(|_, _| Action::Delay(Duration::from_secs(1), 200)).await;
    let app = ok_upstream().await;
    let config = config(&[("default", 100, &[slow.addr])], "{}");
    let sidecar = SidecarProcess::start(&config, app.addr).await;
    let outbound = sidecar.outbound;

    let in_flight = tokio::spawn(get(outbound, "/slow", "upstream"));
    assert!(
        weir_testkit::eventually(Duration::from_secs(2), || async { slow.hits() == 1 }).await,
        "the slow request did not reach the upstream"
    );
    let signalled = Instant::now();
    sidecar.process.signal(Signal::SIGTERM);

    // New connections are refused soon after the signal …
    let refused = weir_testkit::eventually(Duration::from_millis(800), || async {
        tokio::net::TcpStream::connect(outbound).await.is_err()
    })
    .await;
    assert!(refused, "the outbound listener still accepts after SIGTERM");
    // … while the request in flight completes.
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "slow"));
    assert!(
        signalled.elapsed() >= Duration::from_millis(500),
        "finished too soon to be in flight"
    );

    let status = sidecar.process.wait_exit(Duration::from_secs(4)).await;
    let status = status.expect("the sidecar did not exit within 4 s of the drain");
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn inbound_requests_reach_the_app_and_are_counted() {
    let app = Upstream::start(|_, _| Action::Respond(200, "app")).await;
    let sidecar = Sidecar::start(r#"{"version": 1}"#, app.addr).await;
    for _ in 0..2 {
        let (status, headers, body) = get(sidecar.inbound, "/orders", "checkout").await;
        assert_eq!((status, body.as_str()), (200, "app"));
        assert_eq!(served_by(&headers), app.addr.to_string());
    }
    assert_eq!(app.hits(), 2);
    let seen = app.last_headers.lock().clone().unwrap();
    assert_eq!(seen["host"], "checkout");
    let labels = [
        ("direction", "inbound"),
        ("service", "test"),
        ("subset", ""),
        ("code", "200"),
    ];
    assert_eq!(
        sidecar.metric("weir_requests_total", &labels).await,
        Some(2.0)
    );
    let text = sidecar.metrics().await;
    assert!(
        !text.contains(r#"direction="outbound""#),
        "an inbound request was counted as outbound:\n{text}"
    );
}
