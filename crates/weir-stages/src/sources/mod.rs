//! Stages that emit items: files, standard input, database cursors and Kafka topics.

pub mod file;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod sql;

pub use file::FileSource;
