//! weir's own HTTP/1.1 connections: keep-alive and pipelining, bodies that arrive in
//! pieces, streams framed in chunks, the requests it leaves to hyper (HEAD, HTTP/1.0,
//! `Expect`, heads too large), and the header timeout, all over raw loopback sockets.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: weir\r\n\r\n";

/// Reads one response with a `content-length` body; returns its head and body.
async fn read_sized(tcp: &mut TcpStream, pending: &mut Vec<u8>) -> (String, Vec<u8>) {
    let end = read_until(tcp, pending, b"\r\n\r\n").await;
    let head = String::from_utf8(pending.drain(..end).collect()).expect("ASCII head");
    let length: usize = header(&head, "content-length")
        .expect("content-length")
        .parse()
        .expect("a number");
    while pending.len() < length {
        read_more(tcp, pending).await;
    }
    let body = pending.drain(..length).collect();
    (head, body)
}

/// Reads one chunked response to its last chunk; returns its head and decoded body.
async fn read_chunked(tcp: &mut TcpStream, pending: &mut Vec<u8>) -> (String, Vec<u8>) {
    let end = read_until(tcp, pending, b"\r\n\r\n").await;
    let head = String::from_utf8(pending.drain(..end).collect()).expect("ASCII head");
    assert_eq!(
        header(&head, "transfer-encoding"),
        Some("chunked"),
        "{head}"
    );
    let mut body = Vec::new();
    loop {
        let line_end = read_until(tcp, pending, b"\r\n").await;
        let line = String::from_utf8(pending.drain(..line_end).collect()).expect("size line");
        let size = usize::from_str_radix(line.trim_end(), 16).expect("hex size");
        while pending.len() < size + 2 {
            read_more(tcp, pending).await;
        }
        body.extend(pending.drain(..size));
        assert_eq!(pending.drain(..2).collect::<Vec<_>>(), b"\r\n");
        if size == 0 {
            return (head, body);
        }
    }
}

/// Reads until `pending` holds `marker`; the index just past it.
async fn read_until(tcp: &mut TcpStream, pending: &mut Vec<u8>, marker: &[u8]) -> usize {
    loop {
        if let Some(at) = pending.windows(marker.len()).position(|w| w == marker) {
            return at + marker.len();
        }
        read_more(tcp, pending).await;
    }
}

async fn read_more(tcp: &mut TcpStream, pending: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout(DEADLINE, tcp.read(&mut chunk))
        .await
        .expect("more of the response in time")
        .expect("read");
    assert!(
        n > 0,
        "closed early; so far: {}",
        String::from_utf8_lossy(pending)
    );
    pending.extend_from_slice(&chunk[..n]);
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// Whether the server closes `tcp` within `within` (reads until EOF, failing on data).
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut rest = Vec::new();
    match tokio::time::timeout(within, tcp.read_to_end(&mut rest)).await {
        Ok(Ok(_)) | Ok(Err(_)) => true,
        Err(_) => false,
    }
}

#[tokio::test]
async fn edge_http1_pipelined_requests_are_answered_in_order_on_one_connection() {
    let mock = start().await;
    let proxy = start_proxy("openai", &mock.url("/v1/chat/completions"), "", "").await;
    let mut tcp = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let mut pending = Vec::new();
    let three = [
        HEALTHZ,
        b"GET /nowhere HTTP/1.1\r\nhost: weir\r\n\r\n",
        HEALTHZ,
    ]
    .concat();
    tcp.write_all(&three).await.unwrap();
    let (head, body) = read_sized(&mut tcp, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(header(&head, "date").is_some(), "{head}");
    assert_eq!(body, b"ok\n");
    let (head, _) = read_sized(&mut tcp, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, body) = read_sized(&mut tcp, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"ok\n");
    assert!(pending.is_empty());
}

#[tokio::test]
async fn edge_http1_a_body_in_pieces_streams_back_chunked_and_the_connection_is_reused() {
    let mock = start().await;
    let proxy = start_proxy("openai", &mock.url("/v1/chat/completions"), "", "").await;
    let mut tcp = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let body = br#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\nauthorization: Bearer key-1\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut pending = Vec::new();
    for round in 0..2 {
        // The head cut mid-line, the body in three writes.
        let (a, b) = head.as_bytes().split_at(20);
        for piece in [a, b, &body[..5], &body[5..30], &body[30..]] {
            tcp.write_all(piece).await.unwrap();
            tcp.flush().await.unwrap();
            tokio::task::yield_now().await;
        }
        let (head, streamed) = read_chunked(&mut tcp, &mut pending).await;
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n"),
            "round {round}: {head}"
        );
        assert_eq!(header(&head, "content-type"), Some("text/event-stream"));
        let events = parse_sse(&String::from_utf8(streamed).expect("UTF-8"));
        assert!(!openai_tokens(&events).is_empty(), "round {round}: tokens");
        assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    }
    assert_eq!(mock.stats().requests, 2);
}

#[tokio::test]
async fn edge_http1_a_client_that_stops_mid_body_is_let_go_at_once() {
    let mock = start().await;
    let proxy = start_proxy(
        "openai",
        &mock.url("/v1/chat/completions"),
        "body_timeout = \"60s\"",
        "",
    )
    .await;
    let mut tcp = TcpStream::connect(proxy.local_addr()).await.unwrap();
    tcp.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\nauthorization: Bearer key-1\r\n\
          content-length: 100\r\n\r\n{\"model\":",
    )
    .await
    .unwrap();
    tcp.shutdown().await.unwrap();
    assert!(
        closed_within(&mut tcp, Duration::from_secs(5)).await,
        "closed long before body_timeout"
    );
    assert_eq!(
        mock.stats().requests,
        0,
        "an unfinished body is never sent upstream"
    );
}

#[tokio::test]
async fn edge_http1_requests_weir_leaves_to_hyper_are_still_served() {
    let mock = start().await;
    let proxy = start_proxy("openai", &mock.url("/v1/chat/completions"), "", "").await;
    let addr = proxy.local_addr();

    // HEAD: the head only, then the connection goes on (with hyper).
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut pending = Vec::new();
    tcp.write_all(&[b"HEAD /healthz HTTP/1.1\r\nhost: weir\r\n\r\n", HEALTHZ].concat())
        .await
        .unwrap();
    let end = read_until(&mut tcp, &mut pending, b"\r\n\r\n").await;
    let head = String::from_utf8(pending.drain(..end).collect()).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, body) = read_sized(&mut tcp, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"ok\n");

    // HTTP/1.0: answered, then closed.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut all))
        .await
        .expect("closed")
        .unwrap();
    let all = String::from_utf8(all).unwrap();
    assert!(all.starts_with("HTTP/1.0 200"), "{all}");
    assert!(all.ends_with("ok\n"), "{all}");

    // Expect: 100-continue gets its interim answer first.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\nauthorization: Bearer key-1\r\n\
          expect: 100-continue\r\ncontent-length: 2\r\n\r\n",
    )
    .await
    .unwrap();
    let mut pending = Vec::new();
    let end = read_until(&mut tcp, &mut pending, b"\r\n\r\n").await;
    let interim = String::from_utf8(pending.drain(..end).collect()).unwrap();
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    tcp.write_all(b"[]").await.unwrap();
    let (head, body) = read_sized(&mut tcp, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("not an object"));

    // A head past 8 KiB: 431, as hyper answers it.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let big = format!(
        "GET /healthz HTTP/1.1\r\nx-big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let _ = tcp.write_all(big.as_bytes()).await;
    let mut pending = Vec::new();
    let end = read_until(&mut tcp, &mut pending, b"\r\n").await;
    let status = String::from_utf8(pending[..end].to_vec()).unwrap();
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");
}

#[tokio::test]
async fn edge_http1_silent_or_idle_connections_close_after_header_timeout() {
    let mock = start().await;
    let proxy = start_proxy(
        "openai",
        &mock.url("/v1/chat/completions"),
        "header_timeout = \"300ms\"",
        "",
    )
    .await;
    let addr = proxy.local_addr();

    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nhost:")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(HEALTHZ).await.unwrap();
    let (head, _) = read_sized(&mut idle, &mut Vec::new()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    assert!(
        closed_within(&mut half, DEADLINE).await,
        "a half-sent head is cut off"
    );
    assert!(
        closed_within(&mut idle, DEADLINE).await,
        "an idle connection is closed"
    );
}
