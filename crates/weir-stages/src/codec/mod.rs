//! Format logic with no runtime in it: incremental encoders, decoders and splitters.
pub mod gunzip;
pub mod gzip;
pub mod lines;
pub mod redact;
pub mod sse;
