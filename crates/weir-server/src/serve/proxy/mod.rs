//! `kind = "llm_proxy"`: an LLM API's token stream, forwarded at the client's pace.

mod blocks;
mod handler;
mod protocol;
mod redaction;
mod scrub;
mod stream;
mod upstream;

pub use handler::{handle, FilterFactory, ProxyRoute};
pub use stream::{StreamTiming, TextFilter};

/// The text filter for a route's `redact` list, or none when the list is empty.
pub fn filter_for(redact: &[String]) -> Result<Option<FilterFactory>, String> {
    if redact.is_empty() {
        return Ok(None);
    }
    redaction::factory(redact).map(Some)
}
