//! The body of a proxied stream: pulls the upstream only when the client takes bytes.
//!
//! # What
//!
//! Each poll of the response body reads the upstream socket at most once, decodes the
//! events in what it read, rewrites token text (redaction) and encodes them again, all
//! within the poll. Nothing reads ahead: while the client does not read, the body is not
//! polled, the upstream socket is not read, and TCP flow control pauses the upstream
//! server.
//!
//! # Failure
//!
//! Once the headers are out, an upstream failure (reset, silence past the idle timeout,
//! a malformed stream, an end before the protocol's last event) becomes one error event
//! of the route's protocol, and the stream ends.
//!
//! # Cancel safety
//!
//! Dropping the body (the client went away) drops the upstream body reader, which closes
//! the upstream connection, and the admission ticket, which frees the stream's share.
//!
//! # Telemetry
//!
//! The stream owns its [`StreamStats`]: bytes each way, events and tokens, the time to
//! the first token, and the time between handing a chunk out and the next poll (the
//! upstream is not read meanwhile: time it waited on the client). They are reported
//! once, when the body is dropped.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use serde_json::Value;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;
use weir_stages::codec::sse::{SseDecoder, SseEncoder, SseEvent, SseLimits};

use super::blocks::Blocks;
use super::protocol::{EventRole, TokenText};
use super::scrub::Scrubber;
use super::upstream::{BodyError, BodyReader};
use crate::serve::admission::Ticket;
use crate::serve::config::Protocol;
use crate::serve::send_queue::Backlog;
use crate::serve::shutdown::{Shutdown, SHUTTING_DOWN};
use crate::serve::stream_stats::{Outcome, StreamStats};

/// The step in which chunk allocations are sized (see `settled`).
const CHUNK_GRANULE: usize = 1024;

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

/// Limits and pacing of one proxied stream.
#[derive(Clone, Copy, Debug)]
pub struct StreamTiming {
    pub idle_timeout: Duration,
    pub keepalive: Duration,
}

/// The decoder's limits for a stream whose share of the memory budget is `buffer`: a
/// partial line and an event's data are what it holds, so each may take half.
pub fn sse_limits(buffer: u64) -> SseLimits {
    let half = usize::try_from(buffer / 2).unwrap_or(usize::MAX);
    SseLimits {
        max_line: half,
        max_event: half,
    }
}

/// Text blocks (choices, content blocks) one stream may use when its text is filtered.
const MAX_TEXT_BLOCKS: u64 = 64;

pub struct ProxyStream {
    upstream: BodyReader,
    relay: Relay,
    timing: StreamTiming,
    /// Wakes the stream for a keep-alive comment or the idle timeout. Upstream data moves
    /// both deadlines later without touching the timer: it fires early, and is set again.
    timer: Pin<Box<Sleep>>,
    last_upstream: Instant,
    last_keepalive: Instant,
    /// A slow client connection's last chunk: no new one until it has reached the kernel.
    backlog: Option<Backlog>,
    /// Removes the upstream key from what is sent, if the route has one.
    scrubber: Option<Scrubber>,
    /// The server's shutdown grace is over: end with the protocol's error event.
    grace_over: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

/// Turns the upstream's bytes into the client's: events decoded, filtered, encoded.
struct Relay {
    protocol: Protocol,
    decoder: SseDecoder,
    encoder: SseEncoder,
    filter: Option<Box<dyn TextFilter>>,
    /// The data of the last token event of each block: the shape for releasing held-back text.
    templates: Blocks<String>,
    out: Vec<u8>,
    saw_terminal: bool,
    done: bool,
    // Dropped before the stats: a stream counted as ended no longer holds its admission.
    _ticket: Ticket,
    stats: StreamStats,
}

impl ProxyStream {
    pub fn new(
        upstream: BodyReader,
        protocol: Protocol,
        timing: StreamTiming,
        limits: SseLimits,
        filter: Option<Box<dyn TextFilter>>,
        ticket: Ticket,
        stats: StreamStats,
    ) -> Self {
        let now = Instant::now();
        ProxyStream {
            upstream,
            relay: Relay {
                protocol,
                decoder: SseDecoder::new(limits),
                encoder: SseEncoder::new(),
                filter,
                templates: Blocks::default(),
                out: Vec::new(),
                saw_terminal: false,
                done: false,
                _ticket: ticket,
                stats,
            },
            timing,
            timer: Box::pin(tokio::time::sleep_until(now + timing.keepalive)),
            last_upstream: now,
            last_keepalive: now,
            backlog: None,
            scrubber: None,
            grace_over: None,
        }
    }

    /// Ends the stream with an error event when `shutdown`'s grace is over.
    pub fn ending_with(mut self, shutdown: &Shutdown) -> Self {
        self.grace_over = Some(shutdown.grace_over());
        self
    }

    /// Removes `secret` from every byte the client gets.
    pub fn scrubbing(mut self, secret: Option<Arc<[u8]>>) -> Self {
        self.scrubber = secret.map(Scrubber::new);
        self
    }

    /// Makes no new chunk for a slow connection until it has given the last to its socket.
    pub fn waiting_on(mut self, backlog: Option<Backlog>) -> Self {
        self.backlog = backlog;
        self
    }

    /// Nothing from the upstream yet: whether the timer has something to say (a keep-alive
    /// comment, or the end of the wait), or Pending until it has.
    fn poll_quiet(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let idle_deadline = self.last_upstream + self.timing.idle_timeout;
        let keepalive_due = self.last_upstream.max(self.last_keepalive) + self.timing.keepalive;
        let wake = idle_deadline.min(keepalive_due);
        if self.timer.deadline() > wake {
            self.timer.as_mut().reset(wake);
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if now >= idle_deadline {
                let secs = self.timing.idle_timeout.as_secs_f64();
                self.relay.fail(
                    Outcome::UpstreamTimeout,
                    &format!("upstream sent nothing for {secs} s"),
                );
                return Poll::Ready(());
            }
            if now >= keepalive_due {
                self.relay.out.extend_from_slice(b": keep-alive\n\n");
                self.last_keepalive = now;
                return Poll::Ready(());
            }
            self.timer.as_mut().reset(wake);
        }
        Poll::Pending
    }
}

/// The response body: each item is what one upstream read (or the timer) produced.
impl Stream for ProxyStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(backlog) = &this.backlog {
            ready!(backlog.poll_drained(cx));
        }
        this.relay.stats.polled();
        loop {
            if let Some(grace_over) = &mut this.grace_over {
                if grace_over.as_mut().poll(cx).is_ready() {
                    this.grace_over = None;
                    if !this.relay.done {
                        this.relay.fail(Outcome::ServerShutdown, SHUTTING_DOWN);
                    }
                }
            }
            if let Some(scrubber) = &mut this.scrubber {
                let out = std::mem::take(&mut this.relay.out);
                scrubber.pass(&out, &mut this.relay.out);
                if this.relay.done {
                    scrubber.finish(&mut this.relay.out);
                }
            }
            if !this.relay.out.is_empty() {
                let chunk = settled(std::mem::take(&mut this.relay.out));
                if let Some(backlog) = &this.backlog {
                    backlog.handed_a_chunk();
                }
                this.relay.stats.chunk_out(chunk.len());
                return Poll::Ready(Some(Ok(chunk)));
            }
            if this.relay.done {
                this.relay.stats.delivered();
                return Poll::Ready(None);
            }
            let relay = &mut this.relay;
            match this
                .upstream
                .poll_read_body(cx, |data| relay.take_upstream(data))
            {
                Poll::Ready(Ok(ended)) => {
                    this.last_upstream = Instant::now();
                    if ended && !relay.done {
                        relay.upstream_ended();
                    }
                }
                Poll::Ready(Err(e)) => {
                    let outcome = match e {
                        BodyError::Malformed(_) => Outcome::UpstreamMalformed,
                        _ => Outcome::UpstreamError,
                    };
                    relay.stats.caused_by(weir_runtime::error_chain(&e));
                    relay.fail(outcome, &e.client_message());
                }
                Poll::Pending => {
                    if this.poll_quiet(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

/// A chunk waits in hyper's write queue for as long as its client is slow. Each one gets
/// an allocation of its own, sized in steps of `CHUNK_GRANULE`: the hole a chunk leaves
/// then fits the next, where chunks of every size would fragment the heap, which grew
/// for a minute at 9,900 slow streams.
fn settled(out: Vec<u8>) -> Bytes {
    let mut chunk = Vec::with_capacity(out.len().next_multiple_of(CHUNK_GRANULE));
    chunk.extend_from_slice(&out);
    Bytes::from(chunk)
}

impl Relay {
    fn take_upstream(&mut self, data: &[u8]) {
        if self.done {
            return;
        }
        self.stats.upstream_read(data.len());
        // One allocation for the read's output, where appending events would double its way up.
        self.out.reserve(data.len());
        // Each event is forwarded as it is decoded: a list of a whole read's events
        // would keep its capacity for the life of the stream.
        let mut decoder = std::mem::take(&mut self.decoder);
        let mut malformed = None;
        let decoded = decoder.feed(data, |event| {
            if malformed.is_none() {
                malformed = self.forward(event).err();
            }
        });
        self.decoder = decoder;
        if let Err(e) = decoded {
            self.fail(
                Outcome::UpstreamMalformed,
                &format!("upstream sent a malformed stream: {e}"),
            );
        } else if let Some(message) = malformed {
            self.fail(Outcome::UpstreamMalformed, &message);
        }
    }

    fn upstream_ended(&mut self) {
        if self.saw_terminal {
            self.stats.settle(Outcome::Completed);
            self.done = true;
        } else {
            self.fail(
                Outcome::UpstreamIncomplete,
                "upstream ended the stream before its last event",
            );
        }
    }

    fn forward(&mut self, event: SseEvent) -> Result<(), String> {
        if self.saw_terminal {
            return Ok(());
        }
        let protocol = self.protocol;
        let Some(filter) = self
            .filter
            .as_mut()
            .filter(|_| protocol.may_carry_text(&event))
        else {
            let mut token = false;
            if is_terminal_unparsed(protocol, &event) {
                self.saw_terminal = true;
            } else if protocol.may_carry_json(&event) {
                token = protocol.check_json(&event).map_err(|e| {
                    format!("upstream event is not JSON ({e}): {:.200}", event.data)
                })?;
            }
            return self.emit(&event, token);
        };
        let (role, text) = match protocol.classify(&event) {
            Some(classified) => classified,
            None => {
                let mut json: Value = serde_json::from_str(&event.data).map_err(|e| {
                    format!("upstream event is not JSON ({e}): {:.200}", event.data)
                })?;
                let role = protocol.role(&event, Some(&json));
                let text = protocol.text_mut(&mut json).map(|t| {
                    TokenText::unplaced(Cow::Owned(t.as_str().unwrap_or_default().to_string()))
                });
                (role, text)
            }
        };
        if let EventRole::Token { block } | EventRole::EndOfBlock { block } = role {
            // Each text block keeps a redacting stream and a template: the upstream's
            // block index must not make that state grow without bound.
            if block >= MAX_TEXT_BLOCKS {
                return Err(format!(
                    "upstream used text block {block}; at most {MAX_TEXT_BLOCKS} are supported"
                ));
            }
        }
        match role {
            EventRole::Token { block } => {
                let token_text = text.unwrap_or_else(|| TokenText::unplaced(Cow::Borrowed("")));
                let released = filter.push(block, &token_text.text);
                let token = !released.is_empty();
                let rewritten = if released == *token_text.text {
                    None
                } else {
                    Some(protocol.with_text(&event, &token_text, &released)?)
                };
                drop(token_text);
                self.emit(rewritten.as_ref().unwrap_or(&event), token)?;
                // The shape for releasing held-back text later: moved in, not copied.
                self.templates.insert(block, event.data);
                Ok(())
            }
            EventRole::EndOfBlock { block } => {
                let rest = filter.flush(block);
                if !rest.is_empty() {
                    let template = self.templates.get(block).map_or("null", String::as_str);
                    let release = protocol.token_event(template, block, &rest);
                    self.emit(&release, true)?;
                }
                self.emit(&event, false)
            }
            EventRole::Terminal => {
                self.saw_terminal = true;
                self.emit(&event, false)
            }
            EventRole::Other => self.emit(&event, false),
        }
    }

    /// Encodes `event` for the client; `token` if it carries token text.
    fn emit(&mut self, event: &SseEvent, token: bool) -> Result<(), String> {
        self.encoder
            .encode(event, &mut self.out)
            .map_err(|e| format!("cannot re-encode an upstream event: {e}"))?;
        self.stats.event(token);
        Ok(())
    }

    fn fail(&mut self, outcome: Outcome, message: &str) {
        let event = self.protocol.error_event(outcome.as_str(), message);
        // The encoder refuses only line breaks in event names and ids; ours have none.
        let _ = self.encoder.encode(&event, &mut self.out);
        self.stats.event(false);
        self.stats.settle(outcome);
        self.done = true;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(filter) = &self.filter {
            let stats = &mut self.stats;
            filter.redactions(&mut |kind, n| stats.redacted(kind, n));
        }
    }
}

/// Whether an event ends the stream, judged without parsing its JSON.
fn is_terminal_unparsed(protocol: Protocol, event: &SseEvent) -> bool {
    match protocol {
        Protocol::Openai => {
            event.data == "[DONE]" || event.data.trim_start().starts_with("{\"error\"")
        }
        Protocol::Anthropic => matches!(event.event.as_deref(), Some("message_stop" | "error")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settled_chunk_keeps_its_bytes() {
        for len in [1, 1023, 1024, 1025, 4321] {
            let out: Vec<u8> = (0..len).map(|i| i as u8).collect();
            assert_eq!(settled(out.clone()), out);
        }
    }
}
