//! One export request: check the parameters, admit it, start the cursor, stream back.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use weir_runtime::{Pipeline, StageStats};
use weir_stages::sources::sql::SqlError;
use weir_stages::transforms::csv::CsvEncoder;
use weir_stages::transforms::gzip::{Gzip, GzipConfig};
use weir_stages::transforms::ndjson::NdjsonEncoder;

use super::body::{ExportBody, Held};
use super::metrics::ExportOutcome;
use super::request::{bind_params, choose_format, content_type, wants_gzip, Rejection};
use super::route::ExportRoute;
use crate::serve::admission::Refusal;
use crate::serve::config::ExportFormat;
use crate::serve::console::{Holds, Registry, StreamInfo};
use crate::serve::send_queue::Backlog;
use crate::serve::shutdown::Shutdown;
use crate::serve::stall::StallLimit;

/// The axum handler of a `sql_export` route.
pub async fn handle(State(route): State<Arc<ExportRoute>>, request: Request) -> Response {
    let response = start(&route, request).await;
    match response.status() {
        StatusCode::OK => {}
        StatusCode::SERVICE_UNAVAILABLE => route.metrics.ended(ExportOutcome::Busy),
        _ => route.metrics.ended(ExportOutcome::Rejected),
    }
    response
}

async fn start(route: &Arc<ExportRoute>, request: Request) -> Response {
    let shutdown = Shutdown::of(request.extensions());
    let registry = Registry::of(request.extensions());
    let client = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    if let Some(limit) = request.extensions().get::<StallLimit>() {
        limit.set(route.config.client_stall_timeout);
    }
    let pairs: Vec<(String, String)> = match Query::try_from_uri(request.uri()) {
        Ok(Query(pairs)) => pairs,
        Err(e) => return plain(StatusCode::BAD_REQUEST, &format!("bad query string: {e}")),
    };
    let format = match choose_format(&pairs, request.headers(), &route.config.formats) {
        Ok(f) => f,
        Err(r) => return rejection(r),
    };
    let params = match bind_params(&pairs, route.query.names()) {
        Ok(p) => p,
        Err(r) => return rejection(r),
    };
    let gzip = wants_gzip(request.headers());
    let Some(slot) = route.try_slot() else {
        return busy(&format!(
            "all {} export slots of this route are taken",
            route.config.max_exports()
        ));
    };
    let buffer = route.config.buffer as usize;
    let ticket = match route.admission.try_admit(buffer) {
        Ok(t) => t,
        Err(refusal @ (Refusal::Streams(_) | Refusal::Memory(_))) => {
            return busy(&refusal.to_string())
        }
    };
    let source = match route.start(params).await {
        Ok(s) => s,
        Err(e) => return sql_error(&route.config.path, e),
    };
    // The runtime splits the route's `buffer` over the channels and the cursor's read-ahead.
    let rows = Pipeline::builder()
        .buffer_total(buffer)
        .source("cursor", source);
    let text = match format {
        ExportFormat::Csv => rows.transform("csv", CsvEncoder::new()),
        ExportFormat::Ndjson => rows.transform("ndjson", NdjsonEncoder::new()),
    };
    let encoded = if gzip {
        let config = GzipConfig {
            level: route.config.gzip_level,
            ..GzipConfig::default()
        };
        match Gzip::new(config) {
            Ok(g) => text.transform("gzip", g),
            Err(e) => return plain(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    } else {
        text
    };
    let (sink, chunks) = ExportBody::sink();
    let pipeline = encoded.sink("client", sink);
    let watched = registry.map(|registry| {
        let stages = pipeline.stats();
        registry.register(StreamInfo {
            route: Arc::from(route.config.path.as_str()),
            kind: "sql_export",
            client,
            budget: buffer as u64,
            backlog: request.extensions().get::<Backlog>().cloned(),
            holds: Some(Arc::new(Channels(stages.clone()))),
            stages,
        })
    });
    let body = ExportBody::start(
        pipeline,
        chunks,
        Held {
            _ticket: ticket,
            _slot: slot,
        },
        route.config.path.clone(),
        Arc::clone(&route.metrics),
        &shutdown,
        watched,
    );
    let mut response = Response::new(Body::from_stream(body.into_stream()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(format)),
    );
    headers.insert(
        header::VARY,
        HeaderValue::from_static("accept, accept-encoding"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response
}

/// An export's channels: what its pipeline holds between stages.
struct Channels(Vec<Arc<StageStats>>);

impl Holds for Channels {
    fn held(&self) -> u64 {
        self.0.iter().map(|s| s.snapshot().buffered_bytes).sum()
    }
}

fn plain(status: StatusCode, message: &str) -> Response {
    (status, format!("{message}\n")).into_response()
}

fn rejection(r: Rejection) -> Response {
    match r {
        Rejection::BadRequest(m) => plain(StatusCode::BAD_REQUEST, &m),
        Rejection::NotAcceptable(m) => plain(StatusCode::NOT_ACCEPTABLE, &m),
    }
}

fn busy(message: &str) -> Response {
    let mut response = plain(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("server busy, retry shortly: {message}"),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn sql_error(route: &str, e: SqlError) -> Response {
    match e {
        SqlError::BadParameter(m) => plain(StatusCode::BAD_REQUEST, &format!("bad parameter: {m}")),
        SqlError::Unavailable(m) => {
            // The cause names hosts, paths and OS errors: the log gets it, the client a kind.
            tracing::warn!(route, "export refused: {m}");
            busy(&format!("route {route}: no database connection now"))
        }
        SqlError::Failed(m) => {
            tracing::error!(route, "export failed before its first row: {m}");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("the query failed: {m}"),
            )
        }
    }
}
