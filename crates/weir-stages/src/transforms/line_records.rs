//! Turns a byte stream into one record per line, to load a file into a topic.

use bytes::Bytes;
use weir_runtime::{AckToken, BoxError, Emit, Transform};

use crate::codec::lines::{split_lines, LineSplitter};
use crate::record::Record;

/// Emits a record per line, its value the line without its line feed. A line longer than
/// `max_line` stops the pipeline naming the line, rather than being buffered whole.
pub struct LineRecords {
    splitter: LineSplitter,
}

impl LineRecords {
    pub fn new(max_line: usize) -> Self {
        LineRecords {
            splitter: LineSplitter::new(max_line),
        }
    }

    async fn emit(whole: Bytes, out: &mut Emit<'_, Record>) -> Result<(), BoxError> {
        for line in split_lines(whole) {
            out.send(Record::of_value(line, AckToken::none())).await?;
        }
        Ok(())
    }
}

impl Transform for LineRecords {
    type In = Bytes;
    type Out = Record;

    async fn apply(&mut self, item: Bytes, out: &mut Emit<'_, Record>) -> Result<(), BoxError> {
        match self.splitter.push(item)? {
            Some(whole) => Self::emit(whole, out).await,
            None => Ok(()),
        }
    }

    async fn finish(&mut self, out: &mut Emit<'_, Record>) -> Result<(), BoxError> {
        match self.splitter.finish() {
            Some(last) => Self::emit(last, out).await,
            None => Ok(()),
        }
    }
}
