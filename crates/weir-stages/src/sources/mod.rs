//! Stages that emit items: files, standard input and database cursors.

pub mod file;
pub mod sql;

pub use file::FileSource;
