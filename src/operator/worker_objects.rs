//! The worker's objects of one resource — its Secret (tokens), Service and StatefulSet —
//! applied only where the resource controls them, and its volume claim deleted on request.

use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{PersistentVolumeClaim, Secret, Service},
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
};

use super::{
    NamespacedObject,
    builders::{Owner, WorkerTokens},
    context::{Context, FIELD_MANAGER, now},
    error::ReconcileError,
    status::{WithConditions, name_conflict, objects_refused},
    status_writer::write_status,
};

/// Fresh tokens: 244 random bits each.
fn generate_tokens() -> WorkerTokens {
    let token = || {
        format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        )
    };
    WorkerTokens {
        admin: token(),
        ingest: token(),
    }
}

/// The tokens already in the worker's Secret: kept, so workers and producers keep working.
pub fn tokens_of(secret: &Secret) -> Option<WorkerTokens> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .filter(|t| !t.is_empty())
    };
    Some(WorkerTokens {
        admin: text("admin-token")?,
        ingest: text("ingest-token")?,
    })
}

/// Apply the worker's objects; when the API server refuses them, or one of them belongs to
/// somebody else, say so in the resource's conditions (its last known state kept) before the
/// reconcile fails.
pub(super) async fn apply_or_report<K, S>(
    ctx: &Context,
    namespace: &str,
    owner: &Owner<'_>,
    object: &K,
    status: Option<&S>,
) -> Result<WorkerTokens, ReconcileError>
where
    K: NamespacedObject,
    S: WithConditions,
{
    match apply_worker_objects(ctx, namespace, owner).await {
        Ok(tokens) => Ok(tokens),
        Err(e) => {
            let mut status = status.cloned().unwrap_or_default();
            let conditions = match &e {
                ReconcileError::NameConflict { .. } => name_conflict,
                _ => objects_refused,
            }(
                status.conditions_mut(),
                object.meta().generation,
                &e.to_string(),
                now(),
            );
            *status.conditions_mut() = conditions;
            write_status(&ctx.client, object, namespace, &status).await?;
            Err(e)
        }
    }
}

/// The worker's Secret (its tokens read back, or generated the first time), Service and
/// StatefulSet, through server-side apply with one forced field manager. Answers the tokens.
async fn apply_worker_objects(
    ctx: &Context,
    namespace: &str,
    owner: &Owner<'_>,
) -> Result<WorkerTokens, ReconcileError> {
    let worker = owner.worker_name();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
    let stateful_sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
    let failed = |kind: &str| {
        let object = format!("{kind} {worker}");
        move |source| ReconcileError::Apply { object, source }
    };
    // Only objects this resource controls are applied (the apply is forced) and only its own
    // Secret gives the tokens: an unrelated object of the same name is never taken over.
    let conflict = |kind| ReconcileError::NameConflict {
        kind,
        name: worker.clone(),
        namespace: namespace.to_owned(),
        owner: owner.describe(),
    };
    let secret = secrets.get_opt(&worker).await.map_err(failed("Secret"))?;
    if secret
        .as_ref()
        .is_some_and(|s| !owner.controls(&s.metadata))
    {
        return Err(conflict("Secret"));
    }
    // The Service and StatefulSet are read only until this operator has applied them once: a
    // name cannot be taken by someone else while our object holds it.
    if !ctx.owned().contains(owner.uid()) {
        if let Some(service) = services
            .get_metadata_opt(&worker)
            .await
            .map_err(failed("Service"))?
            && !owner.controls(&service.metadata)
        {
            return Err(conflict("Service"));
        }
        if let Some(set) = stateful_sets
            .get_metadata_opt(&worker)
            .await
            .map_err(failed("StatefulSet"))?
            && !owner.controls(&set.metadata)
        {
            return Err(conflict("StatefulSet"));
        }
    }
    let tokens = secret
        .as_ref()
        .and_then(tokens_of)
        .unwrap_or_else(generate_tokens);
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    secrets
        .patch(&worker, &apply, &Patch::Apply(owner.secret(&tokens)))
        .await
        .map_err(failed("Secret"))?;
    services
        .patch(&worker, &apply, &Patch::Apply(owner.service()))
        .await
        .map_err(failed("Service"))?;
    stateful_sets
        .patch(
            &worker,
            &apply,
            &Patch::Apply(owner.stateful_set(&ctx.defaults)),
        )
        .await
        .map_err(failed("StatefulSet"))?;
    ctx.owned().insert(owner.uid().to_owned());
    Ok(tokens)
}

/// Delete a worker's volume claim (`data-<worker>-0`); one already gone is fine.
pub(super) async fn delete_claim(
    ctx: &Context,
    namespace: &str,
    worker: &str,
) -> Result<(), ReconcileError> {
    let claim = format!("data-{worker}-0");
    match Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), namespace)
        .delete(&claim, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(ReconcileError::Cleanup { claim, source }),
    }
}
