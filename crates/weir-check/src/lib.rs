//! `weir check`: the pre-deploy backpressure test as a tool. Many deliberately slow
//! clients (small receive buffers, slow paced reads) stream from an endpoint while the
//! target's memory, in its heap and in its kernel socket queues, is sampled; the whole
//! run is judged (`judge`): memory that grows over the steady state, a band that climbs,
//! or a rise beyond a per-client allowance that stops at a ceiling FAIL; memory that
//! levels off, or saws in a band that does not climb, within the allowance, PASS.
//!
//! Works against a server in any language: memory comes from /proc (`--pid`, `--spawn`,
//! several for a chain such as a proxy and its app, each judged alone) or a Prometheus
//! gauge (`--metrics-url`).

mod check;
pub mod client;
pub mod fit;
mod html;
pub mod judge;
pub mod memory;
mod plot;
pub mod report;
pub mod sockets;
mod spawn;

pub use check::{run, CheckConfig, MemoryFrom, Phase, Progress};
pub use fit::Thresholds;
pub use html::{html, HtmlError, HtmlProblem};
pub use plot::{plot, PlotError, PlotProblem};
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
    /// A `--pid` exited during the run: no verdict is made from missing samples.
    #[error("{0}")]
    TargetLost(String),
}
