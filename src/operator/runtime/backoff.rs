//! Failing reconciles back off per object: the first retry after 5 s, each next one after
//! twice as long, at most 5 min; a successful reconcile of the object starts it over. One
//! object that keeps failing (a quota, a Secret it cannot read) then costs the API server a
//! few requests an hour, not one every few seconds, and never slows the others.

use std::{collections::HashMap, sync::Mutex, time::Duration};

pub const FIRST: Duration = Duration::from_secs(5);
pub const CAP: Duration = Duration::from_secs(300);

/// The wait before retry number `failures` (1: after the first failure).
pub fn delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST.saturating_mul(1 << doublings).min(CAP)
}

/// Consecutive failures per object (`Kind namespace/name`).
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The object's reconcile failed: how long to wait before the next.
    pub fn failed(&self, object: &str) -> Duration {
        let mut failures = self.failures();
        let count = failures.entry(object.to_owned()).or_default();
        *count = count.saturating_add(1);
        delay(*count)
    }

    /// The object reconciled: its next failure waits [`FIRST`] again.
    pub fn succeeded(&self, object: &str) {
        let mut failures = self.failures();
        if !failures.is_empty() {
            failures.remove(object);
        }
    }

    /// Objects whose last reconcile failed.
    pub fn backing_off(&self) -> usize {
        self.failures().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_five_seconds_to_five_minutes() {
        let table = [
            (1, 5),
            (2, 10),
            (3, 20),
            (4, 40),
            (5, 80),
            (6, 160),
            (7, 300),
            (8, 300),
        ];
        for (failures, seconds) in table {
            assert_eq!(delay(failures), Duration::from_secs(seconds), "{failures}");
        }
        assert_eq!(delay(u32::MAX), CAP);
        assert_eq!(delay(0), FIRST);
    }

    #[test]
    fn per_object_and_reset_by_success() {
        let backoff = Backoff::default();
        assert_eq!(backoff.failed("Transport a/x"), FIRST);
        assert_eq!(backoff.failed("Transport a/x"), FIRST * 2);
        assert_eq!(backoff.failed("Transport a/y"), FIRST, "another object");
        assert_eq!(backoff.backing_off(), 2);
        backoff.succeeded("Transport a/x");
        assert_eq!(backoff.failed("Transport a/x"), FIRST);
        backoff.succeeded("Transport a/x");
        backoff.succeeded("Transport a/y");
        assert_eq!(backoff.backing_off(), 0);
    }
}
