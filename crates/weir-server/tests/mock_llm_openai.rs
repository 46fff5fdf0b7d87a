//! The OpenAI Chat Completions format, streamed and not, over real HTTP on loopback.

mod common;

use common::{client, openai_tokens, parse_sse, read_all, start, start_with};
use serde_json::{json, Value};
use weir_server::mock_llm::{Knobs, MockLlmConfig, TokenGen};

#[tokio::test]
async fn stream_has_the_documented_shape() {
    let mock = start().await;
    let resp = client()
        .post(mock.url("/v1/chat/completions?tokens=25"))
        .json(&json!({"model": "gpt-test", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (body, err) = read_all(resp).await;
    assert!(err.is_none(), "{err:?}");
    let events = parse_sse(&body);
    assert!(
        events.iter().all(|e| e.event.is_none()),
        "OpenAI frames carry no event name"
    );
    assert_eq!(events.last().unwrap().data, "[DONE]");

    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| e.json())
        .collect();
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"), "{id}");
    for c in &chunks {
        assert_eq!(c["id"], id);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert!(c["created"].as_u64().unwrap() > 1_600_000_000);
        assert_eq!(c["model"], "gpt-test");
        assert_eq!(c["choices"][0]["index"], 0);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let last = &chunks[chunks.len() - 1]["choices"][0];
    assert_eq!(last["finish_reason"], "stop");
    assert_eq!(last["delta"], json!({}));
    for c in &chunks[1..chunks.len() - 1] {
        assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
    }

    let tokens = openai_tokens(&events);
    assert_eq!(tokens.len(), 25);
    let expected: Vec<String> = TokenGen::new(&Knobs::default())
        .take(25)
        .map(|t| t.text)
        .collect();
    assert_eq!(tokens, expected, "the text is the seeded token sequence");

    let s = mock.stats();
    assert_eq!(
        (s.streams_started, s.streams_finished, s.streams_open),
        (1, 1, 0)
    );
    assert_eq!(s.tokens_sent, 25);
    assert_eq!(s.bytes_sent, body.len() as u64);
}

#[tokio::test]
async fn get_streams_with_query_knobs_and_server_defaults() {
    let mock = start_with(MockLlmConfig {
        knobs: Knobs {
            tokens: 7,
            token_size: 20,
            ..Knobs::default()
        },
        ..MockLlmConfig::default()
    })
    .await;
    let c = client();
    let (body, _) = read_all(
        c.get(mock.url("/v1/chat/completions"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let tokens = openai_tokens(&parse_sse(&body));
    assert_eq!(tokens.len(), 7, "server default");
    assert!(tokens.iter().all(|t| t.len() >= 20), "{tokens:?}");
    let url = mock.url("/v1/chat/completions?tokens=3&token_size=1&seed=9");
    let (body, _) = read_all(c.get(url).send().await.unwrap()).await;
    let tokens = openai_tokens(&parse_sse(&body));
    let knobs = Knobs {
        seed: 9,
        token_size: 1,
        ..Knobs::default()
    };
    let expected: Vec<String> = TokenGen::new(&knobs).take(3).map(|t| t.text).collect();
    assert_eq!(tokens, expected);
}

#[tokio::test]
async fn max_tokens_caps_the_stream_and_usage_is_reported() {
    let mock = start().await;
    let resp = client()
        .post(mock.url("/v1/chat/completions?tokens=0"))
        .json(
            &json!({"model": "m", "stream": true, "max_completion_tokens": 4,
                      "stream_options": {"include_usage": true}, "messages": []}),
        )
        .send()
        .await
        .unwrap();
    let (body, _) = read_all(resp).await;
    let events = parse_sse(&body);
    assert_eq!(openai_tokens(&events).len(), 4);
    let n = events.len();
    assert_eq!(
        events[n - 3].json()["choices"][0]["finish_reason"],
        "length"
    );
    let usage = events[n - 2].json();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 4);
    let u = &usage["usage"];
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + 4)
    );
}

#[tokio::test]
async fn non_streaming_is_one_chat_completion() {
    let mock = start().await;
    let c = client();
    let resp = c
        .post(mock.url("/v1/chat/completions?tokens=12"))
        .json(&json!({"model": "gpt-x", "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-x");
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "stop");
    let text: String = TokenGen::new(&Knobs::default())
        .take(12)
        .map(|t| t.text)
        .collect();
    assert_eq!(choice["message"]["content"], text);
    assert_eq!(v["usage"]["completion_tokens"], 12);

    let v: Value = c
        .get(mock.url("/v1/chat/completions?stream=false&tokens=3"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(mock.stats().streams_started, 0, "no stream was opened");
}

#[tokio::test]
async fn bad_requests_are_400_with_a_json_error() {
    let mock = start().await;
    let c = client();
    for (url, body) in [
        ("/v1/chat/completions?tokens=abc", ""),
        ("/v1/chat/completions?token=5", ""),
        ("/v1/chat/completions?rate=-1", ""),
        ("/v1/chat/completions?fault=explode", ""),
        ("/v1/chat/completions", "{not json"),
        ("/v1/chat/completions", r#"{"stream": "yes"}"#),
        ("/v1/chat/completions?tokens=0", r#"{"stream": false}"#),
    ] {
        let resp = c.post(mock.url(url)).body(body).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{url} {body}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert!(v["error"]["message"].as_str().unwrap().len() > 5);
    }
    let resp = c.get(mock.url("/nowhere")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.json::<Value>().await.unwrap()["error"]["message"].is_string());
    assert_eq!(mock.stats().streams_started, 0);
}

#[tokio::test]
async fn stats_endpoint_matches_the_library_counters() {
    let mock = start().await;
    let c = client();
    read_all(
        c.get(mock.url("/v1/chat/completions?tokens=5"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let http: weir_server::mock_llm::MockStats = c
        .get(mock.url("/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let lib = mock.stats();
    assert_eq!(http.streams_finished, 1);
    assert_eq!(http.tokens_sent, 5);
    assert_eq!(
        (
            http.requests,
            http.streams_started,
            http.tokens_sent,
            http.bytes_sent
        ),
        (
            lib.requests,
            lib.streams_started,
            lib.tokens_sent,
            lib.bytes_sent
        )
    );
}

#[tokio::test]
async fn stamp_puts_the_send_time_in_every_token_frame() {
    let mock = start().await;
    let before = weir_server::mock_llm::monotonic_ns();
    for (path, body) in [
        (
            "/v1/chat/completions?tokens=6&rate=200&stamp=true",
            json!({"stream": true, "messages": []}),
        ),
        (
            "/v1/messages?tokens=6&rate=200&stamp=true",
            json!({"model": "m", "max_tokens": 100, "stream": true, "messages": []}),
        ),
    ] {
        let resp = client()
            .post(mock.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let (body, err) = read_all(resp).await;
        assert!(err.is_none(), "{err:?}");
        let after = weir_server::mock_llm::monotonic_ns();
        let stamps: Vec<u64> = parse_sse(&body)
            .iter()
            .filter(|e| e.data.contains("{\"content\":") || e.data.contains("text_delta"))
            .map(|e| e.json()["weir_sent_ns"].as_u64().unwrap())
            .collect();
        assert_eq!(stamps.len(), 6, "{body}");
        assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
        assert!(stamps[0] >= before && stamps[5] <= after, "{stamps:?}");
        // Paced at 200/s: six tokens span at least 25 ms of the shared clock.
        assert!(stamps[5] - stamps[0] >= 20_000_000, "{stamps:?}");
    }
}
