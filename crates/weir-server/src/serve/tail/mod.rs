//! `kind = "file_tail"`: follows a file as `tail -F` does, each client at its own offset.

mod follow;
mod lines;
mod route;

pub use follow::{Follower, Read, Start};
pub use route::{handle, TailProblem, TailRoute, TailRouteError};
