use super::*;
use proptest::prelude::*;

fn answer(bytes: &[u8]) -> Result<Option<AnswerHead>, AnswerError> {
    parse_answer(&mut BytesMut::from(bytes), false)
}

fn head(bytes: &[u8]) -> AnswerHead {
    answer(bytes).unwrap().expect("a whole head")
}

/// Decodes a whole body given in the pieces `parts` arrive in: its content and its trailers.
fn decode_in_parts(
    framing: Framing,
    parts: &[&[u8]],
) -> Result<(Vec<u8>, Option<HeaderMap>), AnswerError> {
    let mut decoder = BodyDecoder::new(framing);
    let mut buf = BytesMut::new();
    let (mut content, mut trailers) = (Vec::new(), None);
    let mut parts = parts.iter();
    loop {
        match decoder.decode(&mut buf)? {
            Decoded::Data(data) => content.extend_from_slice(&data),
            Decoded::Trailers(t) => trailers = Some(t),
            Decoded::End => return Ok((content, trailers)),
            Decoded::NeedMore => match parts.next() {
                Some(part) => buf.extend_from_slice(part),
                None => {
                    decoder.at_close()?;
                }
            },
        }
    }
}

#[test]
fn a_plain_answer_is_parsed_and_its_body_left_in_the_buffer() {
    let mut buf =
        BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\nx-a: 2\r\n\r\nok"[..]);
    let head = parse_answer(&mut buf, false).unwrap().unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.version, Version::HTTP_11);
    assert_eq!(head.framing, Framing::Length(2));
    assert!(head.keep_alive);
    assert_eq!(head.reason, None, "the usual reason phrase is not kept");
    let values: Vec<_> = head.headers.get_all("x-a").iter().collect();
    assert_eq!(values, ["1", "2"], "repeated fields kept in order");
    assert_eq!(&buf[..], b"ok");
}

#[test]
fn a_head_is_read_only_once_whole() {
    let whole = b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n";
    for cut in 0..whole.len() {
        assert!(answer(&whole[..cut]).unwrap().is_none(), "cut at {cut}");
    }
    assert_eq!(head(whole).framing, Framing::Empty);
}

#[test]
fn interim_answers_are_skipped_and_an_unasked_switch_refused() {
    let after_continue = head(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n");
    assert_eq!(after_continue.status, 201);
    assert!(!after_continue.headers.contains_key("link"));
    let mut only_interim = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]);
    assert!(parse_answer(&mut only_interim, false).unwrap().is_none());
    assert!(only_interim.is_empty(), "the interim answer is consumed");
    assert_eq!(
        answer(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n").unwrap_err(),
        AnswerError::UnaskedSwitch
    );
}

/// A case: its name, the answer head, whether the request was a `HEAD`, and the body's framing
/// with whether the connection may carry another request, or the refusal.
type AnswerCase = (
    &'static str,
    &'static [u8],
    bool,
    Result<(Framing, bool), AnswerError>,
);

#[test]
fn framing_and_keep_alive_follow_the_rules_hyper_applies() {
    use Framing::*;
    let cases: &[AnswerCase] = &[
        ("content length", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false, Ok((Length(5), true))),
        ("zero length", b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", false, Ok((Empty, true))),
        ("repeated same length", b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\ncontent-length: 5\r\n\r\n", false, Ok((Length(5), true))),
        ("differing lengths", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n", false, Err(AnswerError::InvalidContentLength)),
        ("signed length", b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n", false, Err(AnswerError::InvalidContentLength)),
        ("empty length", b"HTTP/1.1 200 OK\r\ncontent-length:\r\n\r\n", false, Err(AnswerError::InvalidContentLength)),
        ("length past u64", b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n", false, Err(AnswerError::InvalidContentLength)),
        ("chunked", b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n", false, Ok((Chunked, true))),
        ("chunked beats length", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n", false, Ok((Chunked, true))),
        ("chunked not last", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n", false, Ok((UntilClose, false))),
        ("coding in HTTP/1.0", b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", false, Err(AnswerError::TransferEncodingInHttp10)),
        ("neither", b"HTTP/1.1 200 OK\r\n\r\n", false, Ok((UntilClose, false))),
        ("HEAD answer", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true, Ok((Empty, true))),
        ("204", b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n", false, Ok((Empty, true))),
        ("304", b"HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n", false, Ok((Empty, true))),
        ("close", b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, CLOSE\r\ncontent-length: 0\r\n\r\n", false, Ok((Empty, false))),
        ("close then keep-alive", b"HTTP/1.1 200 OK\r\nconnection: close\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n", false, Ok((Empty, false))),
        ("HTTP/1.0", b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false, Ok((Empty, false))),
        ("HTTP/1.0 keep-alive", b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n", false, Ok((Empty, true))),
    ];
    for (case, bytes, head_request, expected) in cases {
        let parsed = parse_answer(&mut BytesMut::from(*bytes), *head_request)
            .map(|head| head.expect("whole"))
            .map(|head| (head.framing, head.keep_alive));
        assert_eq!(&parsed, expected, "{case}");
    }
    let chunked =
        head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n");
    assert!(
        !chunked.headers.contains_key(header::CONTENT_LENGTH),
        "a length beside a coding is not passed on"
    );
}

#[test]
fn an_unusual_reason_phrase_is_kept() {
    let reason = head(b"HTTP/1.1 200 Fine Thanks\r\ncontent-length: 0\r\n\r\n").reason;
    assert_eq!(reason.as_deref(), Some(&b"Fine Thanks"[..]));
    let empty = head(b"HTTP/1.1 200 \r\ncontent-length: 0\r\n\r\n").reason;
    assert_eq!(empty.as_deref(), Some(&b""[..]));
}

#[test]
fn hostile_heads_are_refused_by_name() {
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..=MAX_HEADERS {
        many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(
        answer(&many).unwrap_err(),
        AnswerError::MalformedHead(httparse::Error::TooManyHeaders)
    );
    assert!(answer(b"HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n").is_err());
    assert!(answer(b"HTTP/1.1 2000 OK\r\n\r\n").is_err());
    assert!(answer(b"SMTP ready\r\n\r\n").is_err());
    assert!(answer(b"HTTP/1.1 200 OK\r\nx: a\rb\r\n\r\n").is_err());

    // A head that never ends is refused once it passes the bound, not buffered forever.
    let mut endless = b"HTTP/1.1 200 OK\r\nx-long: ".to_vec();
    endless.resize(MAX_HEAD_BYTES, b'a');
    assert!(
        answer(&endless).unwrap().is_none(),
        "at the bound: waits for more"
    );
    endless.push(b'a');
    assert_eq!(answer(&endless).unwrap_err(), AnswerError::HeadTooLarge);
}

#[test]
fn a_request_head_is_written_as_hyper_writes_it() {
    let request = Request::get("/a/b?c=d")
        .header("Host", "svc")
        .header("x-two", "1")
        .header("x-two", "2")
        .header("transfer-encoding", "chunked")
        .body(())
        .unwrap();
    let mut out = Vec::new();
    encode_request(&request, &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "GET /a/b?c=d HTTP/1.1\r\nhost: svc\r\nx-two: 1\r\nx-two: 2\r\n\r\n"
    );
    let absolute = Request::head("http://svc:8080/x").body(()).unwrap();
    let mut out = Vec::new();
    encode_request(&absolute, &mut out);
    assert_eq!(out, b"HEAD http://svc:8080/x HTTP/1.1\r\n\r\n");
}

#[test]
fn only_bodiless_http11_requests_without_an_upgrade_are_plain() {
    use crate::body::{empty, full};
    let plain = |request: http::request::Builder, body| plain_request(&request.body(body).unwrap());
    assert!(plain(Request::get("/"), empty()));
    assert!(plain(Request::delete("/"), empty()));
    assert!(!plain(Request::post("/"), full("x")), "a body");
    assert!(!plain(Request::get("/").version(Version::HTTP_10), empty()));
    assert!(!plain(
        Request::get("/").header("upgrade", "websocket"),
        empty()
    ));
    assert!(!plain(Request::connect("svc:443"), empty()));
}

#[test]
fn chunked_bodies_decode_with_extensions_and_trailers() {
    let body: &[u8] =
        b"4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nx-sum: 9\r\n\r\n";
    let (content, trailers) = decode_in_parts(Framing::Chunked, &[body]).unwrap();
    assert_eq!(content, b"Wikipedia in\r\n\r\nchunks.");
    assert_eq!(trailers.unwrap()["x-sum"], "9");
    let (content, trailers) = decode_in_parts(Framing::Chunked, &[b"0\r\n\r\n"]).unwrap();
    assert!(content.is_empty() && trailers.is_none());
}

#[test]
fn malformed_or_cut_bodies_fail_by_name() {
    let cases: &[(&str, Framing, &[u8], AnswerError)] = &[
        (
            "bad size",
            Framing::Chunked,
            b"zz\r\nab\r\n0\r\n\r\n",
            AnswerError::MalformedChunk,
        ),
        (
            "size past 15 digits",
            Framing::Chunked,
            b"10000000000000000\r\n",
            AnswerError::MalformedChunk,
        ),
        (
            "no CRLF after data",
            Framing::Chunked,
            b"2\r\nabXY0\r\n\r\n",
            AnswerError::MalformedChunk,
        ),
        (
            "cut in a chunk",
            Framing::Chunked,
            b"5\r\nab",
            AnswerError::ClosedEarly,
        ),
        (
            "cut before the last chunk",
            Framing::Chunked,
            b"2\r\nab\r\n",
            AnswerError::ClosedEarly,
        ),
        (
            "cut in a length",
            Framing::Length(5),
            b"ab",
            AnswerError::ClosedEarly,
        ),
    ];
    for (case, framing, bytes, expected) in cases {
        assert_eq!(
            &decode_in_parts(*framing, &[bytes]).unwrap_err(),
            expected,
            "{case}"
        );
    }
    let mut endless_size = vec![b'1'; 1];
    endless_size.extend_from_slice(b";");
    endless_size.resize(MAX_CHUNK_LINE + 1, b'x');
    assert_eq!(
        decode_in_parts(Framing::Chunked, &[&endless_size]).unwrap_err(),
        AnswerError::MalformedChunk,
        "a size line past its bound"
    );
}

#[test]
fn a_length_body_stops_at_its_length_and_a_close_delimited_one_at_the_close() {
    let mut buf = BytesMut::from(&b"abcdeNEXT"[..]);
    let mut decoder = BodyDecoder::new(Framing::Length(5));
    assert_eq!(decoder.remaining(), Some(5));
    assert_eq!(
        decoder.decode(&mut buf).unwrap(),
        Decoded::Data(Bytes::from_static(b"abcde"))
    );
    assert!(decoder.is_done());
    assert_eq!(&buf[..], b"NEXT", "what follows the body is left");
    let (content, _) = decode_in_parts(Framing::UntilClose, &[b"ab", b"cd"]).unwrap();
    assert_eq!(content, b"abcd");
    assert!(BodyDecoder::new(Framing::Empty).is_done());
}

proptest! {
    /// Any content, chunked in any sizes and cut into any pieces on the wire, decodes to itself.
    #[test]
    fn chunked_content_survives_any_chunking_and_any_cut(
        content in proptest::collection::vec(any::<u8>(), 0..600),
        chunk_sizes in proptest::collection::vec(1usize..80, 1..20),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        trailer in any::<bool>(),
    ) {
        let mut wire = Vec::new();
        let (mut rest, mut sizes) = (&content[..], chunk_sizes.iter().cycle());
        while !rest.is_empty() {
            let size = (*sizes.next().unwrap()).min(rest.len());
            wire.extend_from_slice(format!("{size:x}\r\n").as_bytes());
            wire.extend_from_slice(&rest[..size]);
            wire.extend_from_slice(b"\r\n");
            rest = &rest[size..];
        }
        wire.extend_from_slice(if trailer { &b"0\r\nx-t: 1\r\n\r\n"[..] } else { &b"0\r\n\r\n"[..] });
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        at.sort_unstable();
        let mut parts = Vec::new();
        let mut from = 0;
        for cut in at.into_iter().chain([wire.len()]) {
            parts.push(&wire[from..cut]);
            from = cut;
        }
        let (decoded, trailers) = decode_in_parts(Framing::Chunked, &parts).unwrap();
        prop_assert_eq!(decoded, content);
        prop_assert_eq!(trailers.is_some(), trailer);
    }
}
