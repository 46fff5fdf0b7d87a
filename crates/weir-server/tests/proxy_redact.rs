//! Redaction on the stream: PII planted by the upstream, whole or split across tokens,
//! never reaches the client, and the streamed result equals redacting the whole text.

mod common;

use common::*;
use weir_stages::codec::redact::{RedactConfig, Redactor};

const KINDS: [&str; 6] = ["email", "phone", "card", "iban", "ipv4", "secret"];

async fn redacted_through_proxy(protocol: &str, path: &str, query: &str) -> (String, String) {
    let mock = start().await;
    let upstream = mock.url(&format!("{path}{query}"));
    let route = format!("redact = {:?}", KINDS);
    let proxy = start_proxy(protocol, &upstream, "", &route).await;
    let anthropic = protocol == "anthropic";
    let tokens = |body: &str| {
        let events = parse_sse(body);
        if anthropic {
            anthropic_tokens(&events).concat()
        } else {
            openai_tokens(&events).concat()
        }
    };
    let direct = read_all(
        proxy_request(&client(), &upstream, anthropic)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let through = read_all(
        proxy_request(&client(), &proxy.url(path), anthropic)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(through.1.is_none(), "{:?}", through.1);
    assert!(parse_sse(&through.0)
        .last()
        .is_some_and(|e| e.data == "[DONE]" || e.event.as_deref() == Some("message_stop")));
    (tokens(&direct.0), tokens(&through.0))
}

#[tokio::test]
async fn planted_pii_never_reaches_the_client() {
    for (protocol, path) in [
        ("openai", "/v1/chat/completions"),
        ("anthropic", "/v1/messages"),
    ] {
        let query = "?tokens=600&pii=7&seed=11";
        let (direct, through) = redacted_through_proxy(protocol, path, query).await;
        let knobs = weir_server::mock_llm::Knobs {
            pii_every: 7,
            seed: 11,
            ..Default::default()
        };
        let planted = weir_server::mock_llm::planted(&knobs, 600);
        assert!(planted.len() >= 50, "{}", planted.len());
        assert!(
            planted.iter().any(|p| p.parts > 1),
            "some values are split across tokens"
        );
        for p in &planted {
            assert!(direct.contains(&p.value), "the mock planted {p:?}");
            assert!(!through.contains(&p.value), "{protocol}: {p:?} leaked");
        }
        let whole = Redactor::new(RedactConfig::kinds(&KINDS))
            .unwrap()
            .redact_all(&direct);
        assert_eq!(
            through, whole,
            "{protocol}: streaming differs from redacting the whole text"
        );
        assert!(
            through.contains("[EMAIL]") && through.contains("[CARD]"),
            "{through}"
        );
    }
}
