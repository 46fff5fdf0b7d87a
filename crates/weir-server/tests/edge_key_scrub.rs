//! A configured upstream key never reaches a client, even when the upstream echoes it back:
//! in an error body, or inside a token of a stream, split across reads.

mod common;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::*;

const KEY: &str = "sk-edge-test-0123456789abcdef";

/// An upstream that repeats the key it was given: as a 401 when the prompt says "fail",
/// else in the text of a token, the key cut in two by the body's chunks.
async fn echoing_upstream(headers: HeaderMap, body: String) -> Response {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("none")
        .to_string();
    if body.contains("fail") {
        let text = format!(
            r#"{{"error": {{"message": "Incorrect API key provided: {given}", "type": "invalid_request_error"}}}}"#
        );
        return (
            StatusCode::UNAUTHORIZED,
            [("content-type", "application/json")],
            text,
        )
            .into_response();
    }
    let token = format!(
        "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"your key is {given}!\"}}}}]}}\n\n"
    );
    let (a, b) = token.split_at(token.find(&given).unwrap_or(0) + given.len() / 2);
    let chunks = vec![
        Ok::<_, std::io::Error>(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n".to_string(),
        ),
        Ok(a.to_string()),
        Ok(b.to_string()),
        Ok("data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n".to_string()),
    ];
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap_or_default()
}

#[tokio::test]
async fn edge_the_upstream_key_is_scrubbed_from_error_bodies_and_tokens() {
    // This test binary's only test: no other thread reads the environment meanwhile.
    std::env::set_var("WEIR_EDGE_SCRUB_KEY", KEY);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/v1/chat/completions", post(echoing_upstream));
    let served = tokio::spawn(async move { axum::serve(listener, app).await });
    let proxy = start_proxy(
        "openai",
        &format!("http://{upstream}/v1/chat/completions"),
        "",
        "upstream_key_env = \"WEIR_EDGE_SCRUB_KEY\"",
    )
    .await;

    let resp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("authorization", "Bearer key-1")
        .body(r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"fail"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "the upstream's status passes");
    let text = resp.text().await.unwrap();
    assert!(!text.contains(KEY), "{text}");
    assert!(
        text.contains("Incorrect API key provided: [upstream key removed]"),
        "{text}"
    );

    let resp = proxy_request(&client(), &proxy.url("/v1/chat/completions"), false)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (body, err) = read_all(resp).await;
    assert!(err.is_none(), "{err:?}");
    assert!(!body.contains(KEY), "{body}");
    assert_eq!(
        openai_tokens(&parse_sse(&body)),
        vec!["your key is [upstream key removed]!".to_string()]
    );
    proxy.stop().await;
    served.abort();
}
