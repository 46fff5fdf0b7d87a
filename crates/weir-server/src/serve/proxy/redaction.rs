//! Redaction of token text, one redacting stream per text block of the response.

use std::sync::Arc;

use weir_stages::codec::redact::{RedactConfig, RedactConfigError, RedactStream, Redactor};

use super::blocks::Blocks;
use super::handler::FilterFactory;
use super::relay::TextFilter;

/// What a block's redacting stream allocates besides its held text (its matcher's state),
/// at most; checked by the relay's allocation test.
const BLOCK_STATE: usize = 2048;

/// The redacting streams of one response, keyed by text block (choice or content index).
pub struct Redaction {
    redactor: Arc<Redactor>,
    blocks: Blocks<RedactStream>,
}

impl TextFilter for Redaction {
    fn push(&mut self, block: u64, text: &str, out: &mut String) {
        let redactor = &self.redactor;
        self.blocks
            .get_or_insert_with(block, || redactor.stream())
            .push_into(text, out);
    }

    fn flush(&mut self, block: u64, out: &mut String) {
        if let Some(stream) = self.blocks.get_mut(block) {
            stream.finish_into(out);
        }
    }

    fn release_spare(&mut self) {
        self.blocks
            .values_mut()
            .for_each(RedactStream::release_spare);
    }

    fn held_bytes(&self) -> usize {
        self.blocks
            .values()
            .map(|s| BLOCK_STATE + 2 * s.held())
            .sum()
    }

    fn redactions(&self, report: &mut dyn FnMut(&str, u64)) {
        for stream in self.blocks.values() {
            for (kind, n) in stream.counts().filter(|(_, n)| *n > 0) {
                report(kind, n);
            }
        }
    }
}

/// The filter factory of a route redacting the detectors named in `kinds`.
pub fn factory(kinds: &[String]) -> Result<FilterFactory, RedactConfigError> {
    let names: Vec<&str> = kinds.iter().map(String::as_str).collect();
    let redactor = Arc::new(Redactor::new(RedactConfig::kinds(&names))?);
    Ok(Arc::new(move || {
        Box::new(Redaction {
            redactor: Arc::clone(&redactor),
            blocks: Blocks::default(),
        }) as Box<dyn TextFilter>
    }))
}
