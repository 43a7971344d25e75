//! Failover in a WorkerPool on JetStream (docs/resources.md "Pools on JetStream", T12): a
//! worker that is not Ready for the pool's `failoverAfter`, or is gone, or is beyond the
//! pool's replicas, has what it hosts placed on the pool's other ready workers. Any worker can
//! host any resource of such a pool (queues and records are on JetStream); the new worker
//! takes each record with a higher epoch, which fences the old one.
//!
//! `failed` and `moves` are the rule, pure; `fail_over` is the pool's reconcile step that
//! carries the moves out (ledger, Event `Moved`, the resources' reconciles).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use k8s_openapi::api::core::v1::ObjectReference;

use super::placement::{choose, each_in, placements, resource_key};
use crate::api::worker_pool::{Placement, PoolWorker, WorkerPool};
use crate::operator::runtime::context::Context;

/// A pool worker as failover sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub worker: PoolWorker,
    /// How long it has been not Ready (or gone); `None` while Ready.
    pub not_ready_for: Option<Duration>,
    /// Beyond the pool's replicas: it is to go, so what it hosts moves at once.
    pub leaving: bool,
}

/// The workers whose resources move now: not Ready for at least `after`, or leaving.
pub fn failed(workers: &[Health], after: Duration) -> HashSet<String> {
    workers
        .iter()
        .filter(|h| h.leaving || h.not_ready_for.is_some_and(|d| d >= after))
        .map(|h| h.worker.name.clone())
        .collect()
}

/// One resource to move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    /// `placement::resource_key`: `Transport plant-a/erp`.
    pub resource: String,
    pub from: String,
    pub to: String,
}

/// Where each resource on a failed worker goes: the ready, not failed worker with the fewest
/// under `capacity` (as a new placement), one after another in key order so they spread. A
/// resource with nowhere to go stays (it moves once a worker can take it).
pub fn moves(
    placed: &BTreeMap<String, String>,
    workers: &[PoolWorker],
    failed: &HashSet<String>,
    capacity: u32,
) -> Vec<Move> {
    let mut candidates: Vec<PoolWorker> = workers
        .iter()
        .filter(|w| w.ready && !failed.contains(&w.name))
        .cloned()
        .collect();
    let mut out = Vec::new();
    for (resource, from) in placed.iter().filter(|(_, w)| failed.contains(*w)) {
        let Ok(to) = choose("", &candidates, capacity) else {
            continue;
        };
        let to = to.name.clone();
        if let Some(worker) = candidates.iter_mut().find(|w| w.name == to) {
            worker.hosted += 1;
        }
        out.push(Move {
            resource: resource.clone(),
            from: from.clone(),
            to,
        });
    }
    out
}

/// The pool's step: move what failed workers host. Answers how many moved.
pub async fn fail_over(
    ctx: &Context,
    namespace: &str,
    pool: &WorkerPool,
    workers: &[PoolWorker],
) -> u64 {
    let Some(after) = pool
        .spec
        .jetstream()
        .map(|_| pool.spec.failover_after.as_std())
    else {
        return 0;
    };
    let pool_name = kube::ResourceExt::name_any(pool);
    let wanted = usize::try_from(pool.spec.replicas).unwrap_or(0);
    let not_ready = ctx.not_ready.observe(namespace, workers);
    let health: Vec<Health> = workers
        .iter()
        .enumerate()
        .map(|(ordinal, w)| Health {
            worker: w.clone(),
            not_ready_for: not_ready.get(&w.name).copied(),
            leaving: ordinal >= wanted,
        })
        .collect();
    let failed = failed(&health, after);
    if failed.is_empty() {
        return 0;
    }
    let placed: BTreeMap<String, String> =
        placements(ctx, namespace, &pool_name).into_iter().collect();
    let moves = moves(&placed, workers, &failed, pool.spec.capacity);
    if moves.is_empty() {
        return 0;
    }
    let mut references = HashMap::new();
    each_in(&ctx.caches, namespace, |r| {
        references.insert(
            resource_key(r.kind, namespace, &r.name),
            ObjectReference {
                api_version: Some("ferry.dev/v1alpha1".into()),
                kind: Some(r.kind.into()),
                name: Some(r.name.clone()),
                namespace: Some(namespace.into()),
                uid: r.uid.map(str::to_owned),
                ..Default::default()
            },
        );
    });
    {
        let mut ledger = ctx.placements();
        for m in &moves {
            ledger.insert(
                m.resource.clone(),
                Placement {
                    worker_pool: pool_name.clone(),
                    worker: m.to.clone(),
                },
            );
        }
    }
    for m in &moves {
        let why = if failed.contains(&m.from)
            && health.iter().any(|h| h.worker.name == m.from && h.leaving)
        {
            "leaves the pool (replicas lowered)".to_owned()
        } else {
            format!(
                "has not been Ready for {} (failoverAfter)",
                pool.spec.failover_after
            )
        };
        tracing::warn!(resource = %m.resource, from = %m.from, to = %m.to, pool = %pool_name, "moved to another worker of the pool: {why}");
        ctx.metrics.pool_moved();
        if let Some(reference) = references.get(&m.resource) {
            if let (Some(kind), Some(name)) = (&reference.kind, &reference.name) {
                ctx.triggers.send(kind, namespace, name);
            }
            ctx.events
                .publish(
                    reference,
                    true,
                    "Moved",
                    format!(
                        "moved from worker {} to worker {} of WorkerPool {pool_name}: {} {why}",
                        m.from, m.to, m.from
                    ),
                )
                .await;
        }
    }
    u64::try_from(moves.len()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn worker(name: &str, ready: bool, hosted: u32) -> PoolWorker {
        PoolWorker {
            name: name.into(),
            ready,
            hosted,
        }
    }

    fn health(name: &str, not_ready_for: Option<u64>, leaving: bool) -> Health {
        Health {
            worker: worker(name, not_ready_for.is_none(), 0),
            not_ready_for: not_ready_for.map(Duration::from_secs),
            leaving,
        }
    }

    #[test]
    fn a_worker_fails_after_failover_after_or_when_it_leaves() {
        let after = Duration::from_secs(20);
        let table = [
            (health("w-0", None, false), false),
            (health("w-0", Some(5), false), false),
            (health("w-0", Some(19), false), false),
            (health("w-0", Some(20), false), true),
            (health("w-0", Some(3600), false), true),
            (health("w-0", None, true), true),
        ];
        for (h, expected) in table {
            assert_eq!(
                failed(std::slice::from_ref(&h), after).contains("w-0"),
                expected,
                "{h:?}"
            );
        }
    }

    #[test]
    fn moves_spread_over_the_ready_workers_and_leave_the_rest() {
        let placed: BTreeMap<String, String> = [
            ("Transport ns/a", "w-0"),
            ("Transport ns/b", "w-0"),
            ("Transport ns/c", "w-0"),
            ("Transport ns/d", "w-1"),
            ("Connection ns/e", "w-2"),
        ]
        .into_iter()
        .map(|(r, w)| (r.to_owned(), w.to_owned()))
        .collect();
        let workers = [
            worker("w-0", false, 3),
            worker("w-1", true, 1),
            worker("w-2", true, 1),
        ];
        let failed = HashSet::from(["w-0".to_owned()]);
        let moves = moves(&placed, &workers, &failed, 10);
        let to: Vec<(&str, &str)> = moves
            .iter()
            .map(|m| (m.resource.as_str(), m.to.as_str()))
            .collect();
        assert_eq!(
            to,
            [
                ("Transport ns/a", "w-1"),
                ("Transport ns/b", "w-2"),
                ("Transport ns/c", "w-1")
            ]
        );
        assert!(moves.iter().all(|m| m.from == "w-0"));
        // No room: nothing moves (it moves once a worker can take it).
        assert!(super::moves(&placed, &workers, &failed, 1).is_empty());
        // No ready worker: nothing moves.
        let none = [worker("w-0", false, 3), worker("w-1", false, 1)];
        assert!(super::moves(&placed, &none, &failed, 10).is_empty());
    }

    proptest! {
        /// Every move goes from a failed worker to a ready one that did not fail, never over
        /// capacity, and each resource moves at most once.
        #[test]
        fn moves_go_to_ready_workers_within_capacity(
            states in proptest::collection::vec((any::<bool>(), any::<bool>()), 1..6),
            resources in proptest::collection::vec(0usize..6, 0..40),
            capacity in 1u32..20,
        ) {
            let workers: Vec<PoolWorker> = states.iter().enumerate()
                .map(|(i, (ready, _))| worker(&format!("w-{i}"), *ready, 0)).collect();
            let failed: HashSet<String> = states.iter().enumerate()
                .filter(|(_, (_, failed))| *failed).map(|(i, _)| format!("w-{i}")).collect();
            let mut placed = BTreeMap::new();
            let mut workers = workers;
            for (n, at) in resources.iter().enumerate() {
                let at = at % workers.len();
                placed.insert(format!("Transport ns/r{n}"), workers[at].name.clone());
                workers[at].hosted += 1;
            }
            let moves = moves(&placed, &workers, &failed, capacity);
            let mut after: HashMap<String, u32> = workers.iter().map(|w| (w.name.clone(), w.hosted)).collect();
            let mut seen = HashSet::new();
            for m in &moves {
                prop_assert!(failed.contains(&m.from));
                prop_assert!(!failed.contains(&m.to));
                prop_assert!(workers.iter().any(|w| w.name == m.to && w.ready));
                prop_assert!(seen.insert(m.resource.clone()), "moved twice");
                prop_assert_eq!(placed.get(&m.resource), Some(&m.from));
                *after.entry(m.to.clone()).or_default() += 1;
                prop_assert!(after[&m.to] <= capacity.max(workers.iter().find(|w| w.name == m.to).map_or(0, |w| w.hosted)));
            }
        }
    }
}
