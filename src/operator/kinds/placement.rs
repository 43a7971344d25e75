//! Where a resource with `spec.workerPool` lives: placed once, on the ready worker with the
//! fewest resources under the pool's capacity, and kept there (its queue and watermarks are on
//! that worker's volume). docs/resources.md, "WorkerPool". The rule is pure; the reconcile
//! gives it the pool's workers as the caches show them.

use std::collections::HashMap;

use kube::ResourceExt;

use crate::api::{
    Connection, Transport, WorkerPool,
    worker_pool::{MAX_REPLICAS, Placement, PoolWorker},
};
use crate::operator::{
    objects::builders::Owner,
    reconcile::skeleton::{Home, WorkerResource},
    runtime::caches::{Caches, cached},
    runtime::context::Context,
    runtime::error::ReconcileError,
    runtime::status::Placeable,
    workers::worker_objects::tokens_of,
    workers::worker_pod::{WorkerPodUnavailable, is_ready, pod_name_of, ready_worker},
};

/// Why a resource cannot be placed now: the `Ready=False` reason and a message naming the pool.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unplaceable {
    #[error("the WorkerPool {pool} does not exist in this namespace")]
    PoolMissing { pool: String },
    #[error("the WorkerPool {pool} has no ready worker ({workers} asked for)")]
    NoReadyWorker { pool: String, workers: usize },
    #[error(
        "the WorkerPool {pool} is full: its {ready} ready worker(s) host {capacity} resources each; raise its replicas or capacity"
    )]
    PoolFull {
        pool: String,
        ready: usize,
        capacity: u32,
    },
    #[error(
        "the WorkerPool {pool} keeps its queues on JetStream, where Connections cannot live yet (their watermarks would not move with them): use a pool without spec.queue, or a worker of its own"
    )]
    ConnectionsNotOnJetStream { pool: String },
}

impl Unplaceable {
    /// The PascalCase reason of `Ready`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::PoolMissing { .. } => "PoolMissing",
            Self::NoReadyWorker { .. } => "NoReadyWorker",
            Self::PoolFull { .. } => "PoolFull",
            Self::ConnectionsNotOnJetStream { .. } => "PoolUnsupported",
        }
    }
}

/// The worker a new resource goes to: ready, hosting fewer than `capacity`, the fewest of
/// those; the lowest ordinal among equals (`workers` in ordinal order).
pub fn choose<'a>(
    pool: &str,
    workers: &'a [PoolWorker],
    capacity: u32,
) -> Result<&'a PoolWorker, Unplaceable> {
    let ready: Vec<&PoolWorker> = workers.iter().filter(|w| w.ready).collect();
    if ready.is_empty() {
        return Err(Unplaceable::NoReadyWorker {
            pool: pool.to_owned(),
            workers: workers.len(),
        });
    }
    ready
        .iter()
        .filter(|w| w.hosted < capacity)
        // min_by_key keeps the first of equals: the lowest ordinal.
        .min_by_key(|w| w.hosted)
        .copied()
        .ok_or_else(|| Unplaceable::PoolFull {
            pool: pool.to_owned(),
            ready: ready.len(),
            capacity,
        })
}

/// `Transport plant-a/erp`: a resource's key in the ledger of placements.
pub fn resource_key(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind} {namespace}/{name}")
}

/// Where a placed resource's producers (and the operator) reach it: its worker's stable DNS
/// name under the pool's headless Service, as the worker reports its endpoint. `None` when the
/// placement names no pod the pool can have (`<pool's StatefulSet>-<ordinal>`): a status is
/// written by whoever may write it, and a URL is never built from what it says otherwise.
pub fn worker_url(scheme: &str, namespace: &str, placement: &Placement) -> Option<String> {
    let set = crate::operator::objects::builders::worker_name("wp", &placement.worker_pool);
    let known = (0..MAX_REPLICAS).any(|n| pod_name_of(&set, n) == placement.worker);
    known.then(|| {
        crate::operator::objects::builders::pool_worker_url(
            scheme,
            &set,
            namespace,
            &placement.worker,
        )
    })
}

/// The pool `name` of `namespace` as the cache holds it (an unreadable one is missing).
pub fn pool(ctx: &Context, namespace: &str, name: &str) -> Option<WorkerPool> {
    cached(&ctx.caches.pools, namespace, name).and_then(|guarded| guarded.0.as_ref().ok().cloned())
}

/// A Transport or Connection as the pool code reads it from the caches.
pub struct Pooled<'a> {
    /// `Transport` or `Connection` (`WorkerResource::KIND`).
    pub kind: &'static str,
    pub name: String,
    pub uid: Option<&'a str>,
    /// Its `spec.workerPool`.
    pub pool: Option<&'a str>,
    /// Its `status.placement`.
    pub placement: Option<&'a Placement>,
}

/// Every readable Transport and Connection of `namespace` in `caches`, one `visit` each.
pub fn each_in(caches: &Caches, namespace: &str, mut visit: impl FnMut(Pooled<'_>)) {
    for transport in caches.transports.state() {
        if let Ok(t) = &transport.0
            && t.namespace().as_deref() == Some(namespace)
        {
            visit(Pooled {
                kind: Transport::KIND,
                name: t.name_any(),
                uid: t.metadata.uid.as_deref(),
                pool: t.spec.worker_pool.as_deref(),
                placement: t.status.as_ref().and_then(|s| s.placement.as_ref()),
            });
        }
    }
    for connection in caches.connections.state() {
        if let Ok(c) = &connection.0
            && c.namespace().as_deref() == Some(namespace)
        {
            visit(Pooled {
                kind: Connection::KIND,
                name: c.name_any(),
                uid: c.metadata.uid.as_deref(),
                pool: c.spec.worker_pool.as_deref(),
                placement: c.status.as_ref().and_then(|s| s.placement.as_ref()),
            });
        }
    }
}

/// How many resources each worker of the pool hosts (see [`placements`]).
pub fn hosted(ctx: &Context, namespace: &str, pool: &str) -> HashMap<String, u32> {
    count(placements(ctx, namespace, pool))
}

/// The worker of each resource placed in the pool, by [`resource_key`]: the placements the
/// resources' status shows (from the caches), overlaid with the ones this operator made and
/// may not see in the caches yet (the ledger).
pub fn placements(ctx: &Context, namespace: &str, pool: &str) -> HashMap<String, String> {
    placements_with(ctx, &ctx.placements(), namespace, pool)
}

/// [`placements`], with the ledger already held (placing is one step under its lock).
fn placements_with(
    ctx: &Context,
    ledger: &HashMap<String, Placement>,
    namespace: &str,
    pool: &str,
) -> HashMap<String, String> {
    let mut placed: HashMap<String, String> = HashMap::new();
    each_in(&ctx.caches, namespace, |r| {
        if let Some(placement) = r.placement.filter(|p| p.worker_pool == pool) {
            placed.insert(
                resource_key(r.kind, namespace, &r.name),
                placement.worker.clone(),
            );
        }
    });
    for (key, placement) in ledger {
        if key
            .split_once(' ')
            .is_some_and(|(_, at)| at.starts_with(&format!("{namespace}/")))
            && placement.worker_pool == pool
        {
            placed.insert(key.clone(), placement.worker.clone());
        }
    }
    placed
}

/// Resources per worker.
fn count(placements: HashMap<String, String>) -> HashMap<String, u32> {
    let mut counts = HashMap::new();
    for worker in placements.into_values() {
        *counts.entry(worker).or_insert(0) += 1;
    }
    counts
}

/// The pool's workers its spec asks for, in ordinal order, ready as their pods show and with
/// what they host.
pub fn pool_workers(
    ctx: &Context,
    namespace: &str,
    set: &str,
    count: i32,
    hosted: &HashMap<String, u32>,
) -> Vec<PoolWorker> {
    (0..count.clamp(0, MAX_REPLICAS))
        .map(|ordinal| {
            let name = pod_name_of(set, ordinal);
            let ready =
                cached(&ctx.caches.pods, namespace, &name).is_some_and(|pod| is_ready(&pod));
            let hosted = hosted.get(&name).copied().unwrap_or(0);
            PoolWorker {
                name,
                ready,
                hosted,
            }
        })
        .collect()
}

/// The three `WorkerResource` methods through which a kind lives in a WorkerPool, the same
/// for every kind: `super::placement::pool_hosting!();` in its `impl WorkerResource`.
macro_rules! pool_hosting {
    () => {
        fn pool_home(
            &self,
            namespace: &str,
            ctx: &$crate::operator::runtime::context::Context,
            pool: &str,
        ) -> Result<$crate::operator::reconcile::skeleton::Home, (&'static str, String)> {
            $crate::operator::kinds::placement::home_or_reason(ctx, namespace, self, pool)
        }

        fn placed(namespace: &str, ctx: &$crate::operator::runtime::context::Context, pool: &str) {
            $crate::operator::kinds::placement::placed(ctx, namespace, pool);
        }

        async fn leave_pool(
            &self,
            namespace: &str,
            ctx: &$crate::operator::runtime::context::Context,
            placement: &$crate::api::worker_pool::Placement,
            purge: $crate::wire::Purge,
        ) -> Result<(), $crate::operator::runtime::error::ReconcileError> {
            $crate::operator::kinds::placement::leave(self, namespace, ctx, placement, purge).await
        }
    };
}
pub(crate) use pool_hosting;

/// [`home`], as the reconcile skeleton takes it (`WorkerResource::pool_home`).
pub fn home_or_reason<R: WorkerResource>(
    ctx: &Context,
    namespace: &str,
    object: &R,
    pool: &str,
) -> Result<Home, (&'static str, String)> {
    home(ctx, namespace, object, pool).map_err(|why| (why.reason(), why.to_string()))
}

/// A resource newly placed in `pool`: the pool's reconcile counts it.
pub fn placed(ctx: &Context, namespace: &str, pool: &str) {
    ctx.triggers
        .send(crate::operator::kinds::worker_pool::KIND, namespace, pool);
}

/// The home of `object`, which names the WorkerPool `pool_name`: where its status says it
/// lives, else a worker chosen now (and noted in the ledger until its status shows it).
pub fn home<R: WorkerResource>(
    ctx: &Context,
    namespace: &str,
    object: &R,
    pool_name: &str,
) -> Result<Home, Unplaceable> {
    let Some(pool) = pool(ctx, namespace, pool_name) else {
        return Err(Unplaceable::PoolMissing {
            pool: pool_name.to_owned(),
        });
    };
    if R::KIND == Connection::KIND && pool.spec.jetstream().is_some() {
        return Err(Unplaceable::ConnectionsNotOnJetStream {
            pool: pool_name.to_owned(),
        });
    }
    let set = Owner::pool(&pool).map_or_else(|_| String::new(), |o| o.worker_name());
    let no_worker = || Unplaceable::NoReadyWorker {
        pool: pool_name.to_owned(),
        workers: usize::try_from(pool.spec.replicas).unwrap_or(0),
    };
    let tokens = cached(&ctx.caches.secrets, namespace, &set)
        .and_then(|secret| tokens_of(&secret))
        .ok_or_else(no_worker)?;
    let key = resource_key(R::KIND, namespace, &object.name_any());
    let mut ledger = ctx.placements();
    // The ledger first: it holds this operator's latest decision (a placement its status does
    // not show yet, or a move off a failed worker, failover.rs); else the status.
    let placement = match ledger
        .get(&key)
        .filter(|p| p.worker_pool == pool_name)
        .or_else(|| {
            object
                .status()
                .and_then(Placeable::placement)
                .filter(|p| p.worker_pool == pool_name)
        }) {
        Some(placement) => placement.clone(),
        // Counted and chosen under the ledger's lock: two resources placed at once see each
        // other.
        None => {
            let hosted = count(placements_with(ctx, &ledger, namespace, pool_name));
            let workers = pool_workers(ctx, namespace, &set, pool.spec.replicas, &hosted);
            let chosen = choose(pool_name, &workers, pool.spec.capacity)?;
            let placement = Placement {
                worker_pool: pool_name.to_owned(),
                worker: chosen.name.clone(),
            };
            ledger.insert(key, placement.clone());
            placement
        }
    };
    Ok(Home {
        set,
        pod: placement.worker.clone(),
        tokens,
        placement: Some(placement),
    })
}

/// Tell the pool worker a deleted resource lives on to stop hosting it, and with `purge`
/// (`reclaimPolicy: Delete`) to remove what it kept there. A pool or worker that is gone hosts
/// nothing; a worker that does not answer fails the cleanup (retried, the finalizer held).
pub async fn leave<R: WorkerResource>(
    object: &R,
    namespace: &str,
    ctx: &Context,
    placement: &crate::api::worker_pool::Placement,
    purge: crate::wire::Purge,
) -> Result<(), ReconcileError> {
    let key = resource_key(R::KIND, namespace, &object.name_any());
    let Some(pool) = pool(ctx, namespace, &placement.worker_pool) else {
        ctx.placements().remove(&key);
        return Ok(());
    };
    let set = Owner::pool(&pool)?.worker_name();
    let tokens = crate::operator::runtime::caches::cached(&ctx.caches.secrets, namespace, &set)
        .and_then(|secret| crate::operator::workers::worker_objects::tokens_of(&secret));
    let hosted_key = crate::wire::key(namespace, &object.name_any());
    if let Some(tokens) = tokens {
        match ready_worker(ctx, namespace, &set, &placement.worker, &tokens).await {
            Ok((worker, _)) => match ctx
                .workers
                .delete(&worker, R::WIRE, &hosted_key, purge)
                .await
            {
                Ok(()) => {}
                Err(e) if e.is_not_hosted() => {}
                Err(e) => {
                    return Err(ReconcileError::LeavePool {
                        worker: placement.worker.clone(),
                        why: e.to_string(),
                    });
                }
            },
            // A worker that does not run cannot be told; its deletion is not held up by it.
            // It hosts the resource again when it starts, until its pool's sweep tells it to
            // stop, purging as the resource's reclaimPolicy said (`worker_pool::sweep_orphans`).
            Err(WorkerPodUnavailable::Missing(_) | WorkerPodUnavailable::NotRunning(_)) => {
                tracing::warn!(resource = %key, worker = %placement.worker, "the pool worker does not run; its pool's sweep tells it the resource is gone once it is back");
            }
            Err(e) => {
                return Err(ReconcileError::LeavePool {
                    worker: placement.worker.clone(),
                    why: e.to_string(),
                });
            }
        }
    }
    ctx.placements().remove(&key);
    Ok(())
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

    #[test]
    fn the_ready_worker_with_the_fewest_under_capacity() {
        let table: [(&[PoolWorker], u32, Result<&str, &str>); 6] = [
            (
                &[worker("w-0", true, 3), worker("w-1", true, 1)],
                5,
                Ok("w-1"),
            ),
            (
                &[worker("w-0", true, 2), worker("w-1", true, 2)],
                5,
                Ok("w-0"),
            ),
            (
                &[worker("w-0", false, 0), worker("w-1", true, 4)],
                5,
                Ok("w-1"),
            ),
            (
                &[worker("w-0", true, 5), worker("w-1", true, 4)],
                5,
                Ok("w-1"),
            ),
            (
                &[worker("w-0", true, 5), worker("w-1", false, 0)],
                5,
                Err("PoolFull"),
            ),
            (&[worker("w-0", false, 0)], 5, Err("NoReadyWorker")),
        ];
        for (workers, capacity, expected) in table {
            let chosen = choose("shared", workers, capacity)
                .map(|w| w.name.as_str())
                .map_err(|e| e.reason());
            assert_eq!(chosen, expected, "{workers:?}");
        }
        assert_eq!(
            choose("shared", &[], 5).map_err(|e| e.reason()),
            Err("NoReadyWorker")
        );
    }

    #[test]
    fn why_not_names_the_pool() {
        let full = choose("shared", &[worker("w-0", true, 2)], 2).unwrap_err();
        assert!(
            full.to_string().contains("WorkerPool shared is full"),
            "{full}"
        );
    }

    proptest! {
        /// Placing one after another never goes over capacity, never uses a worker that is not
        /// ready, and keeps the ready workers within one of each other while room is left.
        #[test]
        fn placement_fills_evenly_and_never_over_capacity(
            ready in proptest::collection::vec(any::<bool>(), 1..8),
            capacity in 1u32..20,
            resources in 0usize..200,
        ) {
            let mut workers: Vec<PoolWorker> = ready
                .iter()
                .enumerate()
                .map(|(i, ready)| worker(&format!("w-{i}"), *ready, 0))
                .collect();
            for _ in 0..resources {
                let Ok(chosen) = choose("p", &workers, capacity) else {
                    let room = workers.iter().any(|w| w.ready && w.hosted < capacity);
                    prop_assert!(!room, "refused with room left: {workers:?}");
                    continue;
                };
                let name = chosen.name.clone();
                let chosen = workers.iter_mut().find(|w| w.name == name).expect("a worker");
                prop_assert!(chosen.ready);
                chosen.hosted += 1;
                prop_assert!(chosen.hosted <= capacity);
                let hosted: Vec<u32> = workers.iter().filter(|w| w.ready).map(|w| w.hosted).collect();
                let (least, most) = (hosted.iter().min().copied().unwrap_or(0), hosted.iter().max().copied().unwrap_or(0));
                prop_assert!(most - least <= 1, "uneven: {hosted:?}");
                prop_assert!(workers.iter().filter(|w| !w.ready).all(|w| w.hosted == 0));
            }
        }
    }
}
