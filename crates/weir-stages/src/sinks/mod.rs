//! Stages that items end up in: files and standard output; for records, appended files,
//! Kafka topics and HTTP endpoints, each acking a record once it is durable there.

pub mod append_file;
pub mod file;
#[cfg(feature = "http-sink")]
pub mod http_post;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod record_lines;

pub use file::FileSink;
