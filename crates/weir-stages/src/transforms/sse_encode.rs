//! Encodes NDJSON event objects into a Server-Sent Events byte stream.

use std::mem;

use bytes::Bytes;
use memchr::memchr;
use serde::Deserialize;
use weir_runtime::{BoxError, Emit, Transform};

use crate::codec::sse::{SseEncodeError, SseEncoder, SseEvent};

/// The longest NDJSON line accepted when none is given: 1 MiB.
pub const DEFAULT_MAX_LINE: usize = 1024 * 1024;

/// How much one input stream may make the stage hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEncodeLimits {
    /// The longest input line, in bytes, its line feed excluded.
    pub max_line: usize,
}

impl Default for SseEncodeLimits {
    fn default() -> Self {
        SseEncodeLimits {
            max_line: DEFAULT_MAX_LINE,
        }
    }
}

/// Why an NDJSON line could not be turned into an event.
#[derive(Debug, thiserror::Error)]
pub enum NdjsonEventError {
    #[error("NDJSON line {line} is longer than max_line ({limit} bytes)")]
    LineTooLong { line: u64, limit: usize },
    #[error("NDJSON line {line} is not an SSE event object: {reason}")]
    NotAnEvent { line: u64, reason: String },
    #[error("NDJSON line {line} cannot be written as SSE: {source}")]
    Unencodable { line: u64, source: SseEncodeError },
}

/// Reads NDJSON lines (split across input items in any way), each an object with a string
/// `data` and optional `event`, `id` (string or null) and `retry` (integer), and emits,
/// per input item, one item holding the SSE text of every line completed in it. Blank
/// lines are skipped; a last line without a line feed is encoded at the end.
pub struct SseEncode {
    limits: SseEncodeLimits,
    encoder: SseEncoder,
    /// Bytes of a line that began in an earlier item.
    line: Vec<u8>,
    lines_done: u64,
}

impl SseEncode {
    pub fn new(limits: SseEncodeLimits) -> Self {
        SseEncode {
            limits,
            encoder: SseEncoder::new(),
            line: Vec::new(),
            lines_done: 0,
        }
    }

    fn encode_lines(
        &mut self,
        mut chunk: &[u8],
        batch: &mut Vec<u8>,
    ) -> Result<(), NdjsonEventError> {
        while let Some(end) = memchr(b'\n', chunk) {
            self.check_line(self.line.len() + end)?;
            if self.line.is_empty() {
                self.encode_line(&chunk[..end], batch)?;
            } else {
                self.line.extend_from_slice(&chunk[..end]);
                let line = mem::take(&mut self.line);
                let encoded = self.encode_line(&line, batch);
                self.line = line;
                self.line.clear();
                encoded?;
            }
            chunk = &chunk[end + 1..];
        }
        self.check_line(self.line.len() + chunk.len())?;
        self.line.extend_from_slice(chunk);
        Ok(())
    }

    fn check_line(&self, len: usize) -> Result<(), NdjsonEventError> {
        if len > self.limits.max_line {
            return Err(NdjsonEventError::LineTooLong {
                line: self.lines_done + 1,
                limit: self.limits.max_line,
            });
        }
        Ok(())
    }

    fn encode_line(&mut self, line: &[u8], batch: &mut Vec<u8>) -> Result<(), NdjsonEventError> {
        self.lines_done += 1;
        let number = self.lines_done;
        let first = line.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\r'));
        let Some(first) = first else {
            return Ok(());
        };
        // serde would also take a JSON array as the fields in order.
        if *first != b'{' {
            return Err(NdjsonEventError::NotAnEvent {
                line: number,
                reason: "not a JSON object".to_owned(),
            });
        }
        let parsed: EventObject =
            serde_json::from_slice(line).map_err(|e| NdjsonEventError::NotAnEvent {
                line: number,
                reason: describe(&e),
            })?;
        let event = SseEvent {
            event: parsed.event,
            data: parsed.data,
            id: parsed.id,
            retry: parsed.retry,
        };
        self.encoder
            .encode(&event, batch)
            .map_err(|source| NdjsonEventError::Unencodable {
                line: number,
                source,
            })
    }
}

impl Default for SseEncode {
    fn default() -> Self {
        SseEncode::new(SseEncodeLimits::default())
    }
}

#[derive(Deserialize)]
struct EventObject {
    data: String,
    event: Option<String>,
    id: Option<String>,
    retry: Option<u64>,
}

/// serde_json's message without its position, which always reads "line 1" here.
fn describe(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    match message.strip_suffix(&position) {
        Some(what) => format!("{what} (column {})", e.column()),
        None => message,
    }
}

impl Transform for SseEncode {
    type In = Bytes;
    type Out = Bytes;

    async fn apply(&mut self, item: Bytes, out: &mut Emit<'_, Bytes>) -> Result<(), BoxError> {
        let mut batch = Vec::new();
        self.encode_lines(&item, &mut batch)?;
        if !batch.is_empty() {
            out.send(Bytes::from(batch)).await?;
        }
        Ok(())
    }

    async fn finish(&mut self, out: &mut Emit<'_, Bytes>) -> Result<(), BoxError> {
        let line = mem::take(&mut self.line);
        if line.is_empty() {
            return Ok(());
        }
        let mut batch = Vec::new();
        self.encode_line(&line, &mut batch)?;
        if !batch.is_empty() {
            out.send(Bytes::from(batch)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use weir_runtime::{Pipeline, PipelineError};

    use super::*;
    use crate::test_support::{run_transform, Chunks, Collect};
    use crate::transforms::sse_decode::SseDecode;

    async fn run(stage: SseEncode, chunks: &[&str]) -> (Result<(), PipelineError>, Vec<String>) {
        let (ran, sink) = run_transform("sse_encode", stage, Chunks::new(chunks)).await;
        (ran.map(|_| ()), sink.strings())
    }

    async fn error_of(chunks: &[&str]) -> String {
        let (ran, _) = run(SseEncode::default(), chunks).await;
        let err = ran.unwrap_err();
        assert_eq!(err.stage, "sse_encode");
        err.to_string()
    }

    #[tokio::test]
    async fn lines_of_one_chunk_go_out_as_one_item() {
        let (ran, items) = run(
            SseEncode::default(),
            &[concat!(
                "{\"data\":\"a\\nb\",\"event\":\"up\",\"id\":\"7\",\"retry\":50}\n",
                "{\"data\":\"c\",\"event\":null,\"id\":null}\n",
            )],
        )
        .await;
        ran.unwrap();
        assert_eq!(
            items,
            ["event: up\nid: 7\nretry: 50\ndata: a\ndata: b\n\nid\ndata: c\n\n"]
        );
    }

    #[tokio::test]
    async fn line_split_across_chunks_is_encoded_once_complete() {
        let (ran, items) = run(
            SseEncode::default(),
            &["{\"da", "ta\":", "\"x\"}\r\n{\"data\":\"y\"}\n"],
        )
        .await;
        ran.unwrap();
        assert_eq!(items, ["data: x\n\ndata: y\n\n"]);
    }

    #[tokio::test]
    async fn last_line_without_line_feed_is_encoded_at_finish() {
        let (ran, items) = run(
            SseEncode::default(),
            &["{\"data\":\"x\"}\n{\"data\"", ":\"y\"}"],
        )
        .await;
        ran.unwrap();
        assert_eq!(items, ["data: x\n\n", "data: y\n\n"]);
    }

    #[tokio::test]
    async fn blank_lines_skipped() {
        let (ran, items) = run(
            SseEncode::default(),
            &["\n  \n{\"data\":\"x\"}\n\t\r\n", " "],
        )
        .await;
        ran.unwrap();
        assert_eq!(items, ["data: x\n\n"]);
    }

    #[tokio::test]
    async fn missing_data_names_the_line() {
        let err = error_of(&["{\"data\":\"x\"}\n\n{\"event\":\"e\"}\n"]).await;
        assert!(
            err.ends_with(
                "NDJSON line 3 is not an SSE event object: missing field `data` (column 13)"
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn wrong_types_name_the_line() {
        let err = error_of(&["[1, 2]\n"]).await;
        assert!(err.contains("line 1"), "{err}");
        assert!(err.ends_with("not a JSON object"), "{err}");
        let err = error_of(&["{\"data\":5}\n"]).await;
        assert!(
            err.contains("invalid type: integer `5`, expected a string"),
            "{err}"
        );
        let err = error_of(&["{\"data\":\"x\",\"retry\":-1}\n"]).await;
        assert!(err.contains("line 1"), "{err}");
        assert!(err.contains("expected u64"), "{err}");
        let err = error_of(&["{\"data\":\"x\"} trailing"]).await;
        assert!(err.contains("line 1"), "{err}");
    }

    #[tokio::test]
    async fn line_break_in_event_names_the_line() {
        let err = error_of(&["{\"data\":\"x\"}\n{\"data\":\"x\",\"event\":\"a\\nb\"}\n"]).await;
        assert!(
            err.contains("NDJSON line 2 cannot be written as SSE"),
            "{err}"
        );
        assert!(err.contains("`event` contains a line break"), "{err}");
    }

    #[tokio::test]
    async fn line_over_limit_names_the_line() {
        let limits = SseEncodeLimits { max_line: 16 };
        let (ran, _) = run(
            SseEncode::new(limits),
            &["{\"data\":\"x\"}\n{\"data\":", "\"far too long\"}\n"],
        )
        .await;
        let err = ran.unwrap_err().to_string();
        assert!(
            err.ends_with("NDJSON line 2 is longer than max_line (16 bytes)"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn decode_then_encode_keeps_the_events() {
        let stream = "event: a\r\nid: 1\r\ndata: x\r\ndata: y\r\n\r\n: c\n\ndata: z\nretry: 9\n\n";
        let collected = Collect::default();
        Pipeline::builder()
            .source("chunks", Chunks::of(stream.as_bytes(), 5))
            .transform("sse_decode", SseDecode::default())
            .transform("sse_encode", SseEncode::default())
            .sink("collect", collected.clone())
            .run()
            .await
            .unwrap();
        let text: Vec<u8> = collected.bytes();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "event: a\nid: 1\ndata: x\ndata: y\n\nid: 1\nretry: 9\ndata: z\n\n"
        );
    }
}
