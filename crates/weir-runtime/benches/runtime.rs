//! Runtime benchmarks: the byte-budgeted channel alone, and a whole pipeline's per-item cost.
//!
//! Short by design (`cargo bench -p weir-runtime` takes about a minute); compare numbers
//! only within one machine and one run.

use std::time::Duration;

use bytes::Bytes;
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use tokio::runtime::Runtime;
use weir_runtime::channel::channel;
use weir_runtime::{BoxError, Emit, Pipeline, Sink, Source, Transform, DEFAULT_BUFFER};

/// Items moved per channel iteration: enough that spawning the two tasks is noise.
const CHANNEL_ITEMS: u64 = 4096;
/// Items pushed through the pipeline per iteration.
const PIPELINE_ITEMS: u64 = 100_000;
/// Size of each pipeline item: small, so the runtime's overhead dominates.
const PIPELINE_ITEM_BYTES: usize = 64;

/// Two workers: one for the sending task, one for the receiving task.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Send + recv of `CHANNEL_ITEMS` items between two tasks through a channel with the
/// default budget. Items are clones of one `Bytes` (a refcount bump, no copy), so this
/// measures the channel, not memcpy; at 64 KiB each item fills the budget alone.
fn channel_throughput(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("channel");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for size in [64usize, 4 * 1024, 64 * 1024] {
        let item = Bytes::from(vec![7u8; size]);
        group.throughput(Throughput::ElementsAndBytes {
            elements: CHANNEL_ITEMS,
            bytes: CHANNEL_ITEMS * size as u64,
        });
        group.bench_with_input(BenchmarkId::new("send_recv", size), &item, |b, item| {
            b.to_async(&rt).iter(|| async {
                let (mut tx, mut rx) = channel::<Bytes>(DEFAULT_BUFFER);
                let item = item.clone();
                let sender = tokio::spawn(async move {
                    for _ in 0..CHANNEL_ITEMS {
                        tx.send(item.clone()).await.expect("receiver alive");
                    }
                });
                let receiver = tokio::spawn(async move {
                    let mut n = 0u64;
                    while rx.recv().await.is_some() {
                        n += 1;
                    }
                    n
                });
                sender.await.expect("sender task");
                assert_eq!(receiver.await.expect("receiver task"), CHANNEL_ITEMS);
            });
        });
    }
    group.finish();
}

struct Repeat {
    item: Bytes,
    left: u64,
}

impl Source for Repeat {
    type Item = Bytes;
    async fn next(&mut self) -> Result<Option<Bytes>, BoxError> {
        Ok(self.left.checked_sub(1).map(|left| {
            self.left = left;
            self.item.clone()
        }))
    }
}

struct Identity;

impl Transform for Identity {
    type In = Bytes;
    type Out = Bytes;
    async fn apply(&mut self, item: Bytes, out: &mut Emit<'_, Bytes>) -> Result<(), BoxError> {
        out.send(item).await
    }
}

struct CountSink(u64);

impl Sink for CountSink {
    type Item = Bytes;
    async fn write(&mut self, _item: Bytes) -> Result<(), BoxError> {
        self.0 += 1;
        Ok(())
    }
}

/// A whole pipeline: source -> 3 identity transforms -> counting sink, default budgets,
/// reported per item. Building the pipeline is inside the timed part (a few allocations,
/// negligible beside 100k items).
fn pipeline_per_item(c: &mut Criterion) {
    let rt = runtime();
    let item = Bytes::from(vec![7u8; PIPELINE_ITEM_BYTES]);
    let mut group = c.benchmark_group("pipeline");
    // One iteration takes tens of milliseconds: flat sampling keeps the run short.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(PIPELINE_ITEMS));
    group.bench_function("source_3x_identity_count_64B", |b| {
        b.to_async(&rt).iter(|| async {
            let report = Pipeline::builder()
                .source(
                    "repeat",
                    Repeat {
                        item: item.clone(),
                        left: PIPELINE_ITEMS,
                    },
                )
                .transform("id1", Identity)
                .transform("id2", Identity)
                .transform("id3", Identity)
                .sink("count", CountSink(0))
                .run()
                .await
                .expect("pipeline ran");
            assert_eq!(report.stages[4].items_in, PIPELINE_ITEMS);
        });
    });
    group.finish();
}

criterion_group!(benches, channel_throughput, pipeline_per_item);
criterion_main!(benches);
