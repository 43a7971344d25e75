//! How long each pool worker has been not Ready, as this operator saw it: what failover
//! (`kinds::failover`) measures `failoverAfter` against.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::api::worker_pool::PoolWorker;

/// When each worker was first seen not Ready (or gone) by a reconcile of its pool. Kept in
/// memory: after an operator restart the count starts again (a later move, never an early
/// one).
#[derive(Default)]
pub struct NotReady(std::sync::Mutex<HashMap<String, Instant>>);

impl NotReady {
    /// Note each worker's readiness now; answers how long each has been not Ready.
    pub fn observe(&self, namespace: &str, workers: &[PoolWorker]) -> HashMap<String, Duration> {
        let mut since = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut out = HashMap::new();
        for worker in workers {
            let key = format!("{namespace}/{}", worker.name);
            if worker.ready {
                since.remove(&key);
            } else {
                let first = *since.entry(key).or_insert(now);
                out.insert(worker.name.clone(), now.duration_since(first));
            }
        }
        out
    }

    /// Forget a pool's workers (the pool is gone).
    pub fn forget(&self, namespace: &str, set: &str) {
        let prefix = format!("{namespace}/{set}-");
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| !k.starts_with(&prefix));
    }
}
