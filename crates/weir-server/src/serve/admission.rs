//! Admission control: a stream starts only if a slot and its share of memory are free now.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use weir_runtime::{BudgetExhausted, MemoryBudget, Reservation};

/// The server's limits on streams open at once and on the bytes they buffer together.
#[derive(Clone)]
pub struct Admission {
    slots: Arc<Semaphore>,
    max_streams: usize,
    budget: MemoryBudget,
}

/// Held for the life of one stream; frees its slot and bytes on drop.
pub struct Ticket {
    _slot: OwnedSemaphorePermit,
    _bytes: Reservation,
}

/// Why a stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("too many streams: {0} are open")]
    Streams(usize),
    #[error("{0}")]
    Memory(BudgetExhausted),
}

impl Admission {
    pub fn new(max_streams: usize, budget: MemoryBudget) -> Self {
        Admission {
            slots: Arc::new(Semaphore::new(max_streams)),
            max_streams,
            budget,
        }
    }

    /// Admits a stream that may buffer `bytes`, or refuses it at once: never admit and
    /// then starve or kill it.
    pub fn try_admit(&self, bytes: usize) -> Result<Ticket, Refusal> {
        let slot = Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| Refusal::Streams(self.max_streams))?;
        let bytes = self.budget.try_reserve(bytes).map_err(Refusal::Memory)?;
        Ok(Ticket {
            _slot: slot,
            _bytes: bytes,
        })
    }

    pub fn open_streams(&self) -> usize {
        self.max_streams - self.slots.available_permits()
    }

    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_either_limit_and_readmits_after_release() {
        let admission = Admission::new(2, MemoryBudget::new(100));
        let a = admission.try_admit(40).unwrap();
        assert!(matches!(admission.try_admit(70), Err(Refusal::Memory(_))));
        let b = admission.try_admit(40).unwrap();
        assert!(matches!(admission.try_admit(1), Err(Refusal::Streams(2))));
        assert_eq!(admission.open_streams(), 2);
        drop((a, b));
        assert_eq!(admission.open_streams(), 0);
        assert_eq!(admission.budget().reserved(), 0);
        assert!(admission.try_admit(100).is_ok());
    }
}
