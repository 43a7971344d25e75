//! A pool's worker hosts many transports, each isolated from the others (real processes over
//! real HTTP): every transport takes only its own ingest token, which survives kill -9; one
//! transport's burst cannot take the memory budget the others' transactions need.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{TestHost, WorkerProc, spec};
use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt, net::TcpStream};

/// The SHA-256 of `token` in hex, as the operator sends it.
fn sha256(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// PUT transport `name` with the hash of its own ingest token beside the spec.
async fn put_with_token(worker: &WorkerProc, name: &str, spec: Value, hash: &str) -> (u16, Value) {
    worker
        .put_transport_beside(name, spec, json!({"ingestTokenSha256": hash}))
        .await
}

/// a and b take only their own tokens; c, without one, the worker's.
async fn check_tokens(worker: &WorkerProc) {
    assert_eq!(worker.send_with("a", "a-token", "1", None).await.0, 200);
    assert_eq!(worker.send_with("b", "b-token", "2", None).await.0, 200);
    let (status, body) = worker.send_with("b", "a-token", "3", None).await;
    assert_eq!(status, 401, "a's producer posts to b: {body}");
    assert!(
        body["message"].as_str().unwrap().contains("ingest token"),
        "{body}"
    );
    let ingest = &worker.ingest;
    assert_eq!(
        worker.send_with("a", ingest, "4", None).await.0,
        401,
        "the worker's token"
    );
    assert_eq!(worker.send_with("c", ingest, "5", None).await.0, 200);
    assert_eq!(worker.send_with("c", "a-token", "6", None).await.0, 401);
    // Unknown, without a valid token: 401 tells nothing of what is hosted.
    assert_eq!(worker.send_with("zz", "a-token", "7", None).await.0, 401);
    assert_eq!(worker.send_with("zz", ingest, "8", None).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_transport_on_a_pool_worker_takes_only_its_own_token() {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start().await;
    let mut worker = WorkerProc::start(dir.path()).await;
    for name in ["a", "b"] {
        let (status, body) = put_with_token(
            &worker,
            name,
            spec(&host),
            &sha256(&format!("{name}-token")),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        assert!(body.get("ingestTokenSha256").is_none(), "{body}");
    }
    // "c" has none of its own: the worker's token, as on a dedicated worker.
    worker.apply("c", spec(&host)).await;
    // What it hosts, for the operator's sweep (admin only).
    let listed = worker
        .http()
        .get(worker.transport_url("").replace("/default/", ""))
        .header("Ferry-Token", &worker.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let listed: Value = listed.json().await.unwrap();
    assert_eq!(
        listed,
        json!({"items": ["default/a", "default/b", "default/c"]})
    );

    check_tokens(&worker).await;
    // After kill -9 the tokens are checked from the volume, before any PUT arrives.
    worker.kill9();
    worker.start_again().await;
    check_tokens(&worker).await;
    let ids: Vec<String> = host
        .received()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(
        ids,
        ["1", "2", "5", "1", "2", "5"],
        "only the allowed ones arrived"
    );

    // A new token replaces the old one.
    let (status, _) = put_with_token(&worker, "a", spec(&host), &sha256("rotated")).await;
    assert_eq!(status, 200);
    assert_eq!(worker.send_with("a", "a-token", "9", None).await.0, 401);
    assert_eq!(worker.send_with("a", "rotated", "10", None).await.0, 200);
}

/// A pool's worker (`--own-ingest-tokens`, as the operator starts it): a transport takes only
/// its own token, and one whose own token the worker does not know (not given yet, or its
/// saved hash unreadable) takes none, never the worker's. No ingest token opens an admin route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_worker_never_falls_back_to_its_own_ingest_token() {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start().await;
    let worker = WorkerProc::start_with(dir.path(), &["--own-ingest-tokens"]).await;
    let (status, body) = put_with_token(&worker, "a", spec(&host), &sha256("a-token")).await;
    assert_eq!(status, 201, "{body}");
    worker.apply("c", spec(&host)).await;
    let ingest = &worker.ingest;
    assert_eq!(worker.send_with("a", "a-token", "1", None).await.0, 200);
    for (transport, token) in [("a", ingest.as_str()), ("c", ingest), ("c", "a-token")] {
        let (status, body) = worker.send_with(transport, token, "2", None).await;
        assert_eq!(status, 401, "{transport} with {token}: {body}");
    }
    for token in ["a-token", ingest.as_str()] {
        let url = worker.transport_url("a");
        let http = worker.http();
        for request in [
            http.get(&url),
            http.put(&url).json(&json!({})),
            http.delete(format!("{url}?purge=true")),
            http.get(format!("{url}/queue")),
        ] {
            let answer = request.header("Ferry-Token", token).send().await.unwrap();
            assert_eq!(answer.status(), 401, "an ingest token on an admin route");
        }
    }
    assert_eq!(
        host.received().len(),
        1,
        "only a's own producer got through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_or_misplaced_token_hash_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start().await;
    let worker = WorkerProc::start(dir.path()).await;
    for bad in [json!("abc"), json!(42), json!("z".repeat(64))] {
        let body = json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
            "metadata": {"name": "a", "namespace": "default"},
            "spec": spec(&host),
            "ingestTokenSha256": bad,
        });
        let (status, body) = worker.put_json(&worker.transport_url("a"), &body).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .starts_with("ingestTokenSha256:"),
            "{body}"
        );
    }
    let connection = json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "Connection",
        "metadata": {"name": "c", "namespace": "default"},
        "spec": {"source": {"url": "http://127.0.0.1:1/"}, "syncSets": []},
        "ingestTokenSha256": sha256("x"),
    });
    let url = worker
        .transport_url("c")
        .replace("/transports/", "/connections/");
    let (status, body) = worker.put_json(&url, &connection).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("only a transport"),
        "{body}"
    );
}

/// A producer of `transport` that sent the head of a `length`-byte transaction and a first
/// byte, and holds its reservation of the budget until dropped.
async fn holding(worker: &WorkerProc, transport: &str, length: usize) -> TcpStream {
    let mut stream = TcpStream::connect(worker.addr()).await.unwrap();
    let head = format!(
        "POST /v1/transports/default/{transport}/transactions HTTP/1.1\r\nHost: {}\r\n\
         Ferry-Token: {}\r\nContent-Length: {length}\r\n\r\nx",
        worker.addr(),
        worker.ingest
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_transports_burst_leaves_the_others_their_share_of_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start().await;
    // 1 MiB shared by two transports: a fair share of 512 KiB each.
    let worker = WorkerProc::start_with(dir.path(), &["--memory-budget", "1Mi"]).await;
    for name in ["burst", "small"] {
        let mut body = spec(&host);
        body["maxTransactionBytes"] = json!("1Mi");
        worker.apply(name, body).await;
    }
    // The burst holds 600 KB (beyond its share, while a quarter stays free)...
    let _first = holding(&worker, "burst", 300_000).await;
    let _second = holding(&worker, "burst", 300_000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ... and no more: a third 300 KB would leave less than a quarter for the others.
    let (status, body) = worker.send("burst", &"b".repeat(300_000), None).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("fair share"),
        "{body}"
    );
    // The other transport's transaction within its share is received.
    let (status, body) = worker.send("small", &"s".repeat(200_000), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(worker.report("small").await["totals"]["received"], 1);
    assert_eq!(worker.report("burst").await["totals"]["received"], 0);
}

/// A panic in one transport's work (its ingest; its forwarder at start) is caught: that
/// transport answers 500 for the one transaction and goes on, counted in its report
/// (`faults`) and metrics, while the other transport on the worker never notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_one_transport_stops_none_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start().await;
    // Debug builds only: each failpoint panics once, in the named transport's work.
    let worker = WorkerProc::start_with_env(
        dir.path(),
        &[("FERRY_FAILPOINTS", "ingest=default/bad,forward=default/bad")],
    )
    .await;
    worker.apply("bad", spec(&host)).await;
    worker.apply("good", spec(&host)).await;

    let (status, body) = worker.send("bad", "boom", None).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(worker.send("good", "fine", None).await.0, 200);
    // The next one of bad goes through: its work went on.
    assert_eq!(worker.send("bad", "again", None).await.0, 200);

    let report = worker.report("bad").await;
    assert_eq!(report["faults"]["panics"], 2, "{report}");
    let last = report["faults"]["lastPanic"].as_str().unwrap_or_default();
    assert!(last.contains("panicked: failpoint"), "{report}");
    // Nothing was received of the panicked ingest: the ledger adds up without it.
    assert_eq!(report["totals"]["received"], 1, "{report}");
    let good = worker.report("good").await;
    assert!(good.get("faults").is_none(), "{good}");
    assert_eq!(good["totals"]["delivered"], 1, "{good}");

    let metrics = worker.metrics().await;
    assert!(
        metrics.contains(
            r#"ferry_worker_panics_total{kind="transport",namespace="default",name="bad"} 2"#
        ),
        "{metrics}"
    );
    let received: Vec<Vec<u8>> = host.received().into_iter().map(|r| r.body).collect();
    assert_eq!(received, [b"fine".to_vec(), b"again".to_vec()]);
}

/// DELETE of the worker route, with `?query` when given; answers (status, body).
async fn delete(worker: &WorkerProc, name: &str, query: &str) -> (u16, Value) {
    let answer = worker
        .http()
        .delete(format!("{}{query}", worker.transport_url(name)))
        .header("Ferry-Token", &worker.admin)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

/// DELETE answered 200 with a message that says `says`.
async fn deleted(worker: &WorkerProc, name: &str, query: &str, says: &str) {
    let (status, body) = delete(worker, name, query).await;
    assert_eq!(status, 200, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{body}");
}

/// A transport deleted with `reclaimPolicy: Delete` leaves a pool's worker with nothing of it
/// on the volume (`?purge=true`): one of the same name starts with an empty queue and without
/// the old token; one deleted with `Retain` finds its queue again. Across kill -9 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_transport_leaves_nothing_and_a_kept_one_its_queue() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing answers at the host: every transaction stays queued.
    let mut host = common::TestHost::down_from_the_start();
    let mut worker = WorkerProc::start(dir.path()).await;
    for name in ["kept", "gone"] {
        let token = format!("{name}-token");
        let (status, body) = put_with_token(&worker, name, spec(&host), &sha256(&token)).await;
        assert_eq!(status, 201, "{body}");
        for id in ["1", "2"] {
            let (status, body) = worker.send_with(name, &token, id, Some(id)).await;
            assert_eq!(status, 202, "{body}");
        }
    }

    let (status, body) = delete(&worker, "gone", "?purge=maybe").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("purge"),
        "{body}"
    );
    deleted(&worker, "kept", "", "its queue is kept").await;
    deleted(&worker, "gone", "?purge=true", "its queue is removed").await;
    // Nothing is left to remove, and nothing of it is hosted: 404, as for any unknown one.
    assert_eq!(delete(&worker, "gone", "?purge=true").await.0, 404);
    // Without a purge, one hosted no more is unknown and keeps what it has.
    let (status, body) = delete(&worker, "kept", "?purge=false").await;
    assert_eq!(status, 404, "{body}");

    worker.kill9();
    worker.start_again().await;
    let listed: Value = worker
        .http()
        .get(worker.transport_url("").replace("/default/", ""))
        .header("Ferry-Token", &worker.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed, json!({"items": []}), "neither is hosted again");

    for name in ["kept", "gone"] {
        let (status, body) = put_with_token(&worker, name, spec(&host), &sha256("new-token")).await;
        assert_eq!(status, 201, "{body}");
    }
    assert_eq!(worker.report("kept").await["queue"]["messages"], 2);
    let gone = worker.report("gone").await;
    assert_eq!(gone["queue"]["messages"], 0, "{gone}");
    assert_eq!(gone["queue"]["bytes"], 0, "{gone}");
    assert_eq!(
        worker.send_with("gone", "gone-token", "3", None).await.0,
        401
    );
    assert_eq!(
        worker.send_with("gone", "new-token", "3", None).await.0,
        202
    );

    // Once the host answers, only what was kept (and the new one) arrives.
    host.up().await;
    common::wait_received(&host, "the kept queue and the new transaction", |r| {
        r.len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut bodies: Vec<String> = host
        .received()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["1", "2", "3"]);
    let (status, body) = delete(&worker, "kept", "?purge=true").await;
    assert_eq!(status, 200, "{body}");
}

/// The pool's sweep removes a resource deleted while its worker was down with
/// `?purge=reclaimPolicy`: the hosted resource's own `spec.storage.reclaimPolicy` decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_purges_as_the_resources_own_reclaim_policy_says() {
    let dir = tempfile::tempdir().unwrap();
    let host = common::TestHost::down_from_the_start();
    let worker = WorkerProc::start(dir.path()).await;
    for (name, policy) in [("delete-me", "Delete"), ("retain-me", "Retain")] {
        let mut spec = spec(&host);
        spec["storage"] = json!({"reclaimPolicy": policy});
        worker.apply(name, spec).await;
        let (status, body) = worker.send(name, "1", Some("1")).await;
        assert_eq!(status, 202, "{body}");
    }
    deleted(
        &worker,
        "delete-me",
        "?purge=reclaimPolicy",
        "its queue is removed",
    )
    .await;
    deleted(
        &worker,
        "retain-me",
        "?purge=reclaimPolicy",
        "its queue is kept",
    )
    .await;
    // Not hosted any more: its policy is not known, nothing is removed.
    assert_eq!(
        delete(&worker, "retain-me", "?purge=reclaimPolicy").await.0,
        404
    );

    for name in ["delete-me", "retain-me"] {
        worker.apply(name, spec(&host)).await;
    }
    assert_eq!(worker.report("delete-me").await["queue"]["messages"], 0);
    assert_eq!(worker.report("retain-me").await["queue"]["messages"], 1);
}
