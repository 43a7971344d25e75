//! The one reconcile of both kinds, in steps (the layout of kube-rs' controller-rs and
//! Stackable's operators):
//!
//! finalizer → dereference → build → apply → push → status → written → events
//!
//! Each kind supplies only what differs through [`WorkerResource`]: what it looks up
//! (dereference), what it pushes to its worker and how the report becomes its status
//! (observe), and which Event a status change calls for. Deletion runs the cleanup step: the
//! kind forgets what it remembered, and the volume goes when `reclaimPolicy: Delete`.

use std::sync::Arc;

use kube::{
    Api, ResourceExt,
    runtime::{
        controller::Action,
        finalizer::{Event as Finalizer, finalizer},
    },
};

use crate::api::storage::ReclaimPolicy;
use crate::operator::{
    NamespacedObject,
    objects::builders::{BuildError, Owner},
    runtime::context::now,
    runtime::context::{Context, FINALIZER},
    runtime::error::ReconcileError,
    runtime::status::{
        FORBIDDEN_DESTINATION, HandledRestart, Placeable, WithConditions, not_running,
        reconcile_paused, to_write,
    },
    runtime::status_writer::write_status,
    workers::worker_objects::{
        apply_ingest_secret, apply_or_report, delete_claim, existing_tokens, reported,
    },
    workers::worker_pod::{ReadyWorker, WorkerPodUnavailable, pod_name, ready_worker},
};

/// A resource that runs in a worker of its own.
pub trait WorkerResource: NamespacedObject + serde::Serialize {
    /// The kind, as logs and metrics name it.
    const KIND: &'static str;
    /// The kind on the worker's API.
    const WIRE: crate::wire::Kind;
    /// Whether producers post to it: in a pool, it then has an ingest token of its own.
    const INGESTS: bool = false;
    /// Every state its status can show (`ferry_resources`' `state` label)...
    fn states() -> Vec<&'static str>;
    /// ... and this one's, `None` before it has one.
    fn state_name(&self) -> Option<&'static str>;
    type Status: WithConditions + Placeable + HandledRestart + Send + Sync;
    /// What this kind keeps across reconciles, besides the shared context.
    type Memory: Send + Sync + 'static;
    /// What dereferencing found, for the push.
    type Refs: Send;

    /// The resource as the owner of its worker's objects.
    fn owner(&self) -> Result<Owner<'_>, BuildError>;
    /// The WorkerPool its `spec.workerPool` names, if any.
    fn worker_pool(&self) -> Option<&str>;
    fn status(&self) -> Option<&Self::Status>;
    /// Whether its worker should be running (a stopped connection's is scaled to zero, and
    /// is not asked).
    fn runs(&self) -> bool {
        true
    }

    /// Look up what the worker needs besides the spec. An error of the lookup itself fails
    /// the reconcile; what the lookup finds wrong belongs in `Refs`, for the status.
    fn dereference(
        &self,
        namespace: &str,
        ctx: &Context,
    ) -> impl Future<Output = Result<Self::Refs, ReconcileError>> + Send;

    /// Push to the worker (when it can be asked) and derive the new status from its report.
    fn observe(&self, observed: Observed<'_, Self>) -> impl Future<Output = Self::Status> + Send;

    /// The Event a status change calls for: (warning, reason, note). (A restart carried out
    /// is the skeleton's to say.)
    fn event(
        before: Option<&Self::Status>,
        after: &Self::Status,
    ) -> Option<(bool, &'static str, String)>;

    /// Its status is written (or was already as observed): what this kind remembers may now
    /// follow what the API shows.
    fn written(&self, _status: &Self::Status, _ctx: &Context, _memory: &Self::Memory) {}

    /// The resource is going away: forget what this kind remembered of it.
    fn forget(&self, namespace: &str, ctx: &Context, memory: &Self::Memory);

    /// The URLs its worker will connect to, each with the field that names it.
    fn destinations(&self) -> Vec<(String, &str)>;

    // Where it lives when its spec names a WorkerPool: pools plug in here, the skeleton
    // knows none (as Strimzi's never names node pools).

    /// Its home in the WorkerPool `pool`: where its status says it lives, else a worker
    /// chosen now; `Err((reason, message))` when it has none now.
    fn pool_home(
        &self,
        namespace: &str,
        ctx: &Context,
        pool: &str,
    ) -> Result<Home, (&'static str, String)>;
    /// It was newly placed in `pool` (its status shows it now): the pool counts it.
    fn placed(namespace: &str, ctx: &Context, pool: &str);
    /// Deleted while placed on a pool worker: that worker stops hosting it (`purge`: and
    /// removes what it kept there).
    fn leave_pool(
        &self,
        namespace: &str,
        ctx: &Context,
        placement: &crate::api::worker_pool::Placement,
        purge: crate::wire::Purge,
    ) -> impl Future<Output = Result<(), ReconcileError>> + Send;
}

/// Where a resource's worker is: the StatefulSet, the pod, its tokens, and (in a pool) the
/// placement its status shows.
pub struct Home {
    pub set: String,
    pub pod: String,
    pub tokens: crate::operator::objects::builders::WorkerTokens,
    pub placement: Option<crate::api::worker_pool::Placement>,
}

/// Counts a kind's objects in its controller's cache by state, for `ferry_resources`.
pub fn count_by_state<R: WorkerResource>(
    cache: kube::runtime::reflector::Store<kube::core::DeserializeGuard<R>>,
) -> crate::operator::runtime::metrics::CountByState {
    crate::operator::runtime::metrics::CountByState::new(R::KIND, R::states(), cache, R::state_name)
}

/// What the observe step works with.
pub struct Observed<'a, R: WorkerResource> {
    pub namespace: &'a str,
    pub ctx: &'a Context,
    pub memory: &'a R::Memory,
    /// The worker's pod; `None` when the resource's worker does not run.
    pub worker: Option<Result<ReadyWorker, WorkerPodUnavailable>>,
    pub refs: R::Refs,
    /// A transport's ingest token (its worker, dedicated or a pool's, is told its hash).
    pub ingest_token: Option<String>,
    /// `ferry.dev/reconcile: paused`: the worker is read, nothing is pushed to it.
    pub paused: bool,
}

/// The annotation that pauses a resource's reconciliation (value [`PAUSED`]).
pub const RECONCILE_ANNOTATION: &str = "ferry.dev/reconcile";
pub const PAUSED: &str = "paused";

/// Why a paused resource's worker could not be read (one that does not host it says so).
pub fn paused_read_error(e: &crate::operator::runtime::worker_client::WorkerCallError) -> String {
    if e.is_not_hosted() {
        "reconciliation is paused and its worker does not host it: nothing is pushed until the annotation ferry.dev/reconcile: paused goes".into()
    } else {
        e.to_string()
    }
}

/// Whether `meta` carries `ferry.dev/reconcile: paused`.
pub fn is_paused(meta: &kube::core::ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(RECONCILE_ANNOTATION))
        .is_some_and(|v| v == PAUSED)
}

pub async fn reconcile<R: WorkerResource>(
    object: Arc<R>,
    ctx: Arc<Context>,
    memory: Arc<R::Memory>,
) -> Result<Action, ReconcileError> {
    let namespace = object.namespace().unwrap_or_else(|| "default".into());
    let api: Api<R> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, object, |event| async {
        match event {
            Finalizer::Apply(object) => apply(&*object, &namespace, &ctx, &memory).await,
            Finalizer::Cleanup(object) => cleanup(&*object, &namespace, &ctx, &memory).await,
        }
    })
    .await
    .map_err(ReconcileError::from_finalizer)
}

async fn apply<R: WorkerResource>(
    object: &R,
    namespace: &str,
    ctx: &Context,
    memory: &R::Memory,
) -> Result<Action, ReconcileError> {
    // A URL that reaches a forbidden address is never given to a worker. Names are looked up
    // for a new generation and at the latest every RESYNC, not on every report's reconcile.
    let uid = object.meta().uid.clone().unwrap_or_default();
    let generation = object.meta().generation;
    // Paused (`ferry.dev/reconcile: paused`): nothing of its objects is changed and nothing is
    // pushed; its worker is only read, and its status says so.
    let paused = is_paused(object.meta());
    if !paused && ctx.destinations_due(&uid, generation, RESYNC) {
        for (field, url) in object.destinations() {
            if let Err(refusal) = ctx.defaults.forbidden_destinations.check_url(url).await {
                let why = format!("{field}: {refusal}");
                return not_run(object, namespace, ctx, FORBIDDEN_DESTINATION, &why, RESYNC).await;
            }
        }
        ctx.destinations_found_allowed(&uid, generation);
    }
    let refs = object.dereference(namespace, ctx).await?;
    let owner = object.owner()?;
    // With TLS: the CA bundle in the namespace's ConfigMap, where producers may find it (the
    // producers' Secret holds it too: a ConfigMap that cannot be written holds nothing up).
    if let Some(authority) = &ctx.authority
        && !paused
        && let Err(e) = authority.publish(&ctx.client, namespace).await
    {
        tracing::warn!(namespace, error = %crate::kube_error_line(&e), "cannot publish the CA bundle as ConfigMap ferry-ca; producers read ca.crt from their Secret");
    }
    // Build and apply its own worker's objects; or, in a WorkerPool, its own ingest token and
    // its place there.
    let mut ingest_token = None;
    let home = match object.worker_pool() {
        None => {
            let tokens = if paused {
                match existing_tokens(ctx, namespace, &owner).await? {
                    Some(tokens) => tokens,
                    None => {
                        let why = "paused before its worker was made: nothing to read";
                        return not_run(object, namespace, ctx, "Paused", why, RESYNC).await;
                    }
                }
            } else {
                apply_or_report(ctx, namespace, &owner, object, object.status()).await?
            };
            // Its worker is told the hash of the producers' token with the spec, as a pool's
            // is: a token replaced in the Secret (rotation) is taken, and the old one refused,
            // as soon as it is pushed.
            if R::INGESTS && !paused {
                ingest_token = Some(tokens.ingest.clone());
            }
            Home {
                tokens,
                set: owner.worker_name(),
                pod: pod_name(&owner.worker_name()),
                placement: None,
            }
        }
        Some(pool) => {
            if paused && object.status().and_then(Placeable::placement).is_none() {
                let why = format!("paused before it had a place in WorkerPool {pool}");
                return not_run(object, namespace, ctx, "Paused", &why, RESYNC).await;
            }
            if R::INGESTS && !paused {
                let applying = apply_ingest_secret(ctx, namespace, &owner);
                ingest_token =
                    Some(reported(ctx, namespace, object, object.status(), applying).await?);
            }
            match object.pool_home(namespace, ctx, pool) {
                Ok(home) => home,
                Err((reason, why)) => {
                    let again = ctx.status_interval;
                    return not_run(object, namespace, ctx, reason, &why, again).await;
                }
            }
        }
    };
    let worker = if object.runs() {
        Some(ready_worker(ctx, namespace, &home.set, &home.pod, &home.tokens).await)
    } else {
        None
    };
    // A worker pod that is missing is looked at again soon: why (a FailedCreate Event) is not
    // watched. A pod that exists is: its changes reconcile the resource.
    let waits_for_worker = matches!(&worker, Some(Err(e)) if !e.is_watched());
    if !matches!(worker, Some(Ok(_))) {
        ctx.reports.stop(R::KIND, namespace, &object.name_any());
    }
    let observed = Observed {
        namespace,
        ctx,
        memory,
        worker,
        refs,
        ingest_token,
        paused,
    };
    let mut status = object.observe(observed).await;
    let conditions = reconcile_paused(status.conditions(), paused, generation, &now());
    *status.conditions_mut() = conditions;
    // Newly placed: its pool counts it once its status shows the place (status changes do
    // not reach the pool through the resource's watch).
    let newly_placed = home
        .placement
        .as_ref()
        .filter(|p| object.status().and_then(Placeable::placement) != Some(*p))
        .map(|p| p.worker_pool.clone());
    status.set_placement(home.placement);
    if let Some(changed) = to_write(object.status(), status.clone()) {
        write_status(&ctx.client, object, namespace, &changed).await?;
    }
    if let Some(pool) = newly_placed {
        R::placed(namespace, ctx, &pool);
    }
    object.written(&status, ctx, memory);
    let restarted = crate::operator::reconcile::restart::restarted_event(
        object
            .status()
            .and_then(HandledRestart::last_handled_restart),
        status.last_handled_restart(),
    );
    if let Some((warning, reason, note)) = restarted.or_else(|| R::event(object.status(), &status))
    {
        let reference = object.object_ref(&());
        ctx.events.publish(&reference, warning, reason, note).await;
    }
    // Settled, it is reconciled again when something changes (its spec, its worker objects,
    // its worker's report) and at the latest after RESYNC; on its way somewhere, or waiting for
    // its worker, it is looked at every --status-interval.
    // Its worker waiting for its place in a rollout of the operator's template, or restarting
    // in one, is looked at again soon too.
    let waits_for_rollout =
        crate::operator::workers::rollout::in_rollout(ctx, namespace, &home.set);
    if settled(&status) && !waits_for_worker && !waits_for_rollout {
        // Sooner when its worker's certificate is due for renewal.
        Ok(Action::requeue(
            crate::operator::workers::worker_objects::renewal_due(&home.tokens, ctx, RESYNC),
        ))
    } else {
        Ok(Action::requeue(ctx.status_interval))
    }
}

/// A resource that does not run as its spec says: its WorkerPool cannot take it (yet; looked
/// at again every `--status-interval` and when the pool changes), or it names a forbidden
/// destination (looked at again when it changes, and at the latest after [`RESYNC`]: a name
/// may resolve elsewhere later). The status says why, the last known state kept; nothing is
/// pushed to a worker.
async fn not_run<R: WorkerResource>(
    object: &R,
    namespace: &str,
    ctx: &Context,
    reason: &str,
    why: &str,
    again: std::time::Duration,
) -> Result<Action, ReconcileError> {
    let mut status = object.status().cloned().unwrap_or_default();
    let conditions = not_running(
        status.conditions(),
        object.meta().generation,
        reason,
        why,
        now(),
    );
    let conditions = reconcile_paused(
        &conditions,
        is_paused(object.meta()),
        object.meta().generation,
        &now(),
    );
    *status.conditions_mut() = conditions;
    if let Some(changed) = to_write(object.status(), status) {
        write_status(&ctx.client, object, namespace, &changed).await?;
    }
    Ok(Action::requeue(again))
}

/// How often a settled resource is reconciled while nothing changes: a safety net, each pass
/// of which reads caches and asks the API server nothing.
pub const RESYNC: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// A status that waits for nothing: not `Progressing`.
fn settled<S: WithConditions>(status: &S) -> bool {
    !status
        .conditions()
        .iter()
        .any(|c| c.type_ == "Progressing" && c.status == "True")
}

/// Deletion: `reclaimPolicy: Delete` removes the worker's volume (the StatefulSet's own
/// retention policy does too, where the cluster supports it); `Retain` keeps it, and what is
/// queued in it. The owned objects go with the resource (owner references). A pooled resource
/// has no volume of its own: `Delete` removes what it kept on its pool worker's, `Retain`
/// leaves it there.
async fn cleanup<R: WorkerResource>(
    object: &R,
    namespace: &str,
    ctx: &Context,
    memory: &R::Memory,
) -> Result<Action, ReconcileError> {
    let owner = object.owner()?;
    // On a pool's worker: the worker stops hosting it (the others there go on).
    if let Some(placement) = object.status().and_then(Placeable::placement) {
        let purge = match owner.reclaim_policy() {
            ReclaimPolicy::Delete => crate::wire::Purge::Remove,
            ReclaimPolicy::Retain => crate::wire::Purge::Keep,
        };
        object.leave_pool(namespace, ctx, placement, purge).await?;
    }
    object.forget(namespace, ctx, memory);
    ctx.reports.stop(R::KIND, namespace, &object.name_any());
    ctx.forget_objects(owner.uid());
    ctx.metrics.forget_worker(
        namespace,
        &crate::operator::workers::worker_pod::pod_name(&owner.worker_name()),
    );
    if object.worker_pool().is_none() {
        crate::operator::workers::rollout::forget(ctx, namespace, &owner.worker_name());
    }
    if object.worker_pool().is_none() && owner.reclaim_policy() == ReclaimPolicy::Delete {
        delete_claim(ctx, namespace, &owner.worker_name()).await?;
    }
    Ok(Action::await_change())
}
