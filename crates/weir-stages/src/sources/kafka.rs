//! Reads Kafka topics as a member of a consumer group, committing only what the sink acked.
//!
//! # What
//!
//! [`kafka_source`] joins `group`, and gives a [`KafkaSource`] (the pipeline's source: one
//! [`Record`] per message, each carrying an ack token from a [`Ledger`]) and a
//! [`KafkaCommitter`] (commits, per partition, the offset below which every message is
//! acked: in the background on an interval, and once more at the end).
//!
//! # Memory
//!
//! librdkafka prefetches into its own queue; weir sizes that queue and each fetch from the
//! pipeline's budget ([`ConsumerMemory`]), so a lag of any size costs the same. The source
//! takes a message off that queue only when the first channel has room.
//!
//! # Rebalance and shutdown
//!
//! Partitions taken away are drained first: the rebalance waits (up to `drain_timeout`)
//! for their messages in flight to be acked, commits, and lets them go; acks that arrive
//! later are ignored. A clean stop ends the source, lets the pipeline drain, commits, and
//! closes the consumer, which leaves the group at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use weir_runtime::{BoxError, Ledger, Source};

use crate::kafka_client::{self, Bounded, OptionError};
use crate::record::{Origin, Record};

/// A partition, as the ledger knows it.
pub type Partition = (Arc<str>, i32);

/// How a Kafka source is set up.
#[derive(Clone, Debug)]
pub struct KafkaSourceConfig {
    /// Names the pipeline in logs.
    pub pipeline: String,
    pub brokers: String,
    pub topics: Vec<String>,
    pub group: String,
    /// librdkafka options as the user wrote them.
    pub options: Vec<(String, String)>,
    pub memory: ConsumerMemory,
    /// Largest message accepted; a larger one stops the pipeline, named.
    pub max_item: usize,
    /// How long a rebalance waits for the acks of partitions taken away.
    pub drain_timeout: Duration,
    /// End once every assigned partition has been read to its end (one-off jobs).
    pub until_end: bool,
}

/// What librdkafka may hold of prefetched messages.
#[derive(Clone, Copy, Debug)]
pub struct ConsumerMemory {
    /// The consumer queue, in bytes of messages.
    pub queue: u64,
    /// One fetch response.
    pub fetch: u64,
}

impl ConsumerMemory {
    /// librdkafka keeps a few hundred bytes per queued message besides its payload: with
    /// small messages a queue sized in bytes alone would hold twice its size.
    const PER_MESSAGE: u64 = 1024;

    fn bounded(&self) -> Vec<Bounded> {
        vec![
            Bounded {
                key: "queued.max.messages.kbytes",
                value: (self.queue / 1024).max(1),
            },
            // Per partition: what is fetched ahead of the application, counted in messages.
            Bounded {
                key: "queued.min.messages",
                value: (self.queue / Self::PER_MESSAGE / 4).max(100),
            },
            Bounded {
                key: "fetch.max.bytes",
                value: self.fetch,
            },
            // librdkafka refuses a fetch smaller than its largest message.
            Bounded {
                key: "message.max.bytes",
                value: self.fetch,
            },
            // An eighth of a fetch per partition: a broker that fills a response in the
            // order of the request (tansu) would otherwise give it all to the first one.
            Bounded {
                key: "max.partition.fetch.bytes",
                value: (self.fetch / 8).clamp(16 << 10, 1 << 20),
            },
            // A ceiling on one response, which brokers may send past fetch.max.bytes (a
            // batch per partition); librdkafka drops the connection beyond it.
            Bounded {
                key: "receive.message.max.bytes",
                value: 2 * self.fetch + (1 << 20),
            },
        ]
    }
}

/// Figures of one consumer, for metrics and logs.
#[derive(Default)]
pub struct ConsumerFigures {
    pub commits: AtomicU64,
    pub commit_failures: AtomicU64,
    pub assigned: AtomicU64,
    pub revoked: AtomicU64,
    /// Lag per partition, from librdkafka's statistics.
    pub lag: Mutex<HashMap<Partition, i64>>,
}

/// Rebalance callbacks: drain and commit what is taken away.
pub struct GroupContext {
    pipeline: String,
    ledger: Ledger<Partition>,
    drain_timeout: Duration,
    figures: Arc<ConsumerFigures>,
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        let mut lag = self.figures.lag.lock().unwrap_or_else(|p| p.into_inner());
        lag.clear();
        for (name, topic) in statistics.topics {
            let name: Arc<str> = name.into();
            for (id, p) in topic.partitions {
                if id >= 0 && p.consumer_lag >= 0 {
                    lag.insert((Arc::clone(&name), id), p.consumer_lag);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(pipeline = %self.pipeline, "kafka: {error}: {reason}");
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.figures.assigned.fetch_add(1, Ordering::Relaxed);
                tracing::info!(pipeline = %self.pipeline, "kafka: assigned {}", describe(tpl));
            }
            Rebalance::Revoke(tpl) => {
                self.figures.revoked.fetch_add(1, Ordering::Relaxed);
                let lanes: Vec<Partition> = tpl
                    .elements()
                    .iter()
                    .map(|e| (Arc::from(e.topic()), e.partition()))
                    .collect();
                let deadline = Instant::now() + self.drain_timeout;
                // The callback runs inside the source's poll, on a runtime worker: hand
                // the worker's other tasks over while this thread waits for acks.
                let marks = block_in_place(|| self.ledger.drain(&lanes, deadline));
                let in_flight = self.ledger.pending();
                commit(
                    consumer,
                    &marks,
                    CommitMode::Sync,
                    &self.figures,
                    &self.pipeline,
                );
                for lane in &lanes {
                    self.ledger.release(lane);
                }
                tracing::info!(
                    pipeline = %self.pipeline,
                    "kafka: revoked {} (committed {}; {in_flight} message(s) still in flight over all partitions)",
                    describe(tpl),
                    describe_marks(&marks)
                );
            }
            Rebalance::Error(e) => {
                tracing::warn!(pipeline = %self.pipeline, "kafka: rebalance failed: {e}");
            }
        }
    }
}

fn block_in_place<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    let parts: Vec<String> = tpl
        .elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect();
    if parts.is_empty() {
        "no partitions".to_string()
    } else {
        parts.join(", ")
    }
}

fn describe_marks(marks: &[(Partition, i64)]) -> String {
    if marks.is_empty() {
        return "nothing".to_string();
    }
    marks
        .iter()
        .map(|((t, p), o)| format!("{t}/{p}@{o}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Commits `marks`; a failure puts them back into the ledger to be offered again.
fn commit<C: Consumer<X>, X: ConsumerContext>(
    consumer: &C,
    marks: &[(Partition, i64)],
    mode: CommitMode,
    figures: &ConsumerFigures,
    pipeline: &str,
) -> bool {
    if marks.is_empty() {
        return true;
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in marks {
        if tpl
            .add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .is_err()
        {
            return false;
        }
    }
    match consumer.commit(&tpl, mode) {
        Ok(()) => {
            figures.commits.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(pipeline, "kafka: committed {}", describe_marks(marks));
            true
        }
        Err(e) => {
            figures.commit_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                pipeline,
                "kafka: commit of {} failed: {e}",
                describe_marks(marks)
            );
            false
        }
    }
}

type GroupConsumer = StreamConsumer<GroupContext>;

/// The pipeline's source: one record per message.
pub struct KafkaSource {
    consumer: Arc<GroupConsumer>,
    ledger: Ledger<Partition>,
    stop: CancellationToken,
    pipeline: String,
    brokers: String,
    max_item: usize,
    until_end: Option<EndWatch>,
    topics: HashMap<String, Arc<str>>,
    retry: Duration,
}

/// Which partitions have been read to their end, for one-off jobs.
struct EndWatch {
    at_end: std::collections::HashSet<Partition>,
}

/// Commits what the ledger allows, on an interval and at the end.
pub struct KafkaCommitter {
    consumer: Arc<GroupConsumer>,
    ledger: Ledger<Partition>,
    figures: Arc<ConsumerFigures>,
    pipeline: String,
}

const CONSUMER_FIXED: [kafka_client::Fixed; 2] = [
    (
        "enable.auto.commit",
        "false",
        "offsets are committed only once the sink has acked",
    ),
    (
        "enable.auto.offset.store",
        "false",
        "offsets are committed only once the sink has acked",
    ),
];

fn consumer_client(config: &KafkaSourceConfig) -> Result<rdkafka::ClientConfig, OptionError> {
    kafka_client::client_config(
        &config.brokers,
        &CONSUMER_FIXED,
        &config.memory.bounded(),
        &[
            ("auto.offset.reset", "earliest"),
            ("statistics.interval.ms", "5000"),
            // A full queue is the normal state of a bounded consumer behind a slow stage:
            // librdkafka's default of waiting 1 s before fetching again made a copy wait
            // on fetches (1.5k msgs/s with a 1 MiB queue).
            ("fetch.queue.backoff.ms", "10"),
        ],
        &config.options,
    )
}

/// Checks the user's options (a budget they would break, a setting weir owns).
pub fn check_options(config: &KafkaSourceConfig) -> Result<(), OptionError> {
    consumer_client(config).map(drop)
}

/// Builds the consumer and subscribes. `stop` ends the source cleanly (the pipeline then
/// drains and the committer commits what was acked).
pub fn kafka_source(
    config: &KafkaSourceConfig,
    stop: CancellationToken,
) -> Result<(KafkaSource, KafkaCommitter), KafkaSourceError> {
    let mut client = consumer_client(config)?;
    client.set("group.id", &config.group);
    if config.until_end {
        client.set("enable.partition.eof", "true");
    }
    let ledger = Ledger::new();
    let figures = Arc::new(ConsumerFigures::default());
    let context = GroupContext {
        pipeline: config.pipeline.clone(),
        ledger: ledger.clone(),
        drain_timeout: config.drain_timeout,
        figures: Arc::clone(&figures),
    };
    let consumer: GroupConsumer = client
        .create_with_context(context)
        .map_err(KafkaSourceError::Client)?;
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(KafkaSourceError::Client)?;
    let consumer = Arc::new(consumer);
    Ok((
        KafkaSource {
            consumer: Arc::clone(&consumer),
            ledger: ledger.clone(),
            stop,
            pipeline: config.pipeline.clone(),
            brokers: config.brokers.clone(),
            max_item: config.max_item,
            until_end: config.until_end.then(|| EndWatch {
                at_end: Default::default(),
            }),
            topics: HashMap::new(),
            retry: Duration::ZERO,
        },
        KafkaCommitter {
            consumer,
            ledger,
            figures,
            pipeline: config.pipeline.clone(),
        },
    ))
}

/// A Kafka source that cannot start or go on.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error("kafka consumer: {0}")]
    Client(KafkaError),
}

/// A message over the pipeline's largest item.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: message of {size} bytes is over the largest item of {limit} bytes")]
pub struct MessageTooLarge {
    pub origin: Origin,
    pub size: usize,
    pub limit: usize,
}

/// A message copied out of librdkafka's buffers, which it may then reuse.
struct Received {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    key: Option<Bytes>,
    value: Bytes,
    headers: Vec<(String, Bytes)>,
}

impl Received {
    fn copy(
        m: &rdkafka::message::BorrowedMessage<'_>,
        topics: &mut HashMap<String, Arc<str>>,
    ) -> Self {
        let topic = match topics.get(m.topic()) {
            Some(t) => Arc::clone(t),
            None => {
                let t: Arc<str> = Arc::from(m.topic());
                topics.insert(m.topic().to_string(), Arc::clone(&t));
                t
            }
        };
        Received {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            key: m.key().map(Bytes::copy_from_slice),
            value: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
            headers: m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                Bytes::copy_from_slice(h.value.unwrap_or_default()),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

const MAX_RETRY: Duration = Duration::from_secs(5);

impl KafkaSource {
    /// Every assigned partition has been read to its end.
    fn all_at_end(&self) -> bool {
        let Some(watch) = &self.until_end else {
            return false;
        };
        match self.consumer.assignment() {
            Ok(tpl) if tpl.count() > 0 => tpl.elements().iter().all(|e| {
                watch
                    .at_end
                    .contains(&(Arc::from(e.topic()), e.partition()))
            }),
            _ => false,
        }
    }
}

impl Source for KafkaSource {
    type Item = Record;

    async fn next(&mut self) -> Result<Option<Record>, BoxError> {
        loop {
            let received = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return Ok(None),
                m = self.consumer.recv() => m.map(|m| Received::copy(&m, &mut self.topics)),
            };
            match received {
                Ok(Received {
                    topic,
                    partition,
                    offset,
                    timestamp,
                    key,
                    value,
                    headers,
                }) => {
                    self.retry = Duration::ZERO;
                    if let Some(w) = &mut self.until_end {
                        w.at_end.remove(&(Arc::clone(&topic), partition));
                    }
                    let origin = Origin {
                        topic: Arc::clone(&topic),
                        partition,
                        offset,
                    };
                    let size = value.len() + key.as_ref().map_or(0, Bytes::len);
                    if size > self.max_item {
                        return Err(Box::new(MessageTooLarge {
                            origin,
                            size,
                            limit: self.max_item,
                        }));
                    }
                    let ack = self.ledger.track(&(topic, partition), offset);
                    return Ok(Some(Record {
                        key,
                        value,
                        headers,
                        origin: Some(origin),
                        timestamp,
                        ack,
                    }));
                }
                Err(KafkaError::PartitionEOF(partition)) => {
                    if let Some(w) = &mut self.until_end {
                        if let Ok(tpl) = self.consumer.assignment() {
                            for e in tpl.elements().iter().filter(|e| e.partition() == partition) {
                                w.at_end.insert((Arc::from(e.topic()), partition));
                            }
                        }
                    }
                    if self.all_at_end() {
                        return Ok(None);
                    }
                }
                Err(e) if kafka_client::is_fatal(&e) => {
                    return Err(format!("kafka consumer ({}): {e}", self.brokers).into());
                }
                Err(e) => {
                    self.retry = (self.retry * 2).clamp(Duration::from_millis(100), MAX_RETRY);
                    tracing::warn!(
                        pipeline = %self.pipeline,
                        "kafka consumer ({}): {e}; retrying in {:?}",
                        self.brokers,
                        self.retry
                    );
                    tokio::select! {
                        _ = self.stop.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(self.retry) => {}
                    }
                }
            }
        }
    }
}

impl KafkaCommitter {
    /// Commits what moved, every `interval`, until `stop`.
    pub async fn run(&self, interval: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.commit_advanced(CommitMode::Async),
            }
        }
    }

    fn commit_advanced(&self, mode: CommitMode) {
        let marks = self.ledger.advanced();
        if !commit(
            self.consumer.as_ref(),
            &marks,
            mode,
            &self.figures,
            &self.pipeline,
        ) {
            for (lane, _) in &marks {
                self.ledger.uncommitted(lane);
            }
        }
    }

    /// Commits what is acked, then leaves the group (closing the consumer blocks on the
    /// broker, so it runs off the runtime's workers). Returns the partitions committed.
    pub async fn close(self) -> Vec<(Partition, i64)> {
        let marks = self.ledger.drain(&self.lanes(), Instant::now());
        let KafkaCommitter {
            consumer,
            ledger,
            figures,
            pipeline,
        } = self;
        let closed = tokio::task::spawn_blocking(move || {
            commit(
                consumer.as_ref(),
                &marks,
                CommitMode::Sync,
                &figures,
                &pipeline,
            );
            // The last reference: dropping it closes the consumer and leaves the group.
            drop(consumer);
            drop(ledger);
            marks
        });
        closed.await.unwrap_or_default()
    }

    fn lanes(&self) -> Vec<Partition> {
        self.ledger.figures().into_iter().map(|(l, _)| l).collect()
    }

    pub fn figures(&self) -> Arc<ConsumerFigures> {
        Arc::clone(&self.figures)
    }

    pub fn ledger(&self) -> Ledger<Partition> {
        self.ledger.clone()
    }
}
