//! The proxy half of `weir demo`: a mock LLM upstream, weir's token proxy in front of it
//! with redaction, one answer streamed through it live.

use std::net::SocketAddr;
use std::path::Path;

use std::io::Write as _;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use weir_server::mock_llm::{Knobs, MockLlm, MockLlmConfig};
use weir_server::serve::{ServeConfig, Server};
use weir_stages::codec::sse::{SseDecoder, SseLimits};

use super::Failure;

const KEY: &str = "demo-key";

fn config(listen: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        r#"listen = "{listen}"
memory_budget = "64MiB"
max_streams = 1000

[[route]]
kind = "llm_proxy"
path = "/v1/chat/completions"
protocol = "openai"
upstream = "http://{upstream}/v1/chat/completions"
client_keys = ["{KEY}"]
redact = ["email", "phone", "card", "iban", "ipv4", "secret"]

[[route]]
kind = "llm_proxy"
path = "/v1/messages"
protocol = "anthropic"
upstream = "http://{upstream}/v1/messages"
client_keys = ["{KEY}"]
redact = ["email", "phone", "card", "iban", "ipv4", "secret"]
"#
    )
}

fn failed(context: &'static str) -> impl Fn(std::io::Error) -> Failure {
    move |e| Failure::Pipeline(format!("{context}: {e}"))
}

pub async fn run(
    listen: SocketAddr,
    upstream_listen: SocketAddr,
    once: bool,
    orders: &Path,
    rows: u64,
) -> Result<(), Failure> {
    let knobs = Knobs {
        tokens: 130,
        rate: 60.0,
        pii_every: 12,
        ..Knobs::default()
    };
    let mock = MockLlm::bind(
        upstream_listen,
        MockLlmConfig {
            knobs,
            ..MockLlmConfig::default()
        },
    )
    .await
    .map_err(failed("starting the mock upstream"))?;
    let text = config(listen, mock.local_addr()) + &super::demo_export::route(orders);
    let config = ServeConfig::parse(&text).map_err(|e| Failure::Pipeline(e.to_string()))?;
    let server = Server::new(config)
        .map_err(|e| Failure::Pipeline(e.to_string()))?
        .start(listen)
        .await
        .map_err(failed("starting the proxy"))?;
    println!(
        "4. a mock LLM upstream on http://{}, weir's proxy on http://{listen}",
        mock.local_addr()
    );
    println!("   with this configuration:\n");
    for line in text.lines() {
        println!("     {line}");
    }
    println!();
    println!("   One answer streamed through the proxy (PII planted by the mock, redacted on the way):\n");
    stream_once(listen).await?;
    println!("\n\nTry it yourself:");
    println!(
        "  curl -N http://{listen}/v1/chat/completions -H 'Authorization: Bearer {KEY}' \\\n       \
         -H 'content-type: application/json' -d '{{\"model\":\"m\",\"stream\":true,\"messages\":[]}}'"
    );
    println!(
        "  curl -N http://{listen}/v1/messages -H 'x-api-key: {KEY}' -H 'anthropic-version: 2023-06-01' \\\n       \
         -H 'content-type: application/json' -d '{{\"model\":\"m\",\"max_tokens\":100,\"stream\":true,\"messages\":[]}}'"
    );
    println!(
        "  curl -N --limit-rate 1k ...   # a slow client: weir reads the upstream only as fast"
    );
    println!("  weir serve --help            # the configuration, documented\n");
    super::demo_export::show(listen, rows).await?;
    if once {
        server.stop().await;
        return Ok(());
    }
    println!("\nServing until Ctrl-C.");
    let _ = tokio::signal::ctrl_c().await;
    server.stop().await;
    Ok(())
}

/// Streams one chat completion through the proxy, printing the tokens as they arrive.
async fn stream_once(proxy: SocketAddr) -> Result<(), Failure> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let body = r#"{"model":"demo","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let request = hyper::Request::post(format!("http://{proxy}/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .map_err(|e| Failure::Pipeline(e.to_string()))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| Failure::Pipeline(format!("calling the proxy: {e}")))?;
    let mut body = response.into_body();
    let mut decoder = SseDecoder::new(SseLimits::default());
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Failure::Pipeline(format!("reading the stream: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let mut text = String::new();
        decoder
            .feed(&data, |event| {
                let json = serde_json::from_str::<serde_json::Value>(&event.data).ok();
                if let Some(t) = json
                    .as_ref()
                    .and_then(|v| v.pointer("/choices/0/delta/content"))
                {
                    text.push_str(t.as_str().unwrap_or_default());
                }
            })
            .map_err(|e| Failure::Pipeline(format!("the proxy sent a bad stream: {e}")))?;
        print!("{text}");
        let _ = std::io::stdout().flush();
    }
    Ok(())
}
