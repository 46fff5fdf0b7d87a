//! `weir check`: the pre-deploy backpressure test as a tool. Many deliberately slow
//! clients (small receive buffers, slow paced reads) stream from an endpoint while the
//! target's memory, in its heap and in its kernel socket queues, is sampled; a line
//! fitted over the steady state says whether memory levelled off (PASS) or grows (FAIL).
//!
//! Works against a server in any language: memory comes from /proc (`--pid`, `--spawn`)
//! or a Prometheus gauge (`--metrics-url`).

mod check;
pub mod client;
pub mod fit;
pub mod memory;
mod plot;
pub mod report;
pub mod sockets;
mod spawn;

pub use check::{run, CheckConfig, MemoryFrom, Phase, Progress};
pub use fit::Thresholds;
pub use plot::plot;
pub use report::{Report, Verdict};

/// Why a check could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The command line asked for something impossible (bad URL, no such process).
    #[error("{0}")]
    Usage(String),
    /// The target could not be set up (a spawned server did not start or answer).
    #[error("{0}")]
    Setup(String),
}
