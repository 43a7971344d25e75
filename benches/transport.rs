//! Transport benchmark: a real `ferry worker` (release build) against a local sink, 1 KiB
//! transactions. Prints figures; asserts nothing.
//!
//!     cargo bench --bench transport
//!
//! FERRY_BENCH_SECONDS (default 5) sets each timed phase; FERRY_BENCH_QUEUED (default 100000)
//! how many transactions are queued for the drain and memory figures.

mod common;

use std::{
    io::Write,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, http::StatusCode, routing::post};
use common::{Worker, env_or};
use serde_json::{Value, json};

const PAYLOAD: usize = 1024;

/// fsync'd 4 KiB writes per second on the disk holding `dir`: the ceiling for durable commits.
fn fsync_rate(dir: &Path) -> f64 {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).expect("probe file");
    let block = [7u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        file.write_all(&block).expect("write");
        file.sync_data().expect("fsync");
        n += 1;
    }
    let _ = std::fs::remove_file(path);
    n as f64 / start.elapsed().as_secs_f64()
}

struct Sink {
    port: u16,
    up: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
}

/// A host that counts what it receives; "down" answers 503 (the worker keeps the data).
async fn sink() -> Sink {
    let up = Arc::new(AtomicBool::new(true));
    let received = Arc::new(AtomicU64::new(0));
    let (u, r) = (up.clone(), received.clone());
    let app = Router::new().route(
        "/ingest",
        post(move |_: axum::body::Bytes| {
            let (u, r) = (u.clone(), r.clone());
            async move {
                if u.load(Ordering::Relaxed) {
                    r.fetch_add(1, Ordering::Relaxed);
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            }
        }),
    );
    let port = common::serve(app).await;
    Sink { port, up, received }
}

fn transport(spec: Value) -> Value {
    json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
           "metadata": {"name": "bench", "namespace": "default"}, "spec": spec})
}

/// Resume (`spec(true)`) and time until the queue is forwarded; answers (forwarded, seconds).
async fn drain(worker: &Worker, sink: &Sink, spec: &dyn Fn(bool) -> Value) -> (u64, f64) {
    worker
        .put("transports", "bench", &transport(spec(false)))
        .await;
    sink.up.store(true, Ordering::Relaxed);
    let before = sink.received.load(Ordering::Relaxed);
    let start = Instant::now();
    worker
        .put("transports", "bench", &transport(spec(true)))
        .await;
    loop {
        let report = worker.get("transports", "bench").await;
        if report["state"] == "Up" && report["queue"]["messages"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (
        sink.received.load(Ordering::Relaxed) - before,
        start.elapsed().as_secs_f64(),
    )
}

struct Run {
    count: u64,
    seconds: f64,
    latencies_us: Vec<u64>,
    statuses: Vec<(u16, u64)>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.count as f64 / self.seconds
    }

    fn percentile(&mut self, p: f64) -> f64 {
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us.get(i).copied().unwrap_or(0) as f64 / 1000.0
    }
}

/// `producers` concurrent producers send 1 KiB transactions, each waiting for its answer,
/// until `limit` has passed or `max` were sent.
async fn produce(worker: &Worker, producers: usize, limit: Duration, max: u64) -> Run {
    let url = worker.url("/v1/transports/default/bench/transactions");
    let payload = bytes::Bytes::from(vec![b'x'; PAYLOAD]);
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..producers {
        let (http, url, payload, sent) = (
            worker.http.clone(),
            url.clone(),
            payload.clone(),
            sent.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut statuses = std::collections::BTreeMap::new();
            while start.elapsed() < limit && sent.fetch_add(1, Ordering::Relaxed) < max {
                let t = Instant::now();
                let r = http
                    .post(&url)
                    .bearer_auth("bench")
                    .body(payload.clone())
                    .send()
                    .await;
                let status = r.map(|r| r.status().as_u16()).unwrap_or(0);
                latencies.push(t.elapsed().as_micros() as u64);
                *statuses.entry(status).or_insert(0u64) += 1;
            }
            (latencies, statuses)
        }));
    }
    let mut run = Run {
        count: 0,
        seconds: 0.0,
        latencies_us: vec![],
        statuses: vec![],
    };
    let mut statuses = std::collections::BTreeMap::new();
    for task in tasks {
        let (latencies, s) = task.await.expect("producer");
        run.latencies_us.extend(latencies);
        for (k, v) in s {
            *statuses.entry(k).or_insert(0) += v;
        }
    }
    run.seconds = start.elapsed().as_secs_f64();
    run.count = run.latencies_us.len() as u64;
    run.statuses = statuses.into_iter().collect();
    run
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would too: only run when benching.
    if !common::benching() {
        return;
    }
    let seconds = Duration::from_secs(env_or("FERRY_BENCH_SECONDS", 5));
    let queued = env_or("FERRY_BENCH_QUEUED", 100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    println!(
        "ferry transport benchmark: 1 KiB transactions, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("disk: {:.0} fsync'd 4 KiB writes/s", fsync_rate(dir.path()));

    let sink = sink().await;
    let worker = Worker::start(dir.path(), &["--forward-window", "1"]).await;
    let spec = |up: bool| {
        json!({"host": {"url": format!("http://127.0.0.1:{}/ingest", sink.port), "timeout": "5s"},
               "suspended": !up,
               "storeAndForward": {"maxMessages": 10_000_000, "maxBytes": "8Gi", "timeToLive": "24h"}})
    };
    worker
        .put("transports", "bench", &transport(spec(true)))
        .await;

    for producers in [1, 64] {
        let mut run = produce(&worker, producers, seconds, u64::MAX).await;
        println!(
            "Up, {producers:>2} producer(s): {:>8.0} delivered/s, p50 {:.2} ms, p99 {:.2} ms  (answers {:?})",
            run.rate(),
            run.percentile(0.50),
            run.percentile(0.99),
            run.statuses
        );
    }

    // The host answers 503: every transaction is stored durably (fsync'd before the 202).
    sink.up.store(false, Ordering::Relaxed);
    let mut run = produce(&worker, 64, Duration::from_secs(3600), queued).await;
    println!(
        "host down, 64 producers: {:>8.0} stored/s (durable), p50 {:.2} ms, p99 {:.2} ms  (answers {:?})",
        run.rate(),
        run.percentile(0.50),
        run.percentile(0.99),
        run.statuses
    );
    let report = worker.get("transports", "bench").await;
    println!(
        "queued: {} transactions, {} MiB; worker RSS {} MiB",
        report["queue"]["messages"],
        report["queue"]["bytes"].as_u64().unwrap_or(0) >> 20,
        worker.rss_mib()
    );

    // Suspend (S&F Suspended), let the host answer again, resume: time the drain.
    let (drained, seconds) = drain(&worker, &sink, &spec).await;
    println!(
        "drain after resume: {drained} forwarded in {seconds:.1} s = {:.0}/s; worker RSS {} MiB",
        drained as f64 / seconds,
        worker.rss_mib()
    );
    drop(worker);

    // The same with 8 deliveries in flight (--forward-window 8): order at the host is then
    // no longer exact.
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = Worker::start(dir.path(), &["--forward-window", "8"]).await;
    worker
        .put("transports", "bench", &transport(spec(true)))
        .await;
    sink.up.store(false, Ordering::Relaxed);
    produce(&worker, 64, Duration::from_secs(3600), queued).await;
    let (drained, seconds) = drain(&worker, &sink, &spec).await;
    println!(
        "drain after resume, --forward-window 8: {drained} forwarded in {seconds:.1} s = {:.0}/s",
        drained as f64 / seconds
    );
}
