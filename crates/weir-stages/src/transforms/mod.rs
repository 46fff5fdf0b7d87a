//! Stages that take items in and emit items out.
