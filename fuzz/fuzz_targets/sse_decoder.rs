//! The SSE decoder on any bytes, cut anywhere: no panic, the limits hold, and decoding
//! the pieces gives exactly what decoding the whole gives (events, error, state).
//!
//! Input: a limits byte, a cut count, that many little-endian u16 cut offsets, then the
//! stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_stages::codec::sse::{SseDecoder, SseError, SseEvent, SseLimits};

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<SseEvent>,
    error: Option<SseError>,
    last_id: Option<String>,
    retry: Option<u64>,
    discarded: Option<bool>,
}

fn limits(selector: u8) -> SseLimits {
    SseLimits {
        max_line: [8, 64, 512, 64 * 1024][usize::from(selector & 3)],
        max_event: [8, 100, 4096, 1024 * 1024][usize::from(selector >> 2 & 3)],
    }
}

fn decode<'a>(limits: SseLimits, chunks: impl Iterator<Item = &'a [u8]>) -> Outcome {
    let mut decoder = SseDecoder::new(limits);
    let mut events = Vec::new();
    let mut error = None;
    // A partial line, an event's data, its type and the last id, each within its limit,
    // in buffers that may have grown to twice what they hold.
    let bound = 2 * (3 * limits.max_line + limits.max_event) + 64;
    for chunk in chunks {
        let fed = decoder.feed(chunk, |e| events.push(e));
        assert!(
            decoder.buffered_bytes() <= bound,
            "{} held",
            decoder.buffered_bytes()
        );
        if let Err(e) = fed {
            error = Some(e);
            break;
        }
    }
    for e in &events {
        assert!(
            e.data.len() <= limits.max_event,
            "{} bytes of data",
            e.data.len()
        );
    }
    Outcome {
        last_id: decoder.last_event_id().map(str::to_owned),
        retry: decoder.reconnection_time(),
        discarded: error.is_none().then(|| decoder.finish()),
        events,
        error,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&[selector, count], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let count = usize::from(count % 32);
    let Some((cuts, stream)) = rest.split_at_checked(2 * count) else {
        return;
    };
    let mut cuts: Vec<usize> = cuts
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();
    let limits = limits(selector);
    let whole = decode(limits, std::iter::once(stream));
    let bounds: Vec<usize> = std::iter::once(0)
        .chain(cuts)
        .chain(std::iter::once(stream.len()))
        .collect();
    let pieces = bounds.windows(2).map(|w| &stream[w[0]..w[1]]);
    assert_eq!(decode(limits, pieces), whole);
});
