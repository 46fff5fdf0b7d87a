//! Stages that items end up in: files and standard output.

pub mod file;

pub use file::FileSink;
