//! Connections in real processes: a source server and a target host the test controls.

mod common;

use std::time::Duration;

use common::{TestHost, TestSource, WorkerProc, wait_received};
use serde_json::{Value, json};

fn sync_set(source: &TestSource, path: &str, target: Value) -> Value {
    json!({"name": path, "source": {"http": {"url": source.url(path), "itemsPointer": "/items"}}, "target": target})
}

fn http_target(host: &TestHost) -> Value {
    json!({"http": {"url": host.url()}})
}

fn synced(report: &Value) -> u64 {
    report["syncSets"][0]["recordsSynced"].as_u64().unwrap_or(0)
}

/// Records reach the target once per change; after kill -9 the worker resumes from the
/// stored watermark instead of syncing everything again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_per_change_and_no_resync_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start().await;
    let source = TestSource::start().await;
    for (id, at) in [("a", 1), ("b", 2), ("c", 3)] {
        source.put("orders", id, at);
    }
    let mut worker = WorkerProc::start(dir.path()).await;
    let spec =
        json!({"frequency": "1s", "syncSets": [sync_set(&source, "orders", http_target(&host))]});
    let (status, report) = worker.put_connection("crm", spec, None).await;
    assert_eq!(status, 201, "{report}");

    let report = worker
        .wait_connection("crm", "3 records and Running", |r| {
            synced(r) == 3 && r["status"] == "Running"
        })
        .await;
    assert_eq!(report["syncSets"][0]["watermark"], "3");
    assert_eq!(report["syncSets"][0]["lastResult"], "Success");
    // Each once; their order among themselves is free: they were sent in one window (W3).
    let mut ids = host.received_ids();
    ids.sort();
    assert_eq!(
        ids,
        [
            "default/crm/orders/a@1",
            "default/crm/orders/b@2",
            "default/crm/orders/c@3"
        ]
    );
    assert_eq!(
        host.received()[0].content_type.as_deref(),
        Some("application/json")
    );

    // A change and a new record: exactly those two are sent.
    source.put("orders", "b", 4);
    source.put("orders", "d", 5);
    worker
        .wait_connection("crm", "5 records", |r| synced(r) == 5)
        .await;
    let iteration = worker.connection("crm").await["iteration"]
        .as_u64()
        .unwrap();
    worker
        .wait_connection("crm", "two more iterations", |r| {
            r["iteration"].as_u64() >= Some(iteration + 2)
        })
        .await;
    assert_eq!(host.received().len(), 5, "{:?}", host.received_ids());

    // kill -9 and restart: the connection is hosted again from the store and goes on from its
    // watermark: nothing is sent again.
    worker.restart().await;
    let report = worker.connection("crm").await;
    assert_eq!(report["syncSets"][0]["watermark"], "5");
    worker
        .wait_connection("crm", "an iteration after the restart", |r| {
            r["iteration"].as_u64() > report["iteration"].as_u64() && r["status"] == "Running"
        })
        .await;
    assert_eq!(
        host.received().len(),
        5,
        "resynced after restart: {:?}",
        host.received_ids()
    );
    let since: Vec<Option<String>> = source.fetches().into_iter().map(|f| f.since).collect();
    assert_eq!(
        since.last().cloned().flatten().as_deref(),
        Some("5"),
        "fetched since the watermark"
    );

    source.put("orders", "a", 6);
    wait_received(&host, "a@6", |r| {
        r.iter().any(|t| t.id == "default/crm/orders/a@6")
    })
    .await;
    assert_eq!(host.received().len(), 6);
}

/// Failed / Running / Idle / Disabled, and the target transport through `resolved`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follows_the_target_and_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start().await;
    let source = TestSource::start().await;
    source.put("items", "x", 1);
    let worker = WorkerProc::start(dir.path()).await;
    let spec = |target: Value| json!({"frequency": "1s", "syncSets": [sync_set(&source, "items", target)]});

    // The target failing makes the sync-set Failed and the connection Failed.
    host.answer(500);
    worker
        .put_connection("c", spec(http_target(&host)), None)
        .await;
    let report = worker
        .wait_connection("c", "Failed", |r| r["status"] == "Failed")
        .await;
    assert_eq!(report["reason"], "SyncSetFailed");
    assert_eq!(report["syncSets"][0]["lastResult"], "Failed");
    assert!(
        report["syncSets"][0]["lastError"]
            .as_str()
            .unwrap()
            .contains("500"),
        "{report}"
    );
    assert_eq!(
        report["syncSets"][0]["watermark"],
        Value::Null,
        "the watermark did not pass the refused record"
    );

    // Recovery makes it Running.
    host.answer(200);
    worker
        .wait_connection("c", "Running", |r| r["status"] == "Running")
        .await;

    // Disabling every sync-set gives Idle.
    let mut idle = spec(http_target(&host));
    idle["syncSets"][0]["enabled"] = json!(false);
    let (_, report) = worker.put_connection("c", idle, None).await;
    assert_eq!(report["status"], "Idle");

    // started: false gives Disabled.
    let mut stopped = spec(http_target(&host));
    stopped["started"] = json!(false);
    let (_, report) = worker.put_connection("c", stopped, None).await;
    assert_eq!(
        (report["status"].as_str(), report["reason"].as_str()),
        (Some("Disabled"), Some("Stopped"))
    );

    // An unknown target transport gives Disabled with a reason naming it.
    let (_, report) = worker
        .put_connection("c", spec(json!({"transport": {"name": "erp"}})), None)
        .await;
    assert_eq!(report["status"], "Disabled");
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("target transport erp does not exist"),
        "{report}"
    );

    // The transport target, resolved to a transport hosted by a worker: records travel through it.
    worker
        .apply("erp", json!({"host": {"url": host.url()}}))
        .await;
    let resolved = json!({"transports": {"erp": {
        "endpoint": format!("{}/transactions", worker.transport_url("erp")),
        "token": worker.ingest,
    }}});
    worker
        .put_connection(
            "c",
            spec(json!({"transport": {"name": "erp"}})),
            Some(resolved),
        )
        .await;
    worker
        .wait_connection("c", "Running through erp", |r| r["status"] == "Running")
        .await;
    // The watermark belongs to the sync-set: x, already synced, is not sent again; a new
    // change goes through the transport.
    source.put("items", "y", 2);
    wait_received(&host, "y through the transport", |r| {
        r.iter().any(|t| t.transport == "default/erp")
    })
    .await;
    assert!(
        host.received()
            .iter()
            .all(|t| !(t.transport == "default/erp" && t.id.contains("/x@")))
    );
    assert_eq!(worker.report("erp").await["totals"]["delivered"], 1);

    // Restarting: a changed spec waits for every enabled sync-set to complete again.
    source.delay("items", Duration::from_millis(1500));
    let mut slower = spec(json!({"transport": {"name": "erp"}}));
    slower["frequency"] = json!("2s");
    let resolved = json!({"transports": {"erp": {"endpoint": format!("{}/transactions", worker.transport_url("erp")), "token": worker.ingest}}});
    let (_, report) = worker.put_connection("c", slower, Some(resolved)).await;
    assert_eq!(report["status"], "Restarting");
    worker
        .wait_connection("c", "Running again", |r| r["status"] == "Running")
        .await;
}

/// A target transport's token reaches the connection worker's memory, never its volume: after
/// kill -9 the restored connection waits (its startup not admitted) until the operator pushes
/// the token again, then goes on from its watermark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_targets_token_is_never_kept_on_the_volume() {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start().await;
    let source = TestSource::start().await;
    source.put("items", "x", 1);
    let mut worker = WorkerProc::start(dir.path()).await;
    worker
        .apply("erp", json!({"host": {"url": host.url()}}))
        .await;
    let spec = json!({"frequency": "1s", "syncSets": [sync_set(&source, "items", json!({"transport": {"name": "erp"}}))]});
    let resolved = json!({"transports": {"erp": {
        "endpoint": format!("{}/transactions", worker.transport_url("erp")),
        "token": worker.ingest,
    }}});
    worker
        .put_connection("c", spec.clone(), Some(resolved.clone()))
        .await;
    wait_received(&host, "x through the transport", |r| {
        r.iter().any(|t| t.transport == "default/erp")
    })
    .await;
    let on_disk = || {
        let mut bytes = Vec::new();
        // The worker's data directory (the token files beside it are the test's Secret).
        for entry in std::fs::read_dir(dir.path().join("data"))
            .unwrap()
            .flatten()
        {
            if entry.path().is_file() {
                bytes.extend(std::fs::read(entry.path()).unwrap());
            }
        }
        bytes
    };
    let token = worker.ingest.clone();
    let contains = |haystack: &[u8]| haystack.windows(token.len()).any(|w| w == token.as_bytes());
    assert!(!contains(&on_disk()), "the target's token is on the volume");

    worker.restart().await;
    let report = worker
        .wait_connection("c", "restored, waiting for its push", |r| {
            r["startupQueuePosition"].is_number()
        })
        .await;
    assert!(!contains(&on_disk()), "{report}");
    source.put("items", "y", 2);
    worker.put_connection("c", spec, Some(resolved)).await;
    wait_received(&host, "y through the transport after the push", |r| {
        r.iter()
            .any(|t| t.transport == "default/erp" && t.id.contains("/y@"))
    })
    .await;
    assert!(!contains(&on_disk()));
}
