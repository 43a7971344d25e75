//! Connection benchmark: a real `ferry worker` (release build) syncs 1 KiB records from a
//! local source into a local transport that delivers to a local sink; then it hosts 100
//! connections. Prints figures; asserts nothing.
//!
//!     cargo bench --bench connection
//!
//! FERRY_BENCH_RECORDS (default 20000) sets how many records are synced.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{Path as UrlPath, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    routing::{get, post},
};
use common::{Worker, serve};
use serde_json::{Value, json};

const PAGE: usize = 1000;

#[derive(Clone)]
struct Source {
    records: Arc<Vec<Value>>,
}

/// `GET /{path}?updatedSince=W&page=P`: records with updatedAt >= W, a page at a time.
async fn serve_records(
    State(source): State<Source>,
    UrlPath(path): UrlPath<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> (HeaderMap, Json<Value>) {
    let since: u64 = query
        .get("updatedSince")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let page: usize = query.get("page").and_then(|s| s.parse().ok()).unwrap_or(0);
    // The "big" path serves every record; the others ten each.
    let all: &[Value] = if path == "big" {
        &source.records
    } else {
        &source.records[..10]
    };
    let matching: Vec<&Value> = all
        .iter()
        .filter(|r| r["updatedAt"].as_u64() >= Some(since))
        .collect();
    let mut headers = HeaderMap::new();
    if (page + 1) * PAGE < matching.len() {
        let link = format!(
            "</{path}?updatedSince={since}&page={}>; rel=\"next\"",
            page + 1
        );
        if let Ok(v) = HeaderValue::from_str(&link) {
            headers.insert(header::LINK, v);
        }
    }
    let items: Vec<&Value> = matching.into_iter().skip(page * PAGE).take(PAGE).collect();
    (headers, Json(json!({ "items": items })))
}

fn connection(name: &str, source: String, resolved: Value) -> Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "Connection",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"frequency": "60s", "syncSets": [{
            "name": "s",
            "source": {"http": {"url": source, "itemsPointer": "/items"}},
            "target": {"transport": {"name": "sink"}},
        }]},
        "resolved": resolved,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !common::benching() {
        return;
    }
    let count = common::env_or("FERRY_BENCH_RECORDS", 20_000) as usize;
    let filler = "x".repeat(1024 - 60);
    let records: Vec<Value> = (0..count)
        .map(|i| json!({"id": i, "updatedAt": 1_000_000 + i as u64, "data": filler}))
        .collect();
    let source_port = serve(
        Router::new()
            .route("/{path}", get(serve_records))
            .with_state(Source {
                records: Arc::new(records),
            }),
    )
    .await;
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let sink_port = serve(Router::new().route(
        "/ingest",
        post(move |_: axum::body::Bytes| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                StatusCode::OK
            }
        }),
    ))
    .await;

    let dir = tempfile::tempdir().expect("temp dir");
    let worker = Worker::start(dir.path(), &[]).await;
    worker
        .put(
            "transports",
            "sink",
            &json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
                   "metadata": {"name": "sink", "namespace": "default"},
                   "spec": {"host": {"url": format!("http://127.0.0.1:{sink_port}/ingest")}}}),
        )
        .await;
    let resolved = json!({"transports": {"sink": {
        "endpoint": worker.url("/v1/transports/default/sink/transactions"), "token": "bench"}}});

    println!(
        "ferry connection benchmark: 1 KiB records, source -> connection -> transport -> sink"
    );
    let start = Instant::now();
    worker
        .put(
            "connections",
            "big",
            &connection(
                "big",
                format!("http://127.0.0.1:{source_port}/big"),
                resolved.clone(),
            ),
        )
        .await;
    loop {
        let report = worker.get("connections", "big").await;
        if report["syncSets"][0]["recordsSynced"].as_u64() >= Some(count as u64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "synced {count} records in {seconds:.1} s = {:.0} records/s ({} reached the sink); worker RSS {} MiB",
        count as f64 / seconds,
        received.load(Ordering::Relaxed),
        worker.rss_mib()
    );

    let before = worker.rss_mib();
    for i in 0..100 {
        let name = format!("c{i:03}");
        let source = format!("http://127.0.0.1:{source_port}/{name}");
        worker
            .put(
                "connections",
                &name,
                &connection(&name, source, resolved.clone()),
            )
            .await;
    }
    for i in 0..100 {
        let name = format!("c{i:03}");
        while worker.get("connections", &name).await["status"] != "Running" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!(
        "100 more connections hosted and Running: worker RSS {} MiB (was {} MiB)",
        worker.rss_mib(),
        before
    );
}
