//! The streams and pipelines open now, each an entry of counters the console reads.
//!
//! # What
//!
//! A stream registers when it starts and is removed when its [`Watched`] handle drops
//! (with the stream's body, so a finished or abandoned stream leaves at once). An entry
//! holds atomics its stream updates as bytes go out, and handles to figures kept anyway
//! (the connection's [`Backlog`], a pipeline's stage stats, a topic subscriber's queue):
//! a snapshot reads them, it never walks a buffer.
//!
//! # Cost
//!
//! An entry is a fixed-size allocation made once per stream; it holds no bytes of the
//! stream's data, so a stream's budget has nothing of the console's to count.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use weir_runtime::StageStats;

use super::stages::StageWindow;
use crate::serve::send_queue::Backlog;

/// Bytes a stream holds in a queue of its own (a subscriber's gate, an export's channels).
pub trait Holds: Send + Sync {
    fn held(&self) -> u64;
}

/// What a stream is, fixed when it registers.
pub struct StreamInfo {
    pub route: Arc<str>,
    pub kind: &'static str,
    pub client: Option<SocketAddr>,
    /// Its share of the memory budget (the route's `buffer`).
    pub budget: u64,
    pub backlog: Option<Backlog>,
    pub holds: Option<Arc<dyn Holds>>,
    /// The stages of a stream that runs a pipeline (an export).
    pub stages: Vec<Arc<StageStats>>,
}

/// One open stream.
pub struct StreamEntry {
    pub(super) id: u64,
    pub(super) info: StreamInfo,
    pub(super) started: Instant,
    pub(super) bytes_out: AtomicU64,
    /// The size of the last chunk handed to the connection: what waits in hyper while the
    /// connection has not yet given all of it to the kernel.
    pub(super) last_chunk: AtomicU64,
    rate: Mutex<RateMark>,
    pub(super) window: StageWindow,
}

struct RateMark {
    at: Instant,
    bytes: u64,
    rate: f64,
}

/// How long a rate is measured over: a rate read more often is the last one measured.
const RATE_WINDOW: Duration = Duration::from_secs(1);

impl StreamEntry {
    /// Bytes this stream holds in weir's heap now: its own queue and the chunk waiting
    /// in hyper (the kernel's send queue is apart).
    pub(super) fn buffered(&self) -> u64 {
        let held = self.info.holds.as_ref().map_or(0, |h| h.held());
        let unsent = match &self.info.backlog {
            Some(b) if b.is_waiting() => self.last_chunk.load(Ordering::Relaxed),
            _ => 0,
        };
        held + unsent
    }

    /// What sorts the worst first: bytes waiting for the client, in weir and in the kernel
    /// (as the connection last saw its send queue).
    pub(super) fn waiting(&self) -> u64 {
        self.buffered()
            + self
                .info
                .backlog
                .as_ref()
                .map_or(0, Backlog::last_send_queue)
    }

    /// Slow at the last flush, or behind now: a write waits for room, or a chunk for the
    /// kernel (a client that stopped reading may fill its queue in one write, with no flush
    /// after it).
    pub(super) fn is_slow(&self) -> bool {
        self.info
            .backlog
            .as_ref()
            .is_some_and(|b| b.is_slow() || b.is_waiting())
    }

    /// Bytes per second out, over the last second or so.
    pub(super) fn rate(&self, now: Instant) -> f64 {
        let bytes = self.bytes_out.load(Ordering::Relaxed);
        let mut mark = self.rate.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(mark.at);
        if elapsed >= RATE_WINDOW {
            mark.rate = bytes.saturating_sub(mark.bytes) as f64 / elapsed.as_secs_f64();
            mark.at = now;
            mark.bytes = bytes;
        } else if mark.bytes == 0 && elapsed > Duration::ZERO {
            // A stream younger than the window: its rate so far.
            return bytes as f64 / elapsed.as_secs_f64();
        }
        mark.rate
    }
}

/// A registered stream: counts what goes out; removes the entry when dropped.
pub struct Watched {
    registry: Registry,
    entry: Arc<StreamEntry>,
}

impl Watched {
    /// A chunk of `bytes` was handed to the connection.
    pub fn sent(&self, bytes: usize) {
        self.entry
            .bytes_out
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.entry.last_chunk.store(bytes as u64, Ordering::Relaxed);
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.registry.streams().remove(&self.entry.id);
        self.registry.0.changed.notify_waiters();
    }
}

/// A long-running pipeline (`[[pipeline]]`) as the console shows it.
pub struct PipelineEntry {
    pub name: String,
    pub stages: Vec<Arc<StageStats>>,
    /// Consumer lag by (topic, partition), read when shown.
    pub lag: Box<dyn Fn() -> Vec<(String, i32, i64)> + Send + Sync>,
    pub acks_pending: Box<dyn Fn() -> usize + Send + Sync>,
    pub(super) window: StageWindow,
}

impl PipelineEntry {
    pub fn new(
        name: String,
        stages: Vec<Arc<StageStats>>,
        lag: Box<dyn Fn() -> Vec<(String, i32, i64)> + Send + Sync>,
        acks_pending: Box<dyn Fn() -> usize + Send + Sync>,
    ) -> Self {
        PipelineEntry {
            name,
            stages,
            lag,
            acks_pending,
            window: StageWindow::default(),
        }
    }
}

/// A registered pipeline; removed when dropped.
pub struct WatchedPipeline {
    registry: Registry,
    id: u64,
}

impl Drop for WatchedPipeline {
    fn drop(&mut self) {
        self.registry.pipelines().remove(&self.id);
    }
}

/// Every stream and pipeline open in this server.
#[derive(Clone, Default)]
pub struct Registry(Arc<Inner>);

#[derive(Default)]
struct Inner {
    streams: Mutex<HashMap<u64, Arc<StreamEntry>>>,
    pipelines: Mutex<HashMap<u64, Arc<PipelineEntry>>>,
    next_id: AtomicU64,
    /// Wakes the console's event streams when a stream or pipeline comes or goes.
    changed: tokio::sync::Notify,
}

impl Registry {
    /// The registry the server put in the request's extensions (none outside a server).
    pub fn of(extensions: &axum::http::Extensions) -> Option<Registry> {
        extensions.get::<Registry>().cloned()
    }

    pub fn register(&self, info: StreamInfo) -> Watched {
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let entry = Arc::new(StreamEntry {
            id,
            info,
            started: now,
            bytes_out: AtomicU64::new(0),
            last_chunk: AtomicU64::new(0),
            rate: Mutex::new(RateMark {
                at: now,
                bytes: 0,
                rate: 0.0,
            }),
            window: StageWindow::default(),
        });
        self.streams().insert(id, Arc::clone(&entry));
        self.0.changed.notify_waiters();
        Watched {
            registry: self.clone(),
            entry,
        }
    }

    pub fn register_pipeline(&self, pipeline: PipelineEntry) -> WatchedPipeline {
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        self.pipelines().insert(id, Arc::new(pipeline));
        self.0.changed.notify_waiters();
        WatchedPipeline {
            registry: self.clone(),
            id,
        }
    }

    /// Ready once a stream or pipeline has come or gone since it was first polled.
    pub(super) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.0.changed.notified()
    }

    pub(super) fn streams(&self) -> MutexGuard<'_, HashMap<u64, Arc<StreamEntry>>> {
        self.0
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn pipelines(&self) -> MutexGuard<'_, HashMap<u64, Arc<PipelineEntry>>> {
        self.0
            .pipelines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_small_and_goes_with_its_stream() {
        // The entry and its Arc's counts; the route's name is shared, not copied.
        let size = std::mem::size_of::<StreamEntry>() + 2 * std::mem::size_of::<usize>();
        println!("a stream's console entry: {size} bytes");
        assert!(size <= 512, "{size} bytes");
        let registry = Registry::default();
        let route: Arc<str> = Arc::from("/r");
        let watched = registry.register(StreamInfo {
            route: Arc::clone(&route),
            kind: "topic",
            client: None,
            budget: 1,
            backlog: None,
            holds: None,
            stages: Vec::new(),
        });
        assert_eq!(Arc::strong_count(&route), 2);
        drop(watched);
        assert!(registry.streams().is_empty());
        assert_eq!(
            Arc::strong_count(&route),
            1,
            "the entry is freed with its stream"
        );
    }
}
