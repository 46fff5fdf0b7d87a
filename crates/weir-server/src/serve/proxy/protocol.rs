//! What the two LLM streaming formats look like: where the token text is, how a stream
//! ends, and how an error is said in band.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::Deserialize;
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
                let choice = json.pointer("/choices/0");
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
                    .and_then(|c| c.pointer("/delta/content"))
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
                            .and_then(|j| j.pointer("/delta/type"))
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

    /// The token text of a `Token` event.
    pub fn text_mut(self, json: &mut Value) -> Option<&mut Value> {
        match self {
            Protocol::Openai => json.pointer_mut("/choices/0/delta/content"),
            Protocol::Anthropic => json.pointer_mut("/delta/text"),
        }
    }

    /// A token event carrying `text` for `block`, shaped like `template` (the last token
    /// event seen), to release held-back text before a block ends.
    pub fn token_event(self, template: &Value, block: u64, text: &str) -> SseEvent {
        let mut json = template.clone();
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
}
