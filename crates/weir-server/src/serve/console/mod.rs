//! The live console: every stream, pipeline and buffer of the server, as JSON, SSE and a page.

mod api;
mod registry;
mod snapshot;
mod stages;

pub use api::STALL_LIMIT;
pub(crate) use api::{router, Console};
pub use registry::{Holds, PipelineEntry, Registry, StreamInfo, Watched, WatchedPipeline};
pub use snapshot::{build, SortBy, Sources, State, View, DEFAULT_TOP};
pub use stages::StageView;
