//! Helpers of the mock-llm tests: a mock on a free loopback port, SSE parsing, bounded polling.
#![allow(dead_code)]

pub mod pki;

use std::time::{Duration, Instant};

use serde_json::Value;
use weir_server::mock_llm::{MockLlm, MockLlmConfig, MockStats, RunningMockLlm};

/// Upper bound of every wait in these tests.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub async fn start() -> RunningMockLlm {
    start_with(MockLlmConfig::default()).await
}

pub async fn start_with(config: MockLlmConfig) -> RunningMockLlm {
    MockLlm::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .expect("bind a loopback port")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .expect("client")
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {}", self.data))
    }
}

/// Splits a complete `text/event-stream` body into events.
pub fn parse_sse(body: &str) -> Vec<Event> {
    assert!(
        body.is_empty() || body.ends_with("\n\n"),
        "stream ends mid-event: {body:?}"
    );
    body.split("\n\n")
        .filter(|block| !block.is_empty())
        .map(|block| {
            let mut event = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push(v);
                } else {
                    panic!("unexpected SSE line {line:?}");
                }
            }
            Event {
                event,
                data: data.join("\n"),
            }
        })
        .collect()
}

/// Reads a response body to its end, or to the first error (returned with what came before).
pub async fn read_all(mut resp: reqwest::Response) -> (String, Option<reqwest::Error>) {
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            Ok(None) => return (String::from_utf8(body).expect("utf-8"), None),
            Err(e) => return (String::from_utf8_lossy(&body).into_owned(), Some(e)),
        }
    }
}

/// Polls `stats()` until `done` holds, panicking with the last snapshot after [`DEADLINE`].
pub async fn wait_for(
    stats: impl Fn() -> MockStats,
    what: &str,
    done: impl Fn(&MockStats) -> bool,
) -> MockStats {
    let start = Instant::now();
    loop {
        let s = stats();
        if done(&s) {
            return s;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The OpenAI token texts of a parsed stream (chunks with content and no role).
pub fn openai_tokens(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.data != "[DONE]")
        .filter_map(|e| {
            let v = e.json();
            let delta = &v["choices"][0]["delta"];
            if delta.get("role").is_some() {
                return None;
            }
            delta["content"].as_str().map(str::to_string)
        })
        .collect()
}

/// The Anthropic token texts of a parsed stream.
pub fn anthropic_tokens(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event.as_deref() == Some("content_block_delta"))
        .map(|e| {
            e.json()["delta"]["text"]
                .as_str()
                .expect("text")
                .to_string()
        })
        .collect()
}

/// Whether `err` or one of its sources is an I/O error of `kind`.
pub fn has_io_kind(err: &(dyn std::error::Error + 'static), kind: std::io::ErrorKind) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == kind {
                return true;
            }
        }
        cur = e.source();
    }
    false
}

/// A `weir serve` in this process with one `llm_proxy` route at `/v1/chat/completions`
/// (openai) or `/v1/messages` (anthropic) forwarding to `upstream_url`; `extra` is added
/// to the route table as TOML lines, `server_extra` to the top level.
pub async fn start_proxy(
    protocol: &str,
    upstream_url: &str,
    server_extra: &str,
    extra: &str,
) -> weir_server::serve::RunningServer {
    let path = if protocol == "openai" {
        "/v1/chat/completions"
    } else {
        "/v1/messages"
    };
    let toml = format!(
        "listen = \"127.0.0.1:0\"\n{server_extra}\n[[route]]\nkind = \"llm_proxy\"\npath = \"{path}\"\n\
         protocol = \"{protocol}\"\nupstream = \"{upstream_url}\"\nclient_keys = [\"key-1\"]\n{extra}\n"
    );
    let config = weir_server::serve::ServeConfig::parse(&toml).expect("test config");
    weir_server::serve::Server::new(config)
        .expect("server")
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind")
}

/// A streaming request to the proxy, with the client key.
pub fn proxy_request(
    client: &reqwest::Client,
    url: &str,
    anthropic: bool,
) -> reqwest::RequestBuilder {
    let body = if anthropic {
        r#"{"model":"m","max_tokens":4096,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#
    } else {
        r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#
    };
    client
        .post(url)
        .header("authorization", "Bearer key-1")
        .header("content-type", "application/json")
        .body(body)
}
