//! End-to-end acknowledgement through a running pipeline: a source's position becomes
//! committable only once every part of its item is durable in the sink, and a failure
//! leaves nothing committable past the first item that was not written.

use weir_runtime::{AckToken, BoxError, Emit, Ledger, Pipeline, Sink, Source, Transform, Weighted};

struct Item {
    n: i64,
    ack: AckToken,
}

impl Weighted for Item {
    fn weight(&self) -> usize {
        8
    }
}

/// Positions 0..count in one lane.
struct Numbers {
    ledger: Ledger<u8>,
    next: i64,
    count: i64,
}

impl Source for Numbers {
    type Item = Item;
    async fn next(&mut self) -> Result<Option<Item>, BoxError> {
        if self.next == self.count {
            return Ok(None);
        }
        let n = self.next;
        self.next += 1;
        Ok(Some(Item {
            n,
            ack: self.ledger.track(&0, n),
        }))
    }
}

/// Drops multiples of 3 (acking them), splits the rest in two parts.
struct DropOrSplit;

impl Transform for DropOrSplit {
    type In = Item;
    type Out = Item;
    async fn apply(&mut self, item: Item, out: &mut Emit<'_, Item>) -> Result<(), BoxError> {
        if item.n % 3 == 0 {
            item.ack.ack();
            return Ok(());
        }
        out.send(Item {
            n: item.n,
            ack: item.ack.clone(),
        })
        .await?;
        out.send(item).await
    }
}

/// Holds tokens until `flush`, the way a sink batches before an fsync; fails on `fail_at`.
struct Batching {
    held: Vec<AckToken>,
    fail_at: Option<i64>,
}

impl Sink for Batching {
    type Item = Item;
    async fn write(&mut self, item: Item) -> Result<(), BoxError> {
        if Some(item.n) == self.fail_at {
            return Err(format!("cannot write item {}", item.n).into());
        }
        self.held.push(item.ack);
        Ok(())
    }
    async fn flush(&mut self) -> Result<(), BoxError> {
        self.held.drain(..).for_each(AckToken::ack);
        Ok(())
    }
    async fn finish(&mut self) -> Result<(), BoxError> {
        self.flush().await
    }
}

/// Runs 1000 positions through drop-or-split into a batching sink failing at `fail_at`.
async fn run(
    fail_at: Option<i64>,
) -> (
    Ledger<u8>,
    Result<weir_runtime::Report, weir_runtime::PipelineError>,
) {
    let ledger = Ledger::new();
    let ran = Pipeline::builder()
        .buffer(64)
        .source(
            "numbers",
            Numbers {
                ledger: ledger.clone(),
                next: 0,
                count: 1000,
            },
        )
        .transform("drop-or-split", DropOrSplit)
        .sink(
            "batching",
            Batching {
                held: Vec::new(),
                fail_at,
            },
        )
        .run()
        .await;
    (ledger, ran)
}

#[tokio::test]
async fn every_position_is_committable_after_a_clean_run() {
    let (ledger, ran) = run(None).await;
    ran.expect("ran");
    assert_eq!(ledger.advanced(), vec![(0, 1000)]);
    assert_eq!(ledger.pending(), 0);
}

#[tokio::test]
async fn a_failed_write_leaves_nothing_committable_past_it() {
    let (ledger, ran) = run(Some(500)).await;
    let err = ran.expect_err("the sink fails");
    assert_eq!(err.stage, "batching");
    let marks = ledger.advanced();
    assert_eq!(marks.len(), 1);
    assert!(
        marks[0].1 <= 500,
        "committable past the failed item: {marks:?}"
    );
}
