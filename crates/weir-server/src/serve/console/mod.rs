//! The live console: every stream, pipeline and buffer of the server, as JSON, SSE and a page.

mod api;
mod registry;
mod snapshot;
mod stages;

pub use api::{router, Console, STALL_LIMIT};
pub use registry::{Holds, PipelineEntry, Registry, StreamInfo, Watched, WatchedPipeline};
pub use snapshot::{build, SortBy, Sources, State, View, DEFAULT_TOP, MAX_TOP};
pub use stages::StageView;
