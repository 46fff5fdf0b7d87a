//! A memory budget shared by many pipelines, for admission control.
//!
//! A pipeline reserves the sum of its channel budgets before it starts and keeps the
//! reservation until it ends, so the bytes buffered by all admitted pipelines together
//! never exceed the budget. A pipeline that cannot get its share is refused up front
//! ([`WhenFull::FailFast`], for an HTTP 503) or waits for one ([`WhenFull::Wait`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What to do when the budget cannot hold a new pipeline now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Refuse at once.
    FailFast,
    /// Wait until enough is released.
    Wait,
}

/// The budget could not hold the bytes asked for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("memory budget exhausted: asked for {asked} bytes, {available} of {limit} free")]
pub struct BudgetExhausted {
    pub asked: usize,
    pub available: usize,
    pub limit: usize,
}

/// A byte budget shared by many pipelines. Cloning shares it.
#[derive(Clone, Debug)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limit: usize,
    permits: Arc<Semaphore>,
    buffered: Arc<AtomicUsize>,
}

/// Bytes held out of a [`MemoryBudget`]; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    _permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

impl Reservation {
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl MemoryBudget {
    /// A budget of `limit` bytes (at most `u32::MAX` may be reserved at once).
    pub fn new(limit: usize) -> Self {
        let limit = limit.min(Semaphore::MAX_PERMITS);
        MemoryBudget {
            inner: Arc::new(Inner {
                limit,
                permits: Arc::new(Semaphore::new(limit)),
                buffered: Arc::new(AtomicUsize::new(0)),
            }),
        }
    }

    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Bytes currently reserved by admitted pipelines.
    pub fn reserved(&self) -> usize {
        self.inner.limit - self.inner.permits.available_permits()
    }

    /// Bytes actually sitting in the channels of admitted pipelines right now.
    pub fn buffered(&self) -> usize {
        self.inner.buffered.load(Ordering::Relaxed)
    }

    pub(crate) fn buffered_gauge(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.inner.buffered)
    }

    fn exhausted(&self, asked: usize) -> BudgetExhausted {
        BudgetExhausted {
            asked,
            available: self.inner.permits.available_permits(),
            limit: self.inner.limit,
        }
    }

    fn permits_for(&self, bytes: usize) -> Result<u32, BudgetExhausted> {
        match u32::try_from(bytes) {
            Ok(n) if bytes <= self.inner.limit => Ok(n),
            _ => Err(self.exhausted(bytes)),
        }
    }

    /// Reserves `bytes` now, or fails at once.
    pub fn try_reserve(&self, bytes: usize) -> Result<Reservation, BudgetExhausted> {
        if bytes == 0 {
            return Ok(Reservation {
                _permit: None,
                bytes,
            });
        }
        let n = self.permits_for(bytes)?;
        let permit = Arc::clone(&self.inner.permits)
            .try_acquire_many_owned(n)
            .map_err(|_| self.exhausted(bytes))?;
        Ok(Reservation {
            _permit: Some(permit),
            bytes,
        })
    }

    /// Reserves `bytes`, waiting for other reservations to be released if need be.
    /// Fails only when `bytes` exceeds the whole budget.
    pub async fn reserve(&self, bytes: usize) -> Result<Reservation, BudgetExhausted> {
        if bytes == 0 {
            return Ok(Reservation {
                _permit: None,
                bytes,
            });
        }
        let n = self.permits_for(bytes)?;
        let permit = Arc::clone(&self.inner.permits)
            .acquire_many_owned(n)
            .await
            .map_err(|_| self.exhausted(bytes))?;
        Ok(Reservation {
            _permit: Some(permit),
            bytes,
        })
    }

    /// Reserves according to `when_full`.
    pub async fn admit(
        &self,
        bytes: usize,
        when_full: WhenFull,
    ) -> Result<Reservation, BudgetExhausted> {
        match when_full {
            WhenFull::FailFast => self.try_reserve(bytes),
            WhenFull::Wait => self.reserve(bytes).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fail_fast_refuses_and_release_readmits() {
        let budget = MemoryBudget::new(100);
        let a = budget.try_reserve(60).unwrap();
        let err = budget.try_reserve(50).unwrap_err();
        assert_eq!((err.asked, err.available, err.limit), (50, 40, 100));
        assert_eq!(budget.reserved(), 60);
        drop(a);
        assert_eq!(budget.reserved(), 0);
        assert!(budget.try_reserve(100).is_ok());
    }

    #[tokio::test]
    async fn wait_blocks_until_released() {
        let budget = MemoryBudget::new(100);
        let a = budget.reserve(80).await.unwrap();
        let b2 = budget.clone();
        let waiter = tokio::spawn(async move { b2.reserve(50).await.map(|r| r.bytes()) });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(a);
        assert_eq!(waiter.await.unwrap(), Ok(50));
    }

    #[tokio::test]
    async fn more_than_the_whole_budget_is_refused_even_when_waiting() {
        let budget = MemoryBudget::new(10);
        assert!(budget.reserve(11).await.is_err());
    }
}
