//! A stand-in for a sidecar's admin listener, for the operator's tests of what scrapes it
//! (autoscaler, canary, dashboard): `/metrics` answers the text the test set last, `/ready`
//! answers 200, anything else an empty 200. Counting scrapes lets a test see that polling goes on.

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running fake admin listener; stops serving when dropped.
#[derive(Debug)]
pub struct FakeAdmin {
    pub addr: SocketAddr,
    text: Arc<parking_lot::Mutex<String>>,
    scrapes: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FakeAdmin {
    /// On a free loopback port, serving `metrics` at `/metrics`.
    pub async fn start(metrics: impl Into<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        Self::start_on(listener, metrics)
    }

    /// On `listener` (a port chosen in advance, e.g. one a config names).
    pub fn start_on(listener: TcpListener, metrics: impl Into<String>) -> Self {
        let addr = listener.local_addr().expect("a local address");
        let text = Arc::new(parking_lot::Mutex::new(metrics.into()));
        let scrapes = Arc::new(AtomicUsize::new(0));
        let (t, s) = (text.clone(), scrapes.clone());
        let task = crate::serve(listener, move |request| {
            let body = if request.uri().path() == "/metrics" {
                s.fetch_add(1, Ordering::SeqCst);
                t.lock().clone()
            } else {
                String::new()
            };
            async move { Response::new(Full::new(Bytes::from(body))) }
        });
        Self {
            addr,
            text,
            scrapes,
            task,
        }
    }

    /// Serves `metrics` from now on.
    pub fn set(&self, metrics: impl Into<String>) {
        *self.text.lock() = metrics.into();
    }

    /// How many times `/metrics` was read.
    pub fn scrapes(&self) -> usize {
        self.scrapes.load(Ordering::SeqCst)
    }
}

impl Drop for FakeAdmin {
    fn drop(&mut self) {
        self.task.abort();
    }
}
