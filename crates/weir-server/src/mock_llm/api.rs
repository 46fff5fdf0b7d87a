//! What the two APIs share: the request fields the mock reads, and the trait each format implements.

use std::fmt::Write as _;

use axum::http::StatusCode;
use bytes::{BufMut, BytesMut};
use serde::Deserialize;
use serde_json::Value;

/// The fields of an OpenAI or Anthropic request body that the mock reads; the rest
/// (messages, temperature, tools, ...) is accepted and ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ApiRequest {
    pub model: Option<String>,
    pub stream: Option<bool>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub stream_options: Option<StreamOptions>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// Why a response stopped producing tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Finish {
    /// It said all it had to say (`stop`, `end_turn`).
    Stop,
    /// It hit the request's `max_tokens` (`length`, `max_tokens`).
    Length,
}

/// What one response's frames repeat: its id, model and input size.
#[derive(Clone, Debug)]
pub(crate) struct ResponseMeta {
    /// A number unique within the mock, made into the API's id format.
    pub seq: u64,
    /// Unix seconds.
    pub created: u64,
    pub model: String,
    /// Estimated from the request body's size (about 4 bytes a token).
    pub input_tokens: u64,
    /// OpenAI's `stream_options.include_usage`.
    pub include_usage: bool,
}

/// One API's wire format: the frames of a stream and the bodies of other responses.
pub(crate) trait Api: Send + Sync + 'static {
    /// Status of `fault=status` when the query names none.
    fn fault_status() -> StatusCode;

    fn new(meta: ResponseMeta) -> Self;
    /// Frames before the first token.
    fn preamble(&self, out: &mut BytesMut);
    /// The frame carrying one token of text, with `"weir_sent_ns"` when `stamp` is given.
    fn token(&self, text: &str, stamp: Option<u64>, out: &mut BytesMut);
    /// Frames after the last token, `output_tokens` having been sent.
    fn finish(&self, finish: Finish, output_tokens: u64, out: &mut BytesMut);
    /// The in-band error event of this API.
    fn error_event(&self, out: &mut BytesMut);
    /// A frame whose data is not valid JSON.
    fn malformed(&self, out: &mut BytesMut);
    /// The non-streaming response.
    fn completion(&self, text: &str, output_tokens: u64, finish: Finish) -> Value;
    /// This API's JSON error body for `status`.
    fn error_body(status: StatusCode, message: &str) -> Value;
}

/// Appends `text` as a JSON string literal.
pub(crate) fn push_json_str(out: &mut BytesMut, text: &str) {
    // Serialising a &str into memory cannot fail.
    let _ = serde_json::to_writer(out.writer(), text);
}

/// Appends `,"weir_sent_ns":N` when there is a stamp.
pub(crate) fn push_stamp(out: &mut BytesMut, stamp: Option<u64>) {
    if let Some(ns) = stamp {
        // Formatting into memory cannot fail.
        let _ = write!(out, ",\"weir_sent_ns\":{ns}");
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock every process on this host reads alike.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}
