//! Raw bytes into the sidecar's outbound or inbound listener (the first byte chooses), with every
//! policy on and a real application behind it. A finding is a panic anywhere in the sidecar
//! (libFuzzer's panic hook aborts the process, also inside spawned tasks) or a connection that
//! neither answers nor closes within 5 s of the client ending its side.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

struct Harness {
    runtime: Runtime,
    outbound: SocketAddr,
    inbound: SocketAddr,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (outbound, inbound) = runtime.block_on(async {
            // The kit's app: answers every request with 200 `ok` once its body is read.
            let app = weir_testkit::Upstream::fixed(200, "ok").await.addr;
            let dir = std::env::temp_dir().join(format!("weir-fuzz-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let config_path = dir.join("proxy.json");
            let config = serde_json::json!({
                "version": 1,
                "inbound": {
                    "rateLimit": {"requestsPerSecond": 1000000, "burst": 1000000},
                    "bulkhead": {"maxConcurrent": 1000, "maxQueued": 1000, "queueTimeout": "1s"},
                    "timeouts": {"request": "2s", "idle": "2s"}
                },
                "services": [{
                    "name": "upstream", "namespace": "default",
                    "subsets": [{"name": "default", "weight": 1, "endpoints": [app.to_string()]}],
                    "policy": {
                        "timeouts": {"request": "2s", "perTry": "1s", "idle": "2s"},
                        "retries": {"attempts": 2, "retryOn": ["5xx", "reset"]},
                        "circuitBreaker": {"failureThreshold": 1000000, "successThreshold": 1, "openDuration": "1s"},
                        "outlierDetection": {"consecutive5xxErrors": 1000000},
                        "loadBalancer": {"policy": "ewma"}
                    }
                }]
            });
            std::fs::write(&config_path, config.to_string()).unwrap();
            let args = [
                "weir-sidecar",
                "--config",
                config_path.to_str().unwrap(),
                "--outbound",
                "127.0.0.1:0",
                "--inbound",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--app",
                &app.to_string(),
            ];
            let options = <weir_sidecar::Cli as clap::Parser>::parse_from(args).proxy;
            let running = weir_sidecar::start(options).await.unwrap();
            while !running.store.is_ready() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let addrs = (running.outbound, running.inbound);
            // Runs for the whole fuzzing session.
            std::mem::forget(running);
            addrs
        });
        Harness {
            runtime,
            outbound,
            inbound,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, bytes)) = data.split_first() else {
        return;
    };
    let h = harness();
    let target = if choice % 2 == 0 {
        h.outbound
    } else {
        h.inbound
    };
    h.runtime.block_on(async {
        let mut stream = tokio::net::TcpStream::connect(target).await.unwrap();
        let _ = stream.write_all(bytes).await;
        let _ = stream.shutdown().await;
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "no answer and no close within 5 s");
    });
});
