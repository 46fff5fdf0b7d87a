//! `GET /metrics` and the end-of-stream log line of `weir serve`.
//!
//! The metrics recorder is process-wide: each test uses route paths of its own, and
//! only `metrics_count_streams_by_outcome` refuses requests (the rejection counter has
//! no route label), so its deltas are exact.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_server::serve::{RunningServer, ServeConfig, Server};

/// One sample of the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text format just enough for these tests (label values without `"` or `,`).
fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a value");
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => {
                    let labels = rest
                        .strip_suffix('}')
                        .expect("closing brace")
                        .split(',')
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').expect("label=value");
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect();
                    (name, labels)
                }
            };
            Sample {
                name: name.to_string(),
                labels,
                value: value.parse().unwrap_or_else(|_| panic!("value of {line}")),
            }
        })
        .collect()
}

/// The value of the sample `name` whose labels include `labels`, if there is one.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

async fn scrape(server: &RunningServer) -> Vec<Sample> {
    let resp = client().get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    parse_metrics(&resp.text().await.unwrap())
}

/// Scrapes until `done` holds, panicking with the last scrape after [`DEADLINE`].
async fn scrape_until(
    server: &RunningServer,
    what: &str,
    done: impl Fn(&[Sample]) -> bool,
) -> Vec<Sample> {
    let start = Instant::now();
    loop {
        let samples = scrape(server).await;
        if done(&samples) {
            return samples;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}: {samples:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn route(path: &str, upstream: &str, extra: &str) -> String {
    format!(
        "[[route]]\nkind = \"llm_proxy\"\npath = \"{path}\"\nprotocol = \"openai\"\n\
         upstream = \"{upstream}\"\nclient_keys = [\"key-1\"]\n{extra}\n"
    )
}

/// A raw streaming request to `path`, to drive a client socket by hand.
fn raw_request(path: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: weir\r\nauthorization: Bearer key-1\r\n\
         content-type: application/json\r\ncontent-length: 15\r\n\r\n{{\"stream\":true}}"
    )
}

const STREAMS: &str = "weir_streams_total";
const REJECTED: &str = "weir_streams_rejected_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_streams_by_outcome() {
    let done_mock = start().await;
    let slow_mock = start().await;
    let toml = format!(
        "listen = \"127.0.0.1:0\"\nmemory_budget = \"1MiB\"\n{}{}{}{}",
        route(
            "/m/done",
            &done_mock.url("/v1/chat/completions?tokens=20"),
            ""
        ),
        // Endless and paced: a client can leave in the middle.
        route(
            "/m/endless",
            &slow_mock.url("/v1/chat/completions?tokens=0&rate=200"),
            ""
        ),
        // Its share is more than the whole budget: always refused.
        route(
            "/m/huge",
            &slow_mock.url("/v1/chat/completions"),
            "buffer = \"2MiB\""
        ),
        // Big tokens, so that a stalled client fills every socket buffer between us.
        route(
            "/m/stalled",
            &slow_mock.url("/v1/chat/completions?tokens=0&token_size=1000"),
            "receive_buffer = \"8KiB\""
        ),
    );
    let server = Server::new(ServeConfig::parse(&toml).expect("config"))
        .expect("server")
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind");
    let before = scrape(&server).await;
    // The process's RSS, for `weir check --metrics-url`: this test process's own, here.
    let rss = value(&before, "process_resident_memory_bytes", &[]).expect("an RSS gauge");
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let vm_rss: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(
        rss > 1e6 && (rss - vm_rss * 1024.0).abs() < 64e6,
        "gauge {rss} B, /proc says {vm_rss} KiB"
    );
    let rejected_before = |reason: &str| value(&before, REJECTED, &[("reason", reason)]);
    assert_eq!(
        value(
            &before,
            STREAMS,
            &[("route", "/m/done"), ("outcome", "upstream_error")]
        ),
        Some(0.0),
        "every outcome's series exists from the start"
    );
    assert_eq!(
        value(&before, "weir_memory_budget_bytes", &[("state", "limit")]),
        Some((1 << 20) as f64)
    );

    // Completed.
    let c = client();
    let resp = proxy_request(&c, &server.url("/m/done"), false)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (body, err) = read_all(resp).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(openai_tokens(&parse_sse(&body)).len(), 20);

    // Unauthorised, and over the memory budget.
    let resp = c
        .post(server.url("/m/done"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = proxy_request(&c, &server.url("/m/huge"), false)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);

    // Open: counted active, its share reserved; then the client leaves mid-stream.
    let mut open = proxy_request(&c, &server.url("/m/endless"), false)
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 200);
    assert!(open.chunk().await.unwrap().is_some());
    let during = scrape(&server).await;
    assert_eq!(value(&during, "weir_streams_active", &[]), Some(1.0));
    assert_eq!(
        value(
            &during,
            "weir_memory_budget_bytes",
            &[("state", "reserved")]
        ),
        Some((64 << 10) as f64),
        "the default stream buffer"
    );
    drop(open);

    let after = scrape_until(&server, "the aborted stream to end", |s| {
        value(
            s,
            STREAMS,
            &[("route", "/m/endless"), ("outcome", "client_gone")],
        ) == Some(1.0)
    })
    .await;
    let streams = |route: &str, outcome: &str| {
        value(&after, STREAMS, &[("route", route), ("outcome", outcome)])
    };
    assert_eq!(streams("/m/done", "completed"), Some(1.0));
    assert_eq!(streams("/m/done", "rejected_auth"), Some(1.0));
    assert_eq!(streams("/m/done", "client_gone"), Some(0.0));
    assert_eq!(streams("/m/huge", "rejected_busy"), Some(1.0));
    assert_eq!(streams("/m/endless", "completed"), Some(0.0));
    for (reason, n) in [("unauthorized", 1.0), ("memory_budget", 1.0)] {
        let was = rejected_before(reason).unwrap_or(0.0);
        assert_eq!(
            value(&after, REJECTED, &[("reason", reason)]),
            Some(was + n),
            "{reason}"
        );
    }
    assert_eq!(value(&after, "weir_streams_active", &[]), Some(0.0));
    assert_eq!(
        value(&after, "weir_memory_budget_bytes", &[("state", "reserved")]),
        Some(0.0)
    );

    // Bytes both ways: what the mock wrote, and what the client read.
    let done = [("route", "/m/done")];
    assert_eq!(
        value(&after, "weir_upstream_bytes_total", &done),
        Some(done_mock.stats().bytes_sent as f64)
    );
    assert_eq!(
        value(&after, "weir_client_bytes_total", &done),
        Some(body.len() as f64)
    );

    // One first token each for the completed and the aborted stream; none for refusals.
    let ttft = "weir_time_to_first_token_seconds_count";
    assert_eq!(value(&after, ttft, &done), Some(1.0));
    assert_eq!(value(&after, ttft, &[("route", "/m/endless")]), Some(1.0));
    assert!(value(&after, ttft, &[("route", "/m/huge")]).unwrap_or(0.0) == 0.0);
    let le_60 = value(
        &after,
        "weir_time_to_first_token_seconds_bucket",
        &[("route", "/m/done"), ("le", "60")],
    );
    assert_eq!(le_60, Some(1.0), "a true histogram, with buckets");

    // A client that stops reading: the upstream waits on it until it leaves.
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let mut tcp = tcp.connect(server.local_addr()).await.unwrap();
    tcp.write_all(raw_request("/m/stalled").as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 1024];
    assert!(tcp.read(&mut head).await.unwrap() > 0);
    let stall = Duration::from_millis(600);
    tokio::time::sleep(stall).await;
    drop(tcp);
    let after = scrape_until(&server, "the stalled stream to end", |s| {
        value(
            s,
            STREAMS,
            &[("route", "/m/stalled"), ("outcome", "client_gone")],
        ) == Some(1.0)
    })
    .await;
    let paused = value(
        &after,
        "weir_upstream_paused_seconds_total",
        &[("route", "/m/stalled")],
    )
    .unwrap();
    assert!(
        paused >= stall.as_secs_f64() * 0.5,
        "paused {paused} s of a {stall:?} stall"
    );
    assert!(
        value(
            &after,
            "weir_upstream_paused_seconds_total",
            &[("route", "/m/done")]
        )
        .unwrap()
            < stall.as_secs_f64()
    );
}

/// Log lines written to memory.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// The `weir::stream` lines of `LOGGED_ROUTE` so far, as JSON.
    fn stream_lines(&self) -> Vec<Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("a JSON log line"))
            .filter(|l| l["target"] == "weir::stream" && l["fields"]["route"] == LOGGED_ROUTE)
            .collect()
    }

    async fn wait_for_lines(&self, n: usize) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let lines = self.stream_lines();
            if lines.len() >= n {
                return lines;
            }
            assert!(start.elapsed() < DEADLINE, "{n} stream lines: {lines:#?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Every field of the end-of-stream line: numbers, and strings from a closed set.
const NUMBER_FIELDS: [&str; 8] = [
    "status",
    "duration_s",
    "ttft_s",
    "events",
    "tokens",
    "upstream_bytes",
    "client_bytes",
    "paused_s",
];

const LOGGED_ROUTE: &str = "/v1/chat/completions";

#[tokio::test]
async fn one_log_line_per_stream_without_token_text_or_keys() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    // Global, not `set_default`: tracing-core caches a callsite's interest from the
    // thread that first reaches it, and the other test's threads have no subscriber.
    tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");

    let mock = start().await;
    let proxy = start_proxy(
        "openai",
        &mock.url("/v1/chat/completions?tokens=30&pii=3&rate=500"),
        "",
        "",
    )
    .await;
    let resp = proxy_request(&client(), &proxy.url("/v1/chat/completions"), false)
        .send()
        .await
        .unwrap();
    let (body, err) = read_all(resp).await;
    assert!(err.is_none(), "{err:?}");
    let tokens = openai_tokens(&parse_sse(&body));
    assert_eq!(tokens.len(), 30);
    assert!(mock.stats().pii_planted > 0);

    let mut open = proxy_request(&client(), &proxy.url("/v1/chat/completions"), false)
        .send()
        .await
        .unwrap();
    assert!(open.chunk().await.unwrap().is_some());
    drop(open);

    let lines = capture.wait_for_lines(2).await;
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let (done, gone) = (&lines[0]["fields"], &lines[1]["fields"]);
    assert_eq!(done["message"], "stream ended");
    assert_eq!(done["outcome"], "completed");
    assert_eq!(done["status"], 200);
    assert_eq!(done["tokens"], 30);
    assert_eq!(done["client_bytes"], body.len());
    let upstream = done["upstream_bytes"].as_u64().unwrap();
    assert!(upstream > 0 && upstream < mock.stats().bytes_sent);
    assert!(done["ttft_s"].as_f64().unwrap() <= done["duration_s"].as_f64().unwrap());
    assert_eq!(gone["outcome"], "client_gone");
    assert_eq!(lines[1]["level"], "INFO");

    for line in &lines {
        for (key, value) in line["fields"].as_object().unwrap() {
            match key.as_str() {
                "message" => assert_eq!(value, "stream ended"),
                "route" => assert_eq!(value, LOGGED_ROUTE),
                "outcome" => assert!(value == "completed" || value == "client_gone"),
                k => assert!(
                    NUMBER_FIELDS.contains(&k) && value.is_number(),
                    "unexpected field {k}: {value}"
                ),
            }
        }
    }
    let raw = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let text: String = tokens.concat();
    assert!(text.contains('@'), "the stream carried an e-mail address");
    for secret in ["@", "key-1", "Bearer"] {
        assert!(!raw.contains(secret), "{secret:?} in the logs: {raw}");
    }
}
