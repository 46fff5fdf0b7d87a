//! A request body read whole, bounded in size and time, before anything is reserved for it:
//! a client that trickles its body holds no stream slot and no budget while it does. All
//! bodies being read share one [`BodyBudget`]: `max_request_body` bounds one of them, the
//! budget all of them together.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde::de::IgnoredAny;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How much of a body, and how long for it.
#[derive(Debug, Clone)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub timeout: Duration,
    pub budget: BodyBudget,
}

/// The bytes all request bodies being read may hold at once (`request_body_budget`): a
/// body takes its share as its buffer grows and gives it back once it is dropped.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    total: u64,
}

impl BodyBudget {
    pub fn new(total: u64) -> Self {
        let permits = usize::try_from(total)
            .map_or(Semaphore::MAX_PERMITS, |t| t.min(Semaphore::MAX_PERMITS));
        BodyBudget {
            bytes: Arc::new(Semaphore::new(permits)),
            total,
        }
    }

    /// Bytes not taken by a body being read now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

/// A body's share of the [`BodyBudget`], given back when dropped.
#[derive(Debug)]
pub struct BodyShare(Option<OwnedSemaphorePermit>);

impl BodyShare {
    fn take(&mut self, budget: &BodyBudget, bytes: usize) -> Result<(), BodyError> {
        let more = u32::try_from(bytes)
            .ok()
            .and_then(|n| Arc::clone(&budget.bytes).try_acquire_many_owned(n).ok())
            .ok_or(BodyError::Busy {
                budget: budget.total,
            })?;
        match &mut self.0 {
            Some(held) => held.merge(more),
            None => self.0 = Some(more),
        }
        Ok(())
    }
}

/// Why a body was refused; each says what the client can change.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body over {max} bytes")]
    TooLarge { max: usize },
    #[error("the request body did not arrive within {} s", .timeout.as_secs_f64())]
    Timeout { timeout: Duration },
    #[error("server busy, retry shortly: the request bodies being read hold all of request_body_budget ({budget} bytes)")]
    Busy { budget: u64 },
    #[error("the request body is malformed: {reason}")]
    Malformed { reason: String },
    #[error("the request body is empty: send a JSON object")]
    Empty,
    #[error("the request body is not JSON: {reason}")]
    NotJson { reason: String },
    #[error("the request body is JSON {found}, not an object")]
    NotAnObject { found: &'static str },
}

impl BodyError {
    /// The status that says what happened: 413 only for size, 408 for time, 503 when the
    /// server reads too many bodies at once, 400 otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Timeout { .. } => StatusCode::REQUEST_TIMEOUT,
            BodyError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The error kind clients see.
    pub fn kind(&self) -> &'static str {
        match self {
            BodyError::TooLarge { .. } => "request_too_large",
            BodyError::Timeout { .. } => "body_timeout",
            BodyError::Busy { .. } => "overloaded",
            BodyError::Malformed { .. } => "malformed_body",
            BodyError::Empty | BodyError::NotJson { .. } | BodyError::NotAnObject { .. } => {
                "invalid_request"
            }
        }
    }

    /// The rejection reason in `/metrics`.
    pub fn reason(&self) -> &'static str {
        match self {
            BodyError::Busy { .. } => "request_body_budget",
            _ => self.kind(),
        }
    }
}

/// Reads `body` whole within `limits`; a `Content-Length` over the limit is refused unread.
/// The body's bytes stay counted against the budget until the share is dropped.
pub async fn read(
    headers: &HeaderMap,
    body: Body,
    limits: &BodyLimits,
) -> Result<(Bytes, BodyShare), BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_bytes as u64) {
        return Err(BodyError::TooLarge {
            max: limits.max_bytes,
        });
    }
    let declared = declared.map_or(0, |n| n as usize);
    match tokio::time::timeout(limits.timeout, collect(body, declared, limits)).await {
        Err(_) => Err(BodyError::Timeout {
            timeout: limits.timeout,
        }),
        Ok(read) => read,
    }
}

/// The body's data in one buffer, its growth taken from the budget before it is allocated.
async fn collect(
    mut body: Body,
    declared: usize,
    limits: &BodyLimits,
) -> Result<(Bytes, BodyShare), BodyError> {
    let mut share = BodyShare(None);
    share.take(&limits.budget, declared)?;
    let mut buf = Vec::with_capacity(declared);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Malformed {
            reason: weir_runtime::error_chain(&e),
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let len = buf.len() + data.len();
        if len > limits.max_bytes {
            return Err(BodyError::TooLarge {
                max: limits.max_bytes,
            });
        }
        if len > buf.capacity() {
            // Doubling, as a growing buffer would, but never past the limit.
            let grown = len.max(buf.capacity() * 2).min(limits.max_bytes);
            share.take(&limits.budget, grown - buf.capacity())?;
            buf.reserve_exact(grown - buf.len());
        }
        buf.extend_from_slice(&data);
    }
    Ok((Bytes::from(buf), share))
}

/// Checks that `body` is one JSON object, without building it.
pub fn check_json_object(body: &[u8]) -> Result<(), BodyError> {
    let found = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Err(BodyError::Empty),
        Some(b'{') => None,
        Some(b'[') => Some("an array"),
        Some(b'"') => Some("a string"),
        Some(b't' | b'f') => Some("a boolean"),
        Some(b'n') => Some("null"),
        Some(b'-' | b'0'..=b'9') => Some("a number"),
        Some(_) => None,
    };
    serde_json::from_slice::<IgnoredAny>(body).map_err(|e| BodyError::NotJson {
        reason: e.to_string(),
    })?;
    match found {
        Some(found) => Err(BodyError::NotAnObject { found }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_json_object_passes_and_each_refusal_names_what_was_wrong() {
        assert!(check_json_object(br#" {"model": "m", "stream": true} "#).is_ok());
        assert!(matches!(check_json_object(b"  \n"), Err(BodyError::Empty)));
        let not_json = check_json_object(b"{\"model\": ").unwrap_err();
        assert!(matches!(not_json, BodyError::NotJson { .. }));
        assert!(not_json.to_string().contains("line 1"), "{not_json}");
        assert!(matches!(
            check_json_object(b"hello"),
            Err(BodyError::NotJson { .. })
        ));
        let array = check_json_object(b"[1, 2]").unwrap_err();
        assert_eq!(
            array.to_string(),
            "the request body is JSON an array, not an object"
        );
        assert_eq!(array.status(), StatusCode::BAD_REQUEST);
        assert!(matches!(
            check_json_object(b"{} {}"),
            Err(BodyError::NotJson { .. })
        ));
    }

    fn limits(max_bytes: usize, budget: u64) -> BodyLimits {
        BodyLimits {
            max_bytes,
            timeout: Duration::from_secs(5),
            budget: BodyBudget::new(budget),
        }
    }

    #[tokio::test]
    async fn size_time_and_framing_each_get_their_own_status() {
        let limits = limits(8, 1 << 20);
        let mut headers = HeaderMap::new();
        let (body, share) = read(&headers, Body::from("{\"a\":1}"), &limits)
            .await
            .unwrap();
        assert_eq!(body, "{\"a\":1}");
        drop(share);
        let over = read(&headers, Body::from("0123456789"), &limits)
            .await
            .unwrap_err();
        assert_eq!(over.status(), StatusCode::PAYLOAD_TOO_LARGE);
        headers.insert(header::CONTENT_LENGTH, "9".parse().unwrap());
        let declared = read(&headers, Body::empty(), &limits).await.unwrap_err();
        assert_eq!(declared.status(), StatusCode::PAYLOAD_TOO_LARGE);

        let stalled =
            Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let quick = BodyLimits {
            timeout: Duration::from_millis(20),
            ..limits.clone()
        };
        let timeout = read(&HeaderMap::new(), stalled, &quick).await.unwrap_err();
        assert_eq!(timeout.status(), StatusCode::REQUEST_TIMEOUT);

        let broken = Body::from_stream(futures::stream::iter([Err::<Bytes, _>(
            std::io::Error::other("invalid chunk size line"),
        )]));
        let malformed = read(&HeaderMap::new(), broken, &limits).await.unwrap_err();
        assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
        assert!(
            malformed.to_string().contains("invalid chunk size"),
            "{malformed}"
        );
        assert_eq!(
            limits.budget.available(),
            1 << 20,
            "a refused body kept its share"
        );
    }

    /// Bodies being read hold their bytes against the budget until they are dropped; one
    /// that would take more than is left is refused with 503, and its bytes are freed.
    #[tokio::test]
    async fn bodies_being_read_share_one_budget() {
        let limits = limits(1 << 10, 1_500);
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, "1000".parse().unwrap());
        let (first, share) = read(&headers, Body::from(vec![b' '; 1000]), &limits)
            .await
            .unwrap();
        assert_eq!(first.len(), 1000);
        assert_eq!(limits.budget.available(), 500);
        let busy = read(&headers, Body::from(vec![b' '; 1000]), &limits)
            .await
            .unwrap_err();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.reason(), "request_body_budget");
        assert!(
            busy.to_string()
                .contains("request_body_budget (1500 bytes)"),
            "{busy}"
        );
        // Without a length the buffer grows as the data comes, and takes as it grows.
        let chunks = futures::stream::iter(
            [300, 300].map(|n| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; n]))),
        );
        let unsized_body = read(&HeaderMap::new(), Body::from_stream(chunks), &limits).await;
        assert_eq!(
            unsized_body.unwrap_err().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            limits.budget.available(),
            500,
            "a refused body kept its share"
        );
        drop(share);
        assert_eq!(limits.budget.available(), 1_500);
        let chunks = futures::stream::iter(
            [300, 300].map(|n| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; n]))),
        );
        let (grown, _share) = read(&HeaderMap::new(), Body::from_stream(chunks), &limits)
            .await
            .unwrap();
        assert_eq!(grown.len(), 600);
    }
}
