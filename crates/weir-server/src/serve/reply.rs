//! What the streaming routes of plain text share: a JSON error, and the client's choice
//! between Server-Sent Events and NDJSON.

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

/// `{"error": {"type": kind, "message": message}}` with `status`.
pub fn json_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "type": kind, "message": message } });
    (status, axum::Json(body)).into_response()
}

/// Whether `Accept` asks for NDJSON rather than Server-Sent Events (the default).
pub fn wants_ndjson(headers: &HeaderMap) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    accept.contains("application/x-ndjson") && !accept.contains("text/event-stream")
}
