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
