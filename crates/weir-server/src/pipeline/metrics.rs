//! A pipeline's figures in `/metrics`, refreshed every second from counters already kept.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use weir_runtime::{Ledger, StageStats};
use weir_stages::sources::kafka::{ConsumerFigures, Partition};

pub const STAGE_ITEMS: &str = "weir_pipeline_stage_items_total";
pub const STAGE_BYTES: &str = "weir_pipeline_stage_bytes_total";
pub const STAGE_SECONDS: &str = "weir_pipeline_stage_seconds_total";
pub const STAGE_BUFFERED: &str = "weir_pipeline_stage_buffered_bytes";
pub const ACKS_PENDING: &str = "weir_pipeline_acks_pending";
pub const KAFKA_LAG: &str = "weir_kafka_consumer_lag";
pub const KAFKA_COMMITTED: &str = "weir_kafka_committed_offset";
pub const KAFKA_COMMITS: &str = "weir_kafka_commits_total";
pub const KAFKA_REBALANCES: &str = "weir_kafka_rebalances_total";

const EVERY: Duration = Duration::from_secs(1);

/// Publishes the figures until `stop`, and once more then.
pub async fn watch(
    pipeline: String,
    stages: Vec<Arc<StageStats>>,
    consumer: Arc<ConsumerFigures>,
    ledger: Ledger<Partition>,
    stop: CancellationToken,
) {
    loop {
        publish(&pipeline, &stages, &consumer, &ledger);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
    publish(&pipeline, &stages, &consumer, &ledger);
}

fn publish(
    pipeline: &str,
    stages: &[Arc<StageStats>],
    consumer: &ConsumerFigures,
    ledger: &Ledger<Partition>,
) {
    let p = pipeline.to_string();
    for stage in stages {
        let s = stage.snapshot();
        let name = s.name.clone();
        for (dir, items, bytes) in [
            ("in", s.items_in, s.bytes_in),
            ("out", s.items_out, s.bytes_out),
        ] {
            metrics::counter!(STAGE_ITEMS, "pipeline" => p.clone(), "stage" => name.clone(), "direction" => dir).absolute(items);
            metrics::counter!(STAGE_BYTES, "pipeline" => p.clone(), "stage" => name.clone(), "direction" => dir).absolute(bytes);
        }
        for (state, secs) in [
            ("busy", s.busy_secs),
            ("blocked", s.blocked_secs),
            ("starved", s.starved_secs),
        ] {
            metrics::gauge!(STAGE_SECONDS, "pipeline" => p.clone(), "stage" => name.clone(), "state" => state).set(secs);
        }
        metrics::gauge!(STAGE_BUFFERED, "pipeline" => p.clone(), "stage" => name)
            .set(s.buffered_bytes as f64);
    }
    metrics::gauge!(ACKS_PENDING, "pipeline" => p.clone()).set(ledger.pending() as f64);
    for ((topic, partition), figures) in ledger.figures() {
        if let Some(offset) = figures.committed {
            metrics::gauge!(KAFKA_COMMITTED, "pipeline" => p.clone(), "topic" => topic.to_string(), "partition" => partition.to_string()).set(offset as f64);
        }
    }
    let lag = consumer
        .lag
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for ((topic, partition), lag) in lag {
        metrics::gauge!(KAFKA_LAG, "pipeline" => p.clone(), "topic" => topic.to_string(), "partition" => partition.to_string()).set(lag as f64);
    }
    metrics::counter!(KAFKA_COMMITS, "pipeline" => p.clone(), "outcome" => "ok")
        .absolute(consumer.commits.load(Ordering::Relaxed));
    metrics::counter!(KAFKA_COMMITS, "pipeline" => p.clone(), "outcome" => "failed")
        .absolute(consumer.commit_failures.load(Ordering::Relaxed));
    metrics::counter!(KAFKA_REBALANCES, "pipeline" => p.clone(), "kind" => "assigned")
        .absolute(consumer.assigned.load(Ordering::Relaxed));
    metrics::counter!(KAFKA_REBALANCES, "pipeline" => p, "kind" => "revoked")
        .absolute(consumer.revoked.load(Ordering::Relaxed));
}
