//! The worker-wide budget for transaction bytes held in memory.
//!
//! Every ingest reserves its payload's bytes before reading the body and keeps them until the
//! transaction has its outcome (delivered, stored or failed). When the reservations would pass
//! the budget the producer is answered 503 with `Retry-After` at once: nothing was read,
//! received or stored, so nothing is lost or half-stored, and the producer retries. The
//! default fits the operator's default worker memory limit (a quarter of it: a payload is held
//! once by ingest and once more by the store's write while it commits).
//!
//! Shared fairly between the transports a worker hosts (a pool's worker hosts many): a
//! transport may hold more than its fair share (the budget over the transports hosted) only
//! while a quarter of the budget stays free ([`admits`]). So one transport's burst takes at
//! most three quarters, and another's transactions up to its fair share still fit: the burst
//! hears 503 with `Retry-After`, the others do not. With one transport hosted its fair share is
//! the whole budget, as before.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The default budget: a quarter of the default worker memory limit (256Mi).
pub const DEFAULT_BYTES: u64 = 64 << 20;

/// The share of a pod's memory limit the operator gives the budget.
pub const SHARE_OF_MEMORY_LIMIT: u64 = 4;

/// The part of the budget (1/N) that only a transport within its fair share may take.
pub const RESERVE_SHARE: u64 = 4;

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
    #[error(
        "this transport holds {held} bytes of transactions in memory, more than its fair share ({fair} of the worker's {total} bytes, --memory-budget, shared by the transports it hosts), and the rest is kept for the others; retry shortly"
    )]
    OverFairShare { held: u64, fair: u64, total: u64 },
}

/// Whether a transport holding `held` bytes (all its transactions in flight) may take `bytes`
/// more, with `in_use` of the budget's `total` held by all and `fair` its fair share: within its share, whatever is free;
/// beyond it, only while a `1/RESERVE_SHARE` of the budget stays free for the others.
pub fn admits(
    total: u64,
    in_use: u64,
    held: u64,
    bytes: u64,
    fair: u64,
) -> Result<(), BudgetError> {
    let wanted = held.saturating_add(bytes);
    let after = in_use.saturating_add(bytes);
    if after > total {
        return Err(BudgetError::Exhausted { in_use, total });
    }
    if wanted > fair && after > total - total / RESERVE_SHARE {
        return Err(BudgetError::OverFairShare { held, fair, total });
    }
    Ok(())
}

#[derive(Clone, Debug)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    total: u64,
    /// Ingests refused because they did not fit (for the metrics).
    refused: Arc<AtomicU64>,
    /// What each transport holds, by key.
    held: Arc<Mutex<HashMap<String, Arc<AtomicU64>>>>,
}

/// Bytes held until dropped, counted to the transport they are for.
#[derive(Debug)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    bytes: u64,
    held: Arc<AtomicU64>,
    /// The transport's fair share when the reservation began.
    fair: u64,
    budget: MemoryBudget,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl MemoryBudget {
    pub fn new(total: u64) -> Self {
        let total = total.clamp(1, Semaphore::MAX_PERMITS as u64);
        Self {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
            refused: Arc::new(AtomicU64::new(0)),
            held: Arc::default(),
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

    /// Nothing reserved yet for the transport `key`, one of `hosted` transports of this
    /// worker; grown as a body arrives.
    pub fn empty(&self, key: &str, hosted: usize) -> Reservation {
        let held = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_owned())
            .or_default()
            .clone();
        Reservation {
            permit: None,
            bytes: 0,
            held,
            fair: self.total / (hosted.max(1) as u64),
            budget: self.clone(),
        }
    }

    /// What the transport `key` holds now.
    pub fn held(&self, key: &str) -> u64 {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .map_or(0, |held| held.load(Ordering::Relaxed))
    }

    /// Forget a transport no longer hosted (what it still holds is returned as it ends).
    pub fn forget(&self, key: &str) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
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
        let whole = reservation.bytes + bytes;
        if whole > self.total {
            return Err(BudgetError::LargerThanBudget {
                bytes: whole,
                total: self.total,
            });
        }
        // Counted to the transport first (so concurrent requests of one transport see each
        // other), taken back when the budget refuses.
        let mut refusal = None;
        let counted = reservation
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                match admits(self.total, self.in_use(), held, bytes, reservation.fair) {
                    Ok(()) => Some(held + bytes),
                    Err(e) => {
                        refusal = Some(e);
                        None
                    }
                }
            });
        if counted.is_err() {
            return Err(refusal.unwrap_or(BudgetError::Exhausted {
                in_use: self.in_use(),
                total: self.total,
            }));
        }
        let permit = u32::try_from(bytes)
            .ok()
            .and_then(|n| self.permits.clone().try_acquire_many_owned(n).ok());
        let Some(permit) = permit else {
            reservation.held.fetch_sub(bytes, Ordering::Relaxed);
            return Err(BudgetError::Exhausted {
                in_use: self.in_use(),
                total: self.total,
            });
        };
        match &mut reservation.permit {
            Some(held) => held.merge(permit),
            None => reservation.permit = Some(permit),
        }
        reservation.bytes += bytes;
        Ok(())
    }
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Reserve `bytes` more from its budget, at once or not at all.
    pub fn grow(&mut self, bytes: u64) -> Result<(), BudgetError> {
        let budget = self.budget.clone();
        budget.grow(self, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_the_budget_and_return_it_when_dropped() {
        let budget = MemoryBudget::new(100);
        let mut a = budget.empty("ns/t", 1);
        budget.grow(&mut a, 60).unwrap();
        let mut b = budget.empty("ns/t", 1);
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
        assert_eq!(budget.held("ns/t"), 0);
    }

    #[test]
    fn the_fair_share_rule() {
        use BudgetError::*;
        // (total, in_use, held, bytes, fair) → admitted, or the refusal's name.
        type Case = (u64, u64, u64, u64, u64);
        let table: [(Case, Result<(), &str>); 8] = [
            // Alone on its worker: the whole budget.
            ((100, 0, 0, 100, 100), Ok(())),
            ((100, 90, 90, 11, 100), Err("Exhausted")),
            ((100, 0, 0, 101, 100), Err("Exhausted")),
            // Two hosted (fair 50): beyond its share only while a quarter stays free.
            ((100, 70, 70, 5, 50), Ok(())),
            ((100, 75, 75, 1, 50), Err("OverFairShare")),
            // ... which another within its share may take.
            ((100, 75, 0, 25, 50), Ok(())),
            ((100, 75, 0, 26, 50), Err("Exhausted")),
            ((100, 40, 10, 40, 50), Ok(())),
        ];
        for ((total, in_use, held, bytes, fair), expected) in table {
            let got = admits(total, in_use, held, bytes, fair).map_err(|e| match e {
                Exhausted { .. } => "Exhausted",
                LargerThanBudget { .. } => "LargerThanBudget",
                OverFairShare { .. } => "OverFairShare",
            });
            assert_eq!(got, expected, "{:?}", (total, in_use, held, bytes, fair));
        }
    }

    #[test]
    fn a_burst_of_one_transport_leaves_the_others_their_share() {
        let budget = MemoryBudget::new(1000);
        // Ten hosted: fair share 100. The burst takes what it can, 10 bytes at a time.
        let mut burst = Vec::new();
        loop {
            let mut r = budget.empty("ns/burst", 10);
            if budget.grow(&mut r, 10).is_err() {
                break;
            }
            burst.push(r);
        }
        assert_eq!(budget.held("ns/burst"), 750);
        let mut small = budget.empty("ns/small", 10);
        budget.grow(&mut small, 100).unwrap();
        assert_eq!(budget.held("ns/small"), 100);
        drop(burst);
        assert_eq!(budget.in_use(), 100);
    }

    proptest::proptest! {
        /// Whatever one transport took, one after another under the rule, another transport
        /// holding nothing can take up to its fair share and up to a quarter of the budget.
        #[test]
        fn a_burst_never_refuses_another_within_its_share(
            total in 4u64..10_000,
            hosted in 2usize..200,
            steps in proptest::collection::vec((proptest::prelude::any::<bool>(), 1u64..5_000), 0..100),
            small in 1u64..10_000,
        ) {
            let fair = total / hosted as u64;
            let mut held = 0u64;
            let mut taken: Vec<u64> = Vec::new();
            for (grow, bytes) in steps {
                if grow {
                    if admits(total, held, held, bytes, fair).is_ok() {
                        held += bytes;
                        taken.push(bytes);
                    }
                } else if let Some(bytes) = taken.pop() {
                    held -= bytes;
                }
            }
            let small = small.min(fair).min(total / RESERVE_SHARE).max(1);
            proptest::prop_assert!(
                admits(total, held, 0, small, fair).is_ok() || fair == 0,
                "burst holds {} of {}: {} refused", held, total, small
            );
        }
    }
}
