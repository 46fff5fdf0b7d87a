//! `weir run` with a Kafka topic at either end: drain a topic to a file, load a file into a
//! topic, or copy between topics, as one-off jobs.

use tokio_util::sync::CancellationToken;
use weir_runtime::Pipeline;
use weir_stages::catalogue::{self, split};
use weir_stages::sinks::kafka::{KafkaSink, KafkaSinkConfig};
use weir_stages::sinks::record_lines::RecordLines;
use weir_stages::sources::kafka::{
    kafka_source, ConsumerMemory, KafkaCommitter, KafkaSourceConfig,
};
use weir_stages::transforms::line_records::LineRecords;
use weir_stages::transforms::lines::DEFAULT_MAX_LINE;
use weir_stages::transforms::per_record::PerRecord;

use super::run::Built;
use super::stages;
use super::Failure;

/// `kafka:BROKERS/TOPIC[?group=GROUP]`.
#[derive(Debug, PartialEq)]
pub struct KafkaSpec {
    pub brokers: String,
    pub topic: String,
    pub group: String,
}

pub fn is_kafka(spec: &str) -> bool {
    split(spec).0 == "kafka"
}

/// A `kafka:` stage written wrong.
#[derive(Debug, PartialEq, Eq)]
pub enum KafkaSpecError {
    Shape(String),
    UnknownOption { spec: String, pair: String },
}

impl std::fmt::Display for KafkaSpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KafkaSpecError::Shape(spec) => write!(
                f,
                "`{spec}`: write kafka:HOST:PORT[,HOST:PORT]/TOPIC[?group=GROUP]"
            ),
            KafkaSpecError::UnknownOption { spec, pair } => {
                write!(f, "`{spec}`: unknown option `{pair}` (options: group)")
            }
        }
    }
}

impl std::error::Error for KafkaSpecError {}

pub fn parse(spec: &str) -> Result<KafkaSpec, KafkaSpecError> {
    let shape = || KafkaSpecError::Shape(spec.to_string());
    let arg = split(spec).1.ok_or_else(shape)?;
    let arg = arg.strip_prefix("//").unwrap_or(arg);
    let (address, query) = arg.split_once('?').unwrap_or((arg, ""));
    let (brokers, topic) = address
        .rsplit_once('/')
        .filter(|(b, t)| !b.is_empty() && !t.is_empty())
        .ok_or_else(shape)?;
    let mut group = "weir-run".to_string();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("group", g)) if !g.is_empty() => group = g.to_string(),
            _ => {
                return Err(KafkaSpecError::UnknownOption {
                    spec: spec.to_string(),
                    pair: pair.to_string(),
                })
            }
        }
    }
    Ok(KafkaSpec {
        brokers: brokers.to_string(),
        topic: topic.to_string(),
        group,
    })
}

fn usage(message: impl std::fmt::Display) -> Failure {
    Failure::Usage(message.to_string())
}

fn sink(spec: &KafkaSpec, buffer: usize) -> Result<KafkaSink, Failure> {
    KafkaSink::new(&KafkaSinkConfig {
        pipeline: "weir run".to_string(),
        brokers: spec.brokers.clone(),
        topic: spec.topic.clone(),
        options: Vec::new(),
        queue: (4 * buffer as u64).max(1 << 20),
    })
    .map_err(|e| Failure::Pipeline(e.to_string()))
}

/// Builds a pipeline whose source or sink (or both) is a topic. A topic source reads every
/// partition to its end, then stops; its offsets are committed once the sink has finished.
pub fn build(stages: &[String], buffer: usize) -> Result<(Built, Option<KafkaCommitter>), Failure> {
    let (first, rest) = stages.split_first().ok_or_else(|| usage("no stages"))?;
    let (last, middle) = rest
        .split_last()
        .ok_or_else(|| usage("a sink is missing"))?;
    let specs = middle
        .iter()
        .map(|s| catalogue::parse_transform(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(usage)?;
    if !is_kafka(first) {
        let to = parse(last).map_err(usage)?;
        let source = stages::parse_source(first)
            .map_err(usage)?
            .open(buffer)
            .map_err(super::run::failed)?;
        let input_len = source.size();
        let mut builder = Pipeline::builder()
            .buffer(buffer)
            .source(first.as_str(), source);
        for (spec, text) in specs.into_iter().zip(middle) {
            builder = builder.transform(text.as_str(), spec.build().map_err(usage)?);
        }
        let pipeline = builder
            .transform("lines", LineRecords::new(DEFAULT_MAX_LINE))
            .sink(last.as_str(), sink(&to, buffer)?);
        return Ok((
            Built {
                pipeline,
                input_len,
            },
            None,
        ));
    }
    let from = parse(first).map_err(usage)?;
    let (source, committer) = kafka_source(
        &KafkaSourceConfig {
            pipeline: "weir run".to_string(),
            brokers: from.brokers.clone(),
            topics: vec![from.topic.clone()],
            group: from.group.clone(),
            // A one-off job joins and leaves once: a short session makes the join quick.
            options: vec![("session.timeout.ms".to_string(), "6000".to_string())],
            // A fetch must hold a whole batch as producers write them (up to 1 MB).
            memory: ConsumerMemory {
                queue: (4 * buffer as u64).max(2 << 20),
                fetch: (2 * buffer as u64).max(1 << 20),
            },
            max_item: DEFAULT_MAX_LINE,
            drain_timeout: std::time::Duration::from_secs(10),
            until_end: true,
        },
        CancellationToken::new(),
    )
    .map_err(|e| Failure::Pipeline(e.to_string()))?;
    let mut builder = Pipeline::builder()
        .buffer(buffer)
        .source(first.as_str(), source);
    for (spec, text) in specs.into_iter().zip(middle) {
        builder = builder.transform(text.as_str(), PerRecord::new(spec).map_err(usage)?);
    }
    let pipeline = if is_kafka(last) {
        builder.sink(last.as_str(), sink(&parse(last).map_err(usage)?, buffer)?)
    } else {
        let file = stages::parse_sink(last)
            .map_err(usage)?
            .open()
            .map_err(super::run::failed)?;
        builder.sink(last.as_str(), RecordLines::new(file))
    };
    Ok((
        Built {
            pipeline,
            input_len: None,
        },
        Some(committer),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_brokers_topic_and_group() {
        assert_eq!(
            parse("kafka:127.0.0.1:9092,h2:9092/logs?group=g1"),
            Ok(KafkaSpec {
                brokers: "127.0.0.1:9092,h2:9092".into(),
                topic: "logs".into(),
                group: "g1".into()
            })
        );
        assert_eq!(
            parse("kafka://h:1/t").map(|s| s.group),
            Ok("weir-run".into())
        );
        assert!(parse("kafka:h:1")
            .unwrap_err()
            .to_string()
            .contains("TOPIC"));
        assert!(parse("kafka:h:1/t?x=1")
            .unwrap_err()
            .to_string()
            .contains("unknown option"));
    }
}
