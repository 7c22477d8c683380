//! A scripted server on loopback, HTTP/1.1 and HTTP/2 (h2c, prior knowledge) on one port: each
//! request is answered with whatever the script builds — any status, headers, body frames and
//! trailers (a gRPC answer is HTTP/2 frames with `grpc-status` in the trailers).

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// The body a [`Scripted`] server answers with.
pub type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// One answer: status, headers, data chunks, and trailers if any.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub chunks: Vec<Bytes>,
    pub trailers: Vec<(&'static str, String)>,
    /// Silence before the trailers are sent (a streaming answer that ends late).
    pub trailers_after: Option<Duration>,
}

impl Answer {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            ..Self::default()
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn chunk(mut self, data: impl Into<Bytes>) -> Self {
        self.chunks.push(data.into());
        self
    }

    pub fn trailer(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.trailers.push((name, value.into()));
        self
    }

    fn into_response(self) -> Response<Body> {
        let mut frames: Vec<(Option<Duration>, Frame<Bytes>)> = self
            .chunks
            .into_iter()
            .map(|c| (None, Frame::data(c)))
            .collect();
        if !self.trailers.is_empty() {
            let mut map = http::HeaderMap::new();
            for (k, v) in self.trailers {
                map.insert(k, v.parse().expect("a trailer value"));
            }
            frames.push((self.trailers_after, Frame::trailers(map)));
        }
        let stream =
            futures::StreamExt::then(futures::stream::iter(frames), |(wait, frame)| async move {
                if let Some(wait) = wait {
                    tokio::time::sleep(wait).await;
                }
                Ok::<_, Infallible>(frame)
            });
        let mut response = Response::new(StreamBody::new(stream).boxed());
        *response.status_mut() = http::StatusCode::from_u16(self.status).expect("a status code");
        for (k, v) in self.headers {
            response
                .headers_mut()
                .append(k, v.parse().expect("a header value"));
        }
        response
    }
}

/// A running scripted server: its address, and the requests it saw (their heads).
#[derive(Clone, Debug)]
pub struct Scripted {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub seen: Arc<parking_lot::Mutex<Vec<http::request::Parts>>>,
}

impl Scripted {
    /// Serves on 127.0.0.1; `script` gets each request's head and its number (from 0).
    pub async fn start(
        script: impl Fn(&http::request::Parts, usize) -> Answer + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let server = Self {
            addr: listener.local_addr().expect("a local address"),
            hits: Arc::default(),
            seen: Arc::default(),
        };
        let script = Arc::new(script);
        let s = server.clone();
        crate::serve(
            listener,
            move |request: http::Request<hyper::body::Incoming>| {
                let s = s.clone();
                let script = script.clone();
                async move {
                    let n = s.hits.fetch_add(1, Ordering::SeqCst);
                    let (parts, body) = request.into_parts();
                    let _ = body.collect().await;
                    let answer = script(&parts, n);
                    s.seen.lock().push(parts);
                    answer.into_response()
                }
            },
        );
        server
    }

    /// Answers `first` in turn to the first requests, then `then` to every later one.
    pub async fn sequence(first: Vec<Answer>, then: Answer) -> Self {
        Self::start(move |_, n| first.get(n).unwrap_or(&then).clone()).await
    }

    /// Requests seen so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}
