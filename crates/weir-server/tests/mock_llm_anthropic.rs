//! The Anthropic Messages format, streamed and not, over real HTTP on loopback.

mod common;

use common::{anthropic_tokens, client, parse_sse, read_all, start};
use serde_json::{json, Value};
use weir_server::mock_llm::{Knobs, TokenGen};

fn request(stream: bool, max_tokens: u64) -> Value {
    json!({
        "model": "claude-test",
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [{"role": "user", "content": "Hello"}],
    })
}

#[tokio::test]
async fn stream_events_come_in_the_documented_order() {
    let mock = start().await;
    let resp = client()
        .post(mock.url("/v1/messages?tokens=10"))
        .header("anthropic-version", "2023-06-01")
        .json(&request(true, 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (body, err) = read_all(resp).await;
    assert!(err.is_none(), "{err:?}");
    let events = parse_sse(&body);
    let names: Vec<&str> = events.iter().map(|e| e.event.as_deref().unwrap()).collect();
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(["content_block_delta"; 10]);
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected);
    for e in &events {
        assert_eq!(
            e.json()["type"],
            e.event.as_deref().unwrap(),
            "type matches the event name"
        );
    }

    let start = events[0].json();
    let message = &start["message"];
    assert!(message["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(message["type"], "message");
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["model"], "claude-test");
    assert_eq!(message["content"], json!([]));
    assert_eq!(message["stop_reason"], Value::Null);
    assert!(message["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        events[1].json()["content_block"],
        json!({"type": "text", "text": ""})
    );
    for e in &events[3..13] {
        let v = e.json();
        assert_eq!(v["index"], 0);
        assert_eq!(v["delta"]["type"], "text_delta");
    }
    let delta = events[14].json();
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["delta"]["stop_sequence"], Value::Null);
    assert_eq!(delta["usage"]["output_tokens"], 10);

    let expected: Vec<String> = TokenGen::new(&Knobs::default())
        .take(10)
        .map(|t| t.text)
        .collect();
    assert_eq!(anthropic_tokens(&events), expected);
}

#[tokio::test]
async fn max_tokens_ends_with_stop_reason_max_tokens() {
    let mock = start().await;
    let resp = client()
        .post(mock.url("/v1/messages?tokens=0"))
        .json(&request(true, 6))
        .send()
        .await
        .unwrap();
    let (body, _) = read_all(resp).await;
    let events = parse_sse(&body);
    assert_eq!(anthropic_tokens(&events).len(), 6);
    let delta = events
        .iter()
        .find(|e| e.event.as_deref() == Some("message_delta"))
        .unwrap();
    assert_eq!(delta.json()["delta"]["stop_reason"], "max_tokens");
}

#[tokio::test]
async fn non_streaming_is_one_message() {
    let mock = start().await;
    let resp = client()
        .post(mock.url("/v1/messages?tokens=9"))
        .json(&request(false, 100))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "claude-test");
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["stop_sequence"], Value::Null);
    let text: String = TokenGen::new(&Knobs::default())
        .take(9)
        .map(|t| t.text)
        .collect();
    assert_eq!(v["content"], json!([{"type": "text", "text": text}]));
    assert_eq!(v["usage"]["output_tokens"], 9);
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn bad_requests_are_400_in_anthropic_error_shape() {
    let mock = start().await;
    let resp = client()
        .post(mock.url("/v1/messages?ttft_ms=x"))
        .json(&request(true, 5))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let resp = client()
        .post(mock.url("/v1/messages"))
        .body("[1, 2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<Value>().await.unwrap()["type"], "error");
}
