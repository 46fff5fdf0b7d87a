//! The proxy's per-stream core on a fast stream: 2,000 OpenAI chunks shaped like
//! `weir mock-llm`'s, fed in 16 KiB reads (a fast client's), plain and redacting.
//!
//! What a token costs in weir's own code, without the sockets; `bench/proxy` measures the
//! whole path (issue 17's tokens/s). Run with `cargo bench -p weir-server --bench relay`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weir_server::serve::proxy::{filter_for, Relay};
use weir_server::serve::Protocol;

const TOKENS: usize = 2000;
const READ: usize = 16 << 10;

fn upstream_body() -> Vec<u8> {
    let words = [
        " memory",
        " later",
        " of hours",
        " the",
        " stream",
        " a",
        " slow",
        " reader",
    ];
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-weirmock000000000001\",\"object\":\"chat.completion.chunk\",\
             \"created\":1796432509,\"model\":\"mock-llm\",\"choices\":[{{\"index\":0,\
             \"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
        )
    };
    let mut body = chunk(r#"{"role":"assistant","content":""}"#, "null");
    for i in 0..TOKENS {
        body += &chunk(
            &format!("{{\"content\":\"{}\"}}", words[i % words.len()]),
            "null",
        );
    }
    body += &chunk("{}", "\"stop\"");
    body += "data: [DONE]\n\n";
    body.into_bytes()
}

fn relay(c: &mut Criterion) {
    let body = upstream_body();
    let redact = filter_for(&["email".to_string(), "phone".to_string()])
        .expect("the built-in detectors compile")
        .expect("a filter");
    let mut group = c.benchmark_group("relay");
    group.throughput(Throughput::Elements(TOKENS as u64));
    for (name, redacting) in [("plain", false), ("redact email+phone", true)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let filter = redacting.then(|| redact());
                let mut relay = Relay::new(Protocol::Openai.dialect(), 64 << 10, filter);
                let mut out = 0;
                for read in body.chunks(READ) {
                    relay.feed(read);
                    out += relay.take_output().map_or(0, |o| o.len());
                }
                relay.upstream_ended();
                assert!(relay.ended().is_some());
                out
            })
        });
    }
    group.finish();
}

criterion_group!(benches, relay);
criterion_main!(benches);
