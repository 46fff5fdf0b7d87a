//! Counters of the mock's streams, read in-process (`MockLlm::stats`) or as `GET /stats`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A snapshot of the counters, as `GET /stats` returns it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MockStats {
    /// API requests answered (streaming or not, errors included).
    pub requests: u64,
    pub streams_started: u64,
    /// Streams whose body was produced to its last frame (an injected `error` ends this way too).
    pub streams_finished: u64,
    /// Streams whose body the client dropped before its end.
    pub streams_aborted: u64,
    /// Streams ended by an injected `reset`.
    pub streams_reset: u64,
    /// Streams cut by the server shutting down.
    pub streams_cancelled: u64,
    /// Streams whose body is alive now.
    pub streams_open: u64,
    /// Faults fired (every kind, `status` included).
    pub faults_injected: u64,
    /// Token frames handed to the HTTP layer by streaming responses.
    pub tokens_sent: u64,
    /// Body bytes handed to the HTTP layer by streaming responses.
    pub bytes_sent: u64,
    /// PII values whose first part was sent.
    pub pii_planted: u64,
    /// Total time a stream had a frame ready and its body was not polled (the writer waiting
    /// on a slow reader), summed over streams, ongoing waits included.
    pub time_blocked_ms: f64,
    /// Connections accepted, and open now (HTTP/1.1 and HTTP/2 alike).
    #[serde(default)]
    pub connections_accepted: u64,
    #[serde(default)]
    pub connections_open: u64,
}

impl MockStats {
    pub fn time_blocked(&self) -> Duration {
        Duration::from_secs_f64(self.time_blocked_ms.max(0.0) / 1000.0)
    }
}

/// The live counters shared by every request of one mock.
#[derive(Debug)]
pub(crate) struct Counters {
    epoch: Instant,
    requests: AtomicU64,
    started: AtomicU64,
    finished: AtomicU64,
    aborted: AtomicU64,
    reset: AtomicU64,
    cancelled: AtomicU64,
    open: AtomicU64,
    faults: AtomicU64,
    tokens: AtomicU64,
    bytes: AtomicU64,
    pii: AtomicU64,
    blocked: Mutex<BlockedClock>,
    connections_accepted: AtomicU64,
    connections_open: AtomicU64,
}

/// Time blocked, summed; the ongoing waits kept as a count and a sum of start times so a
/// snapshot can add them without visiting every stream.
#[derive(Debug, Default)]
struct BlockedClock {
    waiting: u64,
    since_sum_ns: u128,
    total_ns: u128,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Counters {
            epoch: Instant::now(),
            requests: AtomicU64::new(0),
            started: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            aborted: AtomicU64::new(0),
            reset: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            open: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            pii: AtomicU64::new(0),
            blocked: Mutex::new(BlockedClock::default()),
            connections_accepted: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
        }
    }

    fn now_ns(&self) -> u128 {
        self.epoch.elapsed().as_nanos()
    }

    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    /// Counts a connection open until the guard is dropped.
    pub(crate) fn connection(self: &Arc<Self>) -> ConnectionGuard {
        self.connections_accepted.fetch_add(1, Relaxed);
        self.connections_open.fetch_add(1, Relaxed);
        ConnectionGuard(Arc::clone(self))
    }

    pub(crate) fn fault(&self) {
        self.faults.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> MockStats {
        let blocked_ns = {
            let now = self.now_ns();
            let c = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
            c.total_ns + (c.waiting as u128 * now).saturating_sub(c.since_sum_ns)
        };
        MockStats {
            requests: self.requests.load(Relaxed),
            streams_started: self.started.load(Relaxed),
            streams_finished: self.finished.load(Relaxed),
            streams_aborted: self.aborted.load(Relaxed),
            streams_reset: self.reset.load(Relaxed),
            streams_cancelled: self.cancelled.load(Relaxed),
            streams_open: self.open.load(Relaxed),
            faults_injected: self.faults.load(Relaxed),
            tokens_sent: self.tokens.load(Relaxed),
            bytes_sent: self.bytes.load(Relaxed),
            pii_planted: self.pii.load(Relaxed),
            time_blocked_ms: blocked_ns as f64 / 1e6,
            connections_accepted: self.connections_accepted.load(Relaxed),
            connections_open: self.connections_open.load(Relaxed),
        }
    }
}

/// One open connection's share of the counters.
pub(crate) struct ConnectionGuard(Arc<Counters>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Relaxed);
    }
}

/// How a stream ended, when it was not by the client going away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    Finished,
    Reset,
    Cancelled,
}

/// One stream's share of the counters. Dropped with the response body, so a body dropped
/// early (the client gone) is counted as aborted with no help from the HTTP layer.
#[derive(Debug)]
pub(crate) struct StreamGuard {
    counters: Arc<Counters>,
    blocked_since_ns: Option<u128>,
    end: Option<StreamEnd>,
}

impl StreamGuard {
    pub(crate) fn start(counters: Arc<Counters>) -> Self {
        counters.started.fetch_add(1, Relaxed);
        counters.open.fetch_add(1, Relaxed);
        StreamGuard {
            counters,
            blocked_since_ns: None,
            end: None,
        }
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// A frame was handed over: from now until the next poll, the stream waits on its reader.
    pub(crate) fn ready(&mut self, bytes: usize) {
        self.counters.bytes.fetch_add(bytes as u64, Relaxed);
        let now = self.counters.now_ns();
        let mut c = self.lock_clock();
        c.waiting += 1;
        c.since_sum_ns += now;
        drop(c);
        self.blocked_since_ns = Some(now);
    }

    /// The body was polled again: the wait that [`ready`](Self::ready) began is over.
    pub(crate) fn polled(&mut self) {
        if let Some(since) = self.blocked_since_ns.take() {
            let now = self.counters.now_ns();
            let mut c = self.lock_clock();
            c.waiting -= 1;
            c.since_sum_ns -= since;
            c.total_ns += now.saturating_sub(since);
        }
    }

    pub(crate) fn tokens(&self, n: u64) {
        self.counters.tokens.fetch_add(n, Relaxed);
    }

    pub(crate) fn pii(&self) {
        self.counters.pii.fetch_add(1, Relaxed);
    }

    pub(crate) fn end(&mut self, end: StreamEnd) {
        self.end.get_or_insert(end);
    }

    fn lock_clock(&self) -> std::sync::MutexGuard<'_, BlockedClock> {
        self.counters
            .blocked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.polled();
        let c = &self.counters;
        match self.end {
            None => c.aborted.fetch_add(1, Relaxed),
            Some(StreamEnd::Finished) => c.finished.fetch_add(1, Relaxed),
            Some(StreamEnd::Reset) => c.reset.fetch_add(1, Relaxed),
            Some(StreamEnd::Cancelled) => c.cancelled.fetch_add(1, Relaxed),
        };
        c.open.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_counts_ends_and_blocked_time() {
        let c = Arc::new(Counters::new());
        {
            let mut g = StreamGuard::start(c.clone());
            g.ready(10);
            std::thread::sleep(Duration::from_millis(5));
            assert!(c.snapshot().time_blocked_ms >= 5.0, "ongoing wait counted");
            g.polled();
            g.end(StreamEnd::Finished);
            assert_eq!(c.snapshot().streams_open, 1);
        }
        drop(StreamGuard::start(c.clone()));
        let s = c.snapshot();
        assert_eq!(
            (s.streams_started, s.streams_finished, s.streams_aborted),
            (2, 1, 1)
        );
        assert_eq!((s.streams_open, s.bytes_sent), (0, 10));
        let frozen = s.time_blocked_ms;
        assert!(frozen >= 5.0);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(
            c.snapshot().time_blocked_ms,
            frozen,
            "no wait open, no growth"
        );
    }
}
