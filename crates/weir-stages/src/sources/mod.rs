//! Stages that emit items: files and standard input.
