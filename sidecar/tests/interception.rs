//! Transparent interception end to end, in two network namespaces this test creates (and removes,
//! even when it fails), joined by a veth pair:
//!
//! ```text
//!   namespace A (198.18.0.1)                         namespace B (198.18.0.2)
//!   client (this process, uid 0)  ── veth ──►        HTTP :8080 (each path fails once, then 200)
//!   weir-sidecar (uid 1337)                          HTTP :8081 (no service of the mesh)
//!   app: HTTP :8080, echo :9000    ◄── client in B   TCP echo :9000, banner + echo :9001
//! ```
//!
//! The sidecar binary runs in A under its own uid (`setpriv`), and `weir-sidecar init` installs
//! the rules there. A client in A calls B by IP: HTTP goes through the sidecar (a retry turns the
//! first failure into 200; its metrics count it), other TCP is spliced (the sidecar's uid owns the
//! connection to B), a server-speaks-first protocol still works. A client in B calls the app in
//! A: the inbound rate limit applies, the admin port is left alone. `init --remove` restores
//! direct traffic: the same call now sees the first failure.
//!
//! Needs root, `ip` (iproute2), `setpriv` (util-linux) and `iptables` (nft and/or legacy);
//! without them it prints why and passes. Every scenario runs once per working back end.

mod common;

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;
use weir_testkit::{Action, Upstream};

/// The benchmarking range (RFC 2544): never routed, and here only inside our namespaces.
const A_IP: &str = "198.18.0.1";
const B_IP: &str = "198.18.0.2";
/// The proxy's own uid (as in a pod), whose connections the rules leave alone.
const PROXY_UID: u32 = 1337;

#[test]
fn intercepted_tcp_goes_through_the_sidecar() {
    if let Some(why) = missing_prerequisites() {
        eprintln!("SKIPPED: the interception test: {why}");
        return;
    }
    let mut ran = 0;
    for backend in ["nft", "legacy"] {
        let restore = format!("iptables-{backend}-restore");
        if !runs(Command::new(&restore).arg("--version")) {
            eprintln!("SKIPPED: the {backend} back end: {restore} is not installed");
            continue;
        }
        let Some(lab) = Lab::start(backend) else {
            return;
        };
        if !runs(Command::new("ip").args([
            "netns",
            "exec",
            &lab.a.name,
            &format!("iptables-{backend}-save"),
            "-t",
            "nat",
        ])) {
            eprintln!(
                "SKIPPED: the {backend} back end: iptables-{backend} does not work in a network namespace here"
            );
            continue;
        }
        lab.scenario();
        eprintln!("interception verified with the {backend} back end");
        ran += 1;
    }
    if ran == 0 {
        eprintln!("SKIPPED: the interception test: no iptables back end works here");
    }
}

/// Why this machine cannot run the test, if it cannot.
fn missing_prerequisites() -> Option<String> {
    match fs::metadata("/proc/self") {
        Ok(m) if m.uid() == 0 => {}
        Ok(_) => return Some("it needs root (network namespaces, iptables)".into()),
        Err(e) => return Some(format!("cannot tell the uid from /proc/self: {e}")),
    }
    if !runs(Command::new("ip").arg("-V")) {
        return Some("`ip` (iproute2) is not installed".into());
    }
    if !runs(Command::new("setpriv").arg("--version")) {
        return Some("`setpriv` (util-linux) is not installed".into());
    }
    None
}

fn runs(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: String) -> Result<Self, String> {
        let output = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| e.to_string())?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
        }
        Ok(Self { name })
    }

    fn ip(&self, args: &[&str]) {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args));
    }

    /// `ip netns exec NAME program args…`
    fn exec(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Runs `f` on a thread that has entered this namespace: the sockets it makes live here.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
        let path = PathBuf::from("/run/netns").join(&self.name);
        std::thread::spawn(move || {
            let ns = fs::File::open(&path)
                .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("cannot enter {}: {e}", path.display()));
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Servers on a current-thread runtime inside a namespace, stopped on drop.
struct Servers {
    /// B's HTTP server at :8080 (each path fails once) or A's app at :8080.
    http: Upstream,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Servers {
    /// HTTP at `ip:8080` answering as `behaviour` says, a TCP echo at `ip:9000`, and with
    /// `extra`, B's other two: HTTP at `ip:8081` (200 always) and a banner + echo at `ip:9001`.
    fn start(
        ns: &Netns,
        ip: &'static str,
        behaviour: impl Fn(&http::request::Parts, usize) -> Action + Send + Sync + 'static,
        extra: bool,
    ) -> Self {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = ns.spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let at = |port: u16| SocketAddr::new(ip.parse().unwrap(), port);
                let http = Upstream::start_on(at(8080), behaviour).await;
                echo(at(9000), None).await;
                if extra {
                    Upstream::start_on(at(8081), |_, _| Action::Respond(200, "outside")).await;
                    echo(at(9001), Some(b"220 banner\r\n")).await;
                }
                ready_tx.send(http).unwrap();
                let _ = stopped.await;
            });
        });
        let http = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the servers did not start");
        Self {
            http,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A TCP echo server; with a banner, it speaks first.
async fn echo(addr: SocketAddr, banner: Option<&'static [u8]>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Some(banner) = banner
                    && stream.write_all(banner).await.is_err()
                {
                    return;
                }
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
}

/// Two namespaces, their servers, and the sidecar running in A.
struct Lab {
    backend: &'static str,
    dir: PathBuf,
    binary: PathBuf,
    sidecar: Option<Child>,
    app: Option<Servers>,
    b_servers: Option<Servers>,
    // Declared last: dropped after the processes and threads inside them are gone.
    a: Netns,
    b: Netns,
}

static LABS: AtomicUsize = AtomicUsize::new(0);

impl Lab {
    /// Sets everything up; `None` (with the reason printed) when namespaces cannot be made here.
    fn start(backend: &'static str) -> Option<Self> {
        let id = format!(
            "{}-{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::SeqCst)
        );
        let a = match Netns::create(format!("weir-a-{id}")) {
            Ok(ns) => ns,
            Err(why) => {
                eprintln!(
                    "SKIPPED: the interception test: cannot create a network namespace: {why}"
                );
                return None;
            }
        };
        let b = Netns::create(format!("weir-b-{id}")).expect("a second namespace");
        // Created directly inside the namespaces: the names cannot clash with anything.
        run(Command::new("ip").args([
            "link", "add", "weir0", "netns", &a.name, "type", "veth", "peer", "name", "weir1",
            "netns", &b.name,
        ]));
        for (ns, dev, ip) in [(&a, "weir0", A_IP), (&b, "weir1", B_IP)] {
            ns.ip(&["link", "set", "lo", "up"]);
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", dev]);
            ns.ip(&["link", "set", dev, "up"]);
        }

        // The proxy runs as another uid, which must be able to read its binary and config.
        let dir = std::env::temp_dir().join(format!("weir-interception-{id}"));
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let binary = dir.join("weir-sidecar");
        fs::copy(env!("CARGO_BIN_EXE_weir-sidecar"), &binary).unwrap();
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
        let config = dir.join("proxy.json");
        fs::write(&config, CONFIG).unwrap();
        fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).unwrap();

        let mut lab = Self {
            backend,
            dir,
            binary,
            sidecar: None,
            app: None,
            b_servers: None,
            a,
            b,
        };
        let seen = parking_lot::Mutex::new(HashSet::new());
        lab.b_servers = Some(Servers::start(
            &lab.b,
            B_IP,
            move |parts, _| {
                if seen.lock().insert(parts.uri.path().to_owned()) {
                    Action::Respond(503, "first try fails")
                } else {
                    Action::Respond(200, "ok")
                }
            },
            true,
        ));
        lab.app = Some(Servers::start(
            &lab.a,
            "0.0.0.0",
            |_, _| Action::Respond(200, "app"),
            false,
        ));
        let log = fs::File::create(lab.dir.join("sidecar.log")).unwrap();
        let sidecar = lab
            .a
            .exec("setpriv")
            .args([
                &format!("--reuid={PROXY_UID}"),
                &format!("--regid={PROXY_UID}"),
                "--clear-groups",
                "--",
            ])
            .arg(&lab.binary)
            .arg("--config")
            .arg(&config)
            .args([
                "--service",
                "app",
                "--namespace",
                "test",
                "--outbound",
                "127.0.0.1:15001",
                "--inbound",
                "0.0.0.0:15006",
                "--admin",
                "0.0.0.0:15020",
                "--app",
                "127.0.0.1:8080",
            ])
            .env("WEIR_LOG", "info,weir::access=debug,weir_sidecar=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the sidecar binary starts");
        lab.sidecar = Some(sidecar);
        let ready = lab.a.run(|| {
            // Up to 15 s.
            (0..300).any(|_| {
                let ready =
                    get("127.0.0.1:15020", "admin", "/ready").is_ok_and(|r| r.status == 200);
                if !ready {
                    std::thread::sleep(Duration::from_millis(50));
                }
                ready
            })
        });
        assert!(ready, "the sidecar did not become ready");
        Some(lab)
    }

    /// `weir-sidecar init …` in namespace A, as root.
    fn init(&self, args: &[&str]) -> String {
        let output = run(self
            .a
            .exec(self.binary.to_str().unwrap())
            .arg("init")
            .args(args)
            .env("WEIR_LOG", "info"));
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    fn nat_table(&self) -> String {
        let output = run(self
            .a
            .exec(&format!("iptables-{}-save", self.backend))
            .args(["-t", "nat"]));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Requests B's HTTP server has seen (each of this test's calls has a path of its own).
    fn hits(&self) -> usize {
        self.b_servers.as_ref().unwrap().http.hits()
    }

    fn scenario(&self) {
        let backend = self.backend;
        let b_http = format!("{B_IP}:8080");

        // Before the rules: straight to B, which fails each path once.
        let direct = self.a.run({
            let b_http = b_http.clone();
            move || get(&b_http, &b_http, "/before").unwrap()
        });
        assert_eq!(direct.status, 503, "{direct:?}");

        let said = self.init(&[
            "--proxy-uid",
            &PROXY_UID.to_string(),
            "--backend",
            backend,
            // The admin port named again, as the webhook once did: still one rule.
            "--exclude-inbound-ports",
            "15020,22",
        ]);
        assert!(said.contains("installed"), "{said}");
        let table = self.nat_table();
        assert!(
            table.contains("-A OUTPUT -p tcp -j WEIR_OUTPUT")
                && table.contains("--uid-owner 1337 "),
            "{table}"
        );
        let rules: Vec<&str> = table.lines().filter(|l| l.starts_with("-A ")).collect();
        for rule in &rules {
            assert_eq!(
                rules.iter().filter(|r| *r == rule).count(),
                1,
                "[{backend}] {rule} twice:\n{table}"
            );
        }
        if backend == "nft" {
            // Looking at both back ends (auto) leaves no legacy nat table behind.
            let said = self.init(&["--proxy-uid", &PROXY_UID.to_string()]);
            assert!(said.contains("nft back end"), "{said}");
            let legacy = self.a.exec("iptables-legacy-save").output();
            if let Ok(legacy) = legacy {
                let legacy = String::from_utf8_lossy(&legacy.stdout);
                assert!(
                    !legacy.contains("*nat"),
                    "a stray legacy nat table:\n{legacy}"
                );
            }
        }
        // Installing again leaves one set.
        self.init(&["--proxy-uid", &PROXY_UID.to_string(), "--backend", backend]);
        assert_eq!(
            self.nat_table()
                .matches("-A OUTPUT -p tcp -j WEIR_OUTPUT")
                .count(),
            1
        );

        // HTTP by IP: the original destination names the service, and its retry policy turns
        // the first failure into a success.
        let before = self.hits();
        let through = self.a.run({
            let b_http = b_http.clone();
            move || get(&b_http, &b_http, "/through").unwrap()
        });
        assert_eq!(through.status, 200, "[{backend}] {through:?}");
        assert_eq!(through.body, "ok");
        assert_eq!(self.hits() - before, 2, "one try and one retry");
        // By name in Host, to the same address: routed by the name.
        let by_name = self.a.run({
            let b_http = b_http.clone();
            move || get(&b_http, "backend.test", "/by-name").unwrap()
        });
        assert_eq!(by_name.status, 200, "[{backend}] {by_name:?}");
        // An HTTP destination outside the mesh passes through untouched.
        let outside = self
            .a
            .run(|| get(&format!("{B_IP}:8081"), "example.com", "/").unwrap());
        assert_eq!(outside.status, 200, "[{backend}] {outside:?}");
        assert_eq!(outside.body, "outside");
        // A multi-port service behind a virtual IP, as behind a ClusterIP: the port the app
        // dialed picks that port's route (and endpoints), whether the Host names the service
        // without a port or names nothing.
        for (vip, host, served_by) in [
            ("198.18.0.9:80", "198.18.0.9", "198.18.0.2:8081"),
            ("198.18.0.9:81", "198.18.0.9:81", "198.18.0.2:8080"),
            ("198.18.0.9:80", "multi.test", "198.18.0.2:8081"),
            ("198.18.0.9:81", "multi.test", "198.18.0.2:8080"),
            // Dialing a pod with the service's name in Host: the service has no port 8080, so
            // the name alone decides, as without interception (port 80).
            ("198.18.0.2:8080", "multi.test", "198.18.0.2:8081"),
        ] {
            let answer = self.a.run(move || get(vip, host, "/multi").unwrap());
            assert_eq!(
                answer.header("x-served-by").as_deref(),
                Some(served_by),
                "[{backend}] {vip} with Host {host}: {answer:?}"
            );
        }

        let metrics = self
            .a
            .run(|| get("127.0.0.1:15020", "admin", "/metrics").unwrap())
            .body;
        let metric = |name: &str, labels: &[(&str, &str)]| {
            weir_testkit::metric_with(&metrics, name, labels).unwrap_or(0.0)
        };
        assert!(metric("weir_retries_total", &[("service", "backend")]) >= 2.0);
        let outbound = |service: &'static str| {
            metric(
                "weir_requests_total",
                &[
                    ("direction", "outbound"),
                    ("service", service),
                    ("subset", if service == "backend" { "default" } else { "" }),
                    ("code", "200"),
                ],
            )
        };
        assert_eq!(outbound("backend"), 2.0, "{metrics}");
        assert_eq!(outbound("unknown"), 1.0, "{metrics}");

        // Opaque TCP is spliced by the sidecar: while the echo is open, the connection to B
        // belongs to the proxy's uid.
        let (echoed, sockets) = self.a.run(|| {
            let mut stream = connect(&format!("{B_IP}:9000"));
            stream.write_all(b"not http\n").unwrap();
            let echoed = read_exactly(&mut stream, 9);
            let sockets = Command::new("ss").args(["-Htne"]).output();
            (echoed, sockets)
        });
        assert_eq!(echoed, b"not http\n");
        if let Ok(sockets) = sockets {
            let sockets = String::from_utf8_lossy(&sockets.stdout);
            assert!(
                sockets.lines().any(|l| l.contains(&format!("{B_IP}:9000"))
                    && l.contains(&format!("uid:{PROXY_UID}"))),
                "[{backend}] no connection of the proxy's uid to the echo server:\n{sockets}"
            );
        }
        // A server that speaks first: nothing comes from the client, so after the sniffing
        // wait the connection is spliced and the banner arrives.
        let banner = self.a.run(|| {
            let mut stream = connect(&format!("{B_IP}:9001"));
            let banner = read_exactly(&mut stream, 12);
            stream.write_all(b"QUIT\r\n").unwrap();
            (banner, read_exactly(&mut stream, 6))
        });
        assert_eq!(banner.0, b"220 banner\r\n");
        assert_eq!(banner.1, b"QUIT\r\n");

        // Inbound: calls from B to the app in A meet the inbound rate limit (burst 2); the admin
        // port is not redirected; opaque TCP reaches the app's echo.
        let (statuses, reason, live, echoed) = self.b.run(|| {
            let app = format!("{A_IP}:8080");
            let statuses: Vec<u16> = (0..3)
                .map(|_| get(&app, "app", "/in").unwrap().status)
                .collect();
            let reason = get(&app, "app", "/in").unwrap().header("x-weir-reason");
            let live = get(&format!("{A_IP}:15020"), "admin", "/live").unwrap();
            let mut stream = connect(&format!("{A_IP}:9000"));
            stream.write_all(b"inbound echo").unwrap();
            (statuses, reason, live, read_exactly(&mut stream, 12))
        });
        assert_eq!(statuses, [200, 200, 429], "[{backend}]");
        assert_eq!(reason.as_deref(), Some("rate-limited"));
        assert_eq!((live.status, live.body.as_str()), (200, "live\n"));
        assert_eq!(echoed, b"inbound echo");

        // Removal (the back end found by looking) restores direct traffic: the first failure
        // reaches the client.
        let said = self.init(&["--remove", "--backend", "auto"]);
        assert!(said.contains("removed"), "{said}");
        let table = self.nat_table();
        assert!(!table.contains("WEIR_"), "{table}");
        let said = self.init(&["--remove"]);
        assert!(said.contains("nothing to remove"), "{said}");
        let before = self.hits();
        let after = self.a.run({
            let b_http = b_http.clone();
            move || get(&b_http, &b_http, "/after").unwrap()
        });
        assert_eq!(after.status, 503, "[{backend}] {after:?}");
        assert_eq!(self.hits() - before, 1, "no retry");
        let statuses: Vec<u16> = self.b.run(|| {
            (0..3)
                .map(|_| get(&format!("{A_IP}:8080"), "app", "/in").unwrap().status)
                .collect()
        });
        assert_eq!(
            statuses,
            [200, 200, 200],
            "[{backend}] no rate limit any more"
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut sidecar) = self.sidecar.take() {
            let _ = sidecar.kill();
            let _ = sidecar.wait();
        }
        if std::thread::panicking() {
            let log = fs::read_to_string(self.dir.join("sidecar.log")).unwrap_or_default();
            eprintln!("--- sidecar log ({} back end) ---\n{log}", self.backend);
        }
        self.app.take();
        self.b_servers.take();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The sidecar's config: the service at B's :8080 (by address too) with retries, a two-port
/// service `multi` whose virtual IP 198.18.0.9 (no host has it) plays a ClusterIP, and an
/// inbound rate limit of two calls at once (the bucket gets one token back a second, the lowest
/// rate the Bounds allow; the four calls in a row take a few milliseconds).
const CONFIG: &str = r#"{
  "version": 1,
  "inbound": {"rateLimit": {"requestsPerSecond": 1, "burst": 2}},
  "services": [{
    "name": "backend", "namespace": "test",
    "addresses": ["198.18.0.2:8080"],
    "subsets": [{"name": "default", "weight": 1, "endpoints": ["198.18.0.2:8080"]}],
    "policy": {"retries": {"attempts": 2, "retryOn": ["5xx"], "backoff": {"base": "10ms", "max": "50ms"}}}
  }, {
    "name": "multi", "namespace": "test",
    "ports": [
      {"port": 80, "addresses": ["198.18.0.9:80"],
       "subsets": [{"name": "default", "weight": 1, "endpoints": ["198.18.0.2:8081"]}]},
      {"port": 81, "addresses": ["198.18.0.9:81"],
       "subsets": [{"name": "default", "weight": 1, "endpoints": ["198.18.0.2:8080"]}]}
    ]
  }]
}"#;

fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    stream
        .read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
    buf
}

#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// One HTTP/1.1 GET on a connection of its own, from the calling thread's namespace.
fn get(addr: &str, host: &str, path: &str) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text:?}")))?;
    let mut answer = Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    };
    if answer
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        answer.body = dechunk(body);
    }
    Ok(answer)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
