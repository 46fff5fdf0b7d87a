//! One proxied request: check the key, admit the stream, call the upstream, stream back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::relay::{Relay, TextFilter};
use super::scrub::scrub_body;
use super::stream::{ProxyStream, StreamTiming};
use super::upstream::{tls_failure, SendError, Upstream, UpstreamError};
use crate::serve::admission::{Admission, Refusal};
use crate::serve::config::LlmProxyRoute;
use crate::serve::console::{Holds, Registry, StreamInfo};
use crate::serve::metrics::RouteMetrics;
use crate::serve::request_body::{self, BodyError, BodyLimits};
use crate::serve::send_queue::{Backlog, PacedByBacklog};
use crate::serve::shutdown::Shutdown;
use crate::serve::stall::StallLimit;
use crate::serve::stream_stats::{Outcome, StreamStats};
use weir_runtime::error_chain;

/// Headers of the client's request passed on to the upstream.
const FORWARDED_HEADERS: [&str; 4] = [
    "content-type",
    "accept",
    "anthropic-version",
    "anthropic-beta",
];

/// Largest upstream error body passed on: an error says what it has to say in less.
const MAX_ERROR_BODY: u64 = 64 << 10;

/// Makes the text filter of one stream (redaction), if the route has one.
pub type FilterFactory = Arc<dyn Fn() -> Box<dyn TextFilter> + Send + Sync>;

/// An `llm_proxy` route that cannot start, naming the route or its upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyRouteError {
    #[error("upstream `{upstream}`: {error}")]
    UpstreamUri {
        upstream: String,
        error: hyper::http::uri::InvalidUri,
    },
    #[error("route {path}: environment variable {var} (upstream_key_env) is not set")]
    KeyNotSet { path: String, var: String },
    #[error("route {path}: {var} holds characters not allowed in a header")]
    KeyNotHeader { path: String, var: String },
    #[error("route {path}: {error}")]
    Upstream { path: String, error: UpstreamError },
}

/// A configured `llm_proxy` route, shared by its requests.
pub struct ProxyRoute {
    config: LlmProxyRoute,
    upstream: Upstream,
    upstream_key: Option<HeaderValue>,
    /// The key's own bytes, removed from everything forwarded to clients.
    secret: Option<Arc<[u8]>>,
    admission: Admission,
    body_limits: BodyLimits,
    filter: Option<FilterFactory>,
    metrics: Arc<RouteMetrics>,
    /// The route's path, shared by its streams' console entries.
    path: Arc<str>,
}

impl ProxyRoute {
    /// Reads the upstream key from the environment now, so a missing one fails at start.
    pub fn new(
        config: LlmProxyRoute,
        admission: Admission,
        body_limits: BodyLimits,
        filter: Option<FilterFactory>,
    ) -> Result<Self, ProxyRouteError> {
        let upstream: Uri =
            config
                .upstream
                .parse()
                .map_err(|error| ProxyRouteError::UpstreamUri {
                    upstream: config.upstream.clone(),
                    error,
                })?;
        let mut secret = None;
        let upstream_key = match &config.upstream_key_env {
            None => None,
            Some(var) => {
                let key = std::env::var(var).map_err(|_| ProxyRouteError::KeyNotSet {
                    path: config.path.clone(),
                    var: var.clone(),
                })?;
                secret = (!key.is_empty()).then(|| Arc::from(key.as_bytes()));
                let (_, value) = config.protocol.dialect().key_header(&key);
                let mut value =
                    HeaderValue::from_str(&value).map_err(|_| ProxyRouteError::KeyNotHeader {
                        path: config.path.clone(),
                        var: var.clone(),
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let upstream =
            Upstream::new(&upstream, &config).map_err(|error| ProxyRouteError::Upstream {
                path: config.path.clone(),
                error,
            })?;
        Ok(ProxyRoute {
            upstream,
            upstream_key,
            secret,
            admission,
            body_limits,
            filter,
            metrics: Arc::new(RouteMetrics::new(&config.path)),
            path: Arc::from(config.path.as_str()),
            config,
        })
    }

    pub fn config(&self) -> &LlmProxyRoute {
        &self.config
    }

    fn error(&self, status: StatusCode, kind: &str, message: &str) -> Response {
        let body = self.config.protocol.dialect().error_body(kind, message);
        (status, axum::Json(body)).into_response()
    }

    /// Answers a request whose body was refused, in the route's dialect.
    fn refuse_body(&self, stats: StreamStats, e: BodyError) -> Response {
        let outcome = match e {
            BodyError::TooLarge { .. } => Outcome::RejectedTooLarge,
            BodyError::Timeout { .. } => Outcome::RejectedSlowBody,
            BodyError::Busy { .. } => Outcome::RejectedBusy,
            _ => Outcome::RejectedInvalid,
        };
        stats.refuse(outcome, e.status(), e.reason());
        let mut response = self.error(e.status(), e.kind(), &e.to_string());
        if matches!(e, BodyError::Busy { .. }) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }

    fn authorised(&self, headers: &HeaderMap) -> bool {
        if self.config.client_keys.is_empty() {
            return true;
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
        [bearer, api_key]
            .into_iter()
            .flatten()
            .any(|k| self.config.client_keys.iter().any(|c| c == k))
    }
}

/// The axum handler of an `llm_proxy` route.
pub async fn handle(State(route): State<Arc<ProxyRoute>>, request: Request) -> Response {
    let mut stats = StreamStats::new(Arc::clone(&route.metrics));
    if let Some(limit) = request.extensions().get::<StallLimit>() {
        limit.set(route.config.client_stall_timeout);
    }
    let request_backlog = request.extensions().get::<Backlog>().cloned();
    let registry = Registry::of(request.extensions());
    let client = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    let shutdown = Shutdown::of(request.extensions());
    if !route.authorised(request.headers()) {
        stats.refuse(
            Outcome::RejectedAuth,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        return route.error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "missing or unknown API key (send Authorization: Bearer KEY or x-api-key: KEY)",
        );
    }
    // The body first: a client still sending it holds no slot and no budget.
    let (parts, body) = request.into_parts();
    // The body's share of the request body budget is held until the handler returns.
    let (body, _body_share) =
        match request_body::read(&parts.headers, body, &route.body_limits).await {
            Ok(read) => read,
            Err(e) => return route.refuse_body(stats, e),
        };
    if let Err(e) = request_body::check_json_object(&body) {
        return route.refuse_body(stats, e);
    }
    // Over HTTP/2 a paused stream's window waits in our heap, not in a socket's kernel buffer.
    let window = if route.upstream.speaks_http2() {
        route.config.receive_buffer
    } else {
        0
    };
    let reserved = usize::try_from(route.config.buffer + window).unwrap_or(usize::MAX);
    let ticket = match route.admission.try_admit(reserved) {
        Ok(t) => t,
        Err(refusal) => {
            let reason = match refusal {
                Refusal::Streams(_) => "max_streams",
                Refusal::Memory(_) => "memory_budget",
            };
            stats.refuse(
                Outcome::RejectedBusy,
                StatusCode::SERVICE_UNAVAILABLE,
                reason,
            );
            let mut response = route.error(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                &format!("server busy, retry shortly: {refusal}"),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
    };
    let relay_held = Arc::new(AtomicU64::new(0));
    if let Some(registry) = &registry {
        stats.watched(registry.register(StreamInfo {
            route: Arc::clone(&route.path),
            kind: "llm_proxy",
            client,
            budget: route.config.buffer,
            backlog: request_backlog.clone(),
            holds: Some(Arc::new(RelayHeld(Arc::clone(&relay_held)))),
            stages: Vec::new(),
        }));
    }
    let mut headers: Vec<(&str, &[u8])> = FORWARDED_HEADERS
        .iter()
        .filter_map(|&name| parts.headers.get(name).map(|v| (name, v.as_bytes())))
        .collect();
    if let Some(key) = &route.upstream_key {
        let (name, _) = route.config.protocol.dialect().key_header("");
        headers.push((name, key.as_bytes()));
    }
    let timeout = route.config.first_byte_timeout;
    let sent = route.upstream.send(parts.method.as_str(), &headers, &body);
    let upstream = match tokio::time::timeout(timeout, sent).await {
        Err(_) => {
            stats.finish(Outcome::UpstreamTimeout, StatusCode::GATEWAY_TIMEOUT);
            return route.error(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                &format!(
                    "route {}: the upstream sent no response headers within {}",
                    route.config.path,
                    secs(timeout)
                ),
            );
        }
        Ok(Err(e)) => {
            let (kind, message) = match &e {
                SendError::Tls { source, .. } => (
                    "upstream_tls",
                    tls_failure(source)
                        .unwrap_or_else(|| "the TLS handshake with the upstream failed".into()),
                ),
                SendError::Malformed(_) => (
                    "upstream_malformed",
                    "the upstream's response is not valid HTTP".into(),
                ),
                SendError::Protocol(_) => (
                    "upstream_protocol",
                    "the upstream does not speak HTTP/2 (upstream_http2 = \"prior_knowledge\")"
                        .into(),
                ),
                SendError::Connect { .. } | SendError::Io(_) | SendError::Stream(_) => (
                    "upstream_unreachable",
                    "the upstream cannot be reached".into(),
                ),
            };
            stats.caused_by(error_chain(&e));
            stats.finish(Outcome::UpstreamError, StatusCode::BAD_GATEWAY);
            let message = format!("route {}: {message}", route.config.path);
            return route.error(StatusCode::BAD_GATEWAY, kind, &message);
        }
        Ok(Ok(r)) => r,
    };
    let status = StatusCode::from_u16(upstream.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let streaming = upstream
        .content_type
        .as_deref()
        .is_some_and(|v| v.starts_with(b"text/event-stream"));
    if !streaming || !status.is_success() {
        // Not a stream: pass it on as it comes, within the size limit.
        let limit = if status.is_success() {
            route.config.max_response_body
        } else {
            route.config.max_response_body.min(MAX_ERROR_BODY)
        };
        let body = upstream.body.into_stream(limit);
        let body = scrub_body(body, route.secret.clone());
        let mut response = Response::new(Body::from_stream(body));
        *response.status_mut() = status;
        if let Some(ct) = upstream
            .content_type
            .and_then(|v| HeaderValue::from_bytes(&v).ok())
        {
            response.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        drop(ticket);
        let outcome = if status.is_success() {
            Outcome::Completed
        } else {
            Outcome::UpstreamStatus
        };
        stats.finish(outcome, status);
        return response;
    }
    let timing = StreamTiming {
        idle_timeout: route.config.idle_timeout,
        keepalive: route.config.keepalive,
    };
    let filter = route.filter.as_ref().map(|make| make());
    stats.streaming(StatusCode::OK);
    let buffer = usize::try_from(route.config.buffer).unwrap_or(usize::MAX);
    let relay = Relay::new(route.config.protocol.dialect(), buffer, filter);
    let stream = ProxyStream::new(upstream.body, relay, timing, ticket, stats)
        .waiting_on(request_backlog)
        .scrubbing(route.secret.clone())
        .ending_with(&shutdown)
        .reporting_held(relay_held);
    let mut response = Response::new(Body::from_stream(stream));
    response.extensions_mut().insert(PacedByBacklog);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// What a stream's relay holds, as its driver last saw it, for the console.
struct RelayHeld(Arc<AtomicU64>);

impl Holds for RelayHeld {
    fn held(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}
