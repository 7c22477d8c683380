//! The upstream every target forwards to: HTTP/1.1 with keep-alive, `200` and a 13-byte body on
//! any path. It runs in a process of its own (`weir-bench upstream`) so that it does not share a
//! runtime, or CPU accounting, with the load generator.

use anyhow::Result;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use tokio::net::TcpListener;

pub const BODY: &[u8] = b"Hello, weir!\n";

/// The `upstream` subcommand: binds `listen`, prints `listening ADDR` on stdout (so that port 0
/// works), and serves until stdin reaches end of file, which happens when the bench that
/// started it exits, however it exits.
pub fn run(listen: SocketAddr) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "listening {}", listener.local_addr()?)?;
        stdout.flush()?;
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            std::process::exit(0);
        });
        serve(listener).await
    })
}

/// Answers every request on every connection `listener` accepts.
pub async fn serve(listener: TcpListener) -> Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of file descriptors and the like: keep serving the connections we have.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|_: Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{Target, closed_loop, get_once, open_loop};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn load_generator_against_the_upstream() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener));
        assert_eq!(BODY.len(), 13);
        assert!(
            get_once(addr, "upstream", "/any/path")
                .await
                .unwrap()
                .is_success()
        );

        let target = Target::new(addr, "upstream").unwrap();
        let window = Duration::from_millis(300);
        let closed = closed_loop(
            &target,
            4,
            Duration::from_millis(100),
            window,
            &[std::process::id()],
        )
        .await
        .unwrap();
        assert!(closed.ok > 0);
        assert_eq!((closed.non_2xx, closed.errors), (0, 0));
        assert!(closed.cpu_us_per_request(0).is_some());

        let open = open_loop(&target, 4, 1000.0, Duration::from_millis(100), window, &[])
            .await
            .unwrap();
        assert_eq!((open.non_2xx, open.errors), (0, 0));
        // 300 requests are due in the window; allow for the rounding of the schedule.
        assert!((299..=301).contains(&open.ok), "{}", open.ok);
        assert!(open.quantile_ms(0.99).is_some());
    }
}
