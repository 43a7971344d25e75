//! `restart` beside a PUT (what `ferry.dev/restart` becomes on the worker): a transport's
//! runtime set up again as after a worker restart, queue and totals kept (docs/transport.md,
//! T10); a connection's new startup, watermarks kept (docs/connection.md, Q2). Once per value,
//! through a real worker's HTTP API.

mod common;

use common::{TestHost, TestSource, WorkerProc, spec};
use serde_json::{Value, json};

/// PUT the transport's spec with `restart` beside it.
async fn put_with_restart(
    worker: &WorkerProc,
    name: &str,
    spec: Value,
    value: Value,
) -> (u16, Value) {
    worker
        .put_transport_beside(name, spec, json!({"restart": value}))
        .await
}

fn restarts_logged(worker: &WorkerProc) -> usize {
    worker.log().matches("restarting its runtime").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_restarts_once_per_value_and_keeps_its_queue() {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start().await;
    let worker = WorkerProc::start(dir.path()).await;
    let mut eager = spec(&host);
    eager["host"]["healthCheckPath"] = json!("/healthz");

    // The PUT that hosts it has just started it: the value is noted, nothing restarts.
    let (status, report) = put_with_restart(&worker, "erp", eager.clone(), json!("r0")).await;
    assert_eq!(
        (status, &report["restarted"]),
        (201, &json!("r0")),
        "{report}"
    );
    assert_eq!(restarts_logged(&worker), 0);

    // Up, then Store and Forward with two queued.
    assert_eq!(worker.send("erp", "t1", Some("t1")).await.0, 200);
    host.answer(503);
    for id in ["t2", "t3"] {
        assert_eq!(worker.send("erp", id, Some(id)).await.0, 202);
    }
    let before = worker.report("erp").await;
    assert_eq!(before["state"], "Store and Forward");

    // T10: restarted; the queue, the totals and the state (a queue to forward) stay.
    let (status, report) = put_with_restart(&worker, "erp", eager.clone(), json!("r1")).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["restarted"], "r1");
    assert_eq!(report["state"], "Store and Forward");
    assert_eq!(report["queue"]["messages"], 2);
    assert_eq!(report["totals"], before["totals"]);
    assert_eq!(restarts_logged(&worker), 1);
    // The same value again restarts nothing.
    let (status, report) = put_with_restart(&worker, "erp", eager.clone(), json!("r1")).await;
    assert_eq!((status, &report["restarted"]), (200, &json!("r1")));
    assert_eq!(restarts_logged(&worker), 1, "a value runs once");

    // The queue is forwarded in order once the host answers.
    host.answer(200);
    worker.wait_state("erp", "Up").await;
    assert_eq!(host.received_ids(), ["t1", "t2", "t3"]);

    // Up: set up and connected again (T8), its health check asked.
    let checks = host.health_checks();
    let (status, report) = put_with_restart(&worker, "erp", eager.clone(), json!("r2")).await;
    assert_eq!(status, 200, "{report}");
    worker.wait_state("erp", "Up").await;
    assert!(host.health_checks() > checks, "connected again");
    assert_eq!(restarts_logged(&worker), 2);

    // A suspension stays through a restart.
    let mut suspended = eager.clone();
    suspended["suspended"] = json!(true);
    let (_, report) = put_with_restart(&worker, "erp", suspended.clone(), json!("r3")).await;
    assert_eq!(
        (&report["state"], &report["restarted"]),
        (&json!("Suspended"), &json!("r3"))
    );

    // Values a worker does not take are refused, naming the field; nothing changes.
    for bad in [json!(""), json!(5), json!("x".repeat(254))] {
        let (status, body) = put_with_restart(&worker, "erp", suspended.clone(), bad).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("restart"),
            "{body}"
        );
    }
    let report = worker.report("erp").await;
    assert_eq!(report["restarted"], "r3");
    assert_eq!(
        report["totals"],
        json!({"received": 3, "delivered": 1, "stored": 2, "forwarded": 2, "failed": 0, "expired": 0, "dropped": 0})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_restart_is_a_new_startup_from_its_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start().await;
    let source = TestSource::start().await;
    for (id, at) in [("a", 1), ("b", 2)] {
        source.put("orders", id, at);
    }
    let worker = WorkerProc::start(dir.path()).await;
    // Iterations an hour apart: only a restart starts the next one soon.
    let spec = json!({"frequency": "1h", "syncSets": [{
        "name": "orders",
        "source": {"http": {"url": source.url("orders"), "itemsPointer": "/items"}},
        "target": {"http": {"url": host.url()}},
    }]});
    let (status, report) = worker.put_connection("crm", spec.clone(), None).await;
    assert_eq!(status, 201, "{report}");
    let running = worker
        .wait_connection("crm", "Running", |r| r["status"] == "Running")
        .await;
    assert_eq!(running["syncSets"][0]["watermark"], "2");
    source.put("orders", "c", 3);

    let restart = |value: &str| {
        let mut body = json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "Connection",
            "metadata": {"name": "crm", "namespace": "default", "generation": 1},
            "spec": spec.clone(),
        });
        body["restart"] = json!(value);
        body
    };
    let (status, report) = worker
        .put_json(&worker.connection_url("crm"), &restart("r1"))
        .await;
    assert_eq!(
        (status, &report["restarted"]),
        (200, &json!("r1")),
        "{report}"
    );
    // A new startup, counted from the iteration under way when it restarted. (Its status may
    // already be Running again: a local source's next iteration can complete before the PUT
    // is answered, so the start marker is the evidence, not a Restarting seen in passing.)
    assert!(
        report["startedIteration"].as_u64() > running["startedIteration"].as_u64()
            && report["startedIteration"].as_u64() >= running["iteration"].as_u64(),
        "{running} {report}"
    );
    // Restarting until its sync-set completes again: from its watermark, only the change.
    let report = worker
        .wait_connection("crm", "Running after the restart", |r| {
            r["status"] == "Running" && r["iteration"].as_u64() > running["iteration"].as_u64()
        })
        .await;
    assert_eq!(report["syncSets"][0]["watermark"], "3");
    assert_eq!(host.received().len(), 3, "{:?}", host.received_ids());
    assert!(
        source.fetches().iter().skip(1).all(|f| f.since.is_some()),
        "read from its watermark, never from the start again"
    );
    // The same value again: no new startup.
    let (_, again) = worker
        .put_json(&worker.connection_url("crm"), &restart("r1"))
        .await;
    assert_eq!(again["startedIteration"], report["startedIteration"]);
    assert_eq!(restarts_logged(&worker), 1);
}
