//! The worker's objects of one resource — its Secrets (the producers' ingest token; a
//! dedicated worker's admin token apart), Service, NetworkPolicy and StatefulSet — applied
//! only where the resource controls them, and its volume claim deleted on request.

use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{PersistentVolumeClaim, Secret, Service},
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
};

use crate::operator::{
    NamespacedObject,
    objects::builders::{ADMIN_TOKEN_KEY, INGEST_TOKEN_KEY, Owner, WorkerTls, WorkerTokens},
    objects::certificates::{
        BUNDLE_KEY, CERT_ANNOTATION, CERT_KEY, CertInfo, Issued, PRIVATE_KEY_KEY, unix_now,
    },
    runtime::caches::cached,
    runtime::context::{Context, FIELD_MANAGER, now},
    runtime::error::ReconcileError,
    runtime::status::{WithConditions, name_conflict, objects_refused},
    runtime::status_writer::write_status,
    workers::rollout,
};

/// A fresh token: 244 random bits.
fn generate_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The tokens already in a pool's Secret: kept, so workers and producers keep working.
pub fn tokens_of(secret: &Secret) -> Option<WorkerTokens> {
    Some(WorkerTokens {
        admin: admin_token_of(secret)?,
        ingest: ingest_token_of(secret)?,
        tls: None,
    })
}

/// The admin token in a Secret (a dedicated worker's admin Secret, a pool's Secret, or a
/// dedicated worker's Secret as ferry made it before the two were kept apart).
pub fn admin_token_of(secret: &Secret) -> Option<String> {
    token_in(secret, ADMIN_TOKEN_KEY)
}

/// The CA bundle in a Secret (`ca.crt`: a producers' Secret, or beside a worker's certificate).
pub fn bundle_of(secret: &Secret) -> Option<String> {
    token_in(secret, BUNDLE_KEY)
}

/// The ingest token in a Secret (a worker's, or a pooled resource's own).
pub fn ingest_token_of(secret: &Secret) -> Option<String> {
    token_in(secret, INGEST_TOKEN_KEY)
}

fn token_in(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// A worker's tokens, kept from its Secrets where they hold them, each generated otherwise.
/// A pool's Secret holds both. A dedicated worker's admin token comes from its admin Secret,
/// else — a worker made before ferry kept the two apart — from the producers' Secret, where
/// it used to be (moved, not changed: the running worker keeps answering); its ingest token
/// from the producers' Secret.
fn worker_tokens(secret: Option<&Secret>, admin_secret: Option<&Secret>) -> WorkerTokens {
    WorkerTokens {
        admin: admin_secret
            .and_then(admin_token_of)
            .or_else(|| secret.and_then(admin_token_of))
            .unwrap_or_else(generate_token),
        ingest: secret
            .and_then(ingest_token_of)
            .unwrap_or_else(generate_token),
        tls: None,
    }
}

/// With `--worker-tls`: the worker's certificate, kept from the Secret that holds it while it
/// still serves (issued by the CA that signs now, for the worker's names, not due for
/// renewal), issued anew otherwise; and the bundle that verifies it.
fn worker_tls(
    ctx: &Context,
    owner: &Owner<'_>,
    holder: Option<&Secret>,
) -> Result<Option<WorkerTls>, ReconcileError> {
    if !ctx.defaults.tls {
        return Ok(None);
    }
    let authority = ctx.authority.as_ref().ok_or(ReconcileError::NoCa)?;
    let current = authority.current().ok_or(ReconcileError::NoCa)?;
    let names = owner.tls_names();
    let now = unix_now();
    let kept = holder.and_then(issued_in).filter(|issued| {
        current
            .signing
            .still_serves(&issued.info, &names, now, &authority.policy)
    });
    let issued = match kept {
        Some(issued) => issued,
        None => current.signing.issue(&names, now, &authority.policy)?,
    };
    Ok(Some(WorkerTls {
        issued,
        bundle: current.bundle.clone(),
    }))
}

/// `at_most`, or sooner: when the worker's certificate is due for renewal (a second after, so
/// the reconcile then finds it due), so that it is renewed however long the resync is.
pub(in crate::operator) fn renewal_due(
    tokens: &WorkerTokens,
    ctx: &Context,
    at_most: std::time::Duration,
) -> std::time::Duration {
    let (Some(tls), Some(authority)) = (&tokens.tls, &ctx.authority) else {
        return at_most;
    };
    let due = tls.issued.info.not_after
        - authority.policy.cert_renew_before.as_secs() as i64
        - unix_now()
        + 1;
    at_most.min(std::time::Duration::from_secs(due.max(1) as u64))
}

/// The certificate a Secret holds, with what its annotation says of it.
fn issued_in(secret: &Secret) -> Option<Issued> {
    let info = secret.metadata.annotations.as_ref()?.get(CERT_ANNOTATION)?;
    Some(Issued {
        cert: token_in(secret, CERT_KEY)?,
        key: token_in(secret, PRIVATE_KEY_KEY)?,
        info: serde_json::from_str::<CertInfo>(info).ok()?,
    })
}

/// The CA bundle producers are given, with `--worker-tls`.
fn bundle(ctx: &Context) -> Result<Option<String>, ReconcileError> {
    if !ctx.defaults.tls {
        return Ok(None);
    }
    let current = ctx
        .authority
        .as_ref()
        .and_then(|authority| authority.current())
        .ok_or(ReconcileError::NoCa)?;
    Ok(Some(current.bundle.clone()))
}

/// Apply the worker's objects; when the API server refuses them, or one of them belongs to
/// somebody else, say so in the resource's conditions (its last known state kept) before the
/// reconcile fails.
pub(in crate::operator) async fn apply_or_report<K, S>(
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
    let reference = object.object_ref(&());
    let applying = apply_worker_objects(
        ctx,
        namespace,
        owner,
        (object.meta().generation, &reference),
    );
    reported(ctx, namespace, object, status, applying).await
}

/// The outcome of applying objects (a worker's; a pooled resource's own Secret, with
/// [`apply_ingest_secret`]); a failure is said in the resource's conditions first.
pub(in crate::operator) async fn reported<K, S, T>(
    ctx: &Context,
    namespace: &str,
    object: &K,
    status: Option<&S>,
    applying: impl Future<Output = Result<T, ReconcileError>>,
) -> Result<T, ReconcileError>
where
    K: NamespacedObject,
    S: WithConditions,
{
    match applying.await {
        Ok(applied) => Ok(applied),
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
/// Each is read from the caches first, and applied only when what ferry would apply differs
/// from what it last applied or the object changed since (someone edited or deleted it). A
/// StatefulSet whose template changes because of the operator waits for its place in the
/// rollout (`rollout`); `generation` is its resource's, `reference` the resource for Events.
async fn apply_worker_objects(
    ctx: &Context,
    namespace: &str,
    owner: &Owner<'_>,
    (generation, reference): (Option<i64>, &k8s_openapi::api::core::v1::ObjectReference),
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
    let (secret, admin_secret) = own_secrets(ctx, namespace, owner).await?;
    let at = (namespace, owner);
    let service =
        own_metadata(ctx, at, "Service", &services, &ctx.caches.services, &worker).await?;
    let stateful_set = own_metadata(
        ctx,
        at,
        "StatefulSet",
        &stateful_sets,
        &ctx.caches.stateful_sets,
        &worker,
    )
    .await?;
    let mut tokens = worker_tokens(secret.as_ref(), admin_secret.as_ref());
    tokens.tls = worker_tls(ctx, owner, admin_secret.as_ref().or(secret.as_ref()))?;
    // The admin Secret first: the producers' one loses the admin token only once it is there.
    if let Some(desired) = owner.admin_secret(&tokens) {
        let marker = admin_secret.as_ref().map(|s| version_marker(&s.metadata));
        let failed = |source| ReconcileError::Apply {
            object: format!("Secret {}", owner.admin_secret_name()),
            source,
        };
        apply_if_changed(ctx, owner, &secrets, desired, marker, version_marker)
            .await
            .map_err(failed)?;
    }
    let secret_marker = secret.as_ref().map(|s| version_marker(&s.metadata));
    apply_if_changed(
        ctx,
        owner,
        &secrets,
        owner.secret(&tokens),
        secret_marker,
        version_marker,
    )
    .await
    .map_err(failed("Secret"))?;
    let service_marker = service.as_ref().map(version_marker);
    apply_if_changed(
        ctx,
        owner,
        &services,
        owner.service(),
        service_marker,
        version_marker,
    )
    .await
    .map_err(failed("Service"))?;
    if let Some(desired) = owner.network_policy(&ctx.defaults) {
        let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), namespace);
        let policy = own_metadata(
            ctx,
            at,
            "NetworkPolicy",
            &policies,
            &ctx.caches.network_policies,
            &worker,
        )
        .await?;
        let marker = policy.as_ref().map(version_marker);
        apply_if_changed(ctx, owner, &policies, desired, marker, version_marker)
            .await
            .map_err(failed("NetworkPolicy"))?;
    }
    let set_marker = stateful_set.as_ref().map(generation_marker);
    let mut desired = owner.stateful_set_for(&ctx.defaults, &tokens);
    let own = crate::operator::runtime::rollouts::applied_for(generation, &tokens.admin);
    let hash = rollout::mark(&mut desired, &own);
    let replicas = desired
        .spec
        .as_ref()
        .and_then(|spec| spec.replicas)
        .and_then(|r| usize::try_from(r).ok())
        .unwrap_or(1);
    let applied = stateful_set
        .as_ref()
        .map(|meta| meta.annotations.clone().unwrap_or_default());
    let now = rollout::may_apply(
        ctx,
        namespace,
        &worker,
        (applied.as_ref(), &hash, &own),
        (replicas, reference),
    )
    .await;
    if now {
        apply_if_changed(
            ctx,
            owner,
            &stateful_sets,
            desired,
            set_marker,
            generation_marker,
        )
        .await
        .map_err(failed("StatefulSet"))?;
    }
    ctx.owned().insert(owner.uid().to_owned());
    Ok(tokens)
}

/// The metadata of the worker's object `name` of kind `K`: from the cache, or from the API
/// server until this operator has applied the resource's objects once (a name cannot be taken
/// by someone else while our object holds it). Somebody else's object is a name conflict.
async fn own_metadata<K>(
    ctx: &Context,
    (namespace, owner): (&str, &Owner<'_>),
    kind: &'static str,
    api: &Api<K>,
    cache: &kube::runtime::reflector::Store<kube::core::PartialObjectMeta<K>>,
    name: &str,
) -> Result<Option<ObjectMeta>, ReconcileError>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let meta = match cached(cache, namespace, name) {
        Some(object) => Some(object.metadata.clone()),
        None if !ctx.owned().contains(owner.uid()) => api
            .get_metadata_opt(name)
            .await
            .map_err(|source| ReconcileError::Apply {
                object: format!("{kind} {name}"),
                source,
            })?
            .map(|m| m.metadata),
        None => None,
    };
    if meta.as_ref().is_some_and(|m| !owner.controls(m)) {
        return Err(ReconcileError::NameConflict {
            kind,
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            owner: owner.describe(),
        });
    }
    Ok(meta)
}

/// The worker's own Secret and, for a dedicated worker, its admin Secret (a pool's Secret is
/// both), each only when the resource controls it.
async fn own_secrets(
    ctx: &Context,
    namespace: &str,
    owner: &Owner<'_>,
) -> Result<(Option<Secret>, Option<Secret>), ReconcileError> {
    let worker = owner.worker_name();
    let secret = own_secret(ctx, namespace, owner, &worker).await?;
    let admin_secret = match owner.admin_secret_name() {
        name if name == worker => None,
        name => own_secret(ctx, namespace, owner, &name).await?,
    };
    Ok((secret, admin_secret))
}

/// The worker's Secret `name` (its own, or its admin Secret), from the cache or else the API
/// server, when this resource controls it; somebody else's is a name conflict (its tokens are
/// never taken).
async fn own_secret(
    ctx: &Context,
    namespace: &str,
    owner: &Owner<'_>,
    name: &str,
) -> Result<Option<Secret>, ReconcileError> {
    let name = name.to_owned();
    let secret = match cached(&ctx.caches.secrets, namespace, &name) {
        Some(secret) => Some(Secret::clone(&secret)),
        None => Api::<Secret>::namespaced(ctx.client.clone(), namespace)
            .get_opt(&name)
            .await
            .map_err(|source| ReconcileError::Apply {
                object: format!("Secret {name}"),
                source,
            })?,
    };
    if secret
        .as_ref()
        .is_some_and(|s| !owner.controls(&s.metadata))
    {
        return Err(ReconcileError::NameConflict {
            kind: "Secret",
            name,
            namespace: namespace.to_owned(),
            owner: owner.describe(),
        });
    }
    Ok(secret)
}

/// The worker's tokens as its Secrets hold them now, read only (a paused resource): `None`
/// while they do not exist yet. Only Secrets the resource controls are read.
pub(in crate::operator) async fn existing_tokens(
    ctx: &Context,
    namespace: &str,
    owner: &Owner<'_>,
) -> Result<Option<WorkerTokens>, ReconcileError> {
    let (secret, admin_secret) = own_secrets(ctx, namespace, owner).await?;
    let admin = admin_secret
        .as_ref()
        .and_then(admin_token_of)
        .or_else(|| secret.as_ref().and_then(admin_token_of));
    let ingest = secret.as_ref().and_then(ingest_token_of);
    Ok(admin.zip(ingest).map(|(admin, ingest)| WorkerTokens {
        admin,
        ingest,
        tls: None,
    }))
}

/// A pooled resource's own Secret, with its ingest token kept or generated; answers the token.
pub(in crate::operator) async fn apply_ingest_secret(
    ctx: &Context,
    namespace: &str,
    owner: &Owner<'_>,
) -> Result<String, ReconcileError> {
    let secret = own_secret(ctx, namespace, owner, &owner.worker_name()).await?;
    let token = secret
        .as_ref()
        .and_then(ingest_token_of)
        .unwrap_or_else(generate_token);
    let marker = secret.as_ref().map(|s| version_marker(&s.metadata));
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    apply_if_changed(
        ctx,
        owner,
        &secrets,
        owner.ingest_secret(&token, bundle(ctx)?.as_deref()),
        marker,
        version_marker,
    )
    .await
    .map_err(|source| ReconcileError::Apply {
        object: format!("Secret {}", owner.worker_name()),
        source,
    })?;
    Ok(token)
}

/// An object as it was at a moment: its uid and resourceVersion (a Secret or Service changes
/// only when someone changes it).
fn version_marker(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.uid.as_deref().unwrap_or_default(),
        meta.resource_version.as_deref().unwrap_or_default()
    )
}

/// A StatefulSet's spec as it was at a moment: its uid and generation (its status changes its
/// resourceVersion all the time; a change of its spec by anyone moves its generation).
fn generation_marker(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.uid.as_deref().unwrap_or_default(),
        meta.generation.unwrap_or_default()
    )
}

/// Apply `desired` unless it is what this operator last applied and the object is still as
/// that apply left it (`marker`, from the cache). Remembers what it applied.
async fn apply_if_changed<K>(
    ctx: &Context,
    owner: &Owner<'_>,
    api: &Api<K>,
    desired: K,
    marker: Option<String>,
    marker_of: fn(&ObjectMeta) -> String,
) -> Result<(), kube::Error>
where
    K: kube::Resource<DynamicType = ()>
        + k8s_openapi::Resource
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let hash = crate::stable_hash_hex(&serde_json::to_string(&desired).unwrap_or_default(), 16);
    let name = kube::Resource::meta(&desired)
        .name
        .clone()
        .unwrap_or_default();
    let key = (
        owner.uid().to_owned(),
        format!("{}/{name}", <K as k8s_openapi::Resource>::KIND),
    );
    if let Some(marker) = marker
        && ctx.applied().get(&key) == Some(&(hash.clone(), marker))
    {
        return Ok(());
    }
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let applied = api.patch(&name, &apply, &Patch::Apply(desired)).await?;
    ctx.applied()
        .insert(key, (hash, marker_of(kube::Resource::meta(&applied))));
    Ok(())
}

/// Delete a worker's volume claim (`data-<worker>-0`); one already gone is fine.
pub(in crate::operator) async fn delete_claim(
    ctx: &Context,
    namespace: &str,
    worker: &str,
) -> Result<(), ReconcileError> {
    delete_claims(ctx, namespace, worker, 1).await
}

/// The volume claims of the first `count` workers of the StatefulSet `worker` (a pool's).
pub(in crate::operator) async fn delete_claims(
    ctx: &Context,
    namespace: &str,
    worker: &str,
    count: usize,
) -> Result<(), ReconcileError> {
    let claims = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), namespace);
    for ordinal in 0..count {
        let claim = format!("data-{worker}-{ordinal}");
        match claims.delete(&claim, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => return Err(ReconcileError::Cleanup { claim, source }),
        }
    }
    Ok(())
}
