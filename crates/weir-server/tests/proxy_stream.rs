//! Streams through `weir serve` reach the client as the upstream sent them.

mod common;

use common::*;

#[tokio::test]
async fn openai_stream_passes_through_unchanged() {
    let mock = start().await;
    let proxy = start_proxy(
        "openai",
        &mock.url("/v1/chat/completions?tokens=200&seed=7"),
        "",
        "",
    )
    .await;
    let direct = read_all(
        proxy_request(
            &client(),
            &mock.url("/v1/chat/completions?tokens=200&seed=7"),
            false,
        )
        .send()
        .await
        .unwrap(),
    )
    .await
    .0;
    let resp = proxy_request(&client(), &proxy.url("/v1/chat/completions"), false)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (body, err) = read_all(resp).await;
    assert!(err.is_none(), "{err:?}");
    let (through, direct) = (parse_sse(&body), parse_sse(&direct));
    assert_eq!(openai_tokens(&through), openai_tokens(&direct));
    assert_eq!(openai_tokens(&through).len(), 200);
    assert_eq!(through.len(), direct.len());
    assert_eq!(through.last().unwrap().data, "[DONE]");
}

#[tokio::test]
async fn anthropic_stream_keeps_its_event_order() {
    let mock = start().await;
    let proxy = start_proxy("anthropic", &mock.url("/v1/messages?tokens=50"), "", "").await;
    let resp = proxy_request(&client(), &proxy.url("/v1/messages"), true)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    let (body, err) = read_all(resp).await;
    assert!(err.is_none(), "{err:?}");
    let events = parse_sse(&body);
    let names: Vec<_> = events.iter().map(|e| e.event.clone().unwrap()).collect();
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    assert_eq!(anthropic_tokens(&events).len(), 50);
}

#[tokio::test]
async fn clients_without_a_known_key_get_401() {
    let mock = start().await;
    let proxy = start_proxy("openai", &mock.url("/v1/chat/completions"), "", "").await;
    for key in [None, Some("Bearer nope")] {
        let mut req = client().post(proxy.url("/v1/chat/completions")).body("{}");
        if let Some(k) = key {
            req = req.header("authorization", k);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("API key"));
    }
    let resp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-api-key", "key-1")
        .body(r#"{"model":"m","max_tokens":2,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        mock.stats().requests,
        1,
        "only the authorised request reached upstream"
    );
}

#[tokio::test]
async fn non_streaming_answers_are_forwarded() {
    let mock = start().await;
    let proxy = start_proxy("openai", &mock.url("/v1/chat/completions?tokens=5"), "", "").await;
    let resp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("authorization", "Bearer key-1")
        .body(r#"{"model":"m","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
}

#[tokio::test]
async fn over_max_streams_is_refused_at_once_with_retry_after() {
    let mock = start().await;
    let proxy = start_proxy(
        "openai",
        &mock.url("/v1/chat/completions?tokens=0&rate=50"),
        "max_streams = 2",
        "",
    )
    .await;
    let c = client();
    let a = proxy_request(&c, &proxy.url("/v1/chat/completions"), false)
        .send()
        .await
        .unwrap();
    let b = proxy_request(&c, &proxy.url("/v1/chat/completions"), false)
        .send()
        .await
        .unwrap();
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let started = std::time::Instant::now();
    let refused = proxy_request(&c, &proxy.url("/v1/chat/completions"), false)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert_eq!(
        mock.stats().streams_started,
        2,
        "the refused stream never reached upstream"
    );
    drop((a, b));
    wait_for(
        || mock.stats(),
        "upstream streams closed",
        |s| s.streams_open == 0,
    )
    .await;
    let again = proxy_request(&c, &proxy.url("/v1/chat/completions"), false)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
}
