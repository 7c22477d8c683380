//! Multi-port services end to end in local mode: the real `weir-operator local` binary, a real
//! sidecar polling it, a real upstream per port and version. A LocalService with `ports` is
//! routed per port; a TrafficSplit with `port` moves only that port's traffic; one naming a port
//! the service does not have is refused by `spec.port` and routes nothing.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

mod local_operator;
use local_operator::{LocalOperator, checkout_sidecar, payments_split, temp_dir};
use weir_testkit::{Upstream, write_atomically};

/// An upstream that answers with its name.
async fn upstream(name: &'static str) -> SocketAddr {
    Upstream::fixed(200, name).await.addr
}

/// `GET /` through the sidecar with this Host, or with `proxy_form` as an HTTP proxy gets it
/// (`GET http://HOST/`, as with `HTTP_PROXY`).
async fn call(outbound: SocketAddr, host: &str, proxy_form: bool) -> (u16, String) {
    if proxy_form {
        return proxied(outbound, host).await;
    }
    local_operator::call(outbound, host).await
}

/// One proxy-form request on a connection of its own, read to the end.
async fn proxied(outbound: SocketAddr, host: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(outbound).await.unwrap();
    let request =
        format!("GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

/// The bodies of `n` calls to `host`.
async fn answers(outbound: SocketAddr, host: &str, n: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    for _ in 0..n {
        let (status, body) = call(outbound, host, false).await;
        assert_eq!(status, 200, "Host: {host}: {body}");
        bodies.push(body);
    }
    bodies
}

/// Whether 20 calls to `host` are all answered by the upstream named `body`.
async fn only_by(outbound: SocketAddr, host: &str, body: &str) -> bool {
    answers(outbound, host, 20).await.iter().all(|b| b == body)
}

/// Calls `host` until `check` holds for 20 answers in a row; panics saying `what` did not
/// happen if not within `limit`.
async fn until(
    outbound: SocketAddr,
    host: &str,
    (limit, what): (Duration, &str),
    check: impl Fn(&[String]) -> bool,
) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check(&answers(outbound, host, 20).await) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} (Host: {host}, within {limit:?})");
}

fn service(http_v1: SocketAddr, admin_v1: SocketAddr, admin_v2: SocketAddr) -> String {
    format!(
        "apiVersion: weir.dev/v1alpha1\nkind: LocalService\nmetadata: {{name: payments, namespace: shop}}\n\
         spec:\n  ports:\n\
         \x20   - name: http\n      port: 80\n      endpoints:\n        - {{address: \"{http_v1}\", labels: {{version: v1}}}}\n\
         \x20   - name: admin\n      port: 81\n      endpoints:\n        - {{address: \"{admin_v1}\", labels: {{version: v1}}}}\n        - {{address: \"{admin_v2}\", labels: {{version: v2}}}}\n"
    )
}

fn split(port: u16, v1: u32, v2: u32) -> String {
    payments_split("admin-canary", v1, v2, &format!("  port: {port}\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_port_reaches_its_upstream_and_a_split_with_a_port_moves_only_that_port() {
    let http_v1 = upstream("http-v1").await;
    let admin_v1 = upstream("admin-v1").await;
    let admin_v2 = upstream("admin-v2").await;
    let dir = temp_dir("weir-local-ports");
    write_atomically(
        &dir.join("services.yaml"),
        &service(http_v1, admin_v1, admin_v2),
    );
    let operator = LocalOperator::start(&dir);
    let proxy = checkout_sidecar(operator.listen, "checkout-ports").await;
    let outbound = proxy.outbound;

    // Without a split each port spreads over its own endpoints, never another port's.
    for host in ["payments:80", "payments", "payments.shop:80"] {
        assert!(
            answers(outbound, host, 20)
                .await
                .iter()
                .all(|b| b == "http-v1"),
            "Host: {host}"
        );
    }
    until(
        outbound,
        "payments:81",
        (
            Duration::from_secs(5),
            "port 81 is served by both of its endpoints",
        ),
        |bodies| bodies.iter().any(|b| b == "admin-v1") && bodies.iter().any(|b| b == "admin-v2"),
    )
    .await;
    assert!(
        answers(outbound, "payments:81", 20)
            .await
            .iter()
            .all(|b| b.starts_with("admin-")),
        "port 81 never reaches port 80's endpoint"
    );
    assert_eq!(
        call(outbound, "payments:81", true).await.0,
        200,
        "proxy form with a port"
    );
    let (status, body) = call(outbound, "payments:8080", false).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("has no port 8080"), "{body}");

    // A split on port 81: all of port 81 to v2 within a second or so; port 80 untouched.
    let split_file = dir.join("split.yaml");
    write_atomically(&split_file, &split(81, 0, 100));
    until(
        outbound,
        "payments:81",
        (Duration::from_secs(3), "the split did not move port 81"),
        |bodies| bodies.iter().all(|b| b == "admin-v2"),
    )
    .await;
    assert!(
        only_by(outbound, "payments", "http-v1").await,
        "Host: payments"
    );
    let (status, body) = call(outbound, "payments:81", true).await;
    assert_eq!((status, body.as_str()), (200, "admin-v2"), "proxy form");

    // The same split naming port 82, which payments does not have: refused by `spec.port`, and
    // port 81 is back on its plain endpoints.
    write_atomically(&split_file, &split(82, 0, 100));
    until(
        outbound,
        "payments:81",
        (
            Duration::from_secs(3),
            "a split naming no port of the service still routes port 81",
        ),
        |bodies| bodies.iter().any(|b| b == "admin-v1"),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while !(operator.log().contains("PortNotFound") && operator.log().contains("spec.port")) {
        assert!(Instant::now() < deadline, "{}", operator.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        only_by(outbound, "payments:80", "http-v1").await,
        "Host: payments:80"
    );
}
