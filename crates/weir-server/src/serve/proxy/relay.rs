//! The per-stream core of the proxy, with no I/O: fed the upstream's bytes, it gives the
//! bytes to send to the client, says whether it takes more upstream bytes now, and when the
//! stream is done or failed. [`super::stream::ProxyStream`] drives it over the sockets;
//! the tests here step it by hand.
//!
//! # What it does with each event
//!
//! Each upstream event is decoded, read once by the route's [`Dialect`] into a [`Frame`]
//! (or, when it differs from the last text event only in its token text, by that event's
//! [`Shape`]), its token text passed through the text filter (redaction) if there is one,
//! and encoded again. Plain and redacting streams take the same decisions on the same
//! frames. Nothing is allocated per event: the decoder lends its buffers, the filter and
//! the rewriting write into buffers the relay keeps.
//!
//! # Failure
//!
//! A failure, the upstream's own (an error event) or weir's (a reset, silence, a malformed
//! event, an end before the last event), ends the stream the same way: every text still
//! held back is released (through the filter, so redacted), then the error event, then
//! nothing more.

use weir_stages::codec::sse::{SseDecoder, SseEncoder, SseEvent, SseLimits};

use super::blocks::Blocks;
use super::dialect::{Dialect, Frame, FrameError, Shape};
use crate::serve::stream_stats::Outcome;

/// What one read may bring for a slow client at least: its chunk is one read's output.
const SLOW_READ: usize = 4 << 10;

/// Output gathered from several upstream reads into one chunk while the client keeps up:
/// fewer, larger reads and writes, which is most of what a token costs on loopback.
const FAST_BATCH: usize = 32 << 10;

/// What a relay allocates whatever it holds (its filter's box, its containers' headers).
const RELAY_FIXED: usize = 256;

/// Text blocks (choices, content blocks) one stream may use: each keeps a template and,
/// when redacting, a redacting stream, so the upstream's block index must not make that
/// state grow without bound.
const MAX_TEXT_BLOCKS: u64 = 64;

/// Rewrites token text as it streams, holding back what it cannot decide yet.
pub trait TextFilter: Send + 'static {
    /// Takes the next piece of `block`'s text; appends what may be sent now to `out`.
    fn push(&mut self, block: u64, text: &str, out: &mut String);
    /// The block ends: appends everything still held, rewritten, to `out`.
    fn flush(&mut self, block: u64, out: &mut String);
    /// Bytes the filter holds (text held back and its state), at most.
    fn held_bytes(&self) -> usize;
    /// Reports the redactions made so far as `(kind, count)`, for the stream's metrics
    /// and its end-of-stream log line; called once, when the stream ends.
    fn redactions(&self, _report: &mut dyn FnMut(&str, u64)) {}
    /// Frees what holds nothing now: the stream waits on its client.
    fn release_spare(&mut self) {}
}

/// How the client takes what the relay gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// It takes each chunk as soon as it is out.
    KeepsUp,
    /// It has not kept up for long: its chunks are one read each, sized to what its
    /// socket takes now (`kernel_room`, 0 if not known) and at least `SLOW_READ`.
    Slow { kernel_room: usize },
}

/// What the relay did since it was last asked, for the stream's figures.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub upstream_bytes: u64,
    pub events: u64,
    pub tokens: u64,
}

pub struct Relay {
    /// The stream's share of the memory budget: everything the relay holds counts against
    /// it, and a stream that would hold more fails.
    buffer: usize,
    dialect: &'static dyn Dialect,
    decoder: SseDecoder,
    /// The last text event's shape: the next one like it is read by its text alone.
    shape: Shape,
    encoder: SseEncoder,
    filter: Option<Box<dyn TextFilter>>,
    /// The data of the last token event of each block: the shape for releasing held-back text.
    templates: Blocks<String>,
    /// The filter's output for the event at hand, and that event's data rewritten with
    /// it: kept between events, so that a token costs no allocation.
    released: String,
    rewritten: String,
    out: Vec<u8>,
    saw_terminal: bool,
    ended: Option<Outcome>,
    tally: Tally,
}

impl Relay {
    /// A relay holding at most `buffer` bytes: a line or an event may take half, the
    /// blocks' templates an eighth, a fast client's batch a quarter; a stream that would
    /// hold more than `buffer` in all fails.
    pub fn new(
        dialect: &'static dyn Dialect,
        buffer: usize,
        filter: Option<Box<dyn TextFilter>>,
    ) -> Self {
        let limits = SseLimits {
            max_line: buffer / 2,
            max_event: buffer / 2,
        };
        Relay {
            buffer,
            dialect,
            decoder: SseDecoder::new(limits),
            shape: Shape::default(),
            encoder: SseEncoder::new(),
            filter,
            templates: Blocks::default(),
            released: String::new(),
            rewritten: String::new(),
            out: Vec::new(),
            saw_terminal: false,
            ended: None,
            tally: Tally::default(),
        }
    }

    /// How many upstream bytes the relay takes now (0: none). A slow client gets one
    /// `SLOW_READ` once its last output is handed out (nothing is read ahead of it); a
    /// client that keeps up gets the output of several reads in one chunk, at most
    /// `FAST_BATCH` or a quarter of the buffer, each read as large as the room left in it.
    pub fn upstream_room(&self, client: Pace) -> usize {
        if self.ended.is_some() {
            return 0;
        }
        let batch = FAST_BATCH.min(self.buffer / 4);
        match client {
            // A quarter spare: the output may outgrow the read (text held back before).
            Pace::Slow { kernel_room } if self.out.is_empty() => {
                (kernel_room - kernel_room / 4).min(batch).max(SLOW_READ)
            }
            Pace::Slow { .. } => 0,
            Pace::KeepsUp => {
                let room = batch.saturating_sub(self.out.len());
                // A nearly full batch goes out rather than take a sliver more.
                if room < batch / 4 {
                    0
                } else {
                    room
                }
            }
        }
    }

    /// Bytes the relay has allocated for what it holds between two feeds: the decoder's
    /// partial line and event, output not yet handed out, the blocks' templates and the
    /// filter's held-back text. Never more than `buffer` once a feed returns.
    pub fn held_bytes(&self) -> usize {
        let template_entry = std::mem::size_of::<(u64, String)>();
        RELAY_FIXED
            + self.decoder.buffered_bytes()
            + self.shape.held_bytes()
            + self.released.capacity()
            + self.rewritten.capacity()
            + self.out.capacity()
            + self
                .templates
                .values()
                .map(|t| template_entry + t.capacity())
                .sum::<usize>()
            + self.filter.as_ref().map_or(0, |f| f.held_bytes())
    }

    /// How the stream ended, once it has.
    pub fn ended(&self) -> Option<Outcome> {
        self.ended
    }

    /// The bytes to send to the client now, if any.
    pub fn take_output(&mut self) -> Option<Vec<u8>> {
        (!self.out.is_empty()).then(|| std::mem::take(&mut self.out))
    }

    /// What happened since the last call.
    pub fn take_tally(&mut self) -> Tally {
        std::mem::take(&mut self.tally)
    }

    /// Reports the filter's redactions (at the end of the stream).
    pub fn redactions(&self, report: &mut dyn FnMut(&str, u64)) {
        if let Some(filter) = &self.filter {
            filter.redactions(report);
        }
    }

    /// Takes the next bytes of the upstream body.
    pub fn feed(&mut self, data: &[u8]) {
        if self.ended.is_some() {
            return;
        }
        self.tally.upstream_bytes += data.len() as u64;
        // One allocation for the read's output, where appending events would double its way up.
        self.out.reserve(data.len());
        // Each event is forwarded as it is decoded: a list of a whole read's events
        // would keep its capacity for the life of the stream.
        let mut decoder = std::mem::take(&mut self.decoder);
        let mut failure = None;
        let decoded = decoder.feed_each(data, |event| {
            if failure.is_none() && self.ended.is_none() {
                failure = self.forward(event).err();
            }
        });
        self.decoder = decoder;
        if let Err(e) = decoded {
            self.fail(
                Outcome::UpstreamMalformed,
                &format!("upstream sent a malformed stream: {e}"),
            );
        } else if let Some(e) = failure {
            self.fail(Outcome::UpstreamMalformed, &e.to_string());
        } else if self.held_bytes() > self.buffer {
            let held = self.held_bytes();
            self.fail(
                Outcome::UpstreamMalformed,
                &format!(
                    "the stream needs {held} bytes at once, more than this route's buffer of {} bytes",
                    self.buffer
                ),
            );
        }
    }

    /// The upstream body ended.
    pub fn upstream_ended(&mut self) {
        if self.ended.is_some() {
            return;
        }
        if self.saw_terminal {
            self.ended = Some(Outcome::Completed);
        } else {
            self.fail(
                Outcome::UpstreamIncomplete,
                "upstream ended the stream before its last event",
            );
        }
    }

    /// Frees the buffers that hold nothing now: a stream waiting on a slow client keeps
    /// only what it must (they grow again with the next token).
    pub fn release_spare(&mut self) {
        self.decoder.release_spare();
        self.shape = Shape::default();
        self.released = String::new();
        self.rewritten = String::new();
        if self.out.is_empty() {
            self.out = Vec::new();
        }
        if let Some(filter) = &mut self.filter {
            filter.release_spare();
        }
    }

    /// The upstream has been silent for a while: a comment keeps the client's connection alive.
    pub fn keepalive(&mut self) {
        if self.ended.is_none() {
            self.out.extend_from_slice(b": keep-alive\n\n");
        }
    }

    /// Ends the stream in failure: what is held back, then weir's error event.
    pub fn fail(&mut self, outcome: Outcome, message: &str) {
        if self.ended.is_some() {
            return;
        }
        self.release_held();
        let event = self.dialect.error_event(outcome.as_str(), message);
        // The encoder refuses only line breaks in event names and ids; ours have none.
        let _ = self.emit(&event, false);
        self.ended = Some(outcome);
    }

    fn forward(&mut self, event: &SseEvent) -> Result<(), FrameError> {
        if self.saw_terminal {
            return Ok(());
        }
        let frame = match self.shape.recognise(event) {
            Some(frame) => frame,
            None => {
                let frame = self.dialect.parse(event)?;
                self.shape.learn(event, &frame);
                frame
            }
        };
        if let Frame::Text { block, .. } | Frame::EndOfBlock { block } = frame {
            if block >= MAX_TEXT_BLOCKS {
                return Err(FrameError::TooManyBlocks {
                    block,
                    max: MAX_TEXT_BLOCKS,
                });
            }
        }
        match frame {
            Frame::Text {
                block,
                text,
                ends_block,
            } => {
                let Some(filter) = self.filter.as_mut() else {
                    return self.emit(event, !text.text.is_empty());
                };
                let mut released = std::mem::take(&mut self.released);
                released.clear();
                filter.push(block, &text.text, &mut released);
                if ends_block {
                    filter.flush(block, &mut released);
                }
                let token = !released.is_empty();
                let emitted = if released == *text.text {
                    self.emit(event, token)
                } else {
                    let mut data = std::mem::take(&mut self.rewritten);
                    text.replace_into(&event.data, &released, &mut data);
                    let emitted = self.emit_with_data(event, &data, token);
                    self.rewritten = data;
                    emitted
                };
                self.released = released;
                emitted?;
                self.keep_template(block, &event.data);
                Ok(())
            }
            Frame::EndOfBlock { block } => {
                self.release_block(block)?;
                self.emit(event, false)
            }
            Frame::ToolCall => self.emit(event, true),
            Frame::Terminal => {
                self.saw_terminal = true;
                self.emit(event, false)
            }
            Frame::Error => {
                self.release_held();
                self.emit(event, false)?;
                self.ended = Some(Outcome::UpstreamError);
                Ok(())
            }
            Frame::Other => self.emit(event, false),
        }
    }

    /// Keeps a copy of `data` as the shape for releasing `block`'s held-back text later,
    /// if the templates' share of the buffer has room; else that text is released in a
    /// bare event. The block's buffer is reused from one token to the next.
    fn keep_template(&mut self, block: u64, data: &str) {
        let others: usize = self
            .templates
            .keys()
            .filter(|&b| b != block)
            .filter_map(|b| self.templates.get(b).map(String::capacity))
            .sum();
        let room = (self.buffer / 8).saturating_sub(others);
        let template = self.templates.get_or_insert_with(block, String::new);
        if template.capacity() > room {
            *template = String::new();
        }
        template.clear();
        if data.len() <= room {
            template.reserve_exact(data.len());
            template.push_str(data);
        }
    }

    /// Sends what the filter still holds of `block`, redacted, as a token event.
    fn release_block(&mut self, block: u64) -> Result<(), FrameError> {
        let Some(filter) = self.filter.as_mut() else {
            return Ok(());
        };
        let mut rest = String::new();
        filter.flush(block, &mut rest);
        if rest.is_empty() {
            return Ok(());
        }
        let template = match self.templates.get(block) {
            Some(t) if !t.is_empty() => t.as_str(),
            _ => "null",
        };
        let release = self.dialect.token_event(template, block, &rest);
        self.emit(&release, true)
    }

    /// Sends what the filter holds of every block: the stream ends before their ends.
    fn release_held(&mut self) {
        let blocks: Vec<u64> = self.templates.keys().collect();
        for block in blocks {
            let _ = self.release_block(block);
        }
    }

    /// Encodes `event` for the client; `token` if it carries token text.
    fn emit(&mut self, event: &SseEvent, token: bool) -> Result<(), FrameError> {
        self.emit_with_data(event, &event.data, token)
    }

    /// Encodes `event` with `data` in place of its own.
    fn emit_with_data(
        &mut self,
        event: &SseEvent,
        data: &str,
        token: bool,
    ) -> Result<(), FrameError> {
        self.encoder.encode_with_data(event, data, &mut self.out)?;
        self.tally.events += 1;
        self.tally.tokens += u64::from(token);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::config::Protocol;
    use crate::serve::proxy::redaction;

    fn relay(protocol: Protocol, redact: bool) -> Relay {
        let filter = redact.then(|| {
            let make = redaction::factory(&["email".to_string()]).expect("filter");
            make()
        });
        Relay::new(protocol.dialect(), 64 << 10, filter)
    }

    fn openai_token(text: &str) -> String {
        format!("data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}},\"finish_reason\":null}}]}}\n\n")
    }

    fn anthropic_token(text: &str) -> String {
        format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{text}\"}}}}\n\n")
    }

    const OPENAI_END: &str = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
    const ANTHROPIC_END: &str = "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    fn stream(protocol: Protocol, tokens: &[&str], end: &str) -> String {
        let token = match protocol {
            Protocol::Openai => openai_token,
            Protocol::Anthropic => anthropic_token,
        };
        tokens.iter().map(|t| token(t)).collect::<String>() + end
    }

    /// Feeds `input` in pieces cut at `cuts`, then its end; returns all output and the outcome.
    fn run(mut relay: Relay, input: &[u8], cuts: &[usize], end: bool) -> (String, Option<Outcome>) {
        let mut out = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([input.len()].iter()) {
            relay.feed(&input[from..cut]);
            from = cut;
            out.extend(relay.take_output().unwrap_or_default());
        }
        if end {
            relay.upstream_ended();
            out.extend(relay.take_output().unwrap_or_default());
        }
        (String::from_utf8(out).expect("utf-8"), relay.ended())
    }

    #[test]
    fn output_is_the_same_wherever_the_upstream_bytes_are_split() {
        for protocol in [Protocol::Openai, Protocol::Anthropic] {
            let end = match protocol {
                Protocol::Openai => OPENAI_END,
                Protocol::Anthropic => ANTHROPIC_END,
            };
            let input = stream(
                protocol,
                &["write to al", "ice@exam", "ple.com", " today"],
                end,
            );
            for redact in [false, true] {
                let (whole, outcome) = run(relay(protocol, redact), input.as_bytes(), &[], true);
                assert_eq!(outcome, Some(Outcome::Completed));
                assert_eq!(whole.contains("[EMAIL]"), redact, "{whole}");
                assert_eq!(whole.contains("ice@exam"), !redact, "{whole}");
                for cut in 0..=input.len() {
                    let (split, _) = run(relay(protocol, redact), input.as_bytes(), &[cut], true);
                    assert_eq!(split, whole, "{protocol:?} redact={redact} cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn spare_buffers_released_between_any_two_bytes_change_nothing_but_what_is_held() {
        for protocol in [Protocol::Openai, Protocol::Anthropic] {
            let input = stream(protocol, &["write to al", "ice@exam", "ple.com now"], "");
            for redact in [false, true] {
                let (whole, _) = run(relay(protocol, redact), input.as_bytes(), &[], true);
                let mut r = relay(protocol, redact);
                let mut out = Vec::new();
                let mut released_less = false;
                for byte in input.as_bytes().chunks(1) {
                    r.feed(byte);
                    out.extend(r.take_output().unwrap_or_default());
                    let before = r.held_bytes();
                    r.release_spare();
                    assert!(r.held_bytes() <= before, "{protocol:?} redact={redact}");
                    released_less |= r.held_bytes() < before;
                }
                r.upstream_ended();
                out.extend(r.take_output().unwrap_or_default());
                assert_eq!(
                    String::from_utf8(out).expect("utf-8"),
                    whole,
                    "redact={redact}"
                );
                assert!(
                    released_less,
                    "{protocol:?} redact={redact}: something was freed"
                );
            }
        }
    }

    #[test]
    fn a_late_error_ends_the_stream_the_same_way_with_or_without_redaction() {
        // The error object is not the frame's first key.
        let error = "data: {\"id\":\"c\",\"error\":{\"message\":\"overloaded\"}}\n\n";
        let input = stream(Protocol::Openai, &["mail al", "ice@example.com now"], "")
            + error
            + &openai_token("after the error")
            + "data: [DONE]\n\n";
        for redact in [false, true] {
            let mut r = relay(Protocol::Openai, redact);
            r.feed(input.as_bytes());
            let out = String::from_utf8(r.take_output().expect("output")).expect("utf-8");
            assert_eq!(r.ended(), Some(Outcome::UpstreamError), "redact={redact}");
            let (before, after) = out.split_once("overloaded").expect("the error passes");
            assert!(
                before.contains("now"),
                "every safe byte before the error: {out}"
            );
            assert_eq!(before.contains("[EMAIL]"), redact, "{out}");
            assert!(
                !after.contains("after the error"),
                "nothing after it: {out}"
            );
            assert!(!after.contains("[DONE]"), "{out}");
            assert_eq!(r.upstream_room(Pace::KeepsUp), 0, "ended: no more reading");
        }
    }

    #[test]
    fn an_event_of_a_type_the_protocol_lacks_ends_the_stream_the_same_way_with_or_without_redaction(
    ) {
        let unknown = "event: thinking_delta\ndata: {\"text\":\"bob@example.com\"}\n\n";
        for protocol in [Protocol::Anthropic, Protocol::Openai] {
            let errors: Vec<String> = [false, true]
                .map(|redact| {
                    let mut r = relay(protocol, redact);
                    let input = stream(protocol, &["mail al"], "") + unknown;
                    r.feed(input.as_bytes());
                    assert_eq!(r.ended(), Some(Outcome::UpstreamMalformed));
                    let out = String::from_utf8(r.take_output().expect("output")).expect("utf-8");
                    let (before, error) = out
                        .rsplit_once("\n\n")
                        .and_then(|(rest, _)| rest.rsplit_once("\n\n"))
                        .expect("events");
                    assert!(
                        before.contains("mail") && before.contains("al"),
                        "the text before it: {out}"
                    );
                    assert!(!out.contains("bob@"), "its data is not forwarded: {out}");
                    error.to_string()
                })
                .into();
            assert!(
                errors[0].contains("upstream sent an event of type `thinking_delta`"),
                "{}",
                errors[0]
            );
            assert_eq!(errors[0], errors[1], "{protocol:?}");
        }
    }

    #[test]
    fn text_held_back_is_released_redacted_before_weirs_own_error() {
        let input = stream(Protocol::Anthropic, &["contact bob@example.co"], "");
        let mut r = relay(Protocol::Anthropic, true);
        r.feed(input.as_bytes());
        let first = String::from_utf8(r.take_output().unwrap_or_default()).expect("utf-8");
        assert!(
            !first.contains("bob"),
            "the possible address is held back: {first}"
        );
        r.upstream_ended();
        let rest = String::from_utf8(r.take_output().expect("output")).expect("utf-8");
        assert_eq!(r.ended(), Some(Outcome::UpstreamIncomplete));
        let released = rest.find("[EMAIL]").expect("released through the filter");
        let error = rest.find("event: error").expect("the error event");
        assert!(released < error, "released, then the error: {rest}");
        assert!(!rest.contains("bob@"), "{rest}");
    }

    #[test]
    fn tool_calls_count_as_tokens_on_both_paths() {
        let tool = "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{}\"}}]}}]}\n\n";
        for redact in [false, true] {
            let mut r = relay(Protocol::Openai, redact);
            r.feed(format!("{tool}{tool}data: [DONE]\n\n").as_bytes());
            let tally = r.take_tally();
            assert_eq!((tally.events, tally.tokens), (3, 2), "redact={redact}");
        }
    }

    #[test]
    fn a_fast_clients_batches_stay_within_a_small_buffer() {
        let tokens: Vec<String> = (0..2000)
            .map(|i| format!("token {i} of the stream "))
            .collect();
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        for redact in [false, true] {
            let input = stream(Protocol::Openai, &tokens, OPENAI_END);
            let filter = redact.then(|| {
                let make = redaction::factory(&["email".to_string()]).expect("filter");
                make()
            });
            let buffer = 16 << 10;
            let mut r = Relay::new(Protocol::Openai.dialect(), buffer, filter);
            let mut out = 0;
            // Reads as large as the relay has room for, taking its output when it has none.
            let mut rest = input.as_bytes();
            while !rest.is_empty() {
                let mut room = r.upstream_room(Pace::KeepsUp);
                if room == 0 {
                    out += r.take_output().map_or(0, |o| o.len());
                    room = r.upstream_room(Pace::KeepsUp);
                }
                let (read, after) = rest.split_at(room.min(rest.len()));
                rest = after;
                r.feed(read);
                assert!(
                    r.held_bytes() <= buffer,
                    "held {} of {buffer}",
                    r.held_bytes()
                );
                assert_eq!(r.ended(), None, "redact={redact}");
            }
            r.upstream_ended();
            out += r.take_output().map_or(0, |o| o.len());
            assert_eq!(r.ended(), Some(Outcome::Completed), "redact={redact}");
            assert!(out > input.len() / 2);
        }
    }

    #[test]
    fn output_waits_for_the_client_before_more_is_read() {
        let mut r = relay(Protocol::Openai, false);
        let slow = |kernel_room| Pace::Slow { kernel_room };
        assert_eq!(r.upstream_room(slow(0)), SLOW_READ, "room not known");
        let batch = FAST_BATCH.min((64 << 10) / 4);
        r.feed(openai_token("hi").as_bytes());
        assert_eq!(
            r.upstream_room(slow(64 << 10)),
            0,
            "its output is not taken yet"
        );
        let out = r.take_output().expect("output");
        r.feed(openai_token("hi").as_bytes());
        assert_eq!(
            r.upstream_room(Pace::KeepsUp),
            batch - out.len(),
            "a fast client's batch has room for the rest"
        );
        while r.upstream_room(Pace::KeepsUp) > 0 {
            r.feed(openai_token("hi").as_bytes());
        }
        let full = r.take_output().expect("output").len();
        assert!(
            full >= batch * 3 / 4 && full <= batch,
            "a nearly full batch goes out: {full} of {batch}"
        );
        assert_eq!(
            r.upstream_room(slow(1000)),
            SLOW_READ,
            "at least one small read"
        );
        assert_eq!(r.upstream_room(slow(8 << 10)), 6 << 10, "a quarter spare");
        assert_eq!(
            r.upstream_room(slow(1 << 20)),
            batch,
            "no more than a batch"
        );
        r.keepalive();
        assert_eq!(r.take_output().as_deref(), Some(&b": keep-alive\n\n"[..]));
    }

    #[test]
    fn malformed_frames_and_runaway_blocks_fail_the_same_way_on_both_paths() {
        let bad_block = "data: {\"choices\":[{\"index\":64,\"delta\":{\"content\":\"x\"}}]}\n\n";
        for redact in [false, true] {
            for input in ["data: {not json\n\n", bad_block] {
                let mut r = relay(Protocol::Openai, redact);
                r.feed(format!("{}{input}", openai_token("ok")).as_bytes());
                assert_eq!(r.ended(), Some(Outcome::UpstreamMalformed), "{input}");
                let out = String::from_utf8(r.take_output().expect("output")).expect("utf-8");
                assert!(
                    out.contains("\"ok\"") && out.contains("upstream_malformed"),
                    "{out}"
                );
            }
        }
    }

    #[test]
    fn events_after_the_terminal_are_ignored() {
        let mut r = relay(Protocol::Openai, false);
        r.feed(b"data: [DONE]\n\ndata: {oops\n\n");
        r.upstream_ended();
        assert_eq!(r.ended(), Some(Outcome::Completed));
        assert_eq!(r.take_output().as_deref(), Some(&b"data: [DONE]\n\n"[..]));
    }
}

/// Every byte allocated on this thread, live: the relay's allocation test compares what the
/// relay says it holds with what it has allocated.
#[cfg(test)]
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
    }

    pub struct Counting;

    fn add(bytes: isize) {
        // A const-initialised Cell without destructor: reading it never allocates.
        let _ = LIVE.try_with(|live| live.set(live.get() + bytes));
    }

    pub fn live() -> isize {
        LIVE.with(Cell::get)
    }

    // SAFETY: every call is passed to `System` unchanged with the caller's layout and
    // pointer, so `System`'s guarantees are ours; the counting beside it touches only a
    // thread-local integer and never allocates.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's contract for `alloc` is `System::alloc`'s.
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                add(layout.size() as isize);
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: as for `alloc`.
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() {
                add(layout.size() as isize);
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` and `layout` come from this allocator, which is `System`'s.
            unsafe { System.dealloc(ptr, layout) };
            add(-(layout.size() as isize));
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: as for `dealloc`, with the caller's contract for `realloc`.
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                add(new_size as isize - layout.size() as isize);
            }
            p
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;
}

#[cfg(test)]
mod budget_tests {
    use super::counting::live;
    use super::*;
    use crate::serve::config::Protocol;
    use crate::serve::proxy::redaction;

    /// A stream that makes a relay hold all it can: many text blocks each holding back a
    /// possible address, long events, and lines split across reads.
    fn demanding_stream(blocks: usize) -> String {
        let mut s = String::new();
        for round in 0..3 {
            for block in 0..blocks {
                let pad = "x".repeat(40 * (block % 7));
                s.push_str(&format!(
                    "data: {{\"id\":\"chatcmpl-{round}-{block}\",\"model\":\"m{pad}\",\"choices\":[{{\"index\":{block},\"delta\":{{\"content\":\"write to someone{block}@exam\"}},\"finish_reason\":null}}]}}\n\n"
                ));
            }
            let long = "y".repeat(3000);
            s.push_str(&format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{long}\"}}}}]}}\n\n"
            ));
        }
        s.push_str("data: [DONE]\n\n");
        s
    }

    #[test]
    fn everything_the_relay_holds_is_counted_and_within_its_buffer() {
        let buffer = 64 << 10;
        let make = redaction::factory(&["email".to_string(), "phone".to_string()]).expect("filter");
        let input = demanding_stream(12);
        for read in [97, 700, 4096] {
            let base = live();
            let mut relay = Relay::new(Protocol::Openai.dialect(), buffer, Some(make()));
            let (mut peak_actual, mut peak_counted) = (0isize, 0usize);
            for piece in input.as_bytes().chunks(read) {
                relay.feed(piece);
                let actual = live() - base;
                let counted = relay.held_bytes();
                assert!(
                    counted as isize >= actual,
                    "reads of {read}: counted {counted} < allocated {actual}"
                );
                assert!(counted <= buffer, "reads of {read}: {counted} > {buffer}");
                peak_actual = peak_actual.max(actual);
                peak_counted = peak_counted.max(counted);
                drop(relay.take_output());
            }
            assert_eq!(relay.ended(), None, "the stream was held within its buffer");
            println!("reads of {read}: peak allocated {peak_actual}, peak counted {peak_counted}");
        }
    }

    #[test]
    fn a_stream_that_would_hold_more_than_its_buffer_fails_naming_it() {
        let make = redaction::factory(&["email".to_string()]).expect("filter");
        let input = demanding_stream(60);
        let mut relay = Relay::new(Protocol::Openai.dialect(), 32 << 10, Some(make()));
        let mut out = Vec::new();
        for piece in input.as_bytes().chunks(4096) {
            relay.feed(piece);
            out.extend(relay.take_output().unwrap_or_default());
        }
        assert_eq!(relay.ended(), Some(Outcome::UpstreamMalformed));
        let out = String::from_utf8(out).expect("utf-8");
        assert!(
            out.contains("more than this route's buffer of 32768 bytes"),
            "{out:.300}"
        );
    }
}
