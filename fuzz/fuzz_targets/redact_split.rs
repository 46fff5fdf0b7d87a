//! The redactor on any text, cut anywhere: redacting the pieces equals redacting the
//! whole, and a value planted between spaces never comes out between them.
//!
//! Input: a plant byte (which value, or none), a little-endian u16 plant position, a cut
//! count, that many little-endian u16 cut offsets, then the text (lossy UTF-8).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use weir_stages::codec::redact::{RedactConfig, Redactor};

static REDACTOR: LazyLock<Redactor> = LazyLock::new(|| {
    Redactor::new(RedactConfig::all_builtins()).expect("the built-in detectors compile")
});

const PLANTS: &[&str] = &[
    "jo@example.com",
    "john.smith+tag@mail.example.co.uk",
    "+1 415 555 0100",
    "(415) 555-0100",
    "415-555-0100",
    "+44 20 7946 0958",
    "4111 1111 1111 1111",
    "5555-5555-5555-4444",
    "4111111111111111",
    "GB82 WEST 1234 5698 7654 32",
    "192.168.1.1",
    "10.0.0.255",
    "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
];

fuzz_target!(|data: &[u8]| {
    let Some((&[plant, at0, at1, count], rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let count = usize::from(count % 32);
    let Some((cuts, text)) = rest.split_at_checked(2 * count) else {
        return;
    };
    let mut text = String::from_utf8_lossy(text).into_owned();
    let planted = PLANTS.get(usize::from(plant)).copied();
    if let Some(value) = planted {
        let mut at = usize::from(u16::from_le_bytes([at0, at1])) % (text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.insert_str(at, &format!(" {value} "));
    }
    let mut cuts: Vec<usize> = cuts
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (text.len() + 1))
        .filter(|&c| text.is_char_boundary(c))
        .collect();
    cuts.sort_unstable();
    let whole = REDACTOR.redact_all(&text);
    let mut stream = REDACTOR.stream();
    let (mut split, mut from) = (String::new(), 0);
    for cut in cuts.into_iter().chain(std::iter::once(text.len())) {
        split.push_str(&stream.push(&text[from..cut]));
        from = cut;
    }
    split.push_str(&stream.finish());
    assert_eq!(split, whole, "text {text:?}");
    if let Some(value) = planted {
        // Between spaces, as planted: the text may hold the value elsewhere inside a
        // longer word or run, where it is rightly left alone.
        let isolated = format!(" {value} ");
        assert!(
            !whole.contains(&isolated),
            "{value:?} leaked from {text:?}: {whole:?}"
        );
    }
});
