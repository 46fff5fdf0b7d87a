//! Redacts PII and secrets from text arriving in pieces, holding back only what may become a match.
mod config;
mod detectors;
mod matcher;
mod redactor;

pub use config::{RedactConfig, RedactConfigError, DEFAULT_MAX_HOLD, MIN_MAX_HOLD};
pub use detectors::Builtin;
pub use redactor::{RedactStream, Redactor};

#[cfg(test)]
mod tests;
