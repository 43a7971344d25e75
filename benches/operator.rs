//! Operator benchmark: the Transport reconciler against a mock API server (tower-test) that
//! answers at once, for 1,000 Transports. Prints reconciles/s and the process's RSS; asserts
//! nothing. The worker pods do not exist, so each reconcile is the API side only: read the
//! Secret, apply Secret/Service/StatefulSet, look up the pod, write the status.
//!
//!     cargo bench --bench operator

mod common;

use std::{sync::Arc, time::Duration, time::Instant};

use ferry::{
    api::Transport,
    operator::{
        builders::WorkerDefaults,
        transport_reconciler::{Context, FINALIZER, reconcile_transport},
        worker_client::WorkerClient,
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

/// Answers every request the reconciler makes: lookups 404, applies and patches echo.
async fn api_server(mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>) {
    let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound"});
    while let Some((request, send)) = handle.next_request().await {
        let method = request.method().clone();
        let bytes = http_body_util::BodyExt::collect(request.into_body())
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let response = if method == Method::GET {
            respond(404, &not_found)
        } else {
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            // A status merge patch: answer a whole object, as the API server does.
            let body = if body.get("kind").is_none() {
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
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(api_server(handle));
    let client = kube::Client::new(service, "bench");
    let ctx = Arc::new(Context::new(
        client,
        WorkerClient::direct(Duration::from_secs(1)).expect("client"),
        WorkerDefaults::default(),
        Duration::from_secs(5),
    ));
    let transports: Vec<Arc<Transport>> = (0..count).map(|i| Arc::new(transport(i))).collect();
    println!(
        "ferry operator benchmark: the Transport reconciler, {count} Transports, mock API server"
    );
    for round in 1..=3 {
        let start = Instant::now();
        for transport in &transports {
            reconcile_transport(transport.clone(), ctx.clone())
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
}
