//! Long-running pipelines of `weir serve` (`[[pipeline]]`): Kafka -> transforms -> sink.

pub mod config;
pub mod metrics;
pub mod runner;

pub use config::PipelineConfig;
pub use runner::{run, PipelineFailed};
