//! Every transport rule (docs/transport.md, T1–T7), driven through a real worker's HTTP API against a
//! host the test controls.

mod common;

use std::time::Duration;

use common::{TestHost, WorkerProc, spec, wait_received};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_down_store_and_forward_suspend_resume() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = TestHost::start().await;
    let worker = WorkerProc::start(dir.path()).await;

    // T1: a new transport is Down until its first transaction.
    let report = worker.apply("erp", spec(&host)).await;
    assert_eq!(report["state"], "Down");
    assert!(
        report["endpoint"]
            .as_str()
            .unwrap()
            .ends_with("/v1/transports/default/erp/transactions")
    );

    // T2: Down + transaction -> delivered, Up. The payload and its type pass as they are.
    let (status, body) = worker.send("erp", "t1", Some("t1")).await;
    assert_eq!(
        (status, &body["outcome"], &body["state"]),
        (200, &json!("delivered"), &json!("Up"))
    );
    let first = &host.received()[0];
    assert_eq!(
        (
            first.id.as_str(),
            first.transport.as_str(),
            first.body.as_slice()
        ),
        ("t1", "default/erp", b"t1".as_slice())
    );
    assert_eq!(first.content_type.as_deref(), Some("text/plain"));

    // T3: Up + host answering 5xx -> stored, Store and Forward.
    host.answer(503);
    let (status, body) = worker.send("erp", "t2", Some("t2")).await;
    assert_eq!(
        (status, &body["outcome"], &body["state"]),
        (202, &json!("stored"), &json!("Store and Forward"))
    );
    // T4: new transactions go behind the queue.
    let (status, _) = worker.send("erp", "t3", Some("t3")).await;
    assert_eq!(status, 202);
    // ... forwarded in order once the host answers again, then Up.
    host.answer(200);
    let report = worker.wait_state("erp", "Up").await;
    assert_eq!(host.received_ids(), ["t1", "t2", "t3"]);
    assert_eq!(report["queue"]["messages"], 0);
    assert_eq!(report["totals"]["forwarded"], 2);

    // T5: suspending an Up transport -> Suspended.
    let mut suspended = spec(&host);
    suspended["suspended"] = json!(true);
    assert_eq!(
        worker.apply("erp", suspended.clone()).await["state"],
        "Suspended"
    );
    // T6: a suspended transport stores (S&F enabled) and never delivers, even to a
    // reachable host.
    let (status, body) = worker.send("erp", "t4", Some("t4")).await;
    assert_eq!((status, &body["state"]), (202, &json!("S&F Suspended")));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        host.received_ids().len(),
        3,
        "a suspended transport delivered"
    );
    assert_eq!(worker.report("erp").await["state"], "S&F Suspended");

    // T7: resume S&F Suspended -> forward the queue -> Up.
    worker.apply("erp", spec(&host)).await;
    worker.wait_state("erp", "Up").await;
    assert_eq!(host.received_ids(), ["t1", "t2", "t3", "t4"]);

    // A 4xx other than 408/429 rejects that one transaction: failed, not stored.
    host.answer(422);
    let (status, body) = worker.send("erp", "t5", Some("t5")).await;
    assert_eq!((status, &body["outcome"]), (503, &json!("failed")));
    assert!(body["reason"].as_str().unwrap().contains("422"), "{body}");
    assert_eq!(body["state"], "Up");
    host.answer(200);

    // Refused connections are "unreachable" too; suspending S&F -> S&F Suspended, which stays
    // suspended when the host comes back.
    host.down().await;
    let (status, body) = worker.send("erp", "t6", Some("t6")).await;
    assert_eq!((status, &body["state"]), (202, &json!("Store and Forward")));
    assert_eq!(
        worker.apply("erp", suspended).await["state"],
        "S&F Suspended"
    );
    host.up().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(worker.report("erp").await["state"], "S&F Suspended");
    assert!(!host.received_ids().contains(&"t6".to_string()));
    worker.apply("erp", spec(&host)).await;
    worker.wait_state("erp", "Up").await;
    wait_received(&host, "t6", |r| r.iter().any(|t| t.id == "t6")).await;

    let totals = worker.report("erp").await["totals"].clone();
    assert_eq!(
        totals,
        json!({"received": 6, "delivered": 1, "stored": 4, "forwarded": 4, "failed": 1, "expired": 0, "dropped": 0})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_store_and_forward_transactions_fail() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = TestHost::start().await;
    let worker = WorkerProc::start(dir.path()).await;
    let mut no_sf = spec(&host);
    no_sf["storeAndForward"] = json!({"enabled": false});
    worker.apply("plain", no_sf.clone()).await;

    // T2: host unreachable, S&F disabled -> failed (counted), stays Down.
    host.down().await;
    let (status, body) = worker.send("plain", "x", None).await;
    assert_eq!(
        (status, &body["outcome"], &body["state"]),
        (503, &json!("failed"), &json!("Down"))
    );
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("Store and Forward is disabled"),
        "{body}"
    );

    // T3: Up + unreachable, S&F disabled -> failed, Down.
    host.up().await;
    assert_eq!(worker.send("plain", "y", None).await.1["state"], "Up");
    host.answer(500);
    let (status, body) = worker.send("plain", "z", None).await;
    assert_eq!((status, &body["state"]), (503, &json!("Down")));
    host.answer(200);

    // T6: suspended without S&F: every transaction fails.
    no_sf["suspended"] = json!(true);
    worker.apply("plain", no_sf).await;
    let (status, body) = worker.send("plain", "w", None).await;
    assert_eq!((status, &body["state"]), (503, &json!("Suspended")));
    assert!(
        body["reason"].as_str().unwrap().contains("suspended"),
        "{body}"
    );
    let totals = &worker.report("plain").await["totals"];
    assert_eq!(
        (totals["received"].as_u64(), totals["failed"].as_u64()),
        (Some(4), Some(3))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_at_init_connects_at_start_and_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = TestHost::down_from_the_start();
    let worker = WorkerProc::start(dir.path()).await;
    let mut eager = spec(&host);
    eager["loadAtInit"] = json!(true);
    eager["host"]["healthCheckPath"] = json!("/healthz");

    // T1: connects at start-up; while the host is unreachable it stays Down and retries.
    assert_eq!(worker.apply("eager", eager.clone()).await["state"], "Down");
    host.up().await;
    worker.wait_state("eager", "Up").await;
    assert!(host.health_checks() > 0, "connecting used the health check");
    assert!(host.received().is_empty(), "Up without any transaction");

    // T7: resume with loadAtInit and a reachable host -> Up.
    eager["suspended"] = json!(true);
    assert_eq!(
        worker.apply("eager", eager.clone()).await["state"],
        "Suspended"
    );
    eager["suspended"] = json!(false);
    worker.apply("eager", eager).await;
    worker.wait_state("eager", "Up").await;

    // Without loadAtInit, resume -> Down.
    let mut lazy = spec(&host);
    lazy["suspended"] = json!(true);
    worker.apply("lazy", lazy.clone()).await;
    lazy["suspended"] = json!(false);
    assert_eq!(worker.apply("lazy", lazy).await["state"], "Down");
}

/// With several deliveries in flight (--forward-window) the whole queue still arrives, and
/// each transaction is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_window_drains_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = TestHost::down_from_the_start();
    let worker = WorkerProc::start_with(dir.path(), &["--forward-window", "4"]).await;
    worker.apply("wide", spec(&host)).await;
    let sent: Vec<String> = (0..50).map(|i| format!("w{i:02}")).collect();
    for id in &sent {
        assert_eq!(worker.send("wide", id, Some(id)).await.0, 202);
    }
    host.up().await;
    let report = worker.wait_state("wide", "Up").await;
    assert_eq!(report["totals"]["forwarded"], 50);
    let mut received = host.received_ids();
    received.sort();
    received.dedup();
    assert_eq!(received, sent);
}
