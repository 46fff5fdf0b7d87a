//! Planted PII: where it is, what it is, and that a stream carries exactly what `planted` says.

mod common;

use common::{anthropic_tokens, client, openai_tokens, parse_sse, read_all, start};
use weir_server::mock_llm::{luhn_valid, planted, Knobs, PiiKind};

#[tokio::test]
async fn planted_values_are_in_the_stream_whole_and_split() {
    let mock = start().await;
    let (body, _) = read_all(
        client()
            .get(mock.url("/v1/chat/completions?tokens=200&pii=8&seed=1234"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let tokens = openai_tokens(&parse_sse(&body));
    assert_eq!(tokens.len(), 200);
    let text: String = tokens.concat();

    let knobs = Knobs {
        pii_every: 8,
        seed: 1234,
        ..Knobs::default()
    };
    let plants = planted(&knobs, 200);
    assert_eq!(plants.len(), 25);
    for kind in PiiKind::ALL {
        let of_kind: Vec<_> = plants.iter().filter(|p| p.kind == kind).collect();
        assert!(of_kind.iter().any(|p| p.parts == 1), "{kind} whole");
        assert!(of_kind.iter().any(|p| p.parts > 1), "{kind} split");
    }
    for p in &plants {
        assert!(text.contains(&p.value), "{p:?} not in the stream");
        let first = p.first_token as usize;
        let joined: String = tokens[first..first + p.parts].concat();
        assert_eq!(joined.trim_start(), p.value, "{p:?}");
        if p.parts > 1 {
            assert!(
                tokens[first..first + p.parts]
                    .iter()
                    .all(|t| !t.contains(&p.value)),
                "no single token holds a split value: {p:?}"
            );
        }
        match p.kind {
            PiiKind::Email => assert!(p.value.contains('@')),
            PiiKind::Phone => assert!(p.value.contains("555-01")),
            PiiKind::CardNumber => assert!(luhn_valid(&p.value), "{p:?}"),
            PiiKind::Ipv4 => assert!(p.value.parse::<std::net::Ipv4Addr>().is_ok()),
            PiiKind::ApiKey => assert!(p.value.starts_with("sk-")),
        }
    }
    assert_eq!(mock.stats().pii_planted, 25);
}

#[tokio::test]
async fn same_seed_same_plants_in_both_formats() {
    let mock = start().await;
    let c = client();
    let (a, _) = read_all(
        c.get(mock.url("/v1/chat/completions?tokens=60&pii=5&seed=7"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let (b, _) = read_all(
        c.get(mock.url("/v1/messages?tokens=60&pii=5&seed=7"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        openai_tokens(&parse_sse(&a)),
        anthropic_tokens(&parse_sse(&b))
    );
    let (c2, _) = read_all(
        c.get(mock.url("/v1/messages?tokens=60&pii=5&seed=8"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_ne!(
        anthropic_tokens(&parse_sse(&b)),
        anthropic_tokens(&parse_sse(&c2))
    );
}
