//! Test stages shared by the runtime's integration tests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weir_runtime::{BoxError, Emit, Sink, Source, Transform};

/// Emits `count` items of `size` bytes (endless when `count` is `None`), counting them.
pub struct Numbers {
    pub size: usize,
    pub count: Option<u64>,
    pub produced: Arc<AtomicU64>,
}

impl Source for Numbers {
    type Item = Vec<u8>;
    async fn next(&mut self) -> Result<Option<Vec<u8>>, BoxError> {
        let n = self.produced.load(Ordering::SeqCst);
        if self.count.is_some_and(|c| n >= c) {
            return Ok(None);
        }
        self.produced.fetch_add(1, Ordering::SeqCst);
        Ok(Some(vec![(n % 251) as u8; self.size]))
    }
}

/// Identity.
pub struct Pass;

impl Transform for Pass {
    type In = Vec<u8>;
    type Out = Vec<u8>;
    async fn apply(&mut self, item: Vec<u8>, out: &mut Emit<'_, Vec<u8>>) -> Result<(), BoxError> {
        out.send(item).await
    }
}

/// Takes each item `delay` after the previous one, counting them.
pub struct SlowSink {
    pub delay: Duration,
    pub consumed: Arc<AtomicU64>,
}

impl Sink for SlowSink {
    type Item = Vec<u8>;
    async fn write(&mut self, _item: Vec<u8>) -> Result<(), BoxError> {
        tokio::time::sleep(self.delay).await;
        self.consumed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}
