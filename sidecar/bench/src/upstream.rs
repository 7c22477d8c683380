//! The upstream every target forwards to: HTTP/1.1 with keep-alive, `200` and a 13-byte body on
//! any path. It runs in a process of its own (`weir-bench upstream`) so that it does not share a
//! runtime, or CPU accounting, with the load generator.

use anyhow::Result;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;
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

/// How an upstream answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// 200 and [`BODY`] at once.
    Healthy,
    /// 200 and [`BODY`] after a random pause of up to `max`.
    Slow { max: Duration },
    /// 503 every time: an endpoint that retries, outlier detection and breakers react to.
    Failing,
}

/// Answers every request on every connection `listener` accepts, healthily.
pub async fn serve(listener: TcpListener) -> Result<()> {
    serve_as(listener, Behaviour::Healthy).await
}

/// Answers every request on every connection `listener` accepts as `behaviour` says.
pub async fn serve_as(listener: TcpListener, behaviour: Behaviour) -> Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of file descriptors and the like: keep serving the connections we have.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| async move {
                // Read the body as an app would, so that a body the client breaks off or
                // garbles reaches the upstream as an error too (an empty body costs nothing).
                let _ = request.into_body().collect().await;
                let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
                match behaviour {
                    Behaviour::Healthy => {}
                    Behaviour::Slow { max } => {
                        let millis = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
                        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=millis))).await;
                    }
                    Behaviour::Failing => {
                        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    }
                }
                Ok::<_, Infallible>(response)
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
