//! gRPC over h2c through a real sidecar: `retryOn` classes read from `grpc-status` in the
//! answer's headers (trailers-only) or in its trailers, with the trailers of every answer passed
//! on intact. The server is a scripted HTTP/2 server answering gRPC framing.

mod common;

use bytes::Bytes;
use common::{Sidecar, config};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use weir_testkit::FixedConnector;
use weir_testkit::{Answer, Scripted};

/// One gRPC message: uncompressed, 3 bytes.
const MESSAGE: &[u8] = b"\0\0\0\0\x03abc";

fn grpc(status: u32) -> Answer {
    Answer::status(200)
        .header("content-type", "application/grpc")
        .chunk(Bytes::from_static(MESSAGE))
        .trailer("grpc-status", status.to_string())
}

fn trailers_only(status: u32) -> Answer {
    Answer::status(200)
        .header("content-type", "application/grpc")
        .header("grpc-status", status.to_string())
}

/// A config with a retry policy on the gRPC classes and the given retry buffer.
fn grpc_config(endpoint: SocketAddr, retry_buffer_bytes: u64) -> String {
    let policy = r#"{"retries": {"attempts": 2,
        "retryOn": ["unavailable", "resource-exhausted", "cancelled", "deadline-exceeded"],
        "backoff": {"base": "1ms", "max": "2ms"}}}"#;
    let mut cfg: serde_json::Value =
        serde_json::from_str(&config(&[("default", 1, &[endpoint])], policy)).unwrap();
    cfg["limits"] = serde_json::json!({"retryBufferBytes": retry_buffer_bytes});
    cfg.to_string()
}

/// A unary call over h2c (prior knowledge) through the outbound listener, opted in to retries
/// as a POST must be. Returns the status, the `grpc-status` trailer, and the body.
async fn call(outbound: SocketAddr) -> (u16, Option<String>, Bytes) {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build::<_, Full<Bytes>>(FixedConnector(outbound));
    let request = http::Request::post("http://upstream/shop.Payments/Pay")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-weir-retry", "true")
        .body(Full::new(Bytes::from_static(MESSAGE)))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let status = response.status().as_u16();
    let collected = response.into_body().collect().await.unwrap();
    let grpc_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_owned());
    (status, grpc_status, collected.to_bytes())
}

/// A sidecar in front of `server` (retry buffer 64 KiB), after one call through it that ended
/// with HTTP 200, `grpc-status: expected` and the whole message.
async fn called(server: &Scripted, expected: &str) -> Sidecar {
    let sidecar = Sidecar::start(&grpc_config(server.addr, 64 * 1024), server.addr).await;
    let (status, grpc_status, body) = call(sidecar.outbound).await;
    assert_eq!((status, grpc_status.as_deref()), (200, Some(expected)));
    assert_eq!(&body[..], MESSAGE);
    sidecar
}

#[tokio::test(start_paused = true)]
async fn a_trailers_only_unavailable_is_retried() {
    let server = Scripted::sequence(vec![trailers_only(14)], grpc(0)).await;
    let _sidecar = called(&server, "0").await;
    assert_eq!(server.hits(), 2);
    assert!(
        server.seen.lock()[0].version == http::Version::HTTP_2,
        "the sidecar spoke h2c to the server"
    );
}

#[tokio::test(start_paused = true)]
async fn a_status_in_the_trailers_of_a_small_answer_is_retried() {
    let server = Scripted::sequence(vec![grpc(8), grpc(1)], grpc(0)).await;
    let sidecar = called(&server, "0").await;
    assert_eq!(server.hits(), 3);
    let value = sidecar.upstream_metric("weir_retries_total").await;
    assert_eq!(value, Some(2.0));
}

#[tokio::test(start_paused = true)]
async fn other_statuses_and_answers_past_the_buffer_pass_on_untouched() {
    // UNKNOWN (2) is in no retryOn class.
    let server = Scripted::start(|_, _| grpc(2)).await;
    let _sidecar = called(&server, "2").await;
    assert_eq!(server.hits(), 1);

    // UNAVAILABLE in the trailers of an answer larger than the retry buffer: its body is not
    // held back to read them, so it is passed on, whole, and not retried.
    let server = Scripted::start(|_, _| {
        let mut answer = grpc(14);
        answer.chunks.insert(0, Bytes::from(vec![7u8; 100]));
        answer
    })
    .await;
    let sidecar = Sidecar::start(&grpc_config(server.addr, 16), server.addr).await;
    let (status, grpc_status, body) = call(sidecar.outbound).await;
    assert_eq!((status, grpc_status.as_deref()), (200, Some("14")));
    assert_eq!(body.len(), 100 + MESSAGE.len());
    assert_eq!(server.hits(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_last_failed_answer_keeps_its_trailers() {
    let server = Scripted::start(|_, _| grpc(14)).await;
    let _sidecar = called(&server, "14").await;
    assert_eq!(server.hits(), 3, "one try and two retries");
}

// Real time: under tokio's paused clock the h2 exchange lets the clock jump by idle timers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_whose_trailers_come_late_streams_on_and_is_not_retried() {
    // A server-streaming call, say: the trailers come 3 s after the first message, while the
    // sidecar waits at most 1 s (no per-try timeout set) before passing the answer on.
    let server = Scripted::start(|_, _| {
        let mut answer = grpc(14);
        answer.trailers_after = Some(std::time::Duration::from_secs(3));
        answer
    })
    .await;
    let sidecar = Sidecar::start(&grpc_config(server.addr, 64 * 1024), server.addr).await;
    let start = tokio::time::Instant::now();
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build::<_, Full<Bytes>>(FixedConnector(sidecar.outbound));
    let request = http::Request::post("http://upstream/shop.Payments/Watch")
        .header("content-type", "application/grpc")
        .header("x-weir-retry", "true")
        .body(Full::new(Bytes::from_static(MESSAGE)))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let headers_after = start.elapsed();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let first_after = start.elapsed();
    assert_eq!(&first[..], MESSAGE);
    let trailers = body
        .frame()
        .await
        .unwrap()
        .unwrap()
        .into_trailers()
        .unwrap();
    let trailers_after = start.elapsed();
    assert_eq!(trailers["grpc-status"], "14");
    assert_eq!(server.hits(), 1, "not retried");
    assert!(headers_after >= std::time::Duration::from_secs(1));
    assert!(trailers_after >= std::time::Duration::from_secs(3));
    assert!(
        first_after < trailers_after,
        "the message came before the trailers: {first_after:?}, {trailers_after:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn dry_run_grpc_retries_count_and_hold_nothing_back() {
    let server = Scripted::sequence(vec![trailers_only(14)], grpc(14)).await;
    let mut cfg: serde_json::Value =
        serde_json::from_str(&grpc_config(server.addr, 64 * 1024)).unwrap();
    cfg["services"][0]["policy"]["retries"]["dryRun"] = serde_json::json!(true);
    let sidecar = Sidecar::start(&cfg.to_string(), server.addr).await;
    // Trailers-only: judged from the headers, counted, answered as is.
    let (status, _, _) = call(sidecar.outbound).await;
    assert_eq!(status, 200);
    // In the trailers: not read in dry run.
    let (status, grpc_status, _) = call(sidecar.outbound).await;
    assert_eq!((status, grpc_status.as_deref()), (200, Some("14")));
    assert_eq!(server.hits(), 2);
    let labels = [("service", "upstream"), ("reason", "retry")];
    assert_eq!(
        sidecar.metric("weir_dry_run_total", &labels).await,
        Some(1.0)
    );
}
