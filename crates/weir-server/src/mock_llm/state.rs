//! The mock's shared state: configuration, counters, stream numbers and shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::config::MockLlmConfig;
use super::stats::{Counters, MockStats};

/// A mock LLM upstream: cheap to clone, every clone sharing config, counters and shutdown.
#[derive(Clone, Debug)]
pub struct MockLlm {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: MockLlmConfig,
    counters: Arc<Counters>,
    seq: AtomicU64,
    shutdown: CancellationToken,
}

impl MockLlm {
    /// A mock with its own shutdown token.
    pub fn new(config: MockLlmConfig) -> Self {
        MockLlm::with_shutdown(config, CancellationToken::new())
    }

    /// A mock that stops (streams and server) when `shutdown` is cancelled.
    pub fn with_shutdown(config: MockLlmConfig, shutdown: CancellationToken) -> Self {
        MockLlm {
            inner: Arc::new(Inner {
                config,
                counters: Arc::new(Counters::new()),
                seq: AtomicU64::new(0),
                shutdown,
            }),
        }
    }

    pub fn config(&self) -> &MockLlmConfig {
        &self.inner.config
    }

    /// The counters now (what `GET /stats` returns).
    pub fn stats(&self) -> MockStats {
        self.inner.counters.snapshot()
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    pub(crate) fn counters(&self) -> Arc<Counters> {
        self.inner.counters.clone()
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1
    }
}
