//! A request body read whole, bounded in size and time, before anything is reserved for it:
//! a client that trickles its body holds no stream slot and no budget while it does.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::IgnoredAny;

/// How much of a body, and how long for it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub timeout: Duration,
}

/// Why a body was refused; each says what the client can change.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body over {max} bytes")]
    TooLarge { max: usize },
    #[error("the request body did not arrive within {} s", .timeout.as_secs_f64())]
    Timeout { timeout: Duration },
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
    /// The status that says what happened: 413 only for size, 408 for time, 400 otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Timeout { .. } => StatusCode::REQUEST_TIMEOUT,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The error kind clients see, and the rejection reason in `/metrics`.
    pub fn kind(&self) -> &'static str {
        match self {
            BodyError::TooLarge { .. } => "request_too_large",
            BodyError::Timeout { .. } => "body_timeout",
            BodyError::Malformed { .. } => "malformed_body",
            BodyError::Empty | BodyError::NotJson { .. } | BodyError::NotAnObject { .. } => {
                "invalid_request"
            }
        }
    }
}

/// Reads `body` whole within `limits`; a `Content-Length` over the limit is refused unread.
pub async fn read(headers: &HeaderMap, body: Body, limits: BodyLimits) -> Result<Bytes, BodyError> {
    let too_large = BodyError::TooLarge {
        max: limits.max_bytes,
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_bytes as u64) {
        return Err(too_large);
    }
    let collected = Limited::new(body, limits.max_bytes).collect();
    match tokio::time::timeout(limits.timeout, collected).await {
        Err(_) => Err(BodyError::Timeout {
            timeout: limits.timeout,
        }),
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_large),
        Ok(Err(e)) => Err(BodyError::Malformed {
            reason: weir_runtime::error_chain(e.as_ref()),
        }),
    }
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

    #[tokio::test]
    async fn size_time_and_framing_each_get_their_own_status() {
        let limits = BodyLimits {
            max_bytes: 8,
            timeout: Duration::from_secs(5),
        };
        let mut headers = HeaderMap::new();
        assert_eq!(
            read(&headers, Body::from("{\"a\":1}"), limits)
                .await
                .unwrap(),
            "{\"a\":1}"
        );
        let over = read(&headers, Body::from("0123456789"), limits)
            .await
            .unwrap_err();
        assert_eq!(over.status(), StatusCode::PAYLOAD_TOO_LARGE);
        headers.insert(header::CONTENT_LENGTH, "9".parse().unwrap());
        let declared = read(&headers, Body::empty(), limits).await.unwrap_err();
        assert_eq!(declared.status(), StatusCode::PAYLOAD_TOO_LARGE);

        let stalled =
            Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let quick = BodyLimits {
            timeout: Duration::from_millis(20),
            ..limits
        };
        let timeout = read(&HeaderMap::new(), stalled, quick).await.unwrap_err();
        assert_eq!(timeout.status(), StatusCode::REQUEST_TIMEOUT);

        let broken = Body::from_stream(futures::stream::iter([Err::<Bytes, _>(
            std::io::Error::other("invalid chunk size line"),
        )]));
        let malformed = read(&HeaderMap::new(), broken, limits).await.unwrap_err();
        assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
        assert!(
            malformed.to_string().contains("invalid chunk size"),
            "{malformed}"
        );
    }
}
