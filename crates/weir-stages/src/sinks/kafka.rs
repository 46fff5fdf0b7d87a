//! Writes one Kafka message per record, acking each record once the broker has it.
//!
//! The producer is idempotent with `acks=all`: a record is acked only on its delivery
//! report, which librdkafka gives after retrying what can be retried (until
//! `message.timeout.ms`). A delivery that fails for good stops the pipeline naming the
//! record's origin; its token is dropped unacked, so its source never commits past it.
//! librdkafka's queue is sized from the pipeline's budget: when it is full, `write` waits
//! for deliveries, which holds back the whole pipeline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tokio::sync::Notify;
use weir_runtime::{AckToken, BoxError, Sink};

use crate::kafka_client::{self, Bounded, OptionError};
use crate::record::Record;

/// How a Kafka sink is set up.
#[derive(Clone, Debug)]
pub struct KafkaSinkConfig {
    pub pipeline: String,
    pub brokers: String,
    pub topic: String,
    pub options: Vec<(String, String)>,
    /// What librdkafka's producer queue may hold, in bytes of messages.
    pub queue: u64,
}

/// What a delivery report settles.
struct Pending {
    ack: AckToken,
    origin: String,
}

struct Deliveries {
    pipeline: String,
    in_flight: AtomicUsize,
    failure: Mutex<Option<String>>,
    settled: Notify,
}

impl ClientContext for Deliveries {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(pipeline = %self.pipeline, "kafka producer: {error}: {reason}");
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Box<Pending>) {
        let Pending { ack, origin } = *pending;
        match result {
            Ok(_) => ack.ack(),
            Err((e, _)) => {
                let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
                failure.get_or_insert_with(|| format!("delivery of {origin} failed: {e}"));
                drop(ack);
            }
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.settled.notify_one();
    }
}

/// The pipeline's Kafka sink.
pub struct KafkaSink {
    producer: Arc<ThreadedProducer<Deliveries>>,
    topic: String,
    brokers: String,
}

/// A producer that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSinkError {
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error("kafka producer: {0}")]
    Client(KafkaError),
}

const WHY: &str = "a record is acked only once every in-sync replica has it, exactly once";

fn producer_client(config: &KafkaSinkConfig) -> Result<rdkafka::ClientConfig, OptionError> {
    kafka_client::client_config(
        &config.brokers,
        &[("acks", "all", WHY), ("enable.idempotence", "true", WHY)],
        &[
            Bounded {
                key: "queue.buffering.max.kbytes",
                value: (config.queue / 1024).max(1),
            },
            Bounded {
                key: "queue.buffering.max.messages",
                // librdkafka's bookkeeping per message is a few hundred bytes.
                value: (config.queue / 1024).max(100),
            },
        ],
        &[("linger.ms", "5")],
        &config.options,
    )
}

/// Checks the user's options (a budget they would break, a setting weir owns).
pub fn check_options(config: &KafkaSinkConfig) -> Result<(), OptionError> {
    producer_client(config).map(drop)
}

impl KafkaSink {
    pub fn new(config: &KafkaSinkConfig) -> Result<Self, KafkaSinkError> {
        let client = producer_client(config)?;
        let deliveries = Deliveries {
            pipeline: config.pipeline.clone(),
            in_flight: AtomicUsize::new(0),
            failure: Mutex::new(None),
            settled: Notify::new(),
        };
        let producer = client
            .create_with_context(deliveries)
            .map_err(KafkaSinkError::Client)?;
        Ok(KafkaSink {
            producer: Arc::new(producer),
            topic: config.topic.clone(),
            brokers: config.brokers.clone(),
        })
    }

    fn deliveries(&self) -> &Deliveries {
        self.producer.context()
    }

    fn failed(&self) -> Result<(), BoxError> {
        match &*self
            .deliveries()
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            Some(f) => Err(format!("kafka producer ({}): {f}", self.brokers).into()),
            None => Ok(()),
        }
    }
}

impl Sink for KafkaSink {
    type Item = Record;

    async fn write(&mut self, record: Record) -> Result<(), BoxError> {
        self.failed()?;
        let Record {
            key,
            value,
            headers,
            origin,
            ack,
            ..
        } = record;
        let origin = origin.map_or_else(|| "a record".to_string(), |o| o.to_string());
        let mut message =
            BaseRecord::with_opaque_to(&self.topic, Box::new(Pending { ack, origin }))
                .payload(value.as_ref());
        if let Some(k) = &key {
            message = message.key(k.as_ref());
        }
        if !headers.is_empty() {
            let mut owned = OwnedHeaders::new_with_capacity(headers.len());
            for (k, v) in &headers {
                owned = owned.insert(Header {
                    key: k,
                    value: Some(v.as_ref()),
                });
            }
            message = message.headers(owned);
        }
        loop {
            // Counted before the send: the report may come before `send` returns.
            self.deliveries().in_flight.fetch_add(1, Ordering::AcqRel);
            match self.producer.send(message) {
                Ok(()) => return Ok(()),
                Err((e, back)) => {
                    self.deliveries().in_flight.fetch_sub(1, Ordering::AcqRel);
                    if e.rdkafka_error_code() != Some(RDKafkaErrorCode::QueueFull) {
                        let origin = back.delivery_opaque.origin.clone();
                        return Err(format!(
                            "kafka producer ({}): cannot send {origin} to topic {}: {e}",
                            self.brokers, self.topic
                        )
                        .into());
                    }
                    message = back;
                    // Full: wait for a delivery. A report between the send and this wait
                    // left a permit, so the wait cannot miss it; the timeout is a backstop.
                    let settled = self.deliveries().settled.notified();
                    let _ = tokio::time::timeout(Duration::from_millis(50), settled).await;
                    self.failed()?;
                }
            }
        }
    }

    /// A delivery that failed while no record came stops the pipeline now, not at the next
    /// record.
    async fn flush(&mut self) -> Result<(), BoxError> {
        self.failed()
    }

    async fn finish(&mut self) -> Result<(), BoxError> {
        while self.deliveries().in_flight.load(Ordering::Acquire) > 0 {
            self.failed()?;
            let settled = self.deliveries().settled.notified();
            let _ = tokio::time::timeout(Duration::from_millis(100), settled).await;
        }
        self.failed()?;
        let producer = Arc::clone(&self.producer);
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(30)))
            .await
            .map_err(|e| format!("kafka producer: {e}"))?
            .map_err(|e| format!("kafka producer ({}): flush: {e}", self.brokers).into())
    }
}
