//! OpenAI's chat completions stream: `data:` lines of `chat.completion.chunk` JSON, text in
//! `choices[0].delta.content`, `finish_reason` ending a choice, `[DONE]` ending the stream,
//! and `{"error": …}` for a failure.

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use weir_stages::codec::sse::SseEvent;

use super::{present, require_json, Dialect, Frame, FrameError, TokenText};

pub struct Openai;

/// The fields of a chunk the proxy acts on, read without building a JSON tree.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, deserialize_with = "present")]
    error: bool,
    #[serde(default, borrow)]
    choices: Option<Vec<Choice<'a>>>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default)]
    finish_reason: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    #[serde(default)]
    tool_calls: Option<IgnoredAny>,
}

impl Dialect for Openai {
    fn parse<'a>(&self, event: &'a SseEvent) -> Result<Frame<'a>, FrameError> {
        if event.data == "[DONE]" {
            return Ok(Frame::Terminal);
        }
        let Ok(chunk) = serde_json::from_str::<Chunk<'a>>(&event.data) else {
            // Valid JSON of another shape is forwarded as it is.
            return require_json(&event.data).map(|()| Frame::Other);
        };
        if chunk.error {
            return Ok(Frame::Error);
        }
        let Some(choice) = chunk.choices.and_then(|c| c.into_iter().next()) else {
            return Ok(Frame::Other);
        };
        let block = choice.index.unwrap_or(0);
        let ends_block = choice.finish_reason.is_some();
        let delta = choice.delta;
        let text = delta
            .as_ref()
            .and_then(|d| d.content)
            .and_then(|raw| TokenText::new(event, raw));
        Ok(match text {
            Some(text) => Frame::Text {
                block,
                text,
                ends_block,
            },
            None if ends_block => Frame::EndOfBlock { block },
            None if delta.is_some_and(|d| d.tool_calls.is_some()) => Frame::ToolCall,
            None => Frame::Other,
        })
    }

    fn token_event(&self, template: &str, block: u64, text: &str) -> SseEvent {
        let mut json: Value = serde_json::from_str(template).unwrap_or(Value::Null);
        json["choices"] =
            json!([{"index": block, "delta": {"content": text}, "finish_reason": null}]);
        data_event(&json)
    }

    fn error_event(&self, code: &str, message: &str) -> SseEvent {
        data_event(&json!({
            "error": {"message": message, "type": "upstream_error", "code": code}
        }))
    }

    fn error_body(&self, kind: &str, message: &str) -> Value {
        json!({"error": {"message": message, "type": kind, "code": kind}})
    }

    fn key_header(&self, key: &str) -> (&'static str, String) {
        ("authorization", format!("Bearer {key}"))
    }
}

fn data_event(json: &Value) -> SseEvent {
    SseEvent {
        event: None,
        data: json.to_string(),
        id: None,
        retry: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{describe, event};
    use super::*;

    fn frame(data: &str) -> String {
        match Openai.parse(&event(None, data)) {
            Ok(f) => describe(&f),
            Err(e) => format!("err: {e}"),
        }
    }

    #[test]
    fn each_chunk_is_read_once_into_one_frame() {
        let cases = [
            (
                r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
                r#"text 0 """#,
            ),
            (
                r#"{"choices":[{"delta":{"content":"h\u00e9"}}]}"#,
                r#"text 0 "hé""#,
            ),
            (
                r#"{"choices":[{"index":1,"delta":{},"finish_reason":"stop"}]}"#,
                "end 1",
            ),
            (
                r#"{"choices":[{"delta":{"content":"x"},"finish_reason":"length"}]}"#,
                r#"text 0 "x" end"#,
            ),
            (
                r#"{"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}"#,
                "tool",
            ),
            (r#"{"choices":[{"delta":{"role":"assistant"}}]}"#, "other"),
            (r#"{"choices":[],"usage":{"total_tokens":3}}"#, "other"),
            (r#"{"choices":null,"usage":{}}"#, "other"),
            (r#"{"choices":[{"delta":{"content":null}}]}"#, "other"),
            (r#"{"choices":[{"delta":{"content":7}}]}"#, "other"),
            ("[1, 2]", "other"),
            (r#"{"error":null}"#, "error"),
            (r#"{"id":"x","error":{"message":"overloaded"}}"#, "error"),
            ("[DONE]", "terminal"),
        ];
        for (data, wanted) in cases {
            assert_eq!(frame(data), wanted, "{data}");
        }
        assert!(frame("{not json").starts_with("err: upstream event is not JSON"));
    }

    #[test]
    fn replacing_text_keeps_every_other_byte() {
        let data = r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"mail a\"b@x.io"},"finish_reason":null}],"z":1}"#;
        let ev = event(None, data);
        let Ok(Frame::Text { text, .. }) = Openai.parse(&ev) else {
            panic!("a text frame");
        };
        assert_eq!(text.text, "mail a\"b@x.io");
        let out = text.replaced_in(&ev, "mail [EMAIL] \n");
        assert_eq!(
            out.data,
            data.replace(r#""mail a\"b@x.io""#, r#""mail [EMAIL] \n""#)
        );
    }
}
