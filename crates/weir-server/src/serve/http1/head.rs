//! Request heads read and response heads written by weir's own HTTP/1.1 connections.

use std::time::SystemTime;

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{request, response, Method, Request, StatusCode, Uri, Version};

/// Largest request head weir reads (hyper's smallest buffer, the cap it had before).
pub const MAX_HEAD: usize = 8 * 1024;

/// Header lines a request may have (hyper's default).
const MAX_HEADERS: usize = 100;

/// What the bytes read so far hold.
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A request weir serves itself.
    Own(Box<Head>),
    /// A request hyper serves: an upgrade, `Expect`, a chunked body, `HEAD`, another
    /// version, or a head weir cannot read (hyper answers those with its 400 or 431).
    Hyper,
}

/// A request head weir serves.
pub struct Head {
    pub parts: request::Parts,
    /// Bytes of the buffer the head took.
    pub len: usize,
    /// `Content-Length`, 0 without one.
    pub body_len: u64,
    /// The client did not ask to close after this request.
    pub keep_alive: bool,
}

/// Reads a request head from the front of `bytes`.
pub fn parse(bytes: &[u8]) -> Parsed {
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut lines);
    let len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Hyper,
    };
    if request.version != Some(1) {
        return Parsed::Hyper;
    }
    let (Some(method), Some(path)) = (request.method, request.path) else {
        return Parsed::Hyper;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Hyper;
    };
    if method == Method::HEAD || method == Method::CONNECT || !path.starts_with('/') {
        return Parsed::Hyper;
    }
    let Ok(uri) = Uri::try_from(path) else {
        return Parsed::Hyper;
    };
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    for line in request.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(line.name.as_bytes()),
            HeaderValue::from_bytes(line.value),
        ) else {
            return Parsed::Hyper;
        };
        headers.append(name, value);
    }
    let left_to_hyper = [header::UPGRADE, header::EXPECT, header::TRANSFER_ENCODING];
    if left_to_hyper.iter().any(|name| headers.contains_key(name)) {
        return Parsed::Hyper;
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let body_len = match (lengths.next(), lengths.next()) {
        (None, _) => 0,
        (Some(value), None) => match value.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
            Some(n) => n,
            None => return Parsed::Hyper,
        },
        (Some(_), Some(_)) => return Parsed::Hyper,
    };
    let keep_alive = !has_token(&headers, "close");
    if has_token(&headers, "upgrade") {
        return Parsed::Hyper;
    }
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    parts.headers = headers;
    Parsed::Own(Box::new(Head {
        parts,
        len,
        body_len,
        keep_alive,
    }))
}

/// Whether a `Connection` header lists `token`.
fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// 1xx, 204 and 304 have none.
    NoBody,
    Length(u64),
    Chunked,
}

/// Decides the framing and writes the status line and headers (`Date`, the framing's,
/// `Connection: close` when the connection ends after this response).
pub fn encode(
    parts: &mut response::Parts,
    exact: Option<u64>,
    keep_alive: bool,
) -> (Vec<u8>, Framing) {
    let headers = &mut parts.headers;
    let status = parts.status;
    let framing = if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::TRANSFER_ENCODING);
        Framing::NoBody
    } else if let Some(n) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        headers.remove(header::TRANSFER_ENCODING);
        Framing::Length(n)
    } else if let Some(n) = exact {
        headers.remove(header::TRANSFER_ENCODING);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        Framing::Length(n)
    } else {
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        Framing::Chunked
    };
    if !keep_alive {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if !headers.contains_key(header::DATE) {
        let now = httpdate::fmt_http_date(SystemTime::now());
        if let Ok(date) = HeaderValue::from_str(&now) {
            headers.insert(header::DATE, date);
        }
    }
    let mut head = Vec::with_capacity(64 + headers.len() * 32);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in headers.iter() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    (head, framing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(bytes: &[u8]) -> Head {
        match parse(bytes) {
            Parsed::Own(head) => *head,
            Parsed::Partial => panic!("partial"),
            Parsed::Hyper => panic!("left to hyper"),
        }
    }

    #[test]
    fn a_post_with_a_length_is_served_by_weir() {
        let bytes = b"POST /v1/chat?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n{\"a\":1}";
        let head = own(bytes);
        assert_eq!(head.parts.method, Method::POST);
        assert_eq!(head.parts.uri, "/v1/chat?x=1");
        assert_eq!(head.body_len, 12);
        assert!(head.keep_alive);
        assert_eq!(&bytes[head.len..], b"{\"a\":1}");
        assert_eq!(head.parts.headers["host"], "a");
    }

    #[test]
    fn a_head_split_anywhere_is_partial_until_its_end() {
        let bytes = b"GET /t HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n";
        for cut in 0..bytes.len() {
            assert!(
                matches!(parse(&bytes[..cut]), Parsed::Partial),
                "cut at {cut}"
            );
        }
        assert!(!own(bytes).keep_alive);
    }

    #[test]
    fn what_weir_does_not_serve_goes_to_hyper() {
        for bytes in [
            &b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"[..],
            b"POST /p HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST /p HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST /p HTTP/1.1\r\nContent-Length: five\r\n\r\n",
            b"HEAD /t HTTP/1.1\r\n\r\n",
            b"GET /t HTTP/1.0\r\n\r\n",
            b"GET http://a/t HTTP/1.1\r\n\r\n",
            b"GET /t HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ] {
            assert!(
                matches!(parse(bytes), Parsed::Hyper),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    fn encoded(status: StatusCode, exact: Option<u64>, keep_alive: bool) -> (String, Framing) {
        let (mut parts, ()) = axum::http::Response::new(()).into_parts();
        parts.status = status;
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        let (head, framing) = encode(&mut parts, exact, keep_alive);
        (String::from_utf8(head).expect("ASCII"), framing)
    }

    #[test]
    fn a_stream_is_chunked_and_a_sized_body_has_its_length() {
        let (head, framing) = encoded(StatusCode::OK, None, true);
        assert_eq!(framing, Framing::Chunked);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("\r\ntransfer-encoding: chunked\r\n"),
            "{head}"
        );
        assert!(
            head.contains("\r\ncontent-type: text/event-stream\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\ndate: "), "{head}");
        assert!(head.ends_with("\r\n\r\n"));
        assert!(!head.contains("connection"), "{head}");

        let (head, framing) = encoded(StatusCode::NOT_FOUND, Some(7), false);
        assert_eq!(framing, Framing::Length(7));
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
        assert!(head.contains("\r\ncontent-length: 7\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");

        let (head, framing) = encoded(StatusCode::NO_CONTENT, Some(0), true);
        assert_eq!(framing, Framing::NoBody);
        assert!(!head.contains("content-length"), "{head}");
    }
}
