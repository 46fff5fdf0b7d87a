//! Prometheus metrics of `weir serve`: the process-wide recorder, the metric names, `GET /metrics`.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use super::admission::Admission;
use super::outcome::Outcome;

pub const STREAMS_ACTIVE: &str = "weir_streams_active";
pub const STREAMS_TOTAL: &str = "weir_streams_total";
pub const STREAMS_REJECTED: &str = "weir_streams_rejected_total";
pub const UPSTREAM_BYTES: &str = "weir_upstream_bytes_total";
pub const CLIENT_BYTES: &str = "weir_client_bytes_total";
pub const UPSTREAM_PAUSED: &str = "weir_upstream_paused_seconds_total";
pub const TIME_TO_FIRST_TOKEN: &str = "weir_time_to_first_token_seconds";
pub const REDACTIONS: &str = "weir_redactions_total";
pub const MEMORY_BUDGET: &str = "weir_memory_budget_bytes";
pub const UPSTREAM_CONNECTIONS: &str = "weir_upstream_http2_connections";
/// The name Prometheus' process collectors use, so `weir check --metrics-url` can watch weir.
pub const PROCESS_RSS: &str = "process_resident_memory_bytes";

const TTFT_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];

/// How often histogram samples are folded into their buckets. The recorder keeps every
/// sample until then, so without this its memory would grow with streams between scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Serialises "set the budget gauges, render" so that, with several servers in one
/// process (tests), each scrape shows its own server's budget.
static RENDER: Mutex<()> = Mutex::new(());

/// Installs weir's recorder once per process; `None` if another one was installed first
/// (metrics then go to that one, and `/metrics` answers 503).
pub fn install() -> Option<&'static PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(TIME_TO_FIRST_TOKEN.to_string()),
                    &TTFT_BUCKETS,
                )
                .expect("buckets are not empty");
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!("GET /metrics is off: {e}");
                    None
                }
            }
        })
        .as_ref()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        STREAMS_ACTIVE,
        Unit::Count,
        "Streams admitted and not yet ended."
    );
    describe_counter!(
        STREAMS_TOTAL,
        Unit::Count,
        "Requests to stream routes, by how they ended."
    );
    describe_counter!(
        STREAMS_REJECTED,
        Unit::Count,
        "Requests refused before any upstream call, by reason."
    );
    describe_counter!(
        UPSTREAM_BYTES,
        Unit::Bytes,
        "Bytes read from upstream bodies."
    );
    describe_counter!(
        CLIENT_BYTES,
        Unit::Bytes,
        "Bytes of stream bodies handed to client connections."
    );
    describe_gauge!(
        UPSTREAM_PAUSED,
        Unit::Seconds,
        "Time streams waited for their client to take the last chunk before reading upstream \
         again (only ever grows; a gauge because metrics counters are integers)."
    );
    describe_histogram!(
        TIME_TO_FIRST_TOKEN,
        Unit::Seconds,
        "From request arrival to the first token event handed to the client."
    );
    describe_counter!(
        REDACTIONS,
        Unit::Count,
        "Redactions in token text, by kind."
    );
    describe_gauge!(
        MEMORY_BUDGET,
        Unit::Bytes,
        "The global memory budget: bytes reserved by open streams, and its limit."
    );
    describe_gauge!(
        UPSTREAM_CONNECTIONS,
        Unit::Count,
        "HTTP/2 connections open to each route's upstream (over HTTP/1.1 a stream has its own)."
    );
    describe_gauge!(
        PROCESS_RSS,
        Unit::Bytes,
        "Resident set size of the process, read at each scrape."
    );
}

/// VmRSS of this process from /proc; `None` where there is no /proc.
pub(crate) fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Renders every metric, with the gauges read from `admission` now.
pub fn render(admission: &Admission) -> Option<String> {
    let handle = RECORDER.get()?.as_ref()?;
    let _render = RENDER.lock().unwrap_or_else(PoisonError::into_inner);
    metrics::gauge!(STREAMS_ACTIVE).set(admission.open_streams() as f64);
    let budget = admission.budget();
    metrics::gauge!(MEMORY_BUDGET, "state" => "reserved").set(budget.reserved() as f64);
    metrics::gauge!(MEMORY_BUDGET, "state" => "limit").set(budget.limit() as f64);
    if let Some(rss) = resident_bytes() {
        metrics::gauge!(PROCESS_RSS).set(rss as f64);
    }
    Some(handle.render())
}

/// The `GET /metrics` handler; `more` renders series kept outside the recorder.
pub fn respond(admission: &Admission, more: impl FnOnce() -> String) -> Response {
    match render(admission) {
        Some(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text + &more(),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics are off: another metrics recorder was installed in this process\n",
        )
            .into_response(),
    }
}

/// Folds histogram samples into buckets every few seconds until `shutdown`.
pub async fn upkeep(shutdown: CancellationToken) {
    let Some(handle) = RECORDER.get().and_then(Option::as_ref) else {
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(UPKEEP_INTERVAL) => handle.run_upkeep(),
        }
    }
}

/// Counts `n` redactions of `kind` (`email`, `card` …) in the token text of `route`.
pub fn record_redactions(route: &str, kind: &str, n: u64) {
    metrics::counter!(REDACTIONS, "route" => route.to_string(), "kind" => kind.to_string())
        .increment(n);
}

/// Counts a request refused before any upstream call (`max_streams`, `memory_budget`,
/// `unauthorized`, `request_too_large`, `invalid_request`).
pub fn record_rejection(reason: &'static str) {
    metrics::counter!(STREAMS_REJECTED, "reason" => reason).increment(1);
}

/// One route's metric handles, registered once so that streams only touch atomics.
pub struct RouteMetrics {
    pub route: Arc<str>,
    pub upstream_bytes: Counter,
    pub client_bytes: Counter,
    pub upstream_paused: Gauge,
    pub time_to_first_token: Histogram,
    outcomes: Vec<Counter>,
}

impl RouteMetrics {
    /// Registers the route's series, every outcome at zero so that rates work from the start.
    pub fn new(route: &str) -> Self {
        let route: Arc<str> = Arc::from(route);
        let label = || ("route", Arc::clone(&route));
        RouteMetrics {
            upstream_bytes: metrics::counter!(UPSTREAM_BYTES, &[label()]),
            client_bytes: metrics::counter!(CLIENT_BYTES, &[label()]),
            upstream_paused: metrics::gauge!(UPSTREAM_PAUSED, &[label()]),
            time_to_first_token: metrics::histogram!(TIME_TO_FIRST_TOKEN, &[label()]),
            outcomes: Outcome::ALL
                .iter()
                .map(|o| {
                    metrics::counter!(STREAMS_TOTAL, "route" => Arc::clone(&route), "outcome" => o.as_str())
                })
                .collect(),
            route,
        }
    }

    pub fn outcome(&self, outcome: Outcome) -> &Counter {
        &self.outcomes[outcome as usize]
    }
}
