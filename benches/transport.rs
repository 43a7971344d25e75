//! Transport benchmark: a real `ferry worker` (release build) against a local sink, 1 KiB
//! transactions. Prints figures; asserts nothing.
//!
//!     cargo bench --bench transport
//!
//! FERRY_BENCH_SECONDS (default 5) sets each timed phase; FERRY_BENCH_QUEUED (default 100000)
//! how many transactions are queued for the drain and memory figures.

use std::{
    io::Write,
    net::TcpListener as StdListener,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, http::StatusCode, routing::post};
use serde_json::{Value, json};

const PAYLOAD: usize = 1024;

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Sink { port, up, received }
}

struct Worker {
    child: Child,
    port: u16,
    http: reqwest::Client,
}

impl Worker {
    async fn start(dir: &Path, forward_window: u16) -> Self {
        std::fs::write(dir.join("token"), "bench").expect("token");
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["worker", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--admin-token-file")
            .arg(dir.join("token"))
            .arg("--ingest-token-file")
            .arg(dir.join("token"))
            .args(["--forward-window", &forward_window.to_string()])
            .env("RUST_LOG", "ferry=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("worker starts");
        ferry::install_crypto_provider();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .expect("client");
        let worker = Self { child, port, http };
        while worker
            .http
            .get(worker.url("/healthz"))
            .send()
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        worker
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn put(&self, spec: Value) {
        let body = json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
            "metadata": {"name": "bench", "namespace": "default"}, "spec": spec});
        let r = self
            .http
            .put(self.url("/v1/transports/default/bench"))
            .bearer_auth("bench")
            .json(&body)
            .send()
            .await
            .expect("PUT");
        assert!(r.status().is_success(), "PUT: {}", r.status());
    }

    async fn report(&self) -> Value {
        self.http
            .get(self.url("/v1/transports/default/bench"))
            .bearer_auth("bench")
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("JSON")
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    if !std::env::args().any(|a| a == "--bench") {
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
    let worker = Worker::start(dir.path(), 1).await;
    let spec = |up: bool| {
        json!({"host": {"url": format!("http://127.0.0.1:{}/ingest", sink.port), "timeout": "5s"},
               "suspended": !up,
               "storeAndForward": {"maxMessages": 10_000_000, "maxBytes": "8Gi", "timeToLive": "24h"}})
    };
    worker.put(spec(true)).await;

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
    let report = worker.report().await;
    println!(
        "queued: {} transactions, {} MiB; worker RSS {} MiB",
        report["queue"]["messages"],
        report["queue"]["bytes"].as_u64().unwrap_or(0) >> 20,
        worker.rss_kib() / 1024
    );

    // Suspend (S&F Suspended), let the host answer again, resume: time the drain.
    worker.put(spec(false)).await;
    sink.up.store(true, Ordering::Relaxed);
    let before = sink.received.load(Ordering::Relaxed);
    let start = Instant::now();
    worker.put(spec(true)).await;
    loop {
        let report = worker.report().await;
        if report["state"] == "Up" && report["queue"]["messages"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = sink.received.load(Ordering::Relaxed) - before;
    println!(
        "drain after resume: {drained} forwarded in {:.1} s = {:.0}/s; worker RSS {} MiB",
        start.elapsed().as_secs_f64(),
        drained as f64 / start.elapsed().as_secs_f64(),
        worker.rss_kib() / 1024
    );

    drop(worker);

    // The same drain with 8 deliveries in flight (--forward-window 8): order at the host is
    // then no longer exact.
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = Worker::start(dir.path(), 8).await;
    worker.put(spec(true)).await;
    sink.up.store(false, Ordering::Relaxed);
    produce(&worker, 64, Duration::from_secs(3600), queued).await;
    worker.put(spec(false)).await;
    sink.up.store(true, Ordering::Relaxed);
    let before = sink.received.load(Ordering::Relaxed);
    let start = Instant::now();
    worker.put(spec(true)).await;
    loop {
        let report = worker.report().await;
        if report["state"] == "Up" && report["queue"]["messages"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = sink.received.load(Ordering::Relaxed) - before;
    println!(
        "drain after resume, --forward-window 8: {drained} forwarded in {:.1} s = {:.0}/s",
        start.elapsed().as_secs_f64(),
        drained as f64 / start.elapsed().as_secs_f64()
    );
}
