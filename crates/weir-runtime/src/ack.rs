//! End-to-end acknowledgement: an item's source learns when every part of it is durable.
//!
//! # What
//!
//! A source that can replay (a Kafka partition) registers each item's position in a
//! [`Ledger`] and gets an [`AckToken`] to carry with the item. A sink calls
//! [`AckToken::ack`] once the write is durable. A transform that drops an item acks its
//! token; one that splits an item clones the token into every part (the item is done when
//! every clone is acked); one that merges items joins their tokens with
//! [`AckToken::merge`]. The ledger says, per lane (a partition), the position below which
//! everything is acked: the only position a source may commit.
//!
//! # Cancel safety
//!
//! A token dropped without `ack` (a pipeline torn down by an error, an item lost in a
//! channel) marks its position *abandoned*: it never counts as done, so nothing is ever
//! committed past it. A clean stop drains the pipeline, so every token is acked first.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// What a token stands for: one position, or several tokens merged.
trait Pending: Send + Sync {
    fn abandon(&self);
}

/// Proof of one unit of work still to be made durable. Cloning it splits the work: the
/// position is done only when every clone has been acked.
#[derive(Clone, Default)]
pub struct AckToken {
    pending: Option<Arc<dyn Pending>>,
}

impl std::fmt::Debug for AckToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.pending.is_some() {
            "AckToken(pending)"
        } else {
            "AckToken(none)"
        })
    }
}

impl AckToken {
    /// A token that tracks nothing (items from a source that cannot replay).
    pub fn none() -> Self {
        AckToken { pending: None }
    }

    /// This part of the work is durable.
    pub fn ack(mut self) {
        // Dropping the reference without abandoning lets the position settle as done.
        self.pending = None;
    }

    /// One token for the work of both: done when both are acked, abandoned if either is.
    pub fn merge(self, other: AckToken) -> AckToken {
        match (&self.pending, &other.pending) {
            (None, _) => other,
            (_, None) => self,
            _ => AckToken {
                pending: Some(Arc::new(Merged {
                    parts: Mutex::new(vec![self, other]),
                })),
            },
        }
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            p.abandon();
        }
    }
}

struct Merged {
    parts: Mutex<Vec<AckToken>>,
}

impl Pending for Merged {
    fn abandon(&self) {
        // Dropping the parts as they are abandons each of them.
        self.parts.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl Drop for Merged {
    fn drop(&mut self) {
        let parts = std::mem::take(self.parts.get_mut().unwrap_or_else(|p| p.into_inner()));
        for part in parts {
            part.ack();
        }
    }
}

/// One registered position.
struct Entry<K: Lane> {
    ledger: Arc<Shared<K>>,
    lane: K,
    epoch: u64,
    position: i64,
    abandoned: AtomicBool,
}

impl<K: Lane> Pending for Entry<K> {
    fn abandon(&self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }
}

impl<K: Lane> Drop for Entry<K> {
    fn drop(&mut self) {
        let done = !self.abandoned.load(Ordering::Relaxed);
        self.ledger
            .settle(&self.lane, self.epoch, self.position, done);
    }
}

/// What identifies a lane of positions: a partition, for Kafka.
pub trait Lane: Clone + Eq + Hash + Send + Sync + 'static {}
impl<T: Clone + Eq + Hash + Send + Sync + 'static> Lane for T {}

/// Where one registered position stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    InFlight,
    Done,
    Abandoned,
}

#[derive(Default)]
struct LaneState {
    epoch: u64,
    /// Positions handed out and not yet committable, in order: the first is never done
    /// (done ones are dropped from the front; abandoned ones stay for good).
    slots: VecDeque<(i64, Slot)>,
    in_flight: usize,
    abandoned: usize,
    /// One past the highest position registered.
    next: Option<i64>,
    /// The last position reported as committable.
    committed: Option<i64>,
}

impl LaneState {
    /// The position below which everything registered is done.
    fn watermark(&self) -> Option<i64> {
        self.slots.front().map(|(p, _)| *p).or(self.next)
    }

    fn insert(&mut self, position: i64) {
        // Positions rise within a lane; a lower one (a seek back) goes in its place.
        match self.slots.back() {
            Some((last, _)) if *last >= position => {
                let at = self.slots.partition_point(|(p, _)| *p < position);
                self.slots.insert(at, (position, Slot::InFlight));
            }
            _ => self.slots.push_back((position, Slot::InFlight)),
        }
        self.in_flight += 1;
        self.next = Some(self.next.map_or(position + 1, |n| n.max(position + 1)));
    }

    fn settle(&mut self, position: i64, done: bool) {
        let at = self.slots.partition_point(|(p, _)| *p < position);
        let Some((p, slot)) = self.slots.get_mut(at) else {
            return;
        };
        if *p != position || *slot != Slot::InFlight {
            return;
        }
        self.in_flight -= 1;
        if done {
            *slot = Slot::Done;
        } else {
            *slot = Slot::Abandoned;
            self.abandoned += 1;
        }
        while self.slots.front().is_some_and(|(_, s)| *s == Slot::Done) {
            self.slots.pop_front();
        }
    }
}

struct Shared<K: Lane> {
    lanes: Mutex<HashMap<K, LaneState>>,
    settled: Condvar,
}

impl<K: Lane> Shared<K> {
    fn lock(&self) -> MutexGuard<'_, HashMap<K, LaneState>> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn settle(&self, lane: &K, epoch: u64, position: i64, done: bool) {
        let mut lanes = self.lock();
        let Some(state) = lanes.get_mut(lane) else {
            return;
        };
        if state.epoch != epoch {
            // The lane was let go (and maybe taken again) since: this ack belongs to no one.
            return;
        }
        state.settle(position, done);
        drop(lanes);
        self.settled.notify_all();
    }
}

/// The positions of every lane a source has handed out, and which of them are done.
pub struct Ledger<K: Lane> {
    shared: Arc<Shared<K>>,
}

impl<K: Lane> Clone for Ledger<K> {
    fn clone(&self) -> Self {
        Ledger {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K: Lane> Default for Ledger<K> {
    fn default() -> Self {
        Self::new()
    }
}

/// A lane's figures, for metrics and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaneFigures {
    pub in_flight: usize,
    pub abandoned: usize,
    pub committed: Option<i64>,
}

impl<K: Lane> Ledger<K> {
    pub fn new() -> Self {
        Ledger {
            shared: Arc::new(Shared {
                lanes: Mutex::new(HashMap::new()),
                settled: Condvar::new(),
            }),
        }
    }

    /// Registers `position` in `lane`; positions must rise within a lane.
    pub fn track(&self, lane: &K, position: i64) -> AckToken {
        let epoch = {
            let mut lanes = self.shared.lock();
            let state = match lanes.get_mut(lane) {
                Some(s) => s,
                None => lanes.entry(lane.clone()).or_default(),
            };
            state.insert(position);
            state.epoch
        };
        AckToken {
            pending: Some(Arc::new(Entry {
                ledger: Arc::clone(&self.shared),
                lane: lane.clone(),
                epoch,
                position,
                abandoned: AtomicBool::new(false),
            })),
        }
    }

    /// Every lane whose watermark moved since the last call, with the position to commit
    /// (the next one to read: everything below it is done). Marks them committed.
    pub fn advanced(&self) -> Vec<(K, i64)> {
        let mut lanes = self.shared.lock();
        let mut moved = Vec::new();
        for (lane, state) in lanes.iter_mut() {
            if let Some(mark) = state.watermark() {
                if state.committed != Some(mark) {
                    state.committed = Some(mark);
                    moved.push((lane.clone(), mark));
                }
            }
        }
        moved
    }

    /// Puts back a commit position that did not reach the broker, so it is offered again.
    pub fn uncommitted(&self, lane: &K) {
        if let Some(state) = self.shared.lock().get_mut(lane) {
            state.committed = None;
        }
    }

    /// The committable position of `lanes`, waiting until their items in flight are all
    /// settled or until `deadline`. Blocks the thread (it runs inside a Kafka client's
    /// rebalance callback).
    pub fn drain(&self, lanes: &[K], deadline: Instant) -> Vec<(K, i64)> {
        let mut guard = self.shared.lock();
        loop {
            let busy = lanes
                .iter()
                .any(|l| guard.get(l).is_some_and(|s| s.in_flight > 0));
            let now = Instant::now();
            if !busy || now >= deadline {
                break;
            }
            guard = self
                .shared
                .settled
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        lanes
            .iter()
            .filter_map(|l| {
                let state = guard.get_mut(l)?;
                let mark = state.watermark()?;
                state.committed = Some(mark);
                Some((l.clone(), mark))
            })
            .collect()
    }

    /// Lets go of `lane`: acks of positions handed out before are ignored from now on.
    pub fn release(&self, lane: &K) {
        let mut lanes = self.shared.lock();
        if let Some(state) = lanes.get_mut(lane) {
            let epoch = state.epoch + 1;
            *state = LaneState {
                epoch,
                ..LaneState::default()
            };
        }
    }

    /// Figures of every lane.
    pub fn figures(&self) -> Vec<(K, LaneFigures)> {
        self.shared
            .lock()
            .iter()
            .map(|(lane, s)| {
                (
                    lane.clone(),
                    LaneFigures {
                        in_flight: s.in_flight,
                        abandoned: s.abandoned,
                        committed: s.committed,
                    },
                )
            })
            .collect()
    }

    /// Positions handed out and not yet settled, over every lane.
    pub fn pending(&self) -> usize {
        self.shared.lock().values().map(|s| s.in_flight).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ledger() -> Ledger<u32> {
        Ledger::new()
    }

    #[test]
    fn commits_only_below_the_lowest_position_in_flight() {
        let l = ledger();
        let t: Vec<AckToken> = (10..15).map(|p| l.track(&0, p)).collect();
        let mut t = t.into_iter();
        let (a, b, c, d, e) = (
            t.next().unwrap(),
            t.next().unwrap(),
            t.next().unwrap(),
            t.next().unwrap(),
            t.next().unwrap(),
        );
        assert_eq!(
            l.advanced(),
            vec![(0, 10)],
            "nothing done: commit where we began"
        );
        b.ack();
        d.ack();
        assert_eq!(l.advanced(), vec![], "an ack out of order waits");
        a.ack();
        assert_eq!(l.advanced(), vec![(0, 12)]);
        c.ack();
        assert_eq!(l.advanced(), vec![(0, 14)]);
        e.ack();
        assert_eq!(l.advanced(), vec![(0, 15)]);
        assert_eq!(l.pending(), 0);
    }

    #[test]
    fn a_position_below_the_last_takes_its_place() {
        let l = ledger();
        let high = l.track(&0, 9);
        let low = l.track(&0, 4);
        high.ack();
        assert_eq!(l.advanced(), vec![(0, 4)]);
        low.ack();
        assert_eq!(l.advanced(), vec![(0, 10)]);
    }

    #[test]
    fn a_dropped_token_blocks_commits_past_it_for_good() {
        let l = ledger();
        let a = l.track(&0, 1);
        let b = l.track(&0, 2);
        let c = l.track(&0, 3);
        a.ack();
        drop(b);
        c.ack();
        assert_eq!(l.advanced(), vec![(0, 2)]);
        let d = l.track(&0, 4);
        d.ack();
        assert_eq!(l.advanced(), vec![], "never past the abandoned position");
        assert_eq!(l.figures()[0].1.abandoned, 1);
    }

    #[test]
    fn a_split_item_is_done_when_every_part_is() {
        let l = ledger();
        let whole = l.track(&7, 0);
        let parts = [whole.clone(), whole.clone()];
        whole.ack();
        let [p1, p2] = parts;
        p1.ack();
        assert_eq!(l.advanced(), vec![(7, 0)], "one part is still in flight");
        p2.ack();
        assert_eq!(l.advanced(), vec![(7, 1)]);
    }

    #[test]
    fn a_part_dropped_unacked_abandons_the_whole_item() {
        let l = ledger();
        let whole = l.track(&8, 0);
        let part = whole.clone();
        whole.ack();
        drop(part);
        l.track(&8, 1).ack();
        assert_eq!(l.advanced(), vec![(8, 0)]);
    }

    #[test]
    fn merged_tokens_settle_together() {
        let l = ledger();
        let m = l.track(&0, 1).merge(l.track(&1, 1));
        assert_eq!(l.pending(), 2);
        m.ack();
        assert_eq!(l.pending(), 0);
        let m = l.track(&0, 2).merge(AckToken::none()).merge(l.track(&1, 2));
        drop(m);
        let figures: HashMap<u32, LaneFigures> = l.figures().into_iter().collect();
        assert_eq!(figures[&0].abandoned + figures[&1].abandoned, 2);
    }

    #[test]
    fn a_released_lane_ignores_late_acks() {
        let l = ledger();
        let old = l.track(&0, 100);
        l.release(&0);
        let new = l.track(&0, 50);
        old.ack();
        assert_eq!(
            l.pending(),
            1,
            "the old ack must not settle the new position"
        );
        new.ack();
        assert_eq!(l.advanced(), vec![(0, 51)]);
    }

    #[test]
    fn drain_waits_for_acks_then_gives_the_position() {
        let l = ledger();
        let t = l.track(&3, 9);
        let acker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            t.ack();
        });
        let marks = l.drain(&[3], Instant::now() + Duration::from_secs(10));
        acker.join().unwrap();
        assert_eq!(marks, vec![(3, 10)]);
        let stuck = l.track(&3, 10);
        let started = Instant::now();
        let marks = l.drain(&[3], Instant::now() + Duration::from_millis(30));
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(marks, vec![(3, 10)], "the deadline commits what is done");
        stuck.ack();
    }
}
