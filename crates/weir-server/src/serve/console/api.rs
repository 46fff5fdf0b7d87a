//! `/_weir/`: the console's page, `GET /_weir/state` (JSON) and `GET /_weir/events` (SSE).
//!
//! # Access
//!
//! With `admin_keys` set, the state and events need one of them (`Authorization: Bearer
//! KEY` or `x-api-key: KEY`); the page, which holds no data, is served to anyone. Without
//! `admin_keys`, everything under `/_weir/` answers only loopback peers. A refusal is a
//! JSON error and nothing else.
//!
//! # Cost
//!
//! `/_weir/events` is a stream like any other: a snapshot is built only once the last
//! one has reached the client's kernel, its bytes are reserved from the memory budget,
//! and a client that takes nothing for [`STALL_LIMIT`] is cut off.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;

use super::registry::{Registry, StreamInfo};
use super::snapshot::{build, SortBy, Sources, View, DEFAULT_TOP, MAX_TOP};
use crate::serve::reply::json_error;
use crate::serve::send_queue::Backlog;
use crate::serve::shutdown::{last_event, Shutdown};
use crate::serve::stall::StallLimit;

/// The page, embedded: no build step, nothing fetched from elsewhere.
const PAGE: &str = include_str!("page.html");

/// Between two snapshots of `/_weir/events` when nothing comes or goes.
const EVERY: Duration = Duration::from_secs(1);

/// The least time between two snapshots: streams that come and go by the thousand cost
/// a console client at most this many snapshots a second.
const AT_MOST_EVERY: Duration = Duration::from_millis(250);

/// A console client that takes no bytes this long is cut off.
pub const STALL_LIMIT: Duration = Duration::from_secs(10);

/// What an events stream reserves from the memory budget: a snapshot's head and counts,
/// and at most this much per stream shown.
const EVENTS_BASE: usize = 64 << 10;
const EVENTS_PER_STREAM: usize = 2 << 10;

/// The console's sources and who may read them.
pub struct Console {
    pub sources: Sources,
    pub admin_keys: Vec<String>,
}

/// The routes under `/_weir/`.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/_weir", get(page))
        .route("/_weir/", get(page))
        .route("/_weir/state", get(state))
        .route("/_weir/events", get(events))
        .with_state(console)
}

fn peer(request: &Request) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
}

/// Compares in time independent of where the two differ.
fn same_key(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

impl Console {
    /// `None` if the request may read the console's data, else the refusal.
    fn refusal(&self, request: &Request) -> Option<Response> {
        if self.admin_keys.is_empty() {
            if peer(request).is_some_and(|p| p.ip().is_loopback()) {
                return None;
            }
            return Some(json_error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the console answers only loopback clients unless admin_keys are set",
            ));
        }
        let key = presented_key(request.headers());
        if key.is_some_and(|k| self.admin_keys.iter().any(|a| same_key(a, k))) {
            return None;
        }
        Some(json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "an admin key is needed (Authorization: Bearer KEY or x-api-key: KEY)",
        ))
    }
}

async fn page(State(console): State<Arc<Console>>, request: Request) -> Response {
    if console.admin_keys.is_empty() {
        if let Some(refusal) = console.refusal(&request) {
            return refusal;
        }
    }
    let mut response = PAGE.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Nothing from elsewhere: scripts and styles are the page's own.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
        ),
    );
    response
}

/// A console query string that does not say which streams to send.
#[derive(Debug, thiserror::Error)]
enum ViewError {
    #[error("{0}")]
    Query(#[from] QueryRejection),
    #[error("top={0}: a number from 0 to {MAX_TOP}")]
    Top(String),
    #[error("`{key}={value}`: the parameters are top=N (0 to {MAX_TOP}) and sort=buffered|rate")]
    Unknown { key: String, value: String },
}

/// `?top=N&sort=buffered|rate`: which streams to send in full; the message says what is wrong.
fn view(request: &Request) -> Result<View, ViewError> {
    let Query(pairs): Query<Vec<(String, String)>> = Query::try_from_uri(request.uri())?;
    let mut view = View {
        top: DEFAULT_TOP,
        sort: SortBy::Buffered,
    };
    for (key, value) in pairs {
        match (key.as_str(), value.as_str()) {
            ("top", n) => match n.parse() {
                Ok(n) if n <= MAX_TOP => view.top = n,
                _ => return Err(ViewError::Top(value)),
            },
            ("sort", "buffered") => view.sort = SortBy::Buffered,
            ("sort", "rate") => view.sort = SortBy::Rate,
            _ => return Err(ViewError::Unknown { key, value }),
        }
    }
    Ok(view)
}

fn bad_query(message: &str) -> Response {
    json_error(StatusCode::BAD_REQUEST, "bad_query", message)
}

async fn state(State(console): State<Arc<Console>>, request: Request) -> Response {
    if let Some(refusal) = console.refusal(&request) {
        return refusal;
    }
    match view(&request) {
        Ok(view) => axum::Json(build(&console.sources, view)).into_response(),
        Err(e) => bad_query(&e.to_string()),
    }
}

async fn events(State(console): State<Arc<Console>>, request: Request) -> Response {
    if let Some(refusal) = console.refusal(&request) {
        return refusal;
    }
    let view = match view(&request) {
        Ok(view) => view,
        Err(e) => return bad_query(&e.to_string()),
    };
    let budget = console.sources.admission.budget();
    let bytes = EVENTS_BASE + view.top * EVENTS_PER_STREAM;
    let reservation = match budget.try_reserve(bytes) {
        Ok(r) => r,
        Err(e) => {
            let mut response = json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                &format!("server busy, retry shortly: {e}"),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
    };
    let extensions = request.extensions();
    if let Some(limit) = extensions.get::<StallLimit>() {
        limit.set(STALL_LIMIT);
    }
    let shutdown = Shutdown::of(extensions);
    let backlog = extensions.get::<Backlog>().cloned();
    let registry = Registry::of(extensions).unwrap_or_default();
    let watched = registry.register(StreamInfo {
        route: Arc::from("/_weir/events"),
        kind: "console",
        client: peer(&request),
        budget: bytes as u64,
        backlog: backlog.clone(),
        holds: None,
        stages: Vec::new(),
    });
    let held = (watched, reservation, console, registry);
    let snapshots = futures::stream::unfold((held, None), move |(held, last)| {
        let backlog = backlog.clone();
        async move {
            if let Some(last) = last {
                let registry = &held.3;
                tokio::select! {
                    () = tokio::time::sleep_until(last + EVERY) => {}
                    () = registry.changed() => {
                        tokio::time::sleep_until(last + AT_MOST_EVERY).await;
                    }
                }
            }
            let now = tokio::time::Instant::now();
            // A slow console client gets no new snapshot until it has taken the last.
            if let Some(b) = &backlog {
                b.drained().await;
            }
            let (watched, _, console, _) = &held;
            let mut chunk = b"data: ".to_vec();
            if let Err(e) = serde_json::to_writer(&mut chunk, &build(&console.sources, view)) {
                return Some((Err(std::io::Error::other(e)), (held, Some(now))));
            }
            chunk.extend_from_slice(b"\n\n");
            if let Some(b) = &backlog {
                b.handed_a_chunk();
            }
            watched.sent(chunk.len());
            Some((
                Ok::<_, std::io::Error>(Bytes::from(chunk)),
                (held, Some(now)),
            ))
        }
    });
    let mut response = Response::new(Body::from_stream(
        shutdown.live(snapshots, last_event(true)),
    ));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
