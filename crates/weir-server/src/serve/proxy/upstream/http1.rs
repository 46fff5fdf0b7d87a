//! HTTP/1.1 as the upstream speaks it: the request head we send, the response head we
//! parse, and the body framing (chunked, a length, or up to the close), decoded byte by
//! byte so that no read buffer has to outlive a read.

use std::fmt::Write as _;

/// Largest response head accepted, and the most header lines in it.
pub const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (extensions included) and longest trailer section.
const MAX_CHUNK_LINE: u32 = 4 * 1024;
const MAX_TRAILERS: u32 = 16 * 1024;

/// The request head for `method path`, with `host` and the body's length.
pub fn request_head(
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &[u8])],
    body_len: usize,
) -> Vec<u8> {
    let mut head = String::with_capacity(256);
    // Writing to a String cannot fail.
    let _ = write!(
        head,
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {body_len}\r\n"
    );
    let mut head = head.into_bytes();
    for (name, value) in headers {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// What weir needs of a response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub content_type: Option<Vec<u8>>,
    pub framing: Framing,
    /// The connection may carry another request once the body is read.
    pub keep_alive: bool,
}

/// How the end of the body is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Chunked,
    Length(u64),
    UntilClose,
}

/// What is wrong with an upstream's HTTP/1.1 response, named for the log and the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Http1Error {
    #[error("response head over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid response head: {0}")]
    Head(httparse::Error),
    #[error("invalid content-length `{0}`")]
    ContentLength(String),
    #[error("two different content-length headers")]
    TwoLengths,
    #[error("chunk size overflows 64 bits")]
    ChunkSizeOverflow,
    #[error("chunk size expected, got {0:#04x}")]
    ChunkSizeExpected(u8),
    #[error("chunk-size line ends without CR")]
    BareLf,
    #[error("{what} over {max} bytes")]
    LineTooLong { what: &'static str, max: u32 },
    #[error("expected {want:?} after the {after}, got {got:?}")]
    Unexpected {
        want: char,
        got: char,
        after: &'static str,
    },
    #[error("upstream closed the connection {0} bytes before the end of the body")]
    ClosedEarly(u64),
    #[error("upstream closed the connection inside a chunked body")]
    ClosedInChunk,
}

/// Parses the head at the start of `buf`: `Ok(None)` while it is incomplete, else the
/// head and its length in bytes. Interim (1xx) responses are skipped.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, Http1Error> {
    let mut start = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let len = match response.parse(&buf[start..]) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Err(Http1Error::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(Http1Error::Head(e)),
        };
        let status = response.code.unwrap_or_default();
        if (100..200).contains(&status) && status != 101 {
            start += len;
            continue;
        }
        let head = head_of(status, response.version, response.headers)?;
        return Ok(Some((head, start + len)));
    }
}

fn head_of(
    status: u16,
    version: Option<u8>,
    headers: &[httparse::Header],
) -> Result<ResponseHead, Http1Error> {
    let mut content_type = None;
    let mut chunked = false;
    let mut encoded = false;
    let mut length = None;
    let mut keep_alive = version == Some(1);
    for h in headers {
        let value = String::from_utf8_lossy(h.value);
        if h.name.eq_ignore_ascii_case("content-type") {
            content_type = Some(h.value.to_vec());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only the last coding says how the message ends.
            encoded = true;
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value
                .trim()
                .parse()
                .map_err(|_| Http1Error::ContentLength(value.to_string()))?;
            if length.is_some_and(|m| m != n) {
                return Err(Http1Error::TwoLengths);
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("connection") {
            for option in value.split(',').map(str::trim) {
                if option.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if option.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    let framing = if status == 204 || status == 304 {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length.filter(|_| !encoded) {
        Framing::Length(n)
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    Ok(ResponseHead {
        status,
        content_type,
        framing,
        keep_alive,
    })
}

/// Decodes a body's framing from the bytes as they come, holding no bytes itself.
#[derive(Debug)]
pub struct BodyDecoder {
    state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// A chunk-size line: the size so far and the line's length so far.
    Size {
        size: u64,
        line: u32,
        digits: bool,
    },
    /// Past the size: extensions or spaces up to the line's end.
    SizeRest {
        size: u64,
        line: u32,
    },
    SizeLf {
        size: u64,
    },
    ChunkData {
        left: u64,
    },
    ChunkCr,
    ChunkLf,
    /// Trailer lines after the last chunk: the current line's length and the total.
    Trailer {
        line: u32,
        total: u32,
    },
    TrailerLf {
        line: u32,
        total: u32,
    },
    Length {
        left: u64,
    },
    UntilClose,
    Done,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Chunked => State::Size {
                size: 0,
                line: 0,
                digits: false,
            },
            Framing::Length(0) => State::Done,
            Framing::Length(left) => State::Length { left },
            Framing::UntilClose => State::UntilClose,
        };
        BodyDecoder { state }
    }

    /// The whole body has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes `input`, handing each piece of body data to `data`; bytes after the end of
    /// the body are left unread: the count of bytes taken is returned.
    pub fn decode<'a>(
        &mut self,
        input: &'a [u8],
        mut data: impl FnMut(&'a [u8]),
    ) -> Result<usize, Http1Error> {
        let mut at = 0;
        while at < input.len() {
            let rest = &input[at..];
            match self.state {
                State::Done => break,
                State::UntilClose => {
                    data(rest);
                    at = input.len();
                }
                State::Length { left } | State::ChunkData { left } => {
                    let n = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    data(&rest[..n]);
                    at += n;
                    let left = left - n as u64;
                    self.state = match self.state {
                        State::Length { .. } if left == 0 => State::Done,
                        State::Length { .. } => State::Length { left },
                        _ if left == 0 => State::ChunkCr,
                        _ => State::ChunkData { left },
                    };
                }
                _ => {
                    self.step(rest[0])?;
                    at += 1;
                }
            }
        }
        Ok(at)
    }

    /// One byte of chunk framing.
    fn step(&mut self, b: u8) -> Result<(), Http1Error> {
        self.state = match self.state {
            State::Size { size, line, digits } => {
                check_line(line, MAX_CHUNK_LINE, "chunk-size line")?;
                match (b as char).to_digit(16) {
                    Some(d) => {
                        let size = size
                            .checked_mul(16)
                            .map(|s| s + u64::from(d))
                            .ok_or(Http1Error::ChunkSizeOverflow)?;
                        State::Size {
                            size,
                            line: line + 1,
                            digits: true,
                        }
                    }
                    None if !digits => return Err(Http1Error::ChunkSizeExpected(b)),
                    None => size_rest(size, line, b)?,
                }
            }
            State::SizeRest { size, line } => {
                check_line(line, MAX_CHUNK_LINE, "chunk-size line")?;
                size_rest(size, line + 1, b)?
            }
            State::SizeLf { size } => {
                expect(b, b'\n', "chunk-size line")?;
                if size == 0 {
                    State::Trailer { line: 0, total: 0 }
                } else {
                    State::ChunkData { left: size }
                }
            }
            State::ChunkCr => {
                expect(b, b'\r', "chunk data")?;
                State::ChunkLf
            }
            State::ChunkLf => {
                expect(b, b'\n', "chunk data")?;
                State::Size {
                    size: 0,
                    line: 0,
                    digits: false,
                }
            }
            State::Trailer { line, total } => {
                check_line(total, MAX_TRAILERS, "trailer section")?;
                if b == b'\r' {
                    State::TrailerLf { line, total }
                } else {
                    State::Trailer {
                        line: line + 1,
                        total: total + 1,
                    }
                }
            }
            State::TrailerLf { line, total } => {
                expect(b, b'\n', "trailer line")?;
                if line == 0 {
                    State::Done
                } else {
                    State::Trailer {
                        line: 0,
                        total: total + 2,
                    }
                }
            }
            State::Length { .. } | State::ChunkData { .. } | State::UntilClose | State::Done => {
                self.state
            }
        };
        Ok(())
    }

    /// The connection closed: fine only where the framing says the body may end.
    pub fn end_of_input(&mut self) -> Result<(), Http1Error> {
        match self.state {
            State::Done => Ok(()),
            State::UntilClose => {
                self.state = State::Done;
                Ok(())
            }
            State::Length { left } => Err(Http1Error::ClosedEarly(left)),
            _ => Err(Http1Error::ClosedInChunk),
        }
    }
}

/// The state after byte `b` of a chunk-size line past its digits (extensions, spaces).
fn size_rest(size: u64, line: u32, b: u8) -> Result<State, Http1Error> {
    Ok(match b {
        b'\r' => State::SizeLf { size },
        b'\n' => return Err(Http1Error::BareLf),
        _ => State::SizeRest { size, line },
    })
}

fn check_line(len: u32, max: u32, what: &'static str) -> Result<(), Http1Error> {
    if len >= max {
        return Err(Http1Error::LineTooLong { what, max });
    }
    Ok(())
}

fn expect(b: u8, want: u8, after: &'static str) -> Result<(), Http1Error> {
    if b != want {
        return Err(Http1Error::Unexpected {
            want: want as char,
            got: b as char,
            after,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes; the data, and whether it ended.
    fn decode_in_pieces(framing: Framing, input: &[u8], step: usize) -> (Vec<u8>, bool) {
        let mut decoder = BodyDecoder::new(framing);
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            let taken = decoder
                .decode(piece, |d| out.extend_from_slice(d))
                .expect("valid framing");
            if taken < piece.len() {
                break;
            }
        }
        (out, decoder.is_done())
    }

    #[test]
    fn chunked_body_decodes_the_same_whatever_the_read_boundaries() {
        let wire = b"5\r\nhello\r\n7;name=value\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
        for step in 1..=wire.len() {
            let (data, done) = decode_in_pieces(Framing::Chunked, wire, step);
            assert_eq!(data, b"hello, world", "step {step}");
            assert!(done, "step {step}");
        }
    }

    #[test]
    fn chunked_body_leaves_the_next_response_unread() {
        let wire = b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n";
        let mut decoder = BodyDecoder::new(Framing::Chunked);
        let mut out = Vec::new();
        let taken = decoder
            .decode(wire, |d| out.extend_from_slice(d))
            .expect("valid framing");
        assert_eq!(&wire[taken..], b"HTTP/1.1 200 OK\r\n");
        assert_eq!(out, b"abc");
        assert!(decoder.is_done());
    }

    #[test]
    fn chunked_framing_errors_name_what_is_wrong() {
        for (wire, wanted) in [
            (&b"zz\r\n"[..], "chunk size expected"),
            (b"3\r\nabcX", "after the chunk data"),
            (b"3\nabc", "without CR"),
            (b"11111111111111111\r\n", "overflows"),
        ] {
            let mut decoder = BodyDecoder::new(Framing::Chunked);
            let err = decoder.decode(wire, |_| {}).expect_err("invalid framing");
            assert!(err.to_string().contains(wanted), "{err}");
        }
        let long_line = [b"1;".as_slice(), &[b'x'; 5000]].concat();
        let err = BodyDecoder::new(Framing::Chunked)
            .decode(&long_line, |_| {})
            .expect_err("line too long");
        assert!(err.to_string().contains("over 4096 bytes"), "{err}");
    }

    #[test]
    fn a_close_ends_only_bodies_whose_framing_allows_it() {
        let mut length = BodyDecoder::new(Framing::Length(10));
        length.decode(b"abc", |_| {}).expect("data");
        let err = length.end_of_input().expect_err("7 bytes missing");
        assert_eq!(err, Http1Error::ClosedEarly(7));
        let mut chunked = BodyDecoder::new(Framing::Chunked);
        chunked.decode(b"3\r\nab", |_| {}).expect("data");
        assert!(chunked.end_of_input().is_err());
        let mut until_close = BodyDecoder::new(Framing::UntilClose);
        until_close.decode(b"abc", |_| {}).expect("data");
        assert!(until_close.end_of_input().is_ok());
        assert!(until_close.is_done());
    }

    #[test]
    fn length_body_stops_at_its_length() {
        let mut decoder = BodyDecoder::new(Framing::Length(4));
        let mut out = Vec::new();
        let taken = decoder
            .decode(b"abcdef", |d| out.extend_from_slice(d))
            .expect("data");
        assert_eq!(
            (taken, out.as_slice(), decoder.is_done()),
            (4, &b"abcd"[..], true)
        );
    }

    #[test]
    fn response_head_gives_status_type_framing_and_reuse() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n";
        let (head, len) = parse_response_head(wire).expect("valid").expect("complete");
        assert_eq!(head.status, 200);
        assert_eq!(
            head.content_type.as_deref(),
            Some(&b"text/event-stream"[..])
        );
        assert_eq!(head.framing, Framing::Chunked);
        assert!(head.keep_alive);
        assert_eq!(&wire[len..], b"5\r\n");

        let (head, _) =
            parse_response_head(b"HTTP/1.0 502 Bad Gateway\r\ncontent-length: 3\r\n\r\n")
                .expect("valid")
                .expect("complete");
        assert_eq!(
            (head.status, head.framing, head.keep_alive),
            (502, Framing::Length(3), false)
        );

        // A coding other than chunked last: the length is of the encoded body, if at all.
        let (head, _) = parse_response_head(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ncontent-length: 3\r\n\r\n",
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(
            (head.framing, head.keep_alive),
            (Framing::UntilClose, false)
        );

        let (head, _) = parse_response_head(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(
            (head.framing, head.keep_alive),
            (Framing::UntilClose, false)
        );

        assert!(parse_response_head(b"HTTP/1.1 200 OK\r\ncontent-ty")
            .expect("valid so far")
            .is_none());
        let err = parse_response_head(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n")
            .expect_err("bad length");
        assert_eq!(err, Http1Error::ContentLength("x".to_string()));
        let err = parse_response_head(&[b'a'; 10]).expect_err("not HTTP");
        assert!(matches!(err, Http1Error::Head(_)), "{err}");
    }

    #[test]
    fn request_head_carries_host_length_and_headers() {
        let head = request_head(
            "POST",
            "/v1/chat/completions",
            "api.example:8443",
            &[("content-type", b"application/json")],
            12,
        );
        assert_eq!(
            head,
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: api.example:8443\r\ncontent-length: 12\r\ncontent-type: application/json\r\n\r\n"
        );
    }
}
