//! Anthropic's Messages format: the `message_start` ... `message_stop` SSE events and the `message` body.

use axum::http::StatusCode;
use bytes::{BufMut, BytesMut};
use serde_json::{json, Value};

use super::api::{push_json_str, push_stamp, Api, Finish, ResponseMeta};

/// One message, streamed or not.
#[derive(Debug)]
pub(crate) struct Anthropic {
    meta: ResponseMeta,
    id: String,
}

fn stop_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "end_turn",
        Finish::Length => "max_tokens",
    }
}

fn event(out: &mut BytesMut, name: &str, data: &str) {
    for part in ["event: ", name, "\ndata: ", data, "\n\n"] {
        out.put_slice(part.as_bytes());
    }
}

impl Api for Anthropic {
    /// Anthropic's "overloaded".
    fn fault_status() -> StatusCode {
        StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
    }

    fn new(meta: ResponseMeta) -> Self {
        let id = format!("msg_weirmock{:012}", meta.seq);
        Anthropic { meta, id }
    }

    fn preamble(&self, out: &mut BytesMut) {
        let message_start = format!(
            r#"{{"type":"message_start","message":{{"id":{},"type":"message","role":"assistant","model":{},"content":[],"stop_reason":null,"stop_sequence":null,"usage":{{"input_tokens":{},"output_tokens":1}}}}}}"#,
            Value::from(self.id.as_str()),
            Value::from(self.meta.model.as_str()),
            self.meta.input_tokens,
        );
        event(out, "message_start", &message_start);
        event(
            out,
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        );
        event(out, "ping", r#"{"type":"ping"}"#);
    }

    fn token(&self, text: &str, stamp: Option<u64>, out: &mut BytesMut) {
        out.put_slice(
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":",
        );
        push_json_str(out, text);
        out.put_slice(b"}");
        push_stamp(out, stamp);
        out.put_slice(b"}\n\n");
    }

    fn finish(&self, finish: Finish, output_tokens: u64, out: &mut BytesMut) {
        event(
            out,
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#,
        );
        let message_delta = format!(
            r#"{{"type":"message_delta","delta":{{"stop_reason":"{}","stop_sequence":null}},"usage":{{"output_tokens":{output_tokens}}}}}"#,
            stop_reason(finish),
        );
        event(out, "message_delta", &message_delta);
        event(out, "message_stop", r#"{"type":"message_stop"}"#);
    }

    fn error_event(&self, out: &mut BytesMut) {
        event(
            out,
            "error",
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
    }

    fn malformed(&self, out: &mut BytesMut) {
        out.put_slice(
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"mock-llm: injected malformed frame\n\n",
        );
    }

    fn completion(&self, text: &str, output_tokens: u64, finish: Finish) -> Value {
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.meta.model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": stop_reason(finish),
            "stop_sequence": null,
            "usage": {"input_tokens": self.meta.input_tokens, "output_tokens": output_tokens},
        })
    }

    fn error_body(status: StatusCode, message: &str) -> Value {
        let kind = match status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            400..=499 => "invalid_request_error",
            _ => "api_error",
        };
        json!({"type": "error", "error": {"type": kind, "message": message}})
    }
}
