//! Limits the byte rate of a stream, for demos and for testing slow consumers.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use weir_runtime::{BoxError, Emit, Transform};

/// Emits at most `rate` bytes per second, evenly: items are cut into pieces of a
/// twentieth of a second's worth, so a large item does not leave in one burst.
pub struct Throttle {
    rate: u64,
    piece: usize,
    started: Option<Instant>,
    sent: u64,
}

impl Throttle {
    /// `rate` in bytes per second (at least 1).
    pub fn new(rate: u64) -> Self {
        let rate = rate.max(1);
        Throttle {
            rate,
            piece: usize::try_from(rate / 20).unwrap_or(usize::MAX).max(1),
            started: None,
            sent: 0,
        }
    }

    fn due(&self, started: Instant) -> Instant {
        let nanos = u128::from(self.sent) * 1_000_000_000 / u128::from(self.rate);
        started + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

impl Transform for Throttle {
    type In = Bytes;
    type Out = Bytes;

    async fn apply(&mut self, mut item: Bytes, out: &mut Emit<'_, Bytes>) -> Result<(), BoxError> {
        let started = *self.started.get_or_insert_with(Instant::now);
        while !item.is_empty() {
            let piece = item.split_to(self.piece.min(item.len()));
            tokio::time::sleep_until(self.due(started)).await;
            self.sent += piece.len() as u64;
            out.send(piece).await?;
        }
        Ok(())
    }
}
