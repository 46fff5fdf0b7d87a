//! Stages that items end up in: files and standard output.
