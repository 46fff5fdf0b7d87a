//! Kafka helper for tests and bench/kafka, against any broker (tansu on loopback here).
//!
//!   kafka_tool load BROKERS TOPIC COUNT SIZE
//!       COUNT values of exactly SIZE bytes, `{"id":N,"pad":"xx…"}`, key N (partition by key);
//!       prints {"loaded": N, "secs": S} once every message is acknowledged
//!   kafka_tool count BROKERS TOPIC GROUP EXPECTED [TIMEOUT_SECS]
//!       the bare librdkafka consumer that only counts (the bench's ceiling); prints
//!       {"counted": N, "secs": S, "msgs_per_s": R, "rss_mb_max": M}, secs first to last message
//!   kafka_tool watch BROKERS TOPIC EXPECTED TIMEOUT_SECS
//!       reads every partition (waiting for the topic to exist) until EXPECTED messages came;
//!       prints {"reached": N, "secs": S}, secs from the first message to the last
//!   kafka_tool ids BROKERS TOPIC [TIMEOUT_SECS]
//!       reads every partition from the start to its end; prints each distinct id on stdout
//!       and {"count": N, "distinct": D, "duplicates": N - D, "unparsed": U} on stderr
//!
//! Exit codes: 0 done, 1 failed or timed out, 2 bad arguments.

use std::io::{BufWriter, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

const USAGE: &str = "usage: kafka_tool load BROKERS TOPIC COUNT SIZE
       kafka_tool count BROKERS TOPIC GROUP EXPECTED [TIMEOUT_SECS]
       kafka_tool watch BROKERS TOPIC EXPECTED TIMEOUT_SECS
       kafka_tool ids BROKERS TOPIC [TIMEOUT_SECS]";

/// How long one metadata request may take.
const REQUEST: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match words.as_slice() {
        ["load", brokers, topic, count, size] => {
            parse(count, "COUNT").and_then(|c| load(brokers, topic, c, parse(size, "SIZE")?))
        }
        ["count", brokers, topic, group, expected, rest @ ..] if rest.len() <= 1 => {
            parse(expected, "EXPECTED")
                .and_then(|e| count(brokers, topic, group, e, timeout(rest.first(), 600)?))
        }
        ["watch", brokers, topic, expected, secs] => parse(expected, "EXPECTED")
            .and_then(|e| watch(brokers, topic, e, timeout(Some(secs), 0)?)),
        ["ids", brokers, topic, rest @ ..] if rest.len() <= 1 => {
            timeout(rest.first(), 300).and_then(|t| ids(brokers, topic, t))
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("kafka_tool: {e}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Run(e)) => {
            eprintln!("kafka_tool: {e}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Usage(String),
    Run(String),
}

impl From<KafkaError> for Failure {
    fn from(e: KafkaError) -> Self {
        Failure::Run(e.to_string())
    }
}

fn parse<T: std::str::FromStr>(word: &str, name: &str) -> Result<T, Failure> {
    word.parse().map_err(|_| {
        Failure::Usage(format!(
            "{name} must be a non-negative integer, not {word:?}"
        ))
    })
}

fn timeout(word: Option<&&str>, default: u64) -> Result<Duration, Failure> {
    let secs = match word {
        Some(w) => parse(w, "TIMEOUT_SECS")?,
        None => default,
    };
    Ok(Duration::from_secs(secs))
}

/// librdkafka's warnings and errors on stderr (rdkafka would send them to `log`, unset here),
/// delivery reports counted, and assignments told.
#[derive(Default)]
struct Context {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_failure: Mutex<Option<String>>,
    last_error: Mutex<Option<RDKafkaErrorCode>>,
}

impl Context {
    /// Prints an error unless it has the code of the one before: librdkafka repeats them, and a
    /// consumer hears each twice, as an event and from poll.
    fn report(&self, error: &KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if let Ok(mut last) = self.last_error.lock() {
            if code.is_some() && *last == code {
                return;
            }
            *last = code;
        }
        eprintln!(
            "librdkafka: {error}{}{reason}",
            if reason.is_empty() { "" } else { ": " }
        );
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        eprintln!("librdkafka {level:?} {fac}: {message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition is news to `ids` (it polls for it), not an error.
        if !matches!(error, KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            self.report(&error, reason);
        }
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                if let Ok(mut first) = self.first_failure.lock() {
                    first.get_or_insert_with(|| e.to_string());
                }
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

impl ConsumerContext for Context {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => eprintln!("assigned partitions {:?}", partitions(tpl)),
            Rebalance::Revoke(tpl) => eprintln!("revoked partitions {:?}", partitions(tpl)),
            Rebalance::Error(e) => eprintln!("rebalance error: {e}"),
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

fn client(brokers: &str, settings: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    // rdkafka takes the level from the `log` crate, unset here, which would hide warnings.
    config.set_log_level(RDKafkaLogLevel::Warning);
    for (k, v) in settings {
        config.set(*k, *v);
    }
    config
}

fn load(brokers: &str, topic: &str, count: u64, size: usize) -> Result<(), Failure> {
    let widest = format!("{{\"id\":{},\"pad\":\"\"}}", count.saturating_sub(1)).len();
    if size < widest {
        return Err(Failure::Usage(format!(
            "SIZE must be at least {widest} for {count} ids"
        )));
    }
    let producer: BaseProducer<Context> = client(
        brokers,
        &[
            ("linger.ms", "5"),
            ("acks", "all"),
            ("batch.num.messages", "10000"),
        ],
    )
    .create_with_context(Context::default())?;
    let start = Instant::now();
    let mut value = Vec::with_capacity(size);
    for id in 0..count {
        value.clear();
        write!(value, "{{\"id\":{id},\"pad\":\"").map_err(|e| Failure::Run(e.to_string()))?;
        value.resize(size - 2, b'x');
        value.extend_from_slice(b"\"}");
        let key = id.to_string();
        let mut record = BaseRecord::to(topic).key(&key).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                // The local queue is full: serve delivery reports until it has room.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    producer.poll(Duration::from_millis(10));
                    record = back;
                }
                Err((e, _)) => return Err(Failure::Run(format!("producing id {id}: {e}"))),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120))?;
    let ctx = producer.context();
    let (delivered, failed) = (
        ctx.delivered.load(Ordering::Relaxed),
        ctx.failed.load(Ordering::Relaxed),
    );
    if failed > 0 || delivered != count {
        let first = ctx
            .first_failure
            .lock()
            .ok()
            .and_then(|f| f.clone())
            .unwrap_or_default();
        return Err(Failure::Run(format!(
            "{delivered} of {count} delivered, {failed} failed (first: {first})"
        )));
    }
    println!(
        "{{\"loaded\": {delivered}, \"secs\": {:.3}}}",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn count(
    brokers: &str,
    topic: &str,
    group: &str,
    expected: u64,
    limit: Duration,
) -> Result<(), Failure> {
    let consumer: BaseConsumer<Context> = client(
        brokers,
        &[
            ("group.id", group),
            ("auto.offset.reset", "earliest"),
            ("session.timeout.ms", "6000"),
        ],
    )
    .create_with_context(Context::default())?;
    consumer.subscribe(&[topic])?;
    let (counted, secs) = count_until(&consumer, expected, Instant::now() + limit)?;
    println!(
        "{{\"counted\": {counted}, \"secs\": {secs:.3}, \"msgs_per_s\": {:.0}, \"rss_mb_max\": {:.1}}}",
        counted as f64 / secs.max(1e-9),
        peak_rss_mib()?
    );
    Ok(())
}

/// Polls until `expected` messages came; returns them and the seconds from the first to the last.
fn count_until(
    consumer: &BaseConsumer<Context>,
    expected: u64,
    deadline: Instant,
) -> Result<(u64, f64), Failure> {
    let (mut counted, mut first, mut last) = (0u64, None, Instant::now());
    while counted < expected {
        if Instant::now() > deadline {
            return Err(Failure::Run(format!(
                "timed out with {counted} of {expected} messages"
            )));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => {
                last = Instant::now();
                first.get_or_insert(last);
                counted += 1;
            }
            Some(Err(e)) => consumer.context().report(&e, ""),
            None => {}
        }
    }
    Ok((counted, first.map_or(0.0, |f| (last - f).as_secs_f64())))
}

/// VmHWM, the process's peak resident set, in MiB.
fn peak_rss_mib() -> Result<f64, Failure> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| Failure::Run(format!("/proc/self/status: {e}")))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .ok_or_else(|| Failure::Run("no VmHWM in /proc/self/status".into()))
}

/// A consumer of every partition of `topic` from its start, outside any group's assignment,
/// committing nothing; waits until `deadline` for the topic to exist.
fn read_all(
    brokers: &str,
    topic: &str,
    settings: &[(&str, &str)],
    deadline: Instant,
) -> Result<(BaseConsumer<Context>, Vec<i32>), Failure> {
    let mut config = client(
        brokers,
        // librdkafka assigns partitions only to a consumer with a group id.
        &[("group.id", "kafka-tool"), ("enable.auto.commit", "false")],
    );
    for (k, v) in settings {
        config.set(*k, *v);
    }
    let consumer: BaseConsumer<Context> = config.create_with_context(Context::default())?;
    let parts = loop {
        match topic_partitions(&consumer, topic) {
            Ok(parts) => break parts,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(25)),
        }
    };
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    Ok((consumer, parts))
}

/// The topic's partition numbers, or an error if it does not exist (yet).
fn topic_partitions(consumer: &BaseConsumer<Context>, topic: &str) -> Result<Vec<i32>, Failure> {
    let metadata = consumer.fetch_metadata(Some(topic), REQUEST)?;
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| Failure::Run(format!("topic {topic} not in the metadata")))?;
    if let Some(e) = t.error() {
        return Err(Failure::Run(format!("topic {topic}: {e:?}")));
    }
    if t.partitions().is_empty() {
        return Err(Failure::Run(format!("topic {topic} has no partitions")));
    }
    Ok(t.partitions().iter().map(|p| p.id()).collect())
}

/// Counts by reading, not from the high watermarks: tansu 0.6 answers ListOffsets(latest)
/// with the last batch's base offset + 1, short of the end by all but one of its records.
fn watch(brokers: &str, topic: &str, expected: u64, limit: Duration) -> Result<(), Failure> {
    let deadline = Instant::now() + limit;
    // A short fetch wait, so the first and last messages are seen within 20 ms of arriving.
    let (consumer, _) = read_all(brokers, topic, &[("fetch.wait.max.ms", "20")], deadline)?;
    let (reached, secs) = count_until(&consumer, expected, deadline)?;
    println!("{{\"reached\": {reached}, \"secs\": {secs:.3}}}");
    Ok(())
}

fn ids(brokers: &str, topic: &str, limit: Duration) -> Result<(), Failure> {
    let deadline = Instant::now() + limit;
    let (consumer, parts) = read_all(
        brokers,
        topic,
        &[("enable.partition.eof", "true")],
        deadline,
    )?;
    let (mut found, mut unparsed, mut at_end) = (Vec::new(), 0u64, Vec::new());
    while at_end.len() < parts.len() {
        if Instant::now() > deadline {
            return Err(Failure::Run(format!(
                "timed out after {} messages, at the end of partitions {at_end:?} of {parts:?}",
                found.len() as u64 + unparsed
            )));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => match m.payload().and_then(leading_id) {
                Some(id) => found.push(id),
                None => unparsed += 1,
            },
            Some(Err(KafkaError::PartitionEOF(p))) if !at_end.contains(&p) => at_end.push(p),
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => consumer.context().report(&e, ""),
        }
    }
    let count = found.len() as u64;
    found.sort_unstable();
    found.dedup();
    let mut out = BufWriter::new(std::io::stdout().lock());
    for id in &found {
        writeln!(out, "{id}").map_err(|e| Failure::Run(format!("stdout: {e}")))?;
    }
    out.flush()
        .map_err(|e| Failure::Run(format!("stdout: {e}")))?;
    let distinct = found.len() as u64;
    eprintln!(
        "{{\"count\": {}, \"distinct\": {distinct}, \"duplicates\": {}, \"unparsed\": {unparsed}}}",
        count + unparsed,
        count - distinct
    );
    Ok(())
}

/// The first run of decimal digits in a value: the id `load` wrote, `{"id":123,…`.
fn leading_id(value: &[u8]) -> Option<u64> {
    let start = value.iter().position(u8::is_ascii_digit)?;
    let digits = value[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&value[start..start + digits])
        .ok()?
        .parse()
        .ok()
}
