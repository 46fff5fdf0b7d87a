//! The sources and sinks `weir run` knows; its transforms are weir-stages' catalogue.

use weir_stages::catalogue::split;
use weir_stages::sinks::FileSink;
use weir_stages::sources::FileSource;

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

pub fn parse_source(spec: &str) -> Result<SourceSpec, String> {
    match split(spec) {
        ("-", None) => Ok(SourceSpec::Stdin),
        ("file", Some(path)) if !path.is_empty() => Ok(SourceSpec::File(path.to_string())),
        ("file", _) => Err("source `file` needs a path: file:PATH".to_string()),
        _ => Err(format!(
            "`{spec}` is not a source: the first stage must be `-` (stdin), file:PATH or kafka:BROKERS/TOPIC"
        )),
    }
}

pub fn parse_sink(spec: &str) -> Result<SinkSpec, String> {
    match split(spec) {
        ("-", None) => Ok(SinkSpec::Stdout),
        ("file", Some(path)) if !path.is_empty() => Ok(SinkSpec::File(path.to_string())),
        ("file", _) => Err("sink `file` needs a path: file:PATH".to_string()),
        _ => Err(format!(
            "`{spec}` is not a sink: the last stage must be `-` (stdout), file:PATH or kafka:BROKERS/TOPIC"
        )),
    }
}

impl SourceSpec {
    pub fn open(&self, chunk: usize) -> Result<FileSource, String> {
        Ok(match self {
            SourceSpec::Stdin => FileSource::stdin(),
            SourceSpec::File(p) => FileSource::open(p).map_err(|e| e.to_string())?,
        }
        .with_chunk(chunk))
    }
}

impl SinkSpec {
    pub fn open(&self) -> Result<FileSink, String> {
        match self {
            SinkSpec::Stdout => Ok(FileSink::stdout()),
            SinkSpec::File(p) => FileSink::create(p).map_err(|e| e.to_string()),
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
