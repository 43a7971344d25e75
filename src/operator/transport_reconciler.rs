//! Reconciling a Transport: dereference → build → apply → push to and read from the worker →
//! write status (the layout of kube-rs' controller-rs).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{PersistentVolumeClaim, Pod, Secret, Service},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{
        controller::Action,
        finalizer::{Event as Finalizer, finalizer},
    },
};
use serde_json::json;

use super::{
    builders::{BuildError, Owner, WorkerDefaults, WorkerTokens},
    events::{Events, transport_event},
    status::{WithConditions, name_conflict, objects_refused, transport_status},
    worker_client::{WorkerClient, WorkerPod},
};
use crate::{
    api::{Transport, storage::ReclaimPolicy},
    transport::runtime::TransportReport,
};

/// The one field manager of everything the operator applies.
pub const FIELD_MANAGER: &str = "ferry-operator";
/// Held until the worker's volume has been dealt with as `reclaimPolicy` says.
pub const FINALIZER: &str = "ferry.dev/worker-storage";

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("the API server refused: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Finalizer(String),
    #[error(
        "a {kind} named {name} already exists in namespace {namespace} and is not controlled by {owner}; ferry leaves it as it is: delete or rename it, or rename the resource"
    )]
    NameConflict {
        kind: &'static str,
        name: String,
        namespace: String,
        owner: String,
    },
}

impl ReconcileError {
    /// The step's own error when it failed inside the finalizer's apply or cleanup (so the
    /// metric and the Event name it); the finalizer's own failures otherwise.
    pub fn from_finalizer(e: kube::runtime::finalizer::Error<ReconcileError>) -> Self {
        use kube::runtime::finalizer::Error;
        match e {
            Error::ApplyFailed(inner) | Error::CleanupFailed(inner) => inner,
            other => ReconcileError::Finalizer(other.to_string()),
        }
    }

    /// A short label for the errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            ReconcileError::Build(_) => "build",
            ReconcileError::Kube(_) => "api",
            ReconcileError::Finalizer(_) => "finalizer",
            ReconcileError::NameConflict { .. } => "conflict",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: kube::Client,
    pub workers: WorkerClient,
    pub defaults: WorkerDefaults,
    pub status_interval: Duration,
    pub events: Events,
    /// What each worker was last given, by resource: (generation, worker pod uid). A new
    /// generation or a new pod (the worker restarted) means the spec is pushed again. Empty
    /// after an operator restart, so everything is pushed once more.
    pushed: Mutex<HashMap<String, (Option<i64>, String)>>,
    /// Resources (by uid) whose Service and StatefulSet this operator found to be their own
    /// and applied: their ownership is not read again on every status refresh. Empty after an
    /// operator restart, so each is checked once more.
    owned: Mutex<std::collections::HashSet<String>>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        workers: WorkerClient,
        defaults: WorkerDefaults,
        status_interval: Duration,
    ) -> Self {
        Self {
            client,
            workers,
            defaults,
            status_interval,
            events: Events::default(),
            pushed: Mutex::new(HashMap::new()),
            owned: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Publish Kubernetes Events for state changes and errors.
    pub fn with_events(mut self, events: Events) -> Self {
        self.events = events;
        self
    }

    fn pushed(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Option<i64>, String)>> {
        self.pushed.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn owned(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.owned.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) fn now() -> Time {
    Time(Timestamp::now())
}

/// Fresh tokens: 244 random bits each.
pub(super) fn generate_tokens() -> WorkerTokens {
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
pub(super) fn tokens_of(secret: &Secret) -> Option<WorkerTokens> {
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

pub async fn reconcile_transport(
    transport: Arc<Transport>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let namespace = transport.namespace().unwrap_or_else(|| "default".into());
    let api: Api<Transport> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, transport, |event| async {
        match event {
            Finalizer::Apply(transport) => apply(&transport, &namespace, &ctx).await,
            Finalizer::Cleanup(transport) => cleanup(&transport, &namespace, &ctx).await,
        }
    })
    .await
    .map_err(ReconcileError::from_finalizer)
}

async fn apply(
    transport: &Transport,
    namespace: &str,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    let owner = Owner::transport(transport)?;
    let worker = owner.worker_name();
    let client = &ctx.client;
    let tokens =
        apply_or_report(ctx, namespace, &owner, transport, transport.status.as_ref()).await?;

    let report = worker_report(transport, namespace, &worker, &tokens, ctx).await;
    let status = transport_status(
        transport.status.as_ref(),
        transport.metadata.generation,
        transport.spec.suspended,
        report.as_ref().map_err(String::as_str),
        now(),
    );
    write_status(client, transport, namespace, &status).await?;
    if let Some((warning, reason, note)) = transport_event(transport.status.as_ref(), &status) {
        let reference = transport.object_ref(&());
        ctx.events.publish(&reference, warning, reason, note).await;
    }
    Ok(Action::requeue(ctx.status_interval))
}

/// Write `.status` by server-side apply as the one field manager: what the operator no longer
/// sets (a startup queue position, a sync-set's last error) disappears, which a merge patch
/// would leave behind.
pub(super) async fn write_status<K>(
    client: &kube::Client,
    object: &K,
    namespace: &str,
    status: &impl serde::Serialize,
) -> Result<(), ReconcileError>
where
    K: super::NamespacedObject,
{
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    Api::<K>::namespaced(client.clone(), namespace)
        .patch_status(
            &object.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await?;
    Ok(())
}

/// Push the spec when the worker has not got this generation (or restarted), then read its
/// report. `Err` says why the worker could not be read.
async fn worker_report(
    transport: &Transport,
    namespace: &str,
    worker: &str,
    tokens: &WorkerTokens,
    ctx: &Context,
) -> Result<TransportReport, String> {
    let (target, pod_uid) = ready_worker(ctx, namespace, worker, tokens)
        .await
        .map_err(|e| e.to_string())?;
    let key = format!("Transport {namespace}/{}", transport.name_any());
    let path = format!("/v1/transports/{namespace}/{}", transport.name_any());
    let wanted = (transport.metadata.generation, pod_uid);
    let fresh = ctx.pushed().get(&key) == Some(&wanted);
    if fresh {
        match ctx.workers.get::<TransportReport>(&target, &path).await {
            Ok(report) => return Ok(report),
            // The worker lost it (a new disk): push again.
            Err(e) if e.is_not_hosted() => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let manifest = json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "Transport",
        "metadata": {
            "name": transport.name_any(),
            "namespace": namespace,
            "generation": transport.metadata.generation,
        },
        "spec": transport.spec,
    });
    let report = ctx
        .workers
        .put::<TransportReport>(&target, &path, &manifest)
        .await
        .map_err(|e| e.to_string())?;
    ctx.pushed().insert(key, wanted);
    Ok(report)
}

/// Deletion: `reclaimPolicy: Delete` removes the worker's volume (the StatefulSet's own
/// retention policy does too, where the cluster supports it); `Retain` keeps it, and the
/// queued transactions in it. The owned objects go with the Transport (owner references).
async fn cleanup(
    transport: &Transport,
    namespace: &str,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    let owner = Owner::transport(transport)?;
    ctx.pushed()
        .remove(&format!("Transport {namespace}/{}", transport.name_any()));
    ctx.owned().remove(owner.uid());
    if transport.spec.storage.reclaim_policy == ReclaimPolicy::Delete {
        delete_claim(ctx, namespace, &owner.worker_name()).await?;
    }
    Ok(Action::await_change())
}

/// Apply the worker's objects; when the API server refuses them, say so in the resource's
/// conditions (its last known state kept) before the reconcile fails.
pub(super) async fn apply_or_report<K, S>(
    ctx: &Context,
    namespace: &str,
    owner: &Owner<'_>,
    object: &K,
    status: Option<&S>,
) -> Result<WorkerTokens, ReconcileError>
where
    K: super::NamespacedObject,
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
pub(super) async fn apply_worker_objects(
    ctx: &Context,
    namespace: &str,
    owner: &Owner<'_>,
) -> Result<WorkerTokens, ReconcileError> {
    let worker = owner.worker_name();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
    let stateful_sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
    // Only objects this resource controls are applied (the apply is forced) and only its own
    // Secret gives the tokens: an unrelated object of the same name is never taken over.
    let conflict = |kind| ReconcileError::NameConflict {
        kind,
        name: worker.clone(),
        namespace: namespace.to_owned(),
        owner: owner.describe(),
    };
    let secret = secrets.get_opt(&worker).await?;
    if secret
        .as_ref()
        .is_some_and(|s| !owner.controls(&s.metadata))
    {
        return Err(conflict("Secret"));
    }
    // The Service and StatefulSet are read only until this operator has applied them once: a
    // name cannot be taken by someone else while our object holds it.
    if !ctx.owned().contains(owner.uid()) {
        if let Some(service) = services.get_metadata_opt(&worker).await?
            && !owner.controls(&service.metadata)
        {
            return Err(conflict("Service"));
        }
        if let Some(set) = stateful_sets.get_metadata_opt(&worker).await?
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
        .patch(&worker, &apply, &Patch::Apply(owner.secret(&tokens)?))
        .await?;
    services
        .patch(&worker, &apply, &Patch::Apply(owner.service()?))
        .await?;
    stateful_sets
        .patch(
            &worker,
            &apply,
            &Patch::Apply(owner.stateful_set(&ctx.defaults)?),
        )
        .await?;
    ctx.owned().insert(owner.uid().to_owned());
    Ok(tokens)
}

/// The worker's pod, when it is ready to be asked, with its uid (a new uid: the worker
/// restarted). `Err` says why it cannot be asked.
pub(super) async fn ready_worker(
    ctx: &Context,
    namespace: &str,
    worker: &str,
    tokens: &WorkerTokens,
) -> Result<(WorkerPod, String), WorkerPodUnavailable> {
    let pod_name = format!("{worker}-0");
    let pod = Api::<Pod>::namespaced(ctx.client.clone(), namespace)
        .get_opt(&pod_name)
        .await
        .map_err(|e| {
            WorkerPodUnavailable::Unreadable(format!("cannot read the worker pod {pod_name}: {e}"))
        })?;
    let Some(pod) = pod else {
        return Err(WorkerPodUnavailable::NotRunning(
            match creation_failure(ctx, namespace, worker).await {
                Some(why) => format!("the worker pod {pod_name} cannot be created: {why}"),
                None => format!("the worker pod {pod_name} does not exist yet"),
            },
        ));
    };
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    if !ready {
        return Err(WorkerPodUnavailable::NotRunning(
            match super::status::pod_not_ready_reason(&pod) {
                Some(why) => format!("the worker pod {pod_name} is not ready: {why}"),
                None => format!("the worker pod {pod_name} is not ready"),
            },
        ));
    }
    let target = WorkerPod {
        namespace: namespace.to_owned(),
        pod: pod_name,
        pod_ip: pod.status.as_ref().and_then(|s| s.pod_ip.clone()),
        admin_token: tokens.admin.clone(),
    };
    Ok((target, pod.metadata.uid.unwrap_or_default()))
}

/// Why a worker cannot be asked: its pod could not be read (the API server), or it is not
/// running (missing, pending, not ready). The message says which pod and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum WorkerPodUnavailable {
    #[error("{0}")]
    Unreadable(String),
    #[error("{0}")]
    NotRunning(String),
}

/// Why the StatefulSet controller cannot create the worker's pod (quota, admission, an invalid
/// pod), from its latest `FailedCreate` Event; None when there is none or it cannot be read.
async fn creation_failure(ctx: &Context, namespace: &str, worker: &str) -> Option<String> {
    use k8s_openapi::api::core::v1::Event;
    let selector =
        format!("involvedObject.kind=StatefulSet,involvedObject.name={worker},reason=FailedCreate");
    let events = Api::<Event>::namespaced(ctx.client.clone(), namespace)
        .list(&kube::api::ListParams::default().fields(&selector))
        .await
        .ok()?;
    events
        .items
        .into_iter()
        .max_by_key(|e| {
            e.last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or_else(|| e.event_time.as_ref().map(|t| t.0))
        })
        .and_then(|e| e.message)
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
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! The controller-rs `ApiServerVerifier` pattern: a mock API server answers each request the
    //! reconciler makes, in order, and checks it.

    use super::*;
    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::Value;

    pub(crate) type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn transport(finalized: bool, reclaim: &str) -> Transport {
        let mut t: Transport = serde_json::from_value(json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
            "metadata": {"name": "erp", "namespace": "plant-a", "uid": "uid-1", "generation": 2},
            "spec": {"host": {"url": "http://erp/ingest"}, "storage": {"reclaimPolicy": reclaim}},
        }))
        .unwrap();
        if finalized {
            t.metadata.finalizers = Some(vec![FINALIZER.into()]);
        }
        t
    }

    pub(crate) fn context(client: kube::Client) -> Arc<Context> {
        crate::install_crypto_provider();
        Arc::new(Context::new(
            client,
            WorkerClient::direct(Duration::from_secs(1)).unwrap(),
            WorkerDefaults::default(),
            Duration::from_secs(5),
        ))
    }

    pub(crate) fn respond(status: u16, body: Value) -> Response<Body> {
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    pub(crate) fn not_found() -> Response<Body> {
        respond(
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
        )
    }

    /// The next request: its method, path and JSON body.
    pub(crate) async fn next(
        handle: &mut Handle,
    ) -> (
        Method,
        String,
        Value,
        tower_test::mock::SendResponse<Response<Body>>,
    ) {
        let (request, send) = handle
            .next_request()
            .await
            .expect("the reconciler made a request");
        let method = request.method().clone();
        let path = request.uri().to_string();
        let bytes = http_body_util::BodyExt::collect(request.into_body())
            .await
            .unwrap()
            .to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (method, path, body, send)
    }

    pub(crate) fn mock() -> (kube::Client, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (kube::Client::new(service, "default"), handle)
    }

    /// `metadata.ownerReferences` naming `uid` as the controller.
    pub(crate) fn controlled_by(uid: &str) -> Value {
        json!([{"apiVersion": "ferry.dev/v1alpha1", "kind": "Transport", "name": "x",
                "uid": uid, "controller": true}])
    }

    /// Answer the ownership lookups of the worker's Service and StatefulSet: none exists yet.
    pub(crate) async fn service_and_stateful_set_absent(handle: &mut Handle, worker: &str) {
        for kind in ["services", "statefulsets"] {
            let (method, path, _, send) = next(handle).await;
            assert_eq!(method, Method::GET);
            assert!(path.contains(&format!("/{kind}/{worker}")), "{path}");
            send.send_response(not_found());
        }
    }

    /// Answer the Secret lookup with the tokens `worker_at` expects (a Secret controlled by
    /// `uid`), the ownership lookups, then the three applies.
    pub(crate) async fn objects_with_known_tokens(handle: &mut Handle, worker: &str, uid: &str) {
        objects_with_known_tokens_and(handle, worker, uid, true).await;
    }

    /// The same, when the Service's and StatefulSet's ownership is read (`checked`) or already
    /// known from an earlier reconcile of this operator.
    pub(crate) async fn objects_with_known_tokens_and(
        handle: &mut Handle,
        worker: &str,
        uid: &str,
        checked: bool,
    ) {
        let (_, path, _, send) = next(handle).await;
        assert!(path.ends_with(&format!("/secrets/{worker}")), "{path}");
        send.send_response(respond(
            200,
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": worker, "ownerReferences": controlled_by(uid)},
                "data": {"admin-token": "YWRtaW4tdG9rZW4=", "ingest-token": "aW5nZXN0LXRva2Vu"},
            }),
        ));
        if checked {
            service_and_stateful_set_absent(handle, worker).await;
        }
        for _ in 0..3 {
            let (method, _, body, send) = next(handle).await;
            assert_eq!(
                method,
                Method::PATCH,
                "ownership is read once, not on every reconcile"
            );
            if body["kind"] == "Secret" {
                assert_eq!(
                    body["data"]["admin-token"], "YWRtaW4tdG9rZW4=",
                    "tokens kept, not regenerated"
                );
            }
            send.send_response(respond(200, body));
        }
    }

    /// Answer the lookup of the StatefulSet's FailedCreate Events (made when its pod is missing)
    /// with one carrying `message`, or none.
    pub(crate) async fn creation_events(handle: &mut Handle, worker: &str, message: Option<&str>) {
        let (method, path, _, send) = next(handle).await;
        assert_eq!(method, Method::GET);
        assert!(
            path.contains("/events?") && path.contains(worker) && path.contains("FailedCreate"),
            "{path}"
        );
        let items: Vec<Value> = message
            .map(|m| {
                json!({"metadata": {"name": format!("{worker}.1")},
                       "involvedObject": {"kind": "StatefulSet", "name": worker},
                       "reason": "FailedCreate", "message": m,
                       "lastTimestamp": "2026-11-28T06:00:00Z"})
            })
            .into_iter()
            .collect();
        send.send_response(respond(
            200,
            json!({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": items}),
        ));
    }

    /// Answer the pod lookup (in `plant-a`, every test's namespace): no such pod, and no
    /// FailedCreate Event to say why.
    pub(crate) async fn worker_pod_absent(handle: &mut Handle, worker: &str) {
        let (method, path, _, send) = next(handle).await;
        assert_eq!(
            (method, path),
            (
                Method::GET,
                format!("/api/v1/namespaces/plant-a/pods/{worker}-0")
            )
        );
        send.send_response(not_found());
        creation_events(handle, worker, None).await;
    }

    /// Answer the pod lookup: ready, at `ip`, with this uid.
    pub(crate) async fn ready_pod(handle: &mut Handle, worker: &str, ip: &str, uid: &str) {
        let (_, path, _, send) = next(handle).await;
        assert!(path.ends_with(&format!("/pods/{worker}-0")), "{path}");
        send.send_response(respond(
            200,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("{worker}-0"), "uid": uid},
                "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
            }),
        ));
    }

    /// Answer the status write; answers what was written.
    async fn transport_status_written(handle: &mut Handle) -> Value {
        let (method, path, body, send) = next(handle).await;
        assert_eq!(method, Method::PATCH);
        assert!(path.contains("/transports/erp/status"), "{path}");
        assert!(
            path.contains("fieldManager=ferry-operator"),
            "server-side apply: {path}"
        );
        send.send_response(respond(
            200,
            serde_json::to_value(transport(true, "Retain")).unwrap(),
        ));
        body
    }

    /// A loopback address of this test's own, so parallel tests do not collide.
    pub(crate) fn test_ip(last: u8) -> String {
        format!("127.0.{}.{last}", std::process::id() % 250 + 2)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn suspending_pushes_the_new_generation_to_the_worker() {
        let ip = test_ip(35);
        let dir = tempfile::tempdir().unwrap();
        let worker = worker_at(&ip, dir.path()).await;
        let (client, mut handle) = mock();
        let ctx = context(client);
        let mut suspended = transport(true, "Retain");
        suspended.metadata.generation = Some(3);
        suspended.spec.suspended = true;
        let pod_ip = ip.clone();
        let server = tokio::spawn(async move {
            // Generation 2 first, then generation 3 with `suspended: true`; the same pod.
            let mut written = Vec::new();
            for checked in [true, false] {
                objects_with_known_tokens_and(&mut handle, "ferry-tp-erp", "uid-1", checked).await;
                ready_pod(&mut handle, "ferry-tp-erp", &pod_ip, "pod-1").await;
                written.push(transport_status_written(&mut handle).await);
            }
            written
        });
        reconcile_transport(Arc::new(transport(true, "Retain")), ctx.clone())
            .await
            .unwrap();
        reconcile_transport(Arc::new(suspended), ctx).await.unwrap();
        let written = server.await.unwrap();
        assert_eq!(written[0]["status"]["state"], "Down");
        assert_eq!(written[1]["status"]["state"], "Suspended");
        assert_eq!(written[1]["status"]["observedGeneration"], 3);
        // The worker itself has it.
        let report: Value = reqwest::Client::new()
            .get(format!("http://{ip}:8080/v1/transports/plant-a/erp"))
            .bearer_auth("admin-token")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(report["state"], "Suspended", "{report}");
        worker.abort();
    }

    #[tokio::test]
    async fn a_silent_worker_makes_it_not_ready_and_keeps_the_last_state() {
        let (client, mut handle) = mock();
        let ctx = context(client);
        let mut known = transport(true, "Retain");
        known.status = serde_json::from_value(json!({
            "state": "Store and Forward", "observedGeneration": 2,
            "queue": {"messages": 7, "bytes": 70, "oldestAgeSeconds": 3},
        }))
        .unwrap();
        // Nothing listens at this address.
        let ip = test_ip(36);
        let server = tokio::spawn(async move {
            objects_with_known_tokens(&mut handle, "ferry-tp-erp", "uid-1").await;
            ready_pod(&mut handle, "ferry-tp-erp", &ip, "pod-1").await;
            transport_status_written(&mut handle).await
        });
        reconcile_transport(Arc::new(known), ctx).await.unwrap();
        let status = &server.await.unwrap()["status"];
        assert_eq!(status["state"], "Store and Forward", "last known: {status}");
        assert_eq!(status["queue"]["messages"], 7);
        let (ready, reason, _) = condition(status, "Ready");
        assert_eq!(
            (ready.as_str(), reason.as_str()),
            ("False", "WorkerUnreachable")
        );
    }

    /// A condition of a written status: its status, reason and message.
    pub(crate) fn condition(status: &Value, type_: &str) -> (String, String, String) {
        let c = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .unwrap();
        (
            c["status"].as_str().unwrap().to_owned(),
            c["reason"].as_str().unwrap().to_owned(),
            c["message"].as_str().unwrap().to_owned(),
        )
    }

    #[tokio::test]
    async fn refused_worker_objects_show_in_the_status() {
        let (client, mut handle) = mock();
        let ctx = context(client);
        let mut known = transport(true, "Retain");
        known.status =
            serde_json::from_value(json!({"state": "Up", "observedGeneration": 2})).unwrap();
        let server = tokio::spawn(async move {
            let (_, _, _, send) = next(&mut handle).await;
            send.send_response(not_found());
            service_and_stateful_set_absent(&mut handle, "ferry-tp-erp").await;
            // Secret and Service applied; the StatefulSet refused by admission.
            for _ in 0..2 {
                let (_, _, body, send) = next(&mut handle).await;
                send.send_response(respond(200, body));
            }
            let (_, path, _, send) = next(&mut handle).await;
            assert!(path.contains("/statefulsets/ferry-tp-erp"), "{path}");
            send.send_response(respond(
                403,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                       "message": "exceeded quota: compute, requested: requests.memory=64Mi"}),
            ));
            transport_status_written(&mut handle).await
        });
        let error = reconcile_transport(Arc::new(known), ctx).await.unwrap_err();
        assert!(error.to_string().contains("exceeded quota"), "{error}");
        let status = &server.await.unwrap()["status"];
        assert_eq!(
            status["state"], "Up",
            "the last known state stays: {status}"
        );
        let (ready, reason, _) = condition(status, "Ready");
        assert_eq!(
            (ready.as_str(), reason.as_str()),
            ("False", "WorkerObjectsRefused")
        );
    }

    /// An unrelated Secret, Service or StatefulSet of the worker's name is never applied over
    /// (nor its tokens read): Ready=False NameConflict names it.
    #[tokio::test]
    async fn a_foreign_object_of_the_worker_name_is_left_alone() {
        for foreign in ["secrets", "services", "statefulsets"] {
            let (client, mut handle) = mock();
            let ctx = context(client);
            let server = tokio::spawn(async move {
                for kind in ["secrets", "services", "statefulsets"] {
                    let (method, path, _, send) = next(&mut handle).await;
                    assert_eq!(method, Method::GET, "nothing is applied before the checks");
                    assert!(path.contains(&format!("/{kind}/ferry-tp-erp")), "{path}");
                    if kind != foreign {
                        send.send_response(not_found());
                        continue;
                    }
                    // Somebody else's object: owned by another uid, or by nobody.
                    send.send_response(respond(
                        200,
                        json!({"apiVersion": "v1", "kind": "Secret",
                               "metadata": {"name": "ferry-tp-erp", "ownerReferences": controlled_by("someone-else")},
                               "data": {"admin-token": "c3RvbGVu", "ingest-token": "c3RvbGVu"}}),
                    ));
                    break;
                }
                transport_status_written(&mut handle).await
            });
            let error = reconcile_transport(Arc::new(transport(true, "Retain")), ctx)
                .await
                .unwrap_err();
            assert_eq!(error.kind(), "conflict");
            let status = &server.await.unwrap()["status"];
            let (ready, reason, message) = condition(status, "Ready");
            assert_eq!((ready.as_str(), reason.as_str()), ("False", "NameConflict"));
            assert!(
                message.contains("ferry-tp-erp") && message.contains("Transport plant-a/erp"),
                "{message}"
            );
        }
    }

    #[tokio::test]
    async fn a_new_transport_gets_the_finalizer_first() {
        let (client, mut handle) = mock();
        let ctx = context(client);
        let server = tokio::spawn(async move {
            let (method, path, body, send) = next(&mut handle).await;
            assert_eq!(method, Method::PATCH);
            assert!(
                path.starts_with("/apis/ferry.dev/v1alpha1/namespaces/plant-a/transports/erp?"),
                "{path}"
            );
            assert!(body.to_string().contains(FINALIZER), "{body}");
            send.send_response(respond(
                200,
                serde_json::to_value(transport(true, "Retain")).unwrap(),
            ));
        });
        let action = reconcile_transport(Arc::new(transport(false, "Retain")), ctx)
            .await
            .unwrap();
        assert_eq!(action, Action::await_change());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn objects_applied_then_status_written_while_the_worker_starts() {
        let (client, mut handle) = mock();
        let ctx = context(client);
        let server = tokio::spawn(async move {
            // The tokens: no Secret yet, so new ones.
            let (method, path, _, send) = next(&mut handle).await;
            assert_eq!(
                (method, path.as_str()),
                (
                    Method::GET,
                    "/api/v1/namespaces/plant-a/secrets/ferry-tp-erp"
                )
            );
            send.send_response(not_found());
            service_and_stateful_set_absent(&mut handle, "ferry-tp-erp").await;
            // Server-side apply with one field manager, forced: Secret, Service, StatefulSet.
            let mut applied = Vec::new();
            for _ in 0..3 {
                let (method, path, body, send) = next(&mut handle).await;
                assert_eq!(method, Method::PATCH);
                assert!(
                    path.contains("fieldManager=ferry-operator") && path.contains("force=true"),
                    "{path}"
                );
                applied.push((
                    path.split('?').next().unwrap().to_owned(),
                    body["kind"].as_str().unwrap().to_owned(),
                ));
                if body["kind"] == "Secret" {
                    let admin = body["data"]["admin-token"].as_str().unwrap();
                    assert!(admin.len() > 40, "a generated token: {admin}");
                }
                send.send_response(respond(200, body));
            }
            assert_eq!(
                applied,
                [
                    (
                        "/api/v1/namespaces/plant-a/secrets/ferry-tp-erp".to_string(),
                        "Secret".to_string()
                    ),
                    (
                        "/api/v1/namespaces/plant-a/services/ferry-tp-erp".to_string(),
                        "Service".to_string()
                    ),
                    (
                        "/apis/apps/v1/namespaces/plant-a/statefulsets/ferry-tp-erp".to_string(),
                        "StatefulSet".to_string()
                    ),
                ]
            );
            // The worker pod does not exist yet.
            worker_pod_absent(&mut handle, "ferry-tp-erp").await;
            // Status: not Ready, because the worker cannot be asked, and why.
            let (method, path, body, send) = next(&mut handle).await;
            assert_eq!(method, Method::PATCH);
            assert!(
                path.starts_with(
                    "/apis/ferry.dev/v1alpha1/namespaces/plant-a/transports/erp/status"
                ),
                "{path}"
            );
            let (ready, reason, message) = condition(&body["status"], "Ready");
            assert_eq!(
                (ready.as_str(), reason.as_str()),
                ("False", "WorkerUnreachable")
            );
            assert!(message.contains("ferry-tp-erp-0 does not exist yet"));
            send.send_response(respond(
                200,
                serde_json::to_value(transport(true, "Retain")).unwrap(),
            ));
        });
        let action = reconcile_transport(Arc::new(transport(true, "Retain")), ctx)
            .await
            .unwrap();
        assert_eq!(action, Action::requeue(Duration::from_secs(5)));
        server.await.unwrap();
    }

    /// A worker pod the StatefulSet controller cannot create (quota, admission, an invalid
    /// pod) shows why in the status, from the controller's FailedCreate Event.
    #[tokio::test]
    async fn a_pod_that_cannot_be_created_says_why() {
        let (client, mut handle) = mock();
        let ctx = context(client);
        let server = tokio::spawn(async move {
            objects_with_known_tokens(&mut handle, "ferry-tp-erp", "uid-1").await;
            let (_, path, _, send) = next(&mut handle).await;
            assert!(path.ends_with("/pods/ferry-tp-erp-0"), "{path}");
            send.send_response(not_found());
            creation_events(
                &mut handle,
                "ferry-tp-erp",
                Some("create Pod ferry-tp-erp-0 in StatefulSet ferry-tp-erp failed error: pods \"ferry-tp-erp-0\" is forbidden: exceeded quota: compute"),
            )
            .await;
            transport_status_written(&mut handle).await
        });
        reconcile_transport(Arc::new(transport(true, "Retain")), ctx)
            .await
            .unwrap();
        let status = &server.await.unwrap()["status"];
        let (ready, _, message) = condition(status, "Ready");
        assert_eq!(ready, "False");
        assert!(
            message.contains("ferry-tp-erp-0 cannot be created")
                && message.contains("exceeded quota"),
            "{message}"
        );
    }

    fn deleting(reclaim: &str) -> Transport {
        let mut t = transport(true, reclaim);
        t.metadata.deletion_timestamp = Some(now());
        t
    }

    #[tokio::test]
    async fn deletion_with_delete_removes_the_volume() {
        let (client, mut handle) = mock();
        let ctx = context(client);
        let server = tokio::spawn(async move {
            let (method, path, _, send) = next(&mut handle).await;
            assert_eq!(method, Method::DELETE);
            assert!(
                path.starts_with(
                    "/api/v1/namespaces/plant-a/persistentvolumeclaims/data-ferry-tp-erp-0"
                ),
                "{path}"
            );
            send.send_response(respond(200, json!({"kind": "PersistentVolumeClaim", "apiVersion": "v1", "metadata": {"name": "data-ferry-tp-erp-0"}})));
            // Then the finalizer is removed.
            let (method, path, body, send) = next(&mut handle).await;
            assert_eq!(method, Method::PATCH);
            assert!(
                path.starts_with("/apis/ferry.dev/v1alpha1/namespaces/plant-a/transports/erp?"),
                "{path}"
            );
            assert!(body.to_string().contains("remove"), "{body}");
            send.send_response(respond(
                200,
                serde_json::to_value(transport(false, "Delete")).unwrap(),
            ));
        });
        reconcile_transport(Arc::new(deleting("Delete")), ctx)
            .await
            .unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn deletion_with_retain_keeps_the_volume() {
        let (client, mut handle) = mock();
        let ctx = context(client);
        let server = tokio::spawn(async move {
            // No DELETE of the claim: the only request removes the finalizer.
            let (method, path, _, send) = next(&mut handle).await;
            assert_eq!(method, Method::PATCH);
            assert!(
                path.starts_with("/apis/ferry.dev/v1alpha1/namespaces/plant-a/transports/erp?"),
                "{path}"
            );
            send.send_response(respond(
                200,
                serde_json::to_value(transport(false, "Retain")).unwrap(),
            ));
        });
        reconcile_transport(Arc::new(deleting("Retain")), ctx)
            .await
            .unwrap();
        server.await.unwrap();
    }

    /// A worker in this process, listening on a loopback address of its own at the worker
    /// port, standing in for the pod's IP.
    pub(crate) async fn worker_at(ip: &str, dir: &std::path::Path) -> tokio::task::JoinHandle<()> {
        use crate::worker::{
            Worker, WorkerOptions, api,
            tokens::{Token, Tokens},
        };
        let worker = Worker::open(
            WorkerOptions {
                data_dir: dir.to_owned(),
                public_url: format!("http://{ip}:8080"),
                forward_window: 1,
                memory_budget: crate::worker::budget::DEFAULT_BYTES,
            },
            true,
        )
        .await
        .unwrap();
        let tokens = Tokens {
            admin: Some(Token::new("admin-token")),
            ingest: Some(Token::new("ingest-token")),
        };
        let listener = tokio::net::TcpListener::bind((ip, 8080)).await.unwrap();
        tokio::spawn(async move {
            axum::serve(listener, api::router(worker, tokens))
                .await
                .unwrap();
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_spec_is_pushed_to_a_ready_worker_and_its_report_becomes_status() {
        let ip = test_ip(33);
        let dir = tempfile::tempdir().unwrap();
        let worker = worker_at(&ip, dir.path()).await;
        let (client, mut handle) = mock();
        let ctx = context(client);
        let pod_ip = ip.clone();
        let server = tokio::spawn(async move {
            // The Secret exists: its tokens are kept (the worker expects them).
            objects_with_known_tokens(&mut handle, "ferry-tp-erp", "uid-1").await;
            ready_pod(&mut handle, "ferry-tp-erp", &pod_ip, "pod-uid-1").await;
            transport_status_written(&mut handle).await
        });
        reconcile_transport(Arc::new(transport(true, "Retain")), ctx)
            .await
            .unwrap();
        let status = &server.await.unwrap()["status"];
        assert_eq!(status["state"], "Down", "the worker's own state: {status}");
        assert_eq!(status["observedGeneration"], 2);
        assert_eq!(
            status["endpoint"],
            format!("http://{ip}:8080/v1/transports/plant-a/erp/transactions")
        );
        let (ready, reason, _) = condition(status, "Ready");
        assert_eq!((ready.as_str(), reason.as_str()), ("True", "Down"));
        worker.abort();
    }
}
