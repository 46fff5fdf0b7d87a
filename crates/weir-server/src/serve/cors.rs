//! CORS for browser clients: a route's `cors_origins` may call it from their pages.
//!
//! # What
//!
//! On a route with `cors_origins`, an `OPTIONS` preflight from a listed origin gets 204
//! with the route's methods and the headers LLM clients send; from any other origin (or
//! none) it gets 403 and no CORS headers. Every response to a listed origin (streams,
//! 401, 503, 405 alike) carries `Access-Control-Allow-Origin` with that origin echoed.
//! Routes without `cors_origins` answer as before: no CORS headers, 405 to `OPTIONS`.
//!
//! # Streaming
//!
//! Only response headers are touched: the body is passed through as the handler built
//! it, so a stream is still pulled chunk by chunk by the client's socket.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;

/// Request headers a preflight may announce: keys, JSON, the Anthropic API's own, SSE.
const ALLOW_HEADERS: &str =
    "authorization, x-api-key, content-type, anthropic-version, anthropic-beta, accept";

/// How long a browser may reuse a preflight's answer, in seconds.
const MAX_AGE: &str = "600";

/// The origins of one route and the methods it answers.
#[derive(Debug)]
pub struct Cors {
    /// Compared ignoring ASCII case: scheme and host are case-insensitive.
    origins: Vec<String>,
    any_origin: bool,
    methods: HeaderValue,
}

impl Cors {
    /// `origins` as the configuration checked them; `methods` as a preflight lists them.
    fn new(origins: &[String], methods: &'static str) -> Self {
        Cors {
            any_origin: origins.iter().any(|o| o == "*"),
            origins: origins.to_vec(),
            methods: HeaderValue::from_static(methods),
        }
    }

    /// Adds CORS to `route`, or leaves it as it is when the route lists no origin.
    pub fn apply(origins: &[String], methods: &'static str, route: MethodRouter) -> MethodRouter {
        if origins.is_empty() {
            return route;
        }
        let cors = Arc::new(Cors::new(origins, methods));
        let preflight = Arc::clone(&cors);
        route
            .options(move |headers: HeaderMap| std::future::ready(preflight.preflight(&headers)))
            .layer(middleware::from_fn_with_state(cors, allow_origin))
    }

    /// The request's `Origin`, if this route lets its pages in.
    fn allowed<'a>(&self, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        let listed = self.any_origin || self.origins.iter().any(|o| o.eq_ignore_ascii_case(text));
        listed.then_some(origin)
    }

    /// Answers an `OPTIONS` without the route's handler: a browser sends no credentials
    /// with a preflight, and a preflight is not a stream.
    fn preflight(&self, headers: &HeaderMap) -> Response {
        if self.allowed(headers).is_none() {
            return (
                StatusCode::FORBIDDEN,
                "CORS preflight refused: the origin is not in this route's cors_origins\n",
            )
                .into_response();
        }
        let mut response = StatusCode::NO_CONTENT.into_response();
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE),
        );
        response
    }
}

/// Echoes an allowed `Origin` on every response of the route, the preflight's included.
async fn allow_origin(State(cors): State<Arc<Cors>>, request: Request, next: Next) -> Response {
    let origin = cors.allowed(request.headers()).cloned();
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    // Answers differ by origin: a cache must not hand one origin's answer to another.
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    response
}
