//! Durability and limits with real processes and real files: kill -9 under load, restored
//! suspension, time to live, Max Storage, and the error answers of the API.

mod common;

use std::{collections::HashMap, time::Duration};

use common::{TestHost, WorkerProc, spec, wait_received};
use serde_json::json;

const PRODUCERS: usize = 4;

/// kill -9 while producers send with the host down; restart; every transaction answered
/// 200/202 reaches the host, in each producer's order; none answered `failed` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_while_sending_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = TestHost::down_from_the_start();
    let mut worker = WorkerProc::start(dir.path()).await;
    worker.apply("orders", spec(&host)).await;

    let url = format!("{}/transactions", worker.transport_url("orders"));
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let http = worker.http().clone();
        let url = url.clone();
        let token = worker.ingest.clone();
        producers.push(tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), Vec::new());
            for i in 0.. {
                let id = format!("p{p}-{i:06}");
                let sent = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("Ferry-Transaction-Id", &id)
                    .body(id.clone())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().as_u16() == 200 || r.status().as_u16() == 202 => {
                        acked.push(id)
                    }
                    Ok(r) if r.status().as_u16() == 503 => failed.push(id),
                    // The worker died under us: the answer never came, so nothing was promised.
                    _ => break,
                }
            }
            (acked, failed)
        }));
    }
    // Let the producers get well under way, then kill the worker mid-stream.
    worker
        .wait_for("orders", "transactions queued", |r| {
            r["queue"]["messages"].as_u64() >= Some(300)
        })
        .await;
    worker.kill9();
    let mut acked = HashMap::new();
    let mut failed = Vec::new();
    for (p, producer) in producers.into_iter().enumerate() {
        let (a, f) = producer.await.unwrap();
        acked.insert(p, a);
        failed.extend(f);
    }
    let total: usize = acked.values().map(Vec::len).sum();
    assert!(total >= 300, "only {total} acknowledged");

    worker.restart().await;
    assert_eq!(
        worker.report("orders").await["state"],
        "Store and Forward",
        "the queue is forwarded after a restart"
    );
    host.up().await;
    worker.wait_state("orders", "Up").await;

    let received = host.received_ids();
    let mut first_seen: HashMap<&str, usize> = HashMap::new();
    for (i, id) in received.iter().enumerate() {
        first_seen.entry(id.as_str()).or_insert(i);
    }
    for (p, ids) in &acked {
        let positions: Vec<usize> = ids
            .iter()
            .map(|id| {
                *first_seen
                    .get(id.as_str())
                    .unwrap_or_else(|| panic!("acknowledged {id} never reached the host"))
            })
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "producer {p}'s transactions arrived out of order"
        );
    }
    for id in &failed {
        assert!(
            !first_seen.contains_key(id.as_str()),
            "{id} was answered failed but delivered"
        );
    }
}

/// T8: Suspended and S&F Suspended come back as they were after kill -9, and stay
/// suspended (no delivery) until resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_states_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = TestHost::start().await;
    let mut worker = WorkerProc::start(dir.path()).await;
    let mut suspended = spec(&host);
    suspended["suspended"] = json!(true);
    worker.apply("quiet", suspended.clone()).await;
    worker.apply("holding", suspended.clone()).await;
    assert_eq!(worker.send("holding", "kept", Some("kept")).await.0, 202);
    assert_eq!(worker.report("holding").await["state"], "S&F Suspended");

    worker.restart().await;
    assert_eq!(worker.report("quiet").await["state"], "Suspended");
    let holding = worker.report("holding").await;
    assert_eq!(holding["state"], "S&F Suspended");
    assert_eq!(holding["queue"]["messages"], 1);
    assert_eq!(holding["totals"]["stored"], 1, "totals survive the restart");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(host.received().is_empty(), "delivered while suspended");

    worker.apply("holding", spec(&host)).await;
    worker.wait_state("holding", "Up").await;
    assert_eq!(host.received_ids(), ["kept"]);

    // A transport that was Up is connected again at start-up.
    worker.restart().await;
    host.down().await;
    host.up().await;
    worker.wait_state("holding", "Up").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_to_live_and_max_storage_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = TestHost::down_from_the_start();
    let worker = WorkerProc::start(dir.path()).await;

    // Time to live: expired transactions are counted, in totals and in metrics.
    let mut short = spec(&host);
    short["storeAndForward"] = json!({"timeToLive": "1s"});
    worker.apply("short", short).await;
    for i in 0..3 {
        assert_eq!(
            worker.send("short", "x", Some(&format!("e{i}"))).await.0,
            202
        );
    }
    let report = worker
        .wait_for("short", "3 expired", |r| r["totals"]["expired"] == 3)
        .await;
    assert_eq!(report["queue"]["messages"], 0);
    let metrics = worker.metrics().await;
    assert!(
        metrics.contains(r#"ferry_transport_transactions_total{namespace="default",name="short",outcome="expired"} 3"#),
        "{metrics}"
    );

    // T9 while suspended: the queue expires and S&F Suspended becomes Suspended.
    let mut short_suspended = spec(&host);
    short_suspended["suspended"] = json!(true);
    short_suspended["storeAndForward"] = json!({"timeToLive": "1s"});
    worker.apply("paused", short_suspended).await;
    assert_eq!(
        worker.send("paused", "x", None).await.1["state"],
        "S&F Suspended"
    );
    worker.wait_state("paused", "Suspended").await;

    // DropOldest: the oldest make room, counted as dropped.
    let mut drop_oldest = spec(&host);
    drop_oldest["storeAndForward"] = json!({"maxMessages": 2, "whenFull": "DropOldest"});
    worker.apply("drop", drop_oldest).await;
    for id in ["d1", "d2", "d3"] {
        assert_eq!(worker.send("drop", id, Some(id)).await.0, 202);
    }
    let report = worker.report("drop").await;
    assert_eq!(
        (
            report["queue"]["messages"].as_u64(),
            report["totals"]["dropped"].as_u64()
        ),
        (Some(2), Some(1))
    );

    // RejectNew: the new one fails; the queue is kept.
    let mut reject_new = spec(&host);
    reject_new["storeAndForward"] = json!({"maxBytes": 10, "whenFull": "RejectNew"});
    worker.apply("reject", reject_new).await;
    assert_eq!(worker.send("reject", "12345", Some("r1")).await.0, 202);
    assert_eq!(worker.send("reject", "12345", Some("r2")).await.0, 202);
    let (status, body) = worker.send("reject", "1", Some("r3")).await;
    assert_eq!((status, &body["outcome"]), (503, &json!("failed")));
    assert!(
        body["reason"].as_str().unwrap().contains("RejectNew"),
        "{body}"
    );
    let metrics = worker.metrics().await;
    assert!(metrics.contains(r#"outcome="dropped"} 1"#), "{metrics}");
    assert!(
        metrics.contains(r#"ferry_transport_queue_messages{namespace="default",name="reject"} 2"#),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"ferry_transport_state{namespace="default",name="reject",state="Store and Forward"} 1"#
    ));

    host.up().await;
    worker.wait_state("drop", "Up").await;
    worker.wait_state("reject", "Up").await;
    wait_received(&host, "the kept transactions", |r| r.len() >= 4).await;
    let ids = host.received_ids();
    assert!(
        ids.contains(&"d2".into()) && ids.contains(&"d3".into()) && !ids.contains(&"d1".into()),
        "{ids:?}"
    );
    assert!(
        ids.contains(&"r1".into()) && ids.contains(&"r2".into()) && !ids.contains(&"r3".into()),
        "{ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start().await;
    let worker = WorkerProc::start(dir.path()).await;
    let mut small = spec(&host);
    small["maxTransactionBytes"] = json!(16);
    worker.apply("small", small).await;
    let http = worker.http();
    let ingest = format!("{}/transactions", worker.transport_url("small"));

    // 413 over maxTransactionBytes, with a JSON message.
    let r = http
        .post(&ingest)
        .bearer_auth(&worker.ingest)
        .body("x".repeat(17))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("maxTransactionBytes"),
        "{body}"
    );
    assert_eq!(worker.send("small", &"x".repeat(16), None).await.0, 200);

    // 401 without the right token, for ingest and admin routes; nothing changes.
    let r = http.post(&ingest).body("x").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(&ingest)
        .bearer_auth(&worker.admin)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the admin token is not the ingest token");
    let r = http
        .get(worker.transport_url("small"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .delete(worker.transport_url("small"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(worker.report("small").await["totals"]["received"], 1);

    // 404 for an unknown transport.
    let r = http
        .post(format!("{}/transactions", worker.transport_url("nope")))
        .bearer_auth(&worker.ingest)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("default/nope"),
        "{body}"
    );

    // 400 for a malformed request: an invalid spec names its field; the transport that was
    // working is unchanged.
    let (status, body) = worker
        .put_transport("small", json!({"host": {"url": "ftp://x"}}))
        .await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("spec.host.url"),
        "{body}"
    );
    assert_eq!(worker.report("small").await["state"], "Up");
    let r = http
        .put(worker.transport_url("other"))
        .bearer_auth(&worker.admin)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .post(&ingest)
        .bearer_auth(&worker.ingest)
        .header("Ferry-Transaction-Id", "has spaces")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // DELETE stops hosting; the answer says the queue is kept.
    let r = http
        .delete(worker.transport_url("small"))
        .bearer_auth(&worker.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(worker.transport_url("small"))
        .bearer_auth(&worker.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
