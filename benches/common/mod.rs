//! What the benchmarks need: a release `ferry worker` process and local HTTP servers.

#![allow(dead_code)] // each benchmark uses a different part

#[path = "../../tests/common/certs.rs"]
pub mod certs;

use std::{
    net::TcpListener as StdListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use axum::Router;
use serde_json::Value;

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Serve `app` on a free loopback port; answers the port.
pub async fn serve(app: Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// Resident memory of a process (`self`, or a pid), in MiB.
pub fn rss_mib(pid: &str) -> u64 {
    status_kib(pid, "VmRSS:") / 1024
}

/// Only run when benching: `cargo test --benches` passes no --bench.
pub fn benching() -> bool {
    std::env::args().any(|a| a == "--bench")
}

pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A `ferry worker` whose admin and ingest token are both "bench".
pub struct Worker {
    child: Child,
    port: u16,
    scheme: &'static str,
    pub http: reqwest::Client,
}

impl Worker {
    pub async fn start(dir: &Path, args: &[&str]) -> Self {
        Self::start_as(dir, args, None).await
    }

    /// A worker serving TLS with a serving certificate for 127.0.0.1 issued by a CA made
    /// here; its client trusts that CA.
    pub async fn start_tls(dir: &Path, args: &[&str]) -> Self {
        std::fs::create_dir_all(dir).expect("dir");
        let ca = certs::TestCa::new("ferry bench CA");
        let (cert, key) = ca.issue(&["127.0.0.1"]);
        std::fs::write(dir.join("tls.crt"), cert).expect("tls.crt");
        std::fs::write(dir.join("tls.key"), key).expect("tls.key");
        let (crt, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        let mut all: Vec<&str> = args.to_vec();
        let (crt, key) = (crt.to_string_lossy(), key.to_string_lossy());
        all.extend(["--tls-cert-file", &crt, "--tls-key-file", &key]);
        Self::start_as(dir, &all, Some(&ca.pem)).await
    }

    async fn start_as(dir: &Path, args: &[&str], ca_pem: Option<&str>) -> Self {
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
            .args(args)
            .env("RUST_LOG", "ferry=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("worker starts");
        ferry::install_crypto_provider();
        let mut http = reqwest::Client::builder().pool_max_idle_per_host(256);
        if let Some(ca) = ca_pem {
            http =
                http.tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).expect("CA")]);
        }
        let http = http.build().expect("client");
        let scheme = if ca_pem.is_some() { "https" } else { "http" };
        let worker = Self {
            child,
            port,
            scheme,
            http,
        };
        // Ready: the store is open (before that /healthz already answers, the API 503).
        while !worker
            .http
            .get(worker.url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        worker
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.port)
    }

    /// PUT a manifest to `/v1/{kind}/default/{name}`.
    pub async fn put(&self, kind: &str, name: &str, body: &Value) {
        let r = self
            .http
            .put(self.url(&format!("/v1/{kind}/default/{name}")))
            .bearer_auth("bench")
            .json(body)
            .send()
            .await
            .expect("PUT");
        assert!(r.status().is_success(), "PUT {kind}/{name}: {}", r.status());
    }

    /// GET the report of `/v1/{kind}/default/{name}`.
    pub async fn get(&self, kind: &str, name: &str) -> Value {
        self.http
            .get(self.url(&format!("/v1/{kind}/default/{name}")))
            .bearer_auth("bench")
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("JSON")
    }

    pub fn rss_mib(&self) -> u64 {
        rss_mib(&self.child.id().to_string())
    }

    /// The peak resident memory of the process so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> u64 {
        status_kib(&self.child.id().to_string(), "VmHWM:") / 1024
    }

    /// SIGTERM; answers how long the process took to exit (at most a minute, then kill -9).
    pub fn terminate(&mut self) -> Duration {
        let started = std::time::Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        while started.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        started.elapsed()
    }
}

/// A `/proc/{pid}/status` line's value in KiB.
fn status_kib(pid: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
