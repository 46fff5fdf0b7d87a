//! The mock's server configuration: where it listens and the default knobs of every response.

use std::net::{Ipv4Addr, SocketAddr};

use super::knobs::Knobs;

/// Port `weir mock-llm` listens on by default (the Node peer's too).
pub const DEFAULT_PORT: u16 = 8081;

/// Streams per HTTP/2 connection by default: a proxy holding 10,000 streams needs 10 connections.
pub const DEFAULT_HTTP2_MAX_STREAMS: u32 = 1000;

/// Configuration of a [`MockLlm`](super::MockLlm). Each request may override `knobs` in
/// its query string.
#[derive(Clone, Debug, PartialEq)]
pub struct MockLlmConfig {
    /// Used by [`run`](super::run); [`MockLlm::bind`](super::MockLlm::bind) takes its own.
    pub listen: SocketAddr,
    /// Defaults of every response.
    pub knobs: Knobs,
    /// Model name reported when the request names none.
    pub model: String,
    /// Streams one HTTP/2 connection may carry at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub http2_max_streams: u32,
}

impl Default for MockLlmConfig {
    fn default() -> Self {
        MockLlmConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_PORT)),
            knobs: Knobs::default(),
            model: "mock-llm".to_string(),
            http2_max_streams: DEFAULT_HTTP2_MAX_STREAMS,
        }
    }
}
