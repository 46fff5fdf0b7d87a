//! A single-producer, single-consumer channel whose capacity is counted in bytes.
//!
//! Hand-written because no well-kept crate bounds a queue by the weight of its items:
//! tokio's and flume's bounded channels count items, which lets a queue of "16 chunks"
//! hold 16 bytes or 16 GiB.
//!
//! # Rules
//!
//! - An item is accepted when it fits in the remaining budget, or when the channel is
//!   empty: an item larger than the whole budget therefore passes, alone, so a stage can
//!   never deadlock on an oversized item.
//! - Otherwise [`Sender::send`] waits until the receiver has taken enough.
//! - Dropping the [`Receiver`] drops every queued item and makes the next send fail;
//!   dropping the [`Sender`] lets the receiver drain what is queued, then see the end.
//!
//! # Cancel safety
//!
//! Dropping a pending `send` future drops its item; dropping a pending `recv` loses nothing.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use crate::weight::Weighted;

/// Creates a channel that holds at most `capacity` bytes (but always one item).
pub fn channel<T: Weighted>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    channel_with_gauge(capacity, None)
}

/// As [`channel`], also adding the bytes it holds to a gauge shared by several channels.
pub fn channel_with_gauge<T: Weighted>(
    capacity: usize,
    gauge: Option<Arc<AtomicUsize>>,
) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        gauge,
        state: Mutex::new(State {
            capacity,
            queue: VecDeque::new(),
            used: 0,
            peak: 0,
            rx_waker: None,
            tx_waker: None,
            tx_alive: true,
            rx_alive: true,
        }),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

struct Shared<T> {
    gauge: Option<Arc<AtomicUsize>>,
    state: Mutex<State<T>>,
}

struct State<T> {
    capacity: usize,
    queue: VecDeque<(T, usize)>,
    used: usize,
    peak: usize,
    rx_waker: Option<Waker>,
    tx_waker: Option<Waker>,
    tx_alive: bool,
    rx_alive: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding this lock cannot leave State half-updated (every
        // critical section is panic-free), so a poisoned lock is safe to reuse.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn gauge_add(&self, n: usize) {
        if let Some(g) = &self.gauge {
            g.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn gauge_sub(&self, n: usize) {
        if let Some(g) = &self.gauge {
            g.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

/// A point-in-time view of a channel's occupancy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    pub capacity: usize,
    pub buffered: usize,
    pub peak: usize,
    pub items: usize,
}

/// The item could not be sent because the receiver is gone; it is handed back.
#[derive(Debug)]
pub struct SendError<T>(pub T);

/// The sending half.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving half.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// A handle to set a channel's capacity from elsewhere: a pipeline sizes the queue a source
/// fills on its own (a cursor's thread, say) from its budget once it knows all its channels.
pub struct CapacityHandle {
    set: Arc<dyn Fn(usize) + Send + Sync>,
    gauge: Gauge,
}

impl CapacityHandle {
    /// Sets the capacity in bytes; a sender waiting for room is woken to look again.
    pub fn set(&self, bytes: usize) {
        (self.set)(bytes)
    }

    /// The channel's occupancy, for the stats of the stage that reads it.
    pub fn gauge(&self) -> Gauge {
        self.gauge.clone()
    }
}

/// A read-only handle to watch a channel's occupancy from elsewhere.
pub struct Gauge {
    read: Arc<dyn Fn() -> Occupancy + Send + Sync>,
}

impl Gauge {
    pub fn occupancy(&self) -> Occupancy {
        (self.read)()
    }
}

impl Clone for Gauge {
    fn clone(&self) -> Self {
        Gauge {
            read: Arc::clone(&self.read),
        }
    }
}

fn occupancy_of<T>(shared: &Shared<T>) -> Occupancy {
    let st = shared.lock();
    Occupancy {
        capacity: st.capacity,
        buffered: st.used,
        peak: st.peak,
        items: st.queue.len(),
    }
}

impl<T: Weighted> Sender<T> {
    /// Sends an item, waiting while the channel lacks room for it.
    pub async fn send(&mut self, item: T) -> Result<(), SendError<T>> {
        let weight = item.weight();
        let mut item = Some(item);
        poll_fn(|cx| {
            let mut st = self.shared.lock();
            if !st.rx_alive {
                return Poll::Ready(Err(SendError(
                    item.take().expect("polled after completion"),
                )));
            }
            if st.used == 0 || st.used + weight <= st.capacity {
                st.queue
                    .push_back((item.take().expect("polled after completion"), weight));
                st.used += weight;
                st.peak = st.peak.max(st.used);
                let waker = st.rx_waker.take();
                drop(st);
                self.shared.gauge_add(weight);
                if let Some(w) = waker {
                    w.wake();
                }
                Poll::Ready(Ok(()))
            } else {
                st.tx_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

impl<T> Receiver<T> {
    /// The next item, or `None` once the sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| {
            let mut st = self.shared.lock();
            if let Some((item, weight)) = st.queue.pop_front() {
                st.used -= weight;
                let waker = st.tx_waker.take();
                drop(st);
                self.shared.gauge_sub(weight);
                if let Some(w) = waker {
                    w.wake();
                }
                Poll::Ready(Some(item))
            } else if !st.tx_alive {
                Poll::Ready(None)
            } else {
                st.rx_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    pub fn occupancy(&self) -> Occupancy {
        occupancy_of(&self.shared)
    }

    /// Whether no item is waiting right now.
    pub fn is_empty(&self) -> bool {
        self.shared.lock().queue.is_empty()
    }

    pub fn gauge(&self) -> Gauge
    where
        T: Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        Gauge {
            read: Arc::new(move || occupancy_of(&shared)),
        }
    }

    pub fn capacity_handle(&self) -> CapacityHandle
    where
        T: Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        CapacityHandle {
            gauge: self.gauge(),
            set: Arc::new(move |bytes| {
                let mut st = shared.lock();
                st.capacity = bytes;
                let waker = st.tx_waker.take();
                drop(st);
                if let Some(w) = waker {
                    w.wake();
                }
            }),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.tx_alive = false;
        let waker = st.rx_waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.rx_alive = false;
        let dropped: VecDeque<(T, usize)> = std::mem::take(&mut st.queue);
        let freed = st.used;
        st.used = 0;
        let waker = st.tx_waker.take();
        drop(st);
        self.shared.gauge_sub(freed);
        drop(dropped);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures::FutureExt;

    fn chunk(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    #[tokio::test]
    async fn sender_waits_while_full_and_resumes_after_recv() {
        let (mut tx, mut rx) = channel::<Bytes>(10);
        tx.send(chunk(6)).await.unwrap();
        tx.send(chunk(4)).await.unwrap();
        assert_eq!(rx.occupancy().buffered, 10);
        let mut pending = Box::pin(tx.send(chunk(1)));
        assert!(
            (&mut pending).now_or_never().is_none(),
            "full channel accepted an item"
        );
        assert_eq!(rx.recv().await.unwrap().len(), 6);
        assert!(
            pending.now_or_never().is_some(),
            "send did not resume after room was made"
        );
        assert_eq!(rx.occupancy().buffered, 5);
    }

    #[tokio::test]
    async fn oversized_item_passes_only_when_empty() {
        let (mut tx, mut rx) = channel::<Bytes>(10);
        tx.send(chunk(1)).await.unwrap();
        let mut big = Box::pin(tx.send(chunk(100)));
        assert!(
            (&mut big).now_or_never().is_none(),
            "oversized item joined a non-empty channel"
        );
        rx.recv().await.unwrap();
        assert!(
            big.now_or_never().is_some(),
            "oversized item did not pass an empty channel"
        );
        let occ = rx.occupancy();
        assert_eq!((occ.buffered, occ.items, occ.peak), (100, 1, 100));
    }

    #[tokio::test]
    async fn raised_capacity_wakes_a_waiting_sender() {
        let (mut tx, rx) = channel::<Bytes>(0);
        tx.send(chunk(5)).await.unwrap();
        let mut pending = Box::pin(tx.send(chunk(5)));
        assert!(
            (&mut pending).now_or_never().is_none(),
            "no room at 0 bytes"
        );
        rx.capacity_handle().set(10);
        assert!(
            pending.now_or_never().is_some(),
            "send did not see the room"
        );
        assert_eq!((rx.occupancy().capacity, rx.occupancy().buffered), (10, 10));
    }

    #[tokio::test]
    async fn receiver_drains_then_sees_end() {
        let (mut tx, mut rx) = channel::<Bytes>(10);
        tx.send(chunk(3)).await.unwrap();
        drop(tx);
        assert_eq!(rx.recv().await.map(|b| b.len()), Some(3));
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn dropped_receiver_fails_send_and_frees_gauge() {
        let gauge = Arc::new(AtomicUsize::new(0));
        let (mut tx, rx) = channel_with_gauge::<Bytes>(10, Some(Arc::clone(&gauge)));
        tx.send(chunk(7)).await.unwrap();
        assert_eq!(gauge.load(Ordering::Relaxed), 7);
        drop(rx);
        assert_eq!(gauge.load(Ordering::Relaxed), 0);
        assert!(tx.send(chunk(1)).await.is_err());
    }
}
