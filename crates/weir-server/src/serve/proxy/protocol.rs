//! What the two LLM streaming formats look like: where the token text is, how a stream
//! ends, and how an error is said in band.

use std::borrow::Cow;
use std::ops::Range;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use weir_stages::codec::sse::SseEvent;

use crate::serve::config::Protocol;

/// What an upstream event is, for the proxy.
pub enum EventRole {
    /// Carries token text at `text_path` in its JSON data, for text block `block`.
    Token { block: u64 },
    /// Ends a text block (Anthropic `content_block_stop`, OpenAI `finish_reason`): any
    /// held-back text of that block must be sent before it.
    EndOfBlock { block: u64 },
    /// The last event of a complete stream (`[DONE]`, `message_stop`), or an upstream error.
    Terminal,
    /// Anything else: forwarded unchanged.
    Other,
}

impl Protocol {
    /// Classifies an event; `json` is its data parsed, when it is JSON.
    pub fn role(self, event: &SseEvent, json: Option<&Value>) -> EventRole {
        match self {
            Protocol::Openai => {
                if event.data == "[DONE]" {
                    return EventRole::Terminal;
                }
                let Some(json) = json else {
                    return EventRole::Other;
                };
                if json.get("error").is_some() {
                    return EventRole::Terminal;
                }
                let choice = json.get("choices").and_then(|c| c.get(0));
                let block = choice
                    .and_then(|c| c.get("index"))
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                if choice
                    .and_then(|c| c.get("finish_reason"))
                    .is_some_and(|f| !f.is_null())
                {
                    EventRole::EndOfBlock { block }
                } else if choice
                    .and_then(|c| c.get("delta"))
                    .and_then(|d| d.get("content"))
                    .is_some_and(Value::is_string)
                {
                    EventRole::Token { block }
                } else {
                    EventRole::Other
                }
            }
            Protocol::Anthropic => {
                let block = || {
                    json.and_then(|j| j.get("index"))
                        .and_then(Value::as_u64)
                        .unwrap_or(0)
                };
                match event.event.as_deref() {
                    Some("message_stop") | Some("error") => EventRole::Terminal,
                    Some("content_block_stop") => EventRole::EndOfBlock { block: block() },
                    Some("content_block_delta")
                        if json
                            .and_then(|j| j.get("delta"))
                            .and_then(|d| d.get("type"))
                            .and_then(Value::as_str)
                            == Some("text_delta") =>
                    {
                        EventRole::Token { block: block() }
                    }
                    _ => EventRole::Other,
                }
            }
        }
    }

    /// Whether the proxy must look inside this event's JSON at all.
    pub fn may_carry_text(self, event: &SseEvent) -> bool {
        match self {
            Protocol::Openai => event.data != "[DONE]",
            Protocol::Anthropic => matches!(
                event.event.as_deref(),
                Some("content_block_delta") | Some("content_block_stop")
            ),
        }
    }

    /// Whether the event's data must be JSON: all but OpenAI's `[DONE]` and empty data.
    pub fn may_carry_json(self, event: &SseEvent) -> bool {
        match self {
            Protocol::Openai => event.data != "[DONE]",
            Protocol::Anthropic => !event.data.is_empty(),
        }
    }

    /// Checks that the data of an event passed on unchanged is JSON, and tells whether the
    /// event carries token text (for the stream's token count and time to first token).
    pub fn check_json(self, event: &SseEvent) -> Result<bool, serde_json::Error> {
        match self {
            Protocol::Openai => match serde_json::from_str::<OpenaiChunk<'_>>(&event.data) {
                Ok(chunk) => Ok(chunk.carries_token()),
                // Valid JSON of another shape is forwarded; it just is no token.
                Err(_) => serde_json::from_str::<IgnoredAny>(&event.data).map(|_| false),
            },
            Protocol::Anthropic => {
                serde_json::from_str::<IgnoredAny>(&event.data)?;
                Ok(event.event.as_deref() == Some("content_block_delta"))
            }
        }
    }

    /// Reads what the proxy needs of an event that may carry text (its role and, for a
    /// token, the text) from the few fields that matter, without building a JSON tree.
    /// `None` when the event has another shape: [`Protocol::role`] on the parsed data decides.
    pub fn classify(self, event: &SseEvent) -> Option<(EventRole, Option<TokenText<'_>>)> {
        match self {
            Protocol::Openai => {
                let chunk: OpenaiTextChunk<'_> = serde_json::from_str(&event.data).ok()?;
                if chunk.error {
                    return Some((EventRole::Terminal, None));
                }
                let Some(choice) = chunk.choices.and_then(|c| c.into_iter().next()) else {
                    return Some((EventRole::Other, None));
                };
                let block = choice.index.unwrap_or(0);
                if choice.finish_reason.is_some() {
                    return Some((EventRole::EndOfBlock { block }, None));
                }
                match choice.delta.and_then(|d| d.content) {
                    Some(raw) => Some((
                        EventRole::Token { block },
                        Some(TokenText::new(event, raw)?),
                    )),
                    None => Some((EventRole::Other, None)),
                }
            }
            Protocol::Anthropic => {
                let name = event.event.as_deref();
                if !matches!(name, Some("content_block_delta" | "content_block_stop")) {
                    return Some((self.role(event, None), None));
                }
                let block_event: AnthropicBlockEvent<'_> =
                    serde_json::from_str(&event.data).ok()?;
                let block = block_event.index.unwrap_or(0);
                if name == Some("content_block_stop") {
                    return Some((EventRole::EndOfBlock { block }, None));
                }
                match block_event.delta {
                    Some(d) if d.kind.as_deref() == Some("text_delta") => {
                        let text = match d.text {
                            Some(raw) => TokenText::new(event, raw)?,
                            None => TokenText::missing(),
                        };
                        Some((EventRole::Token { block }, Some(text)))
                    }
                    _ => Some((EventRole::Other, None)),
                }
            }
        }
    }

    /// The token text of a `Token` event.
    pub fn text_mut(self, json: &mut Value) -> Option<&mut Value> {
        match self {
            Protocol::Openai => json
                .get_mut("choices")?
                .get_mut(0)?
                .get_mut("delta")?
                .get_mut("content"),
            Protocol::Anthropic => json.get_mut("delta")?.get_mut("text"),
        }
    }

    /// A token event carrying `text` for `block`, shaped like `template` (the data of the
    /// last token event seen), to release held-back text before a block ends.
    pub fn token_event(self, template: &str, block: u64, text: &str) -> SseEvent {
        let mut json: Value = serde_json::from_str(template).unwrap_or(Value::Null);
        match self {
            Protocol::Openai => {
                json["choices"] =
                    json!([{"index": block, "delta": {"content": text}, "finish_reason": null}]);
            }
            Protocol::Anthropic => {
                json = json!({"type": "content_block_delta", "index": block, "delta": {"type": "text_delta", "text": text}});
            }
        }
        self.event(&json)
    }

    /// `event` with its token text replaced by `text`.
    pub fn with_text(
        self,
        event: &SseEvent,
        token: &TokenText<'_>,
        text: &str,
    ) -> Result<SseEvent, String> {
        if let Some(span) = &token.span {
            let quoted = Value::from(text).to_string();
            let mut data = String::with_capacity(event.data.len() + quoted.len());
            data.push_str(&event.data[..span.start]);
            data.push_str(&quoted);
            data.push_str(&event.data[span.end..]);
            return Ok(SseEvent {
                event: event.event.clone(),
                data,
                id: event.id.clone(),
                retry: event.retry,
            });
        }
        let mut json: Value = serde_json::from_str(&event.data)
            .map_err(|e| format!("upstream event is not JSON ({e}): {:.200}", event.data))?;
        if let Some(slot) = self.text_mut(&mut json) {
            *slot = Value::String(text.to_string());
        }
        Ok(self.event(&json))
    }

    /// An event of this protocol with `json` as its data.
    pub fn event(self, json: &Value) -> SseEvent {
        SseEvent {
            event: match self {
                Protocol::Openai => None,
                Protocol::Anthropic => json.get("type").and_then(Value::as_str).map(str::to_string),
            },
            data: json.to_string(),
            id: None,
            retry: None,
        }
    }

    /// The error event sent in band when the upstream fails after the headers went out.
    pub fn error_event(self, code: &str, message: &str) -> SseEvent {
        match self {
            Protocol::Openai => self.event(&json!({
                "error": {"message": message, "type": "upstream_error", "code": code}
            })),
            Protocol::Anthropic => SseEvent {
                event: Some("error".to_string()),
                data: json!({"type": "error", "error": {"type": "api_error", "message": message}})
                    .to_string(),
                id: None,
                retry: None,
            },
        }
    }

    /// The JSON body of an error answered before any stream (502, 504, 401 …).
    pub fn error_body(self, kind: &str, message: &str) -> Value {
        match self {
            Protocol::Openai => json!({"error": {"message": message, "type": kind, "code": kind}}),
            Protocol::Anthropic => {
                json!({"type": "error", "error": {"type": kind, "message": message}})
            }
        }
    }
}

/// What an OpenAI chunk says about token text, read without building a JSON tree.
#[derive(Deserialize)]
struct OpenaiChunk<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<OpenaiChoice<'a>>>,
}

#[derive(Deserialize)]
struct OpenaiChoice<'a> {
    #[serde(default, borrow)]
    delta: Option<OpenaiDelta<'a>>,
}

#[derive(Deserialize)]
struct OpenaiDelta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<IgnoredAny>,
}

/// An OpenAI chunk as the redacting path reads it: an error, or the first choice.
#[derive(Deserialize)]
struct OpenaiTextChunk<'a> {
    #[serde(default, deserialize_with = "present")]
    error: bool,
    #[serde(default, borrow)]
    choices: Option<Vec<OpenaiTextChoice<'a>>>,
}

#[derive(Deserialize)]
struct OpenaiTextChoice<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    delta: Option<OpenaiTextDelta<'a>>,
    #[serde(default)]
    finish_reason: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct OpenaiTextDelta<'a> {
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
}

/// An Anthropic `content_block_delta` or `content_block_stop`.
#[derive(Deserialize)]
struct AnthropicBlockEvent<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    delta: Option<AnthropicDelta<'a>>,
}

#[derive(Deserialize)]
struct AnthropicDelta<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<&'a RawValue>,
}

/// The token text of an event and where its JSON string lies in the event's data, so the
/// text can be replaced without re-serialising (and reordering) the rest of the event.
pub struct TokenText<'a> {
    pub text: Cow<'a, str>,
    span: Option<Range<usize>>,
}

impl<'a> TokenText<'a> {
    /// `raw` must borrow from `event.data`; `None` when it is not a JSON string.
    fn new(event: &'a SseEvent, raw: &'a RawValue) -> Option<Self> {
        let text: Cow<'a, str> = serde_json::from_str(raw.get()).ok()?;
        let start = (raw.get().as_ptr() as usize).checked_sub(event.data.as_ptr() as usize)?;
        let span = start..start + raw.get().len();
        (event.data.get(span.clone()) == Some(raw.get())).then_some(TokenText {
            text,
            span: Some(span),
        })
    }

    /// Text read from a parsed tree, or absent: replacing it needs the tree again.
    pub fn unplaced(text: Cow<'a, str>) -> Self {
        TokenText { text, span: None }
    }

    fn missing() -> Self {
        TokenText::unplaced(Cow::Borrowed(""))
    }
}

/// A field that is there, whatever its value (`"error": null` included, as `Value::get` sees it).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

impl OpenaiChunk<'_> {
    fn carries_token(&self) -> bool {
        self.choices.iter().flatten().any(|c| {
            c.delta.as_ref().is_some_and(|d| {
                d.content.as_deref().is_some_and(|t| !t.is_empty()) || d.tool_calls.is_some()
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: name.map(str::to_string),
            data: data.to_string(),
            id: None,
            retry: None,
        }
    }

    #[test]
    fn openai_tokens_are_deltas_with_text_or_tool_calls() {
        let check = |data| Protocol::Openai.check_json(&event(None, data));
        let role = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
        assert!(!check(role).unwrap());
        assert!(check(r#"{"choices":[{"delta":{"content":"h\u00e9"}}]}"#).unwrap());
        assert!(check(r#"{"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}"#).unwrap());
        let stop = r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#;
        assert!(!check(stop).unwrap());
        assert!(!check(r#"{"choices":null,"usage":{}}"#).unwrap());
        assert!(!check("[1, 2]").unwrap(), "JSON of another shape passes");
        assert!(check("{not json").is_err());
    }

    #[test]
    fn anthropic_tokens_are_content_block_deltas() {
        let delta =
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#;
        let check = |name, data| Protocol::Anthropic.check_json(&event(Some(name), data));
        assert!(check("content_block_delta", delta).unwrap());
        assert!(!check("message_start", r#"{"type":"message_start"}"#).unwrap());
        assert!(check("ping", "{oops").is_err());
    }

    #[test]
    fn classify_reads_token_text_and_rewrites_only_its_string() {
        let data = r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"mail a\"b@x.io"},"finish_reason":null}],"z":1}"#;
        let ev = event(None, data);
        let (role, text) = Protocol::Openai.classify(&ev).unwrap();
        assert!(matches!(role, EventRole::Token { block: 0 }));
        let text = text.unwrap();
        assert_eq!(text.text, "mail a\"b@x.io");
        let out = Protocol::Openai
            .with_text(&ev, &text, "mail [EMAIL] \n")
            .unwrap();
        assert_eq!(
            out.data,
            data.replace(r#""mail a\"b@x.io""#, r#""mail [EMAIL] \n""#),
            "every other byte, key order included, is the upstream's"
        );

        let data =
            r#"{"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":"hi"}}"#;
        let ev = event(Some("content_block_delta"), data);
        let (role, text) = Protocol::Anthropic.classify(&ev).unwrap();
        assert!(matches!(role, EventRole::Token { block: 2 }));
        let out = Protocol::Anthropic
            .with_text(&ev, &text.unwrap(), "yo")
            .unwrap();
        assert_eq!(out.data, data.replace("\"hi\"", "\"yo\""));
        assert_eq!(out.event.as_deref(), Some("content_block_delta"));
    }

    #[test]
    fn classify_agrees_with_the_tree_reading_or_defers_to_it() {
        let cases = [
            r#"{"choices":[{"index":1,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[{"delta":{"content":"x"},"finish_reason":"length"}]}"#,
            r#"{"choices":[{"delta":{"role":"assistant"}}]}"#,
            r#"{"choices":[],"usage":{"total_tokens":3}}"#,
            r#"{"error":null}"#,
            r#"{"error":{"message":"overloaded"}}"#,
            r#"{"choices":[{"delta":{"content":null}}]}"#,
        ];
        for data in cases {
            let ev = event(None, data);
            let json: Value = serde_json::from_str(data).unwrap();
            let (fast, _) = Protocol::Openai.classify(&ev).unwrap();
            let tree = Protocol::Openai.role(&ev, Some(&json));
            assert_eq!(describe(&fast), describe(&tree), "{data}");
        }
        for odd in [
            r#"{"choices":[{"delta":{"content":7}}]}"#,
            r#"{"choices":[{"index":-1,"delta":{"content":"a"}}]}"#,
            "{not json",
        ] {
            assert!(
                Protocol::Openai.classify(&event(None, odd)).is_none(),
                "{odd}"
            );
        }
    }

    fn describe(role: &EventRole) -> String {
        match role {
            EventRole::Token { block } => format!("token {block}"),
            EventRole::EndOfBlock { block } => format!("end {block}"),
            EventRole::Terminal => "terminal".into(),
            EventRole::Other => "other".into(),
        }
    }
}
