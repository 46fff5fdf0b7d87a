//! Limits the byte rate of a stream, for demos and for testing slow consumers.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use weir_runtime::{BoxError, Emit, Transform};

const TIMER_TICK: Duration = Duration::from_millis(1);

/// Emits at most `rate` bytes per second, evenly: items are cut into pieces of a
/// twentieth of a second's worth, so a large item does not leave in one burst, and time
/// lost waiting on a slow downstream is not made up later in a burst either.
pub struct Throttle {
    rate: u64,
    piece: usize,
    /// When the next piece may leave.
    next: Option<Instant>,
}

impl Throttle {
    /// `rate` in bytes per second (at least 1).
    pub fn new(rate: u64) -> Self {
        let rate = rate.max(1);
        Throttle {
            rate,
            piece: usize::try_from(rate / 20).unwrap_or(usize::MAX).max(1),
            next: None,
        }
    }

    fn time_for(&self, bytes: usize) -> Duration {
        let nanos = bytes as u128 * 1_000_000_000 / u128::from(self.rate);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

impl Transform for Throttle {
    type In = Bytes;
    type Out = Bytes;

    async fn apply(&mut self, mut item: Bytes, out: &mut Emit<'_, Bytes>) -> Result<(), BoxError> {
        while !item.is_empty() {
            let piece = item.split_to(self.piece.min(item.len()));
            let due = *self.next.get_or_insert_with(Instant::now);
            // Timers fire on whole milliseconds: small items (a record each) sleep only once
            // a millisecond's worth is due, or the rate would fall to one item per tick.
            if due > Instant::now() + TIMER_TICK {
                tokio::time::sleep_until(due).await;
            }
            let len = piece.len();
            out.send(piece).await?;
            self.next = Some(due.max(Instant::now()) + self.time_for(len));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{run_transform, Chunks};

    #[tokio::test]
    async fn small_items_keep_the_rate() {
        let started = std::time::Instant::now();
        let items = vec![vec![1u8; 100]; 2000];
        let data: Vec<u8> = items.concat();
        let (ran, out) =
            run_transform("throttle", Throttle::new(1_000_000), Chunks::of(&data, 100)).await;
        ran.unwrap();
        assert_eq!(out.bytes(), data);
        // 200 kB at 1 MB/s: 0.2 s; a sleep per item would take 2 s at least.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(190), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn holds_the_rate_in_even_pieces() {
        let started = Instant::now();
        let data = vec![7u8; 10_000];
        let (ran, out) =
            run_transform("throttle", Throttle::new(1000), Chunks::of(&data, 4000)).await;
        ran.unwrap();
        assert_eq!(out.bytes(), data);
        assert_eq!(out.largest_item(), 50, "pieces of 1/20 s");
        // 200 pieces of 50 B at 1000 B/s: the last leaves after 199 × 50 ms.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(9950), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(10_100), "{elapsed:?}");
    }
}
