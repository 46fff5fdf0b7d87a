//! Stages that emit items: files and standard input.

pub mod file;

pub use file::FileSource;
