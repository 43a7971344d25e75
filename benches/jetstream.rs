//! Durable ingest into one transport: a real `ferry worker` (release build) on its redb
//! volume vs on a three-node NATS JetStream cluster on loopback (replicas 3, `sync_interval:
//! always`), 1 KiB transactions, the host down so every one is stored before its 202; then
//! the drain of that queue once the host answers. Prints figures; asserts nothing.
//!
//!     cargo bench --bench jetstream
//!
//! FERRY_BENCH_QUEUED (default 20000) sets how many transactions each run stores.

mod common;
#[path = "../tests/common/nats.rs"]
mod nats;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, http::StatusCode, routing::post};
use common::{Worker, env_or, free_port};
use serde_json::json;

/// For `nats`.
const WAIT: Duration = Duration::from_secs(60);
fn client() -> reqwest::Client {
    ferry::install_crypto_provider();
    reqwest::Client::new()
}

const PAYLOAD: usize = 1024;
const PRODUCERS: usize = 64;

/// A host that answers 503 (down) or 200, counting what it took.
struct Sink {
    port: u16,
    up: Arc<AtomicBool>,
    took: Arc<AtomicU64>,
}

async fn sink() -> Sink {
    let (up, took) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let app = Router::new().route(
        "/ingest",
        post({
            let (up, took) = (up.clone(), took.clone());
            move || {
                let (up, took) = (up.clone(), took.clone());
                async move {
                    if up.load(Ordering::Relaxed) {
                        took.fetch_add(1, Ordering::Relaxed);
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                }
            }
        }),
    );
    let port = common::serve(app).await;
    Sink { port, up, took }
}

/// `count` transactions from [`PRODUCERS`] producers; answers (stored/s, p50 ms, p99 ms).
async fn store(worker: &Worker, count: u64) -> (f64, f64, f64, u64) {
    let url = worker.url("/v1/transports/default/bench/transactions");
    let payload = bytes::Bytes::from(vec![b'x'; PAYLOAD]);
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..PRODUCERS {
        let (http, url, payload, sent) = (
            worker.http.clone(),
            url.clone(),
            payload.clone(),
            sent.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut refused) = (Vec::new(), 0u64);
            while sent.fetch_add(1, Ordering::Relaxed) < count {
                let t = Instant::now();
                let status = http
                    .post(&url)
                    .bearer_auth("bench")
                    .body(payload.clone())
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16());
                latencies.push(t.elapsed().as_micros() as u64);
                refused += u64::from(status != 202);
            }
            (latencies, refused)
        }));
    }
    let (mut all, mut refused) = (Vec::new(), 0);
    for task in tasks {
        let (latencies, r) = task.await.expect("producer");
        all.extend(latencies);
        refused += r;
    }
    let seconds = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let at = |q: f64| all[((all.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    (all.len() as f64 / seconds, at(0.5), at(0.99), refused)
}

async fn run(label: &str, sink: &Sink, args: &[&str], queued: u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = Worker::start(dir.path(), args).await;
    sink.up.store(false, Ordering::Relaxed);
    let before = sink.took.load(Ordering::Relaxed);
    worker
        .put(
            "transports",
            "bench",
            &json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
                "metadata": {"name": "bench", "namespace": "default"},
                "spec": {"host": {"url": format!("http://127.0.0.1:{}/ingest", sink.port), "timeout": "5s"},
                         "storeAndForward": {"maxMessages": 10_000_000, "maxBytes": "8Gi", "timeToLive": "24h"}}}),
        )
        .await;
    let (rate, p50, p99, refused) = store(&worker, queued).await;
    println!(
        "{label}: {rate:>7.0} stored/s durable ({PRODUCERS} producers), p50 {p50:.2} ms, p99 {p99:.2} ms, {refused} not 202; worker RSS {} MiB",
        worker.rss_mib()
    );
    let start = Instant::now();
    sink.up.store(true, Ordering::Relaxed);
    loop {
        let report = worker.get("transports", "bench").await;
        if report["queue"]["messages"] == 0 && report["state"] == "Up" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained = sink.took.load(Ordering::Relaxed) - before;
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{label}: drain {drained} forwarded in {seconds:.1} s = {:.0}/s",
        drained as f64 / seconds
    );
}

#[tokio::main]
async fn main() {
    if !common::benching() {
        return;
    }
    let queued = env_or("FERRY_BENCH_QUEUED", 20_000);
    println!(
        "ferry JetStream benchmark: 1 KiB transactions, {queued} stored per run, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let sink = sink().await;
    run("redb (local volume)", &sink, &[], queued).await;
    let cluster = nats::NatsCluster::start().await;
    let url = cluster.url();
    let args = [
        "--jetstream-url",
        url.as_str(),
        "--jetstream-replicas",
        "3",
        "--jetstream-owner",
        "bench",
    ];
    run("JetStream R3 (3 servers)", &sink, &args, queued).await;
    let _ = free_port;
}
