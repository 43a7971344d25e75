//! Test fixtures of the operator: builders of the objects the reconcilers read, a worker in
//! this process, and the controller-rs `ApiServerVerifier`: a mock API server that answers
//! each request a reconcile makes, in order, through named steps that check it.

use std::{sync::Arc, time::Duration};

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

use crate::api::{Connection, Transport};
use crate::operator::{
    objects::builders::WorkerDefaults,
    runtime::context::{Context, FINALIZER},
    runtime::worker_client::WorkerClient,
};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The mock API server's side: each named step answers the next requests and checks them.
pub struct ApiServerVerifier(Handle);

impl ApiServerVerifier {
    /// The next request as it came, if the client made one (for tests that answer every
    /// request alike).
    pub async fn next_request(
        &mut self,
    ) -> Option<(
        Request<Body>,
        tower_test::mock::SendResponse<Response<Body>>,
    )> {
        self.0.next_request().await
    }

    /// The next request: its method, path and JSON body.
    pub async fn next(
        &mut self,
    ) -> (
        Method,
        String,
        Value,
        tower_test::mock::SendResponse<Response<Body>>,
    ) {
        let (request, send) = self
            .0
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

    /// Answer the ownership lookups of the worker's Service and StatefulSet: none exists yet.
    pub async fn service_and_stateful_set_absent(&mut self, worker: &str) {
        for kind in ["services", "statefulsets"] {
            let (method, path, _, send) = self.next().await;
            assert_eq!(method, Method::GET);
            assert!(path.contains(&format!("/{kind}/{worker}")), "{path}");
            send.send_response(not_found());
        }
    }

    /// Answer the Secret lookup with the tokens `worker_at` expects (a Secret controlled by
    /// `uid`), the ownership lookups, then the three applies.
    pub async fn objects_with_known_tokens(&mut self, worker: &str, uid: &str) {
        self.objects_with_known_tokens_and(worker, uid, true).await;
    }

    /// The same, when the Service's and StatefulSet's ownership is read (`checked`: the first
    /// reconcile of this operator) or already known from an earlier one. The Secret is as the
    /// first reconcile's apply left it, so a later reconcile does not apply it again; the
    /// Service and StatefulSet, not read again (no cache here), are applied.
    pub async fn objects_with_known_tokens_and(&mut self, worker: &str, uid: &str, checked: bool) {
        let admin = crate::operator::objects::builders::admin_secret_name(worker);
        for (name, data) in [
            (worker, json!({"ingest-token": "aW5nZXN0LXRva2Vu"})),
            (admin.as_str(), json!({"admin-token": "YWRtaW4tdG9rZW4="})),
        ] {
            let (_, path, _, send) = self.next().await;
            assert!(path.ends_with(&format!("/secrets/{name}")), "{path}");
            send.send_response(respond(
                200,
                json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": name, "ownerReferences": controlled_by(uid),
                                 "uid": "uid-Secret", "resourceVersion": "1"},
                    "data": data,
                }),
            ));
        }
        if checked {
            self.service_and_stateful_set_absent(worker).await;
        }
        for _ in 0..if checked { 4 } else { 2 } {
            let (method, path, body, send) = self.next().await;
            assert_eq!(
                method,
                Method::PATCH,
                "ownership is read once, not on every reconcile: {path}"
            );
            if body["kind"] == "Secret" {
                let kept = if path.contains(&format!("/secrets/{admin}?")) {
                    ("admin-token", "YWRtaW4tdG9rZW4=")
                } else {
                    ("ingest-token", "aW5nZXN0LXRva2Vu")
                };
                assert_eq!(
                    body["data"][kept.0], kept.1,
                    "tokens kept, not regenerated: {path}"
                );
                assert_eq!(
                    body["data"].as_object().map(|d| d.len()),
                    Some(1),
                    "one audience per Secret: {body}"
                );
            }
            send.send_response(respond(200, applied(body)));
        }
    }

    /// Answer the lookup of the StatefulSet's FailedCreate Events (made when its pod is missing)
    /// with one carrying `message`, or none.
    pub async fn creation_events(&mut self, worker: &str, message: Option<&str>) {
        let (method, path, _, send) = self.next().await;
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
    pub async fn worker_pod_absent(&mut self, worker: &str) {
        let (method, path, _, send) = self.next().await;
        assert_eq!(
            (method, path),
            (
                Method::GET,
                format!("/api/v1/namespaces/plant-a/pods/{worker}-0")
            )
        );
        send.send_response(not_found());
        self.creation_events(worker, None).await;
    }

    /// Answer the pod lookup: ready, at `ip`, with this uid.
    pub async fn ready_pod(&mut self, worker: &str, ip: &str, uid: &str) {
        self.pod(worker, ready_pod(worker, ip, uid)).await;
    }

    /// Answer the pod lookup with `pod`.
    pub async fn pod(&mut self, worker: &str, pod: Value) {
        let (_, path, _, send) = self.next().await;
        assert!(path.ends_with(&format!("/pods/{worker}-0")), "{path}");
        send.send_response(respond(200, pod));
    }
}

/// A started or stopped connection `name` in `plant-a` syncing `orders` into transport `erp`,
/// with the finalizer.
pub fn connection(name: &str, started: bool) -> Connection {
    serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "Connection",
        "metadata": {"name": name, "namespace": "plant-a", "uid": format!("uid-{name}"), "generation": 1,
                     "finalizers": [FINALIZER]},
        "spec": {"started": started, "syncSets": [{
            "name": "orders",
            "source": {"http": {"url": "http://crm/api/orders"}},
            "target": {"transport": {"name": "erp"}},
        }]},
    }))
    .unwrap()
}

/// A Transport or Connection `name` in `plant-a` as the API server lists it, with a minimal
/// spec and this status.
pub fn resource(kind: &str, name: &str, generation: i64, status: Value) -> Value {
    let spec = if kind == "Transport" {
        json!({"host": {"url": "http://erp/ingest"}})
    } else {
        json!({"syncSets": []})
    };
    json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": kind,
        "metadata": {"name": name, "namespace": "plant-a", "generation": generation},
        "spec": spec, "status": status,
    })
}

/// `status.conditions` holding just a Ready condition.
pub fn ready_condition(status: &str, reason: &str, message: &str, generation: i64) -> Value {
    json!([{"type": "Ready", "status": status, "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": "2026-11-23T10:00:00Z"}])
}

/// An object of the worker's name with these `ownerReferences`, as the API server answers a
/// GET of `kind` (`secrets`, `services`, `statefulsets`).
pub fn worker_object(kind: &str, worker: &str, owners: Value) -> Value {
    let metadata = json!({"name": worker, "namespace": "plant-a", "ownerReferences": owners});
    match kind {
        "secrets" => json!({"apiVersion": "v1", "kind": "Secret", "metadata": metadata,
                            "data": {"admin-token": "c3RvbGVu", "ingest-token": "c3RvbGVu"}}),
        "services" => json!({"apiVersion": "v1", "kind": "Service", "metadata": metadata,
                             "spec": {"ports": [{"port": 8080}]}}),
        _ => json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": metadata,
                    "spec": {"replicas": 1, "serviceName": worker,
                             "selector": {"matchLabels": {"app": worker}},
                             "template": {"metadata": {"labels": {"app": worker}},
                                          "spec": {"containers": [{"name": "app", "image": "someone-else"}]}}}}),
    }
}

/// A worker pod that is ready, at `ip`, with this uid.
pub fn ready_pod(worker: &str, ip: &str, uid: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{worker}-0"), "uid": uid},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

/// A worker pod that is Pending: its container waits with `reason` and `message`.
pub fn waiting_pod(worker: &str, reason: &str, message: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{worker}-0"), "uid": "pod-waiting"},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{
                "name": "worker", "image": "ferry", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": message}},
            }],
        },
    })
}

pub fn transport(finalized: bool, reclaim: &str) -> Transport {
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

pub fn context(client: kube::Client) -> Arc<Context> {
    crate::install_crypto_provider();
    Arc::new(Context::new(
        client,
        WorkerClient::direct(Duration::from_secs(1)).unwrap(),
        WorkerDefaults::default(),
        Duration::from_secs(5),
    ))
}

pub fn respond(status: u16, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

pub fn not_found() -> Response<Body> {
    respond(
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

pub fn mock() -> (kube::Client, ApiServerVerifier) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (
        kube::Client::new(service, "default"),
        ApiServerVerifier(handle),
    )
}

/// What the API server answers to an apply: the object, with its uid and a resourceVersion.
pub fn applied(mut body: Value) -> Value {
    let kind = body["kind"].as_str().unwrap_or_default().to_owned();
    body["metadata"]["uid"] = json!(format!("uid-{kind}"));
    body["metadata"]["resourceVersion"] = json!("1");
    body
}

/// `metadata.ownerReferences` naming `uid` as the controller.
pub fn controlled_by(uid: &str) -> Value {
    json!([{"apiVersion": "ferry.dev/v1alpha1", "kind": "Transport", "name": "x",
            "uid": uid, "controller": true}])
}

/// The written status's Ready condition is `ready` with `reason`, and its message holds each
/// of `needles`.
pub fn assert_ready(status: &Value, ready: &str, reason: &str, needles: &[&str]) {
    let (is, why, message) = condition(status, "Ready");
    assert_eq!((is.as_str(), why.as_str()), (ready, reason), "{message}");
    for needle in needles {
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }
}

/// A loopback address of this test's own, so parallel tests do not collide. Linux routes all
/// of 127.0.0.0/8 to the loopback; macOS only 127.0.0.1, so the tests that bind one are
/// ignored there (`cfg_attr(target_os = "macos", ignore)`).
pub fn test_ip(last: u8) -> String {
    format!("127.0.{}.{last}", std::process::id() % 250 + 2)
}

/// A condition of a written status: its status, reason and message.
pub fn condition(status: &Value, type_: &str) -> (String, String, String) {
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

/// A worker in this process, listening on a loopback address of its own at the worker
/// port, standing in for the pod's IP.
pub async fn worker_at(ip: &str, dir: &std::path::Path) -> tokio::task::JoinHandle<()> {
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
            jetstream: None,
        },
        true,
    )
    .await
    .unwrap();
    let tokens = Tokens {
        admin: Some(Token::new("admin-token")),
        ingest: Some(Token::new("ingest-token")),
        own_ingest_only: false,
    };
    let listener = tokio::net::TcpListener::bind((ip, 8080)).await.unwrap();
    tokio::spawn(async move {
        axum::serve(listener, api::router(worker, tokens))
            .await
            .unwrap();
    })
}
