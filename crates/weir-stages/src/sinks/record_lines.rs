//! Writes each record's value as a line to a file or standard output.

use bytes::Bytes;
use weir_runtime::{BoxError, Sink};

use crate::record::Record;
use crate::sinks::FileSink;

/// A line per record through a [`FileSink`]; a record is acked once its line is written.
pub struct RecordLines {
    file: FileSink,
}

impl RecordLines {
    pub fn new(file: FileSink) -> Self {
        RecordLines { file }
    }
}

impl Sink for RecordLines {
    type Item = Record;

    async fn write(&mut self, record: Record) -> Result<(), BoxError> {
        let mut line = Vec::with_capacity(record.value.len() + 1);
        line.extend_from_slice(&record.value);
        line.push(b'\n');
        self.file.write(Bytes::from(line)).await?;
        record.ack.ack();
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), BoxError> {
        self.file.finish().await
    }
}
