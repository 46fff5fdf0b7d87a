//! Stages that take items in and emit items out.
pub mod lines;
pub mod pass;
pub mod throttle;
