//! Server-Sent Events: an incremental decoder (WHATWG event stream rules) and an encoder.

use std::mem;

use memchr::{memchr, memchr2};

/// The longest line accepted when none is given: 64 KiB.
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;
/// The largest event data accepted when none is given: 1 MiB.
pub const DEFAULT_MAX_EVENT: usize = 1024 * 1024;

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// One dispatched event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The event type; `None` stands for the default type, `message`.
    pub event: Option<String>,
    pub data: String,
    /// The last event ID in effect at dispatch; `None` if never set or set to empty.
    pub id: Option<String>,
    /// A valid `retry` field (milliseconds) given in this event's block of lines.
    pub retry: Option<u64>,
}

/// How much one stream may make the decoder hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseLimits {
    /// The longest line, in bytes, its line break excluded.
    pub max_line: usize,
    /// The largest data buffer of one event, in bytes, the line feeds between data lines
    /// included.
    pub max_event: usize,
}

impl Default for SseLimits {
    fn default() -> Self {
        SseLimits {
            max_line: DEFAULT_MAX_LINE,
            max_event: DEFAULT_MAX_EVENT,
        }
    }
}

/// Why a stream could not be decoded within its limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error(
        "SSE line longer than max_line ({limit} bytes): limit exceeded at byte offset {offset}"
    )]
    LineTooLong { limit: usize, offset: u64 },
    #[error(
        "SSE event data larger than max_event ({limit} bytes): limit exceeded by the data line \
         at byte offset {offset}"
    )]
    EventTooLarge { limit: usize, offset: u64 },
}

/// Decodes an event stream fed in chunks of any size, dispatching each event as soon as
/// the blank line that ends it arrives.
///
/// Memory held is bounded by the limits: one partial line (at most `max_line` bytes) and
/// one event's data (at most `max_event` bytes). After an error every call to
/// [`feed`](Self::feed) returns that error again, until [`finish`](Self::finish).
#[derive(Debug)]
pub struct SseDecoder {
    limits: SseLimits,
    /// Bytes of a line that began in an earlier chunk.
    line: Vec<u8>,
    /// Stream offset of the next byte to be fed.
    offset: u64,
    /// How many bytes of a BOM the stream started with, while that could still be one.
    bom_seen: Option<usize>,
    /// The last chunk ended in CR: an LF starting the next chunk completes that CRLF.
    after_cr: bool,
    data: String,
    event_type: String,
    last_id: String,
    retry: Option<u64>,
    reconnection_time: Option<u64>,
    /// A field line has been seen since the last blank line.
    in_event: bool,
    failed: Option<SseError>,
}

impl Default for SseDecoder {
    fn default() -> Self {
        SseDecoder::new(SseLimits::default())
    }
}

impl SseDecoder {
    /// Bytes the decoder has allocated for what it holds between feeds (a partial line,
    /// a partial event), for memory accounting.
    pub fn buffered_bytes(&self) -> usize {
        self.line.capacity()
            + self.data.capacity()
            + self.event_type.capacity()
            + self.last_id.capacity()
    }

    /// Frees the buffers that hold nothing now (a stream waiting on its reader keeps
    /// only what it must).
    pub fn release_spare(&mut self) {
        if self.line.is_empty() {
            self.line = Vec::new();
        }
        if self.data.is_empty() {
            self.data = String::new();
        }
        if self.event_type.is_empty() {
            self.event_type = String::new();
        }
    }

    pub fn new(limits: SseLimits) -> Self {
        SseDecoder {
            limits,
            line: Vec::new(),
            offset: 0,
            bom_seen: Some(0),
            after_cr: false,
            data: String::new(),
            event_type: String::new(),
            last_id: String::new(),
            retry: None,
            reconnection_time: None,
            in_event: false,
            failed: None,
        }
    }

    /// The last event ID set by the stream, if any.
    pub fn last_event_id(&self) -> Option<&str> {
        (!self.last_id.is_empty()).then_some(self.last_id.as_str())
    }

    /// The reconnection time (milliseconds) last set by a valid `retry` field.
    pub fn reconnection_time(&self) -> Option<u64> {
        self.reconnection_time
    }

    /// Decodes the next chunk of the stream, calling `on_event` for each event it completes.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut on_event: impl FnMut(SseEvent),
    ) -> Result<(), SseError> {
        // One exact allocation per event; the decoder's buffers keep their capacity.
        self.feed_each(chunk, |event| on_event(event.clone()))
    }

    /// As [`feed`](Self::feed), lending each event to `on_event` instead of giving it: the
    /// decoder's buffers are the event's, so decoding allocates nothing per event.
    pub fn feed_each(
        &mut self,
        chunk: &[u8],
        mut on_event: impl FnMut(&SseEvent),
    ) -> Result<(), SseError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let fed = self.feed_lines(chunk, &mut on_event);
        if let Err(e) = &fed {
            self.failed = Some(e.clone());
        }
        fed
    }

    /// Ends the stream: an event not yet closed by a blank line is discarded, as the rules
    /// require. Returns whether anything was discarded. The decoder is then as new.
    pub fn finish(&mut self) -> bool {
        let discarded =
            self.in_event || !self.line.is_empty() || self.bom_seen.is_some_and(|n| n > 0);
        *self = SseDecoder::new(self.limits);
        discarded
    }

    fn feed_lines<F: FnMut(&SseEvent)>(
        &mut self,
        chunk: &[u8],
        on_event: &mut F,
    ) -> Result<(), SseError> {
        let mut rest = self.skip_bom(chunk);
        if rest.is_empty() {
            return Ok(());
        }
        if mem::take(&mut self.after_cr) && rest[0] == b'\n' {
            rest = &rest[1..];
            self.offset += 1;
        }
        while let Some(end) = memchr2(b'\r', b'\n', rest) {
            let line_start = self.offset - self.line.len() as u64;
            self.check_line(self.line.len() + end, line_start)?;
            if self.line.is_empty() {
                self.process_line(&rest[..end], line_start, on_event)?;
            } else {
                self.line.extend_from_slice(&rest[..end]);
                let line = mem::take(&mut self.line);
                let processed = self.process_line(&line, line_start, on_event);
                self.line = line;
                self.line.clear();
                processed?;
            }
            let mut consumed = end + 1;
            if rest[end] == b'\r' {
                match rest.get(end + 1) {
                    Some(b'\n') => consumed += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            self.offset += consumed as u64;
            rest = &rest[consumed..];
        }
        let line_start = self.offset - self.line.len() as u64;
        self.check_line(self.line.len() + rest.len(), line_start)?;
        self.line.extend_from_slice(rest);
        self.offset += rest.len() as u64;
        Ok(())
    }

    /// Drops a BOM at stream offset 0, which may arrive split over several chunks.
    fn skip_bom<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        let Some(seen) = self.bom_seen else {
            return chunk;
        };
        let matched = chunk
            .iter()
            .zip(&BOM[seen..])
            .take_while(|(a, b)| a == b)
            .count();
        if seen + matched == BOM.len() {
            self.bom_seen = None;
            self.offset += matched as u64;
            &chunk[matched..]
        } else if matched == chunk.len() {
            self.bom_seen = Some(seen + matched);
            self.offset += matched as u64;
            &[]
        } else {
            // Not a BOM after all: the bytes held back from earlier chunks are line content.
            self.bom_seen = None;
            self.line.extend_from_slice(&BOM[..seen]);
            chunk
        }
    }

    fn check_line(&self, len: usize, line_start: u64) -> Result<(), SseError> {
        if len > self.limits.max_line {
            return Err(SseError::LineTooLong {
                limit: self.limits.max_line,
                offset: line_start + self.limits.max_line as u64,
            });
        }
        Ok(())
    }

    fn process_line<F: FnMut(&SseEvent)>(
        &mut self,
        line: &[u8],
        line_start: u64,
        on_event: &mut F,
    ) -> Result<(), SseError> {
        if line.is_empty() {
            self.dispatch(on_event);
            return Ok(());
        }
        let (field, value) = match memchr(b':', line) {
            Some(0) => return Ok(()),
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        self.in_event = true;
        match field {
            b"data" => {
                let value = text(value);
                if self.data.len() + value.len() + 1 > self.limits.max_event {
                    return Err(SseError::EventTooLarge {
                        limit: self.limits.max_event,
                        offset: line_start,
                    });
                }
                self.data.push_str(&value);
                self.data.push('\n');
            }
            b"event" => {
                self.event_type.clear();
                self.event_type.push_str(&text(value));
            }
            b"id" if memchr(0, value).is_none() => {
                self.last_id.clear();
                self.last_id.push_str(&text(value));
            }
            b"retry" => {
                // An all-digit value too large for u64 is ignored like any other invalid one.
                let millis = match value {
                    [] => None,
                    digits => digits.iter().try_fold(0u64, |n, &d| {
                        let digit = d.checked_sub(b'0').filter(|d| *d <= 9)?;
                        n.checked_mul(10)?.checked_add(u64::from(digit))
                    }),
                };
                if let Some(millis) = millis {
                    self.retry = Some(millis);
                    self.reconnection_time = Some(millis);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch<F: FnMut(&SseEvent)>(&mut self, on_event: &mut F) {
        let retry = self.retry.take();
        self.in_event = false;
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        // Every data line appended a line feed; the last one is not part of the data.
        self.data.pop();
        // The buffers are lent to the event and taken back, with their capacity.
        let event = SseEvent {
            event: (!self.event_type.is_empty()).then(|| mem::take(&mut self.event_type)),
            data: mem::take(&mut self.data),
            id: (!self.last_id.is_empty()).then(|| mem::take(&mut self.last_id)),
            retry,
        };
        on_event(&event);
        let SseEvent {
            event: event_type,
            mut data,
            id,
            ..
        } = event;
        data.clear();
        self.data = data;
        if let Some(mut event_type) = event_type {
            event_type.clear();
            self.event_type = event_type;
        }
        if let Some(id) = id {
            self.last_id = id;
        }
    }
}

/// Why an event cannot be written as SSE text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseEncodeError {
    #[error("SSE field `{0}` contains a line break, which the format cannot carry")]
    LineBreak(&'static str),
    #[error("SSE field `id` contains NUL, which decoders ignore")]
    NulInId,
}

/// Writes events as SSE text, one after another on the same stream.
///
/// It remembers whether the receiving side holds a last event ID, so that an event
/// without one is written with an empty `id` field that clears it.
#[derive(Debug, Default)]
pub struct SseEncoder {
    id_in_effect: bool,
}

impl SseEncoder {
    pub fn new() -> Self {
        SseEncoder::default()
    }

    /// Appends `event` to `out`: `event`, `id` and `retry` lines when set, one `data` line
    /// per line of the data (split at CR, LF or CRLF), then a blank line. Nothing is
    /// written if the event cannot be encoded.
    pub fn encode(&mut self, event: &SseEvent, out: &mut Vec<u8>) -> Result<(), SseEncodeError> {
        self.encode_with_data(event, &event.data, out)
    }

    /// As [`encode`](Self::encode), with `data` in place of the event's own.
    pub fn encode_with_data(
        &mut self,
        event: &SseEvent,
        data: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), SseEncodeError> {
        let event_type = event.event.as_deref().filter(|t| !t.is_empty());
        let id = event.id.as_deref().filter(|id| !id.is_empty());
        if event_type.is_some_and(has_line_break) {
            return Err(SseEncodeError::LineBreak("event"));
        }
        if let Some(id) = id {
            if has_line_break(id) {
                return Err(SseEncodeError::LineBreak("id"));
            }
            if id.contains('\0') {
                return Err(SseEncodeError::NulInId);
            }
        }
        if let Some(event_type) = event_type {
            write_field(out, b"event", event_type.as_bytes());
        }
        match id {
            Some(id) => write_field(out, b"id", id.as_bytes()),
            None if self.id_in_effect => out.extend_from_slice(b"id\n"),
            None => {}
        }
        self.id_in_effect = id.is_some();
        if let Some(retry) = event.retry {
            write_field(out, b"retry", retry.to_string().as_bytes());
        }
        let mut data = data.as_bytes();
        while let Some(end) = memchr2(b'\r', b'\n', data) {
            write_field(out, b"data", &data[..end]);
            let crlf = data[end] == b'\r' && data.get(end + 1) == Some(&b'\n');
            data = &data[end + 1 + usize::from(crlf)..];
        }
        write_field(out, b"data", data);
        out.push(b'\n');
        Ok(())
    }
}

/// Appends one event to `out` as SSE text, as the first event of a stream.
pub fn encode_event(event: &SseEvent, out: &mut Vec<u8>) -> Result<(), SseEncodeError> {
    SseEncoder::new().encode(event, out)
}

fn has_line_break(s: &str) -> bool {
    memchr2(b'\r', b'\n', s.as_bytes()).is_some()
}

fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 3);
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// `bytes` as text, invalid UTF-8 replaced; valid text (nearly always) checked by the
/// standard library's fast path, which `from_utf8_lossy` does not take.
fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::*;

    fn decode(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut decoder = SseDecoder::default();
        let mut events = Vec::new();
        for chunk in chunks {
            decoder.feed(chunk, |e| events.push(e)).unwrap();
        }
        decoder.finish();
        events
    }

    fn message(data: &str) -> SseEvent {
        SseEvent {
            data: data.to_owned(),
            ..SseEvent::default()
        }
    }

    fn with_id(data: &str, id: &str) -> SseEvent {
        SseEvent {
            id: Some(id.to_owned()),
            ..message(data)
        }
    }

    #[test]
    fn lent_events_are_the_given_ones_and_the_buffers_come_back() {
        let stream =
            b"event: a\nid: 7\ndata: one\n\ndata: two\ndata: lines\n\nevent: b\ndata: 3\n\n";
        let mut lent = Vec::new();
        let mut decoder = SseDecoder::default();
        decoder
            .feed_each(stream, |e| lent.push(e.clone()))
            .expect("decodes");
        assert_eq!(lent, decode(&[stream]));
        assert_eq!(decoder.last_event_id(), Some("7"), "the id stays in effect");
        assert!(
            decoder.buffered_bytes() >= "two\nlines".len(),
            "the data buffer keeps its capacity"
        );
        decoder
            .feed_each(b"data: x\n\n", |e| {
                assert_eq!((e.event.as_deref(), e.id.as_deref()), (None, Some("7")));
            })
            .expect("decodes");
    }

    #[test]
    fn lf_ends_lines() {
        assert_eq!(decode(&[b"data: a\ndata: b\n\n"]), [message("a\nb")]);
    }

    #[test]
    fn cr_ends_lines() {
        assert_eq!(decode(&[b"data: a\rdata: b\r\r"]), [message("a\nb")]);
    }

    #[test]
    fn crlf_ends_lines() {
        assert_eq!(decode(&[b"data: a\r\ndata: b\r\n\r\n"]), [message("a\nb")]);
    }

    #[test]
    fn mixed_line_endings_end_lines() {
        assert_eq!(
            decode(&[b"data: a\rdata: b\r\ndata: c\n\r\n"]),
            [message("a\nb\nc")]
        );
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_break() {
        assert_eq!(
            decode(&[b"data: a\r", b"\ndata: b\r\n\r\n"]),
            [message("a\nb")]
        );
        assert_eq!(decode(&[b"data: a\r", b"", b"\n\r", b"\n"]), [message("a")]);
    }

    #[test]
    fn lone_cr_at_end_of_stream_ends_the_line() {
        let mut decoder = SseDecoder::default();
        let mut events = Vec::new();
        decoder.feed(b"data: a\r\r", |e| events.push(e)).unwrap();
        assert_eq!(events, [message("a")]);
        assert!(!decoder.finish());
    }

    #[test]
    fn bom_stripped_at_stream_start() {
        assert_eq!(decode(&[b"\xEF\xBB\xBFdata: a\n\n"]), [message("a")]);
    }

    #[test]
    fn bom_split_across_chunks_stripped() {
        assert_eq!(
            decode(&[b"\xEF", b"\xBB", b"\xBFdata: a\n\n"]),
            [message("a")]
        );
        assert_eq!(decode(&[b"\xEF\xBB", b"\xBFdata: a\n\n"]), [message("a")]);
    }

    #[test]
    fn bom_only_stripped_at_offset_zero() {
        // A second BOM, or one after the start, is part of the field name.
        assert_eq!(
            decode(&[b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\n"]),
            [] as [SseEvent; 0]
        );
        assert_eq!(
            decode(&[b"data: a\n\n\xEF\xBB\xBFdata: b\n\n"]),
            [message("a")]
        );
    }

    #[test]
    fn partial_bom_is_line_content() {
        assert_eq!(decode(&[b"\xEF\xBB", b"data: a\n\n"]), [] as [SseEvent; 0]);
        assert_eq!(decode(&[b"\xEF", b":comment\ndata: a\n\n"]), [message("a")]);
    }

    #[test]
    fn comment_lines_ignored() {
        assert_eq!(
            decode(&[b": keep-alive\ndata: a\n:\n\n:only a comment\n\n"]),
            [message("a")]
        );
    }

    #[test]
    fn field_without_colon_is_name_with_empty_value() {
        assert_eq!(decode(&[b"data\ndata\n\n"]), [message("\n")]);
        let event = SseEvent {
            event: Some("x".into()),
            ..message("a")
        };
        assert_eq!(decode(&[b"event: x\ndata: a\nevent\n\n"]), [message("a")]);
        assert_eq!(decode(&[b"event: x\ndata: a\n\n"]), [event]);
    }

    #[test]
    fn one_space_after_colon_removed() {
        assert_eq!(
            decode(&[b"data:a\n\ndata: b\n\ndata:  c\n\n"]),
            [message("a"), message("b"), message(" c")]
        );
    }

    #[test]
    fn value_keeps_later_colons() {
        assert_eq!(decode(&[b"data: a: b:c\n\n"]), [message("a: b:c")]);
    }

    #[test]
    fn multi_line_data_joined_by_lf() {
        assert_eq!(
            decode(&[b"data: a\ndata:\ndata: c\n\n"]),
            [message("a\n\nc")]
        );
    }

    #[test]
    fn data_alone_dispatches_empty_string() {
        assert_eq!(decode(&[b"data:\n\n"]), [message("")]);
    }

    #[test]
    fn empty_data_buffer_dispatches_nothing_and_resets_event_type() {
        assert_eq!(decode(&[b"event: ping\n\n\ndata: a\n\n"]), [message("a")]);
    }

    #[test]
    fn event_type_set_per_event() {
        let typed = SseEvent {
            event: Some("update".into()),
            ..message("a")
        };
        assert_eq!(
            decode(&[b"event: update\ndata: a\n\ndata: b\n\n"]),
            [typed, message("b")]
        );
    }

    #[test]
    fn id_containing_nul_ignored() {
        assert_eq!(
            decode(&[b"id: 1\ndata: a\n\nid: 2\0\ndata: b\n\n"]),
            [with_id("a", "1"), with_id("b", "1")]
        );
    }

    #[test]
    fn last_event_id_persists_across_events() {
        let mut decoder = SseDecoder::default();
        let mut events = Vec::new();
        decoder
            .feed(b"id: 7\ndata: a\n\ndata: b\n\nid: 8\n\n", |e| {
                events.push(e)
            })
            .unwrap();
        assert_eq!(events, [with_id("a", "7"), with_id("b", "7")]);
        assert_eq!(decoder.last_event_id(), Some("8"));
    }

    #[test]
    fn empty_id_clears_last_event_id() {
        assert_eq!(
            decode(&[b"id: 7\ndata: a\n\nid\ndata: b\n\n"]),
            [with_id("a", "7"), message("b")]
        );
    }

    #[test]
    fn retry_accepted_only_if_all_ascii_digits() {
        let mut decoder = SseDecoder::default();
        let mut events = Vec::new();
        let stream = b"retry: 1500\ndata: a\n\nretry: 15a\ndata: b\n\nretry:\nretry: -1\nretry: 99999999999999999999\ndata: c\n\n";
        decoder.feed(stream, |e| events.push(e)).unwrap();
        let first = SseEvent {
            retry: Some(1500),
            ..message("a")
        };
        assert_eq!(events, [first, message("b"), message("c")]);
        assert_eq!(decoder.reconnection_time(), Some(1500));
    }

    #[test]
    fn retry_without_data_sets_reconnection_time_only() {
        let mut decoder = SseDecoder::default();
        let mut events = Vec::new();
        decoder
            .feed(b"retry: 300\n\ndata: a\n\n", |e| events.push(e))
            .unwrap();
        assert_eq!(events, [message("a")]);
        assert_eq!(decoder.reconnection_time(), Some(300));
    }

    #[test]
    fn unknown_fields_ignored() {
        assert_eq!(
            decode(&[b"foo: bar\nData: x\ndata : y\ndata: a\nbaz\n\n"]),
            [message("a")]
        );
    }

    #[test]
    fn incomplete_final_event_not_dispatched() {
        let mut decoder = SseDecoder::default();
        let mut events = Vec::new();
        decoder
            .feed(b"data: a\n\ndata: b\n", |e| events.push(e))
            .unwrap();
        assert!(decoder.finish());
        assert_eq!(events, [message("a")]);
        decoder.feed(b"data: c", |e| events.push(e)).unwrap();
        assert!(decoder.finish());
        assert_eq!(events, [message("a")]);
    }

    #[test]
    fn utf8_split_across_chunks_decoded() {
        let stream = "data: é€𝄞\n\n".as_bytes();
        for cut in 0..=stream.len() {
            assert_eq!(decode(&[&stream[..cut], &stream[cut..]]), [message("é€𝄞")]);
        }
    }

    #[test]
    fn invalid_utf8_replaced() {
        assert_eq!(
            decode(&[b"data: a\xFFb\xE2\x82\nid: \xC3\ndata: c\n\n"]),
            [with_id("a\u{FFFD}b\u{FFFD}\nc", "\u{FFFD}")]
        );
    }

    #[test]
    fn line_longer_than_max_line_is_an_error() {
        let limits = SseLimits {
            max_line: 8,
            max_event: 100,
        };
        let mut decoder = SseDecoder::new(limits);
        let mut events = Vec::new();
        decoder.feed(b"data: ab\n\n", |e| events.push(e)).unwrap();
        let err = decoder
            .feed(b"data: abc\n\n", |e| events.push(e))
            .unwrap_err();
        assert_eq!(
            err,
            SseError::LineTooLong {
                limit: 8,
                offset: 18
            }
        );
        assert_eq!(
            err.to_string(),
            "SSE line longer than max_line (8 bytes): limit exceeded at byte offset 18"
        );
        assert_eq!(events, [message("ab")]);
    }

    #[test]
    fn line_limit_holds_before_the_line_ends() {
        let limits = SseLimits {
            max_line: 8,
            max_event: 100,
        };
        let mut decoder = SseDecoder::new(limits);
        decoder.feed(b"\xEF\xBB\xBF", |_| ()).unwrap();
        decoder.feed(b"data:", |_| ()).unwrap();
        decoder.feed(b" ab", |_| ()).unwrap();
        let err = decoder.feed(b"c", |_| ()).unwrap_err();
        assert_eq!(
            err,
            SseError::LineTooLong {
                limit: 8,
                offset: 11
            }
        );
        assert!(decoder.line.capacity() <= 16);
    }

    #[test]
    fn event_larger_than_max_event_is_an_error() {
        let limits = SseLimits {
            max_line: 100,
            max_event: 6,
        };
        let mut decoder = SseDecoder::new(limits);
        let mut events = Vec::new();
        decoder
            .feed(b"data: abcde\n\ndata: ab\ndata: cde\n", |e| events.push(e))
            .unwrap_err();
        let err = decoder.feed(b"", |e| events.push(e)).unwrap_err();
        assert_eq!(
            err,
            SseError::EventTooLarge {
                limit: 6,
                offset: 22
            }
        );
        assert!(err.to_string().contains("max_event (6 bytes)"));
        assert_eq!(events, [message("abcde")]);
    }

    #[test]
    fn decoder_is_new_after_finish() {
        let mut decoder = SseDecoder::new(SseLimits {
            max_line: 4,
            max_event: 100,
        });
        decoder.feed(b"id: 1\n", |_| ()).unwrap_err();
        decoder.finish();
        let mut events = Vec::new();
        decoder
            .feed(b"\xEF\xBB\xBFdata\n\n", |e| events.push(e))
            .unwrap();
        assert_eq!(events, [message("")]);
    }

    #[test]
    fn encode_writes_set_fields_then_data_lines() {
        let event = SseEvent {
            event: Some("update".into()),
            data: "a\nb".into(),
            id: Some("7".into()),
            retry: Some(1000),
        };
        let mut out = Vec::new();
        encode_event(&event, &mut out).unwrap();
        assert_eq!(
            out,
            b"event: update\nid: 7\nretry: 1000\ndata: a\ndata: b\n\n"
        );
        out.clear();
        encode_event(&message(""), &mut out).unwrap();
        assert_eq!(out, b"data: \n\n");
    }

    #[test]
    fn encode_splits_data_at_cr_lf_and_crlf() {
        let mut out = Vec::new();
        encode_event(&message("a\rb\r\nc\nd\r"), &mut out).unwrap();
        assert_eq!(out, b"data: a\ndata: b\ndata: c\ndata: d\ndata: \n\n");
        assert_eq!(decode(&[&out]), [message("a\nb\nc\nd\n")]);
    }

    #[test]
    fn encode_refuses_line_break_in_event_or_id() {
        let mut out = Vec::new();
        let event = SseEvent {
            event: Some("a\nb".into()),
            ..message("x")
        };
        assert_eq!(
            encode_event(&event, &mut out),
            Err(SseEncodeError::LineBreak("event"))
        );
        assert_eq!(
            encode_event(&with_id("x", "1\r"), &mut out),
            Err(SseEncodeError::LineBreak("id"))
        );
        assert_eq!(
            encode_event(&with_id("x", "1\0"), &mut out),
            Err(SseEncodeError::NulInId)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn encoder_clears_id_for_event_without_one() {
        let mut encoder = SseEncoder::new();
        let mut out = Vec::new();
        for event in [with_id("a", "1"), message("b"), message("c")] {
            encoder.encode(&event, &mut out).unwrap();
        }
        assert_eq!(out, b"id: 1\ndata: a\n\nid\ndata: b\n\ndata: c\n\n");
    }

    /// The rules read literally: decode the whole stream, strip one BOM, split lines, process.
    fn reference_decode(stream: &[u8]) -> Vec<SseEvent> {
        let text = String::from_utf8_lossy(stream);
        let text = text.strip_prefix('\u{FEFF}').unwrap_or(&text);
        let mut lines = Vec::new();
        let mut rest = text;
        while let Some(end) = rest.find(['\r', '\n']) {
            lines.push(&rest[..end]);
            let skip = if rest[end..].starts_with("\r\n") {
                2
            } else {
                1
            };
            rest = &rest[end + skip..];
        }
        let (mut data, mut event_type, mut last_id) = (String::new(), String::new(), String::new());
        let mut retry = None;
        let mut events = Vec::new();
        for line in lines {
            if line.is_empty() {
                let retry = retry.take();
                if data.is_empty() {
                    event_type.clear();
                    continue;
                }
                data.pop();
                events.push(SseEvent {
                    event: (!event_type.is_empty()).then(|| mem::take(&mut event_type)),
                    data: mem::take(&mut data),
                    id: (!last_id.is_empty()).then(|| last_id.clone()),
                    retry,
                });
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.find(':') {
                Some(colon) => {
                    let value = &line[colon + 1..];
                    (&line[..colon], value.strip_prefix(' ').unwrap_or(value))
                }
                None => (line, ""),
            };
            match field {
                "data" => {
                    data.push_str(value);
                    data.push('\n');
                }
                "event" => event_type = value.to_owned(),
                "id" if !value.contains('\0') => last_id = value.to_owned(),
                "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                    if let Ok(millis) = value.parse() {
                        retry = Some(millis);
                    }
                }
                _ => {}
            }
        }
        events
    }

    type Decoded = (Vec<SseEvent>, Result<bool, SseError>);

    fn decode_cut(stream: &[u8], cuts: &[usize], limits: SseLimits) -> Decoded {
        let mut decoder = SseDecoder::new(limits);
        let mut events = Vec::new();
        let mut from = 0;
        for cut in cuts.iter().copied().chain([stream.len()]) {
            if let Err(e) = decoder.feed(&stream[from..cut], |e| events.push(e)) {
                return (events, Err(e));
            }
            from = cut;
        }
        (events, Ok(decoder.finish()))
    }

    fn field_line() -> impl Strategy<Value = Vec<u8>> {
        let name = prop_oneof![
            Just("data"),
            Just("event"),
            Just("id"),
            Just("retry"),
            Just(""),
            Just("Data"),
            Just("x"),
        ];
        let separator = prop_oneof![Just(":"), Just(": "), Just(":  "), Just("")];
        let value = prop_oneof![r"[a-z0-9 :]{0,6}", r"[aé€𝄞\x00]{0,4}", r"[0-9]{1,3}"];
        (name, separator, value).prop_map(|(n, s, v)| format!("{n}{s}{v}").into_bytes())
    }

    fn line() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => field_line(),
            3 => Just(Vec::new()),
            1 => r"[a-z ]{0,4}".prop_map(|c| format!(":{c}").into_bytes()),
            1 => vec(any::<u8>(), 0..4),
        ]
    }

    fn event_stream() -> impl Strategy<Value = Vec<u8>> {
        let line_end = prop_oneof![Just(&b"\n"[..]), Just(&b"\r"[..]), Just(&b"\r\n"[..])];
        (
            prop_oneof![Just(&b""[..]), Just(&BOM[..]), Just(&BOM[..2])],
            vec((line(), line_end), 0..24),
            vec(any::<u8>(), 0..3),
        )
            .prop_map(|(start, lines, tail)| {
                let mut stream = start.to_vec();
                for (line, end) in lines {
                    stream.extend_from_slice(&line);
                    stream.extend_from_slice(end);
                }
                stream.extend_from_slice(&tail);
                stream
            })
    }

    fn encodable_event() -> impl Strategy<Value = SseEvent> {
        (
            proptest::option::of(r"[^\r\n]{1,8}"),
            r"[^\r]{0,24}",
            proptest::option::of(r"[^\r\n\x00]{1,8}"),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(|(event, data, id, retry)| SseEvent {
                event,
                data,
                id,
                retry,
            })
    }

    proptest! {
        #[test]
        fn any_chunking_decodes_like_the_whole_stream(
            stream in event_stream(),
            cuts in vec(any::<Index>(), 0..8),
            small_limits in any::<bool>(),
        ) {
            let limits = if small_limits {
                SseLimits { max_line: 10, max_event: 12 }
            } else {
                SseLimits::default()
            };
            let whole = decode_cut(&stream, &[], limits);
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            cuts.sort_unstable();
            prop_assert_eq!(&decode_cut(&stream, &cuts, limits), &whole);
            for cut in 0..=stream.len() {
                prop_assert_eq!(&decode_cut(&stream, &[cut], limits), &whole);
            }
            let every_byte: Vec<usize> = (1..stream.len()).collect();
            prop_assert_eq!(&decode_cut(&stream, &every_byte, limits), &whole);
        }

        #[test]
        fn decoding_follows_the_rules_read_literally(stream in event_stream()) {
            let (events, finished) = decode_cut(&stream, &[], SseLimits::default());
            prop_assert!(finished.is_ok());
            prop_assert_eq!(events, reference_decode(&stream));
        }

        #[test]
        fn decode_of_encode_is_identity(event in encodable_event()) {
            let mut text = Vec::new();
            encode_event(&event, &mut text).unwrap();
            prop_assert_eq!(decode(&[&text]), [event]);
        }

        #[test]
        fn decode_of_encoded_stream_is_identity(events in vec(encodable_event(), 0..6)) {
            let mut encoder = SseEncoder::new();
            let mut text = Vec::new();
            for event in &events {
                encoder.encode(event, &mut text).unwrap();
            }
            prop_assert_eq!(decode(&[&text]), events);
        }
    }
}
