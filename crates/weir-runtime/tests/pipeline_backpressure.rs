//! A slow sink holds the whole pipeline back: what is produced but not yet consumed never
//! exceeds the channels' budgets plus one in-flight item per stage.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Numbers, Pass, SlowSink};
use weir_runtime::Pipeline;

const ITEM: usize = 1000;
const BUDGET: usize = 4 * ITEM;
const TRANSFORMS: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_never_exceeds_consumed_plus_capacity() {
    let produced = Arc::new(AtomicU64::new(0));
    let consumed = Arc::new(AtomicU64::new(0));
    let channels = TRANSFORMS + 1;
    let stages = TRANSFORMS + 2;
    // Budgets in items, plus one item held by each stage while it waits to hand it on.
    let capacity = channels * (BUDGET / ITEM) as u64 + stages;

    let mut builder = Pipeline::builder().buffer(BUDGET).source(
        "numbers",
        Numbers {
            size: ITEM,
            count: Some(400),
            produced: Arc::clone(&produced),
        },
    );
    for i in 0..TRANSFORMS {
        builder = builder.transform(format!("pass{i}"), Pass);
    }
    let pipeline = builder.sink(
        "slow",
        SlowSink {
            delay: Duration::from_millis(1),
            consumed: Arc::clone(&consumed),
        },
    );

    let (p, c) = (Arc::clone(&produced), Arc::clone(&consumed));
    let watcher = tokio::spawn(async move {
        let mut widest = 0;
        while c.load(Ordering::SeqCst) < 400 {
            // Read consumed first: it only grows, so the difference is never understated.
            let consumed = c.load(Ordering::SeqCst);
            let produced = p.load(Ordering::SeqCst);
            let in_flight = produced - consumed;
            assert!(
                in_flight <= capacity,
                "{in_flight} items in flight, capacity is {capacity}"
            );
            widest = widest.max(in_flight);
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        widest
    });

    let report = pipeline.run().await.expect("pipeline runs");
    let widest = watcher.await.expect("watcher");
    assert_eq!(consumed.load(Ordering::SeqCst), 400);
    assert_eq!(report.stages[4].items_in, 400);
    // The buffers did fill: the bound above was approached, not trivially met.
    assert!(
        widest >= channels * (BUDGET / ITEM) as u64,
        "widest gap {widest}"
    );
    for stage in &report.stages[1..] {
        assert!(stage.peak_buffered_bytes <= BUDGET as u64, "{stage:?}");
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_stalled_sink_stops_the_source() {
    let produced = Arc::new(AtomicU64::new(0));
    let consumed = Arc::new(AtomicU64::new(0));
    let pipeline = Pipeline::builder()
        .buffer(BUDGET)
        .source(
            "endless",
            Numbers {
                size: ITEM,
                count: None,
                produced: Arc::clone(&produced),
            },
        )
        .transform("pass", Pass)
        .sink(
            "stalled",
            SlowSink {
                delay: Duration::from_secs(3600),
                consumed: Arc::clone(&consumed),
            },
        );
    let token = pipeline.cancel_token();
    let run = tokio::spawn(pipeline.run());
    tokio::time::sleep(Duration::from_secs(60)).await;
    // 2 channels of 4 items, plus one item in each of the 3 stages.
    assert_eq!(produced.load(Ordering::SeqCst), 2 * 4 + 3);
    token.cancel();
    let err = run.await.expect("joined").expect_err("cancelled");
    assert!(err.is_cancelled(), "{err}");
}
