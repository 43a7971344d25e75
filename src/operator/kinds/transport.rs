//! A Transport in the reconcile skeleton: it needs nothing looked up; its spec is pushed
//! when the worker has not got this generation (or restarted), and the worker's report
//! becomes its status.

use kube::ResourceExt;
use serde_json::json;

use crate::operator::runtime::report_watch::Follow;
use crate::operator::{
    objects::builders::{BuildError, Owner},
    reconcile::restart,
    reconcile::skeleton::{Observed, WorkerResource},
    runtime::context::Context,
    runtime::error::ReconcileError,
    runtime::events::transport_event,
    runtime::status::transport_status,
    workers::worker_pod::ReadyWorker,
};
use crate::{
    api::{Transport, TransportState, TransportStatus},
    wire::{self, Marked, TransportReport},
    worker::tokens::TokenHash,
};

impl WorkerResource for Transport {
    const KIND: &'static str = "Transport";
    const WIRE: crate::wire::Kind = crate::wire::Kind::Transports;
    const INGESTS: bool = true;

    fn states() -> Vec<&'static str> {
        TransportState::ALL.map(TransportState::as_str).to_vec()
    }

    fn state_name(&self) -> Option<&'static str> {
        self.status
            .as_ref()
            .and_then(|s| s.state)
            .map(TransportState::as_str)
    }
    type Status = TransportStatus;
    type Memory = ();
    type Refs = ();

    fn worker_pool(&self) -> Option<&str> {
        self.spec.worker_pool.as_deref()
    }

    fn owner(&self) -> Result<Owner<'_>, BuildError> {
        Owner::transport(self)
    }

    fn status(&self) -> Option<&TransportStatus> {
        self.status.as_ref()
    }

    async fn dereference(&self, _: &str, _: &Context) -> Result<(), ReconcileError> {
        Ok(())
    }

    async fn observe(&self, observed: Observed<'_, Self>) -> TransportStatus {
        let before = self.status.as_ref();
        let handled_before = before.and_then(|s| s.last_handled_restart.as_deref());
        // Paused: nothing is asked of the worker, a restart neither.
        let asked = restart::to_ask(restart::requested(&self.metadata), handled_before)
            .filter(|_| !observed.paused);
        let report = match observed.worker {
            Some(Ok(worker)) => {
                let wants = Wants {
                    own_token: observed.ingest_token.as_deref(),
                    restart: asked.as_deref(),
                    paused: observed.paused,
                };
                push(self, observed.namespace, worker, wants, observed.ctx).await
            }
            Some(Err(unavailable)) => Err(unavailable.to_string()),
            None => Err("the worker does not run".into()),
        };
        let mut status = transport_status(
            before,
            self.metadata.generation,
            self.spec.suspended,
            report.as_ref().map_err(String::as_str),
            crate::operator::runtime::context::now(),
        );
        status.last_handled_restart = restart::handled(
            handled_before,
            asked.as_deref(),
            report.as_ref().ok().and_then(|r| r.restarted.as_deref()),
        );
        status
    }

    fn event(
        before: Option<&TransportStatus>,
        after: &TransportStatus,
    ) -> Option<(bool, &'static str, String)> {
        transport_event(before, after)
    }

    fn forget(&self, namespace: &str, ctx: &Context, _: &()) {
        ctx.pushed().remove(&pushed_key(namespace, self));
    }

    fn destinations(&self) -> Vec<(String, &str)> {
        vec![("spec.host.url".into(), self.spec.host.url.as_str())]
    }

    super::placement::pool_hosting!();
}

fn pushed_key(namespace: &str, transport: &Transport) -> String {
    format!("Transport {namespace}/{}", transport.name_any())
}

/// What a push asks of the worker besides the spec.
struct Wants<'a> {
    /// The producers' token (its hash goes to the worker).
    own_token: Option<&'a str>,
    /// A `ferry.dev/restart` value not handled yet.
    restart: Option<&'a str>,
    /// `ferry.dev/reconcile: paused`: only read.
    paused: bool,
}

/// Push the spec (and, in a pool, the hash of its own ingest token; a restart asked) when the
/// worker has not got this generation and token (or restarted), or has not carried out the
/// restart asked, then read its report.
/// `Err` says why the worker could not be read.
async fn push(
    transport: &Transport,
    namespace: &str,
    (target, pod_uid): ReadyWorker,
    Wants {
        own_token,
        restart,
        paused,
    }: Wants<'_>,
    ctx: &Context,
) -> Result<TransportReport, String> {
    let key = pushed_key(namespace, transport);
    let path = wire::resource_path(
        wire::Kind::Transports,
        &wire::key(namespace, &transport.name_any()),
    );
    let follow = |report: &TransportReport| Follow {
        kind: Transport::KIND,
        namespace,
        name: transport.metadata.name.as_deref().unwrap_or_default(),
        worker: &target,
        pod_uid: &pod_uid,
        path: path.clone(),
        etag: report.etag(),
    };
    let token_hash = own_token.map(|token| TokenHash::of(token).to_hex());
    // A new token (its Secret was replaced) is pushed as a new generation is.
    let wanted = (
        transport.metadata.generation,
        match &token_hash {
            Some(hash) => format!("{pod_uid} {hash}"),
            None => pod_uid.clone(),
        },
    );
    let fresh = ctx.pushed().get(&key) == Some(&wanted);
    // Paused: only read, whatever the worker has.
    if fresh || paused {
        match ctx.workers.get::<TransportReport>(&target, &path).await {
            // A restart asked that this worker has not carried out is pushed.
            Ok(report)
                if paused || restart.is_none_or(|r| report.restarted.as_deref() == Some(r)) =>
            {
                ctx.follow_report(follow(&report));
                return Ok(report);
            }
            Ok(_) => {}
            Err(e) if paused => {
                return Err(crate::operator::reconcile::skeleton::paused_read_error(&e));
            }
            // The worker lost it (a new disk): push again.
            Err(e) if e.is_not_hosted() => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let mut manifest = json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "Transport",
        "metadata": {
            "name": transport.name_any(),
            "namespace": namespace,
            "generation": transport.metadata.generation,
        },
        "spec": transport.spec,
    });
    if let Some(map) = manifest.as_object_mut() {
        if let Some(hash) = token_hash {
            map.insert(wire::INGEST_TOKEN_SHA256.into(), hash.into());
        }
        if let Some(value) = restart {
            map.insert(wire::RESTART.into(), value.into());
        }
    }
    let report = ctx
        .workers
        .put::<TransportReport>(&target, &path, &manifest)
        .await
        .map_err(|e| e.to_string())?;
    ctx.pushed().insert(key, wanted);
    ctx.follow_report(follow(&report));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::reconcile::skeleton::reconcile;
    use crate::operator::{
        fixtures::{
            ApiServerVerifier, applied as applied_object, assert_ready, condition, context,
            controlled_by, mock, not_found, respond, test_ip, transport, worker_at, worker_object,
        },
        runtime::context::{FINALIZER, now},
    };
    use http::Method;
    use kube::runtime::controller::Action;
    use serde_json::Value;
    use std::sync::Arc;
    use std::time::Duration;

    /// Answer the status write; answers what was written.
    async fn transport_status_written(handle: &mut ApiServerVerifier) -> Value {
        let (method, path, body, send) = handle.next().await;
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

    /// At rest — the objects as the last apply left them in the caches, the worker ready and
    /// saying the same — a reconcile sends the API server nothing: no read, no apply, no
    /// status write.
    #[cfg_attr(
        target_os = "macos",
        ignore = "binds a 127.0.X.Y address on the worker port; macOS has only 127.0.0.1 unless aliased"
    )]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reconcile_at_rest_asks_the_api_server_nothing() {
        use crate::operator::{
            fixtures::{applied, ready_pod},
            runtime::caches::Caches,
        };
        use kube::runtime::{reflector, watcher::Event};
        let ip = test_ip(39);
        let dir = tempfile::tempdir().unwrap();
        let _worker = worker_at(&ip, dir.path()).await;
        let (client, mut handle) = mock();
        let (secrets, mut secrets_writer) = reflector::store();
        let (services, mut services_writer) = reflector::store();
        let (stateful_sets, mut sets_writer) = reflector::store();
        let (pods, mut pods_writer) = reflector::store();
        let caches = Caches {
            secrets,
            services,
            stateful_sets,
            pods,
            ..Caches::default()
        };
        let ctx = Arc::new(
            Arc::into_inner(context(client))
                .unwrap()
                .with_caches(caches),
        );
        let pod_ip = ip.clone();
        let server = tokio::spawn(async move {
            let mut applies = Vec::new();
            for _ in ["ferry-tp-erp", "ferry-tp-erp-admin"] {
                let (_, _, _, send) = handle.next().await;
                send.send_response(not_found());
            }
            handle.service_and_stateful_set_absent("ferry-tp-erp").await;
            for _ in 0..4 {
                let (method, _, body, send) = handle.next().await;
                assert_eq!(method, Method::PATCH);
                let body = applied(body);
                applies.push(body.clone());
                send.send_response(respond(200, body));
            }
            handle.ready_pod("ferry-tp-erp", &pod_ip, "pod-1").await;
            let status = transport_status_written(&mut handle).await;
            (applies, status, handle)
        });
        let first = transport(true, "Retain");
        reconcile(Arc::new(first.clone()), ctx.clone(), Arc::new(()))
            .await
            .unwrap();
        let (applies, status, mut handle) = server.await.unwrap();
        // What the watches now hold: the objects as applied, the pod.
        fn object<K: serde::de::DeserializeOwned>(applied: &Value) -> K {
            serde_json::from_value(applied.clone()).unwrap()
        }
        secrets_writer.apply_watcher_event(&Event::Apply(object(&applies[0])));
        secrets_writer.apply_watcher_event(&Event::Apply(object(&applies[1])));
        services_writer.apply_watcher_event(&Event::Apply(object(&applies[2])));
        sets_writer.apply_watcher_event(&Event::Apply(object(&applies[3])));
        pods_writer.apply_watcher_event(&Event::Apply(
            serde_json::from_value(ready_pod("ferry-tp-erp", &ip, "pod-1")).unwrap(),
        ));
        let mut at_rest = first;
        at_rest.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
        // Nobody answers the mock any more: a request would keep the reconcile waiting.
        tokio::time::timeout(
            Duration::from_secs(10),
            reconcile(Arc::new(at_rest), ctx, Arc::new(())),
        )
        .await
        .expect("the reconcile asked the API server something")
        .unwrap();
        let asked = tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await;
        assert!(
            !matches!(asked, Ok(Some(_))),
            "the API server was asked something"
        );
    }

    #[cfg_attr(
        target_os = "macos",
        ignore = "binds a 127.0.X.Y address on the worker port; macOS has only 127.0.0.1 unless aliased"
    )]
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
                handle
                    .objects_with_known_tokens_and("ferry-tp-erp", "uid-1", checked)
                    .await;
                handle.ready_pod("ferry-tp-erp", &pod_ip, "pod-1").await;
                written.push(transport_status_written(&mut handle).await);
            }
            written
        });
        reconcile(
            Arc::new(transport(true, "Retain")),
            ctx.clone(),
            Arc::new(()),
        )
        .await
        .unwrap();
        reconcile(Arc::new(suspended), ctx, Arc::new(()))
            .await
            .unwrap();
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
            handle
                .objects_with_known_tokens("ferry-tp-erp", "uid-1")
                .await;
            handle.ready_pod("ferry-tp-erp", &ip, "pod-1").await;
            transport_status_written(&mut handle).await
        });
        reconcile(Arc::new(known), ctx, Arc::new(())).await.unwrap();
        let status = &server.await.unwrap()["status"];
        assert_eq!(status["state"], "Store and Forward", "last known: {status}");
        assert_eq!(status["queue"]["messages"], 7);
        let (ready, reason, _) = condition(status, "Ready");
        assert_eq!(
            (ready.as_str(), reason.as_str()),
            ("False", "WorkerUnreachable")
        );
    }

    /// A worker pod being deleted still shows Ready while its worker shuts down: it is not
    /// asked (what it answers now is the last of it), and the status says the pod is going,
    /// the last known state kept (T8: the next worker comes back to it).
    #[tokio::test]
    async fn a_worker_pod_being_deleted_is_not_ready() {
        let (client, mut handle) = mock();
        let ctx = context(client);
        let mut known = transport(true, "Retain");
        known.status = serde_json::from_value(json!({
            "state": "Up", "observedGeneration": 2,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Up", "message": "",
                            "observedGeneration": 2, "lastTransitionTime": "2026-11-23T10:00:00Z"}],
        }))
        .unwrap();
        // A worker would answer here: it must not be asked.
        let ip = test_ip(40);
        let dir = tempfile::tempdir().unwrap();
        let worker = worker_at(&ip, dir.path()).await;
        let server = tokio::spawn(async move {
            handle
                .objects_with_known_tokens("ferry-tp-erp", "uid-1")
                .await;
            let mut pod = crate::operator::fixtures::ready_pod("ferry-tp-erp", &ip, "pod-1");
            pod["metadata"]["deletionTimestamp"] = json!("2026-11-23T10:00:00Z");
            handle.pod("ferry-tp-erp", pod).await;
            transport_status_written(&mut handle).await
        });
        let action = reconcile(Arc::new(known), ctx, Arc::new(())).await.unwrap();
        worker.abort();
        let status = &server.await.unwrap()["status"];
        assert_eq!(status["state"], "Up", "last known: {status}");
        let (ready, reason, message) = condition(status, "Ready");
        assert_eq!(
            (ready.as_str(), reason.as_str()),
            ("False", "WorkerUnreachable")
        );
        assert!(
            message.contains("the worker pod ferry-tp-erp-0 is being deleted"),
            "{message}"
        );
        // The pod's deletion and its successor are watched: no polling for it.
        assert_eq!(
            action,
            Action::requeue(crate::operator::reconcile::skeleton::RESYNC)
        );
    }

    /// A worker made before ferry kept the two tokens apart: its one Secret holds both. The
    /// admin token moves to the admin Secret unchanged (the running worker keeps answering the
    /// operator), the producers' Secret keeps its ingest token unchanged and loses the admin one,
    /// and the StatefulSet mounts each from its Secret.
    #[tokio::test]
    async fn an_older_secret_is_split_with_both_tokens_kept() {
        let (client, mut handle) = mock();
        let ctx = context(client);
        let server = tokio::spawn(async move {
            let (_, path, _, send) = handle.next().await;
            assert!(path.ends_with("/secrets/ferry-tp-erp"), "{path}");
            send.send_response(respond(
                200,
                json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": "ferry-tp-erp", "ownerReferences": controlled_by("uid-1"),
                                 "uid": "uid-Secret", "resourceVersion": "7"},
                    "data": {"admin-token": "b2xkLWFkbWlu", "ingest-token": "b2xkLWluZ2VzdA=="},
                }),
            ));
            let (_, path, _, send) = handle.next().await;
            assert!(path.ends_with("/secrets/ferry-tp-erp-admin"), "{path}");
            send.send_response(not_found());
            handle.service_and_stateful_set_absent("ferry-tp-erp").await;
            let mut applied = Vec::new();
            for _ in 0..4 {
                let (method, path, body, send) = handle.next().await;
                assert_eq!(method, Method::PATCH, "{path}");
                applied.push((body["metadata"]["name"].clone(), body["data"].clone()));
                if body["kind"] == "StatefulSet" {
                    let volumes = &body["spec"]["template"]["spec"]["volumes"];
                    let sources = &volumes[0]["projected"]["sources"];
                    assert_eq!(
                        sources[0]["secret"]["name"], "ferry-tp-erp-admin",
                        "{volumes}"
                    );
                    assert_eq!(sources[1]["secret"]["name"], "ferry-tp-erp", "{volumes}");
                }
                send.send_response(respond(200, applied_object(body)));
            }
            assert_eq!(
                applied[..2],
                [
                    (
                        json!("ferry-tp-erp-admin"),
                        json!({"admin-token": "b2xkLWFkbWlu"})
                    ),
                    (
                        json!("ferry-tp-erp"),
                        json!({"ingest-token": "b2xkLWluZ2VzdA=="})
                    ),
                ]
            );
            handle.worker_pod_absent("ferry-tp-erp").await;
            transport_status_written(&mut handle).await
        });
        reconcile(Arc::new(transport(true, "Retain")), ctx, Arc::new(()))
            .await
            .unwrap();
        server.await.unwrap();
    }

    /// A host URL that is (or resolves to) a forbidden address is refused before anything is
    /// made or pushed: Ready=False ForbiddenDestination names the field, the address, its
    /// range and the flag (kstatus: Stalled, the user must change the spec).
    #[tokio::test]
    async fn a_host_at_a_forbidden_address_is_refused_naming_field_address_and_flag() {
        let (client, mut handle) = mock();
        let mut ctx = Arc::into_inner(context(client)).unwrap();
        ctx.defaults.forbidden_destinations = crate::destinations::Forbidden::parse(&format!(
            "{},{}",
            crate::destinations::LINK_LOCAL,
            crate::destinations::LOOPBACK
        ))
        .unwrap();
        let mut metadata_service = transport(true, "Retain");
        metadata_service.spec.host.url = "http://169.254.169.254/latest/meta-data/".into();
        let server = tokio::spawn(async move {
            let (method, path, body, send) = handle.next().await;
            assert_eq!(method, Method::PATCH, "the status first and alone: {path}");
            assert!(path.contains("/transports/erp/status"), "{path}");
            send.send_response(respond(
                200,
                serde_json::to_value(transport(true, "Retain")).unwrap(),
            ));
            let asked =
                tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await;
            assert!(
                !matches!(asked, Ok(Some(_))),
                "nothing made, nothing pushed"
            );
            body
        });
        let action = reconcile(Arc::new(metadata_service), Arc::new(ctx), Arc::new(()))
            .await
            .unwrap();
        assert_eq!(
            action,
            Action::requeue(crate::operator::reconcile::skeleton::RESYNC)
        );
        let status = &server.await.unwrap()["status"];
        assert_ready(
            status,
            "False",
            "ForbiddenDestination",
            &[
                "spec.host.url: http://169.254.169.254/latest/meta-data/ is 169.254.169.254",
                "169.254.0.0/16",
                "--forbidden-destinations",
            ],
        );
        let (stalled, _, _) = condition(status, "Stalled");
        assert_eq!(stalled, "True", "{status}");
    }

    #[tokio::test]
    async fn refused_worker_objects_show_in_the_status() {
        let (client, mut handle) = mock();
        let ctx = context(client);
        let mut known = transport(true, "Retain");
        known.status =
            serde_json::from_value(json!({"state": "Up", "observedGeneration": 2})).unwrap();
        let server = tokio::spawn(async move {
            for _ in ["ferry-tp-erp", "ferry-tp-erp-admin"] {
                let (_, _, _, send) = handle.next().await;
                send.send_response(not_found());
            }
            handle.service_and_stateful_set_absent("ferry-tp-erp").await;
            // The Secrets and the Service applied; the StatefulSet refused by admission.
            for _ in 0..3 {
                let (_, _, body, send) = handle.next().await;
                send.send_response(respond(200, body));
            }
            let (_, path, _, send) = handle.next().await;
            assert!(path.contains("/statefulsets/ferry-tp-erp"), "{path}");
            send.send_response(respond(
                403,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                       "message": "exceeded quota: compute, requested: requests.memory=64Mi"}),
            ));
            transport_status_written(&mut handle).await
        });
        let error = reconcile(Arc::new(known), ctx, Arc::new(()))
            .await
            .unwrap_err();
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

    /// An unrelated Secret (of the worker's name or its admin Secret's), Service or
    /// StatefulSet of the worker's name is never applied over (nor its tokens read):
    /// Ready=False NameConflict names it.
    #[tokio::test]
    async fn a_foreign_object_of_the_worker_name_is_left_alone() {
        let objects = [
            ("secrets", "ferry-tp-erp"),
            ("secrets", "ferry-tp-erp-admin"),
            ("services", "ferry-tp-erp"),
            ("statefulsets", "ferry-tp-erp"),
        ];
        for foreign in objects {
            let (client, mut handle) = mock();
            let ctx = context(client);
            let server = tokio::spawn(async move {
                for (kind, name) in objects {
                    let (method, path, _, send) = handle.next().await;
                    assert_eq!(method, Method::GET, "nothing is applied before the checks");
                    assert!(path.ends_with(&format!("/{kind}/{name}")), "{path}");
                    if (kind, name) != foreign {
                        send.send_response(not_found());
                        continue;
                    }
                    // Somebody else's object.
                    send.send_response(respond(
                        200,
                        worker_object(kind, name, controlled_by("someone-else")),
                    ));
                    break;
                }
                transport_status_written(&mut handle).await
            });
            let error = reconcile(Arc::new(transport(true, "Retain")), ctx, Arc::new(()))
                .await
                .unwrap_err();
            assert_eq!(error.category(), "conflict");
            let status = &server.await.unwrap()["status"];
            assert_ready(
                status,
                "False",
                "NameConflict",
                &[foreign.1, "Transport plant-a/erp"],
            );
        }
    }

    /// Paused before its worker was made: the operator reads its Secrets (none yet), applies
    /// nothing — no Secret, Service, NetworkPolicy or StatefulSet — and says so in the status.
    #[tokio::test]
    async fn a_paused_transport_gets_no_objects_and_says_why() {
        let (client, mut handle) = mock();
        let mut paused = transport(true, "Retain");
        paused.metadata.annotations = Some(
            [(
                crate::operator::reconcile::skeleton::RECONCILE_ANNOTATION.to_owned(),
                "paused".to_owned(),
            )]
            .into(),
        );
        let server = tokio::spawn(async move {
            for secret in ["ferry-tp-erp", "ferry-tp-erp-admin"] {
                let (method, path, _, send) = handle.next().await;
                assert_eq!(method, Method::GET, "only reads: {path}");
                assert!(path.ends_with(&format!("/secrets/{secret}")), "{path}");
                send.send_response(not_found());
            }
            let status = transport_status_written(&mut handle).await;
            assert_eq!(condition(&status["status"], "ReconcilePaused").0, "True");
            assert_eq!(condition(&status["status"], "Ready").1, "Paused");
        });
        let ctx = context(client);
        // A request after the status write would find no answer: the reconcile would hang.
        tokio::time::timeout(
            Duration::from_secs(5),
            reconcile(Arc::new(paused), ctx, Arc::new(())),
        )
        .await
        .expect("the reconcile asks nothing more")
        .unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("no other request")
            .unwrap();
    }

    #[tokio::test]
    async fn a_new_transport_gets_the_finalizer_first() {
        let (client, mut handle) = mock();
        let ctx = context(client);
        let server = tokio::spawn(async move {
            let (method, path, body, send) = handle.next().await;
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
        let action = reconcile(Arc::new(transport(false, "Retain")), ctx, Arc::new(()))
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
            // The tokens: no Secrets yet, so new ones.
            for secret in ["ferry-tp-erp", "ferry-tp-erp-admin"] {
                let (method, path, _, send) = handle.next().await;
                assert_eq!(
                    (method, path),
                    (
                        Method::GET,
                        format!("/api/v1/namespaces/plant-a/secrets/{secret}")
                    )
                );
                send.send_response(not_found());
            }
            handle.service_and_stateful_set_absent("ferry-tp-erp").await;
            // Server-side apply with one field manager, forced: the admin Secret, the
            // producers' Secret, Service, StatefulSet.
            let mut applied = Vec::new();
            let mut tokens = Vec::new();
            for _ in 0..4 {
                let (method, path, body, send) = handle.next().await;
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
                    // One audience per Secret: the admin token never in the producers' one.
                    let data = body["data"].as_object().unwrap();
                    assert_eq!(data.len(), 1, "{body}");
                    let token = data.values().next().unwrap().as_str().unwrap().to_owned();
                    assert!(token.len() > 40, "a generated token: {token}");
                    tokens.push(token);
                }
                send.send_response(respond(200, body));
            }
            assert_ne!(tokens[0], tokens[1], "two tokens, two audiences");
            assert_eq!(
                applied,
                [
                    (
                        "/api/v1/namespaces/plant-a/secrets/ferry-tp-erp-admin".to_string(),
                        "Secret".to_string()
                    ),
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
            handle.worker_pod_absent("ferry-tp-erp").await;
            // Status: not Ready, because the worker cannot be asked, and why.
            let (method, path, body, send) = handle.next().await;
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
        let action = reconcile(Arc::new(transport(true, "Retain")), ctx, Arc::new(()))
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
            handle
                .objects_with_known_tokens("ferry-tp-erp", "uid-1")
                .await;
            let (_, path, _, send) = handle.next().await;
            assert!(path.ends_with("/pods/ferry-tp-erp-0"), "{path}");
            send.send_response(not_found());
            handle.creation_events("ferry-tp-erp",
                Some("create Pod ferry-tp-erp-0 in StatefulSet ferry-tp-erp failed error: pods \"ferry-tp-erp-0\" is forbidden: exceeded quota: compute"),
            )
            .await;
            transport_status_written(&mut handle).await
        });
        reconcile(Arc::new(transport(true, "Retain")), ctx, Arc::new(()))
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
            let (method, path, _, send) = handle.next().await;
            assert_eq!(method, Method::DELETE);
            assert!(
                path.starts_with(
                    "/api/v1/namespaces/plant-a/persistentvolumeclaims/data-ferry-tp-erp-0"
                ),
                "{path}"
            );
            send.send_response(respond(200, json!({"kind": "PersistentVolumeClaim", "apiVersion": "v1", "metadata": {"name": "data-ferry-tp-erp-0"}})));
            // Then the finalizer is removed.
            let (method, path, body, send) = handle.next().await;
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
        reconcile(Arc::new(deleting("Delete")), ctx, Arc::new(()))
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
            let (method, path, _, send) = handle.next().await;
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
        reconcile(Arc::new(deleting("Retain")), ctx, Arc::new(()))
            .await
            .unwrap();
        server.await.unwrap();
    }

    #[cfg_attr(
        target_os = "macos",
        ignore = "binds a 127.0.X.Y address on the worker port; macOS has only 127.0.0.1 unless aliased"
    )]
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
            handle
                .objects_with_known_tokens("ferry-tp-erp", "uid-1")
                .await;
            handle.ready_pod("ferry-tp-erp", &pod_ip, "pod-uid-1").await;
            transport_status_written(&mut handle).await
        });
        reconcile(Arc::new(transport(true, "Retain")), ctx, Arc::new(()))
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
