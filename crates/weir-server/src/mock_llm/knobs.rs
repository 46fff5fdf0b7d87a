//! The per-stream knobs (length, pace, token size, PII, faults) and their query-string overlay.

use std::fmt;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::http::Uri;
use serde::Deserialize;

/// Largest `token_size` accepted: one token is one SSE frame, and a frame is built whole.
pub const MAX_TOKEN_SIZE: usize = 1 << 20;

/// Slowest pace accepted, in tokens/s (one token every 1000 s).
pub const MIN_RATE: f64 = 1e-3;
/// Fastest pace accepted, in tokens/s; beyond it `rate=0` (unpaced) is what is meant.
pub const MAX_RATE: f64 = 1e9;
/// Longest time to first token accepted.
pub const MAX_TTFT: Duration = Duration::from_secs(24 * 3600);

/// How one response is generated. Server defaults come from [`MockLlmConfig`], and every
/// field can be overridden per request in the query string (`tokens=5&rate=20`; see
/// `weir mock-llm --help` for the names).
///
/// [`MockLlmConfig`]: super::MockLlmConfig
#[derive(Clone, Debug, PartialEq)]
pub struct Knobs {
    /// Tokens per response; 0 streams without end.
    pub tokens: u64,
    /// Tokens per second per stream; 0 sends as fast as the reader drains the socket.
    pub rate: f64,
    /// Approximate bytes of text per token (whole words are appended until it is reached).
    pub token_size: usize,
    /// Plant fake PII every this many tokens; 0 plants none.
    pub pii_every: u64,
    /// Seed of the token text and of the planted PII.
    pub seed: u64,
    /// Delay before the first token (time to first token).
    pub ttft: Duration,
    /// The fault to inject, if any.
    pub fault: Option<Fault>,
    /// Put the send time (CLOCK_MONOTONIC, ns) in every token frame, to measure latency.
    pub stamp: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            tokens: 1000,
            rate: 0.0,
            token_size: 4,
            pii_every: 0,
            seed: 42,
            ttft: Duration::ZERO,
            fault: None,
            stamp: false,
        }
    }
}

/// An injected failure and when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    /// Tokens sent before the fault fires (clamped to the response's length).
    pub after: u64,
    /// HTTP status of [`FaultKind::Status`]; `None` picks the dialect's usual one (500 or 529).
    pub status: Option<u16>,
}

/// The kinds of injected failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// Abort the TCP connection (RST) mid-stream.
    Reset,
    /// Stop sending and keep the connection open.
    Stall,
    /// A protocol-correct in-band error event, then the end of the stream.
    Error,
    /// One frame that is not valid JSON, then the stream goes on.
    Malformed,
    /// An HTTP error status with a JSON error body, before any stream.
    Status,
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::Reset => "reset",
            FaultKind::Stall => "stall",
            FaultKind::Error => "error",
            FaultKind::Malformed => "malformed",
            FaultKind::Status => "status",
        })
    }
}

/// `fault=` in a query string: a kind, or `none` to switch off a server default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FaultParam {
    None,
    Reset,
    Stall,
    Error,
    Malformed,
    Status,
}

/// The query-string form of [`Knobs`]: every field optional, unknown keys refused so a
/// typo (`token=5`) is a 400 rather than a silently ignored knob.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KnobsQuery {
    tokens: Option<u64>,
    rate: Option<f64>,
    token_size: Option<usize>,
    pii: Option<u64>,
    seed: Option<u64>,
    ttft_ms: Option<u64>,
    fault: Option<FaultParam>,
    fault_after: Option<u64>,
    status: Option<u16>,
    stamp: Option<bool>,
    /// Overrides the body's `stream` (and is the only way to ask a GET for JSON).
    stream: Option<bool>,
    /// Added by the Anthropic SDK's beta client; accepted and ignored.
    #[serde(rename = "beta")]
    _beta: Option<serde::de::IgnoredAny>,
}

/// Knobs a query string or the command line got wrong, naming the knob.
#[derive(Debug, thiserror::Error)]
pub enum KnobsError {
    #[error("bad query string: {}", .0.body_text())]
    Query(QueryRejection),
    #[error("fault_after and status need fault=KIND")]
    NoFault,
    #[error("rate must be 0 (unpaced) or in {MIN_RATE}..={MAX_RATE} tokens/s, not {0}")]
    Rate(f64),
    #[error("ttft_ms must be at most {}, not {}", MAX_TTFT.as_millis(), .0.as_millis())]
    Ttft(Duration),
    #[error("token_size must be in 1..={MAX_TOKEN_SIZE}, not {0}")]
    TokenSize(usize),
    #[error("status must be in 400..=599, not {0}")]
    Status(u16),
    #[error("status is only for fault=status")]
    StatusWithoutStatusFault,
}

impl KnobsQuery {
    /// Parses the query string of `uri` (no query: every knob at its default).
    pub(crate) fn from_uri(uri: &Uri) -> Result<Self, KnobsError> {
        Query::<KnobsQuery>::try_from_uri(uri)
            .map(|q| q.0)
            .map_err(KnobsError::Query)
    }

    /// The `stream=` override, if given.
    pub(crate) fn stream(&self) -> Option<bool> {
        self.stream
    }

    /// `defaults` with this query's values laid over them, validated.
    pub(crate) fn apply(&self, defaults: &Knobs) -> Result<Knobs, KnobsError> {
        let mut k = defaults.clone();
        if let Some(v) = self.tokens {
            k.tokens = v;
        }
        if let Some(v) = self.rate {
            k.rate = v;
        }
        if let Some(v) = self.token_size {
            k.token_size = v;
        }
        if let Some(v) = self.pii {
            k.pii_every = v;
        }
        if let Some(v) = self.seed {
            k.seed = v;
        }
        if let Some(v) = self.ttft_ms {
            k.ttft = Duration::from_millis(v);
        }
        if let Some(v) = self.stamp {
            k.stamp = v;
        }
        let kind = match self.fault {
            Some(FaultParam::None) => None,
            Some(FaultParam::Reset) => Some(FaultKind::Reset),
            Some(FaultParam::Stall) => Some(FaultKind::Stall),
            Some(FaultParam::Error) => Some(FaultKind::Error),
            Some(FaultParam::Malformed) => Some(FaultKind::Malformed),
            Some(FaultParam::Status) => Some(FaultKind::Status),
            None => k.fault.map(|f| f.kind),
        };
        k.fault = match kind {
            None if self.fault_after.is_some() || self.status.is_some() => {
                return Err(KnobsError::NoFault)
            }
            None => None,
            Some(kind) => {
                let base = k.fault.filter(|f| f.kind == kind);
                Some(Fault {
                    kind,
                    after: self.fault_after.or(base.map(|f| f.after)).unwrap_or(0),
                    status: self.status.or(base.and_then(|f| f.status)),
                })
            }
        };
        k.validate()?;
        Ok(k)
    }
}

impl Knobs {
    /// Checks the ranges a query string (or a CLI flag) can get wrong.
    pub fn validate(&self) -> Result<(), KnobsError> {
        if !(self.rate == 0.0 || (MIN_RATE..=MAX_RATE).contains(&self.rate)) {
            return Err(KnobsError::Rate(self.rate));
        }
        if self.ttft > MAX_TTFT {
            return Err(KnobsError::Ttft(self.ttft));
        }
        if self.token_size == 0 || self.token_size > MAX_TOKEN_SIZE {
            return Err(KnobsError::TokenSize(self.token_size));
        }
        if let Some(f) = self.fault {
            match (f.kind, f.status) {
                (FaultKind::Status, Some(s)) if !(400..=599).contains(&s) => {
                    return Err(KnobsError::Status(s))
                }
                (FaultKind::Status, _) => {}
                (_, Some(_)) => return Err(KnobsError::StatusWithoutStatusFault),
                (_, None) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<KnobsQuery, KnobsError> {
        let uri: Uri = format!("/v1/messages?{query}").parse().expect("a URI");
        KnobsQuery::from_uri(&uri)
    }

    #[test]
    fn query_overrides_defaults() {
        let q = parse("tokens=5&rate=2.5&pii=3&fault=reset&fault_after=2").unwrap();
        let k = q.apply(&Knobs::default()).unwrap();
        assert_eq!(k.tokens, 5);
        assert_eq!(k.rate, 2.5);
        assert_eq!(k.pii_every, 3);
        assert_eq!(
            k.fault,
            Some(Fault {
                kind: FaultKind::Reset,
                after: 2,
                status: None
            })
        );
    }

    #[test]
    fn bad_queries_are_errors() {
        for q in [
            "tokens=-1",
            "tokens=abc",
            "rate=inf",
            "rate=-2",
            "rate=1e-300",
            "rate=nan",
            "ttft_ms=18446744073709551615",
            "token_size=0",
            "fault=explode",
            "token=5",
            "fault_after=3",
            "fault=status&status=200",
            "fault=reset&status=500",
        ] {
            let r = parse(q).and_then(|k| k.apply(&Knobs::default()));
            assert!(r.is_err(), "{q} was accepted");
        }
    }

    #[test]
    fn fault_none_clears_a_default() {
        let d = Knobs {
            fault: Some(Fault {
                kind: FaultKind::Stall,
                after: 1,
                status: None,
            }),
            ..Knobs::default()
        };
        let k = parse("fault=none").unwrap().apply(&d).unwrap();
        assert_eq!(k.fault, None);
        let k = parse("fault_after=9").unwrap().apply(&d).unwrap();
        assert_eq!(k.fault.map(|f| f.after), Some(9));
    }
}
