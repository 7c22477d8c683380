//! The plain keep-alive exchange: an HTTP/1.1 request without a body, on a pooled connection of
//! our own, in the request's own task. Its answer's body is read from the connection as the
//! caller polls it, and the connection goes back to the pool at the body's last byte.
//!
//! Nothing runs beside an idle connection (hyper keeps a task per connection): whether the
//! endpoint closed it, or wrote to it unasked, is seen when it is handed out ([`Connection::usable`]
//! reads the readiness the runtime already has, and makes a syscall only when that says
//! something arrived) and by the pool's sweep.

use super::codec::{self, AnswerError, AnswerHead, BodyDecoder, Decoded};
use crate::body::{BoxError, ProxyBody};
use bytes::{Bytes, BytesMut};
use http::{Method, Request};
use http_body::{Frame, SizeHint};
use std::future::Future;
use std::io;
use std::pin::pin;
use std::task::{Context, Poll, Waker, ready};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Room made in the read buffer when less than [`MIN_READ_ROOM`] is left: at first
/// [`READ_SIZE`], doubled after each read that filled all the room there was, up to
/// [`MAX_READ_SIZE`] (a large body is then read in large pieces, as hyper's adaptive reads do).
const READ_SIZE: usize = 8192;
const MAX_READ_SIZE: usize = 256 * 1024;
const MIN_READ_ROOM: usize = 1024;

/// A connection to an endpoint, with what was read from it and not yet used.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    read: BytesMut,
    /// The request head being written (kept for its capacity).
    write: Vec<u8>,
    /// The room the next read gets when the buffer is (nearly) full.
    read_size: usize,
}

impl Connection {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            read: BytesMut::new(),
            write: Vec::new(),
            read_size: READ_SIZE,
        }
    }

    /// Whether an idle connection can carry a request: the endpoint has neither closed it nor
    /// written to it unasked.
    pub fn usable(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // The readiness may be left from the last answer's read; only a read tells.
            Poll::Ready(Ok(())) => matches!(
                self.stream.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }

    /// Whether nothing read is left over (an answer followed by more bytes leaves its
    /// connection unusable).
    pub fn drained(&self) -> bool {
        self.read.is_empty()
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < MIN_READ_ROOM {
            self.read.reserve(self.read_size);
        }
        let room = self.read.capacity() - self.read.len();
        let read = ready!(pin!(self.stream.read_buf(&mut self.read)).poll(cx))?;
        if read == room {
            self.read_size = (self.read_size * 2).min(MAX_READ_SIZE);
        }
        Poll::Ready(Ok(read))
    }

    /// Ready to wait in the pool: a read buffer grown for a large body is let go (an idle
    /// connection keeps at most what a small answer needs).
    fn idle(mut self) -> Self {
        if self.read.capacity() > 2 * READ_SIZE {
            self.read = BytesMut::new();
            self.read_size = READ_SIZE;
        }
        self
    }

    /// The read buffer's capacity (for the tests of what an idle connection keeps).
    #[cfg(test)]
    pub fn read_capacity(&self) -> usize {
        self.read.capacity()
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Sends `request` (body-less: see [`codec::plain_request`]) and reads its answer's head.
    pub async fn exchange(&mut self, request: Request<ProxyBody>) -> Result<AnswerHead, BoxError> {
        let head_request = request.method() == Method::HEAD;
        self.write.clear();
        codec::encode_request(&request, &mut self.write);
        drop(request);
        self.stream.write_all(&self.write).await?;
        loop {
            if self.fill().await? == 0 {
                return Err(AnswerError::ClosedEarly.into());
            }
            if let Some(head) = codec::parse_answer(&mut self.read, head_request)? {
                return Ok(head);
            }
        }
    }
}

/// Where a connection goes once its answer has been read to the end.
pub trait Return {
    fn give_back(self, connection: Connection);
}

/// An answer's body read from its connection as it is polled (the frames of
/// [`super::UpstreamBody`]'s plain variant).
#[derive(Debug)]
pub struct PlainBody<R: Return> {
    /// `None` once the body has ended (the connection given back or closed) or failed.
    connection: Option<Connection>,
    decoder: BodyDecoder,
    keep_alive: bool,
    back: Option<R>,
}

impl<R: Return> PlainBody<R> {
    pub fn new(connection: Connection, head: &AnswerHead, back: R) -> Self {
        Self {
            connection: Some(connection),
            decoder: BodyDecoder::new(head.framing),
            keep_alive: head.keep_alive,
            back: Some(back),
        }
    }

    /// The body has ended: its connection goes back when it may carry another request.
    fn finish(&mut self) {
        if let (Some(connection), Some(back)) = (self.connection.take(), self.back.take())
            && self.keep_alive
            && connection.drained()
        {
            back.give_back(connection.idle());
        }
    }

    fn fail(&mut self, error: impl Into<io::Error>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        self.connection = None;
        Poll::Ready(Some(Err(error.into())))
    }

    /// The next frame, as [`http_body::Body::poll_frame`].
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = self;
        loop {
            let Some(connection) = this.connection.as_mut() else {
                return Poll::Ready(None);
            };
            let frame = match this.decoder.decode(&mut connection.read) {
                Ok(Decoded::Data(data)) => Frame::data(data),
                Ok(Decoded::Trailers(trailers)) => Frame::trailers(trailers),
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {
                    match ready!(connection.poll_fill(cx)) {
                        Ok(0) => match this.decoder.at_close() {
                            // A close-delimited body: never given back.
                            Ok(_) => this.connection = None,
                            Err(e) => return this.fail(e),
                        },
                        Ok(_) => {}
                        Err(e) => return this.fail(e),
                    }
                    continue;
                }
                Err(e) => return this.fail(e),
            };
            // Given back at its last byte, not when the caller polls once more.
            if this.decoder.is_done() {
                this.finish();
            }
            return Poll::Ready(Some(Ok(frame)));
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    pub fn size_hint(&self) -> SizeHint {
        self.decoder
            .remaining()
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

impl<R: Return> Drop for PlainBody<R> {
    fn drop(&mut self) {
        // A body with nothing left to read (none at all, or read to its end) need not be
        // polled to its end: its connection is free now. One abandoned half-way is closed.
        if self.decoder.is_done() {
            self.finish();
        }
    }
}
