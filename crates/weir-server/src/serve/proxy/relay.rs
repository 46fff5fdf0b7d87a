//! The per-stream core of the proxy, with no I/O: fed the upstream's bytes, it gives the
//! bytes to send to the client, says whether it takes more upstream bytes now, and when the
//! stream is done or failed. [`super::stream::ProxyStream`] drives it over the sockets;
//! the tests here step it by hand.
//!
//! # What it does with each event
//!
//! Each upstream event is decoded, read once by the route's [`Dialect`] into a [`Frame`],
//! its token text passed through the text filter (redaction) if there is one, and encoded
//! again. Plain and redacting streams take the same decisions on the same frames.
//!
//! # Failure
//!
//! A failure, the upstream's own (an error event) or weir's (a reset, silence, a malformed
//! event, an end before the last event), ends the stream the same way: every text still
//! held back is released (through the filter, so redacted), then the error event, then
//! nothing more.

use weir_stages::codec::sse::{SseDecoder, SseEncoder, SseEvent, SseLimits};

use super::blocks::Blocks;
use super::dialect::{Dialect, Frame};
use crate::serve::stream_stats::Outcome;

/// Text blocks (choices, content blocks) one stream may use: each keeps a template and,
/// when redacting, a redacting stream, so the upstream's block index must not make that
/// state grow without bound.
const MAX_TEXT_BLOCKS: u64 = 64;

/// Rewrites token text as it streams, holding back what it cannot decide yet.
pub trait TextFilter: Send + 'static {
    /// Takes the next piece of `block`'s text; returns what may be sent now.
    fn push(&mut self, block: u64, text: &str) -> String;
    /// The block ends: everything still held, rewritten.
    fn flush(&mut self, block: u64) -> String;
    /// Reports the redactions made so far as `(kind, count)`, for the stream's metrics
    /// and its end-of-stream log line; called once, when the stream ends.
    fn redactions(&self, _report: &mut dyn FnMut(&str, u64)) {}
}

/// What the relay did since it was last asked, for the stream's figures.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub upstream_bytes: u64,
    pub events: u64,
    pub tokens: u64,
}

pub struct Relay {
    dialect: &'static dyn Dialect,
    decoder: SseDecoder,
    encoder: SseEncoder,
    filter: Option<Box<dyn TextFilter>>,
    /// The data of the last token event of each block: the shape for releasing held-back text.
    templates: Blocks<String>,
    out: Vec<u8>,
    saw_terminal: bool,
    ended: Option<Outcome>,
    tally: Tally,
}

impl Relay {
    pub fn new(
        dialect: &'static dyn Dialect,
        limits: SseLimits,
        filter: Option<Box<dyn TextFilter>>,
    ) -> Self {
        Relay {
            dialect,
            decoder: SseDecoder::new(limits),
            encoder: SseEncoder::new(),
            filter,
            templates: Blocks::default(),
            out: Vec::new(),
            saw_terminal: false,
            ended: None,
            tally: Tally::default(),
        }
    }

    /// Whether the relay takes more upstream bytes now: not ended, and less than `batch`
    /// bytes of output made and not yet handed out (a slow client gets a batch of 1: nothing
    /// is read ahead of it).
    pub fn wants_upstream(&self, batch: usize) -> bool {
        self.ended.is_none() && self.out.len() < batch
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
        let decoded = decoder.feed(data, |event| {
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
        } else if let Some(message) = failure {
            self.fail(Outcome::UpstreamMalformed, &message);
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

    fn forward(&mut self, event: SseEvent) -> Result<(), String> {
        if self.saw_terminal {
            return Ok(());
        }
        let dialect = self.dialect;
        let frame = dialect.parse(&event)?;
        if let Frame::Text { block, .. } | Frame::EndOfBlock { block } = frame {
            if block >= MAX_TEXT_BLOCKS {
                return Err(format!(
                    "upstream used text block {block}; at most {MAX_TEXT_BLOCKS} are supported"
                ));
            }
        }
        match frame {
            Frame::Text {
                block,
                text,
                ends_block,
            } => {
                let Some(filter) = self.filter.as_mut() else {
                    let token = !text.text.is_empty();
                    drop(text);
                    return self.emit(&event, token);
                };
                let mut released = filter.push(block, &text.text);
                if ends_block {
                    released.push_str(&filter.flush(block));
                }
                let token = !released.is_empty();
                let rewritten =
                    (released != *text.text).then(|| text.replaced_in(&event, &released));
                drop(text);
                self.emit(rewritten.as_ref().unwrap_or(&event), token)?;
                // The shape for releasing held-back text later: moved in, not copied.
                self.templates.insert(block, event.data);
                Ok(())
            }
            Frame::EndOfBlock { block } => {
                self.release_block(block)?;
                self.emit(&event, false)
            }
            Frame::ToolCall => self.emit(&event, true),
            Frame::Terminal => {
                self.saw_terminal = true;
                self.emit(&event, false)
            }
            Frame::Error => {
                self.release_held();
                self.emit(&event, false)?;
                self.ended = Some(Outcome::UpstreamError);
                Ok(())
            }
            Frame::Other => self.emit(&event, false),
        }
    }

    /// Sends what the filter still holds of `block`, redacted, as a token event.
    fn release_block(&mut self, block: u64) -> Result<(), String> {
        let Some(filter) = self.filter.as_mut() else {
            return Ok(());
        };
        let rest = filter.flush(block);
        if rest.is_empty() {
            return Ok(());
        }
        let template = self.templates.get(block).map_or("null", String::as_str);
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
    fn emit(&mut self, event: &SseEvent, token: bool) -> Result<(), String> {
        self.encoder
            .encode(event, &mut self.out)
            .map_err(|e| format!("cannot re-encode an upstream event: {e}"))?;
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
    use crate::serve::proxy::stream::sse_limits;

    fn relay(protocol: Protocol, redact: bool) -> Relay {
        let filter = redact.then(|| {
            let make = redaction::factory(&["email".to_string()]).expect("filter");
            make()
        });
        Relay::new(protocol.dialect(), sse_limits(64 << 10), filter)
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
            assert!(!r.wants_upstream(usize::MAX), "ended: no more reading");
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
    fn output_waits_for_the_client_before_more_is_read() {
        let mut r = relay(Protocol::Openai, false);
        assert!(r.wants_upstream(1));
        r.feed(openai_token("hi").as_bytes());
        assert!(!r.wants_upstream(1), "its output is not taken yet");
        assert!(r.wants_upstream(16 << 10), "a fast client's batch has room");
        assert!(r.take_output().is_some());
        assert!(r.wants_upstream(1));
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
