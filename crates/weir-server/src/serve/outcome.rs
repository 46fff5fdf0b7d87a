//! How a request to a stream route ended: the label of `weir_streams_total` and of its log line.

/// How a request to a stream route ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The stream ran to its last event and the client took all of it.
    Completed,
    /// The client went away before the end.
    ClientGone,
    /// The upstream could not be reached, or its connection failed mid-stream.
    UpstreamError,
    /// No response headers in time, or silence past the idle timeout.
    UpstreamTimeout,
    /// An event that is not SSE or not JSON.
    UpstreamMalformed,
    /// The upstream body ended before the protocol's last event.
    UpstreamIncomplete,
    /// Refused for want of a stream slot or of memory (503).
    RejectedBusy,
    /// No known client key (401).
    RejectedAuth,
    /// The request body is over the limit (413).
    RejectedTooLarge,
    /// The request could not be forwarded as it is (400).
    RejectedInvalid,
    /// The request body did not arrive within `body_timeout` (408).
    RejectedSlowBody,
    /// Still open when the server's shutdown grace was over: ended with an error event.
    ServerShutdown,
    /// The upstream answered without a stream (an error status, or `stream: false`
    /// with a non-success status); passed on as it came.
    UpstreamStatus,
}

impl Outcome {
    /// Every outcome, in declaration order (`outcome as usize` indexes it).
    pub const ALL: [Outcome; 13] = [
        Outcome::Completed,
        Outcome::ClientGone,
        Outcome::UpstreamError,
        Outcome::UpstreamTimeout,
        Outcome::UpstreamMalformed,
        Outcome::UpstreamIncomplete,
        Outcome::RejectedBusy,
        Outcome::RejectedAuth,
        Outcome::RejectedTooLarge,
        Outcome::RejectedInvalid,
        Outcome::RejectedSlowBody,
        Outcome::ServerShutdown,
        Outcome::UpstreamStatus,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::ClientGone => "client_gone",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::UpstreamMalformed => "upstream_malformed",
            Outcome::UpstreamIncomplete => "upstream_incomplete",
            Outcome::RejectedBusy => "rejected_busy",
            Outcome::RejectedAuth => "rejected_auth",
            Outcome::RejectedTooLarge => "rejected_too_large",
            Outcome::RejectedInvalid => "rejected_invalid",
            Outcome::RejectedSlowBody => "rejected_slow_body",
            Outcome::ServerShutdown => "server_shutdown",
            Outcome::UpstreamStatus => "upstream_status",
        }
    }

    /// Whether the operator should hear of it: the upstream failed, or the server is full.
    pub fn warns(self) -> bool {
        matches!(
            self,
            Outcome::UpstreamError
                | Outcome::UpstreamTimeout
                | Outcome::UpstreamMalformed
                | Outcome::UpstreamIncomplete
                | Outcome::UpstreamStatus
                | Outcome::RejectedBusy
        )
    }
}
