//! Many pipelines sharing one `MemoryBudget`: the bytes they buffer together never exceed
//! it; a pipeline that does not fit is refused at once or waits, as its caller chose.

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Numbers, Pass, SlowSink};
use weir_runtime::{MemoryBudget, Pipeline, WhenFull};

const ITEM: usize = 500;
const BUFFER: usize = 2000;
/// Each pipeline has two channels.
const PER_PIPELINE: usize = 2 * BUFFER;

fn pipeline(budget: &MemoryBudget, when_full: WhenFull, items: u64) -> Pipeline {
    Pipeline::builder()
        .buffer(BUFFER)
        .memory_budget(budget.clone(), when_full)
        .source(
            "numbers",
            Numbers {
                size: ITEM,
                count: Some(items),
                produced: Arc::new(AtomicU64::new(0)),
            },
        )
        .transform("pass", Pass)
        .sink(
            "slow",
            SlowSink {
                delay: Duration::from_millis(1),
                consumed: Arc::new(AtomicU64::new(0)),
            },
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_pipelines_never_overfill_the_budget() {
    let budget = MemoryBudget::new(3 * PER_PIPELINE);
    let done = Arc::new(AtomicUsize::new(0));
    let mut runs = Vec::new();
    for _ in 0..10 {
        let p = pipeline(&budget, WhenFull::Wait, 60);
        assert_eq!(p.buffer_bytes(), PER_PIPELINE);
        let done = Arc::clone(&done);
        runs.push(tokio::spawn(async move {
            let r = p.run().await;
            done.fetch_add(1, Ordering::SeqCst);
            r
        }));
    }
    let mut fullest = 0;
    while done.load(Ordering::SeqCst) < 10 {
        let buffered = budget.buffered();
        assert!(
            buffered <= budget.limit(),
            "{buffered} buffered > {}",
            budget.limit()
        );
        assert!(budget.reserved() <= budget.limit());
        fullest = fullest.max(buffered);
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    for r in runs {
        r.await
            .expect("joined")
            .expect("every waiting pipeline ran in the end");
    }
    // More than one pipeline's worth was buffered at once: they did run side by side.
    assert!(fullest > PER_PIPELINE, "fullest {fullest}");
    assert_eq!((budget.reserved(), budget.buffered()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_refuses_the_pipeline_that_does_not_fit() {
    let budget = MemoryBudget::new(2 * PER_PIPELINE + PER_PIPELINE / 2);
    let first = tokio::spawn(pipeline(&budget, WhenFull::FailFast, 100).run());
    let second = tokio::spawn(pipeline(&budget, WhenFull::FailFast, 100).run());
    while budget.reserved() < 2 * PER_PIPELINE {
        tokio::task::yield_now().await;
    }
    let refused = pipeline(&budget, WhenFull::FailFast, 100)
        .run()
        .await
        .expect_err("no room for a third");
    assert!(refused.is_refused(), "{refused}");
    assert!(
        refused.to_string().contains("memory budget exhausted"),
        "{refused}"
    );
    first.await.expect("joined").expect("first ran");
    second.await.expect("joined").expect("second ran");
    pipeline(&budget, WhenFull::FailFast, 10)
        .run()
        .await
        .expect("admitted once the others released their share");
}

/// A source that reads ahead into a queue of its own, as a database cursor's thread does.
struct ReadAhead {
    queue: weir_runtime::channel::Receiver<Vec<u8>>,
}

impl weir_runtime::Source for ReadAhead {
    type Item = Vec<u8>;
    async fn next(&mut self) -> Result<Option<Vec<u8>>, weir_runtime::BoxError> {
        Ok(self.queue.recv().await)
    }
    fn read_ahead(&self) -> Option<weir_runtime::channel::CapacityHandle> {
        Some(self.queue.capacity_handle())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_total_is_split_over_the_channels_and_bounds_what_is_held() {
    const TOTAL: usize = 10_007;
    const STAGES: usize = 5;
    let produced = Arc::new(AtomicU64::new(0));
    let consumed = Arc::new(AtomicU64::new(0));
    let mut builder = Pipeline::builder().buffer_total(TOTAL).source(
        "numbers",
        Numbers {
            size: ITEM,
            count: Some(300),
            produced: Arc::clone(&produced),
        },
    );
    for i in 0..STAGES - 2 {
        builder = builder.transform(format!("pass{i}"), Pass);
    }
    let pipeline = builder.sink(
        "slow",
        SlowSink {
            delay: Duration::from_micros(500),
            consumed: Arc::clone(&consumed),
        },
    );
    let capacities: Vec<u64> = pipeline
        .stats()
        .iter()
        .map(|s| s.snapshot().budget_bytes)
        .collect();
    assert_eq!(
        capacities.iter().sum::<u64>(),
        TOTAL as u64,
        "{capacities:?}"
    );
    assert_eq!(pipeline.buffer_bytes(), TOTAL);
    // Even shares: no two channels differ by more than a byte.
    let channels = &capacities[1..];
    assert!(channels.iter().max().unwrap() - channels.iter().min().unwrap() <= 1);

    // What is held between source and sink is at most the total, plus one item in flight
    // per stage.
    let bound = (TOTAL + STAGES * ITEM) as u64;
    let (p, c) = (Arc::clone(&produced), Arc::clone(&consumed));
    let watcher = tokio::spawn(async move {
        let mut widest = 0;
        while c.load(Ordering::SeqCst) < 300 {
            let consumed = c.load(Ordering::SeqCst);
            let held = (p.load(Ordering::SeqCst) - consumed) * ITEM as u64;
            assert!(held <= bound, "{held} bytes held, bound {bound}");
            widest = widest.max(held);
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        widest
    });
    pipeline.run().await.expect("pipeline runs");
    let widest = watcher.await.expect("watcher");
    assert!(widest >= (TOTAL - 4 * ITEM) as u64, "widest {widest}");
}

#[tokio::test]
async fn a_source_read_ahead_queue_takes_a_share_of_the_total() {
    let (mut tx, queue) = weir_runtime::channel::channel::<Vec<u8>>(0);
    let pipeline = Pipeline::builder()
        .buffer_total(3000)
        .source("cursor", ReadAhead { queue })
        .transform("pass", Pass)
        .sink(
            "slow",
            SlowSink {
                delay: Duration::ZERO,
                consumed: Arc::new(AtomicU64::new(0)),
            },
        );
    let channels: u64 = pipeline
        .stats()
        .iter()
        .map(|s| s.snapshot().budget_bytes)
        .sum();
    // Three shares: the read-ahead queue (shown as the source's) and the two channels.
    assert_eq!((channels, pipeline.buffer_bytes()), (3000, 3000));
    for _ in 0..2 {
        tx.send(vec![0; ITEM]).await.expect("room for two items");
    }
    drop(tx);
    pipeline.run().await.expect("pipeline runs");
}
