//! Most events of a stream differ from the one before only in their token text: same
//! event name, same bytes before the text's JSON string and after it (the id, the model,
//! the choice). Such an event is read by checking its text alone: replacing one JSON
//! string by another keeps the rest of the event's JSON, and so its frame, unchanged.

use weir_stages::codec::sse::SseEvent;

use super::json::Reader;
use super::{Frame, TokenText};

/// The last text event of a stream, but its token text.
#[derive(Default)]
pub struct Shape {
    known: bool,
    named: bool,
    /// The event's name, then its data before the token text, then after it.
    around: Vec<u8>,
    name: usize,
    before: usize,
    block: u64,
    ends_block: bool,
}

impl Shape {
    /// `event`'s frame, if it has the shape of the last text event; `None` for the
    /// dialect to read it.
    pub fn recognise<'a>(&self, event: &'a SseEvent) -> Option<Frame<'a>> {
        if !self.known || event.event.is_some() != self.named {
            return None;
        }
        let (name, rest) = self.around.split_at(self.name);
        let (before, after) = rest.split_at(self.before);
        if event.event.as_deref().unwrap_or("").as_bytes() != name {
            return None;
        }
        let data = event.data.as_bytes();
        let end = data.len().checked_sub(after.len())?;
        if end < before.len() || !data.starts_with(before) || !data.ends_with(after) {
            return None;
        }
        let mut reader = Reader::at(&event.data, before.len());
        let (span, _) = reader.string()?;
        if span != (before.len()..end) {
            return None;
        }
        Some(Frame::Text {
            block: self.block,
            text: TokenText::new(event, span)?,
            ends_block: self.ends_block,
        })
    }

    /// Remembers the shape of `event` if `frame`, what the dialect read in it, is text.
    pub fn learn(&mut self, event: &SseEvent, frame: &Frame<'_>) {
        let Frame::Text {
            block,
            text,
            ends_block,
        } = frame
        else {
            return;
        };
        let name = event.event.as_deref().unwrap_or("").as_bytes();
        let data = event.data.as_bytes();
        self.around.clear();
        self.around.extend_from_slice(name);
        self.around.extend_from_slice(&data[..text.span.start]);
        self.around.extend_from_slice(&data[text.span.end..]);
        self.known = true;
        self.named = event.event.is_some();
        self.name = name.len();
        self.before = text.span.start;
        self.block = *block;
        self.ends_block = *ends_block;
    }

    /// Bytes allocated.
    pub fn held_bytes(&self) -> usize {
        self.around.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{describe, event};
    use super::*;
    use crate::serve::config::Protocol;

    fn read(shape: &mut Shape, protocol: Protocol, name: Option<&str>, data: &str) -> String {
        let ev = event(name, data);
        if let Some(frame) = shape.recognise(&ev) {
            return format!("shape: {}", describe(&frame));
        }
        match protocol.dialect().parse(&ev) {
            Ok(frame) => {
                shape.learn(&ev, &frame);
                describe(&frame)
            }
            Err(e) => format!("err: {e}"),
        }
    }

    #[test]
    fn an_event_differing_only_in_its_text_is_read_by_its_shape() {
        let token = |text: &str| {
            format!(
                r#"{{"id":"c","choices":[{{"index":1,"delta":{{"content":{text}}},"finish_reason":null}}]}}"#
            )
        };
        let mut shape = Shape::default();
        let o = Protocol::Openai;
        assert_eq!(
            read(&mut shape, o, None, &token(r#""hi""#)),
            r#"text 1 "hi""#
        );
        assert_eq!(
            read(&mut shape, o, None, &token(r#""a \"b\"""#)),
            r#"shape: text 1 "a \"b\"""#
        );
        assert_eq!(
            read(&mut shape, o, None, &token(r#""""#)),
            r#"shape: text 1 """#
        );
        // Not a string, a string and more, invalid JSON, a lone surrogate, another name:
        // the dialect reads them, as it would without the shape.
        assert_eq!(read(&mut shape, o, None, &token("7")), "other");
        assert_eq!(
            read(&mut shape, o, None, &token(r#""a" "b""#)),
            read(&mut Shape::default(), o, None, &token(r#""a" "b""#))
        );
        assert!(read(&mut shape, o, None, &token("\"tab\there\"")).starts_with("err: "));
        assert_eq!(read(&mut shape, o, None, &token(r#""\ud800""#)), "other");
        // A named event does not have an unnamed one's shape: the dialect refuses it.
        assert!(read(&mut shape, o, Some("x"), &token(r#""hi""#)).starts_with("err: "));
        assert_eq!(
            read(&mut shape, o, None, &token(r#""ho""#)),
            r#"shape: text 1 "ho""#
        );
        let a = Protocol::Anthropic;
        let delta = |text: &str| {
            format!(
                r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{text}"}}}}"#
            )
        };
        let name = Some("content_block_delta");
        assert_eq!(read(&mut shape, a, name, &delta("one")), r#"text 0 "one""#);
        assert_eq!(
            read(&mut shape, a, name, &delta("two")),
            r#"shape: text 0 "two""#
        );
        assert_eq!(
            read(&mut shape, a, Some("content_block_stop"), &delta("two")),
            "end 0"
        );
        assert_eq!(
            read(&mut shape, a, name, &delta("three")),
            r#"shape: text 0 "three""#
        );
        // An unnamed event does not have a named one's shape.
        assert!(read(&mut shape, a, None, &delta("four")).starts_with("err: "));
    }
}
