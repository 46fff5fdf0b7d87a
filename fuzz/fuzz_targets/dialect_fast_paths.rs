//! The proxy's fast readings of upstream events, against the slow ones they stand in
//! for: the OpenAI chunk scan gives the frame (or error) serde gives, and an event read by
//! the shape of the text event before it gives the frame its dialect gives.
//!
//! Input: a mode byte (bit 0: Anthropic; bit 1: the second event is named
//! `content_block_stop` instead of `content_block_delta`, Anthropic only), then two
//! events' data separated by a 0xFF byte (never part of UTF-8).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_server::serve::proxy::{Openai, Shape};
use weir_server::serve::Protocol;
use weir_stages::codec::sse::SseEvent;

fn event(name: Option<&str>, data: &str) -> SseEvent {
    SseEvent {
        event: name.map(str::to_string),
        data: data.to_string(),
        id: None,
        retry: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(2, |&b| b == 0xFF);
    let first = parts.next().unwrap_or_default();
    let second = parts.next().unwrap_or_default();
    let (Ok(first), Ok(second)) = (std::str::from_utf8(first), std::str::from_utf8(second))
    else {
        return;
    };
    let (protocol, names) = if mode & 1 == 0 {
        (Protocol::Openai, [None, None])
    } else if mode & 2 == 0 {
        let delta = Some("content_block_delta");
        (Protocol::Anthropic, [delta, delta])
    } else {
        (
            Protocol::Anthropic,
            [Some("content_block_delta"), Some("content_block_stop")],
        )
    };
    let events = [event(names[0], first), event(names[1], second)];
    let dialect = protocol.dialect();
    if protocol == Protocol::Openai {
        for ev in &events {
            assert_eq!(
                format!("{:?}", dialect.parse(ev)),
                format!("{:?}", Openai::parse_with_serde(ev)),
                "{:?}",
                ev.data
            );
        }
    }
    let mut shape = Shape::default();
    if let Ok(frame) = dialect.parse(&events[0]) {
        shape.learn(&events[0], &frame);
    }
    if let Some(frame) = shape.recognise(&events[1]) {
        assert_eq!(
            format!("{:?}", Ok::<_, ()>(frame)),
            format!("{:?}", dialect.parse(&events[1]).map_err(drop)),
            "{:?} after {:?}",
            events[1].data,
            events[0].data
        );
    }
});
