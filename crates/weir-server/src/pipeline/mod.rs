//! Long-running pipelines of `weir serve` (`[[pipeline]]`): Kafka -> transforms -> sink.

pub mod config;
pub mod metrics;
pub mod runner;

pub use config::{ConfigProblem, PipelineConfig, PipelineConfigError};
pub use runner::{run, FailureCause, PipelineFailed};
