//! What clients are told when something is wrong: a status that says what happened (400
//! for a malformed body or chunking, 413 only for size), the failure's kind and route, and
//! never an internal address or OS error text. Nothing is sent upstream for a bad body.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `request` as raw bytes; returns the status line and the rest of what came back.
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> (String, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut answer))
        .await
        .expect("an answer, then the close")
        .expect("read");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (status, rest) = text.split_once("\r\n").unwrap_or((&text, ""));
    (status.to_string(), rest.to_string())
}

async fn post(url: &str, body: impl Into<reqwest::Body>) -> (u16, serde_json::Value) {
    let resp = client()
        .post(url)
        .header("authorization", "Bearer key-1")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("a JSON error"))
}

#[tokio::test]
async fn edge_bad_bodies_get_400_or_413_naming_the_problem_and_never_reach_the_upstream() {
    let mock = start().await;
    let proxy = start_proxy("openai", &mock.url("/v1/chat/completions"), "", "").await;
    let url = proxy.url("/v1/chat/completions");

    for (body, wanted) in [
        ("not json at all", "not JSON"),
        ("", "empty"),
        ("   ", "empty"),
        ("[1, 2]", "an array, not an object"),
        ("{\"model\": ", "not JSON"),
    ] {
        let (status, error) = post(&url, body).await;
        assert_eq!(status, 400, "{body:?}: {error}");
        assert_eq!(error["error"]["type"], "invalid_request", "{error}");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(wanted), "{body:?}: {message}");
    }

    let (status, error) = post(&url, vec![b' '; 2 << 20]).await;
    assert_eq!(status, 413, "{error}");
    assert_eq!(error["error"]["type"], "request_too_large");

    let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\nauthorization: Bearer key-1\r\n\
                content-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    let malformed = format!("{head}zz\r\n{{}}\r\n0\r\n\r\n");
    let (status, rest) = raw(proxy.local_addr(), malformed.as_bytes()).await;
    assert!(status.starts_with("HTTP/1.1 400"), "{status}\n{rest}");
    assert!(rest.contains("malformed_body"), "{rest}");

    assert_eq!(mock.stats().requests, 0, "nothing was sent upstream");
    assert_eq!(proxy.admission().open_streams(), 0);
    assert_eq!(proxy.admission().budget().reserved(), 0);
}

#[tokio::test]
async fn edge_upstream_failures_name_the_kind_and_route_but_no_address_or_os_error() {
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
    let text = resp.text().await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(body["error"]["type"], "upstream_unreachable", "{text}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("/v1/chat/completions"),
        "names the route: {message}"
    );
    for internal in ["127.0.0.1", &port.to_string(), "os error", "refused"] {
        assert!(!text.contains(internal), "{internal:?} leaked: {text}");
    }

    let mock = start().await;
    let proxy = start_proxy(
        "anthropic",
        &mock.url("/v1/messages?stream=false&fault=stall"),
        "",
        "first_byte_timeout = \"200ms\"",
    )
    .await;
    let resp = proxy_request(&client(), &proxy.url("/v1/messages"), true)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    let text = resp.text().await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(body["error"]["type"], "upstream_timeout", "{text}");
    assert!(
        !text.contains(&mock.local_addr().port().to_string()),
        "{text}"
    );
}
