//! The console's snapshot: 10,000 open streams ranked, the worst 100 in full, as JSON.
//!
//! Targets (issue 19): ≤ 5 ms of CPU to build and ≤ 2 MB on the wire. Run with
//! `cargo bench -p weir-server --bench console`; the figure of record is in bench/RESULTS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use weir_runtime::MemoryBudget;
use weir_server::serve::admission::Admission;
use weir_server::serve::console::{
    build, Holds, Registry, SortBy, Sources, StreamInfo, View, DEFAULT_TOP,
};
use weir_server::serve::send_queue::Backlog;

const STREAMS: u64 = 10_000;

/// A stream's own queue, of a fixed size.
struct Queue(u64);

impl Holds for Queue {
    fn held(&self) -> u64 {
        self.0
    }
}

fn snapshot(c: &mut Criterion) {
    let registry = Registry::default();
    let _open: Vec<_> = (0..STREAMS)
        .map(|i| {
            let watched = registry.register(StreamInfo {
                route: Arc::from(if i % 2 == 0 {
                    "/v1/chat/completions"
                } else {
                    "/topics/ticks"
                }),
                kind: "llm_proxy",
                client: Some(
                    format!("10.0.{}.{}:{}", i / 250, i % 250, 40_000 + i % 20_000)
                        .parse()
                        .unwrap(),
                ),
                budget: 64 << 10,
                backlog: Some(Backlog::default()),
                holds: Some(Arc::new(Queue((i * 7919) % 65_536))),
                stages: Vec::new(),
            });
            watched.sent((i as usize * 31) % 100_000);
            watched
        })
        .collect();
    let sources = Sources {
        registry: registry.clone(),
        admission: Admission::new(20_000, MemoryBudget::new(1 << 30)),
        routes: vec![
            (Arc::from("/v1/chat/completions"), "llm_proxy"),
            (Arc::from("/topics/ticks"), "topic"),
        ],
        topics: Vec::new(),
        send_buffer: 64 << 10,
        started: Instant::now(),
    };
    let mut group = c.benchmark_group("console");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (name, sort) in [("buffered", SortBy::Buffered), ("rate", SortBy::Rate)] {
        let view = View {
            top: DEFAULT_TOP,
            sort,
        };
        let wire = serde_json::to_vec(&build(&sources, view)).unwrap().len();
        println!("console snapshot of {STREAMS} streams by {name}: {wire} bytes on the wire");
        group.bench_function(format!("snapshot_10000_streams_by_{name}"), |b| {
            b.iter(|| serde_json::to_vec(&build(&sources, view)).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, snapshot);
criterion_main!(benches);
