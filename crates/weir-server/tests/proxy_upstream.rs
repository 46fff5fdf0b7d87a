//! weir's client to the upstream: connections reused between streams, idle connections the
//! upstream closed left alone, and each way HTTP/1.1 frames a body, against a hand-written
//! upstream on loopback that counts its connections.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKENS: [&str; 3] = ["Hello", ", ", "world"];

/// How the hand-written upstream frames its answers, and whether it keeps connections.
#[derive(Clone, Copy)]
enum Framing {
    /// Chunked, one chunk per event; the connection is kept for the next request.
    Chunked,
    /// Chunked, then the connection is closed without saying so (an idle timeout).
    ChunkedThenClose,
    /// A content-length body; the connection is kept.
    Length,
    /// No length, `connection: close`: the body ends where the connection does.
    UntilClose,
    /// Chunked and kept; the second request on a connection gets half a head, then a close.
    HalfHeadOnSecond,
}

struct Upstream {
    url: String,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

async fn upstream(framing: Framing) -> Upstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/v1/chat/completions",
        listener.local_addr().unwrap()
    );
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&connections);
    let requested = Arc::clone(&requests);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_connection(tcp, framing, Arc::clone(&requested)));
        }
    });
    Upstream {
        url,
        connections,
        requests,
    }
}

/// Answers each request on `tcp` with the same three-token stream.
async fn serve_connection(mut tcp: TcpStream, framing: Framing, requests: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    for nth in 0.. {
        let Some(request_len) = read_request(&mut tcp, &mut buf).await else {
            return;
        };
        buf.drain(..request_len);
        requests.fetch_add(1, Ordering::SeqCst);
        if nth == 1 && matches!(framing, Framing::HalfHeadOnSecond) {
            let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-").await;
            return;
        }
        let events: Vec<String> = TOKENS
            .iter()
            .map(|t| {
                format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{t}\"}},\"finish_reason\":null}}]}}\n\n")
            })
            .chain(["data: [DONE]\n\n".to_string()])
            .collect();
        let sse = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n";
        let reply = match framing {
            Framing::Chunked | Framing::ChunkedThenClose | Framing::HalfHeadOnSecond => {
                let mut r = format!("{sse}transfer-encoding: chunked\r\n\r\n");
                for e in &events {
                    r += &format!("{:x}\r\n{e}\r\n", e.len());
                }
                r + "0\r\n\r\n"
            }
            Framing::Length => {
                let body = events.concat();
                format!("{sse}content-length: {}\r\n\r\n{body}", body.len())
            }
            Framing::UntilClose => format!("{sse}connection: close\r\n\r\n{}", events.concat()),
        };
        if tcp.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
        if matches!(framing, Framing::ChunkedThenClose | Framing::UntilClose) {
            return;
        }
    }
}

/// Reads one request (head and content-length body) into `buf`; its length, or None at
/// the connection's end.
async fn read_request(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + length {
                return Some(head_end + 4 + length);
            }
        }
        let mut piece = [0u8; 4096];
        match tcp.read(&mut piece).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&piece[..n]),
        }
    }
}

/// Sends `n` streams one after another through a proxy of `framing`'s upstream; each
/// must arrive whole. Returns the upstream's connection count.
async fn streams_in_a_row(framing: Framing, n: usize) -> usize {
    let upstream = upstream(framing).await;
    let proxy = start_proxy("openai", &upstream.url, "", "").await;
    let client = client();
    for i in 0..n {
        let resp = proxy_request(&client, &proxy.url("/v1/chat/completions"), false)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "stream {i}");
        let (body, err) = read_all(resp).await;
        assert!(err.is_none(), "stream {i}: {err:?}: {body}");
        let events = parse_sse(&body);
        assert_eq!(openai_tokens(&events), TOKENS, "stream {i}: {body}");
        assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    }
    upstream.connections.load(Ordering::SeqCst)
}

#[tokio::test]
async fn streams_one_after_another_reuse_one_upstream_connection() {
    assert_eq!(streams_in_a_row(Framing::Chunked, 3).await, 1);
    assert_eq!(streams_in_a_row(Framing::Length, 3).await, 1);
}

#[tokio::test]
async fn connections_the_upstream_closed_are_not_reused() {
    assert_eq!(streams_in_a_row(Framing::ChunkedThenClose, 3).await, 3);
}

#[tokio::test]
async fn a_body_that_ends_with_its_connection_is_whole() {
    assert_eq!(streams_in_a_row(Framing::UntilClose, 2).await, 2);
}

#[tokio::test]
async fn a_request_the_upstream_began_to_answer_is_not_sent_again() {
    let upstream = upstream(Framing::HalfHeadOnSecond).await;
    let proxy = start_proxy("openai", &upstream.url, "", "").await;
    let client = client();
    let url = proxy.url("/v1/chat/completions");
    let first = proxy_request(&client, &url, false).send().await.unwrap();
    let (body, _) = read_all(first).await;
    assert_eq!(openai_tokens(&parse_sse(&body)), TOKENS);
    let second = proxy_request(&client, &url, false).send().await.unwrap();
    assert_eq!(second.status(), 502);
    // The second request went out once, on the kept connection: part of an answer came
    // back, so the upstream may have acted on it.
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 2);
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
}
