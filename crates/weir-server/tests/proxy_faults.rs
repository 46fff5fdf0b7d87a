//! Upstream failures: before the headers a proper status, after them one error event of
//! the route's protocol, then the end.

mod common;

use common::*;

async fn through(protocol: &str, upstream_query: &str, extra: &str) -> (u16, String) {
    let mock = start().await;
    let path = if protocol == "openai" {
        "/v1/chat/completions"
    } else {
        "/v1/messages"
    };
    let proxy = start_proxy(
        protocol,
        &mock.url(&format!("{path}{upstream_query}")),
        "",
        extra,
    )
    .await;
    let resp = proxy_request(&client(), &proxy.url(path), protocol == "anthropic")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let (body, err) = read_all(resp).await;
    assert!(
        err.is_none(),
        "the client sees a clean end after the error event: {err:?}"
    );
    (status, body)
}

fn last_event(body: &str) -> Event {
    parse_sse(body).pop().expect("at least one event")
}

#[tokio::test]
async fn a_reset_mid_stream_becomes_an_error_event() {
    let (status, body) = through("openai", "?tokens=100&fault=reset&fault_after=10", "").await;
    assert_eq!(status, 200);
    assert_eq!(openai_tokens(&parse_sse(&body)).len(), 10);
    let last = last_event(&body).json();
    assert_eq!(last["error"]["code"], "upstream_error", "{body}");

    let (_, body) = through("anthropic", "?tokens=100&fault=reset&fault_after=10", "").await;
    let last = last_event(&body);
    assert_eq!(last.event.as_deref(), Some("error"));
    assert_eq!(last.json()["type"], "error");
}

#[tokio::test]
async fn an_upstream_error_event_is_passed_on_once() {
    let (_, body) = through("openai", "?tokens=100&fault=error&fault_after=5", "").await;
    let errors = parse_sse(&body)
        .iter()
        .filter(|e| e.data.contains("\"error\""))
        .count();
    assert_eq!(errors, 1, "{body}");
}

#[tokio::test]
async fn a_malformed_frame_becomes_an_error_event() {
    let (_, body) = through("openai", "?tokens=100&fault=malformed&fault_after=5", "").await;
    let last = last_event(&body).json();
    assert_eq!(last["error"]["code"], "upstream_malformed", "{body}");
}

#[tokio::test]
async fn a_silent_upstream_times_out_in_band_after_keepalives() {
    let (_, body) = through(
        "openai",
        "?tokens=100&fault=stall&fault_after=3",
        "idle_timeout = \"600ms\"\nkeepalive = \"100ms\"",
    )
    .await;
    assert!(body.contains(": keep-alive\n\n"), "{body}");
    let last = last_event(&body.replace(": keep-alive\n\n", "")).json();
    assert_eq!(last["error"]["code"], "upstream_timeout", "{body}");
}

#[tokio::test]
async fn upstream_status_errors_are_passed_through() {
    let (status, body) = through("openai", "?fault=status&status=500", "").await;
    assert_eq!(status, 500, "{body}");
}

#[tokio::test]
async fn no_upstream_is_502_and_no_headers_in_time_is_504() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = start_proxy(
        "openai",
        &format!("http://127.0.0.1:{port}/v1/chat/completions"),
        "",
        "",
    )
    .await;
    let resp = proxy_request(&client(), &proxy.url("/v1/chat/completions"), false)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_unreachable");

    let mock = start().await;
    let proxy = start_proxy(
        "openai",
        &mock.url("/v1/chat/completions?stream=false&fault=stall"),
        "",
        "first_byte_timeout = \"300ms\"",
    )
    .await;
    let resp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("authorization", "Bearer key-1")
        .body(r#"{"model":"m","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
}

/// A hand-written upstream that answers one request with `body` as an event stream.
async fn one_shot_upstream(body: String) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/v1/chat/completions",
        listener.local_addr().unwrap()
    );
    let upstream = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = tcp.read(&mut buf).await.unwrap();
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        // The client may stop reading once it has seen enough.
        let _ = tcp.write_all(head.as_bytes()).await;
        let _ = tcp.write_all(body.as_bytes()).await;
    });
    (url, upstream)
}

/// The last event weir sends for a one-shot upstream's `body`, through a route with `extra`.
async fn last_event_through(body: String, extra: &str) -> Event {
    let (url, upstream) = one_shot_upstream(body).await;
    let proxy = start_proxy("openai", &url, "", extra).await;
    let resp = proxy_request(&client(), &proxy.url("/v1/chat/completions"), false)
        .send()
        .await
        .unwrap();
    let (body, _) = read_all(resp).await;
    upstream.await.unwrap();
    last_event(&body)
}

#[tokio::test]
async fn an_upstream_cannot_open_unbounded_text_blocks() {
    let body = "data: {\"choices\":[{\"index\":1000,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\ndata: [DONE]\n\n";
    let last = last_event_through(body.to_string(), "redact = [\"email\"]")
        .await
        .json();
    assert_eq!(last["error"]["code"], "upstream_malformed", "{last}");
    let message = last["error"]["message"].as_str().unwrap();
    assert!(message.contains("text block 1000"), "{last}");
}

#[tokio::test]
async fn an_upstream_event_must_fit_in_half_the_stream_buffer() {
    let token = "x".repeat(3000);
    let body = format!(
        "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{token}\"}},\"finish_reason\":null}}]}}\n\ndata: [DONE]\n\n"
    );
    let last = last_event_through(body.clone(), "buffer = \"4KiB\"")
        .await
        .json();
    assert_eq!(last["error"]["code"], "upstream_malformed", "{last}");
    let message = last["error"]["message"].as_str().unwrap();
    // Refused by the decoder's limit (half the buffer) or, when what the stream holds
    // around it is counted first, by the buffer itself.
    assert!(
        message.contains("2048 bytes") || message.contains("buffer of 4096 bytes"),
        "{last}"
    );
    // The default share (64 KiB) takes the same event.
    assert_eq!(last_event_through(body, "").await.data, "[DONE]");
}
