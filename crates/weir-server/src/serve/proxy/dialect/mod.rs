//! The LLM APIs' streaming formats, one file each. An upstream event is parsed once, into
//! one typed [`Frame`] that the plain path and the redacting path both act on, so that what
//! the proxy does with an event never depends on whether redaction is configured. A new
//! protocol is one new file implementing [`Dialect`].

mod anthropic;
mod json;
mod openai;
mod shape;

use std::borrow::Cow;
use std::ops::Range;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use weir_stages::codec::sse::SseEvent;

pub use anthropic::Anthropic;
pub use openai::Openai;
pub use shape::Shape;

use crate::serve::config::Protocol;

/// What an upstream event is, for the proxy.
#[derive(Debug)]
pub enum Frame<'a> {
    /// Token text for text block `block`; `ends_block` when the same event also ends it
    /// (an OpenAI chunk with both `content` and `finish_reason`).
    Text {
        block: u64,
        text: TokenText<'a>,
        ends_block: bool,
    },
    /// Generated output that is not text (a tool call's arguments): a token, passed unchanged.
    ToolCall,
    /// Ends a text block: its held-back text is released before the event.
    EndOfBlock { block: u64 },
    /// The last event of a complete stream (`[DONE]`, `message_stop`).
    Terminal,
    /// The upstream reports an error in band: the stream ends after it.
    Error,
    /// Anything else, forwarded unchanged.
    Other,
}

/// Why an upstream event cannot be forwarded; each names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("upstream event is not JSON ({error}): {data}")]
    NotJson {
        error: serde_json::Error,
        /// The event's data, its first 200 characters.
        data: String,
    },
    #[error("upstream used text block {block}; at most {max} are supported")]
    TooManyBlocks { block: u64, max: u64 },
    /// Refused rather than forwarded: weir cannot tell whether it carries text to redact.
    #[error("upstream sent an event of type `{name}`, which its protocol does not have")]
    UnknownEvent {
        /// The event's type, its first 64 characters.
        name: String,
    },
    #[error("cannot re-encode an upstream event: {0}")]
    Encode(#[from] weir_stages::codec::sse::SseEncodeError),
}

/// One LLM API's streaming format.
pub trait Dialect: Send + Sync + 'static {
    /// Reads `event` once; an error names what is wrong with it (data that must be JSON
    /// and is not).
    fn parse<'a>(&self, event: &'a SseEvent) -> Result<Frame<'a>, FrameError>;

    /// A token event carrying `text` for `block`, shaped like `template` (the data of the
    /// block's last token event), to release held-back text.
    fn token_event(&self, template: &str, block: u64, text: &str) -> SseEvent;

    /// The event weir sends in band when the stream fails after the headers went out.
    fn error_event(&self, code: &str, message: &str) -> SseEvent;

    /// The JSON body of an error answered before any stream (502, 504, 401 …).
    fn error_body(&self, kind: &str, message: &str) -> Value;

    /// The request header carrying the upstream key, and its value.
    fn key_header(&self, key: &str) -> (&'static str, String);
}

impl FrameError {
    fn unknown_event(name: &str) -> Self {
        FrameError::UnknownEvent {
            name: name.chars().take(64).collect(),
        }
    }
}

impl Protocol {
    pub fn dialect(self) -> &'static dyn Dialect {
        match self {
            Protocol::Openai => &Openai,
            Protocol::Anthropic => &Anthropic,
        }
    }
}

/// The token text of an event and where its JSON string lies in the event's data, so the
/// text can be replaced without re-serialising (and reordering) the rest of the event.
#[derive(Debug)]
pub struct TokenText<'a> {
    pub text: Cow<'a, str>,
    span: Range<usize>,
}

impl<'a> TokenText<'a> {
    /// The JSON value at `span` of the event's data (valid JSON); `None` when it is not
    /// a string.
    fn new(event: &'a SseEvent, span: Range<usize>) -> Option<Self> {
        let raw = event.data.get(span.clone())?;
        let text = match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            Some(plain) if !plain.contains('\\') => Cow::Borrowed(plain),
            _ => Cow::Owned(serde_json::from_str::<String>(raw).ok()?),
        };
        Some(TokenText { text, span })
    }

    /// As [`TokenText::new`] for `raw`, a value borrowed from the event's data.
    fn within(event: &'a SseEvent, raw: &'a RawValue) -> Option<Self> {
        Self::new(event, span_in(&event.data, raw)?)
    }

    /// Writes `data` (the event's) into `out` with this token text replaced by `text`;
    /// every other byte is the upstream's.
    pub fn replace_into(&self, data: &str, text: &str, out: &mut String) {
        out.clear();
        out.reserve(data.len() + text.len() + 2);
        out.push_str(&data[..self.span.start]);
        push_json_string(out, text);
        out.push_str(&data[self.span.end..]);
    }
}

/// Appends `text` as a JSON string, escaped as serde_json escapes it.
fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    let mut plain = 0;
    for (i, byte) in text.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&text[plain..i]);
        if escape.is_empty() {
            let hex = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(hex[usize::from(byte >> 4)]));
            out.push(char::from(hex[usize::from(byte & 0xf)]));
        } else {
            out.push_str(escape);
        }
        plain = i + 1;
    }
    out.push_str(&text[plain..]);
    out.push('"');
}

/// Where `raw`, a value borrowed from `data`, lies in it.
fn span_in(data: &str, raw: &RawValue) -> Option<Range<usize>> {
    let part = raw.get();
    let start = (part.as_ptr() as usize).checked_sub(data.as_ptr() as usize)?;
    let span = start..start + part.len();
    (data.get(span.clone()) == Some(part)).then_some(span)
}

/// Checks that `data` is JSON, naming the problem if not.
fn require_json(data: &str) -> Result<(), FrameError> {
    serde_json::from_str::<IgnoredAny>(data)
        .map(drop)
        .map_err(|error| FrameError::NotJson {
            error,
            data: data.chars().take(200).collect(),
        })
}

/// A field that is there, whatever its value (`"error": null` included).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

#[cfg(test)]
pub(crate) fn event(name: Option<&str>, data: &str) -> SseEvent {
    SseEvent {
        event: name.map(str::to_string),
        data: data.to_string(),
        id: None,
        retry: None,
    }
}

#[cfg(test)]
pub(crate) fn describe(frame: &Frame<'_>) -> String {
    match frame {
        Frame::Text {
            block,
            text,
            ends_block,
        } => format!(
            "text {block} {:?}{}",
            text.text,
            if *ends_block { " end" } else { "" }
        ),
        Frame::ToolCall => "tool".into(),
        Frame::EndOfBlock { block } => format!("end {block}"),
        Frame::Terminal => "terminal".into(),
        Frame::Error => "error".into(),
        Frame::Other => "other".into(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_is_escaped_as_serde_json_escapes_it() {
        let mut every: String = (0u8..0x80).map(char::from).collect();
        every.push_str("é \u{2028} 🦀 \\\" end");
        for text in [every.as_str(), "", "plain", "\"", "a\\b"] {
            let mut ours = String::new();
            super::push_json_string(&mut ours, text);
            assert_eq!(
                ours,
                serde_json::to_string(text).expect("a string"),
                "{text:?}"
            );
        }
    }
}
