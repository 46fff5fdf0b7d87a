//! The `sql_export` route: a database cursor streamed as CSV or NDJSON, gzip'd on request.

mod body;
mod handler;
mod metrics;
mod request;
mod route;

pub(crate) use handler::handle;
pub use route::{ExportRoute, ExportRouteError, RouteProblem};
