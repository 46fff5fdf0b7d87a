//! Regroups a byte stream into whole lines, refusing lines over a length limit.

use bytes::Bytes;
use weir_runtime::{BoxError, Emit, Transform};

use crate::codec::lines::LineSplitter;

/// The longest line accepted when none is given: 1 MiB.
pub const DEFAULT_MAX_LINE: usize = 1024 * 1024;

/// Emits items that each hold one or more whole lines (the last line of the input may
/// lack its line feed). A line longer than `max_line` stops the pipeline with an error
/// naming the line, rather than being buffered without bound.
pub struct Lines {
    splitter: LineSplitter,
}

impl Lines {
    pub fn new(max_line: usize) -> Self {
        Lines {
            splitter: LineSplitter::new(max_line),
        }
    }
}

impl Default for Lines {
    fn default() -> Self {
        Lines::new(DEFAULT_MAX_LINE)
    }
}

impl Transform for Lines {
    type In = Bytes;
    type Out = Bytes;

    async fn apply(&mut self, item: Bytes, out: &mut Emit<'_, Bytes>) -> Result<(), BoxError> {
        if let Some(whole) = self.splitter.push(item)? {
            out.send(whole).await?;
        }
        Ok(())
    }

    async fn finish(&mut self, out: &mut Emit<'_, Bytes>) -> Result<(), BoxError> {
        if let Some(last) = self.splitter.finish() {
            out.send(last).await?;
        }
        Ok(())
    }
}
