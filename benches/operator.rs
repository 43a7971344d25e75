//! Operator benchmark: the Transport reconciler against a mock API server (tower-test) that
//! answers at once, for 1,000 Transports. Prints reconciles/s and the process's RSS; asserts
//! nothing.
//!
//! 1. The worker pods do not exist, so each reconcile is the API side only: read the Secret,
//!    apply Secret/Service/StatefulSet, look up the pod, write the status.
//! 2. Spec changes: a real worker (in this process, on a loopback address standing in for the
//!    pod IP) hosts the transports; each Transport gets a new generation (suspend / resume) and
//!    the time from the reconcile starting to the worker having answered the `PUT` is measured.
//!    On a cluster the watch event's delivery comes on top (usually a few milliseconds).
//!
//!     cargo bench --bench operator

mod common;

use std::{sync::Arc, time::Duration, time::Instant};

use ferry::{
    api::Transport,
    operator::{
        objects::builders::WorkerDefaults,
        reconcile::skeleton::reconcile,
        runtime::context::{Context, FINALIZER},
        runtime::worker_client::WorkerClient,
    },
    worker::{
        Worker, WorkerOptions, api,
        tokens::{Token, Tokens},
    },
};
use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

fn transport(i: usize) -> Transport {
    serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
        "metadata": {"name": format!("tp-{i:04}"), "namespace": "bench", "uid": format!("uid-{i}"),
                     "generation": 1, "finalizers": [FINALIZER]},
        "spec": {"host": {"url": "http://erp/ingest"}},
    }))
    .expect("a transport")
}

fn respond(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(body).expect("JSON")))
        .expect("a response")
}

/// Answers every request the reconciler makes: applies and patches echo; lookups 404, or with
/// `worker` the Secret with its tokens and a ready pod at its address.
async fn api_server(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    worker: Option<String>,
) {
    let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound"});
    while let Some((request, send)) = handle.next_request().await {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let bytes = http_body_util::BodyExt::collect(request.into_body())
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let response = if method == Method::GET {
            match &worker {
                Some(ip) if path.contains("/pods/") => respond(
                    200,
                    &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "w-0", "uid": "pod-1"},
                            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}}),
                ),
                Some(_) => respond(
                    200,
                    &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "w"},
                            "data": {"admin-token": "YWRtaW4tdG9rZW4=", "ingest-token": "aW5nZXN0LXRva2Vu"}}),
                ),
                None => respond(404, &not_found),
            }
        } else {
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            // A status patch: answer a whole object, as the API server does.
            let body = if path.ends_with("/status") || body.get("kind").is_none() {
                json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Transport", "metadata": {"name": "x"},
                       "spec": {"host": {"url": "http://erp/ingest"}}})
            } else {
                body
            };
            respond(200, &body)
        };
        send.send_response(response);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !common::benching() {
        return;
    }
    ferry::install_crypto_provider();
    let count = common::env_or("FERRY_BENCH_TRANSPORTS", 1000) as usize;
    let before = common::rss_mib("self");
    let ctx = context(None);
    let transports: Vec<Arc<Transport>> = (0..count).map(|i| Arc::new(transport(i))).collect();
    println!(
        "ferry operator benchmark: the Transport reconciler, {count} Transports, mock API server"
    );
    for round in 1..=3 {
        let start = Instant::now();
        for transport in &transports {
            reconcile(transport.clone(), ctx.clone(), Arc::new(()))
                .await
                .expect("reconciled");
        }
        let seconds = start.elapsed().as_secs_f64();
        println!(
            "round {round}: {count} reconciles in {seconds:.2} s = {:.0} reconciles/s (6 API calls each); RSS {} MiB (was {before} MiB)",
            count as f64 / seconds,
            common::rss_mib("self")
        );
    }

    // 2. Spec changes reaching a real worker.
    let changes = count.min(200);
    let ip = "127.0.0.77";
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = Worker::open(
        WorkerOptions {
            data_dir: dir.path().to_owned(),
            public_url: format!("http://{ip}:8080"),
            forward_window: 1,
            memory_budget: ferry::worker::budget::DEFAULT_BYTES,
            jetstream: None,
        },
        true,
    )
    .await
    .expect("worker");
    let tokens = Tokens {
        admin: Some(Token::new("admin-token")),
        ingest: Some(Token::new("ingest-token")),
        own_ingest_only: false,
    };
    let listener = tokio::net::TcpListener::bind((ip, 8080))
        .await
        .expect("the worker's address");
    tokio::spawn(async move { axum::serve(listener, api::router(worker, tokens)).await });
    let ctx = context(Some(ip.to_owned()));
    let mut latencies = Vec::new();
    for generation in 1..=3 {
        for t in transports.iter().take(changes) {
            let mut changed = (**t).clone();
            changed.metadata.generation = Some(generation);
            changed.spec.suspended = generation % 2 == 0;
            let start = Instant::now();
            reconcile(Arc::new(changed), ctx.clone(), Arc::new(()))
                .await
                .expect("reconciled");
            // The first generation creates the transport on the worker; count the changes.
            if generation > 1 {
                latencies.push(start.elapsed());
            }
        }
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    println!(
        "spec change → worker: {} changes (suspend/resume) of {changes} transports hosted by one worker: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (reconcile start → the worker answered the PUT)",
        latencies.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

/// A reconcile context over a fresh mock API server (see `api_server`).
fn context(worker: Option<String>) -> Arc<Context> {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(api_server(handle, worker));
    let client = kube::Client::new(service, "bench");
    Arc::new(Context::new(
        client,
        WorkerClient::direct(Duration::from_secs(5)).expect("client"),
        WorkerDefaults::default(),
        Duration::from_secs(5),
    ))
}
