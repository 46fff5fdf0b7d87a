//! `weir mock-llm`: an upstream speaking OpenAI's and Anthropic's streaming APIs, with pace, length, PII and faults per request.

mod anthropic;
mod api;
mod args;
mod config;
mod handler;
mod knobs;
mod openai;
mod pii;
mod reset;
mod server;
mod state;
mod stats;
mod stream;
mod tokens;

pub use api::monotonic_ns;
pub use args::{run_cli, MockLlmArgs};
pub use config::{MockLlmConfig, DEFAULT_PORT};
pub use knobs::{
    Fault, FaultKind, Knobs, KnobsError, MAX_RATE, MAX_TOKEN_SIZE, MAX_TTFT, MIN_RATE,
};
pub use pii::{luhn_valid, PiiKind};
pub use server::{run, run_until, RunningMockLlm, SHUTDOWN_GRACE};
pub use state::MockLlm;
pub use stats::MockStats;
pub use stream::CHUNK_BYTES;
pub use tokens::{planted, PiiPart, PlantedPii, Token, TokenGen};
pub use tokio_util::sync::CancellationToken;
