//! HTTP/1.1 on the wire for the plain keep-alive exchange ([`super::plain`]): a request head
//! written into one buffer, an answer head parsed into what the proxy passes on, and the answer's
//! body framing decoded. Pure: bytes in, bytes and heads out, no I/O, so every case (a chunk
//! split at any byte, a hostile head) is tested without a socket.
//!
//! Why our own rather than hyper's client connection: hyper runs each connection as a task of its
//! own behind a channel, and builds the answer's `HeaderMap` growing it as it goes; for the
//! common request (no body, no upgrade) that machinery was about a third of the sidecar's
//! instructions per request. The parsing itself is `httparse`'s (the parser hyper uses); the
//! framing rules follow RFC 9112 §6 the way hyper's client applies them, so an answer reads the
//! same whichever path carried it.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Version};
use std::mem::MaybeUninit;

/// The most header fields an answer head (or a trailer section) may have: hyper's default.
pub const MAX_HEADERS: usize = 100;

/// The largest answer head accepted, in bytes: hyper's default read buffer limit.
pub const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;

/// The longest chunk-size line (size and extensions) accepted.
pub const MAX_CHUNK_LINE: usize = 4096;

/// Why an answer could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnswerError {
    #[error("the endpoint's answer head is malformed: {0}")]
    MalformedHead(httparse::Error),
    #[error("the endpoint's answer head is larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("the endpoint's answer has an invalid Content-Length")]
    InvalidContentLength,
    #[error("the endpoint's HTTP/1.0 answer has a Transfer-Encoding")]
    TransferEncodingInHttp10,
    #[error("the endpoint switched protocols unasked")]
    UnaskedSwitch,
    #[error("the endpoint's chunked body is malformed")]
    MalformedChunk,
    #[error("the endpoint's trailers are malformed: {0}")]
    MalformedTrailers(httparse::Error),
    #[error("the endpoint closed the connection before its answer ended")]
    ClosedEarly,
}

impl From<AnswerError> for std::io::Error {
    fn from(error: AnswerError) -> Self {
        Self::new(std::io::ErrorKind::InvalidData, error)
    }
}

/// Whether a request can take the plain path: HTTP/1.1 without a body and without asking for a
/// protocol switch. Anything else (a body to stream, `CONNECT`, `Upgrade`) goes through hyper.
pub fn plain_request<B: http_body::Body>(request: &Request<B>) -> bool {
    request.version() == Version::HTTP_11
        && request.body().is_end_stream()
        && request.method() != Method::CONNECT
        && !request.headers().contains_key(header::UPGRADE)
}

/// Writes a body-less request's head into `out`, as hyper would: the method, the target as
/// given (origin form, or absolute form when it has an authority), HTTP/1.1, the header fields
/// in lower case and in order. A `Transfer-Encoding` is dropped: there is no body to encode.
pub fn encode_request<B>(request: &Request<B>, out: &mut Vec<u8>) {
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.push(b' ');
    let uri = request.uri();
    if uri.authority().is_some() {
        out.extend_from_slice(uri.to_string().as_bytes());
    } else {
        let target = uri.path_and_query().map_or("/", |p| p.as_str());
        out.extend_from_slice(target.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in request.headers() {
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// An answer's head, ready to pass on, and how its body is framed.
#[derive(Debug)]
pub struct AnswerHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    /// The reason phrase when it is not the status's usual one (passed on as hyper would).
    pub reason: Option<Bytes>,
    pub framing: Framing,
    /// Whether the connection may carry another request once the body has been read.
    pub keep_alive: bool,
}

/// How an answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (a `HEAD` answer, 204, 304, or `Content-Length: 0`).
    Empty,
    /// `Content-Length`: this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: the body ends when the endpoint closes the connection.
    UntilClose,
}

/// Parses the answer head at the start of `buf`, skipping interim (1xx) answers; `None` until a
/// whole head is there (`head_request`: the request was a `HEAD`, so the answer has no body). The head's bytes are taken from `buf` (the header values keep pointing
/// into them, uncopied); what follows, the body's first bytes, stays.
pub fn parse_answer(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<AnswerHead>, AnswerError> {
    let mut spans = [Span::default(); MAX_HEADERS];
    loop {
        let Some(raw) = parse_raw_head(buf, &mut spans)? else {
            if buf.len() > MAX_HEAD_BYTES {
                return Err(AnswerError::HeadTooLarge);
            }
            return Ok(None);
        };
        let head = buf.split_to(raw.length).freeze();
        let status = StatusCode::from_u16(raw.code)
            .map_err(|_| AnswerError::MalformedHead(httparse::Error::Status))?;
        match status.as_u16() {
            101 => return Err(AnswerError::UnaskedSwitch),
            100..=199 => continue,
            _ => {}
        }
        let version = if raw.minor_version == 1 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        let mut headers = HeaderMap::with_capacity(raw.count);
        let mut keep_alive = version == Version::HTTP_11;
        let mut saw_close = false;
        for span in &spans[..raw.count] {
            let name = HeaderName::from_bytes(&head[span.name()])
                .map_err(|_| AnswerError::MalformedHead(httparse::Error::HeaderName))?;
            let value = HeaderValue::from_maybe_shared(head.slice(span.value()))
                .map_err(|_| AnswerError::MalformedHead(httparse::Error::HeaderValue))?;
            if name == header::CONNECTION {
                // Once any `Connection` field says close, a later keep-alive does not undo it.
                if saw_close || has_token(&value, "close") {
                    saw_close = true;
                    keep_alive = false;
                } else if version == Version::HTTP_10 {
                    keep_alive |= has_token(&value, "keep-alive");
                }
            }
            headers.append(name, value);
        }
        let reason = &head[raw.reason.clone()];
        let reason = (status.canonical_reason().map(str::as_bytes) != Some(reason))
            .then(|| head.slice(raw.reason));
        let framing = framing(status, version, head_request, &mut headers)?;
        if framing == Framing::UntilClose {
            keep_alive = false;
        }
        return Ok(Some(AnswerHead {
            status,
            version,
            headers,
            reason,
            framing,
            keep_alive,
        }));
    }
}

/// Where a header field's name and value lie in the head (which is at most [`MAX_HEAD_BYTES`]
/// long, so `u32` offsets do).
#[derive(Clone, Copy, Default)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

impl Span {
    fn name(&self) -> std::ops::Range<usize> {
        self.name.0 as usize..self.name.1 as usize
    }

    fn value(&self) -> std::ops::Range<usize> {
        self.value.0 as usize..self.value.1 as usize
    }
}

struct RawHead {
    length: usize,
    code: u16,
    minor_version: u8,
    reason: std::ops::Range<usize>,
    count: usize,
}

/// Runs `httparse` over `buf` and notes in `spans` where each field lies, so that the fields can
/// be sliced out of the head once it is taken from `buf` (without copying them).
fn parse_raw_head(
    buf: &[u8],
    spans: &mut [Span; MAX_HEADERS],
) -> Result<Option<RawHead>, AnswerError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut answer = httparse::Response::new(&mut []);
    let length = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut answer,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(AnswerError::MalformedHead(e)),
    };
    if length > MAX_HEAD_BYTES {
        return Err(AnswerError::HeadTooLarge);
    }
    let base = buf.as_ptr() as usize;
    // An empty part may not point into `buf`: it is an empty range.
    let at = |part: &[u8]| {
        let start = if part.is_empty() {
            0
        } else {
            part.as_ptr() as usize - base
        };
        (start as u32, (start + part.len()) as u32)
    };
    for (span, field) in spans.iter_mut().zip(answer.headers.iter()) {
        span.name = at(field.name.as_bytes());
        span.value = at(field.value);
    }
    let (reason_start, reason_end) = at(answer.reason.unwrap_or_default().as_bytes());
    Ok(Some(RawHead {
        length,
        code: answer.code.unwrap_or_default(),
        minor_version: answer.version.unwrap_or_default(),
        reason: reason_start as usize..reason_end as usize,
        count: answer.headers.len(),
    }))
}

/// The answer body's framing (RFC 9112 §6.3), as hyper's client decides it. A `Content-Length`
/// beside a `Transfer-Encoding` is dropped, so that what is passed on says what was read.
fn framing(
    status: StatusCode,
    version: Version,
    head_request: bool,
    headers: &mut HeaderMap,
) -> Result<Framing, AnswerError> {
    if matches!(status.as_u16(), 204 | 304) || head_request {
        return Ok(Framing::Empty);
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(AnswerError::TransferEncodingInHttp10);
        }
        headers.remove(header::CONTENT_LENGTH);
        let chunked = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|last| last.as_bytes().rsplit(|b| *b == b',').next())
            .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        return Ok(if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    match content_length(headers)? {
        Some(0) => Ok(Framing::Empty),
        Some(length) => Ok(Framing::Length(length)),
        None => Ok(Framing::UntilClose),
    }
}

/// Every `Content-Length` value (a field may list the same number more than once) must be one
/// and the same number.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, AnswerError> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for item in value.as_bytes().split(|b| *b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
                return Err(AnswerError::InvalidContentLength);
            }
            let parsed = std::str::from_utf8(item)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(AnswerError::InvalidContentLength)?;
            if length.is_some_and(|seen| seen != parsed) {
                return Err(AnswerError::InvalidContentLength);
            }
            length = Some(parsed);
        }
    }
    Ok(length)
}

/// Whether a comma-separated field value lists `token` (case aside).
fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .as_bytes()
        .split(|b| *b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// What [`BodyDecoder::decode`] found in the buffer.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// More bytes are needed.
    NeedMore,
}

/// Takes an answer body's content out of the bytes read, frame by frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyDecoder {
    /// This many bytes of content are left.
    Length(u64),
    /// Before a chunk-size line.
    ChunkSize,
    /// Inside a chunk, this many bytes of it left.
    ChunkData(u64),
    /// After a chunk's data: its closing CRLF.
    ChunkEnd,
    /// After the last chunk: the trailer section and the closing empty line.
    Trailers,
    /// Until the connection closes.
    UntilClose,
    Done,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty => Self::Done,
            Framing::Length(length) => Self::Length(length),
            Framing::Chunked => Self::ChunkSize,
            Framing::UntilClose => Self::UntilClose,
        }
    }

    pub fn is_done(&self) -> bool {
        *self == Self::Done
    }

    /// The content bytes still to come, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Self::Length(left) => Some(*left),
            Self::Done => Some(0),
            _ => None,
        }
    }

    /// The next piece of the body from `buf`, taking what it uses from it.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, AnswerError> {
        loop {
            match self {
                Self::Done => return Ok(Decoded::End),
                Self::Length(left) | Self::ChunkData(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= take as u64;
                    if *left == 0 {
                        *self = match self {
                            Self::Length(_) => Self::Done,
                            _ => Self::ChunkEnd,
                        };
                    }
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                Self::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                Self::ChunkSize => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        let _ = buf.split_to(used);
                        *self = if size == 0 {
                            Self::Trailers
                        } else {
                            Self::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() <= MAX_CHUNK_LINE => {
                        return Ok(Decoded::NeedMore);
                    }
                    _ => return Err(AnswerError::MalformedChunk),
                },
                Self::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(AnswerError::MalformedChunk);
                    }
                    let _ = buf.split_to(2);
                    *self = Self::ChunkSize;
                }
                Self::Trailers => {
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let (used, trailers) = match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((used, fields))) => {
                            (used, trailer_map(fields)?)
                        }
                        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD_BYTES => {
                            return Ok(Decoded::NeedMore);
                        }
                        Ok(httparse::Status::Partial) => return Err(AnswerError::HeadTooLarge),
                        Err(e) => return Err(AnswerError::MalformedTrailers(e)),
                    };
                    let _ = buf.split_to(used);
                    *self = Self::Done;
                    return Ok(match trailers {
                        Some(trailers) => Decoded::Trailers(trailers),
                        None => Decoded::End,
                    });
                }
            }
        }
    }

    /// What the connection's end means here: the end of a close-delimited body, else an answer
    /// cut short.
    pub fn at_close(&mut self) -> Result<Decoded, AnswerError> {
        match self {
            Self::UntilClose | Self::Done => {
                *self = Self::Done;
                Ok(Decoded::End)
            }
            _ => Err(AnswerError::ClosedEarly),
        }
    }
}

fn trailer_map(fields: &[httparse::Header<'_>]) -> Result<Option<HeaderMap>, AnswerError> {
    if fields.is_empty() {
        return Ok(None);
    }
    let mut trailers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| AnswerError::MalformedTrailers(httparse::Error::HeaderName))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| AnswerError::MalformedTrailers(httparse::Error::HeaderValue))?;
        trailers.append(name, value);
    }
    Ok(Some(trailers))
}

#[cfg(test)]
mod tests;
