//! The worker under outage, load and hostile clients (real processes over real HTTP): the
//! memory budget, body limits, server timeouts, shutdown, and totals that add up.

// Helpers outside #[test] functions unwrap too: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{Router, http::StatusCode, routing::post};
use common::{TestHost, WorkerProc, spec};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The request line and headers of an ingest of `length` bytes, without the body.
fn ingest_head(worker: &WorkerProc, name: &str, length: usize) -> String {
    format!(
        "POST /v1/transports/default/{name}/transactions HTTP/1.1\r\nHost: {}\r\n\
         Authorization: Bearer {}\r\nContent-Length: {length}\r\n\r\n",
        worker.addr(),
        worker.ingest
    )
}

/// Read what the worker answers on a raw connection, up to the end of the headers.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(common::WAIT, stream.read(&mut buf))
            .await
            .expect("the worker answers")
            .expect("read");
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// (received, delivered + forwarded + failed + expired + dropped + queued) of a report; None
/// when a count is missing.
fn ledger(report: &Value) -> Option<(u64, u64)> {
    let t = &report["totals"];
    let n = |v: &Value| v.as_u64();
    let outcomes = n(&t["delivered"])?
        + n(&t["forwarded"])?
        + n(&t["failed"])?
        + n(&t["expired"])?
        + n(&t["dropped"])?
        + n(&report["queue"]["messages"])?;
    Some((n(&t["received"])?, outcomes))
}

/// Every transaction the worker received is in exactly one outcome (or still queued).
fn assert_ledger(report: &Value) {
    let (received, outcomes) = ledger(report).unwrap_or_else(|| panic!("not counts: {report}"));
    assert_eq!(received, outcomes, "the totals do not add up: {report}");
}

/// A worker with a memory budget of 1 MiB hosting transport `big`, which takes transactions
/// of up to 2 MiB, delivering to a host that answers 200.
async fn big_transport_worker(dir: &std::path::Path) -> (TestHost, WorkerProc) {
    let host = TestHost::start().await;
    let worker = WorkerProc::start_with(dir, &["--memory-budget", "1Mi"]).await;
    let mut body = spec(&host);
    body["maxTransactionBytes"] = json!("2Mi");
    worker.apply("big", body).await;
    (host, worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_budget_refuses_with_retry_after_and_nothing_is_received() {
    let dir = tempfile::tempdir().unwrap();
    let (host, worker) = big_transport_worker(dir.path()).await;

    // A producer holds 700 KB of the budget with a body it has not finished sending.
    let mut holder = TcpStream::connect(worker.addr()).await.unwrap();
    let head = ingest_head(&worker, "big", 700_000);
    holder.write_all(head.as_bytes()).await.unwrap();
    holder.write_all(&[b'x'; 1000]).await.unwrap();
    // Wait until the worker has read the head and reserved the bytes.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A second one of 700 KB does not fit: 503 with Retry-After, before its body is read.
    let answer = worker
        .http()
        .post(format!("{}/transactions", worker.transport_url("big")))
        .bearer_auth(&worker.ingest)
        .body(vec![b'y'; 700_000])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        answer
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let message = answer.json::<Value>().await.unwrap()["message"].to_string();
    assert!(message.contains("--memory-budget"), "{message}");
    // One larger than the whole budget can never fit: 413, naming the flag.
    let (status, body) = worker.send("big", &"z".repeat(1_500_000), None).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["message"].to_string().contains("--memory-budget"),
        "{body}"
    );

    // The holder hangs up: its bytes return to the budget, and it was never received.
    drop(holder);
    let report = worker.report("big").await;
    assert_eq!(report["totals"]["received"], 0, "{report}");
    let mut sent = false;
    for _ in 0..100 {
        let (status, _) = worker.send("big", &"y".repeat(700_000), None).await;
        if status == 200 {
            sent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sent, "the budget never came back");
    let report = worker.report("big").await;
    assert_eq!(report["totals"]["received"], 1, "{report}");
    assert_ledger(&report);
    assert_eq!(host.received().len(), 1);
    let metrics = worker.metrics().await;
    assert!(
        metrics.contains("ferry_worker_memory_budget_bytes 1048576"),
        "{metrics}"
    );
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ferry_worker_ingest_refused_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no refusal counter: {metrics}"));
    assert!(refused >= 2, "{metrics}");
}

/// A refusal the worker sends before reading the body (413 from Content-Length, 503 over the
/// memory budget) reaches a producer that keeps writing its large body at full speed: it
/// finishes writing and reads the answer, many times in a row, instead of a broken pipe or a
/// reset (the worker drains and throws the body away before it closes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_before_the_body_reaches_a_client_still_sending() {
    let dir = tempfile::tempdir().unwrap();
    let (_host, worker) = big_transport_worker(dir.path()).await;
    let chunk = vec![b'x'; 256 << 10];
    // Over maxTransactionBytes, over the whole budget (413, from the Content-Length), and one
    // that fits (read whole and delivered, 200).
    for (length, expected) in [(8 << 20, "413"), (1_500_000, "413"), (900_000, "200")] {
        for round in 0..15 {
            let mut producer = TcpStream::connect(worker.addr()).await.unwrap();
            producer
                .write_all(ingest_head(&worker, "big", length).as_bytes())
                .await
                .unwrap();
            let mut left = length;
            while left > 0 {
                let n = left.min(chunk.len());
                producer
                    .write_all(&chunk[..n])
                    .await
                    .unwrap_or_else(|e| panic!("round {round} of {length} bytes: {e}"));
                left -= n;
            }
            let head = read_head(&mut producer).await;
            let status = head.split(' ').nth(1).unwrap_or("");
            assert_eq!(status, expected, "round {round} of {length} bytes: {head}");
        }
    }
    let report = worker.report("big").await;
    assert_eq!(report["totals"]["received"], 15, "{report}");
    assert_ledger(&report);
}

/// Concurrent PUTs of one new transport (an operator retrying, two replicas during a
/// handover) start one runtime on its queue: exactly one is answered 201 Created, the others
/// 200, round after round; and the transport works once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_of_a_new_transport_start_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start().await;
    let worker = WorkerProc::start(dir.path()).await;
    for round in 0..5 {
        let name = format!("race-{round}");
        let puts = (0..8).map(|_| worker.put_transport(&name, spec(&host)));
        let mut statuses: Vec<u16> = futures::future::join_all(puts)
            .await
            .into_iter()
            .map(|(status, _)| status)
            .collect();
        statuses.sort_unstable();
        assert_eq!(
            statuses,
            [200, 200, 200, 200, 200, 200, 200, 201],
            "round {round}"
        );
        let (status, body) = worker.send(&name, r#"{"n":1}"#, None).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(host.received().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_admin_requests_are_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start().await;
    let worker = WorkerProc::start(dir.path()).await;

    // A 60 MB PUT is refused from its Content-Length, before the body is read.
    let mut stream = TcpStream::connect(worker.addr()).await.unwrap();
    let head = format!(
        "PUT /v1/transports/default/huge HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 60000000\r\n\r\n[",
        worker.addr(),
        worker.admin
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = read_head(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Durations past Kubernetes' limit name their field; the worker keeps running.
    for ttl in ["99999999999999999999h", "9999999h9999999h"] {
        let mut body = spec(&host);
        body["storeAndForward"] = json!({"timeToLive": ttl});
        let (status, answer) = worker.put_transport("ttl", body).await;
        assert_eq!(status, 400, "{answer}");
        assert!(
            answer["message"]
                .to_string()
                .contains("spec.storeAndForward.timeToLive"),
            "{answer}"
        );
    }
    // A content type longer than the queue can keep is refused, not cut.
    worker.apply("ct", spec(&host)).await;
    for (name, refusal) in [
        ("none", StatusCode::NOT_FOUND),
        ("ct", StatusCode::BAD_REQUEST),
    ] {
        let answer = worker
            .http()
            .post(format!("{}/transactions", worker.transport_url(name)))
            .bearer_auth(&worker.ingest)
            .header("content-type", "x".repeat(300))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), refusal, "{name}");
    }
    worker.report("ct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_never_finishes_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let worker = WorkerProc::start_with(dir.path(), &["--header-read-timeout", "1s"]).await;
    let mut stream = TcpStream::connect(worker.addr()).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .unwrap();
    // The worker closes the connection (with or without a 408) instead of waiting forever.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(common::WAIT, stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection stayed open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_with_idle_and_half_sent_connections_and_saves_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = TestHost::start().await;
    let mut worker = WorkerProc::start(dir.path()).await;
    worker.apply("t", spec(&host)).await;
    host.down().await;
    let (status, _) = worker.send("t", "queued", None).await;
    assert_eq!(status, 202);

    let mut open = Vec::new();
    for i in 0..60 {
        let mut stream = TcpStream::connect(worker.addr()).await.unwrap();
        match i % 3 {
            0 => {} // idle
            1 => stream
                .write_all(b"POST /v1/transports/default/t/trans")
                .await
                .unwrap(),
            _ => {
                // The head is complete, the body never comes.
                let head = ingest_head(&worker, "t", 10_000);
                stream.write_all(head.as_bytes()).await.unwrap();
                stream.write_all(b"half").await.unwrap();
            }
        }
        open.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _took) = worker.terminate();
    assert!(status.success(), "exit status {status}: {}", worker.log());
    assert!(worker.log().contains("records saved"), "{}", worker.log());
    drop(open);

    // Nothing half-sent was received; the queued transaction is still there.
    worker.start_again().await;
    let report = worker.wait_state("t", "Store and Forward").await;
    assert_eq!(report["totals"]["received"], 1, "{report}");
    assert_eq!(report["queue"]["messages"], 1, "{report}");
    assert_ledger(&report);
}

/// A host that answers after a random delay: mostly 200, sometimes 503 (the transport goes
/// to Store and Forward) or 400 (rejected).
async fn unsteady_host() -> String {
    let counter = Arc::new(AtomicU64::new(0));
    let app = Router::new().route(
        "/ingest",
        post(move || {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            async move {
                tokio::time::sleep(Duration::from_millis(n % 7)).await;
                match n % 40 {
                    0 => StatusCode::SERVICE_UNAVAILABLE,
                    1 => StatusCode::BAD_REQUEST,
                    _ => StatusCode::OK,
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ingest", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// Producers that give up after a few milliseconds, whatever the worker was doing.
async fn impatient_load(worker: &WorkerProc, name: &str, producers: u64, each: u64) {
    let mut tasks = Vec::new();
    for p in 0..producers {
        let url = format!("{}/transactions", worker.transport_url(name));
        let token = worker.ingest.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0..each {
                let request = client
                    .post(&url)
                    .bearer_auth(&token)
                    .timeout(Duration::from_millis(1 + (p * 7 + i) % 9))
                    .body(format!("{{\"p\":{p},\"i\":{i}}}"));
                let _ = request.send().await;
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totals_add_up_after_producers_hang_up_and_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let url = unsteady_host().await;
    let mut worker = WorkerProc::start(dir.path()).await;
    worker
        .apply("ledger", json!({"host": {"url": url, "timeout": "2s"}}))
        .await;

    impatient_load(&worker, "ledger", 8, 60).await;
    // Every transaction received reaches its outcome, also those whose producer left.
    let report = worker
        .wait_for("ledger", "an empty queue and nothing in flight", |r| {
            r["queue"]["messages"] == 0 && r["state"] == "Up"
        })
        .await;
    assert!(
        report["totals"]["received"].as_u64().unwrap() > 0,
        "{report}"
    );
    let settled = worker
        .wait_for("ledger", "the totals to add up", |r| {
            ledger(r).is_some_and(|(received, outcomes)| received == outcomes)
        })
        .await;
    assert_ledger(&settled);

    // kill -9 in the middle of a load, then the totals as the restarted worker has them.
    let load = {
        let url = format!("{}/transactions", worker.transport_url("ledger"));
        let token = worker.ingest.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0..2000 {
                let _ = client
                    .post(&url)
                    .bearer_auth(&token)
                    .timeout(Duration::from_secs(2))
                    .body(format!("{{\"k\":{i}}}"))
                    .send()
                    .await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    worker.kill9();
    load.abort();
    worker.start_again().await;
    let report = worker.report("ledger").await;
    assert_ledger(&report);
}

/// `ferry worker` on the worker's data directory, expected to refuse to start: its exit
/// status and what it printed.
fn start_expecting_refusal(worker: &WorkerProc) -> (std::process::ExitStatus, String) {
    let output = worker.command().output().expect("ferry runs");
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    (output.status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_or_emptied_store_stops_the_worker_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = TestHost::start().await;
    let mut worker = WorkerProc::start(dir.path()).await;
    worker.apply("t", spec(&host)).await;
    host.down().await;
    for i in 0..40 {
        let (status, _) = worker.send("t", &format!("{i:0>20000}"), None).await;
        assert_eq!(status, 202);
    }
    worker.terminate();
    let file = worker.dir.join("data").join("ferry.redb");
    let full = std::fs::read(&file).unwrap();

    std::fs::write(&file, &full[..full.len() / 2]).unwrap();
    let (status, text) = start_expecting_refusal(&worker);
    assert!(
        !status.success() && status.code().is_some(),
        "{status}: {text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    assert!(
        text.contains("is damaged") && text.contains("ferry.redb"),
        "{text}"
    );

    std::fs::write(&file, b"").unwrap();
    let (status, text) = start_expecting_refusal(&worker);
    assert!(!status.success(), "{text}");
    assert!(text.contains("the file is empty"), "{text}");

    std::fs::write(&file, &full).unwrap();
    worker.start_again().await;
    let report = worker.wait_state("t", "Store and Forward").await;
    assert_eq!(report["queue"]["messages"], 40, "{report}");
}

/// `--forbidden-destinations` (the operator passes its list to every worker): a host URL at a
/// forbidden address is refused naming the field, the address and the flag; a name that
/// resolves only to forbidden addresses is checked at connect time, so the transaction waits
/// in the queue (the host unreachable, H2) and never reaches that address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_destinations_are_refused_and_checked_at_connect() {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start().await;
    let worker = WorkerProc::start_with(
        dir.path(),
        &["--forbidden-destinations", "127.0.0.0/8,::1/128"],
    )
    .await;
    let (status, body) = worker.put_transport("literal", spec(&host)).await;
    assert_eq!(status, 400, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("spec.host.url")
            && message.contains("127.0.0.1, in 127.0.0.0/8")
            && message.contains("--forbidden-destinations"),
        "{message}"
    );
    // The same host by name: accepted (names are checked when they resolve), never reached.
    let by_name = host.url().replace("127.0.0.1", "localhost");
    worker
        .apply(
            "named",
            json!({"host": {"url": by_name, "timeout": "2s"},
                   "storeAndForward": {"enabled": true}}),
        )
        .await;
    let (status, body) = worker.send("named", "1", None).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (202, Some("stored")),
        "{body}"
    );
    assert!(
        host.received().is_empty(),
        "the forbidden address was reached"
    );
    let log = std::fs::read_to_string(dir.path().join("worker.log")).unwrap_or_default();
    assert!(log.contains("forbidden-destinations"), "{log}");
}
