//! One export route's Prometheus series: exports by outcome, bytes sent.

use std::sync::Arc;

use metrics::{describe_counter, Counter, Unit};

pub const EXPORTS_TOTAL: &str = "weir_exports_total";
pub const EXPORT_BYTES: &str = "weir_export_bytes_total";

/// How an export request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportOutcome {
    /// Every row sent.
    Completed,
    /// The database failed after the first rows: the transfer was aborted.
    Failed,
    /// The client went away before the end.
    ClientGone,
    /// Refused before any row: bad parameters, format or query (4xx, 500).
    Rejected,
    /// Refused for want of a slot, memory or a connection (503).
    Busy,
}

impl ExportOutcome {
    const ALL: [ExportOutcome; 5] = [
        ExportOutcome::Completed,
        ExportOutcome::Failed,
        ExportOutcome::ClientGone,
        ExportOutcome::Rejected,
        ExportOutcome::Busy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExportOutcome::Completed => "completed",
            ExportOutcome::Failed => "failed",
            ExportOutcome::ClientGone => "client_gone",
            ExportOutcome::Rejected => "rejected",
            ExportOutcome::Busy => "busy",
        }
    }
}

/// The route's metric handles, registered once so that exports only touch atomics.
pub struct ExportMetrics {
    pub bytes: Counter,
    outcomes: Vec<Counter>,
}

impl ExportMetrics {
    /// Registers the route's series, every outcome at zero so that rates work from the start.
    pub fn new(route: &str) -> Self {
        describe_counter!(
            EXPORTS_TOTAL,
            Unit::Count,
            "SQL export requests, by how they ended."
        );
        describe_counter!(
            EXPORT_BYTES,
            Unit::Bytes,
            "Bytes of SQL export bodies handed to client connections (after gzip)."
        );
        let route: Arc<str> = Arc::from(route);
        ExportMetrics {
            bytes: metrics::counter!(EXPORT_BYTES, "route" => Arc::clone(&route)),
            outcomes: ExportOutcome::ALL
                .iter()
                .map(|o| {
                    metrics::counter!(EXPORTS_TOTAL, "route" => Arc::clone(&route), "outcome" => o.as_str())
                })
                .collect(),
        }
    }

    pub fn ended(&self, outcome: ExportOutcome) {
        self.outcomes[outcome as usize].increment(1);
    }
}
