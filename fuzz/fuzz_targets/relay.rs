//! The proxy's relay, each dialect, plain and redacting, on any upstream bytes cut
//! anywhere: no panic, the output is whole SSE events, and a cut stream gives exactly the
//! output (redactions included) of the stream fed whole.
//!
//! Input: a mode byte (bit 0: Anthropic, bit 1: redact), a cut count, that many
//! little-endian u16 cut offsets, then the upstream body.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use weir_server::serve::proxy::{filter_for, FilterFactory, Relay};
use weir_server::serve::Protocol;
use weir_stages::codec::sse::SseDecoder;

/// Large beside any input, so that no feed trips the stream's memory budget, which
/// depends on how the body is cut.
const BUFFER: usize = 4 << 20;

/// Every built-in detector, compiled once: compiling per input would be most of the run.
static FILTER: LazyLock<Option<FilterFactory>> = LazyLock::new(|| {
    let kinds = ["email", "phone", "card", "iban", "ipv4", "secret"].map(String::from);
    filter_for(&kinds).expect("the built-in detectors compile")
});

fn relay(mode: u8, pieces: &[&[u8]]) -> Vec<u8> {
    let protocol = if mode & 1 == 0 {
        Protocol::Openai
    } else {
        Protocol::Anthropic
    };
    let filter = match &*FILTER {
        Some(factory) if mode & 2 != 0 => Some(factory()),
        _ => None,
    };
    let mut relay = Relay::new(protocol.dialect(), BUFFER, filter);
    let mut out = Vec::new();
    for piece in pieces {
        relay.feed(piece);
        out.extend(relay.take_output().unwrap_or_default());
    }
    relay.upstream_ended();
    out.extend(relay.take_output().unwrap_or_default());
    assert!(relay.ended().is_some(), "the stream did not end");
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&[mode, count], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let count = usize::from(count % 32);
    let Some((cuts, body)) = rest.split_at_checked(2 * count) else {
        return;
    };
    let mut cuts: Vec<usize> = cuts
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (body.len() + 1))
        .collect();
    cuts.sort_unstable();
    let whole = relay(mode, &[body]);
    let bounds: Vec<usize> = std::iter::once(0)
        .chain(cuts)
        .chain(std::iter::once(body.len()))
        .collect();
    let pieces: Vec<&[u8]> = bounds.windows(2).map(|w| &body[w[0]..w[1]]).collect();
    assert_eq!(
        relay(mode, &pieces),
        whole,
        "cut at {bounds:?}: {:?}",
        String::from_utf8_lossy(body)
    );
    let mut decoder = SseDecoder::default();
    assert!(
        decoder.feed(&whole, |_| {}).is_ok(),
        "not SSE: {:?}",
        String::from_utf8_lossy(&whole)
    );
    assert!(
        !decoder.finish(),
        "ends inside an event: {:?}",
        String::from_utf8_lossy(&whole)
    );
});
