//! OpenAI's Chat Completions format: `chat.completion.chunk` SSE frames, `data: [DONE]`, and the `chat.completion` body.

use axum::http::StatusCode;
use bytes::{BufMut, BytesMut};
use serde_json::{json, Value};

use super::api::{push_json_str, push_stamp, Api, Finish, ResponseMeta};

/// One chat completion, streamed or not.
#[derive(Debug)]
pub(crate) struct OpenAi {
    meta: ResponseMeta,
    id: String,
    /// `data: {"id":..,"object":..,"created":..,"model":..,"choices":[{"index":0,"delta":`,
    /// the part every chunk repeats, built once.
    chunk_head: String,
}

impl OpenAi {
    fn chunk(&self, out: &mut BytesMut, delta: &str, finish_reason: &str) {
        out.put_slice(self.chunk_head.as_bytes());
        out.put_slice(delta.as_bytes());
        out.put_slice(b",\"finish_reason\":");
        out.put_slice(finish_reason.as_bytes());
        out.put_slice(b"}]}\n\n");
    }

    fn usage(&self, output_tokens: u64) -> Value {
        json!({
            "prompt_tokens": self.meta.input_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": self.meta.input_tokens + output_tokens,
        })
    }
}

fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

impl Api for OpenAi {
    fn fault_status() -> StatusCode {
        StatusCode::INTERNAL_SERVER_ERROR
    }

    fn new(meta: ResponseMeta) -> Self {
        let id = format!("chatcmpl-weirmock{:012}", meta.seq);
        let chunk_head = format!(
            "data: {{\"id\":{},\"object\":\"chat.completion.chunk\",\"created\":{},\"model\":{},\"choices\":[{{\"index\":0,\"delta\":",
            Value::from(id.as_str()),
            meta.created,
            Value::from(meta.model.as_str()),
        );
        OpenAi {
            meta,
            id,
            chunk_head,
        }
    }

    fn preamble(&self, out: &mut BytesMut) {
        self.chunk(out, r#"{"role":"assistant","content":""}"#, "null");
    }

    fn token(&self, text: &str, stamp: Option<u64>, out: &mut BytesMut) {
        out.put_slice(self.chunk_head.as_bytes());
        out.put_slice(b"{\"content\":");
        push_json_str(out, text);
        out.put_slice(b"},\"finish_reason\":null}]");
        push_stamp(out, stamp);
        out.put_slice(b"}\n\n");
    }

    fn finish(&self, finish: Finish, output_tokens: u64, out: &mut BytesMut) {
        let reason = format!("\"{}\"", finish_reason(finish));
        self.chunk(out, "{}", &reason);
        if self.meta.include_usage {
            // The chunk head up to `"choices":[`, then an empty list and the usage.
            let head = self.chunk_head.trim_end_matches(r#"{"index":0,"delta":"#);
            out.put_slice(head.as_bytes());
            let usage = self.usage(output_tokens);
            out.put_slice(format!("],\"usage\":{usage}}}\n\n").as_bytes());
        }
        out.put_slice(b"data: [DONE]\n\n");
    }

    fn error_event(&self, out: &mut BytesMut) {
        out.put_slice(
            br#"data: {"error":{"message":"mock-llm: injected error","type":"server_error","param":null,"code":null}}"#,
        );
        out.put_slice(b"\n\n");
    }

    fn malformed(&self, out: &mut BytesMut) {
        out.put_slice(self.chunk_head.as_bytes());
        out.put_slice(b"{\"content\":\"mock-llm: injected malformed frame\n\n");
    }

    fn completion(&self, text: &str, output_tokens: u64, finish: Finish) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.meta.created,
            "model": self.meta.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": null},
                "logprobs": null,
                "finish_reason": finish_reason(finish),
            }],
            "usage": self.usage(output_tokens),
        })
    }

    fn error_body(status: StatusCode, message: &str) -> Value {
        let (kind, code) = match status.as_u16() {
            401 => ("invalid_request_error", json!("invalid_api_key")),
            404 => ("invalid_request_error", json!("not_found")),
            429 => ("requests", json!("rate_limit_exceeded")),
            400..=499 => ("invalid_request_error", Value::Null),
            _ => ("server_error", Value::Null),
        };
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
    }
}
