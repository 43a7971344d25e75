//! The worker under outage and hostile clients: peak memory and time to stop, printed, not
//! asserted. Each figure comes from a fresh release `ferry worker` process and its VmHWM
//! (peak resident memory over its whole life, so startup and every retry are in it).
//!
//!     cargo bench --bench worker_stress
//!
//! 1. host down with 300 transactions of 1 MB (and 9 of 60 MB) queued: a restarted worker's
//!    peak across 10 forward retries (the chart's default memory limit is 256 MiB);
//! 2. 8 concurrent 60 MB ingests (stored: the host is down): peak, and how many were
//!    stored or refused by the memory budget;
//! 3. a 60 MB PUT to the admin route: time to the answer, peak;
//! 4. SIGTERM with 500 idle and 20 half-sent connections: time to exit.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, http::StatusCode, routing::post};
use common::Worker;
use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt, net::TcpStream};

/// A host that is down: it answers every delivery 503 and counts the attempts.
async fn down_host() -> (String, Arc<AtomicU64>) {
    let attempts = Arc::new(AtomicU64::new(0));
    let counter = attempts.clone();
    let app = Router::new()
        .route(
            "/ingest",
            post(move |_: axum::body::Bytes| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::Relaxed);
                    StatusCode::SERVICE_UNAVAILABLE
                }
            }),
        )
        // Large transactions reach the handler (axum's default limit would answer 413, which
        // ferry takes as a rejection and drops).
        .layer(axum::extract::DefaultBodyLimit::disable());
    let port = common::serve(app).await;
    (format!("http://127.0.0.1:{port}/ingest"), attempts)
}

fn transport(spec: Value) -> Value {
    json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
           "metadata": {"name": "stress", "namespace": "default"}, "spec": spec})
}

/// One ingest on a connection of its own; 0 when no answer came.
async fn ingest(worker: &Worker, payload: bytes::Bytes) -> u16 {
    let client = reqwest::Client::new();
    match client
        .post(worker.url("/v1/transports/default/stress/transactions"))
        .bearer_auth("bench")
        .body(payload)
        .send()
        .await
    {
        Ok(answer) => answer.status().as_u16(),
        Err(e) => {
            // A refusal sent before the body was read can reach a client still sending as a
            // reset connection.
            eprintln!("ingest: {}", ferry::error_chain(&e));
            0
        }
    }
}

/// `count` transactions of `size` bytes queued while the host is down, then a restarted worker
/// retries forwarding them: its peak memory over 10 retries.
async fn outage_with_large_transactions(
    host: &str,
    attempts: &AtomicU64,
    count: usize,
    size: usize,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = json!({"host": {"url": host, "timeout": "5s"}, "maxTransactionBytes": "64Mi",
                      "storeAndForward": {"maxBytes": "2Gi"}});
    let worker = Worker::start(dir.path(), &[]).await;
    worker.put("transports", "stress", &transport(spec)).await;
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let mut stored = 0;
    for _ in 0..count {
        if ingest(&worker, payload.clone()).await == 202 {
            stored += 1;
        }
    }
    let ingest_peak = worker.peak_rss_mib();
    drop(worker);
    // A restarted worker forwards the whole queue again, retry after retry.
    let worker = Worker::start(dir.path(), &[]).await;
    let before = attempts.load(Ordering::Relaxed);
    let started = Instant::now();
    while attempts.load(Ordering::Relaxed) < before + 10 && started.elapsed().as_secs() < 120 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "host down, {stored} x {} MB queued: peak RSS {} MiB across {} forward retries after a restart ({} MiB while storing them)",
        size / 1_000_000,
        worker.peak_rss_mib(),
        attempts.load(Ordering::Relaxed) - before,
        ingest_peak
    );
}

async fn concurrent_large_ingests(host: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = json!({"host": {"url": host, "timeout": "5s"}, "maxTransactionBytes": "64Mi",
                      "storeAndForward": {"maxBytes": "2Gi"}});
    let worker = Arc::new(Worker::start(dir.path(), &[]).await);
    worker.put("transports", "stress", &transport(spec)).await;
    let idle = worker.peak_rss_mib();
    let payload = bytes::Bytes::from(vec![b'y'; 60_000_000]);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (worker, payload) = (worker.clone(), payload.clone());
            tokio::spawn(async move { ingest(&worker, payload).await })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::new();
    for task in tasks {
        *statuses.entry(task.await.unwrap_or(0)).or_insert(0) += 1;
    }
    println!(
        "8 concurrent 60 MB ingests: peak RSS {} MiB (idle {idle} MiB); answers {statuses:?} (202 stored, 503 over the memory budget)",
        worker.peak_rss_mib()
    );
}

async fn large_put() {
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = Worker::start(dir.path(), &[]).await;
    let addr = worker.url("").trim_start_matches("http://").to_owned();
    let stream = TcpStream::connect(&addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    let head = format!(
        "PUT /v1/transports/default/huge HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer bench\r\n\
         Content-Type: application/json\r\nContent-Length: 60000000\r\n\r\n"
    );
    writer.write_all(head.as_bytes()).await.expect("head");
    // The body follows while the answer is read, as curl does.
    let chunk = b"1234567,".repeat(8192);
    let mut answer = [0u8; 512];
    let mut sent = 0usize;
    let read = loop {
        tokio::select! {
            n = tokio::io::AsyncReadExt::read(&mut reader, &mut answer) => break n.unwrap_or(0),
            w = writer.write_all(&chunk), if sent < 60_000_000 => {
                if w.is_err() { sent = usize::MAX; } else { sent += chunk.len(); }
            }
        }
    };
    let took = started.elapsed();
    let status = String::from_utf8_lossy(&answer[..read.min(12)]).into_owned();
    println!(
        "a 60 MB PUT: answered {status:?} after {:.1} ms ({} MB of the body sent); peak RSS {} MiB",
        took.as_secs_f64() * 1000.0,
        sent.min(60_000_000) / 1_000_000,
        worker.peak_rss_mib()
    );
}

async fn sigterm_with_slow_clients() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut worker = Worker::start(dir.path(), &[]).await;
    let addr = worker.url("").trim_start_matches("http://").to_owned();
    let mut open = Vec::new();
    for _ in 0..500 {
        if let Ok(stream) = TcpStream::connect(&addr).await {
            open.push(stream);
        }
    }
    for i in 0..20 {
        let Ok(mut stream) = TcpStream::connect(&addr).await else {
            continue;
        };
        let half: &[u8] = if i % 2 == 0 {
            b"POST /v1/transports/default/stress/transactions HTTP/1.1\r\nHost: x\r\nContent-Le"
        } else {
            b"PUT /v1/transports/default/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{\"a"
        };
        let _ = stream.write_all(half).await;
        open.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let took = worker.terminate();
    println!(
        "SIGTERM with {} idle and 20 half-sent connections: stopped in {:.2} s",
        open.len() - 20,
        took.as_secs_f64()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !common::benching() {
        return;
    }
    println!(
        "ferry worker under stress ({} cores); default --memory-budget 64Mi",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let (host, attempts) = down_host().await;
    outage_with_large_transactions(&host, &attempts, 300, 1_000_000).await;
    outage_with_large_transactions(&host, &attempts, 9, 60_000_000).await;
    concurrent_large_ingests(&host).await;
    large_put().await;
    sigterm_with_slow_clients().await;
}
