//! The WorkerPool reconciler, on the same steps as every kind: dereference (the resources that
//! name the pool, from the caches) → build (its Secret, headless Service and StatefulSet) →
//! apply (only what changed) → observe (its workers' pods) → status.
//!
//! A pool never runs fewer workers than one past the highest worker that hosts a resource
//! (`status::pool_replicas`), and its deletion waits, under the finalizer, until no resource
//! names it. docs/resources.md, "WorkerPool".

use std::sync::Arc;

use kube::{
    Api, ResourceExt,
    runtime::{
        controller::Action,
        finalizer::{Event as Finalizer, finalizer},
    },
};

use crate::api::{
    Connection, Transport, WorkerPool,
    storage::ReclaimPolicy,
    worker_pool::{MAX_REPLICAS, PoolWorker},
};
use crate::operator::{
    kinds::failover::fail_over,
    kinds::placement::{each_in, hosted, placements, pool_workers},
    objects::builders::Owner,
    reconcile::skeleton::RESYNC,
    reconcile::skeleton::WorkerResource,
    reconcile::skeleton::is_paused,
    runtime::caches::{cached, synced},
    runtime::context::{Context, FINALIZER, now},
    runtime::error::ReconcileError,
    runtime::status::reconcile_paused,
    runtime::status::{PoolView, pool_replicas, pool_status, to_write},
    runtime::status_writer::write_status,
    workers::worker_objects::tokens_of,
    workers::worker_objects::{apply_or_report, delete_claims},
    workers::worker_pod::ready_worker,
};
use crate::wire;

pub const KIND: &str = "WorkerPool";

pub async fn reconcile(pool: Arc<WorkerPool>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let namespace = pool.namespace().unwrap_or_else(|| "default".into());
    let api: Api<WorkerPool> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, pool, |event| async {
        match event {
            Finalizer::Apply(pool) => apply(&pool, &namespace, &ctx).await,
            Finalizer::Cleanup(pool) => cleanup(&pool, &namespace, &ctx).await,
        }
    })
    .await
    .map_err(ReconcileError::from_finalizer)
}

/// Where the pool's queues are, as its status shows it.
fn queue_of(pool: &WorkerPool) -> &'static str {
    if pool.spec.jetstream().is_some() {
        "JetStream"
    } else {
        "Volume"
    }
}

/// The resources of `namespace` whose `spec.workerPool` is `pool`, as `Transport erp`.
fn users(ctx: &Context, namespace: &str, pool: &str) -> Vec<String> {
    let mut users = Vec::new();
    each_in(&ctx.caches, namespace, |r| {
        if r.pool == Some(pool) {
            users.push(format!("{} {}", r.kind, r.name));
        }
    });
    users.sort();
    users
}

/// The pool's workers as their pods show them, ordinal by ordinal up to `count`, with what
/// each hosts.
fn workers(ctx: &Context, namespace: &str, pool: &str, set: &str, count: i32) -> Vec<PoolWorker> {
    pool_workers(ctx, namespace, set, count, &hosted(ctx, namespace, pool))
}

/// Resources that name the pool and wait for a place are reconciled when it has a ready
/// worker with room.
fn wake_unplaced(ctx: &Context, namespace: &str, pool: &WorkerPool, workers: &[PoolWorker]) {
    let room = workers
        .iter()
        .any(|w| w.ready && w.hosted < pool.spec.capacity);
    if !room {
        return;
    }
    let name = pool.name_any();
    each_in(&ctx.caches, namespace, |r| {
        if r.pool == Some(name.as_str()) && r.placement.is_none() {
            ctx.triggers.send(r.kind, namespace, &r.name);
        }
    });
}

/// Resources a ready worker of the pool hosts that are not placed there (deleted while the
/// worker was down, so it was never told): it is told to stop hosting them; what they kept
/// stays on its volume. Only once the caches have listed everything (a resource not listed
/// yet is no orphan); a worker that does not answer is asked again at the next reconcile.
async fn sweep_orphans(
    ctx: &Context,
    namespace: &str,
    pool: &WorkerPool,
    set: &str,
    workers: &[PoolWorker],
) {
    // On JetStream what an orphan kept is shared (its stream may be hosted by another worker
    // now): it is never purged here; its own deletion purges it through its current worker.
    let purge = if pool.spec.jetstream().is_some() {
        wire::Purge::Keep
    } else {
        wire::Purge::AsItsReclaimPolicy
    };
    let pool = &pool.name_any();
    if !(synced(&ctx.caches.transports) && synced(&ctx.caches.connections)) {
        return;
    }
    let Some(tokens) = cached(&ctx.caches.secrets, namespace, set).and_then(|s| tokens_of(&s))
    else {
        return;
    };
    let placed = placements(ctx, namespace, pool);
    for worker in workers.iter().filter(|w| w.ready) {
        let Ok((pod, _)) = ready_worker(ctx, namespace, set, &worker.name, &tokens).await else {
            continue;
        };
        for (kind, of) in [
            (wire::Kind::Transports, Transport::KIND),
            (wire::Kind::Connections, Connection::KIND),
        ] {
            let hosted = match ctx.workers.hosted(&pod, kind).await {
                Ok(hosted) => hosted,
                Err(e) => {
                    tracing::debug!(worker = %worker.name, error = %e, "cannot list what the pool worker hosts; asked again at the next reconcile");
                    continue;
                }
            };
            for key in hosted.items {
                if placed.get(&format!("{of} {key}")) == Some(&worker.name) {
                    continue;
                }
                tracing::info!(worker = %worker.name, kind = kind.segment(), resource = %key, "the pool worker hosts a resource that is not placed there (deleted while the worker was down); it is told to stop hosting it");
                match ctx.workers.delete(&pod, kind, &key, purge).await {
                    Ok(()) => {}
                    Err(e) if e.is_not_hosted() => {}
                    Err(e) => {
                        tracing::warn!(worker = %worker.name, resource = %key, error = %e, "cannot tell the pool worker to stop hosting it; asked again at the next reconcile");
                    }
                }
            }
        }
    }
}

async fn apply(
    pool: &WorkerPool,
    namespace: &str,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    // Dereference: who uses the pool, and what its workers host.
    let used_by = users(ctx, namespace, &pool.name_any());
    let owner = Owner::pool(pool)?;
    let set = owner.worker_name();
    let shown = pool.status.as_ref().map_or(0, |s| s.workers.len());
    let known = i32::try_from(shown).unwrap_or(MAX_REPLICAS);
    let mut observed = workers(
        ctx,
        namespace,
        &pool.name_any(),
        &set,
        known.max(pool.spec.replicas),
    );
    let running = pool_replicas(pool.spec.replicas, &observed);
    // Paused (`ferry.dev/reconcile: paused`): its objects are left as they are and its workers
    // are told nothing; its status still shows them.
    let paused = is_paused(&pool.metadata);
    // Build and apply: never fewer workers than the hosted ones need.
    let owner = owner.with_replicas(running);
    let tokens = if paused {
        None
    } else {
        Some(apply_or_report(ctx, namespace, &owner, pool, pool.status.as_ref()).await?)
    };
    // Observe: the workers that run now.
    observed.truncate(usize::try_from(running).unwrap_or(0));
    let mut moved = 0;
    if !paused {
        // On JetStream: what a failed worker hosts goes to the others (T12).
        moved = fail_over(ctx, namespace, pool, &observed).await;
        if moved > 0 {
            observed = workers(ctx, namespace, &pool.name_any(), &set, running);
        }
        wake_unplaced(ctx, namespace, pool, &observed);
        sweep_orphans(ctx, namespace, pool, &set, &observed).await;
    }
    let view = PoolView {
        replicas: pool.spec.replicas,
        workers: observed,
        used_by,
        deleting: false,
        queue: queue_of(pool),
        moved,
    };
    let settled = show(ctx, pool, namespace, &view).await?;
    // Its pods' changes reconcile it (they are watched); the resync is a safety net, sooner
    // when its workers' certificate is due for renewal.
    let waits_for_rollout = crate::operator::workers::rollout::in_rollout(ctx, namespace, &set);
    Ok(Action::requeue(if settled && !waits_for_rollout {
        tokens.map_or(RESYNC, |tokens| {
            crate::operator::workers::worker_objects::renewal_due(&tokens, ctx, RESYNC)
        })
    } else {
        ctx.status_interval
    }))
}

/// The pool's status from what was observed, written when it changed; answers whether the
/// pool is Ready.
async fn show(
    ctx: &Context,
    pool: &WorkerPool,
    namespace: &str,
    view: &PoolView,
) -> Result<bool, ReconcileError> {
    let mut status = pool_status(pool.status.as_ref(), pool.metadata.generation, view, now());
    let paused = is_paused(&pool.metadata);
    status.conditions =
        reconcile_paused(&status.conditions, paused, pool.metadata.generation, &now());
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if let Some(changed) = to_write(pool.status.as_ref(), status) {
        write_status(&ctx.client, pool, namespace, &changed).await?;
    }
    Ok(ready)
}

/// Deletion waits until no resource names the pool (the status says which do); then its
/// volumes go as `reclaimPolicy` says, and its objects with it (owner references).
async fn cleanup(
    pool: &WorkerPool,
    namespace: &str,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    let used_by = users(ctx, namespace, &pool.name_any());
    let owner = Owner::pool(pool)?;
    if !used_by.is_empty() {
        let known = pool.status.as_ref().map_or(0, |s| s.workers.len());
        let view = PoolView {
            replicas: pool.spec.replicas,
            workers: workers(
                ctx,
                namespace,
                &pool.name_any(),
                &owner.worker_name(),
                i32::try_from(known).unwrap_or(MAX_REPLICAS),
            ),
            used_by: used_by.clone(),
            deleting: true,
            queue: queue_of(pool),
            moved: 0,
        };
        show(ctx, pool, namespace, &view).await?;
        return Err(ReconcileError::InUse {
            pool: pool.name_any(),
            users: used_by.len(),
        });
    }
    ctx.forget_objects(owner.uid());
    ctx.not_ready.forget(namespace, &owner.worker_name());
    crate::operator::workers::rollout::forget(ctx, namespace, &owner.worker_name());
    if owner.reclaim_policy() == ReclaimPolicy::Delete {
        let count = pool
            .status
            .as_ref()
            .map_or(0, |s| s.workers.len())
            .max(usize::try_from(pool.spec.replicas).unwrap_or(0));
        delete_claims(ctx, namespace, &owner.worker_name(), count).await?;
    }
    Ok(Action::await_change())
}
