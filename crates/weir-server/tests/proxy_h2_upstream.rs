//! HTTP/2 to the upstream (h2c by prior knowledge, against `weir mock-llm`, which serves
//! it on its HTTP/1.1 port): streams share a few connections, and each is paced by its own
//! flow-control window, released only as its client takes bytes.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Notify;
use weir_server::mock_llm::MockLlmConfig;

const H2C: &str = "upstream_http2 = \"prior_knowledge\"";

fn route(extra: &str) -> String {
    format!("{H2C}\n{extra}")
}

/// A client that sends a streaming request and then never reads: a 4 KiB receive window.
async fn stalled_client(proxy: SocketAddr, path: &str) -> tokio::net::TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut tcp = socket.connect(proxy).await.expect("connect");
    let body = r#"{"model":"m","stream":true,"messages":[]}"#;
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: weir\r\nauthorization: Bearer key-1\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.expect("request");
    tcp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_streams_arrive_whole_over_two_connections() {
    let mock = start().await;
    let upstream = mock.url("/v1/chat/completions?tokens=40&seed=5");
    let proxy = start_proxy("openai", &upstream, "", &route("upstream_connections = 2")).await;
    let direct = read_all(
        proxy_request(&client(), &upstream, false)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let expected = openai_tokens(&parse_sse(&direct.0));
    assert_eq!(expected.len(), 40);
    let before = mock.stats().connections_accepted;
    let url = format!("http://{}/v1/chat/completions", proxy.local_addr());
    let mut streams = Vec::new();
    for _ in 0..50 {
        let (client, url) = (client(), url.clone());
        streams.push(tokio::spawn(async move {
            read_all(proxy_request(&client, &url, false).send().await.unwrap()).await
        }));
    }
    for stream in streams {
        let (body, error) = stream.await.expect("stream task");
        assert!(error.is_none(), "{error:?}");
        let events = parse_sse(&body);
        assert_eq!(openai_tokens(&events), expected);
        assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    }
    let used = mock.stats().connections_accepted - before;
    assert!(
        (1..=2).contains(&used),
        "{used} upstream connections for 50 streams"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_added_only_when_the_upstream_allows_no_more_streams() {
    let mock = start_with(MockLlmConfig {
        http2_max_streams: 4,
        ..MockLlmConfig::default()
    })
    .await;
    let upstream = mock.url("/v1/chat/completions?tokens=0&rate=20");
    let proxy = start_proxy("openai", &upstream, "", &route("upstream_connections = 1")).await;
    let url = format!("http://{}/v1/chat/completions", proxy.local_addr());
    let mut open = Vec::new();
    for _ in 0..10 {
        let response = proxy_request(&client(), &url, false)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        open.push(response);
    }
    let stats = wait_for(|| mock.stats(), "10 open streams", |s| s.streams_open == 10).await;
    assert_eq!(
        stats.connections_open, 3,
        "10 streams at 4 per connection: {stats:?}"
    );
    // The gauge is process-wide, and the other tests here use the same route: at least ours.
    let metrics = client()
        .get(format!("http://{}/metrics", proxy.local_addr()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let open: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("weir_upstream_http2_connections{route=\"/v1/chat/completions\"} ")
        })
        .unwrap_or_else(|| panic!("no connections gauge in {metrics}"))
        .parse()
        .unwrap();
    assert!(open >= 3.0, "{open}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_back_its_stream_and_no_other() {
    let mock = start().await;
    // Endless and as fast as it may: only flow control stops a stream.
    let proxy = start_proxy(
        "openai",
        &mock.url("/v1/chat/completions?tokens=0&token_size=64"),
        "",
        &route("upstream_connections = 1\nreceive_buffer = \"16KiB\"\nbuffer = \"16KiB\""),
    )
    .await;
    let _stalled = stalled_client(proxy.local_addr(), "/v1/chat/completions").await;
    let paused = wait_for(
        || mock.stats(),
        "the stalled stream to be paused at the mock for 1 s",
        |s| s.streams_open == 1 && s.time_blocked_ms > 1000.0,
    )
    .await;
    // The other stream on the same connection runs to its end meanwhile.
    let url = format!("http://{}/v1/chat/completions", proxy.local_addr());
    let request = client()
        .post(url)
        .header("authorization", "Bearer key-1")
        .body(r#"{"model":"m","stream":true,"max_tokens":2000,"messages":[]}"#);
    let (body, error) = read_all(request.send().await.unwrap()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(openai_tokens(&parse_sse(&body)).len(), 2000);
    let done = wait_for(
        || mock.stats(),
        "the second stream's end",
        |s| s.streams_open == 1,
    )
    .await;
    let later = wait_for(
        || mock.stats(),
        "another second of pause",
        |s| s.time_blocked_ms > done.time_blocked_ms + 1000.0,
    )
    .await;
    assert!(paused.bytes_sent > 0);
    assert_eq!(later.connections_accepted, 1, "{later:?}");
    assert_eq!(
        later.bytes_sent, done.bytes_sent,
        "the stalled stream went on sending: {done:?} then {later:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_resets_its_stream_and_the_connection_carries_on() {
    let mock = start().await;
    let upstream = mock.url("/v1/chat/completions?tokens=0&rate=50");
    let proxy = start_proxy("openai", &upstream, "", &route("upstream_connections = 1")).await;
    let url = format!("http://{}/v1/chat/completions", proxy.local_addr());
    let mut first = proxy_request(&client(), &url, false)
        .send()
        .await
        .unwrap()
        .bytes_stream();
    let mut second = proxy_request(&client(), &url, false)
        .send()
        .await
        .unwrap()
        .bytes_stream();
    for body in [&mut first, &mut second] {
        body.next().await.expect("a chunk").expect("bytes");
    }
    drop(first);
    let stats = wait_for(
        || mock.stats(),
        "the dropped stream to end at the mock",
        |s| s.streams_aborted == 1,
    )
    .await;
    assert_eq!(stats.streams_open, 1, "{stats:?}");
    let mut more = 0;
    while more < 1000 {
        let chunk: Bytes = second.next().await.expect("more").expect("bytes");
        more += chunk.len();
    }
    let stats = mock.stats();
    assert_eq!(
        (stats.connections_accepted, stats.connections_open),
        (1, 1),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_without_http2_is_a_502_naming_the_route() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let http1_only = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut head = [0u8; 1024];
            let _ = tcp.read(&mut head).await;
            let _ = tcp
                .write_all(b"HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
    let upstream = format!("http://{addr}/v1/chat/completions");
    let proxy = start_proxy("openai", &upstream, "", H2C).await;
    let url = format!("http://{}/v1/chat/completions", proxy.local_addr());
    let response = proxy_request(&client(), &url, false).send().await.unwrap();
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "upstream_protocol", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("/v1/chat/completions") && message.contains("HTTP/2"),
        "{message}"
    );
    http1_only.abort();
}

/// An HTTP/2 upstream whose first connection sends three tokens of its first stream and,
/// once `go` is notified, GOAWAY with an error; later connections serve whole streams.
async fn going_away_upstream(go: Arc<Notify>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut first = true;
        while let Ok((tcp, _)) = listener.accept().await {
            let goes_away = std::mem::take(&mut first);
            let go = Arc::clone(&go);
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((_request, mut respond))) = conn.accept().await {
                    let head = axum::http::Response::builder()
                        .status(200)
                        .header("content-type", "text/event-stream")
                        .body(())
                        .unwrap();
                    let Ok(mut send) = respond.send_response(head, false) else {
                        return;
                    };
                    for i in 0..3 {
                        let frame = format!(
                            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"t{i} \"}}}}]}}\n\n"
                        );
                        let _ = send.send_data(Bytes::from(frame), false);
                    }
                    if goes_away {
                        // The connection is driven (its frames flushed) until the test says.
                        tokio::select! {
                            _ = go.notified() => {}
                            _ = conn.accept() => {}
                        }
                        conn.abrupt_shutdown(h2::Reason::INTERNAL_ERROR);
                        while conn.accept().await.is_some() {}
                        return;
                    }
                    let _ = send.send_data(Bytes::from_static(b"data: [DONE]\n\n"), true);
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_mid_stream_ends_it_with_an_error_event_and_the_next_goes_to_a_new_connection() {
    let go = Arc::new(Notify::new());
    let (addr, upstream) = going_away_upstream(Arc::clone(&go)).await;
    let proxy = start_proxy(
        "openai",
        &format!("http://{addr}/v1/chat/completions"),
        "",
        H2C,
    )
    .await;
    let url = format!("http://{}/v1/chat/completions", proxy.local_addr());
    let mut response = proxy_request(&client(), &url, false).send().await.unwrap();
    let mut body = String::new();
    while body.matches("\"t").count() < 3 {
        let chunk = response.chunk().await.expect("body").expect("a chunk");
        body.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
    }
    go.notify_one();
    body.push_str(&read_all(response).await.0);
    let events = parse_sse(&body);
    assert_eq!(openai_tokens(&events), ["t0 ", "t1 ", "t2 "], "{body}");
    let last = events.last().expect("events").json();
    assert_eq!(last["error"]["type"], "upstream_error", "{body}");
    let (body, error) = read_all(proxy_request(&client(), &url, false).send().await.unwrap()).await;
    assert!(error.is_none(), "{error:?}");
    let events = parse_sse(&body);
    assert_eq!(openai_tokens(&events).len(), 3, "{body}");
    assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    upstream.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reserves_its_window_with_its_buffer() {
    let mock = start().await;
    // 3 streams of 16 KiB + 8 KiB fit in 72 KiB; over HTTP/1.1 four 16 KiB ones would.
    let proxy = start_proxy(
        "openai",
        &mock.url("/v1/chat/completions?tokens=0&rate=20"),
        "memory_budget = \"72KiB\"",
        &route("buffer = \"16KiB\"\nreceive_buffer = \"8KiB\""),
    )
    .await;
    let url = format!("http://{}/v1/chat/completions", proxy.local_addr());
    let mut open = Vec::new();
    for _ in 0..3 {
        let response = proxy_request(&client(), &url, false).send().await.unwrap();
        assert_eq!(response.status(), 200);
        open.push(response);
    }
    let refused = proxy_request(&client(), &url, false).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("memory"),
        "{body}"
    );
}
