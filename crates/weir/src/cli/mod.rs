//! The `weir` command line: one module per subcommand.

pub mod check;
pub mod demo;
pub mod demo_export;
pub mod demo_proxy;
pub mod run;
pub mod run_kafka;
pub mod sample;
pub mod serve;
pub mod stages;
pub mod top;

/// Why a command did not succeed, and so which exit code it gets.
pub enum Failure {
    /// The command line was wrong (exit 2).
    Usage(String),
    /// The work itself failed (exit 1).
    Pipeline(String),
    /// The command ran and its result is this exit code (`weir check`'s verdicts).
    Exit(u8),
}
