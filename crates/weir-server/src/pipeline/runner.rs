//! Runs one `[[pipeline]]` until it is stopped: build, run, drain, commit, leave.
//!
//! # Shutdown
//!
//! `stop` ends the source (it reads no further message); the records already read flow
//! on to the sink, which acks them; the committer commits and the consumer leaves its
//! group at once. Records still in flight after `grace` are dropped unacked (they will be
//! read again by whoever takes the partition), and what was acked is committed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use weir_runtime::{BoxError, Pipeline, PipelineError, Sink, StageStats};
use weir_stages::catalogue::StageSpecError;
use weir_stages::kafka_client::OptionError;
use weir_stages::record::Record;
use weir_stages::sinks::append_file::{AppendFile, AppendFileError};
use weir_stages::sinks::http_post::{HttpPost, HttpPostConfig};
use weir_stages::sinks::kafka::{KafkaSink, KafkaSinkConfig, KafkaSinkError};
use weir_stages::sources::kafka::{
    kafka_source, ConsumerFigures, ConsumerMemory, KafkaSourceConfig, KafkaSourceError, Partition,
};
use weir_stages::transforms::per_record::PerRecord;

use super::config::{
    option_pairs, ConfigProblem, OptionValue, PipelineConfig, SinkConfig, SourceConfig,
};
use super::metrics;
use crate::serve::console::{PipelineEntry, Registry};

/// A pipeline that stopped on its own, and why (the stage and the record named).
#[derive(Debug, thiserror::Error)]
#[error("pipeline {name}: {cause}")]
pub struct PipelineFailed {
    pub name: String,
    pub cause: FailureCause,
}

/// Why a pipeline could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum FailureCause {
    #[error("{0}")]
    Source(KafkaSourceError),
    #[error("{0}")]
    Transforms(ConfigProblem),
    #[error("{0}")]
    Transform(StageSpecError),
    #[error("{0}")]
    KafkaSink(KafkaSinkError),
    #[error("{0}")]
    FileSink(AppendFileError),
    #[error("{0}")]
    HttpSink(BoxError),
    /// A stage failed while running; the message names the stage.
    #[error("{0}")]
    Run(PipelineError),
}

fn consumer_memory(config: &PipelineConfig) -> ConsumerMemory {
    let plan = config.plan();
    ConsumerMemory {
        queue: plan.consumer_queue,
        fetch: plan.consumer_fetch,
    }
}

fn source_config(config: &PipelineConfig, until_end: bool) -> KafkaSourceConfig {
    let SourceConfig::Kafka {
        brokers,
        topics,
        group,
        options,
    } = &config.source;
    KafkaSourceConfig {
        pipeline: config.name.clone(),
        brokers: brokers.clone(),
        topics: topics.clone(),
        group: group.clone(),
        options: option_pairs(options),
        memory: consumer_memory(config),
        max_item: config.max_item() as usize,
        drain_timeout: config.drain_timeout,
        until_end,
    }
}

/// Checks the source's options against its share of the budget, without connecting.
pub fn consumer_check(
    config: &PipelineConfig,
    brokers: &str,
    options: &BTreeMap<String, OptionValue>,
) -> Result<(), OptionError> {
    let probe = KafkaSourceConfig {
        brokers: brokers.to_string(),
        options: option_pairs(options),
        ..source_config(config, false)
    };
    weir_stages::sources::kafka::check_options(&probe)
}

/// Checks the sink's options against its share of the budget, without connecting.
pub fn producer_check(
    config: &PipelineConfig,
    brokers: &str,
    options: &BTreeMap<String, OptionValue>,
) -> Result<(), OptionError> {
    let probe = KafkaSinkConfig {
        pipeline: config.name.clone(),
        brokers: brokers.to_string(),
        topic: String::new(),
        options: option_pairs(options),
        queue: config.plan().producer_queue,
    };
    weir_stages::sinks::kafka::check_options(&probe)
}

/// Any sink a pipeline can end in.
enum AnySink {
    Kafka(KafkaSink),
    File(AppendFile),
    Http(HttpPost),
}

impl Sink for AnySink {
    type Item = Record;

    async fn write(&mut self, item: Record) -> Result<(), BoxError> {
        match self {
            AnySink::Kafka(s) => s.write(item).await,
            AnySink::File(s) => s.write(item).await,
            AnySink::Http(s) => s.write(item).await,
        }
    }

    async fn flush(&mut self) -> Result<(), BoxError> {
        match self {
            AnySink::Kafka(s) => s.flush().await,
            AnySink::File(s) => s.flush().await,
            AnySink::Http(s) => s.flush().await,
        }
    }

    async fn finish(&mut self) -> Result<(), BoxError> {
        match self {
            AnySink::Kafka(s) => s.finish().await,
            AnySink::File(s) => s.finish().await,
            AnySink::Http(s) => s.finish().await,
        }
    }
}

fn sink_for(config: &PipelineConfig) -> Result<(String, AnySink), FailureCause> {
    Ok(match &config.sink {
        SinkConfig::Kafka {
            brokers,
            topic,
            options,
        } => (
            format!("kafka:{topic}"),
            AnySink::Kafka(
                KafkaSink::new(&KafkaSinkConfig {
                    pipeline: config.name.clone(),
                    brokers: brokers.clone(),
                    topic: topic.clone(),
                    options: option_pairs(options),
                    queue: config.plan().producer_queue,
                })
                .map_err(FailureCause::KafkaSink)?,
            ),
        ),
        SinkConfig::File { path, format } => (
            format!("file:{}", path.display()),
            AnySink::File(
                AppendFile::open(path, (*format).into()).map_err(FailureCause::FileSink)?,
            ),
        ),
        SinkConfig::Http {
            url,
            format,
            batch_bytes,
            timeout,
        } => (
            format!("http:{url}"),
            AnySink::Http(
                HttpPost::new(HttpPostConfig {
                    url: url.clone(),
                    format: (*format).into(),
                    batch_bytes: *batch_bytes as usize,
                    timeout: *timeout,
                })
                .map_err(FailureCause::HttpSink)?,
            ),
        ),
    })
}

/// Runs `config` until `stop` (then drains within `grace`) or until it fails.
pub async fn run(
    config: PipelineConfig,
    stop: CancellationToken,
    grace: Duration,
    console: Option<Registry>,
) -> Result<(), PipelineFailed> {
    let failed = |cause: FailureCause| PipelineFailed {
        name: config.name.clone(),
        cause,
    };
    let source_stop = CancellationToken::new();
    let (source, committer) = kafka_source(&source_config(&config, false), source_stop.clone())
        .map_err(|e| failed(FailureCause::Source(e)))?;
    let SourceConfig::Kafka { topics, .. } = &config.source;
    let hard_stop = CancellationToken::new();
    let mut builder = Pipeline::builder()
        .buffer_total(config.plan().channels as usize)
        .cancel_token(&hard_stop)
        .source(format!("kafka:{}", topics.join(",")), source);
    for (name, spec) in config.transforms.iter().zip(
        config
            .transform_specs()
            .map_err(|e| failed(FailureCause::Transforms(e)))?,
    ) {
        let transform = PerRecord::new(spec).map_err(|e| failed(FailureCause::Transform(e)))?;
        builder = builder.transform(name.clone(), transform);
    }
    let (sink_name, sink) = sink_for(&config).map_err(failed)?;
    let pipeline = builder.sink(sink_name, sink);

    let stages: Vec<Arc<StageStats>> = pipeline.stats();
    let figures: Arc<ConsumerFigures> = committer.figures();
    let ledger = committer.ledger();
    let _shown = console.map(|registry| {
        let lag_of = Arc::clone(&figures);
        let acks = ledger.clone();
        registry.register_pipeline(PipelineEntry::new(
            config.name.clone(),
            stages.clone(),
            Box::new(move || {
                let lag = lag_of.lag.lock().unwrap_or_else(|e| e.into_inner());
                let mut lag: Vec<(String, i32, i64)> = lag
                    .iter()
                    .map(|((topic, partition), lag)| (topic.to_string(), *partition, *lag))
                    .collect();
                lag.sort();
                lag
            }),
            Box::new(move || acks.pending()),
        ))
    });
    let watch_stop = CancellationToken::new();
    tokio::spawn(metrics::watch(
        config.name.clone(),
        stages,
        figures,
        ledger,
        watch_stop.clone(),
    ));
    let commit_stop = CancellationToken::new();
    let committer = Arc::new(committer);
    let committing = {
        let committer = Arc::clone(&committer);
        let interval = config.commit_interval;
        let stop = commit_stop.clone();
        tokio::spawn(async move { committer.run(interval, stop).await })
    };
    tracing::info!(pipeline = %config.name, "pipeline started");

    let run = pipeline.run();
    tokio::pin!(run);
    let outcome = tokio::select! {
        r = &mut run => r,
        _ = stop.cancelled() => {
            source_stop.cancel();
            match tokio::time::timeout(grace, &mut run).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(pipeline = %config.name, "records still in flight after {grace:?}: stopping without them (they will be read again)");
                    hard_stop.cancel();
                    run.await
                }
            }
        }
    };
    commit_stop.cancel();
    let _ = committing.await;
    watch_stop.cancel();
    let committed = match Arc::try_unwrap(committer) {
        Ok(c) => c.close().await,
        Err(_) => Vec::new(),
    };
    let committed: Vec<String> = committed
        .iter()
        .map(|((t, p), o): &(Partition, i64)| format!("{t}/{p}@{o}"))
        .collect();
    match outcome {
        Ok(report) => {
            tracing::info!(
                pipeline = %config.name,
                "pipeline stopped; committed {}\n{report}",
                if committed.is_empty() { "nothing".to_string() } else { committed.join(", ") }
            );
            Ok(())
        }
        Err(e) if stop.is_cancelled() && matches!(e.kind, weir_runtime::FailureKind::Cancelled) => {
            tracing::info!(pipeline = %config.name, "pipeline stopped after its grace; committed {}", committed.join(", "));
            Ok(())
        }
        Err(e) => {
            tracing::error!(pipeline = %config.name, "pipeline failed: {e}; committed only what was acked before it ({})", committed.join(", "));
            Err(failed(FailureCause::Run(e)))
        }
    }
}
