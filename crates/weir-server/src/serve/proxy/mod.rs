//! `kind = "llm_proxy"`: an LLM API's token stream, forwarded at the client's pace.

mod blocks;
mod dialect;
mod handler;
mod redaction;
mod relay;
mod scrub;
mod stream;
mod upstream;

pub use dialect::{Dialect, Frame, FrameError, TokenText};
pub use handler::{handle, FilterFactory, ProxyRoute};
pub use relay::{Relay, Tally, TextFilter};
pub use stream::StreamTiming;

/// The text filter for a route's `redact` list, or none when the list is empty.
pub fn filter_for(redact: &[String]) -> Result<Option<FilterFactory>, String> {
    if redact.is_empty() {
        return Ok(None);
    }
    redaction::factory(redact).map(Some)
}
