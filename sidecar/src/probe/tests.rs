//! The probe forwarder against real app servers on loopback: HTTP, TCP and gRPC health, an app
//! that is down, one that never answers (paused clock), and tables that do not parse.

use super::*;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::TcpListener;

/// An HTTP/1 and HTTP/2 (h2c) server on 127.0.0.1 answering with `answer`.
async fn serve<F, Fut>(answer: F) -> u16
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = service_fn(move |r| {
                    let answer = answer.clone();
                    async move { Ok::<_, Infallible>(answer(r).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
}

fn probe_request(key: &str) -> Request<()> {
    Request::builder()
        .uri(format!("{PATH_PREFIX}{key}"))
        .header(header::USER_AGENT, "kube-probe/1.36")
        .body(())
        .unwrap()
}

async fn ask(table: &AppProbes, key: &str) -> (StatusCode, String) {
    let response = table.answer(&probe_request(key)).await;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn http_probes_reach_the_app_with_their_path_and_headers() {
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let port = serve({
        let seen = seen.clone();
        move |r: Request<Incoming>| {
            let seen = seen.clone();
            async move {
                let header = |n: &str| {
                    r.headers()
                        .get(n)
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default()
                };
                seen.lock()
                    .push((r.uri().to_string(), header("x-probe"), header("user-agent")));
                let status = if r.uri().path() == "/health" {
                    200
                } else {
                    500
                };
                let mut response = Response::new(Full::new(Bytes::from("x".repeat(5000))));
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                response
            }
        }
    })
    .await;
    let table = AppProbes::parse(&format!(
        r#"{{"app/readiness": {{"http": {{"port": {port}, "path": "/health?full=1",
              "headers": [{{"name": "X-Probe", "value": "yes"}}]}}, "timeoutSeconds": 2}},
            "app/liveness": {{"http": {{"port": {port}, "path": "/broken"}}}}}}"#
    ))
    .unwrap();
    let (status, body) = ask(&table, "app/readiness").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), BODY_LIMIT, "the body is cut to 1 KiB");
    assert_eq!(
        seen.lock()[0],
        (
            "/health?full=1".into(),
            "yes".into(),
            "kube-probe/1.36".into()
        )
    );
    assert_eq!(ask(&table, "app/liveness").await.0, 500);
    let (status, body) = ask(&table, "app/startup").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn tcp_probes_connect_to_the_app_port() {
    let open = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open_port = open.local_addr().unwrap().port();
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let table = AppProbes::parse(&format!(
        r#"{{"app/liveness": {{"tcp": {{"port": {open_port}}}}},
            "app/readiness": {{"tcp": {{"port": {closed_port}}}}}}}"#
    ))
    .unwrap();
    assert_eq!(ask(&table, "app/liveness").await.0, StatusCode::OK);
    let (status, body) = ask(&table, "app/readiness").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("cannot connect"), "{body}");
    // The app's HTTP port being down answers 503 too, not an error of ours.
    let table = AppProbes::parse(&format!(
        r#"{{"app/readiness": {{"http": {{"port": {closed_port}, "path": "/"}}}}}}"#
    ))
    .unwrap();
    assert_eq!(
        ask(&table, "app/readiness").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// A gRPC health server: `SERVING` for "", `NOT_SERVING` for "down", grpc-status 5
/// (NOT_FOUND) for anything else.
async fn grpc_health_server(calls: Arc<AtomicUsize>) -> u16 {
    serve(move |r: Request<Incoming>| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            assert_eq!(r.uri().path(), "/grpc.health.v1.Health/Check");
            assert_eq!(r.version(), http::Version::HTTP_2);
            let body = r.into_body().collect().await.unwrap().to_bytes();
            let service = String::from_utf8_lossy(body.get(7..).unwrap_or_default()).into_owned();
            let (grpc_status, message): (&str, &[u8]) = match service.as_str() {
                "" => ("0", &[0x08, 0x01]),
                "down" => ("0", &[0x08, 0x02]),
                _ => ("5", &[]),
            };
            let mut response = Response::new(Full::new(if message.is_empty() {
                Bytes::new()
            } else {
                grpc_frame(message)
            }));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            // A trailers-only answer: grpc-status in the headers.
            response
                .headers_mut()
                .insert("grpc-status", HeaderValue::from_static(grpc_status));
            response
        }
    })
    .await
}

#[tokio::test]
async fn grpc_probes_ask_the_health_service() {
    let calls = Arc::new(AtomicUsize::new(0));
    let port = grpc_health_server(calls.clone()).await;
    let table = AppProbes::parse(&format!(
        r#"{{"rpc/readiness": {{"grpc": {{"port": {port}}}}},
            "rpc/liveness": {{"grpc": {{"port": {port}, "service": "down"}}}},
            "rpc/startup": {{"grpc": {{"port": {port}, "service": "unknown"}}}}}}"#
    ))
    .unwrap();
    assert_eq!(ask(&table, "rpc/readiness").await.0, StatusCode::OK);
    let (status, body) = ask(&table, "rpc/liveness").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("not SERVING"), "{body}");
    let (status, body) = ask(&table, "rpc/startup").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("grpc-status 5"), "{body}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn an_app_that_never_answers_fails_the_probe_at_its_timeout() {
    // Accepts and reads, never answers.
    let port = serve(|_| std::future::pending()).await;
    let table = AppProbes::parse(&format!(
        r#"{{"app/liveness": {{"http": {{"port": {port}, "path": "/"}}, "timeoutSeconds": 3}}}}"#
    ))
    .unwrap();
    let started = tokio::time::Instant::now();
    let (status, body) = ask(&table, "app/liveness").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(started.elapsed(), Duration::from_secs(3));
}

#[test]
fn tables_are_checked() {
    for (bad, names) in [
        (r#"{"a/liveness": {"tcp": {"port": 0}}}"#, "port 0"),
        (r#"{"a/liveness": {}}"#, "exactly one"),
        (
            r#"{"a/liveness": {"tcp": {"port": 1}, "grpc": {"port": 2}}}"#,
            "exactly one",
        ),
        (
            r#"{"a/liveness": {"http": {"port": 1, "path": "health"}}}"#,
            "start with /",
        ),
        (
            r#"{"a/liveness": {"http": {"port": 1, "path": "/", "headers": [{"name": "bad name", "value": ""}]}}}"#,
            "header name",
        ),
        (r#"{"a/liveness": {"tcp": {"port": 70000}}}"#, "not valid"),
        (
            r#"{"a/liveness": {"tcp": {"port": 1}, "timeout": 3}}"#,
            "unknown field",
        ),
        ("[]", "not valid"),
    ] {
        let error = AppProbes::parse(bad).unwrap_err();
        assert!(error.contains(names), "{bad}: {error}");
        assert!(error.contains(ENV), "{error}");
    }
    assert_eq!(AppProbes::parse("{}").unwrap(), AppProbes::default());
}

#[test]
fn health_messages_on_the_wire() {
    assert_eq!(health_check_request(""), Vec::<u8>::new());
    assert_eq!(health_check_request("ab"), [0x0a, 2, b'a', b'b']);
    let frame = grpc_frame(&[0x08, 0x01]);
    assert_eq!(&frame[..], [0, 0, 0, 0, 2, 0x08, 0x01]);
    assert_eq!(serving_status(frame), Some(1));
    // An empty message is UNKNOWN (0); unknown fields are skipped; garbage is refused.
    assert_eq!(serving_status(grpc_frame(&[])), Some(0));
    assert_eq!(
        serving_status(grpc_frame(&[0x12, 1, b'x', 0x08, 0x02])),
        Some(2)
    );
    assert_eq!(
        serving_status(Bytes::from_static(&[0, 0, 0, 0, 9, 1])),
        None
    );
    assert_eq!(serving_status(Bytes::from_static(&[1, 0, 0, 0, 0])), None);
    assert_eq!(serving_status(grpc_frame(&[0x08])), None);
}
