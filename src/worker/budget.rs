//! The worker-wide budget for transaction bytes held in memory.
//!
//! Every ingest reserves its payload's bytes before reading the body and keeps them until the
//! transaction has its outcome (delivered, stored or failed). When the reservations would pass
//! the budget the producer is answered 503 with `Retry-After` at once: nothing was read,
//! received or stored, so nothing is lost or half-stored, and the producer retries. The
//! default fits the operator's default worker memory limit (a quarter of it: a payload is held
//! once by ingest and once more by the store's write while it commits).

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The default budget: a quarter of the default worker memory limit (256Mi).
pub const DEFAULT_BYTES: u64 = 64 << 20;

/// The share of a pod's memory limit the operator gives the budget.
pub const SHARE_OF_MEMORY_LIMIT: u64 = 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BudgetError {
    #[error(
        "the worker holds {in_use} of its {total} bytes of transactions in memory (--memory-budget); retry shortly"
    )]
    Exhausted { in_use: u64, total: u64 },
    #[error(
        "the transaction ({bytes} bytes) is larger than this worker's whole memory budget ({total} bytes, --memory-budget)"
    )]
    LargerThanBudget { bytes: u64, total: u64 },
}

#[derive(Clone, Debug)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    total: u64,
    /// Ingests refused because they did not fit (for the metrics).
    refused: Arc<AtomicU64>,
}

/// Bytes held until dropped.
#[derive(Debug)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    bytes: u64,
}

impl MemoryBudget {
    pub fn new(total: u64) -> Self {
        let total = total.clamp(1, Semaphore::MAX_PERMITS as u64);
        Self {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
            refused: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub fn in_use(&self) -> u64 {
        self.total - self.permits.available_permits() as u64
    }

    /// Nothing reserved yet; grown as a body arrives.
    pub fn empty(&self) -> Reservation {
        Reservation {
            permit: None,
            bytes: 0,
        }
    }

    /// Reserve `bytes` more for `reservation`, at once or not at all.
    pub fn grow(&self, reservation: &mut Reservation, bytes: u64) -> Result<(), BudgetError> {
        let grown = self.try_grow(reservation, bytes);
        if grown.is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        grown
    }

    fn try_grow(&self, reservation: &mut Reservation, bytes: u64) -> Result<(), BudgetError> {
        if bytes == 0 {
            return Ok(());
        }
        let wanted = reservation.bytes + bytes;
        if wanted > self.total {
            return Err(BudgetError::LargerThanBudget {
                bytes: wanted,
                total: self.total,
            });
        }
        let exhausted = || BudgetError::Exhausted {
            in_use: self.in_use(),
            total: self.total,
        };
        let n = u32::try_from(bytes).map_err(|_| exhausted())?;
        let permit = self
            .permits
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| exhausted())?;
        match &mut reservation.permit {
            Some(held) => held.merge(permit),
            None => reservation.permit = Some(permit),
        }
        reservation.bytes = wanted;
        Ok(())
    }
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_the_budget_and_return_it_when_dropped() {
        let budget = MemoryBudget::new(100);
        let mut a = budget.empty();
        budget.grow(&mut a, 60).unwrap();
        let mut b = budget.empty();
        assert_eq!(
            budget.grow(&mut b, 50),
            Err(BudgetError::Exhausted {
                in_use: 60,
                total: 100
            })
        );
        budget.grow(&mut b, 40).unwrap();
        assert_eq!(budget.in_use(), 100);
        drop(a);
        assert_eq!(budget.in_use(), 40);
        budget.grow(&mut b, 10).unwrap();
        assert_eq!(b.bytes(), 50);
        assert!(matches!(
            budget.grow(&mut b, 51),
            Err(BudgetError::LargerThanBudget { bytes: 101, .. })
        ));
        drop(b);
        assert_eq!(budget.in_use(), 0);
        assert_eq!(budget.refused(), 2);
    }
}
