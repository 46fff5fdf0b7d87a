//! `kind = "file_tail"`: follows a file as `tail -F` does, each client at its own offset.

mod follow;
mod lines;
mod route;

pub(crate) use route::handle;
pub use route::{TailProblem, TailRoute, TailRouteError};
