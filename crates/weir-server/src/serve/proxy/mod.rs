//! `kind = "llm_proxy"`: an LLM API's token stream, forwarded at the client's pace.

mod blocks;
mod dialect;
mod handler;
mod redaction;
mod relay;
mod scrub;
mod stream;
mod upstream;

use weir_stages::codec::redact::RedactConfigError;

pub use dialect::{Dialect, Frame, FrameError, Openai, Shape, TokenText};
pub(crate) use handler::handle;
pub use handler::{FilterFactory, ProxyRoute, ProxyRouteError};
pub use relay::{Relay, Tally, TextFilter};
pub use upstream::{UpstreamCaError, UpstreamError};

/// The text filter for a route's `redact` list, or none when the list is empty.
pub fn filter_for(redact: &[String]) -> Result<Option<FilterFactory>, RedactConfigError> {
    if redact.is_empty() {
        return Ok(None);
    }
    redaction::factory(redact).map(Some)
}
