//! The worker rollout at one worker StatefulSet (docs/operator.md#rollouts): whether its new
//! template is applied now or waits for a place (`runtime::rollouts` keeps the places), and
//! what its pods show of a restart under way. Events say when a worker starts restarting for
//! the operator's template, when it is done and when it is stuck.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::ObjectReference};

use crate::operator::{
    runtime::caches::cached,
    runtime::context::Context,
    runtime::rollouts::{
        APPLIED_FOR_ANNOTATION, Admission, Progress, TEMPLATE_HASH_ANNOTATION, needs_place,
    },
    workers::worker_pod::is_ready,
};

/// The StatefulSet's new form marked with its template's hash and the resource's own inputs
/// it is applied for (`own`: `rollouts::applied_for`); answers the hash.
pub fn mark(set: &mut StatefulSet, own: &str) -> String {
    let template = set.spec.as_ref().map(|spec| &spec.template);
    let hash = crate::stable_hash_hex(&serde_json::to_string(&template).unwrap_or_default(), 16);
    let annotations = set.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(TEMPLATE_HASH_ANNOTATION.into(), hash.clone());
    annotations.insert(APPLIED_FOR_ANNOTATION.into(), own.to_owned());
    hash
}

/// Whether the worker StatefulSet `set` may be applied now with a template whose hash is
/// `hash`: `applied` are its annotations as last applied (`None`: it does not exist yet). A
/// change that needs a place and has none waits; the reconcile comes back every
/// `--status-interval` while it waits.
pub async fn may_apply(
    ctx: &Context,
    namespace: &str,
    set: &str,
    (applied, hash, own): (Option<&BTreeMap<String, String>>, &str, &str),
    (replicas, reference): (usize, &ObjectReference),
) -> bool {
    let key = format!("{namespace}/{set}");
    let pods = pods_of(ctx, namespace, set, replicas);
    observe(ctx, &key, &pods, replicas, reference).await;
    if !needs_place(applied, hash, own) {
        ctx.rollouts().applied(&key);
        return true;
    }
    let before: BTreeSet<String> = pods.iter().map(|(uid, _)| uid.clone()).collect();
    let limit = ctx.rollout_limit();
    let now = ctx.now_ms();
    let (admission, counts) = {
        let mut rollouts = ctx.rollouts();
        (rollouts.admit(&key, before, limit, now), rollouts.counts())
    };
    ctx.metrics.set_rollouts(counts);
    match admission {
        Admission::Holding => true,
        Admission::Started { rolling, limit } => {
            let note = format!(
                "worker {set} restarts for the operator's new worker template (image {}): {rolling} of at most {limit} workers restarting, {} waiting",
                ctx.defaults.image, counts.waiting
            );
            tracing::info!(worker = %key, rolling, limit, waiting = counts.waiting, "worker rollout: restarting for the operator's new worker template");
            ctx.events
                .publish(reference, false, "WorkerRollout", note)
                .await;
            true
        }
        Admission::Waiting(why) => {
            tracing::debug!(worker = %key, %why, "worker rollout: waits for a place");
            false
        }
    }
}

/// A look at a worker holding a place: given back once its pods are all new and Ready.
async fn observe(
    ctx: &Context,
    key: &str,
    pods: &[(String, bool)],
    replicas: usize,
    reference: &ObjectReference,
) {
    let timeout = u64::try_from(ctx.rollout_policy.timeout.as_millis()).unwrap_or(u64::MAX);
    let progress = ctx
        .rollouts()
        .observe(key, pods, replicas, ctx.now_ms(), timeout);
    let note = match progress {
        None | Some(Progress::Rolling) => return,
        Some(Progress::Done(took_ms)) => {
            tracing::info!(worker = %key, took_ms, "worker rollout: worker new and Ready");
            (
                false,
                "WorkerRolledOut",
                format!(
                    "worker {key} runs the operator's new worker template and is Ready (took {:.1}s)",
                    took_ms as f64 / 1000.0
                ),
            )
        }
        Some(Progress::Stuck) => {
            tracing::warn!(worker = %key, "worker rollout stopped: the worker is not new and Ready within --rollout-timeout");
            (
                true,
                "WorkerRolloutStuck",
                format!(
                    "worker {key} is not new and Ready within --rollout-timeout ({}): no further worker restarts until it is",
                    crate::api::duration::Duration::from_secs(ctx.rollout_policy.timeout.as_secs())
                ),
            )
        }
    };
    ctx.metrics.set_rollouts(ctx.rollouts().counts());
    let (warning, reason, note) = note;
    ctx.events.publish(reference, warning, reason, note).await;
}

/// The StatefulSet's pods `set-0` … `set-(replicas-1)` as the cache has them: (uid, Ready).
fn pods_of(ctx: &Context, namespace: &str, set: &str, replicas: usize) -> Vec<(String, bool)> {
    (0..replicas)
        .filter_map(|ordinal| cached(&ctx.caches.pods, namespace, &format!("{set}-{ordinal}")))
        .map(|pod| (pod.metadata.uid.clone().unwrap_or_default(), is_ready(&pod)))
        .collect()
}

/// The worker is gone with its resource: it holds and waits for no place.
pub fn forget(ctx: &Context, namespace: &str, set: &str) {
    ctx.rollouts().forget(&format!("{namespace}/{set}"));
    ctx.metrics.set_rollouts(ctx.rollouts().counts());
}

/// Whether the worker waits for a place or holds one: its reconcile comes back every
/// `--status-interval` (a held pod that never changes would otherwise not be looked at again
/// before the resync, and never be found stuck).
pub fn in_rollout(ctx: &Context, namespace: &str, set: &str) -> bool {
    ctx.rollouts().is_in_rollout(&format!("{namespace}/{set}"))
}
