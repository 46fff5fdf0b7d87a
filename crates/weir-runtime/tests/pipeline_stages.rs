//! How stages are driven: one item at a time per transform, in order, with stats that
//! name the bottleneck.

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Numbers, Pass, SlowSink};
use weir_runtime::{BoxError, Emit, Pipeline, Sink, Transform};

/// Takes its time over each item and records how many calls overlap.
struct Careful {
    active: Arc<AtomicUsize>,
    most_active: Arc<AtomicUsize>,
}

impl Transform for Careful {
    type In = Vec<u8>;
    type Out = Vec<u8>;
    async fn apply(&mut self, item: Vec<u8>, out: &mut Emit<'_, Vec<u8>>) -> Result<(), BoxError> {
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_active.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2)).await;
        out.send(item.clone()).await?;
        tokio::task::yield_now().await;
        out.send(item).await?;
        self.active.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Collect(Arc<std::sync::Mutex<Vec<u8>>>);
impl Sink for Collect {
    type Item = Vec<u8>;
    async fn write(&mut self, item: Vec<u8>) -> Result<(), BoxError> {
        self.0.lock().expect("lock").push(item[0]);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transform_gets_the_next_item_only_after_finishing_the_last() {
    let most_active = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let report = Pipeline::builder()
        .buffer(64)
        .source(
            "numbers",
            Numbers {
                size: 8,
                count: Some(50),
                produced: Arc::new(AtomicU64::new(0)),
            },
        )
        .transform(
            "careful",
            Careful {
                active: Arc::new(AtomicUsize::new(0)),
                most_active: Arc::clone(&most_active),
            },
        )
        .sink("collect", Collect(Arc::clone(&seen)))
        .run()
        .await
        .expect("runs");
    assert_eq!(most_active.load(Ordering::SeqCst), 1);
    let expected: Vec<u8> = (0..50u8).flat_map(|n| [n, n]).collect();
    assert_eq!(
        *seen.lock().expect("lock"),
        expected,
        "items kept their order"
    );
    assert_eq!(report.stages[1].items_out, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_items_and_name_the_bottleneck() {
    let report = Pipeline::builder()
        .buffer(4000)
        .source(
            "numbers",
            Numbers {
                size: 1000,
                count: Some(100),
                produced: Arc::new(AtomicU64::new(0)),
            },
        )
        .transform("pass", Pass)
        .sink(
            "slow",
            SlowSink {
                delay: Duration::from_millis(2),
                consumed: Arc::new(AtomicU64::new(0)),
            },
        )
        .run()
        .await
        .expect("runs");
    let [source, pass, sink] = &report.stages[..] else {
        panic!("three stages expected: {report}");
    };
    assert_eq!((source.items_out, source.bytes_out), (100, 100_000));
    assert_eq!(
        (pass.items_in, pass.bytes_in, pass.items_out),
        (100, 100_000, 100)
    );
    assert_eq!((sink.items_in, sink.bytes_in), (100, 100_000));
    assert_eq!(report.bottleneck.as_deref(), Some("slow"), "{report}");
    assert!(sink.busy_secs >= 0.19, "{report}");
    // The stages upstream of the slow sink spent their time waiting for it.
    assert!(source.blocked_secs > source.busy_secs, "{report}");
    assert_eq!(sink.peak_buffered_bytes, 4000, "{report}");
    assert!(report.to_string().contains("bottleneck: slow"));
}
