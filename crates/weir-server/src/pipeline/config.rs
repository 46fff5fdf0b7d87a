//! `[[pipeline]]` tables of the `weir serve` configuration: long-running pipelines.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use weir_stages::catalogue::{parse_transform, StageSpecError, TransformSpec};
use weir_stages::kafka_client::OptionError;
use weir_stages::record::LineFormat;

use crate::serve::config::{duration, optional_size, size};

/// A `[[pipeline]]` section that cannot run; `at` names the pipeline (`pipeline #1 (copy)`).
#[derive(Debug, thiserror::Error)]
#[error("{at}: {problem}")]
pub struct PipelineConfigError {
    pub at: String,
    pub problem: ConfigProblem,
}

/// What is wrong in a `[[pipeline]]` section, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigProblem {
    #[error("name must not be empty")]
    EmptyName,
    #[error("memory_budget must be at least {} MiB: an eighth of it is one fetch, which must hold a whole batch of messages (1 MB by default)", MIN_BUDGET >> 20)]
    BudgetTooSmall,
    #[error("transforms: `{spec}`: {error}")]
    Transform {
        spec: String,
        error: Box<StageSpecError>,
    },
    #[error("max_item ({max_item} bytes) is over the {fetch} bytes of one fetch that memory_budget allows; raise memory_budget")]
    MaxItemOverFetch { max_item: u64, fetch: u64 },
    #[error("source: brokers, topics and group must not be empty")]
    EmptySource,
    #[error("source: {0}")]
    SourceOption(OptionError),
    #[error("sink: brokers and topic must not be empty")]
    EmptyKafkaSink,
    #[error("sink: {0}")]
    SinkOption(OptionError),
    #[error("sink: path must not be empty")]
    EmptyPath,
    #[error("sink: url `{url}`: {error}")]
    BadUrl {
        url: String,
        error: hyper::http::uri::InvalidUri,
    },
    #[error("sink: url `{url}` must be http:// or https://")]
    UrlScheme { url: String },
    #[error("sink: batch_bytes must be from 1 to {max} bytes")]
    BatchBytes { max: u64 },
}

/// One `[[pipeline]]`: a source, transforms of `weir run`'s catalogue, a sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub name: String,
    /// Every buffer of the pipeline together, the Kafka clients' own included.
    #[serde(default = "defaults::memory_budget", deserialize_with = "size")]
    pub memory_budget: u64,
    /// Stages written as for `weir run` (`throttle:2MB`, `redact:email`), applied to each
    /// record's value.
    #[serde(default)]
    pub transforms: Vec<String>,
    pub source: SourceConfig,
    pub sink: SinkConfig,
    /// Largest message accepted; a larger one stops the pipeline, named. Default: 1 MiB,
    /// or one fetch's share of a smaller budget.
    #[serde(default, deserialize_with = "optional_size")]
    pub max_item: Option<u64>,
    /// How often acked offsets are committed.
    #[serde(default = "defaults::commit_interval", deserialize_with = "duration")]
    pub commit_interval: Duration,
    /// How long a rebalance waits for the acks of partitions taken away.
    #[serde(default = "defaults::drain_timeout", deserialize_with = "duration")]
    pub drain_timeout: Duration,
}

/// `[pipeline.source]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    Kafka {
        brokers: String,
        topics: Vec<String>,
        group: String,
        /// Handed to librdkafka as they are (checked against the budget).
        #[serde(default)]
        options: BTreeMap<String, OptionValue>,
    },
}

/// `[pipeline.sink]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    Kafka {
        brokers: String,
        topic: String,
        #[serde(default)]
        options: BTreeMap<String, OptionValue>,
    },
    /// Appends a line per record, fsync'd before the record is acked.
    File {
        path: PathBuf,
        #[serde(default)]
        format: Format,
    },
    /// POSTs batches of lines (NDJSON), acked on a 2xx; 5xx and connection errors retried.
    Http {
        url: String,
        #[serde(default)]
        format: Format,
        #[serde(default = "defaults::batch_bytes", deserialize_with = "size")]
        batch_bytes: u64,
        #[serde(default = "defaults::http_timeout", deserialize_with = "duration")]
        timeout: Duration,
    },
}

/// How a record becomes a line in a file or an HTTP batch.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The value as it is.
    #[default]
    Value,
    /// `{"value": …, "key": …, "topic": …, "partition": …, "offset": …, …}`.
    Ndjson,
}

impl From<Format> for LineFormat {
    fn from(f: Format) -> Self {
        match f {
            Format::Value => LineFormat::Value,
            Format::Ndjson => LineFormat::Ndjson,
        }
    }
}

/// A librdkafka option: written as a string, a number or a boolean.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OptionValue {
    Text(String),
    Integer(i64),
    Boolean(bool),
}

impl OptionValue {
    fn as_text(&self) -> String {
        match self {
            OptionValue::Text(t) => t.clone(),
            OptionValue::Integer(n) => n.to_string(),
            OptionValue::Boolean(b) => b.to_string(),
        }
    }
}

/// Options as librdkafka takes them.
pub fn option_pairs(options: &BTreeMap<String, OptionValue>) -> Vec<(String, String)> {
    options
        .iter()
        .map(|(k, v)| (k.clone(), v.as_text()))
        .collect()
}

/// How a pipeline's `memory_budget` is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetPlan {
    /// All the channels between stages together (the runtime splits it between them).
    pub channels: u64,
    /// The Kafka consumer's prefetch queue, and one fetch.
    pub consumer_queue: u64,
    pub consumer_fetch: u64,
    /// The Kafka producer's queue.
    pub producer_queue: u64,
}

/// The smallest budget that leaves each part room to work: a fetch (an eighth) must hold a
/// whole batch as producers write them, up to 1 MB by default.
pub const MIN_BUDGET: u64 = 8 << 20;

impl PipelineConfig {
    /// A quarter for the channels, a quarter for the consumer's queue and an eighth for a
    /// fetch, a quarter for the producer's queue; the last eighth is librdkafka's per-message
    /// bookkeeping and the runtime's own.
    pub fn plan(&self) -> BudgetPlan {
        let b = self.memory_budget;
        BudgetPlan {
            channels: b / 4,
            consumer_queue: b / 4,
            consumer_fetch: b / 8,
            producer_queue: b / 4,
        }
    }

    pub fn max_item(&self) -> u64 {
        self.max_item
            .unwrap_or_else(|| (1 << 20).min(self.plan().consumer_fetch))
    }

    pub fn transform_specs(&self) -> Result<Vec<TransformSpec>, ConfigProblem> {
        self.transforms
            .iter()
            .map(|t| {
                parse_transform(t).map_err(|error| ConfigProblem::Transform {
                    spec: t.clone(),
                    error: Box::new(error),
                })
            })
            .collect()
    }

    /// Checks what the file's types cannot; `at` names the pipeline in the message.
    pub fn check(&self, at: &str) -> Result<(), PipelineConfigError> {
        self.problem().map_err(|problem| PipelineConfigError {
            at: at.to_string(),
            problem,
        })
    }

    fn problem(&self) -> Result<(), ConfigProblem> {
        if self.name.trim().is_empty() {
            return Err(ConfigProblem::EmptyName);
        }
        if self.memory_budget < MIN_BUDGET {
            return Err(ConfigProblem::BudgetTooSmall);
        }
        self.transform_specs()?;
        let plan = self.plan();
        if self.max_item() > plan.consumer_fetch {
            return Err(ConfigProblem::MaxItemOverFetch {
                max_item: self.max_item(),
                fetch: plan.consumer_fetch,
            });
        }
        match &self.source {
            SourceConfig::Kafka {
                brokers,
                topics,
                group,
                options,
            } => {
                if brokers.trim().is_empty() || topics.is_empty() || group.trim().is_empty() {
                    return Err(ConfigProblem::EmptySource);
                }
                crate::pipeline::runner::consumer_check(self, brokers, options)
                    .map_err(ConfigProblem::SourceOption)?;
            }
        }
        match &self.sink {
            SinkConfig::Kafka {
                brokers,
                topic,
                options,
            } => {
                if brokers.trim().is_empty() || topic.trim().is_empty() {
                    return Err(ConfigProblem::EmptyKafkaSink);
                }
                crate::pipeline::runner::producer_check(self, brokers, options)
                    .map_err(ConfigProblem::SinkOption)?;
            }
            SinkConfig::File { path, .. } => {
                if path.as_os_str().is_empty() {
                    return Err(ConfigProblem::EmptyPath);
                }
            }
            SinkConfig::Http {
                url, batch_bytes, ..
            } => {
                let uri: hyper::Uri = url.parse().map_err(|error| ConfigProblem::BadUrl {
                    url: url.clone(),
                    error,
                })?;
                if !matches!(uri.scheme_str(), Some("http" | "https")) {
                    return Err(ConfigProblem::UrlScheme { url: url.clone() });
                }
                let max = plan.channels.max(1 << 20);
                if *batch_bytes == 0 || *batch_bytes > max {
                    return Err(ConfigProblem::BatchBytes { max });
                }
            }
        }
        Ok(())
    }
}

mod defaults {
    use std::time::Duration;

    pub fn memory_budget() -> u64 {
        64 << 20
    }
    pub fn commit_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub fn drain_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn batch_bytes() -> u64 {
        1 << 20
    }
    pub fn http_timeout() -> Duration {
        Duration::from_secs(30)
    }
}

#[cfg(test)]
mod tests {
    use crate::serve::ServeConfig;

    const COPY: &str = r#"
[[pipeline]]
name = "copy"
memory_budget = "16MiB"
transforms = ["throttle:2MB"]
[pipeline.source]
kind = "kafka"
brokers = "127.0.0.1:9092"
topics = ["in"]
group = "weir-copy"
[pipeline.source.options]
"session.timeout.ms" = "6000"
[pipeline.sink]
kind = "kafka"
brokers = "127.0.0.1:9092"
topic = "out"
"#;

    #[test]
    fn the_issue_shape_parses_and_needs_no_listen() {
        let c = ServeConfig::parse(COPY).unwrap();
        assert_eq!(c.listen_addr(), None);
        let p = &c.pipelines[0];
        let plan = p.plan();
        assert_eq!(plan.channels, 4 << 20, "a quarter for the channels");
        assert_eq!(plan.consumer_fetch, 2 << 20);
        assert_eq!(p.max_item(), 1 << 20);
    }

    #[test]
    fn mistakes_name_the_pipeline_and_the_key() {
        let err = |from: &str, to: &str| {
            ServeConfig::parse(&COPY.replace(from, to))
                .unwrap_err()
                .to_string()
        };
        let e = err(
            "\"session.timeout.ms\" = \"6000\"",
            "\"fetch.max.bytes\" = \"100000000\"",
        );
        assert!(
            e.contains("pipeline #1 (copy): source: option `fetch.max.bytes`"),
            "{e}"
        );
        assert!(e.contains("memory_budget"), "{e}");
        let e = err(
            "\"session.timeout.ms\" = \"6000\"",
            "\"enable.auto.commit\" = true",
        );
        assert!(e.contains("enable.auto.commit"), "{e}");
        let e = err("16MiB", "2MiB");
        assert!(e.contains("at least 8 MiB"), "{e}");
        let e = err("throttle:2MB", "throttle");
        assert!(e.contains("transforms: `throttle`"), "{e}");
        let e = err(
            "kind = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\ntopic",
            "kind = \"ftp\"\nbrokers = \"127.0.0.1:9092\"\ntopic",
        );
        assert!(e.contains("ftp") && e.contains("line"), "{e}");
        let e = err(
            "[[pipeline]]\nname = \"copy\"",
            "[[pipeline]]\nname = \"copy\"\nlisten = 1",
        );
        assert!(e.contains("listen"), "{e}");
    }
}
