//! OpenAI's chat completions stream: `data:` lines of `chat.completion.chunk` JSON, text in
//! `choices[0].delta.content`, `finish_reason` ending a choice, `[DONE]` ending the stream,
//! and `{"error": …}` for a failure. A named event ends the stream in error: weir cannot
//! tell whether it carries text that redaction must see.

use std::ops::Range;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use weir_stages::codec::sse::SseEvent;

use super::json::Reader;
use super::{present, require_json, span_in, Dialect, Frame, FrameError, TokenText};

pub struct Openai;

/// What the proxy acts on in a chunk, however it was read.
#[derive(Default)]
struct View {
    error: bool,
    /// The first of `choices`.
    choice: Option<ChoiceView>,
}

#[derive(Default)]
struct ChoiceView {
    index: Option<u64>,
    finish: bool,
    delta: Option<DeltaView>,
}

#[derive(Default)]
struct DeltaView {
    /// Where `content`'s value lies in the event's data.
    content: Option<Range<usize>>,
    tool_calls: bool,
}

/// A chunk read with serde, for what [`scan`] leaves: the fields of [`View`], read
/// without building a JSON tree.
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
        // Chat completion chunks come unnamed, which is the type `message` in SSE.
        if let Some(name) = event.event.as_deref().filter(|&n| n != "message") {
            return Err(FrameError::unknown_event(name));
        }
        if event.data == "[DONE]" {
            return Ok(Frame::Terminal);
        }
        match scan(&event.data) {
            Some(view) => Ok(frame(event, view)),
            None => parse_with_serde(event),
        }
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

impl Openai {
    /// Reads a chunk with serde alone, as [`Dialect::parse`] does what its one-pass scan
    /// leaves: the scan's oracle in tests and fuzzing.
    pub fn parse_with_serde(event: &SseEvent) -> Result<Frame<'_>, FrameError> {
        parse_with_serde(event)
    }
}

/// Reads a chunk with serde: what [`scan`] leaves.
fn parse_with_serde(event: &SseEvent) -> Result<Frame<'_>, FrameError> {
    let Ok(chunk) = serde_json::from_str::<Chunk<'_>>(&event.data) else {
        // Valid JSON of another shape is forwarded as it is.
        return require_json(&event.data).map(|()| Frame::Other);
    };
    let view = View {
        error: chunk.error,
        choice: chunk
            .choices
            .and_then(|c| c.into_iter().next())
            .map(|c| ChoiceView {
                index: c.index,
                finish: c.finish_reason.is_some(),
                delta: c.delta.map(|d| DeltaView {
                    content: d.content.and_then(|raw| span_in(&event.data, raw)),
                    tool_calls: d.tool_calls.is_some(),
                }),
            }),
    };
    Ok(frame(event, view))
}

/// The one decision for a chunk, whichever way it was read.
fn frame(event: &SseEvent, view: View) -> Frame<'_> {
    if view.error {
        return Frame::Error;
    }
    let Some(choice) = view.choice else {
        return Frame::Other;
    };
    let block = choice.index.unwrap_or(0);
    let ends_block = choice.finish;
    let delta = choice.delta;
    let text = delta
        .as_ref()
        .and_then(|d| d.content.clone())
        .and_then(|span| TokenText::new(event, span));
    match text {
        Some(text) => Frame::Text {
            block,
            text,
            ends_block,
        },
        None if ends_block => Frame::EndOfBlock { block },
        None if delta.is_some_and(|d| d.tool_calls) => Frame::ToolCall,
        None => Frame::Other,
    }
}

/// Reads a chunk of the usual shape in one pass; `None` for serde to read it (an unusual
/// shape, or not JSON).
fn scan(data: &str) -> Option<View> {
    let mut r = Reader::new(data);
    let mut view = View::default();
    let (mut error, mut choices) = (false, false);
    r.object(|r, key| {
        if key.escaped {
            return None;
        }
        match key.raw {
            b"error" => {
                once(&mut error)?;
                view.error = true;
                r.skip(1).map(drop)
            }
            b"choices" => {
                once(&mut choices)?;
                if r.null()? {
                    return Some(());
                }
                r.array(|r, n| {
                    let choice = scan_choice(r)?;
                    if n == 0 {
                        view.choice = Some(choice);
                    }
                    Some(())
                })
            }
            _ => r.skip(1).map(drop),
        }
    })?;
    r.end()?;
    Some(view)
}

fn scan_choice(r: &mut Reader<'_>) -> Option<ChoiceView> {
    let mut choice = ChoiceView::default();
    let (mut index, mut delta, mut finish) = (false, false, false);
    r.object(|r, key| {
        if key.escaped {
            return None;
        }
        match key.raw {
            b"index" => {
                once(&mut index)?;
                if !r.null()? {
                    choice.index = Some(r.unsigned()?);
                }
            }
            b"delta" => {
                once(&mut delta)?;
                if !r.null()? {
                    choice.delta = Some(scan_delta(r)?);
                }
            }
            b"finish_reason" => {
                once(&mut finish)?;
                choice.finish = !r.null()?;
                if choice.finish {
                    r.skip(3)?;
                }
            }
            _ => {
                r.skip(3)?;
            }
        }
        Some(())
    })?;
    Some(choice)
}

fn scan_delta(r: &mut Reader<'_>) -> Option<DeltaView> {
    let mut delta = DeltaView::default();
    let (mut content, mut tool_calls) = (false, false);
    r.object(|r, key| {
        if key.escaped {
            return None;
        }
        match key.raw {
            b"content" => {
                once(&mut content)?;
                if !r.null()? {
                    delta.content = Some(r.skip(4)?);
                }
            }
            b"tool_calls" => {
                once(&mut tool_calls)?;
                delta.tool_calls = !r.null()?;
                if delta.tool_calls {
                    r.skip(4)?;
                }
            }
            _ => {
                r.skip(4)?;
            }
        }
        Some(())
    })?;
    Some(delta)
}

/// A field seen a second time: serde refuses the chunk, so the scan leaves it to serde.
fn once(seen: &mut bool) -> Option<()> {
    (!std::mem::replace(seen, true)).then_some(())
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

    /// What serde alone makes of `data`.
    fn by_serde(data: &str) -> String {
        let ev = event(None, data);
        match parse_with_serde(&ev) {
            Ok(f) => describe(&f),
            Err(e) => format!("err: {e}"),
        }
    }

    #[test]
    fn the_one_pass_scan_reads_every_chunk_as_serde_does() {
        let usual = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1796432509,"model":"m","choices":[{"index":0,"delta":{"content":" memory"},"finish_reason":null}]}"#;
        assert!(scan(usual).is_some(), "the usual chunk takes the scan");
        let seeds = [
            usual,
            r#"{"choices":[{"index":2,"delta":{"role":"assistant","content":"h\u00e9 \"q\""},"logprobs":{"a":[1.5e3,-2,true,false,null]}}],"usage":null}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[{"delta":{"content":"x"},"finish_reason":"length"},{"index":"bad"}]}"#,
            r#"{"choices":[{"index":1,"delta":{},"finish_reason":"stop"}],"error":null}"#,
            r#"{"choices":[{"delta":{"content":"a","content":"b"}}]}"#,
            r#"{"choices":[{"index":-0,"delta":{"content":"\uD800"}}]}"#,
            r#"{"\u0065rror":1,"choices":[{"delta":{"content":7}}]}"#,
            r#"{"choices":[[0,{"content":"x"}]]}"#,
            r#" { "choices" : [ { "index" : 18446744073709551616 , "delta" : { "content" : "" } } ] } "#,
        ];
        let mut checked = 0;
        for seed in seeds {
            assert_eq!(frame(seed), by_serde(seed), "{seed}");
            // Every byte dropped, and every byte replaced by each of a few that matter.
            let bytes = seed.as_bytes();
            for at in 0..bytes.len() {
                let mut variants = vec![[&bytes[..at], &bytes[at + 1..]].concat()];
                for b in [
                    b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'0', b'n', b' ', 1,
                ] {
                    let mut v = bytes.to_vec();
                    v[at] = b;
                    variants.push(v);
                }
                for v in variants {
                    let Ok(data) = String::from_utf8(v) else {
                        continue;
                    };
                    assert_eq!(frame(&data), by_serde(&data), "{data}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 10_000, "{checked} variants");
    }

    #[test]
    fn replacing_text_keeps_every_other_byte() {
        let data = r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"mail a\"b@x.io"},"finish_reason":null}],"z":1}"#;
        let ev = event(None, data);
        let Ok(Frame::Text { text, .. }) = Openai.parse(&ev) else {
            panic!("a text frame");
        };
        assert_eq!(text.text, "mail a\"b@x.io");
        let mut out = String::new();
        text.replace_into(&ev.data, "mail [EMAIL] \n", &mut out);
        assert_eq!(
            out,
            data.replace(r#""mail a\"b@x.io""#, r#""mail [EMAIL] \n""#)
        );
    }
}
