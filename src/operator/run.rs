//! `ferry operator`: the Transport and Connection controllers, leader election, the startup
//! queue restored from status, and the operator's own `/healthz`, `/readyz` and `/metrics`.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{Pod, Secret, Service},
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Client, Resource, ResourceExt,
    api::ListParams,
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        reflector::{self, ObjectRef},
        watcher,
    },
};
use tokio::sync::watch;

use crate::api::{Connection, Transport, WorkerPool};
use crate::operator::{
    kinds::connection::{Connections, announce_reinitializing},
    objects::builders::WorkerDefaults,
    reconcile::guard::reconcile_guarded,
    reconcile::skeleton::{WorkerResource, count_by_state, reconcile},
    runtime::authority::Authority,
    runtime::caches::{Caches, WORKER_OBJECTS, cached},
    runtime::context::Context,
    runtime::error::ReconcileError,
    runtime::events::Events,
    runtime::leadership::{Leadership, LeaseError, LeaseOptions},
    runtime::metrics::OperatorMetrics,
    runtime::triggers::Triggers,
    runtime::watch_scope::WatchScope,
    runtime::worker_client::{WorkerAccess, WorkerClient},
};

/// Operator-wide settings (flags or environment).
#[derive(Clone, Debug)]
pub struct OperatorOptions {
    pub startup_concurrency: usize,
    pub startup_timeout: Duration,
    /// Whether startup places are shared by the whole cluster or per namespace.
    pub startup_queue_scope: crate::connection::startup_queue::Scope,
    pub status_interval: Duration,
    /// How the operator's worker template changes are rolled out.
    pub rollout: crate::operator::runtime::context::RolloutPolicy,
    /// How many requests to the API server may be in flight at once (watches aside).
    pub api_concurrency: usize,
    /// None: direct in cluster, through the API server's pod proxy outside.
    pub worker_access: Option<WorkerAccess>,
    /// One call to a worker.
    pub worker_timeout: Duration,
    pub defaults: WorkerDefaults,
    /// The namespaces watched (or the whole cluster).
    pub scope: WatchScope,
    /// Where `/healthz`, `/readyz` and `/metrics` listen.
    pub listen: SocketAddr,
    pub leader_election: Option<LeaseOptions>,
    /// This replica's name in Events and the Lease (the pod name in cluster).
    pub instance: String,
    /// The operator's own namespace: its Lease and, with `defaults.tls`, its CA's Secret.
    pub namespace: String,
    /// How long the workers' CA and certificates live (with `defaults.tls`).
    pub certificates: crate::operator::objects::certificates::CertificatePolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error(
        "cannot reach the Kubernetes API (in a pod: its service account; outside: KUBECONFIG or ~/.kube/config): {}", crate::kube_error_line(.0)
    )]
    Client(#[source] kube::Error),
    #[error("cannot listen on {addr} for /healthz, /readyz and /metrics: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the ferry.dev CustomResourceDefinitions are not installed (kubectl apply -f crds/): {}", crate::kube_error_line(.0)
    )]
    MissingCrds(#[source] kube::Error),
    #[error("cannot list {what}: {}", crate::kube_error_line(source))]
    List {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("the leader election ended before this replica led")]
    ElectionEnded,
    #[error("lost the leader lease: stopping so that only the new leader writes")]
    LostLeadership,
    #[error("cannot build the worker client: {0}")]
    WorkerClient(#[source] reqwest::Error),
    #[error("the workers' CA (--worker-tls): {0}")]
    Authority(#[source] crate::operator::runtime::authority::AuthorityError),
}

/// Keep the workers' CA renewed; when its bundle or signer changes, the operator's own client
/// trusts the new bundle and every resource is reconciled (new certificates, new `ca.crt`).
async fn keep_authority(
    authority: Arc<Authority>,
    client: Client,
    ctx: Arc<Context>,
    halted: watch::Receiver<bool>,
) {
    let changed = {
        let authority = authority.clone();
        let ctx = ctx.clone();
        move || {
            if let Some(current) = authority.current()
                && let Err(e) = ctx.workers.trust(&current.bundle)
            {
                tracing::warn!(error = %crate::error_chain(&e), "cannot trust the new CA bundle");
            }
            reconcile_everything(&ctx);
        }
    };
    authority.keep(client, halted, changed).await;
}

/// Every resource in the caches, reconciled once more.
fn reconcile_everything(ctx: &Context) {
    fn each<K: kube::Resource>(ctx: &Context, kind: &str, objects: Vec<Arc<K>>) {
        for object in objects {
            if let (Some(namespace), Some(name)) = (&object.meta().namespace, &object.meta().name) {
                ctx.triggers.send(kind, namespace, name);
            }
        }
    }
    each(
        ctx,
        <Transport as WorkerResource>::KIND,
        ctx.caches.transports.state(),
    );
    each(
        ctx,
        <Connection as WorkerResource>::KIND,
        ctx.caches.connections.state(),
    );
    each(
        ctx,
        crate::operator::kinds::worker_pool::KIND,
        ctx.caches.pools.state(),
    );
}

/// What `/readyz` answers.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Starting = 0,
    /// Waiting for the leader lease: ready to take over.
    Standby = 1,
    /// Leading; the controllers' caches are filling.
    Syncing = 2,
    Leading = 3,
}

struct Endpoints {
    phase: AtomicU8,
    metrics: Arc<OperatorMetrics>,
    registry: prometheus_client::registry::Registry,
    /// The last error of each kind's watch, until it lists or watches again.
    watch_errors: std::sync::Mutex<std::collections::BTreeMap<&'static str, String>>,
}

impl Endpoints {
    fn set(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// A watch of `kind` failed: logged at warn once per distinct error (the watcher retries
    /// every few seconds, and an unreadable list can carry a whole body), shown by `/readyz`.
    fn watch_failed(&self, kind: &'static str, error: &watcher::Error) {
        let text = shorten(&crate::error_chain(error), 400);
        let mut errors = self.watch_errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.get(kind) != Some(&text) {
            tracing::warn!(kind, error = %text, "cannot list or watch; retrying with backoff");
            errors.insert(kind, text);
        }
    }

    fn watch_recovered(&self, kind: &'static str) {
        let mut errors = self.watch_errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.remove(kind).is_some() {
            tracing::info!(kind, "listing and watching again");
        }
    }

    fn watch_error(&self) -> Option<String> {
        let errors = self.watch_errors.lock().unwrap_or_else(|e| e.into_inner());
        errors
            .iter()
            .next()
            .map(|(kind, error)| format!("the {kind} cache cannot fill: {error}"))
    }
}

/// At most `max` bytes of `text` (on a character boundary), marked when cut.
fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(endpoints): State<Arc<Endpoints>>) -> impl IntoResponse {
    match endpoints.phase.load(Ordering::Relaxed) {
        1 => (
            StatusCode::OK,
            "standby: waiting for the leader lease".to_owned(),
        ),
        3 => (StatusCode::OK, "leading".to_owned()),
        2 => (
            StatusCode::SERVICE_UNAVAILABLE,
            match endpoints.watch_error() {
                Some(error) => format!("leading: {error}"),
                None => "leading: the caches are filling".to_owned(),
            },
        ),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "starting".to_owned()),
    }
}

async fn serve_metrics(State(endpoints): State<Arc<Endpoints>>) -> impl IntoResponse {
    match crate::worker::metrics::render(&endpoints.registry) {
        Ok(text) => (
            StatusCode::OK,
            [(
                axum::http::header::CONTENT_TYPE,
                crate::worker::metrics::CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// A future that completes once `flag` turns true (or its sender is gone).
fn when(flag: &watch::Receiver<bool>) -> impl Future<Output = ()> + Send + Sync + 'static {
    let mut flag = flag.clone();
    async move {
        let _ = flag.wait_for(|set| *set).await;
    }
}

/// Reconciles are triggered by what the user changes (generation, the annotations that pause
/// reconciliation and ask for a restart), by finalizers and by deletion; not by the operator's own status writes,
/// which would loop. The status is refreshed by the requeue every `--status-interval`.
fn spec_or_lifecycle<K: Resource>(object: &K) -> Option<u64> {
    let meta = object.meta();
    let mut hasher = DefaultHasher::new();
    meta.generation.hash(&mut hasher);
    for annotation in [
        super::reconcile::skeleton::RECONCILE_ANNOTATION,
        super::reconcile::restart::RESTART_ANNOTATION,
    ] {
        meta.annotations
            .as_ref()
            .and_then(|a| a.get(annotation))
            .hash(&mut hasher);
    }
    meta.finalizers.hash(&mut hasher);
    meta.deletion_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// The resources of one kind in `scope`, filtered to what should trigger a reconcile, filling
/// `writer`'s cache. The watch's failures and recoveries go to `endpoints` under `kind`.
fn triggers<K>(
    client: &Client,
    scope: &WatchScope,
    writer: reflector::store::Writer<K>,
    kind: &'static str,
    endpoints: Arc<Endpoints>,
    deleted: impl Fn(&K) + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: crate::operator::NamespacedObject,
{
    scope
        .watch(
            client,
            watcher::Config::default().any_semantic(),
            writer.as_reader(),
        )
        .inspect(move |event| match event {
            Err(e) => endpoints.watch_failed(kind, e),
            Ok(_) => endpoints.watch_recovered(kind),
        })
        // Who wrote which field is never read here: not kept in memory.
        .modify(|object| object.meta_mut().managed_fields = None)
        .reflect(writer)
        // Gone from the cache now: whoever counts it (its WorkerPool) is told.
        .inspect(move |event| {
            if let Ok(watcher::Event::Delete(object)) = event {
                deleted(object);
            }
        })
        .applied_objects()
        .predicate_filter(spec_or_lifecycle, Default::default())
}

/// The watch of one kind of worker object (`Secret`, `Service`, `StatefulSet` metadata, `Pod`):
/// it fills `writer`'s cache and, with `triggers`, reconciles the resource that controls a
/// changed or deleted object.
fn watch_worker_objects<K>(
    client: &Client,
    scope: &WatchScope,
    writer: reflector::store::Writer<K>,
    trim: fn(&mut K),
    route: impl Fn(&K) + Send + 'static,
    endpoints: Arc<Endpoints>,
) -> impl Future<Output = ()> + Send + 'static
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let kind = K::kind(&()).into_owned();
    // Listed in pages (not all of them in one answer from the watch cache): a thousand pods
    // at once would be a peak of memory the operator keeps.
    let config = watcher::Config::default()
        .labels(WORKER_OBJECTS)
        .page_size(250);
    scope
        .watch(client, config, writer.as_reader())
        .inspect(move |event| match event {
            Err(e) => endpoints.watch_failed(worker_object_kind(&kind), e),
            Ok(_) => endpoints.watch_recovered(worker_object_kind(&kind)),
        })
        // Who wrote which field is not needed here, and is most of a pod's size.
        .modify(move |object| {
            object.meta_mut().managed_fields = None;
            trim(object);
        })
        .reflect(writer)
        .touched_objects()
        .for_each(move |object| {
            if let Ok(object) = object {
                route(&object);
            }
            std::future::ready(())
        })
}

/// Keep nothing of an object but what the watch needs.
fn keep_all<K>(_: &mut K) {}

/// A pod as the reconcile reads it: its metadata and status (ready, IP, restarts, why it
/// waits); its spec is the StatefulSet's template, not needed here.
fn pod_status_only(pod: &mut Pod) {
    pod.spec = None;
}

/// An object's metadata, whatever its type.
trait ResourceMeta {
    fn metadata(&self) -> &ObjectMeta;
}

impl<K: Resource> ResourceMeta for K {
    fn metadata(&self) -> &ObjectMeta {
        self.meta()
    }
}

/// The names `/readyz` gives the watches of worker objects.
fn worker_object_kind(kind: &str) -> &'static str {
    match kind {
        "Secret" => "worker Secret",
        "Service" => "worker Service",
        "StatefulSet" => "worker StatefulSet",
        "NetworkPolicy" => "worker NetworkPolicy",
        _ => "worker Pod",
    }
}

/// Start watching the workers' objects: the caches the reconciles read (added to `kinds`, the
/// kinds' own caches), and the triggers they route; NetworkPolicies only when the operator
/// makes them (`network_policies`). Runs until `halted`.
fn worker_object_watches(
    client: &Client,
    (scope, network_policies): (&WatchScope, bool),
    endpoints: &Arc<Endpoints>,
    triggers: &Arc<Triggers>,
    halted: &watch::Receiver<bool>,
    kinds: Caches,
) -> Caches {
    let (secrets, secrets_writer) = reflector::store();
    let (services, services_writer) = reflector::store();
    let (stateful_sets, sets_writer) = reflector::store::<PartialObjectMeta<StatefulSet>>();
    let (pods, pods_writer) = reflector::store();
    let (network_policies_cache, policies_writer) =
        reflector::store::<PartialObjectMeta<NetworkPolicy>>();
    let owner = |triggers: &Arc<Triggers>| {
        let triggers = triggers.clone();
        move |object: &dyn ResourceMeta| triggers.owner_of(object.metadata())
    };
    // A transport's Secret replaced (its token rotated): the connections that send to it are
    // pushed the new token.
    let targets_of = {
        let (triggers, connections) = (triggers.clone(), kinds.connections.clone());
        move |secret: &Secret| connections_sending_to(&triggers, &connections, secret)
    };
    let (secret_owner, service_owner, set_owner, policy_owner) = (
        owner(triggers),
        owner(triggers),
        owner(triggers),
        owner(triggers),
    );
    // A pod is the StatefulSet's: its resource is the owner of the StatefulSet of its name. A
    // pool's worker is also every placed resource's: they are reconciled too (a worker that is
    // back after a restart answers for them again).
    let pod_owner = {
        let (triggers, sets) = (triggers.clone(), stateful_sets.clone());
        let resources = kinds.clone();
        move |pod: &Pod| {
            let set = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app.kubernetes.io/instance"));
            if let (Some(set), Some(namespace)) = (set, &pod.metadata.namespace)
                && let Some(set) = cached(&sets, namespace, set)
            {
                triggers.owner_of(&set.metadata);
                if let Some(worker) = &pod.metadata.name
                    && owned_by_pool(&set.metadata)
                {
                    placed_on(&triggers, &resources, namespace, worker);
                }
            }
        }
    };
    let policies = network_policies.then(|| {
        watch_worker_objects::<PartialObjectMeta<NetworkPolicy>>(
            client,
            scope,
            policies_writer,
            keep_all,
            move |o: &PartialObjectMeta<NetworkPolicy>| policy_owner(o),
            endpoints.clone(),
        )
    });
    let policies = async move {
        if let Some(watch) = policies {
            watch.await;
        }
    };
    let watches = futures::future::join5(
        watch_worker_objects::<Secret>(
            client,
            scope,
            secrets_writer,
            keep_all,
            move |o: &Secret| {
                secret_owner(o);
                targets_of(o);
            },
            endpoints.clone(),
        ),
        watch_worker_objects::<PartialObjectMeta<Service>>(
            client,
            scope,
            services_writer,
            keep_all,
            move |o: &PartialObjectMeta<Service>| service_owner(o),
            endpoints.clone(),
        ),
        watch_worker_objects::<PartialObjectMeta<StatefulSet>>(
            client,
            scope,
            sets_writer,
            keep_all,
            move |o: &PartialObjectMeta<StatefulSet>| set_owner(o),
            endpoints.clone(),
        ),
        watch_worker_objects::<Pod>(
            client,
            scope,
            pods_writer,
            pod_status_only,
            pod_owner,
            endpoints.clone(),
        ),
        policies,
    );
    let halted = when(halted);
    tokio::spawn(async move {
        tokio::select! {
            _ = watches => {},
            () = halted => {},
        }
    });
    Caches {
        secrets,
        services,
        stateful_sets,
        pods,
        network_policies: network_policies_cache,
        ..kinds
    }
}

/// Reconcile the connections that send to the Transport controlling `secret`, if it is one's.
fn connections_sending_to(
    triggers: &Triggers,
    connections: &reflector::Store<Guarded<Connection>>,
    secret: &Secret,
) {
    let Some(namespace) = secret.metadata.namespace.as_deref() else {
        return;
    };
    let transport = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == <Transport as WorkerResource>::KIND);
    let Some(transport) = transport else { return };
    for connection in connections.state() {
        if connection.namespace().as_deref() == Some(namespace)
            && connection
                .0
                .as_ref()
                .is_ok_and(|c| targets(c, &transport.name))
        {
            triggers.send(
                <Connection as WorkerResource>::KIND,
                namespace,
                &connection.name_any(),
            );
        }
    }
}

/// Reconcile the WorkerPool `object` names, if any.
fn its_pool<R: WorkerResource>(triggers: &Triggers, object: &Guarded<R>) {
    if let Ok(resource) = &object.0
        && let Some(pool) = resource.worker_pool()
    {
        let namespace = resource.namespace().unwrap_or_default();
        triggers.send(crate::operator::kinds::worker_pool::KIND, &namespace, pool);
    }
}

/// Whether a StatefulSet is a WorkerPool's.
fn owned_by_pool(set: &ObjectMeta) -> bool {
    set.owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.kind == crate::operator::kinds::worker_pool::KIND)
}

/// Reconcile every resource placed on the pool worker `worker` of `namespace`.
fn placed_on(triggers: &Triggers, caches: &Caches, namespace: &str, worker: &str) {
    crate::operator::kinds::placement::each_in(caches, namespace, |r| {
        if r.placement.is_some_and(|p| p.worker == worker) {
            triggers.send(r.kind, namespace, &r.name);
        }
    });
}

/// Run the operator until a shutdown signal (or, with leader election, until the lease is lost).
pub async fn run(options: OperatorOptions) -> Result<(), OperatorError> {
    let client = crate::operator::runtime::api_client::bounded(options.api_concurrency)
        .await
        .map_err(OperatorError::Client)?;
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        crate::shutdown_signal().await;
        let _ = stop.send(true);
    });

    let metrics = Arc::new(OperatorMetrics::default());
    let endpoints = Arc::new(Endpoints {
        phase: AtomicU8::new(Phase::Starting as u8),
        registry: metrics.registry(),
        metrics: metrics.clone(),
        watch_errors: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| OperatorError::Listen {
            addr: options.listen,
            source,
        })?;
    tracing::info!(listen = %listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()), "operator endpoints listening (/healthz, /readyz, /metrics)");
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(serve_metrics))
        .with_state(endpoints.clone());
    let served = when(&stopped);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(served)
            .await
        {
            tracing::error!(error = %e, "the operator endpoints stopped");
        }
    });

    // Fail early and clearly when the CRDs are missing or the API cannot be reached.
    for api in options.scope.apis::<Guarded<Transport>>(&client) {
        api.list(&ListParams::default().limit(1))
            .await
            .map_err(|e| match &e {
                kube::Error::Api(status) if status.code == 404 => OperatorError::MissingCrds(e),
                _ => OperatorError::List {
                    what: "Transports",
                    source: e,
                },
            })?;
    }

    let leadership = match &options.leader_election {
        Some(lease) => {
            endpoints.set(Phase::Standby);
            // Its own client: a renewal never waits behind a burst of reconciles' calls for
            // one of the `--api-concurrency` places (a lease that lapses stops the leader).
            let lease_client = Client::try_default().await.map_err(OperatorError::Client)?;
            let mut leadership = Leadership::campaign(lease_client, lease).await?;
            tracing::info!(lease = %format!("{}/{}", lease.namespace, lease.name), identity = %lease.identity, "waiting for the leader lease");
            tokio::select! {
                acquired = leadership.acquired() => if !acquired {
                    return Err(OperatorError::ElectionEnded);
                },
                _ = when(&stopped) => {
                    leadership.release().await;
                    return Ok(());
                }
            }
            tracing::info!("leading");
            Some(leadership)
        }
        None => None,
    };
    endpoints.set(Phase::Syncing);
    metrics.set_leader(true);

    let outcome = lead(&options, client, &endpoints, &stopped, leadership.as_ref()).await;
    metrics.set_leader(false);
    if let Some(leadership) = leadership {
        leadership.release().await;
    }
    outcome
}

/// Whether this process runs in a pod (the kubelet sets `KUBERNETES_SERVICE_HOST`).
pub fn in_cluster() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
}

/// The leader's work: restore, announce, then run both controllers until told to stop.
async fn lead(
    options: &OperatorOptions,
    client: Client,
    endpoints: &Arc<Endpoints>,
    stopped: &watch::Receiver<bool>,
    leadership: Option<&Leadership>,
) -> Result<(), OperatorError> {
    let access = options.worker_access.unwrap_or(if in_cluster() {
        WorkerAccess::Direct
    } else {
        WorkerAccess::Proxy
    });
    // With TLS, the CA first: every worker's certificate comes from it.
    let authority = match options.defaults.tls {
        false => None,
        true => {
            let authority = Arc::new(Authority::new(&options.namespace, options.certificates));
            authority
                .ensure(&client)
                .await
                .map_err(OperatorError::Authority)?;
            Some(authority)
        }
    };
    let bundle = authority
        .as_ref()
        .and_then(|a| a.current())
        .map(|c| c.bundle.clone());
    let workers = match (access, &bundle) {
        (WorkerAccess::Direct, None) => {
            WorkerClient::direct(options.worker_timeout).map_err(OperatorError::WorkerClient)?
        }
        (WorkerAccess::Direct, Some(bundle)) => {
            WorkerClient::direct_tls(options.worker_timeout, bundle)
                .map_err(OperatorError::WorkerClient)?
        }
        (WorkerAccess::Proxy, _) => {
            WorkerClient::proxy(client.clone(), options.worker_timeout, bundle.is_some())
        }
    };
    tracing::info!(%access, "reaching workers");
    tracing::info!(
        forbidden = %options.defaults.forbidden_destinations.to_flag(),
        "host, source and target URLs may not reach these (--forbidden-destinations)"
    );
    // Stop on a signal, or when the lease is lost.
    let (halt, halted) = watch::channel(false);
    let mut lost = leadership.map(Leadership::watch);
    let mut signal = stopped.clone();
    let halting = tokio::spawn(async move {
        let lost_lease = async {
            match &mut lost {
                Some(leading) => {
                    let _ = leading.wait_for(|leading| !*leading).await;
                    true
                }
                None => std::future::pending().await,
            }
        };
        let lease_lost = tokio::select! {
            lease_lost = lost_lease => lease_lost,
            _ = signal.wait_for(|s| *s) => false,
        };
        let _ = halt.send(true);
        lease_lost
    });

    // The workers' objects and pods: one watch each, read by every reconcile.
    let triggers = Arc::new(Triggers::default());
    let (transports_cache, transports_writer) = reflector::store();
    let (connections_cache, connections_writer) = reflector::store();
    let (pools_cache, pools_writer) = reflector::store();
    let caches = worker_object_watches(
        &client,
        (&options.scope, options.defaults.network_policies.is_some()),
        endpoints,
        &triggers,
        &halted,
        // The kinds' own caches, which the controllers fill.
        Caches {
            transports: transports_cache.clone(),
            connections: connections_cache.clone(),
            pools: pools_cache.clone(),
            ..Caches::default()
        },
    );
    let mut ctx = Context::new(
        client.clone(),
        workers,
        options.defaults.clone(),
        options.status_interval,
    )
    .with_events(Events::new(client.clone(), Some(options.instance.clone())))
    .with_metrics(endpoints.metrics.clone())
    .with_caches(caches)
    .with_triggers(triggers.clone())
    .with_rollout_policy(options.rollout);
    if let Some(authority) = &authority {
        ctx = ctx.with_authority(authority.clone());
    }
    let ctx = Arc::new(ctx);
    if let Some(authority) = authority {
        tokio::spawn(keep_authority(
            authority,
            client.clone(),
            ctx.clone(),
            halted.clone(),
        ));
    }
    let connections = Arc::new(
        Connections::new(options.startup_concurrency, options.startup_timeout)
            .scoped(options.startup_queue_scope),
    );

    // The startup queue as the previous operator left it, then C1 for every connection.
    // Guarded: an unreadable Connection is left out here and reported by its reconcile.
    let mut listed = Vec::new();
    for api in options.scope.apis::<Guarded<Connection>>(&client) {
        listed.extend(
            api.list(&ListParams::default())
                .await
                .map_err(|source| OperatorError::List {
                    what: "Connections",
                    source,
                })?
                .items,
        );
    }
    let existing: Vec<Connection> = listed.into_iter().filter_map(|g| g.0.ok()).collect();
    connections.restore(&existing);
    let failed = announce_reinitializing(&ctx, &connections, &existing).await;
    tracing::info!(
        connections = existing.len(),
        failed,
        "startup queue restored; connections are Server Reinitializing until pushed again"
    );

    // Each kind: its watch and cache, a controller on the one reconcile skeleton.
    let kinds = Kinds {
        client: &client,
        scope: &options.scope,
        endpoints,
        halted: &halted,
        ctx: &ctx,
        triggers: &triggers,
    };
    // A Transport that appears, changes or goes away re-reconciles the connections that target
    // it: the Transports' one watch is passed on to them.
    let (transport_changes_sender, transport_changes) = mpsc::unbounded();
    let transports = kinds.watch::<Transport>(
        (transports_cache.clone(), transports_writer),
        Some(transport_changes_sender),
    );
    let connections_controller =
        kinds.watch::<Connection>((connections_cache.clone(), connections_writer), None);

    let transports = kinds.run(transports, Arc::new(()));

    let transport_changes = transport_changes.map(Ok::<_, watcher::Error>);
    let by_target = connections_cache.clone();
    let connections_controller = connections_controller.watches_stream(
        transport_changes,
        move |transport: Guarded<Transport>| {
            let namespace = transport.namespace();
            let name = transport.name_any();
            by_target
                .state()
                .into_iter()
                .filter(|c| {
                    c.namespace() == namespace && c.0.as_ref().is_ok_and(|c| targets(c, &name))
                })
                .map(|c| ObjectRef::from_obj(&*c))
                .collect::<Vec<_>>()
        },
    );
    let connections_run = kinds.run(connections_controller, connections);
    let pools = kinds.pools((pools_cache, pools_writer));

    let ready = {
        let endpoints = endpoints.clone();
        let (t, c) = (transports_cache.clone(), connections_cache.clone());
        let halted = when(&halted);
        async move {
            let filled =
                async { t.wait_until_ready().await.is_ok() && c.wait_until_ready().await.is_ok() };
            // Caches that never fill (an unreadable list) must not keep a stopping operator
            // alive: this waits only until the controllers are told to stop.
            tokio::select! {
                filled = filled => if filled {
                    endpoints.set(Phase::Leading);
                    tracing::info!("caches filled; reconciling");
                },
                () = halted => {}
            }
        }
    };
    tokio::join!(transports, connections_run, pools, ready);
    let lease_lost = halting.await.unwrap_or(false);
    if lease_lost {
        return Err(OperatorError::LostLeadership);
    }
    tracing::info!("stopped");
    Ok(())
}

/// An object as the controllers watch it: read, or kept with its metadata when unreadable.
type Guarded<K> = kube::core::DeserializeGuard<K>;

/// What every kind's controller is made of: one place that turns a [`WorkerResource`] into a
/// running controller, so a kind is wired by two calls.
struct Kinds<'a> {
    client: &'a Client,
    scope: &'a WatchScope,
    endpoints: &'a Arc<Endpoints>,
    halted: &'a watch::Receiver<bool>,
    ctx: &'a Arc<Context>,
    triggers: &'a Arc<Triggers>,
}

impl Kinds<'_> {
    /// The kind's cache and its controller: triggered by its objects' spec and lifecycle (each
    /// trigger also sent to `tee`) and by its workers' objects; it stops when the operator
    /// halts. More triggers may be added before it runs.
    fn watch<R: WorkerResource>(
        &self,
        (cache, writer): (
            reflector::Store<Guarded<R>>,
            reflector::store::Writer<Guarded<R>>,
        ),
        tee: Option<mpsc::UnboundedSender<Guarded<R>>>,
    ) -> Controller<Guarded<R>> {
        // A resource that names a WorkerPool reconciles it too (who uses it, what it hosts),
        // also once it is gone.
        let to_pools = self.triggers.clone();
        let gone = to_pools.clone();
        let triggers = triggers(
            self.client,
            self.scope,
            writer,
            R::KIND,
            self.endpoints.clone(),
            move |object: &Guarded<R>| its_pool(&gone, object),
        );
        let triggers = triggers.inspect(move |object| {
            if let Ok(object) = object {
                its_pool(&to_pools, object);
                if let Some(tee) = &tee {
                    let _ = tee.unbounded_send(object.clone());
                }
            }
        });
        self.endpoints
            .metrics
            .count_by_state(count_by_state(cache.clone()));
        Controller::for_stream(triggers, cache.clone())
            .reconcile_on(
                self.triggers
                    .subscribe(R::KIND)
                    .map(|(namespace, name)| ObjectRef::new(&name).within(&namespace)),
            )
            .graceful_shutdown_on(when(self.halted))
    }

    /// Run the controller: every object through the guard, then the reconcile skeleton with
    /// what the kind remembers (`memory`), timed in the metrics; failures through the error
    /// policy.
    fn run<R: WorkerResource>(
        &self,
        controller: Controller<Guarded<R>>,
        memory: Arc<R::Memory>,
    ) -> impl Future<Output = ()> + use<R> {
        controller
            .run(
                timed(
                    R::KIND,
                    self.endpoints.metrics.clone(),
                    move |guarded, ctx| {
                        let memory = memory.clone();
                        reconcile_guarded(guarded, ctx, move |object, ctx| {
                            reconcile(object, ctx, memory)
                        })
                    },
                ),
                error_policy::<Guarded<R>>,
                self.ctx.clone(),
            )
            .for_each(|_| async {})
    }
}

impl Kinds<'_> {
    /// The WorkerPools' controller: its own watch, requests from its workers' objects and
    /// pods and from the resources that name a pool, the pool reconcile through the guard.
    fn pools(
        &self,
        (cache, writer): (
            reflector::Store<Guarded<WorkerPool>>,
            reflector::store::Writer<Guarded<WorkerPool>>,
        ),
    ) -> impl Future<Output = ()> + use<> {
        let watched = triggers(
            self.client,
            self.scope,
            writer,
            crate::operator::kinds::worker_pool::KIND,
            self.endpoints.clone(),
            |_: &Guarded<WorkerPool>| {},
        );
        Controller::for_stream(watched, cache)
            .reconcile_on(
                self.triggers
                    .subscribe(crate::operator::kinds::worker_pool::KIND)
                    .map(|(namespace, name)| ObjectRef::new(&name).within(&namespace)),
            )
            .graceful_shutdown_on(when(self.halted))
            .run(
                timed(
                    crate::operator::kinds::worker_pool::KIND,
                    self.endpoints.metrics.clone(),
                    |guarded, ctx| {
                        reconcile_guarded(
                            guarded,
                            ctx,
                            crate::operator::kinds::worker_pool::reconcile,
                        )
                    },
                ),
                error_policy::<Guarded<WorkerPool>>,
                self.ctx.clone(),
            )
            .for_each(|_| async {})
    }
}

/// Does this connection send to transport `name`?
fn targets(connection: &Connection, name: &str) -> bool {
    connection
        .spec
        .sync_sets
        .iter()
        .any(|s| s.target.transport.as_ref().is_some_and(|t| t.name == name))
}

/// `Kind namespace/name`, the key of an object's backoff.
fn backoff_key<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{} {}/{}",
        K::kind(&()),
        object.meta().namespace.as_deref().unwrap_or_default(),
        object.meta().name.as_deref().unwrap_or_default()
    )
}

/// A reconciler that counts itself in the metrics, and whose success ends its object's
/// backoff.
fn timed<K, F, Fut>(
    kind: &'static str,
    metrics: Arc<OperatorMetrics>,
    reconcile: F,
) -> impl FnMut(
    Arc<K>,
    Arc<Context>,
) -> futures::future::BoxFuture<'static, Result<Action, ReconcileError>>
where
    F: Fn(Arc<K>, Arc<Context>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, ReconcileError>> + Send + 'static,
    K: Resource<DynamicType = ()> + Send + Sync + 'static,
{
    let reconcile = Arc::new(reconcile);
    move |object, ctx| {
        let metrics = metrics.clone();
        let reconcile = reconcile.clone();
        Box::pin(async move {
            let started = Instant::now();
            let key = backoff_key(&*object);
            let result = reconcile(object, ctx.clone()).await;
            if result.is_ok() {
                ctx.backoff.succeeded(&key);
                metrics.set_backing_off(ctx.backoff.backing_off());
            }
            metrics.reconciled(
                kind,
                started.elapsed(),
                result.as_ref().err().map(ReconcileError::category),
            );
            result
        })
    }
}

/// A failed reconcile: a Warning event on the object, tried again after its backoff.
fn error_policy<K>(object: Arc<K>, error: &ReconcileError, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()> + Send + Sync + 'static,
{
    let retry = ctx.backoff.failed(&backoff_key(&*object));
    ctx.metrics.set_backing_off(ctx.backoff.backing_off());
    let reference = object.object_ref(&());
    // The step first, so `kubectl describe` says where it failed.
    let note = format!("{} step: {error}", error.category());
    tracing::warn!(object = %format!("{}/{}", reference.namespace.clone().unwrap_or_default(), reference.name.clone().unwrap_or_default()), step = error.category(), error = %error, retry_in = ?retry, "reconcile failed");
    tokio::spawn(async move {
        ctx.events
            .publish(&reference, true, "ReconcileFailed", note)
            .await;
    });
    Action::requeue(retry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn transport(generation: i64, status: serde_json::Value) -> Transport {
        serde_json::from_value(json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
            "metadata": {"name": "erp", "namespace": "plant-a", "generation": generation,
                         "resourceVersion": format!("{}", generation * 100 + status.to_string().len() as i64)},
            "spec": {"host": {"url": "http://erp/ingest"}},
            "status": status,
        }))
        .unwrap()
    }

    /// A transport's producers' Secret replaced (a rotated token): the connections that send to
    /// that transport are reconciled (pushed the new token), no other.
    #[test]
    fn a_transports_secret_reconciles_the_connections_sending_to_it() {
        let (connections, mut writer) = reflector::store::<Guarded<Connection>>();
        let guarded = |c: Connection| {
            serde_json::from_value::<Guarded<Connection>>(serde_json::to_value(c).unwrap()).unwrap()
        };
        let mut other = crate::operator::fixtures::connection("other", true);
        other.spec.sync_sets[0].target.transport =
            serde_json::from_value(json!({"name": "mes"})).unwrap();
        writer.apply_watcher_event(&watcher::Event::Apply(guarded(
            crate::operator::fixtures::connection("crm", true),
        )));
        writer.apply_watcher_event(&watcher::Event::Apply(guarded(other)));
        let triggers = Triggers::default();
        let mut requests = triggers.subscribe("Connection");
        let secret = |owner_kind: &str, owner: &str| -> Secret {
            serde_json::from_value(json!({
                "metadata": {"name": "ferry-tp-erp", "namespace": "plant-a",
                    "ownerReferences": [{"apiVersion": "ferry.dev/v1alpha1", "kind": owner_kind,
                        "name": owner, "uid": "u", "controller": true}]},
            }))
            .unwrap()
        };
        connections_sending_to(&triggers, &connections, &secret("Transport", "erp"));
        assert_eq!(
            requests.try_recv().ok(),
            Some(("plant-a".to_owned(), "crm".to_owned()))
        );
        assert!(
            requests.try_recv().is_err(),
            "only the connection sending to erp"
        );
        // A connection's own Secret, or another transport's: nobody is asked.
        connections_sending_to(&triggers, &connections, &secret("Connection", "crm"));
        connections_sending_to(&triggers, &connections, &secret("Transport", "billing"));
        assert!(requests.try_recv().is_err());
    }

    /// The operator's own status writes must not trigger reconciles (they would loop); what the
    /// user changes, finalizers and deletion must.
    #[test]
    fn reconciles_follow_the_spec_and_the_lifecycle_not_the_status() {
        let base = transport(2, json!({}));
        let written = transport(2, json!({"state": "Up", "observedGeneration": 2}));
        assert_eq!(spec_or_lifecycle(&base), spec_or_lifecycle(&written));
        let changed = transport(3, json!({}));
        assert_ne!(spec_or_lifecycle(&base), spec_or_lifecycle(&changed));
        let mut finalized = base.clone();
        finalized.metadata.finalizers = Some(vec!["ferry.dev/worker-storage".into()]);
        assert_ne!(spec_or_lifecycle(&base), spec_or_lifecycle(&finalized));
        let mut deleting = finalized.clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert_ne!(spec_or_lifecycle(&finalized), spec_or_lifecycle(&deleting));
        // Pausing and unpausing reconcile it; another annotation does not.
        let annotated = |key: &str, value: &str| {
            let mut t = base.clone();
            t.metadata.annotations = Some([(key.to_owned(), value.to_owned())].into());
            t
        };
        let paused = annotated("ferry.dev/reconcile", "paused");
        assert_ne!(spec_or_lifecycle(&base), spec_or_lifecycle(&paused));
        let other = annotated("example.com/note", "x");
        assert_eq!(spec_or_lifecycle(&base), spec_or_lifecycle(&other));
        // A restart asked, and each new value of it, reconciles it.
        let restart = annotated("ferry.dev/restart", "1");
        assert_ne!(spec_or_lifecycle(&base), spec_or_lifecycle(&restart));
        let again = annotated("ferry.dev/restart", "2");
        assert_ne!(spec_or_lifecycle(&restart), spec_or_lifecycle(&again));
    }

    /// While a kind's list cannot be read, `/readyz` says which and why (shortened), and a
    /// recovery clears it.
    #[tokio::test]
    async fn readyz_names_the_kind_whose_cache_cannot_fill() {
        let metrics = Arc::new(OperatorMetrics::default());
        let endpoints = Arc::new(Endpoints {
            phase: AtomicU8::new(Phase::Syncing as u8),
            registry: metrics.registry(),
            metrics,
            watch_errors: Default::default(),
        });
        let unreadable = || {
            let body = format!("\"{}\" is too large", "9".repeat(2000));
            watcher::Error::InitialListFailed(kube::Error::SerdeError(
                serde_json::from_str::<u8>(&body).unwrap_err(),
            ))
        };
        endpoints.watch_failed("Transport", &unreadable());
        endpoints.watch_failed("Transport", &unreadable());
        let answer = readyz(State(endpoints.clone())).await.into_response();
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        let text = axum::body::to_bytes(answer.into_body(), 1 << 16)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&text);
        assert!(
            text.starts_with("leading: the Transport cache cannot fill: "),
            "{text}"
        );
        assert!(text.len() < 600, "shortened: {text}");
        endpoints.watch_recovered("Transport");
        assert_eq!(endpoints.watch_error(), None);
    }
}
