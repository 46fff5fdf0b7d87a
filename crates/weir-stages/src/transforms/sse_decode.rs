//! Decodes a Server-Sent Events byte stream into NDJSON, one object per event.

use bytes::Bytes;
use serde::Serialize;
use weir_runtime::{BoxError, Emit, Transform};

use crate::codec::sse::{SseDecoder, SseEvent, SseLimits};

/// Emits, for each input chunk, one item holding a JSON line
/// `{"event":…,"data":…,"id":…}` per event completed in that chunk (`event` and `id`
/// are `null` when unset; `"retry":N` is added when the event carried a valid one).
/// A line or event over its limit stops the pipeline with an error naming the limit.
pub struct SseDecode {
    decoder: SseDecoder,
}

impl SseDecode {
    pub fn new(limits: SseLimits) -> Self {
        SseDecode {
            decoder: SseDecoder::new(limits),
        }
    }
}

impl Default for SseDecode {
    fn default() -> Self {
        SseDecode::new(SseLimits::default())
    }
}

#[derive(Serialize)]
struct EventLine<'a> {
    event: Option<&'a str>,
    data: &'a str,
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry: Option<u64>,
}

fn write_line(event: &SseEvent, out: &mut Vec<u8>) -> serde_json::Result<()> {
    let line = EventLine {
        event: event.event.as_deref(),
        data: &event.data,
        id: event.id.as_deref(),
        retry: event.retry,
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.push(b'\n');
    Ok(())
}

// No `finish`: the event stream rules discard an event not closed by a blank line.
impl Transform for SseDecode {
    type In = Bytes;
    type Out = Bytes;

    async fn apply(&mut self, item: Bytes, out: &mut Emit<'_, Bytes>) -> Result<(), BoxError> {
        let mut batch = Vec::new();
        let mut written = Ok(());
        self.decoder.feed(&item, |event| {
            if written.is_ok() {
                written = write_line(&event, &mut batch);
            }
        })?;
        written?;
        if !batch.is_empty() {
            out.send(Bytes::from(batch)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use weir_runtime::PipelineError;

    use super::*;
    use crate::test_support::{run_transform, Chunks};

    async fn run(stage: SseDecode, chunks: &[&str]) -> (Result<(), PipelineError>, Vec<String>) {
        let (ran, sink) = run_transform("sse_decode", stage, Chunks::new(chunks)).await;
        (ran.map(|_| ()), sink.strings())
    }

    #[tokio::test]
    async fn events_of_one_chunk_go_out_as_one_item() {
        let (ran, items) = run(
            SseDecode::default(),
            &["event: a\ndata: 1\n\nid: 7\ndata: 2\n\nretry: 50\ndata: 3\n\n"],
        )
        .await;
        ran.unwrap();
        assert_eq!(
            items,
            [concat!(
                "{\"event\":\"a\",\"data\":\"1\",\"id\":null}\n",
                "{\"event\":null,\"data\":\"2\",\"id\":\"7\"}\n",
                "{\"event\":null,\"data\":\"3\",\"id\":\"7\",\"retry\":50}\n",
            )]
        );
    }

    #[tokio::test]
    async fn event_split_across_chunks_goes_out_once_complete() {
        let (ran, items) = run(
            SseDecode::default(),
            &[
                "data: multi",
                "\ndata: line\r",
                "\n",
                "\r\n: comment\n",
                "data: tail",
            ],
        )
        .await;
        ran.unwrap();
        assert_eq!(
            items,
            ["{\"event\":null,\"data\":\"multi\\nline\",\"id\":null}\n"]
        );
    }

    #[tokio::test]
    async fn line_over_limit_fails_the_stage() {
        let limits = SseLimits {
            max_line: 16,
            max_event: 1024,
        };
        let (ran, _) = run(
            SseDecode::new(limits),
            &["data: ok\n\ndata: this line is too long\n\n"],
        )
        .await;
        let err = ran.unwrap_err();
        assert_eq!(err.stage, "sse_decode");
        assert!(err.to_string().contains("max_line (16 bytes)"), "{err}");
        assert!(err.to_string().contains("byte offset 26"), "{err}");
    }

    #[tokio::test]
    async fn event_over_limit_fails_the_stage() {
        let limits = SseLimits {
            max_line: 1024,
            max_event: 8,
        };
        let (ran, _) = run(SseDecode::new(limits), &["data: 1234\n", "data: 5678\n\n"]).await;
        let err = ran.unwrap_err();
        assert!(err.to_string().contains("max_event (8 bytes)"), "{err}");
        assert!(err.to_string().contains("byte offset 11"), "{err}");
    }
}
