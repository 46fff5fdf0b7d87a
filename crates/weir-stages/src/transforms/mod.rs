//! Stages that take items in and emit items out.
pub mod csv;
pub mod gunzip;
pub mod gzip;
pub mod line_records;
pub mod lines;
pub mod ndjson;
pub mod pass;
pub mod per_record;
pub mod redact;
pub mod sse_decode;
pub mod sse_encode;
pub mod throttle;
