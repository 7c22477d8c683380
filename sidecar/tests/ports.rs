//! Multi-port services in file mode, over real loopback sockets: each port of a service is
//! routed to its own endpoints by the port the call names (Host, absolute URI), a call without a
//! port goes to port 80 or the only port, and what cannot be routed is refused clearly.

mod common;

use common::Sidecar;
use std::net::SocketAddr;
use std::time::Duration;
use weir_testkit::{Action, Upstream, get, raw_exchange};

/// Upstreams answering their own name.
async fn named_all<const N: usize>(names: [&'static str; N]) -> [Upstream; N] {
    let mut upstreams = Vec::new();
    for name in names {
        upstreams.push(named(name).await);
    }
    upstreams.try_into().unwrap()
}

/// An upstream that answers with its name.
async fn named(name: &'static str) -> Upstream {
    Upstream::start(move |_, _| Action::Respond(200, name)).await
}

/// `payments` (namespace `default`) on ports 80 and 81, each with one endpoint; `admin` on ports
/// 8081 and 8082 only; `single` on port 9000 only.
fn config(p80: SocketAddr, p81: SocketAddr, others: SocketAddr, p81_weights: (u32, u32)) -> String {
    let port = |port: u16, subsets: serde_json::Value| serde_json::json!({"port": port, "subsets": subsets});
    let one = |endpoint: SocketAddr| serde_json::json!([{"name": "default", "weight": 1, "endpoints": [endpoint.to_string()]}]);
    serde_json::json!({
        "version": 1,
        "services": [
            {"name": "payments", "namespace": "default", "ports": [
                port(80, one(p80)),
                port(81, serde_json::json!([
                    {"name": "v1", "weight": p81_weights.0, "endpoints": [p81.to_string()]},
                    {"name": "v2", "weight": p81_weights.1, "endpoints": [others.to_string()]},
                ])),
            ]},
            {"name": "admin", "namespace": "default",
             "ports": [port(8081, one(others)), port(8082, one(others))]},
            {"name": "single", "namespace": "default", "ports": [port(9000, one(others))]},
        ],
    })
    .to_string()
}

#[tokio::test]
async fn each_port_reaches_its_own_upstream() {
    let [p80, p81, other] = named_all(["port-80", "port-81", "other"]).await;
    let app: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let sidecar = Sidecar::start(&config(p80.addr, p81.addr, other.addr, (1, 0)), app).await;
    for (host, want) in [
        ("payments:80", "port-80"),
        ("payments:81", "port-81"),
        ("payments.default.svc.cluster.local:81", "port-81"),
        // No port: HTTP's default, 80.
        ("payments", "port-80"),
        // A service with one port: that port.
        ("single", "other"),
    ] {
        for _ in 0..5 {
            let (status, _, body) = get(sidecar.outbound, "/", host).await;
            assert_eq!((status, body.as_str()), (200, want), "Host: {host}");
        }
    }
    assert_eq!((p80.hits(), p81.hits()), (10, 10));

    // Proxy form: the URI's port decides, whatever the Host says.
    let (head, _, _) = raw_exchange(
        sidecar.outbound,
        b"GET http://payments:81/x HTTP/1.1\r\nhost: payments:81\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(p81.hits(), 11);
}

#[tokio::test]
async fn calls_that_name_no_port_of_the_service_are_refused_clearly() {
    let up = named("up").await;
    let app: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let sidecar = Sidecar::start(&config(up.addr, up.addr, up.addr, (1, 0)), app).await;
    // A port the service does not have: nothing to send it to.
    let (status, headers, body) = get(sidecar.outbound, "/", "payments:8080").await;
    assert_eq!(status, 503);
    assert_eq!(headers["x-weir-reason"], "no-healthy-endpoints");
    assert!(
        body.contains("has no port 8080 (its ports: 80, 81)"),
        "{body}"
    );
    // Several ports, none of them 80: the caller must say which.
    let (status, headers, body) = get(sidecar.outbound, "/", "admin").await;
    assert_eq!(status, 400);
    assert_eq!(headers["x-weir-reason"], "bad-request");
    assert!(
        body.contains("8081, 8082") && body.contains("NAME:PORT"),
        "{body}"
    );
    // Not a port at all.
    let (status, headers, _) = get(sidecar.outbound, "/", "payments:70000").await;
    assert_eq!(
        (status, &headers["x-weir-reason"]),
        (400, &"bad-request".parse().unwrap())
    );
    assert_eq!(up.hits(), 0, "nothing refused reached an endpoint");
    // The service itself is still served on its ports.
    assert_eq!(get(sidecar.outbound, "/", "admin:8082").await.0, 200);
}

#[tokio::test]
async fn a_weight_edit_on_one_port_moves_only_that_ports_traffic() {
    let [p80, p81, v2] = named_all(["port-80", "port-81-v1", "port-81-v2"]).await;
    let app: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let sidecar = Sidecar::start(&config(p80.addr, p81.addr, v2.addr, (1, 0)), app).await;
    assert_eq!(
        get(sidecar.outbound, "/", "payments:81").await.2,
        "port-81-v1"
    );
    let mut edited = config(p80.addr, p81.addr, v2.addr, (0, 1));
    edited = edited.replace(r#""version":1"#, r#""version":2"#);
    sidecar.write_config(&edited);
    let moved = weir_testkit::eventually(Duration::from_secs(2), || async {
        sidecar.store().table().config.version == 2
    })
    .await;
    assert!(moved, "the edited config was not applied");
    for _ in 0..10 {
        assert_eq!(
            get(sidecar.outbound, "/", "payments:81").await.2,
            "port-81-v2"
        );
        assert_eq!(get(sidecar.outbound, "/", "payments:80").await.2, "port-80");
    }
}
