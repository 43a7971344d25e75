//! A Connection in the reconcile skeleton: its target transports are dereferenced to their
//! endpoints and tokens; its worker is scaled to zero while it is stopped; it takes its place
//! in the startup queue; the spec is pushed with what was resolved, and the status written
//! with the operator's part of the rules (C1, Server Reinitializing; the startup queue Q1–Q6).

use std::{
    collections::{BTreeMap, HashSet},
    sync::Mutex,
    time::Instant,
};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::operator::{
    objects::builders::{BuildError, Owner},
    reconcile::restart,
    reconcile::skeleton::{Observed, WorkerResource},
    runtime::caches::cached,
    runtime::context::{Context, now},
    runtime::error::ReconcileError,
    runtime::events::connection_event,
    runtime::report_watch::Follow,
    runtime::status::{ConnectionContext, connection_status},
    runtime::status_writer::write_status,
    runtime::worker_client::WorkerPod,
    workers::worker_objects::ingest_token_of,
    workers::worker_pod::{ReadyWorker, WorkerPodUnavailable},
};
use crate::{
    api::{Connection, ConnectionStatus, ConnectionStatusValue, Transport},
    connection::{
        startup_queue::{Look, QueueCounts, StartupQueue, ends_startup},
        status::OperatorPhase,
    },
    wire::{self, ConnectionReport, Marked, Resolved, ResolvedTransport, Startup},
};

/// What the connection reconciler keeps across reconciles, besides the shared context.
pub struct Connections {
    /// Started connections admitted one after another (`--startup-concurrency`).
    queue: Mutex<StartupQueue>,
    /// Connections that had a status when this operator started and have not been pushed to
    /// their worker since: they are `Server Reinitializing` (C1). One created after the start
    /// has nothing to reinitialize, whatever its status says by then.
    reinitializing: Mutex<HashSet<String>>,
    epoch: Instant,
}

impl Connections {
    pub fn new(startup_concurrency: usize, startup_timeout: std::time::Duration) -> Self {
        Self {
            queue: Mutex::new(StartupQueue::new(
                startup_concurrency,
                startup_timeout.as_millis() as u64,
            )),
            reinitializing: Mutex::new(HashSet::new()),
            epoch: Instant::now(),
        }
    }

    /// Startup places shared per `scope` (`--startup-queue-scope`).
    pub fn scoped(self, scope: crate::connection::startup_queue::Scope) -> Self {
        let queue = self.queue.into_inner().unwrap_or_else(|e| e.into_inner());
        Self {
            queue: Mutex::new(queue.scoped(scope)),
            ..self
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, StartupQueue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reinitializing(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.reinitializing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The connection's place in the startup queue, by the one admission policy
    /// (`StartupQueue::observe`): a worker pod that is not running holds no place. Answers the
    /// startup to push, and whether it waits for its worker.
    fn admit(
        &self,
        connection: &Connection,
        key: &str,
        (can_run, restart): (bool, bool),
        worker: Option<&Result<ReadyWorker, WorkerPodUnavailable>>,
    ) -> (Startup, bool) {
        let look = Look {
            started: connection.spec.started,
            can_run,
            restart,
            previous: connection.status.as_ref().and_then(|s| s.status),
            worker_ready: !matches!(
                worker,
                Some(Err(
                    WorkerPodUnavailable::NotRunning(_) | WorkerPodUnavailable::Missing(_)
                ))
            ),
        };
        let mut queue = self.queue();
        let admission = queue.observe(key, look, self.now_ms());
        (Startup::from(admission), queue.waits_for_worker(key))
    }

    /// Whether it is in its startup is kept in `status` (`startupStartedTime`), so the queue
    /// can be rebuilt after a restart: while its worker was pushed the admission, the queue
    /// still holds its place and the status reached does not end the startup. A status never
    /// says it started before its worker was told so.
    fn mark_startup(&self, key: &str, pushed: &Startup, status: &mut ConnectionStatus) {
        let ended = status.status.is_some_and(ends_startup);
        status.startup_started_time = if pushed.admitted && !ended && self.queue().is_starting(key)
        {
            status.startup_started_time.take().or_else(|| Some(now()))
        } else {
            None
        };
    }

    /// Q4, once the status is written: a startup that is over gives its place up only when
    /// its end is in the API, so the next connection is never admitted before the one ahead
    /// of it shows `Running`. Answers how the queue stands then, for the metrics.
    fn settle_startup(&self, key: &str, status: &ConnectionStatus) -> QueueCounts {
        let mut queue = self.queue();
        if let Some(value) = status.status {
            queue.settle(key, value, self.now_ms());
        }
        queue.counts()
    }

    /// Q6: rebuild the startup queue from the statuses a previous operator wrote: connections it
    /// had admitted (`startupStartedTime`) are in their startup again, the waiting ones wait in
    /// the order of their `startupQueuePosition`. Nothing is requeued from the back. Every
    /// connection with a status is Server Reinitializing until it is pushed again (C1).
    pub fn restore(&self, existing: &[Connection]) {
        let mut starting = Vec::new();
        let mut waiting = Vec::new();
        for connection in existing {
            let Some(status) = &connection.status else {
                continue;
            };
            if status.status.is_some() {
                self.reinitializing().insert(connection_key(connection));
            }
            if !connection.spec.started || connection.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let key = connection_key(connection);
            if status.startup_started_time.is_some() {
                starting.push(key);
            } else if let Some(position) = status.startup_queue_position {
                waiting.push((position, key));
            }
        }
        waiting.sort();
        let now = self.now_ms();
        let mut queue = self.queue();
        for key in starting
            .into_iter()
            .chain(waiting.into_iter().map(|(_, key)| key))
        {
            queue.request(&key, now);
        }
    }
}

/// `namespace/name`, the key of the startup queue and of what was pushed.
fn connection_key(connection: &Connection) -> String {
    format!(
        "{}/{}",
        connection.namespace().unwrap_or_else(|| "default".into()),
        connection.name_any()
    )
}

/// C1 made visible: right after the operator starts, every connection that already has a
/// status is written `Server Reinitializing` (its last known iteration and sync-sets kept),
/// before the controller re-pushes it and writes what its worker reports. Sixteen writes at a
/// time; one that fails is logged (its first reconcile writes the status anyway). Answers how
/// many failed.
pub async fn announce_reinitializing(
    ctx: &Context,
    connections: &Connections,
    existing: &[Connection],
) -> usize {
    use futures::StreamExt;
    let writes = existing
        .iter()
        .filter(|c| c.status.is_some())
        .map(|connection| async move {
            let namespace = connection.namespace().unwrap_or_else(|| "default".into());
            let key = connection_key(connection);
            let position = connections.queue().position(&key);
            let context = ConnectionContext {
                generation: connection.metadata.generation,
                started: connection.spec.started,
                enabled_sync_sets: enabled_sync_sets(connection),
                phase: OperatorPhase::Reinitializing,
                queue_position: position,
                config_error: None,
            };
            let status = connection_status(
                connection.status.as_ref(),
                &context,
                Err("not asked yet"),
                now(),
            );
            let written = write_status(&ctx.client, connection, &namespace, &status).await;
            if let Err(e) = &written {
                tracing::warn!(connection = %key, error = %e, "cannot write its status");
            }
            written
        });
    futures::stream::iter(writes)
        .buffer_unordered(16)
        .filter(|written| std::future::ready(written.is_err()))
        .count()
        .await
}

fn enabled_sync_sets(connection: &Connection) -> Vec<String> {
    connection
        .spec
        .sync_sets
        .iter()
        .filter(|s| s.enabled)
        .map(|s| s.name.clone())
        .collect()
}

/// What dereferencing a connection found: each target transport's endpoint and token, or
/// why a target cannot be used (the connection is then Disabled, naming it).
type Targets = Result<BTreeMap<String, ResolvedTransport>, String>;

impl WorkerResource for Connection {
    const KIND: &'static str = "Connection";
    const WIRE: crate::wire::Kind = crate::wire::Kind::Connections;

    fn states() -> Vec<&'static str> {
        ConnectionStatusValue::ALL
            .map(ConnectionStatusValue::as_str)
            .to_vec()
    }

    fn state_name(&self) -> Option<&'static str> {
        self.status
            .as_ref()
            .and_then(|s| s.status)
            .map(ConnectionStatusValue::as_str)
    }
    type Status = ConnectionStatus;
    type Memory = Connections;
    type Refs = Targets;

    fn worker_pool(&self) -> Option<&str> {
        self.spec.worker_pool.as_deref()
    }

    fn owner(&self) -> Result<Owner<'_>, BuildError> {
        Owner::connection(self)
    }

    fn status(&self) -> Option<&ConnectionStatus> {
        self.status.as_ref()
    }

    /// A stopped connection's own worker is scaled to zero; a pool's worker runs for the others
    /// and is told (`started: false`), so it stops iterating.
    fn runs(&self) -> bool {
        self.spec.started || self.spec.worker_pool.is_some()
    }

    async fn dereference(&self, namespace: &str, ctx: &Context) -> Result<Targets, ReconcileError> {
        resolve_targets(self, namespace, ctx).await
    }

    async fn observe(&self, observed: Observed<'_, Self>) -> ConnectionStatus {
        observe(self, observed).await
    }

    fn event(
        before: Option<&ConnectionStatus>,
        after: &ConnectionStatus,
    ) -> Option<(bool, &'static str, String)> {
        connection_event(before, after)
    }

    fn written(&self, status: &ConnectionStatus, ctx: &Context, connections: &Connections) {
        let counts = connections.settle_startup(&connection_key(self), status);
        ctx.metrics.set_startup_queue(counts);
    }

    /// Each enabled sync-set's source, and its target where that is a URL (a target transport
    /// is the operator's own worker).
    fn destinations(&self) -> Vec<(String, &str)> {
        let mut urls = Vec::new();
        for (i, sync_set) in self.spec.sync_sets.iter().enumerate() {
            if !sync_set.enabled {
                continue;
            }
            urls.push((
                format!("spec.syncSets[{i}].source.http.url"),
                sync_set.source.http.url.as_str(),
            ));
            if let Some(http) = &sync_set.target.http {
                urls.push((
                    format!("spec.syncSets[{i}].target.http.url"),
                    http.url.as_str(),
                ));
            }
        }
        urls
    }

    fn forget(&self, _: &str, ctx: &Context, connections: &Connections) {
        let key = connection_key(self);
        let mut queue = connections.queue();
        queue.release(&key, connections.now_ms());
        ctx.metrics.set_startup_queue(queue.counts());
        drop(queue);
        connections.reinitializing().remove(&key);
    }

    super::placement::pool_hosting!();
}

/// Each target transport's ingest endpoint and token; the first missing one is an error that
/// disables the connection, naming it.
async fn resolve_targets(
    connection: &Connection,
    namespace: &str,
    ctx: &Context,
) -> Result<Targets, ReconcileError> {
    let transports: Api<Transport> = Api::namespaced(ctx.client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let mut resolved = BTreeMap::new();
    for sync_set in connection.spec.sync_sets.iter().filter(|s| s.enabled) {
        let Some(target) = &sync_set.target.transport else {
            continue;
        };
        if resolved.contains_key(&target.name) {
            continue;
        }
        let lookup = |what: String| move |source| ReconcileError::Dereference { what, source };
        let transport = match cached(&ctx.caches.transports, namespace, &target.name) {
            Some(guarded) => match &guarded.0 {
                Ok(transport) => Some(transport.clone()),
                Err(_) => {
                    return Ok(Err(format!(
                        "sync-set {}: target transport {namespace}/{} cannot be read (its status says why)",
                        sync_set.name, target.name
                    )));
                }
            },
            None => transports
                .get_opt(&target.name)
                .await
                .map_err(lookup(format!(
                    "target transport {namespace}/{}",
                    target.name
                )))?,
        };
        let Some(transport) = transport else {
            return Ok(Err(format!(
                "sync-set {}: target transport {namespace}/{} does not exist",
                sync_set.name, target.name
            )));
        };
        if transport.metadata.deletion_timestamp.is_some() {
            return Ok(Err(format!(
                "sync-set {}: target transport {namespace}/{} is being deleted",
                sync_set.name, target.name
            )));
        }
        let owner = Owner::transport(&transport)?;
        let secret = match cached(&ctx.caches.secrets, namespace, &owner.worker_name()) {
            Some(secret) => Some(Secret::clone(&secret)),
            None => secrets
                .get_opt(&owner.worker_name())
                .await
                .map_err(lookup(format!(
                    "Secret {namespace}/{}",
                    owner.worker_name()
                )))?,
        };
        if secret
            .as_ref()
            .is_some_and(|s| !owner.controls(&s.metadata))
        {
            // Tokens come only from the transport's own Secret.
            return Ok(Err(format!(
                "sync-set {}: the Secret {} is not controlled by target transport {namespace}/{}; its token is not used",
                sync_set.name,
                owner.worker_name(),
                target.name
            )));
        }
        let token = secret.as_ref().and_then(ingest_token_of);
        // A pooled transport is on its worker's stable name, once it has its place.
        let at = match &transport.spec.worker_pool {
            None => owner.service_url(ctx.defaults.scheme()),
            Some(pool) => match transport
                .status
                .as_ref()
                .and_then(|s| s.placement.as_ref())
                .filter(|placement| placement.worker_pool == *pool)
                .and_then(|placement| {
                    crate::operator::kinds::placement::worker_url(
                        ctx.defaults.scheme(),
                        namespace,
                        placement,
                    )
                }) {
                Some(url) => url,
                None => {
                    return Ok(Err(format!(
                        "sync-set {}: target transport {namespace}/{} has no place in WorkerPool {pool} yet (its status says why)",
                        sync_set.name, target.name
                    )));
                }
            },
        };
        resolved.insert(
            target.name.clone(),
            ResolvedTransport {
                endpoint: format!(
                    "{at}{}",
                    wire::transactions_path(&wire::key(namespace, &target.name))
                ),
                token,
            },
        );
    }
    Ok(Ok(resolved))
}

/// The startup queue, the push and the status, from what the worker's pod and the
/// dereferenced targets say.
async fn observe(connection: &Connection, observed: Observed<'_, Connection>) -> ConnectionStatus {
    let Observed {
        namespace,
        ctx,
        memory: connections,
        worker,
        refs: targets,
        ingest_token: _,
        paused,
    } = observed;
    let key = connection_key(connection);
    let config_error = targets.as_ref().err().cloned();
    // A restart asked and not carried out is a new startup through the queue (Q2); paused,
    // nothing is asked of the worker, a restart neither.
    let handled_before = connection
        .status
        .as_ref()
        .and_then(|s| s.last_handled_restart.as_deref());
    let restart = restart::to_ask(restart::requested(&connection.metadata), handled_before)
        .filter(|_| !paused);
    let (startup, waits_for_worker) = connections.admit(
        connection,
        &key,
        (config_error.is_none(), restart.is_some()),
        worker.as_ref(),
    );
    // Asked of the worker once its startup is admitted; until then it waits in the queue.
    let asked = restart.as_deref().filter(|_| startup.admitted);

    let report = match worker {
        Some(Ok((target, pod_uid))) => {
            let resolved = Resolved {
                transports: targets.clone().unwrap_or_default(),
                startup: startup.clone(),
            };
            let pushed = (!paused).then_some((&resolved, asked));
            push(connection, namespace, (&target, &pod_uid), pushed, ctx).await
        }
        Some(Err(unavailable)) if waits_for_worker => Err(format!(
            "{unavailable}; it holds no place in the startup queue until it is ready \
             (position {} while it waits)",
            startup.position.unwrap_or(1)
        )),
        Some(Err(unavailable)) => Err(unavailable.to_string()),
        None => Err("the connection is stopped: its worker is scaled to zero".into()),
    };
    // C1: a connection that had a status before this operator started is Server
    // Reinitializing until this operator has pushed it (or, stopped, applied its objects).
    // A new one has nothing to reinitialize, also while its worker cannot start.
    let phase = {
        let mut reinitializing = connections.reinitializing();
        if report.is_ok() || !connection.spec.started {
            reinitializing.remove(&key);
        }
        if reinitializing.contains(&key) {
            OperatorPhase::Reinitializing
        } else {
            OperatorPhase::Pushed
        }
    };
    let context = ConnectionContext {
        generation: connection.metadata.generation,
        started: connection.spec.started,
        enabled_sync_sets: enabled_sync_sets(connection),
        phase,
        queue_position: startup.position,
        config_error,
    };
    let mut status = connection_status(
        connection.status.as_ref(),
        &context,
        report.as_ref().map_err(String::as_str),
        now(),
    );
    connections.mark_startup(&key, &startup, &mut status);
    status.last_handled_restart = if connection.spec.started {
        restart::handled(
            handled_before,
            asked,
            report.as_ref().ok().and_then(|r| r.restarted.as_deref()),
        )
    } else {
        // Stopped, nothing runs to restart; its next start is a new startup anyway.
        restart.or_else(|| handled_before.map(str::to_owned))
    };
    status
}

/// Push the spec with what was resolved and a restart asked (`None`: paused, nothing
/// pushed), then read and follow the report.
async fn push(
    connection: &Connection,
    namespace: &str,
    (target, pod_uid): (&WorkerPod, &str),
    pushed: Option<(&Resolved, Option<&str>)>,
    ctx: &Context,
) -> Result<ConnectionReport, String> {
    let path = wire::resource_path(
        wire::Kind::Connections,
        &wire::key(namespace, &connection.name_any()),
    );
    let report = match pushed {
        // Connections are pushed on every reconcile: `resolved` (targets, startup) can change
        // without the connection's generation changing, and a PUT with the same spec is cheap.
        Some((resolved, restart)) => {
            let mut manifest = json!({
                "apiVersion": "ferry.dev/v1alpha1",
                "kind": "Connection",
                "metadata": {
                    "name": connection.name_any(),
                    "namespace": namespace,
                    "generation": connection.metadata.generation,
                },
                "spec": connection.spec,
                "resolved": resolved,
            });
            if let (Some(value), Some(map)) = (restart, manifest.as_object_mut()) {
                map.insert(wire::RESTART.into(), value.into());
            }
            ctx.workers
                .put::<ConnectionReport>(target, &path, &manifest)
                .await
                .map_err(|e| e.to_string())?
        }
        None => ctx
            .workers
            .get::<ConnectionReport>(target, &path)
            .await
            .map_err(|e| crate::operator::reconcile::skeleton::paused_read_error(&e))?,
    };
    ctx.follow_report(Follow {
        kind: Connection::KIND,
        namespace,
        name: connection.metadata.name.as_deref().unwrap_or_default(),
        worker: target,
        pod_uid,
        etag: report.etag(),
        path,
    });
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::fixtures::{
        ApiServerVerifier, assert_ready, condition, connection, context, controlled_by, mock,
        not_found, respond, test_ip, waiting_pod, worker_at,
    };
    use crate::operator::reconcile::skeleton::reconcile;
    use http::Method;
    use serde_json::Value;
    use std::sync::Arc;
    use std::time::Duration;

    /// Answer the Secrets' lookups (the producers' and the admin one) and the four applies;
    /// answers the StatefulSet applied.
    async fn objects(handle: &mut ApiServerVerifier) -> Value {
        let (_, path, _, send) = handle.next().await;
        assert!(path.contains("/secrets/ferry-conn-"), "{path}");
        let worker = path.rsplit('/').next().unwrap().to_owned();
        send.send_response(not_found());
        let (_, path, _, send) = handle.next().await;
        assert!(
            path.ends_with(&format!("/secrets/{worker}-admin")),
            "{path}"
        );
        send.send_response(not_found());
        handle.service_and_stateful_set_absent(&worker).await;
        let mut sts = Value::Null;
        for _ in 0..4 {
            let (method, _, body, send) = handle.next().await;
            assert_eq!(method, Method::PATCH);
            if body["kind"] == "StatefulSet" {
                sts = body.clone();
            }
            send.send_response(respond(200, body));
        }
        sts
    }

    /// The target transport `erp`, as the API server answers it.
    fn erp() -> Value {
        json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
            "metadata": {"name": "erp", "namespace": "plant-a", "uid": "uid-erp"},
            "spec": {"host": {"url": "http://erp/ingest"}},
        })
    }

    /// The status write: checked to be the connection's status subresource, answered with the
    /// connection; answers what was written.
    async fn status_written(handle: &mut ApiServerVerifier, answer: &Connection) -> Value {
        let (method, path, body, send) = handle.next().await;
        assert_eq!(method, Method::PATCH);
        let expected = format!("/connections/{}/status", answer.name_any());
        assert!(path.contains(&expected), "{path}");
        send.send_response(respond(200, serde_json::to_value(answer).unwrap()));
        body
    }

    /// Answer the lookups of the target transport `erp` and its ingest token.
    async fn target_resolved(handle: &mut ApiServerVerifier) {
        target_with_secret_owned_by(handle, controlled_by("uid-erp")).await;
    }

    /// The same, with the Secret's `ownerReferences` as given.
    async fn target_with_secret_owned_by(handle: &mut ApiServerVerifier, owners: Value) {
        let (_, path, _, send) = handle.next().await;
        assert!(path.ends_with("/transports/erp"), "{path}");
        send.send_response(respond(200, erp()));
        let (_, path, _, send) = handle.next().await;
        assert!(
            path.ends_with("/secrets/ferry-tp-erp"),
            "the target's ingest token: {path}"
        );
        send.send_response(respond(
            200,
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "ferry-tp-erp", "ownerReferences": owners},
                "data": {"admin-token": "YQ==", "ingest-token": "aQ=="},
            }),
        ));
    }

    #[tokio::test]
    async fn a_silent_worker_makes_it_unknown() {
        let (client, mut handle) = mock();
        let ctx = context(client);
        let connections = Arc::new(Connections::new(1, Duration::from_secs(300)));
        let ip = test_ip(37);
        let server = tokio::spawn(async move {
            target_resolved(&mut handle).await;
            handle
                .objects_with_known_tokens("ferry-conn-crm", "uid-crm")
                .await;
            handle.ready_pod("ferry-conn-crm", &ip, "pod-1").await;
            status_written(&mut handle, &connection("crm", true)).await
        });
        reconcile(Arc::new(connection("crm", true)), ctx, connections)
            .await
            .unwrap();
        let status = &server.await.unwrap()["status"];
        assert_eq!(status["status"], "Unknown", "{status}");
        assert_ready(status, "False", "WorkerUnreachable", &["ferry-conn-crm-0"]);
    }

    /// An operator start: every connection with a status is written Server Reinitializing
    /// first; the first reconcile pushes it and writes what its worker reports.
    #[cfg_attr(
        target_os = "macos",
        ignore = "binds a 127.0.X.Y address on the worker port; macOS has only 127.0.0.1 unless aliased"
    )]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn operator_start_announces_reinitializing_then_the_real_status() {
        let ip = test_ip(38);
        let dir = tempfile::tempdir().unwrap();
        let worker = worker_at(&ip, dir.path()).await;
        let mut known = connection("crm", true);
        known.status = serde_json::from_value(
            json!({"status": "Running", "iteration": 9, "startupQueuePosition": 2}),
        )
        .unwrap();
        let (client, mut handle) = mock();
        let ctx = context(client);
        let connections = Arc::new(Connections::new(1, Duration::from_secs(300)));
        let answer = known.clone();
        let pod_ip = ip.clone();
        let server = tokio::spawn(async move {
            let announced = status_written(&mut handle, &answer).await;
            target_resolved(&mut handle).await;
            handle
                .objects_with_known_tokens("ferry-conn-crm", "uid-crm")
                .await;
            handle.ready_pod("ferry-conn-crm", &pod_ip, "pod-1").await;
            (announced, status_written(&mut handle, &answer).await)
        });
        let failed =
            announce_reinitializing(&ctx, &connections, std::slice::from_ref(&known)).await;
        assert_eq!(failed, 0);
        // The controller then sees the connection as announced.
        let mut reinitializing = known.clone();
        reinitializing.status =
            serde_json::from_value(json!({"status": "Server Reinitializing", "iteration": 9}))
                .unwrap();
        reconcile(Arc::new(reinitializing), ctx, connections.clone())
            .await
            .unwrap();
        assert_eq!(
            connections.queue().admission("plant-a/crm"),
            None,
            "an operator restart requeues nothing"
        );
        let (announced, after) = server.await.unwrap();
        let announced = &announced["status"];
        assert_eq!(announced["status"], "Server Reinitializing");
        assert_eq!(announced["iteration"], 9, "the last known iteration stays");
        assert!(
            announced.get("startupQueuePosition").is_none(),
            "not waiting: the position is gone, not left behind: {announced}"
        );
        let after = &after["status"];
        assert_ne!(after["status"], "Server Reinitializing", "{after}");
        assert!(after["lastReportTime"].is_string(), "{after}");
        worker.abort();
    }

    fn deleting(reclaim: &str) -> Connection {
        let mut c = connection("crm", true);
        c.spec.storage.reclaim_policy = serde_json::from_value(json!(reclaim)).unwrap();
        c.metadata.deletion_timestamp = Some(now());
        c
    }

    #[tokio::test]
    async fn deletion_with_delete_removes_the_volume_and_retain_keeps_it() {
        for reclaim in ["Delete", "Retain"] {
            let (client, mut handle) = mock();
            let ctx = context(client);
            let connections = Arc::new(Connections::new(1, Duration::from_secs(300)));
            connections.queue().request("plant-a/crm", 0);
            let server = tokio::spawn(async move {
                let mut requests = Vec::new();
                loop {
                    let (method, path, _, send) = handle.next().await;
                    let done = method == Method::PATCH;
                    requests.push(format!("{method} {}", path.split('?').next().unwrap()));
                    send.send_response(if done {
                        respond(200, serde_json::to_value(connection("crm", true)).unwrap())
                    } else {
                        respond(
                            200,
                            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data-ferry-conn-crm-0"}}),
                        )
                    });
                    if done {
                        return requests;
                    }
                }
            });
            reconcile(Arc::new(deleting(reclaim)), ctx, connections.clone())
                .await
                .unwrap();
            let requests = server.await.unwrap();
            let finalizer_removed =
                "PATCH /apis/ferry.dev/v1alpha1/namespaces/plant-a/connections/crm".to_string();
            let claim_deleted =
                "DELETE /api/v1/namespaces/plant-a/persistentvolumeclaims/data-ferry-conn-crm-0"
                    .to_string();
            if reclaim == "Delete" {
                assert_eq!(requests, [claim_deleted, finalizer_removed]);
            } else {
                assert_eq!(requests, [finalizer_removed]);
            }
            assert!(
                !connections.queue().is_starting("plant-a/crm"),
                "its place in the startup queue is freed"
            );
        }
    }

    #[test]
    fn the_startup_queue_is_rebuilt_from_statuses() {
        let with = |name: &str, status: Value| {
            let mut c = connection(name, true);
            c.status = serde_json::from_value(status).unwrap();
            c
        };
        let existing = [
            with(
                "third",
                json!({"status": "Restarting", "startupQueuePosition": 2}),
            ),
            with("running", json!({"status": "Running"})),
            with(
                "second",
                json!({"status": "Restarting", "startupQueuePosition": 1}),
            ),
            with(
                "first",
                json!({"status": "Restarting", "startupStartedTime": "2026-11-23T10:00:00Z"}),
            ),
            {
                let mut stopped = with(
                    "stopped",
                    json!({"status": "Restarting", "startupQueuePosition": 3}),
                );
                stopped.spec.started = false;
                stopped
            },
        ];
        let connections = Connections::new(1, Duration::from_secs(300));
        connections.restore(&existing);
        let queue = connections.queue();
        assert_eq!(queue.starting().collect::<Vec<_>>(), ["plant-a/first"]);
        assert_eq!(
            queue.waiting().collect::<Vec<_>>(),
            ["plant-a/second", "plant-a/third"]
        );
    }

    /// Q1 as users see it: the connection ahead gives its place up only once its `Running`
    /// is written, and a status says `startupStartedTime` only when its worker was pushed the
    /// admission (never for a push that still said "waiting at position 1").
    #[test]
    fn the_next_is_admitted_only_after_the_running_status_is_written() {
        use crate::connection::startup_queue::Admission;
        let connections = Connections::new(1, Duration::from_secs(300));
        let admitted = |key: &str| {
            let admission = connections.queue().request(key, 0);
            Startup::from(Some(admission))
        };
        let alpha = admitted("plant-a/alpha");
        let bravo = admitted("plant-a/bravo");
        assert!(alpha.admitted && !bravo.admitted);
        let status = |value: &str| -> ConnectionStatus {
            serde_json::from_value(json!({"status": value})).unwrap()
        };

        let mut starting = status("Restarting");
        connections.mark_startup("plant-a/alpha", &alpha, &mut starting);
        assert!(starting.startup_started_time.is_some());

        // Alpha reached Running: not yet written, so bravo still waits.
        let mut running = status("Running");
        connections.mark_startup("plant-a/alpha", &alpha, &mut running);
        assert_eq!(running.startup_started_time, None);
        assert_eq!(
            connections.queue().admission("plant-a/bravo"),
            Some(Admission::Waiting(1))
        );
        // Written: the place goes to bravo, whose status written with the push of "waiting"
        // does not claim a startup yet.
        connections.settle_startup("plant-a/alpha", &running);
        assert_eq!(
            connections.queue().admission("plant-a/bravo"),
            Some(Admission::Starting)
        );
        let mut bravo_status = status("Restarting");
        connections.mark_startup("plant-a/bravo", &bravo, &mut bravo_status);
        assert_eq!(bravo_status.startup_started_time, None);
        connections.mark_startup(
            "plant-a/bravo",
            &admitted("plant-a/bravo"),
            &mut bravo_status,
        );
        assert!(bravo_status.startup_started_time.is_some());
    }

    #[tokio::test]
    async fn a_missing_target_transport_disables_the_connection_naming_it() {
        let (client, mut handle) = mock();
        let ctx = context(client);
        let connections = Arc::new(Connections::new(1, Duration::from_secs(300)));
        let server = tokio::spawn(async move {
            let (method, path, _, send) = handle.next().await;
            assert_eq!(
                (method, path.as_str()),
                (
                    Method::GET,
                    "/apis/ferry.dev/v1alpha1/namespaces/plant-a/transports/erp"
                )
            );
            send.send_response(not_found());
            objects(&mut handle).await;
            // No worker to ask: the status says why it cannot run.
            handle.worker_pod_absent("ferry-conn-crm").await;
            status_written(&mut handle, &connection("crm", true)).await
        });
        reconcile(Arc::new(connection("crm", true)), ctx, connections)
            .await
            .unwrap();
        let status = &server.await.unwrap()["status"];
        assert_eq!(status["status"], "Disabled");
        assert_ready(
            status,
            "False",
            "InvalidConfiguration",
            &["target transport plant-a/erp does not exist"],
        );
    }

    /// A target transport in a WorkerPool is reached at its worker's stable name with its own
    /// ingest token (its Secret holds only that); one not placed yet disables the connection,
    /// naming the pool.
    #[tokio::test]
    async fn a_pooled_target_is_reached_at_its_worker_with_its_own_token() {
        let pooled = |placement: Value| {
            let mut erp = erp();
            erp["spec"]["workerPool"] = json!("shared");
            erp["status"] = json!({ "placement": placement });
            erp
        };
        for (placement, expected) in [
            (
                json!({"workerPool": "shared", "worker": "ferry-wp-shared-1"}),
                Ok(
                    "http://ferry-wp-shared-1.ferry-wp-shared.plant-a.svc:8080/v1/transports/plant-a/erp/transactions",
                ),
            ),
            (Value::Null, Err("has no place in WorkerPool shared yet")),
            // A status naming anything but one of the pool's pods builds no URL.
            (
                json!({"workerPool": "shared", "worker": "metadata.google.internal/x#"}),
                Err("has no place in WorkerPool shared yet"),
            ),
            (
                json!({"workerPool": "shared", "worker": "ferry-wp-shared-100"}),
                Err("has no place in WorkerPool shared yet"),
            ),
            (
                json!({"workerPool": "shared", "worker": "ferry-wp-shared-01"}),
                Err("has no place in WorkerPool shared yet"),
            ),
        ] {
            let (client, mut handle) = mock();
            let ctx = context(client);
            let answer = pooled(placement);
            let server = tokio::spawn(async move {
                let (_, path, _, send) = handle.next().await;
                assert!(path.ends_with("/transports/erp"), "{path}");
                send.send_response(respond(200, answer));
                let (_, path, _, send) = handle.next().await;
                assert!(path.ends_with("/secrets/ferry-tp-erp"), "{path}");
                send.send_response(respond(
                    200,
                    json!({
                        "apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": "ferry-tp-erp", "ownerReferences": controlled_by("uid-erp")},
                        "data": {"ingest-token": "b3du"},
                    }),
                ));
            });
            let targets = resolve_targets(&connection("crm", true), "plant-a", &ctx)
                .await
                .unwrap();
            server.await.unwrap();
            match expected {
                Ok(endpoint) => {
                    let erp = &targets.unwrap()["erp"];
                    assert_eq!(erp.endpoint, endpoint);
                    assert_eq!(erp.token.as_deref(), Some("own"));
                }
                Err(why) => assert!(targets.unwrap_err().contains(why)),
            }
        }
    }

    /// A Secret named like the target's worker but not controlled by the target transport
    /// gives no token: the connection says so instead of sending with a stranger's token.
    #[tokio::test]
    async fn a_target_secret_the_transport_does_not_control_gives_no_token() {
        let (client, mut handle) = mock();
        let ctx = context(client);
        let connections = Arc::new(Connections::new(1, Duration::from_secs(300)));
        let server = tokio::spawn(async move {
            // A Secret nobody controls.
            target_with_secret_owned_by(&mut handle, json!([])).await;
            objects(&mut handle).await;
            handle.worker_pod_absent("ferry-conn-crm").await;
            status_written(&mut handle, &connection("crm", true)).await
        });
        reconcile(Arc::new(connection("crm", true)), ctx, connections)
            .await
            .unwrap();
        let status = &server.await.unwrap()["status"];
        assert_ready(
            status,
            "False",
            "InvalidConfiguration",
            &["is not controlled by target transport plant-a/erp"],
        );
    }

    /// The status written for a started connection with status `Running` whose worker pod is
    /// not ready, by an operator that found it at its start (`restored`) or not.
    async fn status_while_the_worker_is_not_ready(restored: bool) -> Value {
        let mut known = connection("crm", true);
        known.status =
            serde_json::from_value(json!({"status": "Running", "iteration": 9})).unwrap();
        let (client, mut handle) = mock();
        let ctx = context(client);
        let connections = Arc::new(Connections::new(1, Duration::from_secs(300)));
        if restored {
            connections.restore(std::slice::from_ref(&known));
        }
        let answer = known.clone();
        let server = tokio::spawn(async move {
            let (_, path, _, send) = handle.next().await;
            assert!(path.ends_with("/transports/erp"), "{path}");
            send.send_response(respond(200, erp()));
            let (_, _, _, send) = handle.next().await;
            send.send_response(not_found());
            objects(&mut handle).await;
            // The worker pod is not ready yet: nothing pushed.
            let (_, path, _, send) = handle.next().await;
            assert!(path.ends_with("/pods/ferry-conn-crm-0"), "{path}");
            send.send_response(respond(
                200,
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ferry-conn-crm-0"},
                "status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
            ));
            status_written(&mut handle, &answer).await
        });
        reconcile(Arc::new(known), ctx, connections).await.unwrap();
        server.await.unwrap()["status"].take()
    }

    /// C1: after an operator restart, a connection it had already reported on is Server
    /// Reinitializing until this operator has pushed it again.
    #[tokio::test]
    async fn after_an_operator_restart_it_is_server_reinitializing() {
        let status = status_while_the_worker_is_not_ready(true).await;
        assert_eq!(status["status"], "Server Reinitializing");
        assert_eq!(status["iteration"], 9, "the last known iteration stays");
    }

    /// A connection this operator has written a status for itself (it was created after the
    /// start) was never pushed by a previous operator: while its worker cannot run it waits for
    /// it and says so; it is not Server Reinitializing.
    #[tokio::test]
    async fn a_connection_created_after_the_start_is_never_server_reinitializing() {
        let status = status_while_the_worker_is_not_ready(false).await;
        assert_ne!(status["status"], "Server Reinitializing", "{status}");
        assert_ready(&status, "False", "WorkerUnreachable", &["ferry-conn-crm-0"]);
    }

    #[tokio::test]
    async fn a_stopped_connection_is_scaled_to_zero_and_disabled() {
        let (client, mut handle) = mock();
        let ctx = context(client);
        let connections = Arc::new(Connections::new(1, Duration::from_secs(300)));
        let server = tokio::spawn(async move {
            let (_, path, _, send) = handle.next().await;
            assert!(path.ends_with("/transports/erp"), "{path}");
            send.send_response(not_found());
            let sts = objects(&mut handle).await;
            assert_eq!(sts["spec"]["replicas"], 0);
            status_written(&mut handle, &connection("crm", false)).await
        });
        reconcile(Arc::new(connection("crm", false)), ctx, connections)
            .await
            .unwrap();
        let status = &server.await.unwrap()["status"];
        assert_eq!(status["status"], "Disabled");
        let (ready, reason, _) = condition(status, "Ready");
        assert_eq!((ready.as_str(), reason.as_str()), ("True", "Stopped"));
    }

    #[cfg_attr(
        target_os = "macos",
        ignore = "binds a 127.0.X.Y address on the worker port; macOS has only 127.0.0.1 unless aliased"
    )]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_start_waits_in_the_startup_queue() {
        let connections = Arc::new(Connections::new(1, Duration::from_secs(300)));
        // The first one is in its startup.
        connections.queue().request("plant-a/first", 0);
        let ip = test_ip(34);
        let dir = tempfile::tempdir().unwrap();
        let worker = worker_at(&ip, dir.path()).await;
        let (client, mut handle) = mock();
        let ctx = context(client);
        let pod_ip = ip.clone();
        let server = tokio::spawn(async move {
            target_resolved(&mut handle).await;
            handle
                .objects_with_known_tokens("ferry-conn-second", "uid-second")
                .await;
            handle
                .ready_pod("ferry-conn-second", &pod_ip, "pod-2")
                .await;
            status_written(&mut handle, &connection("second", true)).await
        });
        reconcile(
            Arc::new(connection("second", true)),
            ctx,
            connections.clone(),
        )
        .await
        .unwrap();
        let status = &server.await.unwrap()["status"];
        assert_eq!(status["startupQueuePosition"], 1);
        assert_eq!(connections.queue().position("plant-a/second"), Some(1));
        assert_eq!(status["status"], "Restarting", "{status}");
        let (_, reason, _) = condition(status, "Progressing");
        assert_eq!(reason, "QueuedForStartup");
        worker.abort();
    }

    /// A connection whose worker pod cannot run (here: its image cannot be pulled) is not in
    /// its startup: the next connection gets its place, and its status says why it waits.
    #[tokio::test]
    async fn a_worker_pod_that_is_not_ready_gives_the_startup_place_up() {
        let connections = Arc::new(Connections::new(1, Duration::from_secs(300)));
        connections.queue().request("plant-a/broken", 0);
        connections.queue().request("plant-a/next", 0);
        let (client, mut handle) = mock();
        let ctx = context(client);
        let metrics = ctx.metrics.clone();
        let server = tokio::spawn(async move {
            target_resolved(&mut handle).await;
            handle
                .objects_with_known_tokens("ferry-conn-broken", "uid-broken")
                .await;
            let mut pod = waiting_pod(
                "ferry-conn-broken",
                "ImagePullBackOff",
                "Back-off pulling image \"ferry:typo\"",
            );
            pod["status"]["containerStatuses"][0]["restartCount"] = 3.into();
            handle.pod("ferry-conn-broken", pod).await;
            status_written(&mut handle, &connection("broken", true)).await
        });
        reconcile(
            Arc::new(connection("broken", true)),
            ctx,
            connections.clone(),
        )
        .await
        .unwrap();
        let status = &server.await.unwrap()["status"];
        {
            let queue = connections.queue();
            assert!(
                queue.is_starting("plant-a/next"),
                "the next one is admitted"
            );
            assert!(!queue.is_starting("plant-a/broken"));
            assert_eq!(
                queue.position("plant-a/broken"),
                Some(1),
                "it keeps its turn"
            );
        }
        let (ready, _, message) = condition(status, "Ready");
        assert_eq!(ready, "False");
        assert!(
            message.contains("ImagePullBackOff")
                && message.contains("holds no place in the startup queue"),
            "{message}"
        );
        assert!(
            status.get("startupStartedTime").is_none(),
            "after an operator restart it is not put back into its startup: {status}"
        );
        assert_eq!(status["startupQueuePosition"], 1);
        // The operator's metrics: the pod's restarts (read although it is not ready) and the
        // queue as it stands.
        let text = crate::worker::metrics::render(&metrics.registry()).unwrap();
        for line in [
            "ferry_operator_worker_restarts_total{namespace=\"plant-a\",pod=\"ferry-conn-broken-0\"} 3",
            "ferry_operator_startup_queue_starting 1",
            "ferry_operator_startup_queue_waiting_for_worker 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }
}
