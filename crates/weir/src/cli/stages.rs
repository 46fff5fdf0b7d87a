//! The sources and sinks `weir run` knows; its transforms are weir-stages' catalogue.

use std::fmt;

use weir_stages::catalogue::split;
use weir_stages::sinks::file::CreateError;
use weir_stages::sinks::FileSink;
use weir_stages::sources::file::OpenError;
use weir_stages::sources::FileSource;

/// A first or last stage that is not a source or sink `weir run` knows.
#[derive(Debug, PartialEq, Eq)]
pub enum EndError {
    /// `file` without a path; the role is `source` or `sink`.
    NoPath(&'static str),
    NotASource(String),
    NotASink(String),
}

impl fmt::Display for EndError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndError::NoPath(role) => write!(f, "{role} `file` needs a path: file:PATH"),
            EndError::NotASource(spec) => write!(
                f,
                "`{spec}` is not a source: the first stage must be `-` (stdin), file:PATH or kafka:BROKERS/TOPIC"
            ),
            EndError::NotASink(spec) => write!(
                f,
                "`{spec}` is not a sink: the last stage must be `-` (stdout), file:PATH or kafka:BROKERS/TOPIC"
            ),
        }
    }
}

impl std::error::Error for EndError {}

/// Where a pipeline reads from.
pub enum SourceSpec {
    Stdin,
    File(String),
}

/// Where a pipeline writes to.
pub enum SinkSpec {
    Stdout,
    File(String),
}

pub fn parse_source(spec: &str) -> Result<SourceSpec, EndError> {
    match split(spec) {
        ("-", None) => Ok(SourceSpec::Stdin),
        ("file", Some(path)) if !path.is_empty() => Ok(SourceSpec::File(path.to_string())),
        ("file", _) => Err(EndError::NoPath("source")),
        _ => Err(EndError::NotASource(spec.to_string())),
    }
}

pub fn parse_sink(spec: &str) -> Result<SinkSpec, EndError> {
    match split(spec) {
        ("-", None) => Ok(SinkSpec::Stdout),
        ("file", Some(path)) if !path.is_empty() => Ok(SinkSpec::File(path.to_string())),
        ("file", _) => Err(EndError::NoPath("sink")),
        _ => Err(EndError::NotASink(spec.to_string())),
    }
}

impl SourceSpec {
    pub fn open(&self, chunk: usize) -> Result<FileSource, OpenError> {
        Ok(match self {
            SourceSpec::Stdin => FileSource::stdin(),
            SourceSpec::File(p) => FileSource::open(p)?,
        }
        .with_chunk(chunk))
    }
}

impl SinkSpec {
    pub fn open(&self) -> Result<FileSink, CreateError> {
        match self {
            SinkSpec::Stdout => Ok(FileSink::stdout()),
            SinkSpec::File(p) => FileSink::create(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistakes_are_named() {
        assert!(parse_source("pass").is_err());
        assert!(parse_sink("file:").is_err());
    }
}
