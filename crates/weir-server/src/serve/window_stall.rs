//! Cuts off an HTTP/2 client that gives one of its streams no window for too long.
//!
//! hyper polls a stream's response body again only once the client has given the stream
//! window for the last chunk, so the body of a stream its client stopped reading is never
//! polled and cannot notice; nor does the connection's socket fill, since nothing is sent.
//! Each response body of the connection records when it handed a chunk that hyper has not
//! come back after, and the connection's task closes the connection once one has waited
//! past the stall limit: hyper gives weir no way to reset the one stream. Without this, a
//! client whose SETTINGS open streams with no window holds their slots for ever.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::stall::StallLimit;

/// Above the streams a connection has open at once (100), so that pruning is rare.
const PRUNE_AT: usize = 256;

/// The response bodies of one HTTP/2 connection, each with how long it has waited for its
/// client's window.
#[derive(Clone)]
pub struct WindowWaits(Arc<Waits>);

struct Waits {
    streams: Mutex<Vec<Weak<Waiting>>>,
    opened: Notify,
    epoch: Instant,
}

/// Since when hyper has not come back to the stream's body after it handed a chunk, or
/// after it was made (milliseconds since the connection's epoch, plus one); 0 while not.
#[derive(Default)]
struct Waiting(AtomicU64);

impl WindowWaits {
    pub fn new() -> Self {
        WindowWaits(Arc::new(Waits {
            streams: Mutex::new(Vec::new()),
            opened: Notify::new(),
            epoch: Instant::now(),
        }))
    }

    /// `body`, recording how long it waits for the client's window. It waits from the
    /// start: hyper polls a body first only once its stream has window.
    pub fn watch(&self, body: Body) -> Body {
        let waiting = Arc::new(Waiting(AtomicU64::new(self.since())));
        let mut streams = self.streams();
        // Finished streams are let go here too: between scans, a busy connection could
        // make thousands.
        if streams.len() >= PRUNE_AT {
            streams.retain(|w| w.strong_count() > 0);
        }
        streams.push(Arc::downgrade(&waiting));
        drop(streams);
        self.0.opened.notify_one();
        Body::new(Watched {
            inner: body,
            waiting,
            epoch: self.0.epoch,
        })
    }

    fn since(&self) -> u64 {
        since(self.0.epoch)
    }

    /// Completes once a stream has waited for its client's window past `limit` (checked
    /// at least every half limit: it is noticed within one and a half).
    pub async fn first_stall(&self, limit: &StallLimit) {
        loop {
            let (open, oldest) = self.scan();
            if open == 0 {
                self.0.opened.notified().await;
                continue;
            }
            let limit = limit.get().max(Duration::from_millis(1));
            let check = match oldest {
                Some(since) if since.elapsed() >= limit => return,
                Some(since) => (since + limit).min(Instant::now() + limit / 2),
                None => Instant::now() + limit / 2,
            };
            tokio::time::sleep_until(check).await;
        }
    }

    /// Streams still open, and when the one waiting longest began to wait.
    fn scan(&self) -> (usize, Option<Instant>) {
        let mut streams = self.streams();
        streams.retain(|w| w.strong_count() > 0);
        let oldest = streams
            .iter()
            .filter_map(Weak::upgrade)
            .map(|w| w.0.load(Ordering::Relaxed))
            .filter(|&at| at > 0)
            .min()
            .map(|at| self.0.epoch + Duration::from_millis(at - 1));
        (streams.len(), oldest)
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Waiting>>> {
        self.0
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Now, as a `Waiting` value: milliseconds since `epoch`, plus one.
fn since(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64 + 1
}

/// A response body that records when it hands out data and when hyper comes back for more.
struct Watched {
    inner: Body,
    waiting: Arc<Waiting>,
    epoch: Instant,
}

impl hyper::body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.waiting.0.store(0, Ordering::Relaxed);
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            if data.is_some_and(|d| !d.is_empty()) {
                self.waiting.0.store(since(self.epoch), Ordering::Relaxed);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn a_body_that_hyper_does_not_come_back_to_is_a_stall_past_the_limit() {
        let waits = WindowWaits::new();
        let limit = StallLimit::new(Duration::from_secs(10));
        let mut body = waits.watch(Body::from_stream(futures::stream::iter(
            ["a", "b"].map(|s| Ok::<_, std::io::Error>(Bytes::from(s))),
        )));
        assert!(waits.first_stall(&limit).now_or_never().is_none());
        // hyper takes one chunk and comes back 9 s later: no stall.
        body.frame().await.unwrap().unwrap();
        tokio::time::advance(Duration::from_secs(9)).await;
        body.frame().await.unwrap().unwrap();
        let stall = tokio::time::timeout(Duration::from_secs(9), waits.first_stall(&limit)).await;
        assert!(stall.is_err(), "9 s of waiting is under the limit");
        // The second chunk has now waited 9 s; 1 s more is the limit.
        let started = Instant::now();
        waits.first_stall(&limit).await;
        assert!(
            started.elapsed() <= Duration::from_secs(6),
            "{:?}",
            started.elapsed()
        );
        drop(body);
        let unpolled = waits.watch(Body::empty());
        let started = Instant::now();
        waits.first_stall(&limit).await;
        assert!(
            started.elapsed() >= limit.get(),
            "a body hyper never polled stalled early: {:?}",
            started.elapsed()
        );
        drop(unpolled);
        for _ in 0..10 * PRUNE_AT {
            drop(waits.watch(Body::empty()));
        }
        assert!(
            waits.streams().len() <= PRUNE_AT,
            "finished streams were kept"
        );
        assert!(
            tokio::time::timeout(Duration::from_secs(60), waits.first_stall(&limit))
                .await
                .is_err(),
            "a finished stream is not watched"
        );
    }
}
