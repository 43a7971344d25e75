//! Pool workers on JetStream as real `ferry worker` processes against a real three-node NATS
//! cluster: a transport moved from a hung worker to another loses nothing and the hung one,
//! woken, delivers nothing; without a quorum nothing is acknowledged (503 with Retry-After)
//! and the transport comes back by itself; reclaimPolicy Delete removes the stream, Retain
//! keeps it.

#![allow(clippy::unwrap_used)]

mod common;

use std::{path::Path, process::Command, time::Duration};

use common::{TestHost, WorkerProc, nats::NatsCluster, spec, wait_received};
use serde_json::{Value, json};

async fn pool_worker(dir: &Path, cluster: &NatsCluster, owner: &str) -> WorkerProc {
    WorkerProc::start_with(
        dir,
        &[
            "--jetstream-url",
            &cluster.url(),
            "--jetstream-owner",
            owner,
            "--jetstream-bucket",
            "FERRY_POOL_test",
        ],
    )
    .await
}

fn signal(worker: &WorkerProc, signal: &str) {
    let pid = worker.pid().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success()
    );
}

/// Send until the worker answers something other than 503 (a leader being elected).
async fn send_stored(worker: &WorkerProc, name: &str, n: usize) {
    let id = format!("t-{n:03}");
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let (status, body) = worker
            .send(name, &format!("{{\"n\":{n}}}"), Some(&id))
            .await;
        if status == 202 {
            return;
        }
        assert!(
            status == 503 && std::time::Instant::now() < deadline,
            "{id}: {status} {body}\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn apply_retrying(worker: &WorkerProc, name: &str, spec: Value) {
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let (status, body) = worker.put_transport(name, spec.clone()).await;
        if status == 200 || status == 201 {
            return;
        }
        assert!(
            status == 503 && std::time::Instant::now() < deadline,
            "PUT {name}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|n| format!("t-{n:03}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_moved_from_a_hung_worker_loses_nothing_and_the_woken_worker_delivers_nothing()
{
    let mut cluster = NatsCluster::start().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut host = TestHost::down_from_the_start();
    let a = pool_worker(dir_a.path(), &cluster, "worker-a").await;
    let b = pool_worker(dir_b.path(), &cluster, "worker-b").await;
    a.apply("orders", spec(&host)).await;
    for n in 0..10 {
        send_stored(&a, "orders", n).await;
    }
    // a hangs (its pod would stop being Ready) and a NATS node dies with it.
    signal(&a, "-STOP");
    cluster.kill_node(0);
    // The operator places the transport on b: b takes it over and goes on from the queue
    // (503 while NATS elects new leaders; the operator tries again).
    apply_retrying(&b, "orders", spec(&host)).await;
    let report = b
        .wait_for("orders", "the queue a left", |r| {
            r["queue"]["messages"] == 10
        })
        .await;
    assert_eq!(report["totals"]["stored"], 10, "{report}");
    for n in 10..15 {
        send_stored(&b, "orders", n).await;
    }
    host.up().await;
    wait_received(&host, "all 15", |r| r.len() >= 15).await;
    b.wait_state("orders", "Up").await;
    assert_eq!(host.received_ids(), ids(0..15), "in order, each once");

    // a wakes up: it finds the transport taken and delivers nothing more.
    signal(&a, "-CONT");
    let report = a
        .wait_for("orders", "a to see the move", |r| r["moved"] == true)
        .await;
    assert_eq!(report["moved"], true);
    let (status, body) = a.send("orders", "{}", Some("late")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["reason"].as_str().unwrap().contains("moved"), "{body}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        host.received_ids(),
        ids(0..15),
        "a delivered nothing after the move"
    );

    let report = b.report("orders").await;
    let totals = &report["totals"];
    assert_eq!(totals["stored"], 15, "{report}");
    assert_eq!(totals["forwarded"], 15, "{report}");
    assert_eq!(report["queue"]["messages"], 0, "{report}");

    // Placed on a again (a move back): a takes it over anew, with the totals as they are.
    apply_retrying(&a, "orders", spec(&host)).await;
    let report = a
        .wait_for("orders", "a serving it again", |r| r.get("moved").is_none())
        .await;
    assert_eq!(report["totals"]["forwarded"], 15, "{report}");
    send_stored_or_delivered(&a, "orders", 15).await;
    wait_received(&host, "the 16th, from a", |r| r.len() >= 16).await;
    assert_eq!(host.received_ids(), ids(0..16));
}

async fn send_stored_or_delivered(worker: &WorkerProc, name: &str, n: usize) {
    let (status, body) = worker
        .send(name, &format!("{{\"n\":{n}}}"), Some(&format!("t-{n:03}")))
        .await;
    assert!(status == 200 || status == 202, "{status} {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_a_transaction_is_refused_never_acknowledged_and_the_transport_comes_back()
{
    let mut cluster = NatsCluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut host = TestHost::down_from_the_start();
    let worker = pool_worker(dir.path(), &cluster, "worker-a").await;
    worker.apply("orders", spec(&host)).await;
    for n in 0..3 {
        send_stored(&worker, "orders", n).await;
    }
    cluster.kill_node(1);
    cluster.kill_node(2);
    let answer = worker
        .http()
        .post(format!("{}/transactions", worker.transport_url("orders")))
        .header("Ferry-Token", &worker.ingest)
        .header("Ferry-Transaction-Id", "t-003")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 503);
    assert_eq!(answer.headers()["retry-after"], "1");
    let body: Value = answer.json().await.unwrap();
    assert!(
        body["reason"].as_str().unwrap().contains("unavailable"),
        "{body}"
    );
    let report = worker
        .wait_for("orders", "QueueUnavailable", |r| {
            r["queueUnavailable"].is_string()
        })
        .await;
    assert!(report["queueUnavailable"].is_string(), "{report}");

    for i in [1, 2] {
        cluster.start_node(i);
    }
    cluster.wait_ready().await;
    worker
        .wait_for("orders", "the queue back", |r| {
            r.get("queueUnavailable").is_none()
        })
        .await;
    for n in 4..6 {
        send_stored(&worker, "orders", n).await;
    }
    host.up().await;
    worker.wait_state("orders", "Up").await;
    // The refused one may have reached a quorum after its answer was lost: then it is
    // delivered in its place (at least once), never acknowledged and lost.
    let mut want = ids(0..3);
    if host.received_ids().contains(&"t-003".to_owned()) {
        want.push("t-003".into());
    }
    want.extend(ids(4..6));
    assert_eq!(
        host.received_ids(),
        want,
        "every acknowledged one, in order"
    );
    let report = worker.report("orders").await;
    let totals = &report["totals"];
    assert_eq!(
        totals["received"],
        totals["delivered"].as_u64().unwrap()
            + totals["failed"].as_u64().unwrap()
            + totals["stored"].as_u64().unwrap(),
        "the ledger adds up: {report}"
    );
    assert_eq!(totals["failed"], 0, "a refusal is no outcome: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaim_policy_delete_removes_the_stream_and_retain_keeps_it() {
    let cluster = NatsCluster::start_nodes(1).await;
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::down_from_the_start();
    let worker = WorkerProc::start_with(
        dir.path(),
        &[
            "--jetstream-url",
            &cluster.url(),
            "--jetstream-replicas",
            "1",
            "--jetstream-owner",
            "worker-a",
        ],
    )
    .await;
    for (name, policy) in [("kept", "Retain"), ("gone", "Delete")] {
        let mut spec = spec(&host);
        spec["storage"] = json!({"reclaimPolicy": policy});
        worker.apply(name, spec).await;
        for n in 0..2 {
            send_stored(&worker, name, n).await;
        }
        let deleted = worker
            .http()
            .delete(format!(
                "{}?purge=reclaimPolicy",
                worker.transport_url(name)
            ))
            .header("Ferry-Token", &worker.admin)
            .send()
            .await
            .unwrap();
        assert!(
            deleted.status().is_success(),
            "{}",
            deleted.text().await.unwrap()
        );
        // Hosted again: Retain finds its queue, Delete starts empty.
        let mut spec = common::spec(&host);
        spec["storage"] = json!({"reclaimPolicy": policy});
        worker.apply(name, spec).await;
        let report = worker.report(name).await;
        let queued = if policy == "Retain" { 2 } else { 0 };
        assert_eq!(report["queue"]["messages"], queued, "{name}: {report}");
        assert_eq!(report["totals"]["stored"], queued, "{name}: {report}");
    }
}
