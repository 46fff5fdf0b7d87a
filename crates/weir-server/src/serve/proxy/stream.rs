//! The body of a proxied stream: pulls the upstream only when the client takes bytes.
//!
//! # What
//!
//! Each poll of the response body reads the upstream socket at most once and feeds what it
//! read to the stream's [`Relay`] (decode, rewrite token text, encode), all within the
//! poll, in the task of the client's connection. Nothing reads ahead: while the client does
//! not read, the relay is not fed, the upstream socket is not read, and TCP flow control
//! pauses the upstream server. Over HTTP/2 the same holds for the stream's window: what
//! the upstream sent within it while the client catches up is moved out of h2's frame
//! queue into one buffer of the stream's own, and the window is given back only as the
//! client takes bytes.
//!
//! # Failure
//!
//! Once the headers are out, an upstream failure (reset, silence past the idle timeout,
//! a malformed stream, an end before the protocol's last event) becomes one error event
//! of the route's protocol, and the stream ends (see [`Relay`]).
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

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::relay::{Pace, Relay};
use super::scrub::Scrubber;
use super::upstream::{BodyError, BodyReader};
use crate::serve::admission::Ticket;
use crate::serve::send_queue::Backlog;
use crate::serve::shutdown::{Shutdown, SHUTTING_DOWN};
use crate::serve::stream_stats::{Outcome, StreamStats};

/// The step in which chunk allocations are sized (see `settled`).
const CHUNK_GRANULE: usize = 1024;

/// Polls in a row with the client keeping up before its chunks gather several reads.
const KEPT_UP: u32 = 16;

/// Limits and pacing of one proxied stream.
#[derive(Clone, Copy, Debug)]
pub struct StreamTiming {
    pub idle_timeout: Duration,
    pub keepalive: Duration,
}

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
    /// Where the relay's held bytes are published after each step (the console reads them).
    held: Option<Arc<AtomicU64>>,
    /// Polls in a row that found the client's connection keeping up; batching starts only
    /// after `KEPT_UP` of them, so a client that is slow now and then gets single reads.
    kept_up: u32,
    // Dropped before the stats: a stream counted as ended no longer holds its admission.
    _ticket: Ticket,
    stats: StreamStats,
}

impl ProxyStream {
    pub fn new(
        upstream: BodyReader,
        relay: Relay,
        timing: StreamTiming,
        ticket: Ticket,
        stats: StreamStats,
    ) -> Self {
        let now = Instant::now();
        ProxyStream {
            upstream,
            relay,
            timing,
            timer: Box::pin(tokio::time::sleep_until(now + timing.keepalive)),
            last_upstream: now,
            last_keepalive: now,
            backlog: None,
            scrubber: None,
            grace_over: None,
            held: None,
            kept_up: 0,
            _ticket: ticket,
            stats,
        }
    }

    /// Makes no new chunk for a slow connection until it has given the last to its socket.
    pub fn waiting_on(mut self, backlog: Option<Backlog>) -> Self {
        self.backlog = backlog;
        self
    }

    /// Removes `secret` from every byte the client gets.
    pub fn scrubbing(mut self, secret: Option<Arc<[u8]>>) -> Self {
        self.scrubber = secret.map(Scrubber::new);
        self
    }

    /// Publishes what the relay holds in `held` as the stream runs.
    pub fn reporting_held(mut self, held: Arc<AtomicU64>) -> Self {
        self.held = Some(held);
        self
    }

    /// Ends the stream with an error event when `shutdown`'s grace is over.
    pub fn ending_with(mut self, shutdown: &Shutdown) -> Self {
        self.grace_over = Some(shutdown.grace_over());
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
                self.relay.keepalive();
                self.last_keepalive = now;
                return Poll::Ready(());
            }
            self.timer.as_mut().reset(wake);
        }
        Poll::Pending
    }

    /// The relay's output, scrubbed, as the next chunk; `None` if there is none yet.
    fn next_chunk(&mut self) -> Option<Bytes> {
        let mut out = self.relay.take_output().unwrap_or_default();
        if let Some(scrubber) = &mut self.scrubber {
            let raw = std::mem::take(&mut out);
            scrubber.pass(&raw, &mut out);
            if self.relay.ended().is_some() {
                scrubber.finish(&mut out);
            }
        }
        if out.is_empty() {
            return None;
        }
        let tally = self.relay.take_tally();
        self.stats.events(tally.events, tally.tokens);
        if let Some(held) = &self.held {
            held.store(self.relay.held_bytes() as u64, Ordering::Relaxed);
        }
        let chunk = settled(out);
        // The last chunk is not held for the socket: no read follows it to pace, and the
        // response can end (and its stream let go) while the client still reads it.
        if let (Some(backlog), None) = (&self.backlog, self.relay.ended()) {
            backlog.handed_a_chunk();
        }
        self.stats.chunk_out(chunk.len());
        Some(chunk)
    }
}

/// The response body: each item is what one upstream read (or the timer) produced.
impl Stream for ProxyStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(backlog) = &this.backlog {
            if backlog.poll_drained(cx).is_pending() {
                // What an HTTP/2 upstream sends meanwhile waits in one buffer of the
                // stream's own, not frame by frame in h2's (see `Http2Body::absorb`).
                if let BodyReader::Http2(body) = &mut this.upstream {
                    body.absorb(cx);
                }
                this.relay.release_spare();
                return Poll::Pending;
            }
        }
        this.stats.polled();
        this.kept_up = match &this.backlog {
            Some(b) if b.is_slow() => 0,
            _ => this.kept_up.saturating_add(1),
        };
        let backlog = this.backlog.as_ref();
        let pace = pace(
            this.kept_up,
            backlog.is_some_and(Backlog::held_long),
            || backlog.and_then(Backlog::kernel_room),
        );
        loop {
            if let Some(grace_over) = &mut this.grace_over {
                if grace_over.as_mut().poll(cx).is_ready() {
                    this.grace_over = None;
                    this.relay.fail(Outcome::ServerShutdown, SHUTTING_DOWN);
                }
            }
            let room = this.relay.upstream_room(pace);
            if room == 0 {
                if let Some(chunk) = this.next_chunk() {
                    return Poll::Ready(Some(Ok(chunk)));
                }
                if let Some(outcome) = this.relay.ended() {
                    this.stats.settle(outcome);
                    this.stats.delivered();
                    return Poll::Ready(None);
                }
            }
            let relay = &mut this.relay;
            let read = this
                .upstream
                .poll_read_body(cx, room, |data| relay.feed(data));
            let tally = relay.take_tally();
            if let Some(held) = &this.held {
                held.store(relay.held_bytes() as u64, Ordering::Relaxed);
            }
            this.stats.upstream_read(tally.upstream_bytes as usize);
            this.stats.events(tally.events, tally.tokens);
            match read {
                Poll::Ready(Ok(ended)) => {
                    this.last_upstream = Instant::now();
                    if ended {
                        relay.upstream_ended();
                    }
                }
                Poll::Ready(Err(e)) => {
                    let outcome = match e {
                        BodyError::Malformed(_) => Outcome::UpstreamMalformed,
                        _ => Outcome::UpstreamError,
                    };
                    this.stats.caused_by(weir_runtime::error_chain(&e));
                    relay.fail(outcome, &e.client_message());
                }
                Poll::Pending => {
                    // Nothing more now: what the batch gathered goes out.
                    if let Some(chunk) = this.next_chunk() {
                        return Poll::Ready(Some(Ok(chunk)));
                    }
                    if this.poll_quiet(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

impl Drop for ProxyStream {
    fn drop(&mut self) {
        let stats = &mut self.stats;
        self.relay
            .redactions(&mut |kind, n| stats.redacted(kind, n));
    }
}

/// How the client takes chunks, after `kept_up` polls in a row that found it keeping up.
/// A client that has not kept up gets one read at a time, no larger than its socket takes
/// now (`kernel_room`, asked only then: a larger chunk's tail would wait in the heap). A
/// slow reader, one that kept a hold on its socket waiting long, gets the smallest: it is
/// one of many held at once, and their larger chunks grew the heap (9,900 held streams:
/// 92 MiB with 4 KiB reads, 230 MiB with up to 16 KiB).
fn pace(kept_up: u32, held_long: bool, kernel_room: impl FnOnce() -> Option<usize>) -> Pace {
    if kept_up >= KEPT_UP {
        return Pace::KeepsUp;
    }
    let kernel_room = if held_long { None } else { kernel_room() };
    Pace::Slow {
        kernel_room: kernel_room.unwrap_or(0),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_client_briefly_behind_reads_what_its_socket_takes() {
        let asked = &std::cell::Cell::new(0);
        let room = |bytes| {
            move || {
                asked.set(asked.get() + 1);
                Some(bytes)
            }
        };
        assert_eq!(pace(KEPT_UP, false, room(9000)), Pace::KeepsUp);
        assert_eq!(pace(KEPT_UP, true, room(9000)), Pace::KeepsUp);
        assert_eq!(asked.get(), 0, "a client keeping up costs no system call");
        assert_eq!(
            pace(KEPT_UP - 1, false, room(9000)),
            Pace::Slow { kernel_room: 9000 }
        );
        assert_eq!(asked.get(), 1);
        assert_eq!(
            pace(0, true, room(9000)),
            Pace::Slow { kernel_room: 0 },
            "a slow reader gets the smallest read"
        );
        assert_eq!(asked.get(), 1, "nor does a slow reader");
        assert_eq!(pace(0, false, || None), Pace::Slow { kernel_room: 0 });
    }

    #[test]
    fn a_settled_chunk_keeps_its_bytes() {
        for len in [1, 1023, 1024, 1025, 4321] {
            let out: Vec<u8> = (0..len).map(|i| i as u8).collect();
            assert_eq!(settled(out.clone()), out);
        }
    }
}
