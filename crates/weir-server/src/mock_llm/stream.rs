//! The streaming body: frames made one chunk per poll of the body, paced, with faults, counted in stats.

use std::io;
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::api::{monotonic_ns, Api, Finish};
use super::knobs::{Fault, FaultKind, Knobs};
use super::reset::ResetSwitch;
use super::stats::{Counters, StreamEnd, StreamGuard};
use super::tokens::TokenGen;
use std::sync::Arc;

/// Bytes of frames gathered into one body chunk when tokens are due faster than polls come.
pub const CHUNK_BYTES: usize = 16 * 1024;

/// What a stream is to send, resolved from the knobs and the request.
#[derive(Clone, Debug)]
pub(crate) struct StreamPlan {
    /// Tokens to send; `None` for an endless stream.
    pub limit: Option<u64>,
    pub finish: Finish,
    pub knobs: Knobs,
}

impl StreamPlan {
    /// The token count at which the fault fires, if it fires mid-stream.
    fn fault_point(&self) -> Option<(Fault, u64)> {
        let f = self.knobs.fault.filter(|f| f.kind != FaultKind::Status)?;
        Some((f, self.limit.map_or(f.after, |l| f.after.min(l))))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Start,
    Tokens,
    Done,
}

/// The generator's state between two polls of the body.
struct Run<D> {
    api: D,
    plan: StreamPlan,
    gen: TokenGen,
    guard: StreamGuard,
    shutdown: CancellationToken,
    reset: Option<ResetSwitch>,
    phase: Phase,
    sent: u64,
    fault_fired: bool,
    paced_from: Instant,
    buf: BytesMut,
    text: String,
}

/// The response body of one stream.
///
/// A [`futures::stream::unfold`]: the next chunk (at most [`CHUNK_BYTES`] of frames, or one
/// larger frame) is made only when hyper polls the body, which it does only when it can
/// write; so a reader that stops stops the generator, and the time from a chunk handed
/// over to the next poll is counted as time blocked. Dropping the body (the client gone)
/// counts the stream as aborted; the shutdown token ends it with an error, so a graceful
/// shutdown never waits on an endless stream.
pub(crate) fn sse_body<D: Api>(
    api: D,
    plan: StreamPlan,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
    reset: Option<ResetSwitch>,
) -> Body {
    let run = Run {
        api,
        gen: TokenGen::new(&plan.knobs),
        plan,
        guard: StreamGuard::start(counters),
        shutdown,
        reset,
        phase: Phase::Start,
        sent: 0,
        fault_fired: false,
        paced_from: Instant::now(),
        buf: BytesMut::with_capacity(CHUNK_BYTES),
        text: String::new(),
    };
    Body::from_stream(futures::stream::unfold(run, |mut run| async move {
        let item = run.step().await?;
        Some((item, run))
    }))
}

impl<D: Api> Run<D> {
    async fn step(&mut self) -> Option<io::Result<Bytes>> {
        self.guard.polled();
        if self.phase == Phase::Done {
            self.guard.end(StreamEnd::Finished);
            return None;
        }
        if self.shutdown.is_cancelled() {
            return Some(Err(self.cancelled()));
        }
        if self.phase == Phase::Start {
            let ttft = self.plan.knobs.ttft;
            let deadline = Instant::now().checked_add(ttft).unwrap_or_else(far_future);
            if !ttft.is_zero() && !self.sleep_until(deadline).await {
                return Some(Err(self.cancelled()));
            }
            self.api.preamble(&mut self.buf);
            self.phase = Phase::Tokens;
            self.paced_from = Instant::now();
        }
        let sent_before = self.sent;
        let mut budget = self.due() - self.sent;
        while self.buf.len() < CHUNK_BYTES {
            if let Some(fault) = self.fault_due() {
                let ends_output = matches!(fault.kind, FaultKind::Reset | FaultKind::Stall);
                if ends_output && !self.buf.is_empty() {
                    // Hand over what was made before the fault; it fires on the next poll.
                    break;
                }
                self.fault_fired = true;
                self.guard.counters().fault();
                match fault.kind {
                    FaultKind::Malformed => self.api.malformed(&mut self.buf),
                    FaultKind::Error => {
                        self.api.error_event(&mut self.buf);
                        self.phase = Phase::Done;
                        break;
                    }
                    FaultKind::Reset => return Some(Err(self.reset().await)),
                    FaultKind::Stall => return Some(Err(self.stall().await)),
                    FaultKind::Status => {}
                }
                continue;
            }
            if self.plan.limit == Some(self.sent) {
                self.api.finish(self.plan.finish, self.sent, &mut self.buf);
                self.phase = Phase::Done;
                break;
            }
            if budget == 0 {
                if !self.buf.is_empty() {
                    break;
                }
                if !self.sleep_until(self.next_due()).await {
                    return Some(Err(self.cancelled()));
                }
                budget = self.due().saturating_sub(self.sent).max(1);
            }
            self.emit_token();
            budget -= 1;
        }
        self.guard.tokens(self.sent - sent_before);
        let chunk = self.buf.split().freeze();
        self.guard.ready(chunk.len());
        Some(Ok(chunk))
    }

    /// Tokens that may have been sent by now: all when unpaced, else one at once and one
    /// more every `1 / rate` seconds.
    fn due(&self) -> u64 {
        let rate = self.plan.knobs.rate;
        if rate <= 0.0 {
            return u64::MAX;
        }
        let elapsed = self.paced_from.elapsed().as_secs_f64();
        ((elapsed * rate) as u64).saturating_add(1).max(self.sent)
    }

    /// When token `sent` is due.
    fn next_due(&self) -> Instant {
        let after = Duration::try_from_secs_f64(self.sent as f64 / self.plan.knobs.rate);
        after
            .ok()
            .and_then(|d| self.paced_from.checked_add(d))
            .unwrap_or_else(far_future)
    }

    fn fault_due(&self) -> Option<Fault> {
        let (fault, at) = self.plan.fault_point()?;
        (!self.fault_fired && self.sent == at).then_some(fault)
    }

    fn emit_token(&mut self) {
        if let Some(part) = self.gen.next_into(&mut self.text) {
            if part.part == 0 {
                self.guard.pii();
            }
        }
        let stamp = self.plan.knobs.stamp.then(monotonic_ns);
        self.api.token(&self.text, stamp, &mut self.buf);
        self.sent += 1;
    }

    /// Sleeps until `deadline`; false if the mock is shutting down.
    async fn sleep_until(&self, deadline: Instant) -> bool {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => true,
            _ = self.shutdown.cancelled() => false,
        }
    }

    async fn reset(&mut self) -> io::Error {
        self.guard.end(StreamEnd::Reset);
        self.phase = Phase::Done;
        if let Some(switch) = &self.reset {
            tokio::select! {
                _ = switch.arm() => {}
                _ = self.shutdown.cancelled() => {}
            }
        }
        io::Error::new(io::ErrorKind::ConnectionReset, "mock-llm: injected reset")
    }

    async fn stall(&mut self) -> io::Error {
        self.shutdown.cancelled().await;
        self.cancelled()
    }

    fn cancelled(&mut self) -> io::Error {
        self.guard.end(StreamEnd::Cancelled);
        self.phase = Phase::Done;
        io::Error::other("mock-llm: shutting down")
    }
}

/// A deadline no stream reaches (about 30 years on).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365 * 30)
}
