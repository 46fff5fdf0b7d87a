//! Each injected fault as a client sees it, over real HTTP on loopback.

mod common;

use std::io::ErrorKind;
use std::time::Duration;

use common::{
    anthropic_tokens, client, has_io_kind, openai_tokens, parse_sse, read_all, start, wait_for,
};
use serde_json::{json, Value};

#[tokio::test]
async fn reset_aborts_the_connection_after_n_tokens() {
    let mock = start().await;
    let resp = client()
        .get(mock.url("/v1/chat/completions?tokens=100&fault=reset&fault_after=7"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (body, err) = read_all(resp).await;
    let err = err.expect("the client sees an error, not a clean end");
    assert!(
        has_io_kind(&err, ErrorKind::ConnectionReset),
        "a TCP reset, not a clean close: {err:?}"
    );
    let complete = &body[..body.rfind("\n\n").map_or(0, |i| i + 2)];
    let events = parse_sse(complete);
    assert_eq!(
        openai_tokens(&events).len(),
        7,
        "every frame before the fault arrives"
    );
    assert!(!body.contains("[DONE]"));
    let s = wait_for(
        || mock.stats(),
        "the reset stream to close",
        |s| s.streams_open == 0,
    )
    .await;
    assert_eq!(
        (s.streams_reset, s.streams_aborted, s.faults_injected),
        (1, 0, 1)
    );
}

#[tokio::test]
async fn reset_of_a_non_streaming_request_is_a_client_error() {
    let mock = start().await;
    let resp = client()
        .post(mock.url("/v1/messages?fault=reset"))
        .json(&json!({"max_tokens": 10, "messages": []}))
        .send()
        .await;
    let failed = match resp {
        Err(_) => true,
        Ok(r) => r.json::<Value>().await.is_err(),
    };
    assert!(failed, "no JSON body arrives");
}

#[tokio::test]
async fn stall_keeps_the_connection_open_and_silent() {
    let mock = start().await;
    let mut resp = client()
        .get(mock.url("/v1/messages?tokens=50&fault=stall&fault_after=3"))
        .send()
        .await
        .unwrap();
    let mut body = Vec::new();
    // Read until the 3 tokens are in; the stream then goes silent.
    while anthropic_tokens(&parse_sse(&String::from_utf8_lossy(&body))).len() < 3 {
        let chunk = tokio::time::timeout(common::DEADLINE, resp.chunk())
            .await
            .expect("the first tokens arrive")
            .unwrap()
            .expect("stream still open");
        body.extend_from_slice(&chunk);
    }
    let silent = tokio::time::timeout(Duration::from_millis(300), resp.chunk()).await;
    assert!(silent.is_err(), "nothing more is sent: {silent:?}");
    let s = mock.stats();
    assert_eq!(
        (s.streams_open, s.tokens_sent, s.faults_injected),
        (1, 3, 1)
    );
    drop(resp);
    let s = wait_for(
        || mock.stats(),
        "the stalled stream to be dropped",
        |s| s.streams_open == 0,
    )
    .await;
    assert_eq!(s.streams_aborted, 1, "the client gave up");
}

#[tokio::test]
async fn error_fault_is_an_in_band_error_event() {
    let mock = start().await;
    let c = client();

    let (body, err) = read_all(
        c.get(mock.url("/v1/chat/completions?tokens=20&fault=error&fault_after=4"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(err.is_none(), "the HTTP stream itself ends cleanly");
    let events = parse_sse(&body);
    assert_eq!(openai_tokens(&events[..events.len() - 1]).len(), 4);
    let last = events.last().unwrap().json();
    assert_eq!(last["error"]["type"], "server_error");
    assert!(last["error"]["message"].is_string());
    assert!(!body.contains("[DONE]"));

    let (body, _) = read_all(
        c.get(mock.url("/v1/messages?tokens=20&fault=error&fault_after=2"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let events = parse_sse(&body);
    assert_eq!(anthropic_tokens(&events).len(), 2);
    let last = events.last().unwrap();
    assert_eq!(last.event.as_deref(), Some("error"));
    assert_eq!(
        last.json(),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );
    assert!(!body.contains("message_stop"));
    assert_eq!(mock.stats().streams_finished, 2);
}

#[tokio::test]
async fn malformed_fault_sends_one_frame_that_is_not_json_then_goes_on() {
    let mock = start().await;
    let (body, err) = read_all(
        client()
            .get(mock.url("/v1/chat/completions?tokens=10&fault=malformed&fault_after=5"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(err.is_none());
    let events = parse_sse(&body);
    let bad: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.data != "[DONE]" && serde_json::from_str::<Value>(&e.data).is_err())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        bad,
        vec![6],
        "one bad frame, after the role chunk and 5 tokens"
    );
    let mut good = events.clone();
    good.remove(6);
    assert_eq!(openai_tokens(&good).len(), 10);
    assert_eq!(good.last().unwrap().data, "[DONE]");

    let (body, _) = read_all(
        client()
            .get(mock.url("/v1/messages?tokens=3&fault=malformed&fault_after=0"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let events = parse_sse(&body);
    assert_eq!(events[3].event.as_deref(), Some("content_block_delta"));
    assert!(serde_json::from_str::<Value>(&events[3].data).is_err());
    assert_eq!(
        events.last().unwrap().event.as_deref(),
        Some("message_stop")
    );
}

#[tokio::test]
async fn status_fault_answers_before_any_stream() {
    let mock = start().await;
    let c = client();
    let resp = c
        .post(mock.url("/v1/chat/completions?fault=status"))
        .json(&json!({"stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "server_error");

    let resp = c
        .post(mock.url("/v1/messages?fault=status"))
        .json(&json!({"stream": true, "max_tokens": 5, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 529);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "overloaded_error");

    let resp = c
        .get(mock.url("/v1/messages?fault=status&status=429"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["type"],
        "rate_limit_error"
    );
    let s = mock.stats();
    assert_eq!((s.streams_started, s.faults_injected), (0, 3));
}

#[tokio::test]
async fn non_streaming_error_and_malformed() {
    let mock = start().await;
    let c = client();
    let resp = c
        .get(mock.url("/v1/chat/completions?stream=false&tokens=5&fault=error"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    let resp = c
        .get(mock.url("/v1/messages?stream=false&tokens=5&fault=malformed"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.json::<Value>().await.is_err(),
        "body is not valid JSON"
    );
}
