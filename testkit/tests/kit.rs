//! The kit's own tests: each would fail if the helper it covers stopped doing its job (a poll that
//! never polls again, a process group left running, a temp dir left behind...).

use bytes::Bytes;
use nix::sys::signal::Signal;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use weir_testkit::*;

#[tokio::test(start_paused = true)]
async fn eventually_polls_again_until_the_check_holds() {
    let calls = AtomicUsize::new(0);
    let held = eventually(Duration::from_secs(1), || {
        std::future::ready(calls.fetch_add(1, Ordering::SeqCst) == 4)
    })
    .await;
    assert!(held);
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn eventually_gives_up_once_the_limit_has_passed() {
    let calls = AtomicUsize::new(0);
    let start = tokio::time::Instant::now();
    let held = eventually(Duration::from_secs(1), || {
        calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(false)
    })
    .await;
    assert!(!held);
    assert!(start.elapsed() >= Duration::from_secs(1));
    // Every 20 ms over one second, the first check at once and one more at the limit.
    assert_eq!(calls.load(Ordering::SeqCst), 51);
}

#[tokio::test(start_paused = true)]
async fn eventually_some_returns_the_first_value() {
    let mut calls = 0;
    let value = eventually_some("the third call", Duration::from_secs(1), || {
        calls += 1;
        (calls == 3).then_some(calls * 10)
    })
    .await;
    assert_eq!(value, 30);
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "timed out waiting for the answer")]
async fn eventually_some_names_what_it_waited_for() {
    eventually_some::<()>("the answer", Duration::from_millis(100), || None).await;
}

#[tokio::test]
async fn a_free_addr_is_on_loopback_and_can_be_bound() {
    let addr = free_addr();
    assert!(addr.ip().is_loopback());
    tokio::net::TcpListener::bind(addr).await.unwrap();
    assert_ne!(free_port(), 0);
}

#[tokio::test]
async fn wait_for_port_sees_a_listener_that_comes_late_and_not_one_that_never_comes() {
    let addr = free_addr();
    assert!(!wait_for_port(addr, Duration::from_millis(100)).await);
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(listener);
    });
    assert!(wait_for_port(addr, Duration::from_secs(10)).await);
    late.abort();
}

#[test]
fn a_temp_dir_is_named_by_its_prefix_and_removed_on_drop_unless_kept() {
    let dir = temp_dir("weir-kit-test");
    let path = dir.path().to_owned();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("weir-kit-test-"), "{name}");
    std::fs::write(path.join("file"), "x").unwrap();
    drop(dir);
    assert!(!path.exists());

    let kept = temp_dir("weir-kit-test").keep();
    assert!(kept.exists());
    std::fs::remove_dir_all(kept).unwrap();
}

#[test]
fn write_atomically_replaces_the_file_and_leaves_nothing_beside_it() {
    let dir = temp_dir("weir-kit-test");
    let path = dir.path().join("config.json");
    write_atomically(&path, "one");
    write_atomically(&path, "two");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn an_exclusive_lock_waits_for_the_holder_to_let_go() {
    let name = format!("weir-kit-test-{}.lock", std::process::id());
    let held = exclusive_lock(&name);
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let t = taken.clone();
    let waiter = std::thread::spawn(move || {
        let _lock = exclusive_lock(&name);
        t.store(true, Ordering::SeqCst);
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(!taken.load(Ordering::SeqCst), "taken while held");
    drop(held);
    waiter.join().unwrap();
    assert!(taken.load(Ordering::SeqCst));
}

#[test]
fn metric_lookups_find_the_series_asked_for_and_only_it() {
    let text = "# TYPE weir_requests_total counter\n\
                weir_requests_total{service=\"a\",code=\"200\"} 7\n\
                weir_requests_total{service=\"a\",code=\"503\"} 2\n\
                weir_requests_total_extra 9\n\
                weir_up 1\n";
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], Option<f64>);
    let cases: [Case; 6] = [
        (
            "labels in the text's order",
            "weir_requests_total",
            &[("service", "a"), ("code", "200")],
            Some(7.0),
        ),
        (
            "labels in another order",
            "weir_requests_total",
            &[("code", "503"), ("service", "a")],
            Some(2.0),
        ),
        (
            "a subset of the labels",
            "weir_requests_total",
            &[("service", "a")],
            None,
        ),
        ("no labels", "weir_up", &[], Some(1.0)),
        (
            "a longer name is another metric",
            "weir_requests_total",
            &[],
            None,
        ),
        ("an absent metric", "weir_down", &[], None),
    ];
    for (case, name, labels, want) in cases {
        assert_eq!(metric_with(text, name, labels), want, "{case}");
    }
    assert_eq!(
        metric(text, "weir_requests_total{service=\"a\",code=\"503\"}"),
        Some(2.0)
    );
    assert_eq!(metric(text, "weir_requests_total"), None);
    assert_eq!(metric(text, "weir_up"), Some(1.0));
}

#[tokio::test]
async fn an_upstream_answers_as_told_and_counts_requests_and_connections() {
    let upstream = Upstream::start(|parts, n| match (parts.uri.path(), n) {
        ("/echo", _) => Action::Respond(200, "echo"),
        ("/refuse", _) => Action::Respond(503, "refused:overloaded"),
        _ => Action::Respond(201, "hello"),
    })
    .await;
    let (status, headers, body) = get(upstream.addr, "/", "app").await;
    assert_eq!((status, body.as_str()), (201, "hello"));
    assert_eq!(headers["x-served-by"], upstream.addr.to_string().as_str());
    let (status, _, body) = send(
        upstream.addr,
        "POST",
        "/echo",
        "app",
        &[("x-a", "1")],
        Bytes::from_static(b"12345"),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "5"));
    assert_eq!(upstream.last_body_len.load(Ordering::SeqCst), 5);
    assert_eq!(upstream.last_headers.lock().as_ref().unwrap()["x-a"], "1");
    let (status, headers, _) = get(upstream.addr, "/refuse", "app").await;
    assert_eq!(
        (status, &headers["x-weir-reason"]),
        (503, &"overloaded".parse::<http::HeaderValue>().unwrap())
    );
    assert_eq!(upstream.hits(), 3);
    // Each `send` builds its own client: one connection per request.
    assert_eq!(upstream.connections(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_delayed_answer_waits_and_a_hang_never_answers() {
    let upstream = Upstream::start(|parts, _| match parts.uri.path() {
        "/slow" => Action::Delay(Duration::from_secs(5), 202),
        _ => Action::Hang,
    })
    .await;
    let start = tokio::time::Instant::now();
    let (status, _, body) = get(upstream.addr, "/slow", "app").await;
    assert_eq!((status, body.as_str()), (202, "slow"));
    assert!(start.elapsed() >= Duration::from_secs(5));
    let hang =
        tokio::time::timeout(Duration::from_secs(60), get(upstream.addr, "/hang", "app")).await;
    assert!(hang.is_err(), "a hanging upstream answered");
}

#[tokio::test]
async fn raw_exchange_returns_the_head_and_a_fixed_connector_ignores_the_uri() {
    let upstream = Upstream::fixed(200, "ok").await;
    let (head, _stream, _rest) =
        raw_exchange(upstream.addr, b"GET / HTTP/1.1\r\nhost: app\r\n\r\n").await;
    assert_eq!(raw_status(&head), 200, "{head}");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, http_body_util::Full<Bytes>>(FixedConnector(upstream.addr));
    let response = client
        .get("http://service.invalid/".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn a_scripted_server_sends_headers_chunks_and_remembers_requests() {
    let server = Scripted::start(|_, n| {
        Answer::status(200)
            .header("x-n", n.to_string())
            .chunk("one ")
            .chunk("two")
            .trailer("grpc-status", "0")
    })
    .await;
    let (status, headers, body) = get(server.addr, "/a", "app").await;
    assert_eq!((status, body.as_str()), (200, "one two"));
    assert_eq!(headers["x-n"], "0");
    let b = get_ok(server.addr, "/b", Duration::from_secs(5)).await;
    assert_eq!(b.as_deref(), Some("one two"));
    assert_eq!(server.hits(), 2);
    let paths: Vec<String> = server
        .seen
        .lock()
        .iter()
        .map(|p| p.uri.path().to_owned())
        .collect();
    assert_eq!(paths, ["/a", "/b"]);
}

#[tokio::test]
async fn a_fake_admin_serves_the_metrics_the_test_sets_and_counts_scrapes() {
    let admin = FakeAdmin::start("weir_in_flight_requests 1\n").await;
    let read = || async {
        let text = get_ok(admin.addr, "/metrics", Duration::from_secs(5))
            .await
            .unwrap();
        metric_with(&text, "weir_in_flight_requests", &[])
    };
    assert_eq!(read().await, Some(1.0));
    admin.set("weir_in_flight_requests 7\n");
    assert_eq!(read().await, Some(7.0));
    let ready = get_ok(admin.addr, "/ready", Duration::from_secs(5)).await;
    assert_eq!(ready.as_deref(), Some(""));
    assert_eq!(admin.scrapes(), 2);
    let addr = admin.addr;
    drop(admin);
    assert!(
        eventually(Duration::from_secs(5), || async {
            get_ok(addr, "/metrics", Duration::from_secs(1))
                .await
                .is_none()
        })
        .await,
        "a dropped fake admin still serves"
    );
}

fn sh(script: &str) -> Command {
    let mut command = Command::new("sh");
    command.args(["-c", script]);
    command
}

/// Whether `pid` is gone (or a zombie nobody reaped yet: it runs no more either).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

#[tokio::test]
async fn a_process_reports_its_output_and_exit_status() {
    let process = Process::spawn(sh(
        "printf '\\033[32mhello\\033[0m\\n'; echo oops >&2; exit 3",
    ));
    let status = process
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("ended");
    assert_eq!(status.code(), Some(3));
    assert_eq!(process.log(), "hello\noops\n");
}

#[tokio::test]
async fn dropping_a_process_stops_its_whole_group() {
    let process = ready("sleep 300 & echo ready child=$!; wait").await;
    let log = process.log();
    let child: u32 = log
        .trim()
        .strip_prefix("ready child=")
        .unwrap()
        .parse()
        .unwrap();
    let leader = process.pid();
    assert!(!gone(child), "the shell's child is not running");
    drop(process);
    assert!(gone(leader));
    assert!(
        eventually(Duration::from_secs(10), || std::future::ready(gone(child))).await,
        "the shell's child outlived the dropped process"
    );
}

/// `script` spawned, once it printed `ready`.
async fn ready(script: &str) -> Process {
    let process = Process::spawn(sh(script));
    let started = process.wait_for_log("ready", Duration::from_secs(10)).await;
    started.unwrap();
    process
}

#[tokio::test]
async fn stop_ends_a_process_by_sigterm_or_after_the_grace_by_sigkill() {
    let cases = [
        (
            "honours SIGTERM",
            "echo ready; exec sleep 300",
            10_000,
            Signal::SIGTERM,
        ),
        (
            "ignores SIGTERM",
            "trap '' TERM; echo ready; while :; do sleep 1; done",
            300,
            Signal::SIGKILL,
        ),
    ];
    for (case, script, grace_ms, by) in cases {
        let process = ready(script).await;
        let status = process.stop(Duration::from_millis(grace_ms));
        assert_eq!(status.signal(), Some(by as i32), "{case}");
    }
}

#[tokio::test]
async fn waiting_on_a_process_that_ends_first_says_so_with_its_output() {
    let process = Process::spawn(sh("echo 'bind failed'; exit 1"));
    let err = process
        .wait_for_log("listening", Duration::from_secs(600))
        .await
        .unwrap_err();
    assert!(
        err.contains("ended") && err.contains("bind failed"),
        "{err}"
    );
    let err = process
        .wait_for_port(free_addr(), Duration::from_secs(600))
        .await
        .unwrap_err();
    assert!(err.contains("ended"), "{err}");
}

#[tokio::test]
async fn waiting_for_a_port_sees_the_listener_or_times_out_naming_it() {
    let process = Process::spawn(sh("exec sleep 300"));
    let addr = free_addr();
    let err = process
        .wait_for_port(addr, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        err.contains(&addr.to_string()) && err.contains("did not come"),
        "{err}"
    );
    let _listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    process
        .wait_for_port(addr, Duration::from_secs(10))
        .await
        .unwrap();
}

#[test]
fn strip_ansi_removes_colour_codes_only() {
    assert_eq!(
        strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32mINFO\u{1b}[0m ready"),
        "2026 INFO ready"
    );
    assert_eq!(strip_ansi("plain [text]"), "plain [text]");
}

#[tokio::test]
async fn a_flaky_upstream_fails_as_often_as_told_then_answers_ok() {
    let upstream = Upstream::flaky(2, 503, "busy").await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (status, _, body) = get(upstream.addr, "/", "app").await;
        seen.push((status, body));
    }
    let busy = (503, "busy".to_owned());
    assert_eq!(seen, [busy.clone(), busy, (200, "ok".to_owned())]);
}

#[tokio::test]
async fn upgrade_echo_switches_when_asked_and_echoes_bytes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = upgrade_echo().await;
    let plain = get(app, "/ws", "app").await;
    assert_eq!(plain.0, 400, "a request not asking to upgrade");
    let ask = b"GET /ws HTTP/1.1\r\nhost: app\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n";
    let (head, mut stream, _) = raw_exchange(app, ask).await;
    assert_eq!(raw_status(&head), 101, "{head}");
    stream.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");
}

#[tokio::test]
async fn a_scripted_sequence_answers_in_turn_then_the_same_forever() {
    let answer = |status, body: &'static str| Answer::status(status).chunk(body);
    let server =
        Scripted::sequence(vec![answer(429, "a"), answer(503, "b")], answer(200, "c")).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (status, _, body) = get(server.addr, "/", "app").await;
        seen.push(format!("{status} {body}"));
    }
    assert_eq!(seen, ["429 a", "503 b", "200 c", "200 c"]);
}

#[tokio::test]
async fn a_switched_upstream_answers_by_its_flag() {
    let (when_set, otherwise) = (Action::Respond(500, "boom"), Action::Respond(200, "ok"));
    let (upstream, ill) = Upstream::switched(true, when_set, otherwise).await;
    assert_eq!(get(upstream.addr, "/", "app").await.0, 500);
    ill.store(false, Ordering::SeqCst);
    assert_eq!(get(upstream.addr, "/", "app").await.0, 200);
}

#[test]
fn a_local_service_is_the_yaml_a_mesh_folder_holds() {
    let two = weir_testkit::local_service(
        "shop",
        "payments",
        Some(8080),
        [
            "address: 127.0.0.1:9101, labels: {version: v1}",
            "address: 127.0.0.1:9102",
        ],
    );
    assert_eq!(
        two,
        "apiVersion: weir.dev/v1alpha1\nkind: LocalService\nmetadata: {name: payments, namespace: shop}\n\
         spec:\n  port: 8080\n  endpoints:\n    - {address: 127.0.0.1:9101, labels: {version: v1}}\n    \
         - {address: 127.0.0.1:9102}\n"
    );
    let none = weir_testkit::local_service("shop", "gateway", None, [""; 0]);
    assert!(none.ends_with("spec:\n  endpoints: []\n"), "{none}");
}
