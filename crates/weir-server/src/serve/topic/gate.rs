//! The gate between a producer that cannot be paused and each of its subscribers: a queue
//! bounded in bytes per subscriber, and a policy for when it is full.
//!
//! Every subscriber keeps the order of what was published. A subscriber that lost messages
//! is told how many before its next message; one cut off is told why, then closed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::Notify;

/// What a full subscriber's queue does to the next message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// The publisher waits for room: nothing is lost, the slowest subscriber sets the pace.
    Block,
    /// The oldest queued messages make room.
    DropOldest,
    /// The new message is dropped for this subscriber.
    DropNewest,
    /// The subscriber is told and closed.
    Disconnect,
}

/// What a subscriber's stream takes next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// `count` messages were dropped since the last message taken.
    Dropped(u64),
    Message(Bytes),
    /// The subscriber was too slow under `disconnect`.
    Disconnected,
    /// Nothing yet.
    Empty,
}

/// What a subscriber's queue holds, in the order the subscriber learns it.
enum Entry {
    Message(Bytes),
    /// Messages lost at this point of the stream.
    Dropped(u64),
}

#[derive(Default)]
struct Queue {
    entries: VecDeque<Entry>,
    /// Bytes of the messages queued (drop notices weigh nothing: at most one between two
    /// messages, merged).
    bytes: usize,
    messages: usize,
    disconnected: bool,
}

impl Queue {
    fn note_drop_at_back(&mut self) {
        match self.entries.back_mut() {
            Some(Entry::Dropped(n)) => *n += 1,
            _ => self.entries.push_back(Entry::Dropped(1)),
        }
    }

    /// Drops the oldest message, noting it where it was.
    fn drop_oldest(&mut self) -> bool {
        let mut lost = 0;
        while let Some(front) = self.entries.pop_front() {
            match front {
                Entry::Dropped(n) => lost += n,
                Entry::Message(m) => {
                    self.bytes -= m.len();
                    self.messages -= 1;
                    lost += 1;
                    break;
                }
            }
        }
        if lost == 0 {
            return false;
        }
        match self.entries.front_mut() {
            Some(Entry::Dropped(n)) => *n += lost,
            _ => self.entries.push_front(Entry::Dropped(lost)),
        }
        true
    }
}

/// Whether an offered message was dealt with, or its publisher must wait (`block`).
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    Done,
    Wait,
}

/// Counters of one topic, or of one of its subscribers.
#[derive(Default)]
pub struct TopicCounters {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
    pub disconnected: AtomicU64,
}

/// One subscriber's queue.
pub struct Subscriber {
    queue: Mutex<Queue>,
    capacity: usize,
    /// Wakes the subscriber's stream: a message, a drop notice or a disconnection.
    pub ready: Notify,
    /// Wakes a publisher waiting for room (`block`).
    room: Notify,
    counters: Arc<TopicCounters>,
    /// This subscriber's share of the topic's counters (`published`: offered to it).
    pub own: TopicCounters,
}

impl Subscriber {
    pub fn new(capacity: usize, counters: Arc<TopicCounters>) -> Self {
        Subscriber {
            queue: Mutex::new(Queue::default()),
            capacity: capacity.max(1),
            ready: Notify::new(),
            room: Notify::new(),
            counters,
            own: TopicCounters::default(),
        }
    }

    /// Counts one event in this subscriber's counters and its topic's.
    fn count(&self, which: fn(&TopicCounters) -> &AtomicU64) {
        which(&self.counters).fetch_add(1, Ordering::Relaxed);
        which(&self.own).fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes of the messages waiting in this subscriber's queue.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Offers `message` under `policy`. A message larger than the whole queue passes when
    /// the queue holds no message.
    pub fn offer(&self, message: &Bytes, policy: Policy) -> Offer {
        let mut q = self.lock();
        if q.disconnected {
            return Offer::Done;
        }
        let fits = |q: &Queue| q.messages == 0 || q.bytes + message.len() <= self.capacity;
        if !fits(&q) {
            match policy {
                Policy::Block => return Offer::Wait,
                Policy::DropNewest => {
                    q.note_drop_at_back();
                    self.count(|c| &c.dropped);
                    return Offer::Done;
                }
                Policy::DropOldest => {
                    while !fits(&q) && q.drop_oldest() {
                        self.count(|c| &c.dropped);
                    }
                }
                Policy::Disconnect => {
                    q.disconnected = true;
                    q.entries.clear();
                    q.bytes = 0;
                    q.messages = 0;
                    self.count(|c| &c.disconnected);
                    drop(q);
                    self.ready.notify_one();
                    return Offer::Done;
                }
            }
        }
        q.bytes += message.len();
        q.messages += 1;
        q.entries.push_back(Entry::Message(message.clone()));
        drop(q);
        self.ready.notify_one();
        Offer::Done
    }

    /// Waits until a message of `len` bytes fits, for `offer` under `block`.
    pub async fn room(&self, len: usize) {
        loop {
            let waiting = self.room.notified();
            {
                let q = self.lock();
                if q.disconnected || q.messages == 0 || q.bytes + len <= self.capacity {
                    return;
                }
            }
            waiting.await;
        }
    }

    /// The next thing for the subscriber's stream, in order.
    pub fn take(&self) -> Next {
        let mut q = self.lock();
        if q.disconnected {
            return Next::Disconnected;
        }
        match q.entries.pop_front() {
            Some(Entry::Dropped(n)) => Next::Dropped(n),
            Some(Entry::Message(m)) => {
                q.bytes -= m.len();
                q.messages -= 1;
                drop(q);
                self.count(|c| &c.delivered);
                self.room.notify_one();
                Next::Message(m)
            }
            None => Next::Empty,
        }
    }

    /// The subscriber is gone: a publisher waiting on it goes on.
    pub fn close(&self) {
        self.lock().disconnected = true;
        self.room.notify_one();
    }
}

impl crate::serve::console::Holds for Subscriber {
    fn held(&self) -> u64 {
        self.queued_bytes() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(capacity: usize) -> Subscriber {
        Subscriber::new(capacity, Arc::default())
    }

    fn m(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn drop_newest_counts_and_tells_before_the_next_message() {
        let s = sub(4);
        for x in ["aa", "bb", "cc", "dd"] {
            assert_eq!(s.offer(&m(x), Policy::DropNewest), Offer::Done);
        }
        s.offer(&m("ee"), Policy::DropNewest);
        assert_eq!(s.take(), Next::Message(m("aa")));
        assert_eq!(s.take(), Next::Message(m("bb")));
        assert_eq!(
            s.take(),
            Next::Dropped(3),
            "cc, dd and ee were lost after bb"
        );
        s.offer(&m("ff"), Policy::DropNewest);
        assert_eq!(s.take(), Next::Message(m("ff")));
        assert_eq!(s.take(), Next::Empty);
    }

    #[test]
    fn drop_oldest_keeps_the_newest_in_order() {
        let s = sub(4);
        for x in ["aa", "bb", "cc", "dd"] {
            assert_eq!(s.offer(&m(x), Policy::DropOldest), Offer::Done);
        }
        assert_eq!(s.take(), Next::Dropped(2));
        assert_eq!(s.take(), Next::Message(m("cc")));
        assert_eq!(s.take(), Next::Message(m("dd")));
    }

    #[test]
    fn block_asks_the_publisher_to_wait_and_disconnect_closes() {
        let s = sub(4);
        assert_eq!(s.offer(&m("aaaa"), Policy::Block), Offer::Done);
        assert_eq!(s.offer(&m("b"), Policy::Block), Offer::Wait);
        assert_eq!(s.take(), Next::Message(m("aaaa")));
        assert_eq!(s.offer(&m("b"), Policy::Block), Offer::Done);
        let d = sub(1);
        d.offer(&m("x"), Policy::Disconnect);
        d.offer(&m("y"), Policy::Disconnect);
        assert_eq!(d.take(), Next::Disconnected);
    }

    #[tokio::test]
    async fn room_waits_until_the_message_fits() {
        use futures::FutureExt;
        let s = sub(4);
        s.offer(&m("aaa"), Policy::Block);
        assert!(
            s.room(2).now_or_never().is_none(),
            "3 + 2 bytes do not fit in 4"
        );
        assert!(s.room(1).now_or_never().is_some());
        assert_eq!(s.take(), Next::Message(m("aaa")));
        assert!(s.room(2).now_or_never().is_some());
    }

    #[test]
    fn a_message_larger_than_the_queue_passes_when_it_is_empty() {
        let s = sub(2);
        assert_eq!(s.offer(&m("toolarge"), Policy::Block), Offer::Done);
        assert_eq!(s.take(), Next::Message(m("toolarge")));
    }
}
