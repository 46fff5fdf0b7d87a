//! The figures of one request to a stream route, counted as it runs and reported once when it ends.
//!
//! # What
//!
//! A [`StreamStats`] is made when a request arrives and travels with it: the handler
//! while it checks and calls the upstream, then the response body. Byte counts and
//! paused time go to the route's metrics as they happen (atomic adds, no lock); the
//! outcome, the other figures and one log line come when it is dropped.
//!
//! # Cancel safety
//!
//! Dropped before an outcome was settled (the handler's future or the body dropped:
//! the client went away), the request ends as `client_gone`. The log line never carries
//! token text or keys: it is built only from the figures below.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use tokio::time::Instant;

use super::console::Watched;
use super::metrics::{record_redactions, record_rejection, RouteMetrics};
pub use super::outcome::Outcome;

/// One request's figures; reported when dropped.
pub struct StreamStats {
    metrics: Arc<RouteMetrics>,
    arrived: Instant,
    outcome: Option<Outcome>,
    /// The body was pulled to its end (or there was no stream body).
    delivered: bool,
    status: Option<StatusCode>,
    rejection: Option<&'static str>,
    first_token: Option<Duration>,
    events: u64,
    tokens: u64,
    /// Token events encoded but not yet handed to the client.
    tokens_pending: u64,
    upstream_bytes: u64,
    client_bytes: u64,
    paused: Duration,
    chunk_out_at: Option<Instant>,
    redactions: Vec<(String, u64)>,
    /// What went wrong, whole: for the log, never for the client.
    cause: Option<String>,
    /// The stream's entry in the console, once admitted.
    watched: Option<Watched>,
}

impl StreamStats {
    /// Starts the clock: the request has just arrived.
    pub fn new(metrics: Arc<RouteMetrics>) -> Self {
        StreamStats {
            metrics,
            arrived: Instant::now(),
            outcome: None,
            delivered: false,
            status: None,
            rejection: None,
            first_token: None,
            events: 0,
            tokens: 0,
            tokens_pending: 0,
            upstream_bytes: 0,
            client_bytes: 0,
            paused: Duration::ZERO,
            chunk_out_at: None,
            redactions: Vec::new(),
            cause: None,
            watched: None,
        }
    }

    /// The stream shows in the console until these figures are reported.
    pub fn watched(&mut self, watched: Watched) {
        self.watched = Some(watched);
    }

    /// Records the full cause of a failure for the stream's log line.
    pub fn caused_by(&mut self, cause: String) {
        self.cause.get_or_insert(cause);
    }

    /// Ends a request answered without a stream body.
    pub fn finish(mut self, outcome: Outcome, status: StatusCode) {
        self.outcome = Some(outcome);
        self.status = Some(status);
        self.delivered = true;
    }

    /// Ends a request refused before any upstream call; `reason` labels
    /// `weir_streams_rejected_total`.
    pub fn refuse(mut self, outcome: Outcome, status: StatusCode, reason: &'static str) {
        self.rejection = Some(reason);
        self.finish(outcome, status);
    }

    /// The stream body starts with `status`.
    pub fn streaming(&mut self, status: StatusCode) {
        self.status = Some(status);
    }

    /// The upstream side of the stream is settled (its last event, or a failure); the
    /// stream ends once the client has taken what is left.
    pub fn settle(&mut self, outcome: Outcome) {
        self.outcome.get_or_insert(outcome);
    }

    /// The body was pulled to its end.
    pub fn delivered(&mut self) {
        self.delivered = true;
        self.take_paused();
    }

    pub fn upstream_read(&mut self, bytes: usize) {
        self.upstream_bytes += bytes as u64;
        self.metrics.upstream_bytes.increment(bytes as u64);
    }

    /// `events` were encoded for the client, `tokens` of them carrying token text.
    pub fn events(&mut self, events: u64, tokens: u64) {
        self.events += events;
        self.tokens_pending += tokens;
    }

    /// The body is polled for its next chunk: the time since the last chunk went out was
    /// time the upstream waited on the client.
    pub fn polled(&mut self) {
        self.take_paused();
    }

    /// A chunk of `bytes` is handed to the client.
    pub fn chunk_out(&mut self, bytes: usize) {
        let now = Instant::now();
        self.client_bytes += bytes as u64;
        self.metrics.client_bytes.increment(bytes as u64);
        if let Some(w) = &self.watched {
            w.sent(bytes);
        }
        if self.tokens_pending > 0 && self.first_token.is_none() {
            let ttft = now - self.arrived;
            self.first_token = Some(ttft);
            self.metrics.time_to_first_token.record(ttft.as_secs_f64());
        }
        self.tokens += std::mem::take(&mut self.tokens_pending);
        self.chunk_out_at = Some(now);
    }

    /// Adds `n` redactions of `kind` (called at the end with the filter's totals).
    pub fn redacted(&mut self, kind: &str, n: u64) {
        if n == 0 {
            return;
        }
        match self.redactions.iter_mut().find(|(k, _)| k == kind) {
            Some((_, total)) => *total += n,
            None => self.redactions.push((kind.to_string(), n)),
        }
    }

    fn take_paused(&mut self) {
        if let Some(out) = self.chunk_out_at.take() {
            let paused = out.elapsed();
            self.paused += paused;
            self.metrics.upstream_paused.increment(paused.as_secs_f64());
        }
    }

    /// The outcome as it stands: a stream whose upstream completed but whose client left
    /// before taking the end did not complete.
    fn outcome(&self) -> Outcome {
        match self.outcome {
            Some(Outcome::Completed) if !self.delivered => Outcome::ClientGone,
            Some(outcome) => outcome,
            None => Outcome::ClientGone,
        }
    }
}

impl Drop for StreamStats {
    fn drop(&mut self) {
        // A client that leaves while its last chunk is unread paused the upstream until now.
        self.take_paused();
        let outcome = self.outcome();
        let metrics = &self.metrics;
        metrics.outcome(outcome).increment(1);
        if let Some(reason) = self.rejection {
            record_rejection(reason);
        }
        for (kind, n) in &self.redactions {
            record_redactions(&metrics.route, kind, *n);
        }
        let redactions = (!self.redactions.is_empty()).then(|| {
            let by_kind: Vec<String> = self
                .redactions
                .iter()
                .map(|(kind, n)| format!("{kind}:{n}"))
                .collect();
            by_kind.join(",")
        });
        macro_rules! end_line {
            ($level:expr) => {
                tracing::event!(
                    target: "weir::stream",
                    $level,
                    route = %metrics.route,
                    outcome = outcome.as_str(),
                    status = self.status.map(|s| s.as_u16()),
                    reason = self.rejection,
                    duration_s = self.arrived.elapsed().as_secs_f64(),
                    ttft_s = self.first_token.map(|d| d.as_secs_f64()),
                    events = self.events,
                    tokens = self.tokens,
                    upstream_bytes = self.upstream_bytes,
                    client_bytes = self.client_bytes,
                    paused_s = self.paused.as_secs_f64(),
                    redactions = redactions.as_deref(),
                    cause = self.cause.as_deref(),
                    "stream ended"
                )
            };
        }
        if outcome.warns() {
            end_line!(tracing::Level::WARN);
        } else {
            end_line!(tracing::Level::INFO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> StreamStats {
        StreamStats::new(Arc::new(RouteMetrics::new("/unit")))
    }

    #[test]
    fn a_stream_ends_completed_only_once_the_client_took_its_end() {
        let mut s = stats();
        assert_eq!(s.outcome(), Outcome::ClientGone);
        s.settle(Outcome::Completed);
        assert_eq!(s.outcome(), Outcome::ClientGone);
        s.delivered();
        assert_eq!(s.outcome(), Outcome::Completed);

        let mut s = stats();
        s.settle(Outcome::UpstreamTimeout);
        s.settle(Outcome::Completed);
        assert_eq!(
            s.outcome(),
            Outcome::UpstreamTimeout,
            "the first settles it"
        );
    }

    #[test]
    fn the_first_token_is_timed_when_its_chunk_goes_out() {
        let mut s = stats();
        s.events(1, 0);
        s.chunk_out(10);
        assert_eq!((s.first_token, s.tokens, s.events), (None, 0, 1));
        s.events(2, 2);
        assert!(s.first_token.is_none(), "encoded, not yet handed out");
        s.chunk_out(20);
        assert!(s.first_token.is_some());
        assert_eq!((s.tokens, s.client_bytes), (2, 30));
    }

    #[test]
    fn redactions_add_up_by_kind() {
        let mut s = stats();
        s.redacted("email", 2);
        s.redacted("card", 0);
        s.redacted("email", 1);
        assert_eq!(s.redactions, [("email".to_string(), 3)]);
    }

    #[test]
    fn outcomes_index_their_own_series() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "{}", o.as_str());
        }
    }
}
