//! Up-state delivery, side by side with what a platform team would otherwise put in front of
//! the host: wrk → ferry transport (Up) → nginx answering 200, and wrk → nginx `proxy_pass`
//! (keep-alive upstream) → the same nginx. 1 KiB POSTs, 64 connections and 1 connection,
//! alternately, several rounds; prints each figure and the median ratios. Asserts nothing.
//!
//!     cargo bench --bench proxy
//!
//! Needs `nginx` and `wrk`: when missing, it installs Debian's `nginx-light` and `wrk` with
//! apt-get (as root), or says what to install. FERRY_BENCH_SECONDS (default 5) sets each run,
//! FERRY_BENCH_ROUNDS (default 3) the rounds.
//!
//! Then what TLS costs: the same delivery through a second worker serving HTTPS
//! (`--tls-cert-file`, a certificate made here), alternated with the plain worker, with the
//! ratio of the two (wrk keeps its connections: the handshake is paid once per connection);
//! and beside it the same ratio for nginx's proxy terminating TLS, the cost of TLS itself on
//! this machine (wrk's own encryption included).

mod common;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{Worker, benching, env_or, free_port};
use serde_json::json;

const PAYLOAD: usize = 1024;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args([
            "-c",
            &format!("command -v {tool} || test -x /usr/sbin/{tool}"),
        ])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// nginx and wrk, from Debian's packages when they are missing.
fn ensure_tools() -> Result<(), String> {
    if have("nginx") && have("wrk") {
        return Ok(());
    }
    eprintln!("installing nginx-light and wrk from Debian (benchmark only)");
    let install = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let installed = install(&["install", "-y", "nginx-light", "wrk"])
        || (install(&["update"]) && install(&["install", "-y", "nginx-light", "wrk"]));
    if !installed {
        return Err(
            "cannot install nginx-light and wrk (apt-get as root); install them and run again"
                .into(),
        );
    }
    Ok(())
}

fn nginx_binary() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

/// One nginx: a sink on `sink` answering 200 to everything, and a proxy to it with a keep-alive
/// upstream on `proxy` (plain) and `proxy_tls` (HTTPS with `dir`'s tls.crt and tls.key: what
/// TLS termination costs a proxy of its own).
fn start_nginx(dir: &Path, sink: u16, (proxy, proxy_tls): (u16, u16)) -> Child {
    let conf = format!(
        r#"
worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    client_body_buffer_size 16k;
    keepalive_requests 1000000;
    upstream sink {{ server 127.0.0.1:{sink}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{sink};
        location / {{ return 200 "ok"; }}
    }}
    server {{
        listen 127.0.0.1:{proxy};
        listen 127.0.0.1:{proxy_tls} ssl;
        ssl_certificate {dir}/tls.crt;
        ssl_certificate_key {dir}/tls.key;
        location / {{
            proxy_pass http://sink;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#,
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("nginx.conf");
    Command::new(nginx_binary())
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx starts")
}

struct Run {
    requests_per_second: f64,
    p50_ms: f64,
    errors: u64,
}

/// `1.23ms`, `456.00us`, `1.01s` in milliseconds.
fn millis(text: &str) -> f64 {
    let (number, unit) =
        text.split_at(text.find(|c: char| c.is_alphabetic()).unwrap_or(text.len()));
    let value: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        "m" => value * 60_000.0,
        _ => f64::NAN,
    }
}

fn wrk(url: &str, connections: u32, seconds: u64, script: &Path) -> Run {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()
        .expect("wrk runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let value_after = |label: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.trim_start()[label.len()..].split_whitespace().next())
            .unwrap_or("")
            .to_owned()
    };
    let errors = text
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses:"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    Run {
        requests_per_second: value_after("Requests/sec:").parse().unwrap_or(0.0),
        p50_ms: millis(&value_after("50%")),
        errors,
    }
}

/// Transport `bench`, Up at once, delivering to the nginx host on port `sink`.
fn bench_transport(sink: u16) -> serde_json::Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
        "metadata": {"name": "bench", "namespace": "default"},
        "spec": {"host": {"url": format!("http://127.0.0.1:{sink}/ingest")}, "loadAtInit": true},
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    if !benching() {
        return;
    }
    if let Err(e) = ensure_tools() {
        eprintln!("proxy benchmark skipped: {e}");
        return;
    }
    let seconds = env_or("FERRY_BENCH_SECONDS", 5);
    let rounds = env_or("FERRY_BENCH_ROUNDS", 3);
    let dir = tempfile::tempdir().expect("temp dir");
    let (sink, proxy, proxy_tls) = (free_port(), free_port(), free_port());
    let ca = common::certs::TestCa::new("nginx bench CA");
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    std::fs::write(dir.path().join("tls.crt"), cert).expect("tls.crt");
    std::fs::write(dir.path().join("tls.key"), key).expect("tls.key");
    let mut nginx = start_nginx(dir.path(), sink, (proxy, proxy_tls));

    let worker = Worker::start(dir.path(), &[]).await;
    worker
        .put("transports", "bench", &bench_transport(sink))
        .await;
    let ingest = worker.url("/v1/transports/default/bench/transactions");
    // Up before measuring: the first transaction connects.
    for _ in 0..100 {
        let answer = worker
            .http
            .post(&ingest)
            .bearer_auth("bench")
            .body(vec![b'x'; PAYLOAD])
            .send()
            .await;
        if answer.is_ok_and(|a| a.status().as_u16() == 200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let script = dir.path().join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = string.rep(\"x\", {PAYLOAD})\n\
             wrk.headers[\"Content-Type\"] = \"application/octet-stream\"\n\
             wrk.headers[\"Authorization\"] = \"Bearer bench\"\n"
        ),
    )
    .expect("script");
    let proxied = format!("http://127.0.0.1:{proxy}/ingest");

    println!("Up-state delivery, 1 KiB POSTs, wrk -t1, {seconds} s per run, {rounds} rounds");
    println!(
        "{:<6} {:>5} {:>12} {:>9} {:>12} {:>9} {:>7} {:>9}",
        "round", "conns", "ferry/s", "p50 ms", "nginx/s", "p50 ms", "ratio", "p50 ×"
    );
    for connections in [64u32, 1] {
        let mut ratios = Vec::new();
        let mut latency = Vec::new();
        let mut ferry_rates = Vec::new();
        let mut nginx_rates = Vec::new();
        for round in 1..=rounds {
            let ferry = wrk(&ingest, connections, seconds, &script);
            let nginx_run = wrk(&proxied, connections, seconds, &script);
            let ratio = ferry.requests_per_second / nginx_run.requests_per_second;
            let p50 = ferry.p50_ms / nginx_run.p50_ms;
            println!(
                "{round:<6} {connections:>5} {:>12.0} {:>9.3} {:>12.0} {:>9.3} {ratio:>7.2} {p50:>9.2}{}",
                ferry.requests_per_second,
                ferry.p50_ms,
                nginx_run.requests_per_second,
                nginx_run.p50_ms,
                if ferry.errors + nginx_run.errors > 0 {
                    format!(
                        "  (non-2xx: ferry {}, nginx {})",
                        ferry.errors, nginx_run.errors
                    )
                } else {
                    String::new()
                }
            );
            ratios.push(ratio);
            latency.push(p50);
            ferry_rates.push(ferry.requests_per_second);
            nginx_rates.push(nginx_run.requests_per_second);
        }
        println!(
            "median, {connections} connection(s): ferry {:.0}/s, nginx {:.0}/s, ratio {:.2}, p50 latency {:.2}× nginx's",
            median(ferry_rates),
            median(nginx_rates),
            median(ratios),
            median(latency)
        );
    }
    // TLS on and off, alternated: the same transport on a worker serving HTTPS.
    let tls_worker = Worker::start_tls(&dir.path().join("tls"), &[]).await;
    tls_worker
        .put("transports", "bench", &bench_transport(sink))
        .await;
    let tls_ingest = tls_worker.url("/v1/transports/default/bench/transactions");
    let proxied_tls = format!("https://127.0.0.1:{proxy_tls}/ingest");
    println!(
        "TLS on and off (ferry plain vs ferry HTTPS, same host; nginx's proxy the same, for \
         what TLS termination costs a proxy), wrk -t1, {seconds} s per run"
    );
    println!(
        "{:<6} {:>5} {:>12} {:>9} {:>12} {:>9} {:>7} {:>12} {:>12} {:>7}",
        "round",
        "conns",
        "plain/s",
        "p50 ms",
        "tls/s",
        "p50 ms",
        "tls ×",
        "nginx/s",
        "nginx tls/s",
        "tls ×"
    );
    for connections in [64u32, 1] {
        let (mut ratios, mut nginx_ratios) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            let plain = wrk(&ingest, connections, seconds, &script);
            let tls = wrk(&tls_ingest, connections, seconds, &script);
            let nginx_plain = wrk(&proxied, connections, seconds, &script);
            let nginx_tls = wrk(&proxied_tls, connections, seconds, &script);
            let ratio = tls.requests_per_second / plain.requests_per_second;
            let nginx_ratio = nginx_tls.requests_per_second / nginx_plain.requests_per_second;
            let errors = plain.errors + tls.errors + nginx_plain.errors + nginx_tls.errors;
            println!(
                "{round:<6} {connections:>5} {:>12.0} {:>9.3} {:>12.0} {:>9.3} {ratio:>7.2} \
                 {:>12.0} {:>12.0} {nginx_ratio:>7.2}{}",
                plain.requests_per_second,
                plain.p50_ms,
                tls.requests_per_second,
                tls.p50_ms,
                nginx_plain.requests_per_second,
                nginx_tls.requests_per_second,
                if errors > 0 {
                    format!("  (non-2xx responses: {errors})")
                } else {
                    String::new()
                }
            );
            ratios.push(ratio);
            nginx_ratios.push(nginx_ratio);
        }
        println!(
            "median, {connections} connection(s): with TLS ferry delivers {:.2}× its plain rate, nginx's proxy {:.2}× its own",
            median(ratios),
            median(nginx_ratios)
        );
    }
    let report = worker.get("transports", "bench").await;
    println!(
        "ferry's ledger: received {}, delivered {}, stored {}, failed {}; worker RSS {} MiB",
        report["totals"]["received"],
        report["totals"]["delivered"],
        report["totals"]["stored"],
        report["totals"]["failed"],
        worker.rss_mib()
    );
    // SIGTERM: nginx's master stops its workers too (SIGKILL would leave them running).
    let _ = Command::new("kill")
        .args(["-TERM", &nginx.id().to_string()])
        .status();
    let _ = nginx.wait();
}
