//! Anthropic's messages stream: named events, text in `content_block_delta` events of type
//! `text_delta`, `content_block_stop` ending a block, `message_stop` ending the stream and
//! `event: error` for a failure. An event of another type ends the stream in error: weir
//! cannot tell whether it carries text that redaction must see.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use weir_stages::codec::sse::SseEvent;

use super::{require_json, Dialect, Frame, FrameError, TokenText};

pub struct Anthropic;

/// A `content_block_delta` or `content_block_stop`, read without building a JSON tree.
#[derive(Deserialize)]
struct BlockEvent<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<&'a str>,
    #[serde(default, borrow)]
    text: Option<&'a RawValue>,
}

impl Dialect for Anthropic {
    fn parse<'a>(&self, event: &'a SseEvent) -> Result<Frame<'a>, FrameError> {
        let name = event.event.as_deref();
        if !matches!(name, Some("content_block_delta" | "content_block_stop")) {
            let frame = match name {
                Some("message_stop") => Frame::Terminal,
                Some("error") => Frame::Error,
                Some("message_start" | "content_block_start" | "message_delta" | "ping") => {
                    Frame::Other
                }
                // No `event:` line is the type `message` in SSE.
                _ => return Err(FrameError::unknown_event(name.unwrap_or("message"))),
            };
            if !event.data.is_empty() {
                require_json(&event.data)?;
            }
            return Ok(frame);
        }
        let Ok(block_event) = serde_json::from_str::<BlockEvent<'a>>(&event.data) else {
            return require_json(&event.data).map(|()| Frame::Other);
        };
        let block = block_event.index.unwrap_or(0);
        if name == Some("content_block_stop") {
            return Ok(Frame::EndOfBlock { block });
        }
        let Some(delta) = block_event.delta else {
            return Ok(Frame::Other);
        };
        Ok(match (delta.kind, delta.text) {
            (Some("text_delta"), Some(raw)) => match TokenText::within(event, raw) {
                Some(text) => Frame::Text {
                    block,
                    text,
                    ends_block: false,
                },
                None => Frame::Other,
            },
            (Some("input_json_delta"), _) => Frame::ToolCall,
            _ => Frame::Other,
        })
    }

    fn token_event(&self, _template: &str, block: u64, text: &str) -> SseEvent {
        named(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": block, "delta": {"type": "text_delta", "text": text}}),
        )
    }

    fn error_event(&self, _code: &str, message: &str) -> SseEvent {
        named(
            "error",
            &json!({"type": "error", "error": {"type": "api_error", "message": message}}),
        )
    }

    fn error_body(&self, kind: &str, message: &str) -> Value {
        json!({"type": "error", "error": {"type": kind, "message": message}})
    }

    fn key_header(&self, key: &str) -> (&'static str, String) {
        ("x-api-key", key.to_string())
    }
}

fn named(name: &str, json: &Value) -> SseEvent {
    SseEvent {
        event: Some(name.to_string()),
        data: json.to_string(),
        id: None,
        retry: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{describe, event};
    use super::*;

    fn frame(name: &str, data: &str) -> String {
        match Anthropic.parse(&event(Some(name), data)) {
            Ok(f) => describe(&f),
            Err(e) => format!("err: {e}"),
        }
    }

    #[test]
    fn each_event_is_read_once_into_one_frame() {
        let delta =
            r#"{"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":"hi"}}"#;
        assert_eq!(frame("content_block_delta", delta), r#"text 2 "hi""#);
        let tool = r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a"}}"#;
        assert_eq!(frame("content_block_delta", tool), "tool");
        assert_eq!(
            frame(
                "content_block_stop",
                r#"{"type":"content_block_stop","index":2}"#
            ),
            "end 2"
        );
        assert_eq!(
            frame("message_stop", r#"{"type":"message_stop"}"#),
            "terminal"
        );
        assert_eq!(frame("error", r#"{"type":"error","error":{}}"#), "error");
        assert_eq!(
            frame("message_start", r#"{"type":"message_start"}"#),
            "other"
        );
        assert_eq!(frame("ping", ""), "other");
        for (name, data) in [
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0}"#,
            ),
            ("message_delta", r#"{"type":"message_delta","usage":{}}"#),
        ] {
            assert_eq!(frame(name, data), "other");
        }
        assert_eq!(
            frame("thinking_delta", "{}"),
            "err: upstream sent an event of type `thinking_delta`, which its protocol does not have"
        );
        assert!(Anthropic
            .parse(&event(None, "{}"))
            .is_err_and(|e| e.to_string().contains("`message`")));
        assert!(frame("ping", "{oops").starts_with("err: "));
        assert!(frame("content_block_delta", "{oops").starts_with("err: "));
    }

    #[test]
    fn replacing_text_keeps_every_other_byte() {
        let data =
            r#"{"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":"hi"}}"#;
        let ev = event(Some("content_block_delta"), data);
        let Ok(Frame::Text { text, .. }) = Anthropic.parse(&ev) else {
            panic!("a text frame");
        };
        let mut out = String::from("left over");
        text.replace_into(&ev.data, "yo", &mut out);
        assert_eq!(out, data.replace("\"hi\"", "\"yo\""));
    }
}
