//! Cuts off an HTTP/2 stream whose client gives it no window for too long.
//!
//! hyper polls a stream's response body again only once the client has given the stream
//! window for the last chunk, so the body of a stream its client stopped reading is never
//! polled and cannot notice; nor does the connection's socket fill, since nothing is sent.
//! Each response body of the connection marks when hyper has not come back to it, the
//! connection's task notes the time it first sees the mark, and drops the body of a
//! stream that has waited past the stall limit: its upstream, buffer and slot go at once,
//! the connection's other streams go on, and hyper resets the stream if its client ever
//! gives it window. Without this, a client whose SETTINGS open streams with no window
//! holds their slots for ever.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
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
    streams: Mutex<Vec<Weak<Watch>>>,
    opened: Notify,
    epoch: Instant,
    peer: SocketAddr,
}

/// One stream's response body, taken away when the stream is cut off.
struct Watch {
    /// Since when hyper has not come back to the body after it handed a chunk, or after
    /// it was made (milliseconds since the connection's epoch, plus one); `UNSEEN` until
    /// the cutter first sees it so (a clock read per chunk cost more than the rest of the
    /// watch); 0 while not waiting.
    waiting: AtomicU64,
    body: Mutex<Option<Body>>,
}

impl Watch {
    fn body(&self) -> MutexGuard<'_, Option<Body>> {
        self.body.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl WindowWaits {
    pub fn new(peer: SocketAddr) -> Self {
        WindowWaits(Arc::new(Waits {
            streams: Mutex::new(Vec::new()),
            opened: Notify::new(),
            epoch: Instant::now(),
            peer,
        }))
    }

    /// `body`, recording how long it waits for the client's window. It waits from the
    /// start: hyper polls a body first only once its stream has window.
    pub fn watch(&self, body: Body) -> Body {
        let ended = hyper::body::Body::is_end_stream(&body);
        let watch = Arc::new(Watch {
            waiting: AtomicU64::new(UNSEEN),
            body: Mutex::new(Some(body)),
        });
        let mut streams = self.streams();
        // Finished streams are let go here too: between scans, a busy connection could
        // make thousands.
        if streams.len() >= PRUNE_AT {
            streams.retain(|w| w.strong_count() > 0);
        }
        streams.push(Arc::downgrade(&watch));
        drop(streams);
        self.0.opened.notify_one();
        Body::new(Watched { watch, ended })
    }

    /// Runs for the connection's life, cutting off each stream that has waited for its
    /// client's window past `limit` (checked at least every half limit: a stream is cut
    /// within one and a half).
    pub async fn cut_stalled(&self, limit: &StallLimit) -> Infallible {
        loop {
            let limit = limit.get().max(Duration::from_millis(1));
            let (open, oldest) = self.cut(limit);
            if open == 0 {
                self.0.opened.notified().await;
                continue;
            }
            let half = Instant::now() + limit / 2;
            let check = oldest.map_or(half, |since| (since + limit).min(half));
            tokio::time::sleep_until(check).await;
        }
    }

    /// Drops the bodies that have waited past `limit`; the streams still open, and since
    /// when the one of them waiting longest has waited.
    fn cut(&self, limit: Duration) -> (usize, Option<Instant>) {
        let mut cut = Vec::new();
        let mut oldest = None::<Instant>;
        let mut streams = self.streams();
        streams.retain(|w| w.strong_count() > 0);
        for watch in streams.iter().filter_map(Weak::upgrade) {
            let mut at = watch.waiting.load(Ordering::Relaxed);
            if at == UNSEEN {
                let now = since(self.0.epoch);
                // Lost only to the body being polled again, which ends this wait.
                if watch
                    .waiting
                    .compare_exchange(UNSEEN, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                at = now;
            }
            if at == 0 {
                continue;
            }
            let since = self.0.epoch + Duration::from_millis(at - 1);
            if since.elapsed() < limit {
                oldest = Some(oldest.map_or(since, |o| o.min(since)));
            } else if let Some(body) = watch.body().take() {
                cut.push(body);
            }
        }
        let open = streams.len();
        drop(streams);
        if !cut.is_empty() {
            let (peer, ms) = (self.0.peer, limit.as_millis());
            tracing::info!(%peer, streams = cut.len(), "HTTP/2 streams got no window for {ms} ms: cut off");
        }
        // Dropped here, with no lock held: a body lets go of its upstream and its slot.
        drop(cut);
        (open, oldest)
    }

    fn streams(&self) -> MutexGuard<'_, Vec<Weak<Watch>>> {
        self.0
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A `Watch::waiting` value: waiting, since a time the cutter has yet to note.
const UNSEEN: u64 = u64::MAX;

/// Now, as a `Watch::waiting` value.
fn since(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64 + 1
}

/// A response body that records when it hands out data and when hyper comes back for more.
struct Watched {
    watch: Arc<Watch>,
    /// The inner body's `is_end_stream` after its last frame, which hyper asks after
    /// every chunk: kept here so that the answer takes no lock.
    ended: bool,
}

impl hyper::body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.watch.waiting.store(0, Ordering::Relaxed);
        let mut body = self.watch.body();
        let Some(inner) = body.as_mut() else {
            let why = "the client gave this stream no window for too long";
            return Poll::Ready(Some(Err(axum::Error::new(io::Error::new(
                io::ErrorKind::TimedOut,
                why,
            )))));
        };
        let frame = ready!(Pin::new(&mut *inner).poll_frame(cx));
        let ended = inner.is_end_stream();
        drop(body);
        self.ended = ended;
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            if data.is_some_and(|d| !d.is_empty()) {
                self.watch.waiting.store(UNSEEN, Ordering::Relaxed);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        self.watch
            .body()
            .as_ref()
            .map_or_else(SizeHint::default, |b| b.size_hint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{FutureExt, StreamExt};
    use http_body_util::BodyExt;
    use tokio::sync::oneshot::{self, error::TryRecvError};

    fn waits() -> WindowWaits {
        WindowWaits::new("127.0.0.1:1".parse().unwrap())
    }

    /// A body of `chunks` whose dropping `dropped` sees.
    fn body(chunks: &'static [&'static str]) -> (Body, oneshot::Receiver<()>) {
        let (tx, dropped) = oneshot::channel::<()>();
        let stream =
            futures::stream::iter(chunks.iter().map(|s| Ok::<_, io::Error>(Bytes::from(*s))));
        let body = Body::from_stream(stream.map(move |chunk| {
            let _held = &tx;
            chunk
        }));
        (body, dropped)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_hyper_does_not_come_back_to_is_dropped_past_the_limit() {
        let waits = waits();
        let limit = StallLimit::new(Duration::from_secs(10));
        let cutter = tokio::spawn({
            let waits = waits.clone();
            let limit = limit.clone();
            async move { waits.cut_stalled(&limit).await }
        });
        let (mut body, mut dropped) = body(&["a", "b", "c"]);
        body = waits.watch(body);
        // hyper takes one chunk and comes back 9 s later: not cut. Slept, not advanced: the
        // cutter notes a wait when it looks, and a jump of the clock would skip its looks.
        body.frame().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_secs(9)).await;
        body.frame().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_secs(9)).await;
        tokio::task::yield_now().await;
        assert_eq!(
            dropped.try_recv(),
            Err(TryRecvError::Empty),
            "9 s of waiting is under the limit"
        );
        // The second chunk has now waited 9 s; 1 s more is the limit.
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(60), &mut dropped)
            .await
            .expect("the stalled body was not dropped")
            .unwrap_err();
        assert!(
            started.elapsed() <= Duration::from_secs(6),
            "{:?}",
            started.elapsed()
        );
        let err = body.frame().await.expect("a frame").unwrap_err();
        assert!(err.to_string().contains("no window"), "{err}");
        cutter.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_hyper_never_polled_is_dropped_past_the_limit_and_others_are_not() {
        let waits = waits();
        let limit = StallLimit::new(Duration::from_secs(10));
        let (never, mut never_dropped) = body(&["a"]);
        let _never = waits.watch(never);
        let (busy, mut busy_dropped) = body(&["a", "b", "c", "d", "e"]);
        let mut busy = waits.watch(busy);
        let cutter = tokio::spawn({
            let (waits, limit) = (waits.clone(), limit.clone());
            async move { waits.cut_stalled(&limit).await }
        });
        let started = Instant::now();
        for _ in 0..4 {
            tokio::time::advance(Duration::from_secs(3)).await;
            busy.frame().await.unwrap().unwrap();
        }
        tokio::time::timeout(Duration::from_secs(60), &mut never_dropped)
            .await
            .expect("the body hyper never polled was not dropped")
            .unwrap_err();
        assert!(started.elapsed() >= limit.get(), "{:?}", started.elapsed());
        assert_eq!(
            busy_dropped.try_recv(),
            Err(TryRecvError::Empty),
            "a stream hyper keeps polling was cut"
        );
        cutter.abort();
    }

    #[test]
    fn finished_streams_are_let_go_of() {
        let waits = waits();
        for _ in 0..10 * PRUNE_AT {
            drop(waits.watch(Body::empty()));
        }
        assert!(
            waits.streams().len() <= PRUNE_AT,
            "finished streams were kept"
        );
        assert!(waits
            .cut_stalled(&StallLimit::new(Duration::from_secs(1)))
            .now_or_never()
            .is_none());
        assert!(waits.streams().is_empty());
    }
}
