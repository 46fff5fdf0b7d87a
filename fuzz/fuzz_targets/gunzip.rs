//! The gunzip decoder on any bytes, fed in pieces into a small buffer: no panic, it
//! always makes progress, and the output accepted never exceeds the ratio or size cap.
//!
//! Input: a ratio byte, an output-cap byte, a buffer-size byte, a piece-size byte, then
//! the compressed stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_stages::codec::gunzip::{GunzipDecoder, GunzipLimits, RATIO_GRACE};

fuzz_target!(|data: &[u8]| {
    let Some((&[ratio, cap, buffer, piece], input)) = data.split_first_chunk::<4>() else {
        return;
    };
    let limits = GunzipLimits {
        max_ratio: [1, 2, 10, 1000][usize::from(ratio & 3)],
        max_output: [None, Some(0), Some(100), Some(4 << 20)][usize::from(cap & 3)],
    };
    let Ok(mut decoder) = GunzipDecoder::new(limits) else {
        return;
    };
    let room = 1 + usize::from(buffer) * 64;
    let piece = 1 + usize::from(piece);
    let mut output = Vec::with_capacity(room);
    let within_caps = |d: &GunzipDecoder, slack: u64| {
        let produced = d.produced();
        limits.max_output.is_none_or(|max| produced <= max + slack)
            && (produced <= RATIO_GRACE + slack
                || produced <= d.consumed().saturating_mul(limits.max_ratio) + slack)
    };
    for mut rest in input.chunks(piece) {
        loop {
            output.clear();
            match decoder.decode(rest, &mut output) {
                Ok(used) => {
                    assert!(within_caps(&decoder, 0), "past a cap: {limits:?}");
                    assert!(output.len() <= room, "the buffer grew");
                    assert!(
                        used > 0 || !output.is_empty() || rest.is_empty(),
                        "no progress"
                    );
                    rest = &rest[used..];
                    if rest.is_empty() && output.len() < room {
                        break;
                    }
                }
                Err(_) => {
                    // The call that trips a cap may have filled one buffer past it.
                    assert!(within_caps(&decoder, room as u64), "far past a cap");
                    return;
                }
            }
        }
    }
    let _ = decoder.finish();
});
