//! One API request from start to end: knobs, body fields, faults, then a stream or a JSON body.

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use tokio_util::sync::CancellationToken;

use super::api::{Api, ApiRequest, Finish, ResponseMeta};
use super::knobs::{FaultKind, KnobsQuery};
use super::reset::ResetSwitch;
use super::state::MockLlm;
use super::stats::Counters;
use super::stream::{sse_body, StreamPlan};
use super::tokens::TokenGen;

/// Largest request body read.
const MAX_REQUEST_BYTES: usize = 16 << 20;
/// Largest non-streaming answer, in bytes of text: it is built whole in memory.
const MAX_COMPLETION_BYTES: u64 = 64 << 20;

/// Answers one request to an API endpoint in the format of `A`.
pub(crate) async fn respond<A: Api>(mock: MockLlm, req: Request) -> Response {
    let counters = mock.counters();
    counters.request();
    let reset = req.extensions().get::<ResetSwitch>().cloned();
    let (parts, body) = req.into_parts();
    let query = match KnobsQuery::from_uri(&parts.uri) {
        Ok(q) => q,
        Err(m) => return error::<A>(StatusCode::BAD_REQUEST, &m.to_string()),
    };
    let knobs = match query.apply(&mock.config().knobs) {
        Ok(k) => k,
        Err(m) => return error::<A>(StatusCode::BAD_REQUEST, &m.to_string()),
    };
    let bytes = match axum::body::to_bytes(body, MAX_REQUEST_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            let m =
                format!("cannot read the request body (at most {MAX_REQUEST_BYTES} bytes): {e}");
            return error::<A>(StatusCode::BAD_REQUEST, &m);
        }
    };
    let request: ApiRequest = if bytes.trim_ascii().is_empty() {
        ApiRequest::default()
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                let m = format!("request body is not a valid request: {e}");
                return error::<A>(StatusCode::BAD_REQUEST, &m);
            }
        }
    };

    let stream = query
        .stream()
        .or(request.stream)
        .unwrap_or(parts.method == Method::GET);
    let cap = request.max_tokens.or(request.max_completion_tokens);
    let (limit, finish) = match (knobs.tokens, cap) {
        (0, None) => (None, Finish::Stop),
        (t, Some(c)) if t == 0 || c < t => (Some(c), Finish::Length),
        (t, _) => (Some(t), Finish::Stop),
    };
    let meta = ResponseMeta {
        seq: mock.next_seq(),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: request.model.unwrap_or_else(|| mock.config().model.clone()),
        input_tokens: (bytes.len() as u64 / 4).max(1),
        include_usage: request
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
    };
    if let Some(f) = knobs.fault.filter(|f| f.kind == FaultKind::Status) {
        counters.fault();
        let status = f
            .status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or_else(A::fault_status);
        return error::<A>(status, "mock-llm: injected error status");
    }
    let api = A::new(meta);
    let plan = StreamPlan {
        limit,
        finish,
        knobs,
    };
    if stream {
        let body = sse_body(api, plan, counters, mock.shutdown_token(), reset);
        return (
            [
                (CONTENT_TYPE, "text/event-stream"),
                (CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response();
    }
    complete(api, plan, &counters, mock.shutdown_token(), reset).await
}

/// The non-streaming answer. It arrives when its last token would have (after `ttft` and
/// `tokens / rate`); `fault_after` does not apply, the body being one piece.
async fn complete<A: Api>(
    api: A,
    plan: StreamPlan,
    counters: &Counters,
    shutdown: CancellationToken,
    reset: Option<ResetSwitch>,
) -> Response {
    let Some(limit) = plan.limit else {
        return error::<A>(
            StatusCode::BAD_REQUEST,
            "tokens=0 (endless) needs a streaming request (\"stream\": true)",
        );
    };
    if limit.saturating_mul(plan.knobs.token_size as u64) > MAX_COMPLETION_BYTES {
        let m =
            format!("a non-streaming answer is limited to {MAX_COMPLETION_BYTES} bytes; stream it");
        return error::<A>(StatusCode::BAD_REQUEST, &m);
    }
    let fault = plan.knobs.fault.map(|f| f.kind);
    if fault == Some(FaultKind::Stall) {
        counters.fault();
        shutdown.cancelled().await;
        return error::<A>(StatusCode::SERVICE_UNAVAILABLE, "mock-llm: shutting down");
    }
    let mut wait = plan.knobs.ttft;
    if plan.knobs.rate > 0.0 {
        let generation = Duration::try_from_secs_f64(limit as f64 / plan.knobs.rate);
        wait = wait.saturating_add(generation.unwrap_or(Duration::MAX));
    }
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = shutdown.cancelled() => {
            return error::<A>(StatusCode::SERVICE_UNAVAILABLE, "mock-llm: shutting down");
        }
    }
    match fault {
        Some(FaultKind::Error) => {
            counters.fault();
            return error::<A>(A::fault_status(), "mock-llm: injected error");
        }
        Some(FaultKind::Reset) => {
            counters.fault();
            let failure = async move {
                if let Some(switch) = reset {
                    switch.arm().await;
                }
                Err::<bytes::Bytes, _>(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "mock-llm: injected reset",
                ))
            };
            let body = Body::from_stream(futures::stream::once(failure));
            return ([(CONTENT_TYPE, "application/json")], body).into_response();
        }
        _ => {}
    }
    let mut gen = TokenGen::new(&plan.knobs);
    let mut text = String::new();
    let mut token = String::new();
    for _ in 0..limit {
        gen.next_into(&mut token);
        text.push_str(&token);
    }
    let body = api.completion(&text, limit, plan.finish);
    if fault == Some(FaultKind::Malformed) {
        counters.fault();
        let mut s = body.to_string();
        let mut cut = s.len() / 2;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        return ([(CONTENT_TYPE, "application/json")], s).into_response();
    }
    Json(body).into_response()
}

/// An error response in the format of `A`.
pub(crate) fn error<A: Api>(status: StatusCode, message: &str) -> Response {
    (status, Json(A::error_body(status, message))).into_response()
}
