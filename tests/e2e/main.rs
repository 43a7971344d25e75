//! End to end against a real API server: `FERRY_E2E_KUBECONFIG=<kubeconfig> cargo test --test e2e`.
//! Without it every scenario prints why it is skipped. On a control plane with no kubelet and
//! no container runtime add `FERRY_E2E_PROCESS_KUBELET=1` (see `kubelet.rs`); on a cluster
//! with nodes, `FERRY_E2E_WORKER_IMAGE` names the image built from this checkout.
//!
//! The operator runs out of cluster (`ferry operator --namespace <the scenario's>`), and the
//! resources are driven with the YAML and `kubectl patch` a user would use. The hosts and the
//! source are pods running `ferry sink` and `ferry source`.

#[path = "../common/certs.rs"]
mod certs;
mod cluster;
mod kubelet;
#[path = "../common/nats.rs"]
mod nats;
mod scale;

use cluster::WAIT;

/// For `nats`: a client for the servers' /healthz.
fn client() -> reqwest::Client {
    ferry::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// For `nats`: a port free now on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

use std::time::Duration;

use cluster::{Cluster, SERIAL, env, eventually};
use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{PersistentVolumeClaim, Pod, Secret},
};
use serde_json::{Value, json};

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

fn ready(status: &Value) -> &str {
    condition(status, "Ready")["status"].as_str().unwrap_or("")
}

/// A status whose Ready condition has `reason`.
fn ready_because(reason: &'static str) -> impl Fn(&Value) -> bool {
    move |status| condition(status, "Ready")["reason"] == reason
}

/// The Ready condition's message ("" when there is none).
fn ready_message(status: &Value) -> &str {
    condition(status, "Ready")["message"].as_str().unwrap_or("")
}

fn transport_yaml(name: &str, host: &str, reclaim: &str) -> String {
    format!(
        r#"
apiVersion: ferry.dev/v1alpha1
kind: Transport
metadata:
  name: {name}
spec:
  host:
    url: {host}/ingest
    timeout: 2s
  storeAndForward:
    enabled: true
    timeToLive: 1h
    maxMessages: 1000
  storage:
    size: 64Mi
    reclaimPolicy: {reclaim}
"#
    )
}

fn connection_yaml(name: &str, source: &str, target: &str) -> String {
    format!(
        r#"
apiVersion: ferry.dev/v1alpha1
kind: Connection
metadata:
  name: {name}
spec:
  started: true
  frequency: 5s
  syncSets:
  - name: orders
    source:
      http:
        url: {source}/records
        watermarkParam: updatedSince
        itemsPointer: /items
        watermarkPointer: /updatedAt
        idPointer: /id
    target:
      {target}
  storage:
    size: 16Mi
    reclaimPolicy: Delete
"#
    )
}

/// The pod's identity and restarts: changes when its worker restarted (none while the pod is
/// being replaced).
async fn incarnation(cluster: &Cluster, pod: &str) -> Option<(String, i64)> {
    let pod = cluster.api::<Pod>().get_opt(pod).await.ok()??;
    let restarts = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.first().map(|c| i64::from(c.restart_count)))
        .unwrap_or(0);
    Some((pod.metadata.uid.unwrap_or_default(), restarts))
}

const SINK: [&str; 4] = ["sink", "--listen", "0.0.0.0:9090", "--quiet"];
const SOURCE: [&str; 7] = [
    "source",
    "--listen",
    "0.0.0.0:9091",
    "--orders",
    "5",
    "--change-every",
    "2s",
];

/// Wait until `pod` runs as another incarnation than `before` and is Ready.
async fn restarted_and_ready(cluster: &Cluster, pod: &str, before: Option<(String, i64)>) {
    eventually(&format!("pod {pod} restarted and is Ready"), || async {
        let now = incarnation(cluster, pod).await?;
        let ready = cluster.wait_pod_ready(pod).await;
        (Some(now) != before).then_some(ready)
    })
    .await;
}

/// How a scenario takes a transport's worker away (issue 29).
enum Away<'a> {
    /// `kill -9` of the worker process: the pod stays, its container is started again.
    Kill9,
    /// `kubectl delete pod` (graceful): the StatefulSet controller makes a new one.
    DeletePod,
    /// `kubectl scale statefulset --replicas=0` by hand, which the operator repairs at once.
    /// With the operator running the pod goes only if the StatefulSet controller acted on the
    /// zero before the repair reached it; with `paused`, the operator is stopped until the pod
    /// is going, so it always does.
    ScaleToZero {
        paused: Option<&'a cluster::Operator>,
    },
}

/// Take transport `name`'s own worker away as `how` and bring it back: see
/// [`pod_away_and_back`]. Answers the status that says it is back.
async fn worker_away_and_back(cluster: &Cluster, name: &str, how: Away<'_>) -> Value {
    let pod = format!(
        "{}-0",
        ferry::operator::objects::builders::worker_name("tp", name)
    );
    let mut back = pod_away_and_back(cluster, &pod, &[name], how).await;
    back.remove(0)
}

/// Take worker pod `pod`, which hosts the transports `names`, away as `how` and bring it back,
/// waiting on evidence only. While it is away — held away by the process kubelet, so a fast
/// machine sees it as a slow one does — a status of each written after the event says so:
/// `Ready=False` reason `WorkerUnreachable` naming the pod, the state it replaced kept
/// (docs/operator.md#worker-away). Then the pod is a new incarnation, Ready and not being
/// deleted, and a status of each written after the one that said it was away is `Ready=True`:
/// the new worker has reported. Answers those statuses, in the order of `names`.
async fn pod_away_and_back(
    cluster: &Cluster,
    pod: &str,
    names: &[&str],
    how: Away<'_>,
) -> Vec<Value> {
    let set = pod.rsplit_once('-').expect("a StatefulSet's pod").0;
    let before = incarnation(cluster, pod).await;
    for name in names {
        cluster
            .wait_transport(name, "Ready before its worker goes away", |s| {
                ready(s) == "True"
            })
            .await;
    }
    let log = cluster.record_transports();
    let held = cluster.hold_pod(pod);
    // A kill or a deletion always takes it away; a scale to zero, as the pod shows after.
    let scaled = matches!(how, Away::ScaleToZero { .. });
    match how {
        Away::Kill9 => cluster.kill9_worker(pod).await,
        Away::DeletePod => {
            cluster
                .kubectl(&["delete", "pod", pod, "--wait=false"])
                .expect("graceful delete");
        }
        Away::ScaleToZero { paused } => {
            if let Some(operator) = paused {
                operator.pause();
            }
            cluster
                .kubectl(&["scale", "statefulset", set, "--replicas=0"])
                .expect("scale the StatefulSet");
            if let Some(operator) = paused {
                eventually(&format!("pod {pod} is going"), || async {
                    (!same_pod_serving(cluster, pod, &before).await).then_some(())
                })
                .await;
                operator.resume();
            }
            // Repaired, and the StatefulSet controller has acted on the repair: it deletes
            // nothing more after this.
            eventually(
                &format!("StatefulSet {set} repaired and seen to"),
                || async {
                    let set = cluster.api::<StatefulSet>().get_opt(set).await.ok()??;
                    let replicas = set.spec.as_ref()?.replicas;
                    let seen = set.status.as_ref()?.observed_generation;
                    (replicas == Some(1) && seen.is_some() && seen == set.metadata.generation)
                        .then_some(())
                },
            )
            .await;
        }
    }
    let away = !scaled || !same_pod_serving(cluster, pod, &before).await;
    // Per transport, where in the log the statuses after its away one start.
    let mut since = vec![0; names.len()];
    if away {
        for (name, since) in names.iter().zip(&mut since) {
            let (index, entries) = eventually(
                &format!("transport {name}: not Ready, naming {pod}, while it is away"),
                || async {
                    let entries = log.entries();
                    let index = entries.iter().position(|(n, s)| {
                        n == name
                            && ready(s) == "False"
                            && ready_because("WorkerUnreachable")(s)
                            && ready_message(s).contains(pod)
                    })?;
                    Some((index, entries))
                },
            )
            .await;
            // The status it replaced (when the watch saw one before it) had the same state.
            let away_status = &entries[index].1;
            if let Some((_, replaced)) = entries[..index].iter().rev().find(|(n, _)| n == name) {
                assert_eq!(
                    away_status["state"], replaced["state"],
                    "the last known state stays while the worker is away: {away_status}"
                );
            }
            *since = index + 1;
        }
    } else {
        cluster::say(&format!(
            "{pod} was never away: the operator repaired its StatefulSet before the StatefulSet \
             controller acted on the zero"
        ));
    }
    drop(held);
    if away {
        restarted_and_ready(cluster, pod, before).await;
    }
    let mut back = Vec::new();
    for (name, since) in names.iter().zip(since) {
        let status = eventually(
            &format!("transport {name}: Ready again, written after its worker came back"),
            || async {
                log.entries()
                    .into_iter()
                    .skip(since)
                    .find(|(n, s)| n == name && ready(s) == "True")
                    .map(|(_, s)| s)
            },
        )
        .await;
        back.push(status);
    }
    back
}

/// Whether `pod` is still the incarnation `before`, not being deleted.
async fn same_pod_serving(cluster: &Cluster, pod: &str, before: &Option<(String, i64)>) -> bool {
    let Ok(Some(now)) = cluster.api::<Pod>().get_opt(pod).await else {
        return false;
    };
    now.metadata.deletion_timestamp.is_none() && incarnation(cluster, pod).await == *before
}

/// T1–T8 on a cluster: Down → Up → Store and Forward → S&F Suspended, a worker `kill -9`
/// while S&F Suspended, the host back while suspended (nothing delivered), resume (the queue
/// forwarded, Up), suspend and resume with an empty queue (Suspended → Down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_lifecycle_of_the_rules() {
    let Some(env) = env("transport_lifecycle_of_the_rules") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(env, "lifecycle").await;
    let _operator = cluster.operator(&[]);
    let host = cluster.run_pod("erp-host", &SINK, 9090).await;
    cluster.apply(&transport_yaml("erp", &host, "Retain"));

    // 1. New: Down, and Ready once its worker answers; its objects exist.
    let status = cluster
        .wait_transport("erp", "Down and Ready", |s| {
            s["state"] == "Down" && ready(s) == "True"
        })
        .await;
    assert_eq!(status["observedGeneration"], 1, "{status}");
    for object in [
        "statefulset/ferry-tp-erp",
        "service/ferry-tp-erp",
        "secret/ferry-tp-erp",
        "pvc/data-ferry-tp-erp-0",
    ] {
        cluster
            .kubectl(&["get", object])
            .unwrap_or_else(|e| panic!("{object}: {e}"));
    }

    // 2. Down + transaction: delivered, Up.
    let (code, body) = cluster.ingest("erp", r#"{"order":1}"#).await;
    assert_eq!(
        (code, body["outcome"].as_str()),
        (200, Some("delivered")),
        "{body}"
    );
    cluster
        .wait_transport("erp", "Up with 1 delivered", |s| {
            s["state"] == "Up" && s["totals"]["delivered"] == 1
        })
        .await;

    // 3. The host goes away: stored, Store and Forward.
    host_gone_stored(&cluster, &host, 2..5).await;

    // 5. Suspend: S&F Suspended.
    cluster.patch("transport/erp", json!({"spec": {"suspended": true}}));
    cluster
        .wait_transport("erp", "S&F Suspended", |s| {
            s["state"] == "S&F Suspended" && s["observedGeneration"] == 2 && ready(s) == "True"
        })
        .await;

    // 8. kill -9 of the worker: S&F Suspended again, with its queue, as the new worker
    // reports it.
    let after_kill = worker_away_and_back(&cluster, "erp", Away::Kill9).await;
    assert_eq!(after_kill["state"], "S&F Suspended", "{after_kill}");
    assert_eq!(after_kill["queue"]["messages"], 3, "{after_kill}");
    assert_eq!(after_kill["totals"]["stored"], 3, "{after_kill}");

    // 6. The host is back, but a suspended transport never delivers.
    let host_again = cluster.run_pod("erp-host", &SINK, 9090).await;
    assert_eq!(host_again, host, "the host keeps its address");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let still = cluster
        .wait_transport("erp", "still S&F Suspended", |s| {
            s["state"] == "S&F Suspended"
        })
        .await;
    assert_eq!(still["queue"]["messages"], 3, "{still}");
    assert_eq!(still["totals"]["forwarded"], 0, "{still}");

    // 7. Resume: the queue is forwarded, then Up.
    cluster.patch("transport/erp", json!({"spec": {"suspended": false}}));
    let drained = cluster
        .wait_transport("erp", "Up with the queue forwarded", |s| {
            s["state"] == "Up" && s["queue"]["messages"] == 0 && s["totals"]["forwarded"] == 3
        })
        .await;
    assert_eq!(drained["totals"]["failed"], 0, "{drained}");

    // 5 and 7 with an empty queue: Up → Suspended → Down.
    cluster.patch("transport/erp", json!({"spec": {"suspended": true}}));
    cluster
        .wait_transport("erp", "Suspended", |s| s["state"] == "Suspended")
        .await;
    cluster.patch("transport/erp", json!({"spec": {"suspended": false}}));
    cluster
        .wait_transport("erp", "Down after resume", |s| {
            s["state"] == "Down" || s["state"] == "Up"
        })
        .await;
}

/// The note of an Event of reason `reason` about the scenario's object `name`, if one exists.
fn event_note(cluster: &Cluster, name: &str, reason: &str) -> Option<String> {
    let events = cluster
        .kubectl(&["get", "events.events.k8s.io", "-o", "json"])
        .ok()?;
    let events: Value = serde_json::from_str(&events).ok()?;
    events["items"].as_array()?.iter().find_map(|e| {
        (e["regarding"]["name"] == name && e["reason"] == reason)
            .then(|| e["note"].as_str().unwrap_or("").to_owned())
    })
}

/// Once transport `name` is Ready (hosted by its worker: a producer that comes earlier is
/// answered 404), one transaction is delivered and it is Up.
async fn delivered_and_up(cluster: &Cluster, name: &str) {
    cluster
        .wait_transport(name, "Ready", |s| ready(s) == "True")
        .await;
    let (code, body) = cluster.ingest(name, r#"{"order":1}"#).await;
    assert_eq!(code, 200, "{name}: {body}");
    cluster
        .wait_transport(name, "Up", |s| s["state"] == "Up" && ready(s) == "True")
        .await;
}

/// Transport erp's host pod goes away; the `orders` are answered `stored` and the transport
/// is in Store and Forward with them queued.
async fn host_gone_stored(cluster: &Cluster, host: &str, orders: std::ops::Range<u32>) {
    let queued = orders.len();
    cluster.delete_pod_now_and_wait("erp-host", host).await;
    for order in orders {
        let payload = format!(r#"{{"order":{order},"secret":"payload-{order}"}}"#);
        let (code, body) = cluster.ingest("erp", &payload).await;
        assert_eq!(
            (code, body["outcome"].as_str()),
            (202, Some("stored")),
            "{body}"
        );
    }
    cluster
        .wait_transport("erp", &format!("Store and Forward, {queued} queued"), |s| {
            s["state"] == "Store and Forward" && s["queue"]["messages"] == queued
        })
        .await;
}

/// The worker's limits as the operator sets them (memory budget from the pod's memory limit,
/// a shutdown deadline inside the grace period), and a graceful pod deletion that saves the
/// record and keeps the queue, with totals that add up afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_limits_and_a_graceful_restart_keep_the_ledger() {
    let Some(env) = env("worker_limits_and_a_graceful_restart_keep_the_ledger") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(env, "limits").await;
    let _operator = cluster.operator(&["--worker-memory-limit", "192Mi"]);
    // A host that never answers: every transaction is stored.
    let nowhere = format!("http://nowhere.{}.svc:9090", cluster.namespace);
    cluster.apply(&transport_yaml("outage", &nowhere, "Delete"));
    cluster
        .wait_transport("outage", "Ready", |s| ready(s) == "True")
        .await;
    let sts: StatefulSet = cluster
        .api()
        .get("ferry-tp-outage")
        .await
        .expect("the worker's StatefulSet");
    let pod = sts.spec.expect("spec").template.spec.expect("pod spec");
    assert_eq!(pod.termination_grace_period_seconds, Some(30));
    let args = pod.containers[0].args.clone().unwrap_or_default().join(" ");
    assert!(args.contains("--memory-budget 50331648"), "{args}");
    assert!(args.contains("--shutdown-timeout 10s"), "{args}");

    for n in 0..3 {
        let (code, body) = cluster.ingest("outage", &format!(r#"{{"n":{n}}}"#)).await;
        assert_eq!(code, 202, "{body}");
    }
    worker_away_and_back(&cluster, "outage", Away::DeletePod).await;
    let status = cluster
        .wait_transport("outage", "its queue after the restart", |s| {
            s["queue"]["messages"] == 3 && s["state"] == "Store and Forward"
        })
        .await;
    let t = &status["totals"];
    let n = |v: &Value| v.as_u64().unwrap_or(u64::MAX);
    assert_eq!(
        n(&t["received"]),
        n(&t["delivered"])
            + n(&t["forwarded"])
            + n(&t["failed"])
            + n(&t["expired"])
            + n(&t["dropped"])
            + n(&status["queue"]["messages"]),
        "{status}"
    );
}

/// Names the API server accepts always run: Transports and Connections named past 63
/// characters, with dots, and of 253 characters reach Up and Running (and Disabled, stopped). A pre-existing Secret of a worker's name
/// that the Transport does not control is left alone: Ready=False NameConflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_and_dotted_names_run_and_foreign_objects_are_left_alone() {
    let Some(env) = env("long_and_dotted_names_run_and_foreign_objects_are_left_alone") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(env, "names").await;
    let host = cluster.run_pod("names-host", &SINK, 9090).await;
    let source = cluster.run_pod("names-source", &SOURCE, 9091).await;
    let _operator = cluster.operator(&[]);

    cluster
        .kubectl(&[
            "create",
            "secret",
            "generic",
            "ferry-tp-taken",
            "--from-literal=admin-token=theirs",
            "--from-literal=ingest-token=theirs",
        ])
        .expect("a foreign Secret");
    // 90 characters, and 253 (the longest name the API server accepts) with dots.
    let long = format!("orders-for-plant-a-{}", "x".repeat(71));
    let dotted = "orders.plant-a";
    let longest = format!("{}.{}.{}", "a".repeat(100), "b".repeat(100), "c".repeat(51));
    // A connection reaches a target transport at its Service's DNS name; the process kubelet
    // has no cluster DNS, so there the connections write to the host directly.
    let target = |transport: &str| {
        if cluster.env.process_kubelet {
            format!("http: {{url: {host}/orders}}")
        } else {
            format!("transport: {{name: {transport}}}")
        }
    };
    let yaml = [
        transport_yaml("taken", &host, "Delete"),
        transport_yaml(&long, &host, "Delete"),
        transport_yaml(dotted, &host, "Delete"),
        transport_yaml(&longest, &host, "Delete"),
        connection_yaml(&format!("crm-{}", "y".repeat(88)), &source, &target(&long)),
        connection_yaml("crm.plant-a", &source, &target(dotted)),
        connection_yaml(&longest, &source, &target(&longest)),
    ];
    cluster.apply(&yaml.join("---\n"));

    let status = cluster
        .wait_transport("taken", "NameConflict", ready_because("NameConflict"))
        .await;
    assert!(
        ready_message(&status).contains("ferry-tp-taken"),
        "{status}"
    );
    let secret = cluster
        .kubectl(&[
            "get",
            "secret",
            "ferry-tp-taken",
            "-o",
            "jsonpath={.data.admin-token}",
        ])
        .expect("the foreign Secret");
    assert_eq!(secret.trim(), "dGhlaXJz", "the foreign Secret is unchanged");

    for name in [long.as_str(), dotted, &longest] {
        delivered_and_up(&cluster, name).await;
        // Its Events too, whatever the length of its name.
        eventually(&format!("a StateChanged Event of {name}"), || async {
            event_note(&cluster, name, "StateChanged")
        })
        .await;
    }
    for name in [
        format!("crm-{}", "y".repeat(88)),
        "crm.plant-a".into(),
        longest,
    ] {
        cluster
            .wait_connection(&name, "Running", |s| s["status"] == "Running")
            .await;
    }
    // Stopped, a long-named connection is Disabled with its worker scaled to zero.
    let stopped = format!("crm-{}", "y".repeat(88));
    cluster.patch(
        &format!("connection/{stopped}"),
        json!({"spec": {"started": false}}),
    );
    cluster
        .wait_connection(&stopped, "Disabled", |s| s["status"] == "Disabled")
        .await;
}

/// A manifest ferry could not read is refused by the API server, naming the field (the CRD's
/// bounds), and a null the API server prunes and defaults runs like any other. An object that
/// got past the API server anyway (stored while the CRD had a looser schema) runs nothing, gets
/// a Warning Event InvalidSpec naming the field (the API server refuses its status write too),
/// and never stops the good objects beside it, also after an operator restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_ferry_cannot_read_is_refused_and_the_others_run() {
    let Some(env) = env("a_manifest_ferry_cannot_read_is_refused_and_the_others_run") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(env, "poison").await;
    let host = cluster.run_pod("poison-host", &SINK, 9090).await;
    // The transport with `spec.storeAndForward.<field>: <value>` (replacing the line it had).
    let with_field = |name: &str, field: &str, value: &str| {
        let own = format!("    {field}:");
        transport_yaml(name, &host, "Delete")
            .lines()
            .filter(|line| !line.starts_with(&own))
            .map(|line| format!("{line}\n"))
            .collect::<String>()
            .replace(
                "    enabled: true\n",
                &format!("    enabled: true\n    {field}: {value}\n"),
            )
    };
    for (field, value) in [
        ("maxBytes", "\"99999999999999999999\""),
        ("timeToLive", "9999999h9999999h"),
    ] {
        let refused = cluster.apply_refused(&with_field("poison", field, value));
        assert!(refused.contains(field), "{field}: {refused}");
    }
    // The API server prunes a null of a field that is not nullable and applies the default.
    cluster.apply(&with_field("nulled", "maxBytes", "null"));
    // A poison object: stored while the CRD accepted anything, unreadable once it is back.
    cluster.loosen_crd("transports.ferry.dev");
    cluster.apply(&with_field(
        "poison",
        "maxBytes",
        "\"99999999999999999999\"",
    ));
    cluster.install_crds();

    let mut operator = cluster.operator(&[]);
    cluster.apply(&transport_yaml("before", &host, "Delete"));
    // The API server validates the whole object on a status write, so it refuses the poison
    // object's status too: its Warning Event names the field.
    let note = eventually("a Warning Event InvalidSpec for poison", || async {
        event_note(&cluster, "poison", "InvalidSpec")
    })
    .await;
    assert!(note.contains("spec.storeAndForward.maxBytes"), "{note}");
    for name in ["before", "nulled"] {
        cluster
            .wait_transport(name, "Ready", |s| ready(s) == "True")
            .await;
    }
    operator.restart();
    cluster.apply(&transport_yaml("after", &host, "Delete"));
    for name in ["before", "nulled", "after"] {
        delivered_and_up(&cluster, name).await;
    }
    let poison: Value = serde_json::from_str(
        &cluster
            .kubectl(&["get", "transport", "poison", "-o", "json"])
            .expect("the poison object"),
    )
    .expect("JSON");
    assert_ne!(ready(&poison["status"]), "True", "{poison}");
    assert!(
        !cluster
            .kubectl(&["get", "statefulsets", "-o", "name"])
            .unwrap_or_default()
            .contains("ferry-tp-poison"),
        "nothing runs for an object ferry cannot read"
    );
}

/// Three connections started together enter their startup one at a time: each is admitted
/// only after the one before it is Running; the others wait with a queue position. Their
/// source holds its answers until all three wait or start, so the first startup lasts until
/// then however the three worker pods come up (the last one ready waits at position 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_connections_start_one_by_one() {
    let Some(env) = env("three_connections_start_one_by_one") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(env, "startup").await;
    let held: Vec<&str> = SOURCE.iter().copied().chain(["--hold"]).collect();
    let source = cluster.run_pod("crm", &held, 9091).await;
    let host = cluster.run_pod("warehouse", &SINK, 9090).await;
    let log = cluster.record_connections();
    let _operator = cluster.operator(&["--startup-concurrency", "1"]);
    let target = format!("http: {{url: {host}/orders}}");
    let yaml: Vec<String> = ["alpha", "bravo", "charlie"]
        .iter()
        .map(|name| connection_yaml(name, &source, &target))
        .collect();
    cluster.apply(&yaml.join("---\n"));

    // The first admitted one cannot finish its first iteration yet: once every worker is
    // ready, one is in its startup and the other two wait at positions 1 and 2.
    let queued_at_two = |s: &Value| {
        s["startupQueuePosition"] == 2
            && s["status"] == "Restarting"
            && condition(s, "Progressing")["reason"] == "QueuedForStartup"
    };
    eventually("one waits at position 2 while the first starts", || async {
        log.entries()
            .iter()
            .any(|(_, s)| queued_at_two(s))
            .then_some(())
    })
    .await;
    let released = reqwest::Client::new()
        .post(format!("{source}/release"))
        .send()
        .await
        .expect("the source answers");
    assert!(released.status().is_success(), "{released:?}");

    for name in ["alpha", "bravo", "charlie"] {
        cluster
            .wait_connection(name, "Running", |s| s["status"] == "Running")
            .await;
    }
    let entries = log.entries();
    let first = |name: &str, holds: &dyn Fn(&Value) -> bool| {
        entries
            .iter()
            .position(|(n, s)| n == name && holds(s))
            .unwrap_or_else(|| panic!("{name} never showed it: {entries:#?}"))
    };
    let mut order: Vec<(usize, usize, &str)> = ["alpha", "bravo", "charlie"]
        .into_iter()
        .map(|name| {
            let admitted = first(name, &|s| {
                s.get("startupStartedTime").is_some() || s["status"] == "Running"
            });
            let running = first(name, &|s| s["status"] == "Running");
            (admitted, running, name)
        })
        .collect();
    order.sort();
    for pair in order.windows(2) {
        let (_, running_before, before) = pair[0];
        let (admitted, _, next) = pair[1];
        assert!(
            admitted > running_before,
            "{next} entered its startup before {before} was Running: {entries:#?}"
        );
    }
}

/// A connection whose worker pod cannot run (its claim names a storage class the cluster does
/// not have, so the pod stays Pending) is not in its startup: a connection started after it
/// reaches Running long before `--startup-timeout`, and the stuck one says why it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_worker_cannot_run_holds_no_startup_place() {
    let Some(env) = env("a_connection_whose_worker_cannot_run_holds_no_startup_place") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(env, "stuck").await;
    let source = cluster.run_pod("crm", &SOURCE, 9091).await;
    let host = cluster.run_pod("warehouse", &SINK, 9090).await;
    // Far longer than the wait below: only giving the place up lets the second one start.
    let _operator = cluster.operator(&["--startup-concurrency", "1", "--startup-timeout", "1h"]);
    let target = format!("http: {{url: {host}/orders}}");
    let stuck = connection_yaml("stuck", &source, &target).replace(
        "    reclaimPolicy: Delete",
        "    reclaimPolicy: Delete\n    storageClassName: ferry-e2e-no-such-class",
    );
    cluster.apply(&stuck);
    let waiting = cluster
        .wait_connection("stuck", "waiting for its worker without a place", |s| {
            ready_message(s).contains("holds no place in the startup queue")
        })
        .await;
    let message = ready_message(&waiting);
    assert!(message.contains("ferry-conn-stuck-0"), "{message}");
    cluster.apply(&connection_yaml("flowing", &source, &target));
    cluster
        .wait_connection("flowing", "Running", |s| s["status"] == "Running")
        .await;
    let stuck = cluster
        .wait_connection("stuck", "still waiting", |s| s["status"] != "Running")
        .await;
    assert_eq!(
        stuck["startupQueuePosition"], 1,
        "it keeps its turn: {stuck}"
    );
}

/// An operator restart (kill -9) restarts no worker and requeues nothing: the connection
/// shows Server Reinitializing, then its previous status; the transport keeps its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_restart_reinitializes_without_restarting_workers() {
    let Some(env) = env("operator_restart_reinitializes_without_restarting_workers") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(env, "restart").await;
    let source = cluster.run_pod("crm", &SOURCE, 9091).await;
    let host = cluster.run_pod("erp-host", &SINK, 9090).await;
    let mut operator = cluster.operator(&[]);
    cluster.apply(&transport_yaml("erp", &host, "Delete"));
    let target = format!("http: {{url: {host}/orders}}");
    cluster.apply(&connection_yaml("crm", &source, &target));
    cluster
        .wait_transport("erp", "Down and Ready", |s| {
            s["state"] == "Down" && ready(s) == "True"
        })
        .await;
    let running = cluster
        .wait_connection("crm", "Running", |s| s["status"] == "Running")
        .await;
    let workers = [
        incarnation(&cluster, "ferry-tp-erp-0").await,
        incarnation(&cluster, "ferry-conn-crm-0").await,
    ];

    let log = cluster.record_connections();
    operator.restart();
    eventually("Server Reinitializing, then Running again", || async {
        let values = log.values("crm");
        let reinit = values.iter().position(|v| v == "Server Reinitializing")?;
        values[reinit..]
            .iter()
            .any(|v| v == "Running")
            .then_some(())
    })
    .await;
    let after = cluster
        .wait_connection("crm", "Running", |s| s["status"] == "Running")
        .await;
    assert!(
        after["iteration"].as_u64() >= running["iteration"].as_u64(),
        "iterations go on: {running} then {after}"
    );
    assert!(after.get("startupQueuePosition").is_none(), "{after}");
    let transport = cluster
        .wait_transport("erp", "still Down and Ready", |s| {
            s["state"] == "Down" && ready(s) == "True"
        })
        .await;
    assert_eq!(transport["observedGeneration"], 1, "{transport}");
    assert_eq!(
        [
            incarnation(&cluster, "ferry-tp-erp-0").await,
            incarnation(&cluster, "ferry-conn-crm-0").await,
        ],
        workers,
        "no worker restarted"
    );
    let metrics = operator.metrics().await;
    assert!(
        metrics.contains("ferry_operator_reconciles_total{kind=\"Transport\"}"),
        "{metrics}"
    );
}

/// Deletion: `Retain` keeps the claim and the queued transactions in it (a Transport of the
/// same name finds them again), `Delete` removes it; a connection whose target transport is
/// deleted shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_under_both_reclaim_policies() {
    let Some(env) = env("deletion_under_both_reclaim_policies") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(env, "deletion").await;
    let _operator = cluster.operator(&[]);
    // Nothing answers there: every transaction is stored.
    let nowhere = if cluster.env.process_kubelet {
        "http://127.0.0.1:1".to_string()
    } else {
        format!("http://nowhere.{}.svc:9090", cluster.namespace)
    };
    cluster.apply(&transport_yaml("keep", &nowhere, "Retain"));
    cluster.apply(&transport_yaml("drop", &nowhere, "Delete"));
    cluster.apply(&connection_yaml(
        "feeder",
        &nowhere,
        "transport: {name: drop}",
    ));
    for name in ["keep", "drop"] {
        cluster
            .wait_transport(name, "Ready", |s| ready(s) == "True")
            .await;
        for n in 0..2 {
            let (code, body) = cluster.ingest(name, &format!(r#"{{"n":{n}}}"#)).await;
            assert_eq!(code, 202, "{body}");
        }
        cluster
            .wait_transport(name, "2 queued", |s| s["queue"]["messages"] == 2)
            .await;
    }

    cluster
        .kubectl(&["delete", "transport", "keep", "drop", "--timeout=180s"])
        .expect("deleted");
    let claims = cluster.api::<PersistentVolumeClaim>();
    eventually("the claim of `drop` is gone", || async {
        claims
            .get_opt("data-ferry-tp-drop-0")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    eventually("the StatefulSet of `keep` is gone", || async {
        cluster
            .api::<StatefulSet>()
            .get_opt("ferry-tp-keep")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let kept = claims
        .get_opt("data-ferry-tp-keep-0")
        .await
        .expect("read")
        .expect("the claim of `keep` is kept");
    assert!(kept.metadata.deletion_timestamp.is_none());

    let feeder = cluster
        .wait_connection("feeder", "Disabled: its target is gone", |s| {
            s["status"] == "Disabled" && condition(s, "Ready")["reason"] == "InvalidConfiguration"
        })
        .await;
    let message = ready_message(&feeder);
    assert!(message.contains("drop"), "{message}");

    // The kept claim still holds the queue: a Transport of the same name finds it.
    cluster.apply(&transport_yaml("keep", &nowhere, "Delete"));
    let back = cluster
        .wait_transport("keep", "its 2 transactions back", |s| {
            s["queue"]["messages"] == 2 && ready(s) == "True"
        })
        .await;
    assert_eq!(back["state"], "Store and Forward", "{back}");
}

/// Two operators with leader election: one leads, the other stands by and takes over when
/// the leader stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_lets_one_replica_write() {
    let Some(env) = env("leader_election_lets_one_replica_write") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(env, "leader").await;
    let lease = [
        "--leader-election",
        "--lease-namespace",
        cluster.namespace.as_str(),
        "--lease-name",
        "ferry-e2e",
    ];
    let mut first = cluster.operator(&lease);
    let second = cluster.operator(&lease);
    let leader_is_first = eventually("one leader, one standby", || async {
        let (a, b) = (first.readyz().await?, second.readyz().await?);
        match (
            a.as_str(),
            b.starts_with("standby"),
            a.starts_with("standby"),
            b.as_str(),
        ) {
            ("leading", true, _, _) => Some(true),
            (_, _, true, "leading") => Some(false),
            _ => None,
        }
    })
    .await;
    let host = cluster.run_pod("erp-host", &SINK, 9090).await;
    cluster.apply(&transport_yaml("erp", &host, "Delete"));
    cluster
        .wait_transport("erp", "Ready", |s| ready(s) == "True")
        .await;

    let standby = if leader_is_first {
        first.terminate();
        second
    } else {
        drop(second);
        first
    };
    eventually("the standby leads", || async {
        (standby.readyz().await? == "leading").then_some(())
    })
    .await;
    cluster.patch("transport/erp", json!({"spec": {"suspended": true}}));
    cluster
        .wait_transport("erp", "Suspended by the new leader", |s| {
            s["state"] == "Suspended"
        })
        .await;
}

/// Runs everywhere: the YAML the scenarios apply passes the CRDs' schema and rules, so a
/// scenario never fails on its own input.
#[test]
fn the_scenarios_yaml_is_valid() {
    let validator = ferry::api::validate::ManifestValidator::new();
    let host = "http://127.0.0.10:9090";
    let yaml = [
        transport_yaml("erp", host, "Retain"),
        transport_yaml("drop", host, "Delete"),
        connection_yaml("crm", host, &format!("http: {{url: {host}/orders}}")),
        connection_yaml("feeder", host, "transport: {name: drop}"),
        transport_yaml(
            &format!("orders-for-plant-a-{}", "x".repeat(71)),
            host,
            "Delete",
        ),
        connection_yaml("crm.plant-a", host, "transport: {name: orders.plant-a}"),
        connection_yaml(
            &format!("{}.{}.{}", "a".repeat(100), "b".repeat(100), "c".repeat(51)),
            host,
            &format!("http: {{url: {host}/orders}}"),
        ),
    ];
    for text in yaml {
        for mut doc in ferry::api::manifest::parse_documents(&text).expect("YAML") {
            // kubectl -n sets the namespace.
            doc["metadata"]["namespace"] = json!("ferry-e2e-check");
            if let Err(e) = validator.validate(&doc) {
                panic!("{e}\n{text}");
            }
        }
    }
}

/// Runs everywhere: the process kubelet turns the pod the operator builds for a Transport into
/// a `ferry worker` that starts, becomes ready on the pod's own address and takes the spec —
/// the translation the process-kubelet mode depends on, checked without a cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_kubelet_runs_the_operators_worker_pod() {
    use ferry::operator::objects::builders::{Owner, WorkerDefaults, WorkerTokens};
    ferry::install_crypto_provider();
    let transport: ferry::api::Transport = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
        "metadata": {"name": "erp", "namespace": "plant-a", "uid": "uid-erp", "generation": 1},
        "spec": {"host": {"url": "http://127.0.0.1:1/ingest"}},
    }))
    .expect("a transport");
    let owner = Owner::transport(&transport).expect("owner");
    let set = owner.stateful_set(&WorkerDefaults::default());
    let pod = set
        .spec
        .and_then(|s| s.template.spec)
        .expect("a pod template");
    let container = &pod.containers[0];
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = WorkerTokens {
        admin: "admin-secret".into(),
        ingest: "ingest-secret".into(),
        tls: None,
    };
    // The mounts as the kubelet maps them: the claim, the two Secrets written out side by side
    // (the projected tokens volume), the emptyDir.
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let local = dir.path().join(&mount.name);
        std::fs::create_dir_all(&local).expect("mount dir");
        if mount.name == "tokens" {
            let secrets = [Some(owner.secret(&tokens)), owner.admin_secret(&tokens)];
            for secret in secrets.into_iter().flatten() {
                for (key, value) in secret.data.unwrap_or_default() {
                    std::fs::write(local.join(key), value.0).expect("token file");
                }
            }
        }
        mounts.push((mount.mount_path.clone(), local));
    }
    let ip = format!("127.0.{}.99", std::process::id() % 250 + 2);
    let local = kubelet::LocalContainer::of(container, &mounts, &ip, "plant-a", "ferry-tp-erp-0");
    assert_eq!(local.command[1], "worker", "{:?}", local.command);
    assert!(
        local.command.iter().any(|a| a == &format!("{ip}:8080")),
        "{:?}",
        local.command
    );
    let probe = local.readiness.clone().expect("a readiness probe");
    assert!(!probe.https, "{probe:?}");
    let port = probe.port;
    let log = dir.path().join("log");
    let mut child = kubelet::spawn(&local.command, &local.env, &log);
    let http = reqwest::Client::new();
    eventually("the worker is ready on the pod's address", || async {
        let response = http.get(probe.url(&ip)).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    let put = http
        .put(format!("http://{ip}:{port}/v1/transports/plant-a/erp"))
        .header("Ferry-Token", "admin-secret")
        .json(&json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
            "metadata": {"name": "erp", "namespace": "plant-a", "generation": 1},
            "spec": transport.spec,
        }))
        .send()
        .await
        .expect("the worker answers");
    let status = put.status();
    let report: Value = put.json().await.unwrap_or(Value::Null);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        status.is_success(),
        "{status} {report}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(report["state"], "Down", "{report}");
    // The public URL the operator set (the Service) is what the worker reports.
    assert_eq!(
        report["endpoint"],
        "http://ferry-tp-erp.plant-a.svc:8080/v1/transports/plant-a/erp/transactions"
    );
}

/// Runs everywhere: what the suite writes to the API server — the process kubelet's Node,
/// Lease, PersistentVolume and pod status, the sink/source pods and Services — rendered to
/// `target/tmp/rendered/`, where .ci/run validates them with kubernetes-validate --strict (a
/// misspelt field would otherwise only show on a real cluster).
#[test]
fn the_objects_the_suite_writes_are_rendered_for_validation() {
    use ferry::operator::objects::builders::{Owner, WorkerDefaults};
    use k8s_openapi::api::core::v1::PersistentVolumeClaim as Claim;
    let transport: ferry::api::Transport = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
        "metadata": {"name": "erp", "namespace": "ferry-e2e-x", "uid": "uid-erp"},
        "spec": {"host": {"url": "http://127.0.0.1:1/ingest"}},
    }))
    .expect("a transport");
    let set = Owner::transport(&transport)
        .expect("owner")
        .stateful_set(&WorkerDefaults::default());
    let set = set.spec.expect("spec");
    // The claim and the pod as the StatefulSet controller makes them.
    let template = &set.volume_claim_templates.as_ref().expect("claims")[0];
    let claim: Claim = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data-ferry-tp-erp-0", "namespace": "ferry-e2e-x", "uid": "uid-claim"},
        "spec": template.spec,
    }))
    .expect("a claim");
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "ferry-tp-erp-0", "namespace": "ferry-e2e-x"},
        "spec": set.template.spec,
        "status": kubelet::pod_status(&kubelet::PodProcess {
            ip: "127.0.10.2", ready: true, since: "2026-11-23T10:00:00Z", restarts: 1,
            container: "worker", image: "ghcr.io/ferry-dev/ferry:0.1.0", pid: 4242, backing_off: false,
        }),
    });
    pod["spec"]["nodeName"] = json!("ferry-e2e-node");
    let mut node = kubelet::node_object("ferry-e2e-node");
    node["status"] = kubelet::node_status("ferry-e2e-node", "2026-11-23T10:00:00Z");
    let (sink, sink_service) =
        cluster::tool_pod("erp-host", "ghcr.io/ferry-dev/ferry:0.1.0", &SINK, 9090);
    let objects = [
        node,
        kubelet::node_lease("ferry-e2e-node", "2026-11-23T10:00:00.000000Z"),
        kubelet::local_volume(
            "ferry-e2e-uid-claim",
            &claim,
            "64Mi",
            std::path::Path::new("/tmp/ferry-e2e/volumes/uid-claim"),
        ),
        pod,
        sink,
        sink_service,
    ];
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("rendered");
    std::fs::create_dir_all(&out).expect("rendered dir");
    // JSON documents (JSON is YAML): quoted timestamps stay strings for the validator.
    let yaml: Vec<String> = objects
        .iter()
        .map(|o| serde_json::to_string_pretty(o).expect("JSON") + "\n")
        .collect();
    std::fs::write(out.join("e2e-process-kubelet.yaml"), yaml.join("---\n")).expect("written");
}

/// `kubectl ferry -n <scenario namespace> ARGS` must succeed; answers what it printed.
fn kubectl_ferry(cluster: &Cluster, args: &[&str]) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-ferry"));
    command
        .args(["-n", cluster.namespace.as_str()])
        .args(args)
        .env("KUBECONFIG", &cluster.env.kubeconfig);
    if cluster.env.process_kubelet {
        // The API server refuses to proxy to loopback pod IPs (as for the operator).
        command.env("FERRY_WORKER_ACCESS", "direct");
    }
    let out = command.output().expect("kubectl-ferry runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubectl ferry {args:?}: {text}");
    text
}

/// Stop and start with the plugin, as the README shows: `kubectl ferry stop connection --wait`
/// returns when it is Disabled with its worker scaled to zero; `start --wait` when it runs
/// again; `kubectl ferry status` lists it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_stops_and_starts_a_connection() {
    let Some(env) = env("the_plugin_stops_and_starts_a_connection") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(env, "plugin").await;
    let source = cluster.run_pod("crm", &SOURCE, 9091).await;
    let host = cluster.run_pod("warehouse", &SINK, 9090).await;
    let _operator = cluster.operator(&[]);
    let target = format!("http: {{url: {host}/orders}}");
    cluster.apply(&connection_yaml("crm", &source, &target));
    cluster
        .wait_connection("crm", "Running", |s| s["status"] == "Running")
        .await;

    let plugin = |args: &[&str]| kubectl_ferry(&cluster, args);
    let stopped = plugin(&["stop", "connection", "crm", "--wait", "--timeout", "3m"]);
    assert!(stopped.contains("stopped: Disabled"), "{stopped}");
    let set = cluster
        .api::<StatefulSet>()
        .get("ferry-conn-crm")
        .await
        .expect("its StatefulSet");
    assert_eq!(set.spec.and_then(|s| s.replicas), Some(0));

    let started = plugin(&["start", "connection", "crm", "--wait", "--timeout", "3m"]);
    assert!(started.contains("started: Running"), "{started}");
    let table = plugin(&["status"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains("Connection") && l.contains("crm") && l.contains("Running")),
        "{table}"
    );
}

/// A newcomer's first hour on a cluster: `kubectl explain` shows each field's default and
/// bounds; with no operator running, `kubectl ferry status` and a `--wait` say that no
/// operator has written a status and where to look, instead of an empty message; once the
/// operator runs, the same resource gets its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_is_told_what_is_missing() {
    let Some(env) = env("a_newcomer_is_told_what_is_missing") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(env, "newcomer").await;
    let explained = cluster
        .kubectl(&["explain", "transport.spec.storeAndForward"])
        .expect("kubectl explain");
    for shown in [
        "Default: 1h.",
        "Must be at least 1s.",
        "Default: DropOldest.",
    ] {
        assert!(explained.contains(shown), "{shown} in:\n{explained}");
    }

    let host = cluster.run_pod("erp-host", &SINK, 9090).await;
    cluster.apply(&transport_yaml("erp", &host, "Delete"));
    let table = kubectl_ferry(&cluster, &["status"]);
    assert!(
        table.contains("no ferry operator has written one"),
        "{table}"
    );
    let waited = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-ferry"))
        .args(["-n", cluster.namespace.as_str()])
        .args(["suspend", "transport", "erp", "--wait", "--timeout", "3s"])
        .env("KUBECONFIG", &cluster.env.kubeconfig)
        .output()
        .expect("kubectl-ferry runs");
    let said = String::from_utf8_lossy(&waited.stderr);
    assert!(!waited.status.success(), "{said}");
    assert!(said.contains("no ferry operator has written one"), "{said}");
    assert!(said.contains("docs/troubleshooting.md#no-status"), "{said}");
    assert!(!said.contains("Status {"), "one readable line: {said}");

    let _operator = cluster.operator(&[]);
    cluster
        .wait_transport("erp", "Suspended once an operator runs", |s| {
            s["state"] == "Suspended" && ready(s) == "True"
        })
        .await;
}

/// What an operator of a queue uses during an incident, on a real cluster: a transport whose
/// host is gone holds three transactions; `kubectl ferry queue transport` lists them oldest
/// first (ids and sizes, no payloads) through the worker's admin API, `kubectl ferry logs`
/// reads the worker's log, the conditions are the ones kstatus (Flux) reads, and the operator
/// exports the worker's restarts and the startup queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_seen_through_the_plugin_metrics_and_conditions() {
    let Some(env) = env("an_incident_seen_through_the_plugin_metrics_and_conditions") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(env, "incident").await;
    let operator = cluster.operator(&[]);
    let host = cluster.run_pod("erp-host", &SINK, 9090).await;
    cluster.apply(&transport_yaml("erp", &host, "Delete"));
    let up = cluster
        .wait_transport("erp", "Down and Ready", |s| ready(s) == "True")
        .await;
    // kstatus: Current (observedGeneration matches, neither Reconciling nor Stalled).
    assert_eq!(condition(&up, "Reconciling")["status"], "False", "{up}");
    assert_eq!(condition(&up, "Stalled")["status"], "False", "{up}");

    host_gone_stored(&cluster, &host, 1..4).await;

    let plugin = |args: &[&str]| kubectl_ferry(&cluster, args);
    let queue = plugin(&["queue", "transport", "erp", "--limit", "2"]);
    assert!(queue.contains("Store and Forward"), "{queue}");
    assert!(queue.contains("queue: 3 transactions"), "{queue}");
    assert!(queue.contains("(the oldest 2 of 3"), "{queue}");
    assert!(!queue.contains("payload-"), "no payloads: {queue}");
    let json: Value =
        serde_json::from_str(&plugin(&["queue", "transport", "erp", "-o", "json"])).expect("JSON");
    assert_eq!(json["oldest"].as_array().map(Vec::len), Some(3), "{json}");
    assert!(json["oldest"][0]["bytes"].as_u64() > Some(0), "{json}");

    if cluster.env.process_kubelet {
        cluster::say(
            "the process kubelet serves no container logs: `kubectl ferry logs` is not run here",
        );
    } else {
        let logs = plugin(&["logs", "transport", "erp", "--tail", "50"]);
        assert!(!logs.trim().is_empty(), "the worker logged nothing");
    }

    let metrics = operator.metrics().await;
    let restarts = format!(
        "ferry_operator_worker_restarts_total{{namespace=\"{}\",pod=\"ferry-tp-erp-0\"}}",
        cluster.namespace
    );
    assert!(metrics.contains(&restarts), "{restarts} in:\n{metrics}");
    for family in [
        "ferry_operator_leader 1",
        "ferry_operator_startup_admissions_total",
        "ferry_operator_resources{kind=\"Transport\",state=\"Store and Forward\"} 1",
    ] {
        assert!(metrics.contains(family), "{family} in:\n{metrics}");
    }
}

/// The operator at rest writes nothing (its resource, Secret, Service and StatefulSet keep
/// their resourceVersion while it is reconciled again and again), repairs a worker object
/// someone deletes or edits at once, and shows a change on the worker (its host gone) from
/// the worker's report without polling it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_rest_nothing_is_written_and_drift_is_repaired_at_once() {
    let Some(env) = env("at_rest_nothing_is_written_and_drift_is_repaired_at_once") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(env, "quiet").await;
    let _operator = cluster.operator(&[]);
    let host = cluster.run_pod("erp-host", &SINK, 9090).await;
    cluster.apply(&transport_yaml("erp", &host, "Delete"));
    delivered_and_up(&cluster, "erp").await;

    let versions = || {
        [
            "transport/erp",
            "secret/ferry-tp-erp",
            "secret/ferry-tp-erp-admin",
            "service/ferry-tp-erp",
            "networkpolicy/ferry-tp-erp",
            "statefulset/ferry-tp-erp",
        ]
        .map(|object| {
            cluster
                .kubectl(&["get", object, "-o", "jsonpath={.metadata.resourceVersion}"])
                .unwrap_or_else(|e| panic!("{object}: {e}"))
        })
    };
    // Settle (the last status write after Up), then watch the quiet.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = versions();
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(versions(), before, "written at rest");

    // Drift: the Service and the NetworkPolicy deleted, the StatefulSet scaled by hand; all
    // repaired at once, and the status honest meanwhile.
    cluster
        .kubectl(&["delete", "service", "ferry-tp-erp", "--wait=false"])
        .expect("delete the Service");
    cluster
        .kubectl(&["delete", "networkpolicy", "ferry-tp-erp", "--wait=false"])
        .expect("delete the NetworkPolicy");
    worker_away_and_back(&cluster, "erp", Away::ScaleToZero { paused: None }).await;
    cluster
        .wait_transport("erp", "Up again", |s| {
            s["state"] == "Up" && ready(s) == "True"
        })
        .await;
    for object in ["service/ferry-tp-erp", "networkpolicy/ferry-tp-erp"] {
        eventually(&format!("{object} back"), || async {
            cluster.kubectl(&["get", object, "-o", "name"]).ok()
        })
        .await;
    }

    // A change on the worker: its host gone, a transaction stored.
    host_gone_stored(&cluster, &host, 2..3).await;
}

/// Issue 29: from the moment the operator sees its worker pod go (killed, deleted, scaled away
/// by hand) until the new worker has reported, a transport is not Ready, the reason naming the
/// pod and its last known state kept; once it is Ready again it takes transactions at once. The
/// scale to zero is made with the operator paused until the pod is going, so the pod always
/// goes (running, the operator may repair the StatefulSet before its controller acts).
#[tokio::test]
async fn a_worker_away_is_not_ready_until_the_new_one_reports() {
    let Some(env) = env("a_worker_away_is_not_ready_until_the_new_one_reports") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(env, "away").await;
    let operator = cluster.operator(&[]);
    let host = cluster.run_pod("erp-host", &SINK, 9090).await;
    cluster.apply(&transport_yaml("erp", &host, "Delete"));
    delivered_and_up(&cluster, "erp").await;

    let ways = [
        Away::Kill9,
        Away::DeletePod,
        Away::ScaleToZero {
            paused: Some(&operator),
        },
    ];
    for (order, how) in (2..).zip(ways) {
        worker_away_and_back(&cluster, "erp", how).await;
        let (code, body) = cluster
            .ingest("erp", &format!(r#"{{"order":{order}}}"#))
            .await;
        assert_eq!(
            (code, body["outcome"].as_str()),
            (200, Some("delivered")),
            "order {order}: {body}"
        );
    }
    // Orders 2 and 3 were saved by the graceful stops after them, order 4 is reported by the
    // worker that took it; order 1, delivered just before the kill -9, may be missing from
    // both sides of the ledger (docs/worker-api.md: the last half second before a kill -9).
    let status = cluster
        .wait_transport("erp", "Up with orders 2 to 4 delivered", |s| {
            s["state"] == "Up" && s["totals"]["delivered"].as_u64() >= Some(3) && ready(s) == "True"
        })
        .await;
    let totals = &status["totals"];
    assert_eq!(totals["received"], totals["delivered"], "{status}");
}

/// Issue 30: a producer's Secret opens one door. `ferry-tp-<name>` holds the ingest token
/// only; the admin token is in `ferry-tp-<name>-admin`, which a producer granted `get` on its
/// Secret cannot read; with the ingest token every admin route answers 401. A worker made
/// before the two were kept apart (one Secret with both tokens, mounted whole) moves: the admin
/// token to its own Secret unchanged, the producers' token unchanged, the queue kept. A host at
/// the cloud metadata address is refused, naming the address and the flag.
#[tokio::test]
async fn a_producers_secret_opens_one_door_and_older_workers_move() {
    let Some(env) = env("a_producers_secret_opens_one_door_and_older_workers_move") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(env, "audience").await;
    let mut operator = cluster.operator(&[]);
    let host = cluster.run_pod("erp-host", &SINK, 9090).await;
    cluster.apply(&transport_yaml("erp", &host, "Delete"));
    // A host at the cloud metadata address is refused (the operator's default forbids
    // link-local): nothing is made for it.
    cluster.apply(&transport_yaml(
        "metadata",
        "http://169.254.169.254",
        "Delete",
    ));
    let refused = cluster
        .wait_transport(
            "metadata",
            "ForbiddenDestination",
            ready_because("ForbiddenDestination"),
        )
        .await;
    let message = ready_message(&refused);
    assert!(
        message.contains("spec.host.url")
            && message.contains("169.254.169.254, in 169.254.0.0/16")
            && message.contains("--forbidden-destinations"),
        "{refused}"
    );
    assert_eq!(
        condition(&refused, "Stalled")["status"],
        "True",
        "{refused}"
    );
    assert!(
        cluster
            .kubectl(&["get", "statefulset", "ferry-tp-metadata"])
            .is_err(),
        "nothing is made for it"
    );
    delivered_and_up(&cluster, "erp").await;
    fenced(&cluster, "ferry-tp-erp", true);
    assert!(
        cluster
            .kubectl(&["get", "networkpolicy", "ferry-tp-metadata"])
            .is_err(),
        "nothing is made for a refused host"
    );
    // Producers named in spec.network.ingestFrom replace "every pod of the namespace"; a
    // peer that is not a CIDR is refused by the API server, naming the rule.
    cluster.patch(
        "transport/erp",
        json!({"spec": {"network": {"ingestFrom": [{"podSelector": {"matchLabels": {"app": "erp-producer"}}}]}}}),
    );
    eventually("the policy names the producers", || async {
        let policy = cluster
            .kubectl(&["get", "networkpolicy", "ferry-tp-erp", "-o", "json"])
            .ok()?;
        let policy: Value = serde_json::from_str(&policy).ok()?;
        let from = policy["spec"]["ingress"][0]["from"].as_array()?.clone();
        (from
            .iter()
            .any(|p| p["podSelector"]["matchLabels"]["app"] == "erp-producer")
            && !from.iter().any(|p| *p == json!({"podSelector": {}})))
        .then_some(())
    })
    .await;
    let refused = cluster
        .kubectl(&[
            "patch",
            "transport/erp",
            "--type=merge",
            "-p",
            r#"{"spec": {"network": {"ingestFrom": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}}}"#,
        ])
        .unwrap_err();
    assert!(
        refused.contains("spec.network.ingestFrom[0].ipBlock.cidr")
            && refused.contains("must be a CIDR"),
        "{refused}"
    );

    // A producer allowed to get its Secret, and nothing else.
    let producer = format!("system:serviceaccount:{}:producer", cluster.namespace);
    let account = format!("{}:producer", cluster.namespace);
    for call in [
        &["create", "serviceaccount", "producer"][..],
        &[
            "create",
            "role",
            "producer",
            "--verb=get",
            "--resource=secrets",
            "--resource-name=ferry-tp-erp",
        ],
        &[
            "create",
            "rolebinding",
            "producer",
            "--role=producer",
            "--serviceaccount",
            &account,
        ],
    ] {
        cluster
            .kubectl(call)
            .unwrap_or_else(|e| panic!("{call:?}: {e}"));
    }
    let as_producer = |secret: &str, key: &str| {
        cluster.kubectl(&[
            "get",
            "secret",
            secret,
            "--as",
            &producer,
            "-o",
            &format!("jsonpath={{.data.{key}}}"),
        ])
    };
    let keys = cluster
        .kubectl(&[
            "get",
            "secret",
            "ferry-tp-erp",
            "--as",
            &producer,
            "-o",
            "jsonpath={.data}",
        ])
        .expect("the producer reads its Secret");
    let keys: Value = serde_json::from_str(&keys).expect("the Secret's data");
    assert_eq!(
        keys.as_object()
            .map(|d| d.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["ca.crt".to_owned(), "ingest-token".to_owned()]),
        "the producers' Secret holds only what producers need"
    );
    let denied = as_producer("ferry-tp-erp-admin", "admin-token").unwrap_err();
    assert!(denied.contains("forbidden"), "{denied}");
    let ingest = cluster
        .secret_key("ferry-tp-erp", "ingest-token")
        .await
        .expect("the ingest token");
    let admin = cluster
        .secret_key("ferry-tp-erp-admin", "admin-token")
        .await
        .expect("the admin token, apart");
    assert_ne!(ingest, admin);

    if cluster.env.process_kubelet {
        let pod = cluster.wait_pod_ready("ferry-tp-erp-0").await;
        let ip = pod["status"]["podIP"].as_str().expect("pod IP").to_owned();
        // Over TLS verified with the bundle beside the token: the producer's whole Secret.
        let (http, root) = cluster
            .worker_http("ferry-tp-erp", "ferry-tp-erp-0", &ip)
            .await;
        assert!(
            root.starts_with("https://"),
            "the worker serves TLS: {root}"
        );
        let plain = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client")
            .get(format!("http://{ip}:8080/readyz"))
            .send()
            .await;
        assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
        let base = format!("{root}/v1/transports/{}", cluster.namespace);
        for request in [
            http.get(format!("{base}/erp")),
            http.put(format!("{base}/erp")).json(&json!({})),
            http.delete(format!("{base}/erp?purge=true")),
            http.get(format!("{base}/erp/queue")),
            http.get(format!("{root}/v1/transports")),
        ] {
            let answer = request
                .header("Ferry-Token", &ingest)
                .send()
                .await
                .expect("the worker answers");
            assert_eq!(answer.status(), 401, "the ingest token on an admin route");
        }
    }

    // An older worker with transactions queued: the operator stopped, its objects put back as
    // ferry made them before (one Secret with both tokens, mounted whole) by the operator's own
    // field manager.
    host_gone_stored(&cluster, &host, 2..5).await;
    operator.terminate();
    let apply = kube::api::PatchParams::apply("ferry-operator").force();
    let as_applied = |object: Value| {
        let mut object = object;
        let metadata = object["metadata"].as_object_mut().expect("metadata");
        for field in [
            "managedFields",
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
        ] {
            metadata.remove(field);
        }
        if let Some(object) = object.as_object_mut() {
            object.remove("status");
        }
        object
    };
    let mut older_secret = as_applied(
        serde_json::to_value(
            cluster
                .api::<Secret>()
                .get("ferry-tp-erp")
                .await
                .expect("Secret"),
        )
        .expect("json"),
    );
    older_secret["data"]["admin-token"] =
        json!(k8s_openapi::ByteString(admin.clone().into_bytes()));
    // From before TLS too: no bundle, and a worker that serves plain HTTP.
    if let Some(data) = older_secret["data"].as_object_mut() {
        data.remove("ca.crt");
    }
    cluster
        .api::<Secret>()
        .patch(
            "ferry-tp-erp",
            &apply,
            &kube::api::Patch::Apply(&older_secret),
        )
        .await
        .expect("the older Secret");
    let before = incarnation(&cluster, "ferry-tp-erp-0").await;
    let mut older_set = as_applied(
        serde_json::to_value(
            cluster
                .api::<StatefulSet>()
                .get("ferry-tp-erp")
                .await
                .expect("StatefulSet"),
        )
        .expect("json"),
    );
    older_set["spec"]["template"]["spec"]["volumes"][0] = json!(
        {"name": "tokens", "secret": {"secretName": "ferry-tp-erp", "defaultMode": 288}}
    );
    let container = &mut older_set["spec"]["template"]["spec"]["containers"][0];
    if let Some(args) = container["args"].as_array_mut() {
        let tls = args.iter().position(|a| a == "--tls-cert-file");
        if let Some(at) = tls {
            args.drain(at..at + 4);
        }
    }
    for probe in ["readinessProbe", "livenessProbe"] {
        if let Some(get) = container[probe]["httpGet"].as_object_mut() {
            get.remove("scheme");
        }
    }
    cluster
        .api::<StatefulSet>()
        .patch("ferry-tp-erp", &apply, &kube::api::Patch::Apply(&older_set))
        .await
        .expect("the older StatefulSet");
    cluster
        .api::<Secret>()
        .delete("ferry-tp-erp-admin", &Default::default())
        .await
        .expect("the admin Secret gone");
    restarted_and_ready(&cluster, "ferry-tp-erp-0", before).await;
    // It runs as it did: its producers' token stores one more.
    let (code, body) = cluster.ingest("erp", r#"{"order":5}"#).await;
    assert_eq!(
        (code, body["outcome"].as_str()),
        (202, Some("stored")),
        "{body}"
    );

    // The new operator moves it.
    let moved = incarnation(&cluster, "ferry-tp-erp-0").await;
    operator.restart();
    eventually("the admin token in its own Secret, unchanged", || async {
        (cluster
            .secret_key("ferry-tp-erp-admin", "admin-token")
            .await?
            == admin)
            .then_some(())
    })
    .await;
    eventually("the producers' Secret without the admin token", || async {
        let secret = cluster.api::<Secret>().get("ferry-tp-erp").await.ok()?;
        let data = secret.data?;
        (!data.contains_key("admin-token") && data.contains_key("ingest-token")).then_some(())
    })
    .await;
    assert_eq!(
        cluster.secret_key("ferry-tp-erp", "ingest-token").await,
        Some(ingest.clone()),
        "the producers' token is unchanged"
    );
    restarted_and_ready(&cluster, "ferry-tp-erp-0", moved).await;
    let status = cluster
        .wait_transport("erp", "its queue kept, Ready", |s| {
            ready(s) == "True" && s["queue"]["messages"] == 4
        })
        .await;
    assert_eq!(status["totals"]["stored"], 4, "{status}");
    // Its producers go on with the token they had.
    let (code, body) = cluster.ingest("erp", r#"{"order":6}"#).await;
    assert_eq!(
        (code, body["outcome"].as_str()),
        (202, Some("stored")),
        "{body}"
    );

    // Rotation: a new token in a new Secret; the worker refuses the old one once the operator
    // has told it, takes the new one, and keeps its queue and totals.
    let said = kubectl_ferry(&cluster, &["rotate-token", "transport", "erp"]);
    assert!(
        said.contains("a new ingest token is in Secret ferry-tp-erp"),
        "{said}"
    );
    let new = cluster.ingest_token("erp").await;
    assert_ne!(new, ingest, "a new token");
    // Until the worker has the new hash the old token still stores: counted.
    let late = std::sync::atomic::AtomicU64::new(0);
    eventually("the worker refuses the old token", || async {
        match cluster
            .ingest_with("erp", &ingest, r#"{"order":"late"}"#)
            .await
        {
            Ok((401, _)) => Some(()),
            Ok((202, _)) => {
                late.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                None
            }
            _ => None,
        }
    })
    .await;
    let (code, body) = cluster
        .ingest_with("erp", &new, r#"{"order":7}"#)
        .await
        .expect("the worker answers");
    assert_eq!(
        (code, body["outcome"].as_str()),
        (202, Some("stored")),
        "{body}"
    );
    let stored = 6 + late.into_inner();
    let status = cluster
        .wait_transport("erp", "the queue kept across the rotation", |s| {
            s["queue"]["messages"] == stored && s["totals"]["stored"] == stored
        })
        .await;
    assert_eq!(ready(&status), "True", "{status}");

    // The admin token: a new one restarts the worker with it, the queue kept; the operator
    // reads it with the new token (its report comes after the restart).
    let before = incarnation(&cluster, "ferry-tp-erp-0").await;
    let said = kubectl_ferry(&cluster, &["rotate-token", "transport", "erp", "--admin"]);
    assert!(said.contains("a new admin token"), "{said}");
    let new_admin = cluster
        .secret_key("ferry-tp-erp-admin", "admin-token")
        .await
        .expect("a new admin token");
    assert_ne!(new_admin, admin);
    restarted_and_ready(&cluster, "ferry-tp-erp-0", before).await;
    let (code, body) = cluster
        .ingest_with("erp", &new, r#"{"order":8}"#)
        .await
        .expect("the worker answers");
    assert_eq!(code, 202, "{body}");
    cluster
        .wait_transport("erp", "read with the new admin token, queue kept", |s| {
            ready(s) == "True" && s["queue"]["messages"] == stored + 1
        })
        .await;
}

fn pooled_transport_yaml(name: &str, host: &str, pool: &str) -> String {
    format!(
        r#"
apiVersion: ferry.dev/v1alpha1
kind: Transport
metadata:
  name: {name}
spec:
  workerPool: {pool}
  host:
    url: {host}/ingest
    timeout: 2s
"#
    )
}

/// Issue 22: a WorkerPool's workers host many transports. Each is placed once on the ready
/// worker with the fewest (status.placement names pool and worker), takes transactions at
/// that worker with its own token only (its Secret holds that, not the pool's admin token),
/// and stays there; a full pool says so; `workerPool`
/// cannot change; a scale-down that would remove a hosting worker is blocked, and so is the
/// pool's deletion while transports name it.
#[tokio::test]
async fn a_worker_pool_hosts_many_transports() {
    let Some(env) = env("a_worker_pool_hosts_many_transports") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(env, "pools").await;
    let _operator = cluster.operator(&[]);
    let host = cluster.run_pod("erp-host", &SINK, 9090).await;
    cluster.apply(
        r#"
apiVersion: ferry.dev/v1alpha1
kind: WorkerPool
metadata:
  name: fleet
spec:
  replicas: 2
  capacity: 2
  storage:
    size: 64Mi
    reclaimPolicy: Delete
"#,
    );
    let pool = cluster
        .wait_pool("fleet", "two workers ready", |s| {
            s["readyWorkers"] == 2 && ready(s) == "True"
        })
        .await;
    assert_eq!(pool["workers"].as_array().map(Vec::len), Some(2), "{pool}");
    fenced(&cluster, "ferry-wp-fleet", true);

    // Three transports over two workers of capacity 2: 2 + 1, each placed once.
    for name in ["a", "b", "c"] {
        cluster.apply(&pooled_transport_yaml(name, &host, "fleet"));
        cluster
            .wait_transport(name, "placed and Ready", |s| {
                ready(s) == "True" && s["placement"]["workerPool"] == "fleet"
            })
            .await;
    }
    let mut on = std::collections::BTreeMap::<String, Vec<&str>>::new();
    for name in ["a", "b", "c"] {
        let status = cluster.wait_transport(name, "placed", |_| true).await;
        let worker = status["placement"]["worker"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        assert!(
            worker.starts_with("ferry-wp-fleet-"),
            "{name} on {worker}: {status}"
        );
        let endpoint = status["endpoint"].as_str().unwrap_or("");
        assert!(
            endpoint.starts_with(&format!("https://{worker}.ferry-wp-fleet.")),
            "{name}: the endpoint is its worker's stable name: {endpoint}"
        );
        on.entry(worker).or_default().push(name);
    }
    let mut counts: Vec<usize> = on.values().map(Vec::len).collect();
    counts.sort();
    assert_eq!(counts, [1, 2], "placed evenly: {on:?}");
    for name in ["a", "b", "c"] {
        delivered_and_up(&cluster, name).await;
        let secret = cluster
            .api::<Secret>()
            .get(&format!("ferry-tp-{name}"))
            .await
            .expect("the transport's own Secret");
        let keys: Vec<&String> = secret.data.iter().flatten().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            ["ca.crt", "ingest-token"],
            "its ingest token and the bundle only"
        );
    }
    // The two on one worker: a producer of one cannot post to the other.
    let neighbours = on
        .values()
        .find(|names| names.len() == 2)
        .expect("a worker with two");
    let (status, body) = cluster
        .ingest_with_token_of(neighbours[0], neighbours[1], r#"{"order": 9}"#)
        .await;
    assert_eq!(
        status, 401,
        "{} with {}'s token: {body}",
        neighbours[0], neighbours[1]
    );
    let pool = cluster
        .wait_pool("fleet", "hosting three", |s| s["hosted"] == 3)
        .await;
    assert_eq!(pool["readyWorkers"], 2, "{pool}");
    // The plugin shows pool and worker, and lists the pool's placement.
    let table = kubectl_ferry(&cluster, &["status"]);
    for (worker, names) in &on {
        for name in names {
            assert!(
                table
                    .lines()
                    .any(|l| l.contains(&format!(" {name} "))
                        && l.contains(&format!("fleet/{worker}"))),
                "{name} on fleet/{worker}:\n{table}"
            );
        }
    }
    let listing = kubectl_ferry(&cluster, &["pool", "fleet"]);
    for (worker, names) in &on {
        let line = listing
            .lines()
            .find(|l| l.starts_with(worker.as_str()))
            .unwrap_or_else(|| panic!("{worker}:\n{listing}"));
        let hosted = names
            .iter()
            .map(|n| format!("Transport {n}"))
            .collect::<Vec<_>>();
        assert!(
            line.contains(&format!("{}/2", names.len())) && line.ends_with(&hosted.join(", ")),
            "{line}"
        );
    }

    // Two workers of capacity 2: the fourth fills the pool, the fifth says so, naming it.
    cluster.apply(&pooled_transport_yaml("d", &host, "fleet"));
    cluster
        .wait_transport("d", "placed and Ready", |s| {
            ready(s) == "True" && s["placement"]["workerPool"] == "fleet"
        })
        .await;
    cluster.apply(&pooled_transport_yaml("e", &host, "fleet"));
    let full = cluster
        .wait_transport("e", "PoolFull", ready_because("PoolFull"))
        .await;
    let message = ready_message(&full);
    assert!(message.contains("WorkerPool fleet is full"), "{message}");

    // workerPool is fixed once set.
    let refused = cluster.apply_refused(&pooled_transport_yaml("a", &host, "other"));
    assert!(
        refused.contains("workerPool cannot change once the resource exists"),
        "{refused}"
    );

    // A scale-down that would remove a hosting worker is blocked; the StatefulSet keeps both.
    cluster.patch("workerpool/fleet", json!({"spec": {"replicas": 1}}));
    let blocked = cluster
        .wait_pool(
            "fleet",
            "ScaleDownBlocked",
            ready_because("ScaleDownBlocked"),
        )
        .await;
    let message = ready_message(&blocked);
    assert!(message.contains("ferry-wp-fleet-1 hosts"), "{message}");
    let set = cluster
        .api::<StatefulSet>()
        .get("ferry-wp-fleet")
        .await
        .expect("the pool's StatefulSet");
    assert_eq!(set.spec.and_then(|s| s.replicas), Some(2));

    // The pool is not deleted while transports name it; its status says which.
    cluster
        .kubectl(&["delete", "workerpool/fleet", "--wait=false"])
        .expect("delete requested");
    let in_use = cluster
        .wait_pool("fleet", "InUse", ready_because("InUse"))
        .await;
    let message = ready_message(&in_use);
    assert!(message.contains("Transport a"), "{message}");
    for name in ["a", "b", "c", "d", "e"] {
        cluster
            .kubectl(&["delete", &format!("transport/{name}")])
            .expect("transport deleted");
    }
    eventually("the pool gone once nothing names it", || async {
        cluster
            .api::<ferry::api::WorkerPool>()
            .get_opt("fleet")
            .await
            .ok()
            .and_then(|p| p.is_none().then_some(()))
    })
    .await;
}

/// The admin token of pool `fleet`, and a client and base URL for its worker `worker` (process
/// kubelet): verified TLS with the bundle of the pool's Secret.
async fn pool_admin(cluster: &Cluster, worker: &str) -> (String, reqwest::Client, String) {
    let secret = cluster
        .api::<Secret>()
        .get("ferry-wp-fleet")
        .await
        .expect("the pool's Secret");
    let token = secret
        .data
        .and_then(|d| d.get("admin-token").cloned())
        .expect("an admin token");
    let pod = cluster.wait_pod_ready(worker).await;
    let ip = pod["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (http, base) = cluster.worker_http("ferry-wp-fleet", worker, &ip).await;
    (String::from_utf8_lossy(&token.0).into_owned(), http, base)
}

/// Whether the pool worker hosts the transport `stray` (`None`: it did not answer).
async fn stray_hosted(cluster: &Cluster, worker: &str) -> Option<bool> {
    let (token, http, base) = pool_admin(cluster, worker).await;
    let listed: Value = http
        .get(format!("{base}/v1/transports"))
        .header("Ferry-Token", token)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let stray = format!("{}/stray", cluster.namespace);
    Some(
        listed["items"]
            .as_array()?
            .iter()
            .any(|k| *k == stray.as_str()),
    )
}

/// A WorkerPool of one worker, for the pool scenarios.
fn pool_yaml(name: &str, replicas: u32, capacity: u32) -> String {
    format!(
        r#"
apiVersion: ferry.dev/v1alpha1
kind: WorkerPool
metadata:
  name: {name}
spec:
  replicas: {replicas}
  capacity: {capacity}
  storage:
    size: 64Mi
    reclaimPolicy: Delete
"#
    )
}

/// A pooled transport with Store and Forward, suspended or not.
fn pooled_sf_transport_yaml(name: &str, host: &str, pool: &str, suspended: bool) -> String {
    format!(
        r#"
apiVersion: ferry.dev/v1alpha1
kind: Transport
metadata:
  name: {name}
spec:
  workerPool: {pool}
  suspended: {suspended}
  host:
    url: {host}/ingest
    timeout: 2s
  storeAndForward:
    enabled: true
    timeToLive: 1h
    maxMessages: 10000
"#
    )
}

/// Issue 22: one pool worker hosts three transports and a connection. Stopping the connection
/// stops it there and touches no other; suspending one transport touches no other. The
/// worker is killed with kill -9 while producers post to two of them: it comes back with every
/// transport in its state, and nothing answered 200 or 202 is lost (the stored ones queued,
/// the delivered ones at the host); a transport it hosts that no Transport places there is
/// swept. An operator restart then moves nothing and restarts no
/// worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_worker_killed_under_load_keeps_every_transport() {
    let Some(env) = env("a_pool_worker_killed_under_load_keeps_every_transport") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(env, "poolkill").await;
    let mut operator = cluster.operator(&[]);
    // A sink that prints what arrives (no --quiet): the delivered ones are checked in its log.
    let host = cluster
        .run_pod("erp-host", &["sink", "--listen", "0.0.0.0:9090"], 9090)
        .await;
    let nowhere = format!("http://nowhere.{}.svc:9090", cluster.namespace);
    cluster.apply(&pool_yaml("fleet", 1, 10));
    cluster
        .wait_pool("fleet", "one worker ready", |s| s["readyWorkers"] == 1)
        .await;
    cluster.apply(
        &[
            pooled_sf_transport_yaml("live", &host, "fleet", false),
            pooled_sf_transport_yaml("outage", &nowhere, "fleet", false),
            pooled_sf_transport_yaml("paused", &host, "fleet", false),
        ]
        .join("---\n"),
    );
    let worker = "ferry-wp-fleet-0";
    for name in ["live", "outage", "paused"] {
        cluster
            .wait_transport(name, "placed and Ready", |s| {
                ready(s) == "True" && s["placement"]["worker"] == worker
            })
            .await;
    }
    delivered_and_up(&cluster, "live").await;

    // A connection in the pool runs on the same worker; stopped, it stops there (the worker
    // goes on for the others) and starts again. Without cluster DNS it writes to the host.
    let source = cluster.run_pod("crm-source", &SOURCE, 9091).await;
    let pooled_connection =
        connection_yaml("crm", &source, &format!("http: {{url: {host}/orders}}")).replace(
            "spec:\n  started: true",
            "spec:\n  workerPool: fleet\n  started: true",
        );
    cluster.apply(&pooled_connection);
    let running = cluster
        .wait_connection("crm", "Running on the pool's worker", |s| {
            s["status"] == "Running" && s["placement"]["worker"] == worker
        })
        .await;
    assert_eq!(running["placement"]["workerPool"], "fleet", "{running}");
    cluster.patch("connection/crm", json!({"spec": {"started": false}}));
    cluster
        .wait_connection("crm", "Disabled", |s| s["status"] == "Disabled")
        .await;
    if cluster.env.process_kubelet {
        let (token, http, base) = pool_admin(&cluster, worker).await;
        let hosted: Value = http
            .get(format!("{base}/v1/connections/{}/crm", cluster.namespace))
            .header("Ferry-Token", token)
            .send()
            .await
            .expect("the worker answers")
            .json()
            .await
            .expect("a report");
        assert_eq!(
            hosted["status"], "Disabled",
            "stopped on the worker: {hosted}"
        );
    }
    cluster
        .wait_transport("live", "still Up", |s| s["state"] == "Up")
        .await;
    cluster.patch("connection/crm", json!({"spec": {"started": true}}));
    cluster
        .wait_connection("crm", "Running again", |s| s["status"] == "Running")
        .await;

    // Suspending one touches no other: the others keep their state and take transactions.
    cluster.patch("transport/paused", json!({"spec": {"suspended": true}}));
    cluster
        .wait_transport("paused", "Suspended", |s| s["state"] == "Suspended")
        .await;
    let (code, body) = cluster.ingest("live", r#"{"order":2}"#).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = cluster.ingest("outage", r#"{"order":3}"#).await;
    assert_eq!(code, 202, "stored: {body}");
    cluster
        .wait_transport("outage", "Store and Forward", |s| {
            s["state"] == "Store and Forward"
        })
        .await;

    // A transport the worker hosts but no Transport object places there (as one deleted while
    // the worker was down, which is hosted again when it restarts): the pool's sweep tells
    // the worker to stop hosting it.
    if cluster.env.process_kubelet {
        let (token, http, base) = pool_admin(&cluster, worker).await;
        let put = http
            .put(format!("{base}/v1/transports/{}/stray", cluster.namespace))
            .header("Ferry-Token", token)
            .json(&json!({
                "apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
                "metadata": {"name": "stray", "namespace": cluster.namespace, "generation": 1},
                // Its own reclaimPolicy is Delete: the sweep removes what it kept too.
                "spec": {
                    "host": {"url": format!("{nowhere}/ingest")},
                    "storage": {"reclaimPolicy": "Delete"},
                },
            }))
            .send()
            .await
            .expect("the worker answers");
        assert_eq!(put.status(), 201);
        assert_eq!(stray_hosted(&cluster, worker).await, Some(true));
    }

    // kill -9 of the pool's worker while producers post to live and outage.
    let done = std::sync::atomic::AtomicBool::new(false);
    let produce = |transport: &'static str, answer: u16| {
        let (cluster, done) = (&cluster, &done);
        async move {
            let mut acknowledged = Vec::new();
            let mut order = 100;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                order += 1;
                let payload = format!(r#"{{"order":{order},"to":"{transport}"}}"#);
                match cluster.try_ingest(transport, transport, &payload).await {
                    Ok((code, _)) if code == answer => acknowledged.push(payload),
                    Ok(_) | Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            acknowledged
        }
    };
    let kill = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Every transport it hosts says it is away, then that it is back.
        let hosted = ["live", "outage", "paused"];
        let back = pod_away_and_back(&cluster, worker, &hosted, Away::Kill9).await;
        // A little more load on the worker as it is again.
        tokio::time::sleep(Duration::from_secs(2)).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        back
    };
    let (delivered, stored, back) =
        tokio::join!(produce("live", 200), produce("outage", 202), kill);
    assert_eq!(back[2]["state"], "Suspended", "T8: {}", back[2]);
    assert!(
        !delivered.is_empty() && !stored.is_empty(),
        "load before the kill: {} delivered, {} stored",
        delivered.len(),
        stored.len()
    );

    // Every transport in its documented state again, nothing acknowledged lost.
    let queued = stored.len() + 1;
    let outage = cluster
        .wait_transport(
            "outage",
            &format!("its queue back with the {queued} answered stored"),
            // More may be queued: one stored as the kill cut its answer off.
            |s| {
                s["state"] == "Store and Forward"
                    && s["queue"]["messages"].as_u64() >= Some(queued as u64)
            },
        )
        .await;
    assert_eq!(outage["totals"]["forwarded"], 0, "{outage}");
    cluster
        .wait_transport("paused", "still Suspended", |s| {
            s["state"] == "Suspended" && ready(s) == "True"
        })
        .await;
    cluster
        .wait_transport("live", "Up again", |s| {
            s["state"] == "Up" || s["state"] == "Down"
        })
        .await;
    let arrived = cluster.pod_log("erp-host");
    for payload in &delivered {
        let text = payload.replace('\n', " ");
        assert!(arrived.contains(&text), "{text} never reached the host");
    }

    if cluster.env.process_kubelet {
        eventually(
            "the stray transport swept from the restarted worker",
            || async { (stray_hosted(&cluster, worker).await == Some(false)).then_some(()) },
        )
        .await;
        // Nothing of it is kept either: a purge finds nothing to remove.
        let (token, http, base) = pool_admin(&cluster, worker).await;
        let purge = http
            .delete(format!(
                "{base}/v1/transports/{}/stray?purge=true",
                cluster.namespace
            ))
            .header("Ferry-Token", token)
            .send()
            .await
            .expect("the worker answers");
        assert_eq!(purge.status(), 404, "the sweep purged it");
    }

    // An operator restart moves nothing and restarts no worker.
    let placements = |names: [&'static str; 3]| {
        let cluster = &cluster;
        async move {
            let mut out = Vec::new();
            for name in names {
                let status = cluster.wait_transport(name, "placed", |_| true).await;
                out.push(status["placement"].clone());
            }
            out
        }
    };
    let placed = placements(["live", "outage", "paused"]).await;
    let running = incarnation(&cluster, worker).await;
    operator.restart();
    eventually("the restarted operator reconciled them", || async {
        operator.readyz().await?;
        let metrics = operator.metrics().await;
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("ferry_operator_reconciles_total{") && l.contains("Transport")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .any(|n| n >= 3.0)
            .then_some(())
    })
    .await;
    assert_eq!(placements(["live", "outage", "paused"]).await, placed);
    assert_eq!(
        incarnation(&cluster, worker).await,
        running,
        "the worker was not restarted"
    );
    let (code, body) = cluster.ingest("live", r#"{"order":999}"#).await;
    assert_eq!(code, 200, "{body}");

    // Deleted with reclaimPolicy Retain (the default), its queue stays on the pool worker's
    // volume: a Transport of the same name placed there finds it again. Deleted with Delete,
    // nothing of it stays: the next one of that name starts empty.
    let outage_yaml = pooled_sf_transport_yaml("outage", &nowhere, "fleet", false);
    let recreated = |what: &'static str, holds: fn(&Value) -> bool| {
        let (cluster, outage_yaml) = (&cluster, &outage_yaml);
        async move {
            cluster
                .kubectl(&["delete", "transport", "outage", "--timeout=60s"])
                .unwrap_or_else(|e| panic!("kubectl delete: {e}"));
            cluster.apply(outage_yaml);
            cluster
                .wait_transport("outage", what, |s| {
                    s["placement"]["worker"] == worker && s["queue"].is_object() && holds(s)
                })
                .await
        }
    };
    let kept = recreated("placed again, with its queue kept (Retain)", |s| {
        s["queue"]["messages"].as_u64() > Some(0)
    })
    .await;
    assert!(
        kept["queue"]["messages"].as_u64() >= Some(queued as u64),
        "{kept}"
    );
    cluster.patch(
        "transport/outage",
        json!({"spec": {"storage": {"reclaimPolicy": "Delete"}}}),
    );
    let empty = recreated("placed again, empty (Delete)", |s| {
        s["queue"]["messages"] == 0
    })
    .await;
    assert_eq!(empty["queue"]["bytes"], 0, "{empty}");
    assert_eq!(empty["totals"]["stored"], 0, "{empty}");
}

/// Worker `name` has the operator's NetworkPolicy, controlled by its resource: its port only
/// from the peers it names (every pod of the namespace among them when
/// `own_namespace_producers`), and egress anywhere but the metadata range.
fn fenced(cluster: &Cluster, name: &str, own_namespace_producers: bool) {
    let policy = cluster
        .kubectl(&["get", "networkpolicy", name, "-o", "json"])
        .unwrap_or_else(|e| panic!("the NetworkPolicy of {name}: {e}"));
    let policy: Value = serde_json::from_str(&policy).expect("JSON");
    let spec = &policy["spec"];
    assert_eq!(
        spec["podSelector"]["matchLabels"]["app.kubernetes.io/instance"], name,
        "{policy}"
    );
    assert_eq!(
        spec["policyTypes"],
        json!(["Ingress", "Egress"]),
        "{policy}"
    );
    assert_eq!(
        spec["ingress"][0]["ports"],
        json!([{"port": 8080, "protocol": "TCP"}]),
        "{policy}"
    );
    let from = spec["ingress"][0]["from"].as_array().expect("from");
    assert_eq!(
        from.iter().any(|p| *p == json!({"podSelector": {}})),
        own_namespace_producers,
        "{policy}"
    );
    let blocks: Vec<&Value> = spec["egress"]
        .as_array()
        .expect("egress")
        .iter()
        .flat_map(|rule| rule["to"].as_array().into_iter().flatten())
        .filter(|peer| peer.get("ipBlock").is_some())
        .collect();
    let v4 = blocks
        .iter()
        .find(|b| b["ipBlock"]["cidr"] == "0.0.0.0/0")
        .unwrap_or_else(|| panic!("no IPv4 egress: {policy}"));
    assert!(
        v4["ipBlock"]["except"]
            .as_array()
            .is_some_and(|e| e.contains(&json!("169.254.0.0/16"))),
        "the metadata range is excluded: {policy}"
    );
    assert_eq!(
        policy["metadata"]["ownerReferences"][0]["controller"], true,
        "{policy}"
    );
}

/// The chart's RBAC for the operator with `operator.watchNamespaces` set to `namespaces`,
/// released in the first of them: `helm template` of its ServiceAccount and roles.
fn chart_rbac(namespaces: &[&str]) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| format!("{root}/target"));
    let helm = std::process::Command::new("python3")
        .args([".ci/get-helm.py", &format!("{target}/ci-tools")])
        .current_dir(root)
        .output()
        .expect("python3 .ci/get-helm.py");
    assert!(helm.status.success(), "{helm:?}");
    let helm = String::from_utf8_lossy(&helm.stdout).trim().to_owned();
    let rendered = std::process::Command::new(&helm)
        .args([
            "template",
            "ferry",
            "charts/ferry",
            "--namespace",
            namespaces[0],
        ])
        .arg("--set")
        .arg(format!(
            "operator.watchNamespaces={{{}}}",
            namespaces.join(",")
        ))
        .args([
            "--set",
            "leaderElection.enabled=false",
            "--set",
            "userRoles.enabled=false",
        ])
        .args(["--show-only", "templates/serviceaccount.yaml"])
        .args(["--show-only", "templates/rbac.yaml"])
        .current_dir(root)
        .output()
        .expect("helm template");
    assert!(rendered.status.success(), "{rendered:?}");
    String::from_utf8_lossy(&rendered.stdout).into_owned()
}

/// A kubeconfig for ServiceAccount `namespace/account`: the suite's server and CA, a token of
/// the account.
fn service_account_kubeconfig(
    cluster: &Cluster,
    namespace: &str,
    account: &str,
) -> std::path::PathBuf {
    let admin = cluster::kubectl(
        &cluster.env,
        &["config", "view", "--raw", "--minify", "-o", "json"],
        None,
    )
    .expect("the suite's kubeconfig");
    let admin: Value = serde_json::from_str(&admin).expect("kubeconfig JSON");
    let server = &admin["clusters"][0]["cluster"];
    let token = cluster::kubectl(
        &cluster.env,
        &["-n", namespace, "create", "token", account, "--duration=1h"],
        None,
    )
    .expect("a token of the account");
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": server}],
        "users": [{"name": account, "user": {"token": token.trim()}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": account}}],
        "current-context": "e2e",
    });
    let path = std::env::temp_dir().join(format!("ferry-e2e-{namespace}-{account}.kubeconfig"));
    std::fs::write(&path, config.to_string()).expect("kubeconfig written");
    path
}

/// `operator.watchNamespaces: [a, b]`: the operator runs as its ServiceAccount with nothing but
/// the chart's Roles in the two namespaces, runs a Transport in each, and can read no Secret
/// elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_in_two_namespaces_needs_only_their_roles() {
    let Some(env) = env("an_operator_in_two_namespaces_needs_only_their_roles") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(env, "scoped").await;
    let a = cluster.namespace.clone();
    let b = cluster.another_namespace("b");
    let rbac = chart_rbac(&[&a, &b]);
    cluster::kubectl(&cluster.env, &["apply", "-f", "-"], Some(&rbac))
        .unwrap_or_else(|e| panic!("the chart's RBAC: {e}\n{rbac}"));
    let account = format!("system:serviceaccount:{a}:ferry");
    let can = |verb: &str, what: &str, namespace: &str| {
        cluster::kubectl(
            &cluster.env,
            &[
                "auth", "can-i", verb, what, "-n", namespace, "--as", &account,
            ],
            None,
        )
        .is_ok_and(|answer| answer.trim() == "yes")
    };
    assert!(can("get", "secrets", &a) && can("get", "secrets", &b));
    assert!(!can("get", "secrets", "default") && !can("list", "secrets", "kube-system"));
    let everywhere = cluster::kubectl(
        &cluster.env,
        &[
            "auth",
            "can-i",
            "list",
            "secrets",
            "--all-namespaces",
            "--as",
            &account,
        ],
        None,
    );
    assert!(!everywhere.is_ok_and(|answer| answer.trim() == "yes"));

    let kubeconfig = service_account_kubeconfig(&cluster, &a, "ferry");
    let _operator = cluster::Operator::as_user(
        &cluster,
        kubeconfig,
        &[
            "--namespace",
            &format!("{a},{b}"),
            // Its own namespace (the release's, in a pod): the workers' CA is kept there.
            "--lease-namespace",
            &a,
            "--status-interval",
            "1s",
        ],
    );
    let host = cluster.run_pod("erp-host", &SINK, 9090).await;
    cluster.apply(&transport_yaml("erp", &host, "Delete"));
    cluster::kubectl(
        &cluster.env,
        &["-n", &b, "apply", "-f", "-"],
        Some(&transport_yaml("mes", &host, "Delete")),
    )
    .expect("a Transport in b");
    delivered_and_up(&cluster, "erp").await;
    // The one in b: its worker made and pushed (Ready is its report) by the same operator.
    let transports_b: kube::Api<ferry::api::Transport> =
        kube::Api::namespaced(cluster.client.clone(), &b);
    eventually("the Transport in the second namespace is Ready", || {
        let transports_b = transports_b.clone();
        async move {
            let status = serde_json::to_value(transports_b.get("mes").await.ok()?.status?).ok()?;
            (ready(&status) == "True").then_some(())
        }
    })
    .await;
    for secret in ["ferry-tp-mes", "ferry-tp-mes-admin"] {
        cluster::kubectl(&cluster.env, &["-n", &b, "get", "secret", secret], None)
            .unwrap_or_else(|e| panic!("{secret} in {b}: {e}"));
    }
    // TLS with the chart's roles only: the CA kept in the operator's namespace, its bundle
    // published in each watched namespace.
    cluster::kubectl(&cluster.env, &["-n", &a, "get", "secret", "ferry-ca"], None)
        .unwrap_or_else(|e| panic!("the CA's Secret in {a}: {e}"));
    for namespace in [&a, &b] {
        let bundle = cluster
            .published_bundle(namespace)
            .unwrap_or_else(|e| panic!("the ConfigMap ferry-ca in {namespace}: {e}"));
        assert!(
            bundle.contains("BEGIN CERTIFICATE"),
            "{namespace}: {bundle}"
        );
    }
}

/// The process kubelet runs `scheme: HTTPS` readiness probes (without verifying, as a kubelet
/// does): a worker serving TLS only, its certificate from a Secret volume, becomes Ready; a
/// client that trusts the issuer reaches it, plain HTTP does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_kubelet_probes_a_tls_worker_over_https() {
    let Some(env) = env("the_process_kubelet_probes_a_tls_worker_over_https") else {
        return;
    };
    if !env.process_kubelet {
        cluster::say("SKIPPED: the process kubelet's HTTPS probes (a real kubelet has its own)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(env, "https-probe").await;
    let ca = certs::TestCa::new("ferry e2e CA");
    let (cert, key) = ca.issue(&["tls-worker"]);
    let data = |text: &str| json!(k8s_openapi::ByteString(text.as_bytes().to_vec()));
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "tls-worker"},
        "data": {
            "tls.crt": data(&cert), "tls.key": data(&key),
            "admin-token": data("admin"), "ingest-token": data("ingest"),
        },
    });
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "tls-worker"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "volumes": [
                {"name": "tls", "secret": {"secretName": "tls-worker"}},
                {"name": "data", "emptyDir": {}},
            ],
            "containers": [{
                "name": "main", "image": cluster.env.worker_image,
                "args": ["worker", "--listen", "0.0.0.0:8443", "--data-dir", "/data",
                         "--admin-token-file", "/tls/admin-token",
                         "--ingest-token-file", "/tls/ingest-token",
                         "--tls-cert-file", "/tls/tls.crt", "--tls-key-file", "/tls/tls.key"],
                "ports": [{"name": "https", "containerPort": 8443}],
                "volumeMounts": [
                    {"name": "tls", "mountPath": "/tls"},
                    {"name": "data", "mountPath": "/data"},
                ],
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": "https", "scheme": "HTTPS"}, "periodSeconds": 1},
            }],
        },
    });
    for object in [secret, pod] {
        cluster.apply(&object.to_string());
    }
    let ready = cluster.wait_pod_ready("tls-worker").await;
    let ip = ready["status"]["podIP"]
        .as_str()
        .expect("pod IP")
        .to_owned();
    let address: std::net::SocketAddr = format!("{ip}:8443").parse().expect("address");
    let verified = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem.as_bytes()).expect("CA")])
        .resolve("tls-worker", address)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let answer = verified
        .get("https://tls-worker:8443/readyz")
        .send()
        .await
        .expect("verified TLS");
    assert!(answer.status().is_success(), "{}", answer.status());
    let plain = reqwest::Client::new()
        .get(format!("http://{ip}:8443/readyz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
}

/// Issue 30: the workers' CA renews with an overlap. With a CA of 150 s renewed 100 s ahead
/// (the new CA trusted at once, signing from 50 s before the old one expires) and worker
/// certificates of 60 s renewed 40 s ahead: a producer holding the bundle of before the renewal
/// keeps reaching its worker over verified TLS while both CAs are trusted; the producers'
/// Secret and the namespace's ConfigMap carry both; at the handover the worker gets a
/// certificate from the new CA (the process kubelet refreshes Secret volumes, the worker
/// reloads it without a restart) which the bundle read since the renewal began verifies.
/// Every transaction a producer was answered 200 for is delivered. Not serial: it mostly
/// waits for the clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_renewal_keeps_producers_with_the_earlier_bundle_working() {
    let Some(env) = env("the_ca_renewal_keeps_producers_with_the_earlier_bundle_working") else {
        return;
    };
    let cluster = Cluster::start(env, "renewal").await;
    let namespace = cluster.namespace.clone();
    // Its own CA, kept in the scenario's namespace with these lifetimes.
    let _operator = cluster.operator(&[
        "--lease-namespace",
        &namespace,
        "--ca-validity",
        "150s",
        "--ca-renew-before",
        "100s",
        "--cert-validity",
        "60s",
        "--cert-renew-before",
        "40s",
    ]);
    let host = cluster.run_pod("erp-host", &SINK, 9090).await;
    cluster.apply(&transport_yaml("erp", &host, "Delete"));
    delivered_and_up(&cluster, "erp").await;
    let certificates = |bundle: &str| bundle.matches("BEGIN CERTIFICATE").count();
    let issuer = || async {
        let secret = cluster
            .api::<Secret>()
            .get("ferry-tp-erp-admin")
            .await
            .ok()?;
        let info = secret
            .metadata
            .annotations?
            .get("ferry.dev/certificate")?
            .clone();
        let info: Value = serde_json::from_str(&info).ok()?;
        info["issuer"].as_str().map(str::to_owned)
    };
    let first_issuer = issuer()
        .await
        .expect("the worker's certificate says who issued it");
    let earlier = cluster
        .secret_key("ferry-tp-erp", "ca.crt")
        .await
        .expect("ca.crt");
    assert_eq!(certificates(&earlier), 1, "one CA before the renewal");
    let token = cluster.ingest_token("erp").await;
    let route = format!("/v1/transports/{namespace}/erp/transactions");
    // The first transaction, by delivered_and_up.
    let answered = std::sync::atomic::AtomicU64::new(1);
    let client = |bundle: String| {
        let cluster = &cluster;
        async move {
            let pod = cluster.wait_pod_ready("ferry-tp-erp-0").await;
            let ip = pod["status"]["podIP"].as_str().expect("pod IP").to_owned();
            cluster.worker_http_trusting(Some(&bundle), "ferry-tp-erp-0", &ip)
        }
    };
    // Whether a client holding `bundle` verifies what the worker serves now.
    let verifies = |bundle: String| {
        let client = &client;
        async move {
            let (http, base) = client(bundle).await;
            http.get(format!("{base}/readyz")).send().await.is_ok()
        }
    };
    let post = |bundle: String, order: u32| {
        let (client, token, route, answered) = (&client, &token, &route, &answered);
        async move {
            let (http, base) = client(bundle).await;
            let status = http
                .post(format!("{base}{route}"))
                .header("Ferry-Token", token)
                .json(&json!({"order": order}))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .map_err(|e| ferry::error_chain(&e))?;
            if status == 200 {
                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok::<u16, String>(status)
        }
    };

    // The renewal begins: both CAs in the producers' Secret; the worker still serves the
    // certificate the first CA issued, so the earlier bundle keeps verifying it.
    let both = eventually("the producers' Secret holds the new CA too", || async {
        let bundle = cluster.secret_key("ferry-tp-erp", "ca.crt").await?;
        (certificates(&bundle) == 2).then_some(bundle)
    })
    .await;
    assert!(
        both.contains(earlier.trim_end()),
        "the first CA is still trusted"
    );
    assert_eq!(
        post(earlier.clone(), 2).await,
        Ok(200),
        "the earlier bundle, during the overlap"
    );
    assert_eq!(
        post(both.clone(), 3).await,
        Ok(200),
        "the renewed bundle, during the overlap"
    );
    let published = cluster
        .published_bundle(&namespace)
        .expect("the ConfigMap ferry-ca");
    assert!(published.contains(earlier.trim_end()), "{published}");
    assert_eq!(certificates(&published), 2, "{published}");

    // The handover: the new CA signs; the worker serves its new certificate, which the bundle
    // read since the renewal began verifies (and the first bundle alone no longer does).
    eventually("the worker's certificate comes from the new CA", || async {
        (issuer().await? != first_issuer).then_some(())
    })
    .await;
    eventually("the worker serves the new CA's certificate", || async {
        (!verifies(earlier.clone()).await).then_some(())
    })
    .await;
    assert_eq!(
        post(both.clone(), 4).await,
        Ok(200),
        "the renewed bundle, after the handover"
    );
    let answered = answered.into_inner();
    cluster
        .wait_transport("erp", "every transaction answered 200 delivered", |s| {
            s["totals"]["delivered"] == answered
        })
        .await;
}

/// Issue 33: `ferry.dev/reconcile: paused` (`kubectl ferry pause`) holds the operator's hands
/// off a transport: a spec change is not pushed (the worker keeps delivering as before) and a
/// deleted NetworkPolicy is not repaired, while the status keeps following the worker with
/// `ReconcilePaused=True`; `kubectl ferry unpause` applies both at once.
#[tokio::test]
async fn a_paused_transport_is_left_alone_until_unpaused() {
    let Some(env) = env("a_paused_transport_is_left_alone_until_unpaused") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(env, "paused").await;
    let _operator = cluster.operator(&[]);
    let host = cluster.run_pod("erp-host", &SINK, 9090).await;
    cluster.apply(&transport_yaml("erp", &host, "Delete"));
    delivered_and_up(&cluster, "erp").await;

    let said = kubectl_ferry(&cluster, &["pause", "transport", "erp"]);
    assert!(said.contains("reconciliation paused"), "{said}");
    cluster
        .wait_transport("erp", "ReconcilePaused", |s| {
            condition(s, "ReconcilePaused")["status"] == "True"
        })
        .await;
    cluster
        .kubectl(&["delete", "networkpolicy", "ferry-tp-erp", "--wait=false"])
        .expect("delete the NetworkPolicy");
    cluster.patch("transport/erp", json!({"spec": {"suspended": true}}));
    let generation = cluster
        .transports()
        .get("erp")
        .await
        .expect("the transport")
        .metadata
        .generation
        .expect("a generation");
    // Evidence the operator reconciled the new generation while paused: the condition names it.
    let paused = cluster
        .wait_transport("erp", "the new generation seen, paused", |s| {
            condition(s, "ReconcilePaused")["observedGeneration"] == generation
        })
        .await;
    assert_eq!(
        paused["state"], "Up",
        "not suspended while paused: {paused}"
    );
    assert!(
        paused["observedGeneration"].as_i64() < Some(generation),
        "the worker still runs the earlier spec: {paused}"
    );
    let (code, body) = cluster.ingest("erp", r#"{"order":2}"#).await;
    assert_eq!(code, 200, "still delivering: {body}");
    assert!(
        cluster
            .kubectl(&["get", "networkpolicy", "ferry-tp-erp", "-o", "name"])
            .is_err(),
        "the NetworkPolicy was repaired while paused"
    );

    let said = kubectl_ferry(&cluster, &["unpause", "transport", "erp"]);
    assert!(said.contains("reconciliation resumed"), "{said}");
    let resumed = cluster
        .wait_transport("erp", "the spec applied once unpaused", |s| {
            s["state"] == "Suspended"
                && s["observedGeneration"] == generation
                && condition(s, "ReconcilePaused").is_null()
        })
        .await;
    assert_eq!(resumed["totals"]["delivered"], 2, "{resumed}");
    eventually("the NetworkPolicy back", || async {
        cluster
            .kubectl(&["get", "networkpolicy", "ferry-tp-erp", "-o", "name"])
            .ok()
    })
    .await;
}

/// The `ferry.dev/restart` annotation a resource carries now.
async fn restart_asked<K>(api: kube::Api<K>, name: &str) -> String
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let object = api.get(name).await.expect("the resource");
    object
        .meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get("ferry.dev/restart").cloned())
        .expect("kubectl ferry restart set the annotation")
}

/// `kubectl ferry restart` (issue 33 part 3): a transport's runtime restarts once on its worker
/// — the pod untouched, its queue, totals and suspension kept (T10) — and a connection begins a
/// new startup through the startup queue from its watermarks (Q2); the status records the
/// value, an Event `Restarted` says so, and a later reconcile does not carry it out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_restarts_the_runtime_once_and_not_the_pod() {
    let Some(env) = env("a_restart_restarts_the_runtime_once_and_not_the_pod") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(env, "rerun").await;
    let _operator = cluster.operator(&[]);
    let host = cluster.run_pod("erp-host", &SINK, 9090).await;
    cluster.apply(&transport_yaml("erp", &host, "Delete"));
    delivered_and_up(&cluster, "erp").await;

    // Two queued while suspended.
    cluster.patch("transport/erp", json!({"spec": {"suspended": true}}));
    cluster
        .wait_transport("erp", "Suspended", |s| s["state"] == "Suspended")
        .await;
    for order in 2..4 {
        let (code, body) = cluster
            .ingest("erp", &format!(r#"{{"order":{order}}}"#))
            .await;
        assert_eq!((code, &body["outcome"]), (202, &json!("stored")), "{body}");
    }
    let before = cluster
        .wait_transport("erp", "S&F Suspended, 2 queued", |s| {
            s["state"] == "S&F Suspended" && s["queue"]["messages"] == 2
        })
        .await;
    let pod = incarnation(&cluster, "ferry-tp-erp-0").await;

    let said = kubectl_ferry(&cluster, &["restart", "transport", "erp"]);
    assert!(said.contains("restart asked"), "{said}");
    let value = restart_asked(cluster.transports(), "erp").await;
    let restarted = cluster
        .wait_transport("erp", "the restart carried out", |s| {
            s["lastHandledRestart"] == value.as_str()
        })
        .await;
    assert_eq!(restarted["state"], "S&F Suspended", "{restarted}");
    assert_eq!(restarted["queue"]["messages"], 2, "{restarted}");
    assert_eq!(restarted["totals"], before["totals"], "{restarted}");
    assert_eq!(
        incarnation(&cluster, "ferry-tp-erp-0").await,
        pod,
        "the pod was not restarted"
    );
    let note = eventually("an Event Restarted for erp", || async {
        event_note(&cluster, "erp", "Restarted")
    })
    .await;
    assert!(note.contains(&value), "{note}");
    let restarts = || {
        cluster
            .pod_log("ferry-tp-erp-0")
            .matches("restarting its runtime")
            .count()
    };
    assert_eq!(restarts(), 1);

    // A spec change later is pushed without the value: carried out once.
    cluster.patch("transport/erp", json!({"spec": {"suspended": false}}));
    let resumed = cluster
        .wait_transport("erp", "Up, the queue forwarded", |s| {
            s["state"] == "Up" && s["totals"]["forwarded"] == 2
        })
        .await;
    assert_eq!(resumed["lastHandledRestart"], value.as_str());
    assert_eq!(restarts(), 1, "the same value was carried out again");

    // A connection: a new startup from its watermarks, its pod untouched.
    let source = cluster.run_pod("crm", &SOURCE, 9091).await;
    let target = format!("http: {{url: {host}/orders}}");
    cluster.apply(&connection_yaml("crm", &source, &target));
    let running = cluster
        .wait_connection("crm", "Running", |s| s["status"] == "Running")
        .await;
    let pod = incarnation(&cluster, "ferry-conn-crm-0").await;
    let said = kubectl_ferry(&cluster, &["restart", "connection", "crm"]);
    assert!(said.contains("restart asked"), "{said}");
    let value = restart_asked(cluster.connections(), "crm").await;
    let again = cluster
        .wait_connection("crm", "restarted, then Running again", |s| {
            s["lastHandledRestart"] == value.as_str()
                && s["status"] == "Running"
                && s["iteration"].as_u64() > running["iteration"].as_u64()
        })
        .await;
    // Its records synced count on, and its watermark is kept (a resync would start from none).
    assert!(
        again["syncSets"][0]["recordsSynced"].as_u64()
            >= running["syncSets"][0]["recordsSynced"].as_u64()
            && again["syncSets"][0]["watermark"].is_string(),
        "from its watermark: {running} {again}"
    );
    assert_eq!(
        incarnation(&cluster, "ferry-conn-crm-0").await,
        pod,
        "the pod was not restarted"
    );
    assert_eq!(
        cluster
            .pod_log("ferry-conn-crm-0")
            .matches("restarting its runtime")
            .count(),
        1
    );
    eventually("an Event Restarted for crm", || async {
        event_note(&cluster, "crm", "Restarted")
    })
    .await;
}

/// Issue 33 part 1: an upgrade (a new `--worker-image`) on 20 live transports restarts their
/// workers at most `--max-unavailable-workers` at a time — sampled from the pods all through
/// the rollout — while producers keep sending; every transaction acknowledged reaches the host,
/// and each worker restarted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_restarts_workers_a_few_at_a_time_and_loses_nothing() {
    let Some(env) = env("an_upgrade_restarts_workers_a_few_at_a_time_and_loses_nothing") else {
        return;
    };
    // The benchmark's figures: FERRY_E2E_ROLLOUT_TRANSPORTS=200 FERRY_E2E_ROLLOUT_AT_ONCE=10%.
    let setting =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let transports: usize = setting("FERRY_E2E_ROLLOUT_TRANSPORTS", "20")
        .parse()
        .expect("FERRY_E2E_ROLLOUT_TRANSPORTS: a number");
    let max_unavailable = setting("FERRY_E2E_ROLLOUT_AT_ONCE", "2");
    let at_once = match max_unavailable.strip_suffix('%') {
        Some(percent) => {
            (transports * percent.parse::<usize>().expect("a percentage") / 100).max(1)
        }
        None => max_unavailable
            .parse()
            .expect("FERRY_E2E_ROLLOUT_AT_ONCE: a number or N%"),
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(env, "rollout").await;
    let mut operator = cluster.operator(&["--max-unavailable-workers", &max_unavailable]);
    // A sink that prints what arrives: the acknowledged ones are looked for in its log.
    let host = cluster
        .run_pod("erp-host", &["sink", "--listen", "0.0.0.0:9090"], 9090)
        .await;
    let names: Vec<String> = (0..transports).map(|i| format!("tp{i:03}")).collect();
    let all: Vec<String> = names
        .iter()
        .map(|name| transport_yaml(name, &host, "Delete"))
        .collect();
    cluster.apply(&all.join("---\n"));
    for name in &names {
        delivered_and_up(&cluster, name).await;
    }
    let pods: Vec<String> = names.iter().map(|n| format!("ferry-tp-{n}-0")).collect();
    let mut before = Vec::new();
    for pod in &pods {
        before.push(incarnation(&cluster, pod).await);
    }

    // Producers keep sending; a sampler counts the worker pods that are not Ready.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producing = {
        let (cluster, names, stop) = (&cluster, names.clone(), stop.clone());
        async move {
            let mut acknowledged = Vec::new();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for name in &names {
                    n += 1;
                    let payload = format!(r#"{{"transport":"{name}","n":{n}}}"#);
                    if let Ok((200 | 202, _)) = cluster.try_ingest(name, name, &payload).await {
                        acknowledged.push(payload);
                    }
                }
            }
            acknowledged
        }
    };
    let sampling = {
        let (cluster, pods, stop) = (&cluster, pods.clone(), stop.clone());
        async move {
            let mut most = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(list) = cluster.api::<Pod>().list(&Default::default()).await {
                    let ready: std::collections::BTreeSet<String> = list
                        .items
                        .iter()
                        .filter(|p| {
                            p.metadata.deletion_timestamp.is_none()
                                && p.status
                                    .as_ref()
                                    .and_then(|s| s.conditions.as_ref())
                                    .is_some_and(|c| {
                                        c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                                    })
                        })
                        .filter_map(|p| p.metadata.name.clone())
                        .collect();
                    most = most.max(pods.iter().filter(|p| !ready.contains(*p)).count());
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            most
        }
    };
    let upgrading = async {
        let image = format!("{}-next", cluster.env.worker_image);
        operator.restart_with("--worker-image", &image);
        let started = std::time::Instant::now();
        // Each wave may take as long as one wait.
        let waves = transports.div_ceil(at_once);
        let deadline = started + cluster::WAIT * u32::try_from(waves).unwrap_or(u32::MAX);
        let every_worker_new = || async {
            for (pod, was) in pods.iter().zip(&before) {
                let set = cluster
                    .api::<StatefulSet>()
                    .get(pod.trim_end_matches("-0"))
                    .await
                    .ok()?;
                let template = set.spec?.template.spec?;
                (template.containers.first()?.image.as_deref() == Some(image.as_str()))
                    .then_some(())?;
                let now = incarnation(&cluster, pod).await;
                (now.is_some() && now.as_ref().map(|n| &n.0) != was.as_ref().map(|w| &w.0))
                    .then_some(())?;
            }
            Some(())
        };
        while every_worker_new().await.is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for every worker on the new image, new and Ready ({waves} waves)"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        for name in &names {
            cluster
                .wait_transport(name, "Ready after the rollout", |s| ready(s) == "True")
                .await;
        }
        let took = started.elapsed();
        // A last round of producing after the rollout, then stop.
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        took
    };
    let (acknowledged, most, took) = tokio::join!(producing, sampling, upgrading);
    println!(
        "rollout of {transports} workers, at most {at_once} at once: {took:.1?}; at most {most} worker pods not Ready at one sample; {} transactions acknowledged meanwhile",
        acknowledged.len()
    );
    assert!(most <= at_once, "{most} workers were not Ready at once");
    assert!(most >= 1, "the sampler saw no worker restart");
    assert!(!acknowledged.is_empty());
    for name in &names {
        cluster
            .wait_transport(name, "its queue forwarded", |s| s["queue"]["messages"] == 0)
            .await;
    }
    let arrived = cluster.pod_log("erp-host");
    for payload in &acknowledged {
        assert!(
            arrived.contains(payload.as_str()),
            "{payload} was acknowledged and never reached the host"
        );
    }
    let metrics = operator.metrics().await;
    assert!(
        metrics.contains(&format!(
            "ferry_operator_worker_rollouts_completed_total {transports}"
        )),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("rollouts"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(metrics.contains("ferry_operator_worker_rollouts_in_progress 0"));
    eventually("a WorkerRollout Event", || async {
        event_note(&cluster, "tp000", "WorkerRollout")
    })
    .await;
}

/// Issue 33 part 1: a worker that does not come back new and Ready within `--rollout-timeout`
/// stops the rollout — a Warning Event, the stuck gauge — and no other worker restarts until
/// it is Ready; then the rollout goes on by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_does_not_come_back_stops_the_rollout() {
    let Some(env) = env("a_worker_that_does_not_come_back_stops_the_rollout") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(env, "stuckroll").await;
    let mut operator =
        cluster.operator(&["--max-unavailable-workers", "1", "--rollout-timeout", "5s"]);
    let host = cluster.run_pod("erp-host", &SINK, 9090).await;
    let names = ["one", "two", "three"];
    let all: Vec<String> = names
        .iter()
        .map(|name| transport_yaml(name, &host, "Delete"))
        .collect();
    cluster.apply(&all.join("---\n"));
    for name in names {
        cluster
            .wait_transport(name, "Ready", |s| ready(s) == "True")
            .await;
    }
    let pods: Vec<String> = names.iter().map(|n| format!("ferry-tp-{n}-0")).collect();
    // No worker pod comes back once it is gone (a node that cannot run the new image).
    let held: Vec<_> = pods
        .iter()
        .filter_map(|pod| cluster.hold_pod(pod))
        .collect();
    if held.is_empty() {
        println!(
            "a cluster with kubelets cannot hold a pod away: the stuck rollout is not run here"
        );
        return;
    }
    let image = format!("{}-next", cluster.env.worker_image);
    operator.restart_with("--worker-image", &image);
    let on_new_image = || async {
        let mut new = 0;
        for name in names {
            let set = cluster
                .api::<StatefulSet>()
                .get(&format!("ferry-tp-{name}"))
                .await
                .expect("its StatefulSet");
            let image_now = set
                .spec
                .and_then(|s| s.template.spec)
                .and_then(|p| p.containers.first().and_then(|c| c.image.clone()));
            new += usize::from(image_now.as_deref() == Some(image.as_str()));
        }
        new
    };
    let note = eventually("a Warning Event WorkerRolloutStuck", || async {
        names
            .iter()
            .find_map(|name| event_note(&cluster, name, "WorkerRolloutStuck"))
    })
    .await;
    assert!(note.contains("--rollout-timeout"), "{note}");
    let metrics = operator.metrics().await;
    assert!(
        metrics.contains("ferry_operator_worker_rollouts_stuck 1"),
        "{metrics}"
    );
    // Stopped: a few more status intervals, and still only the stuck one has the new template.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        on_new_image().await,
        1,
        "the rollout went on past a stuck worker"
    );

    drop(held);
    eventually("the rollout goes on once the worker is Ready", || async {
        (on_new_image().await == names.len()).then_some(())
    })
    .await;
    for name in names {
        cluster
            .wait_transport(name, "Ready after the rollout", |s| ready(s) == "True")
            .await;
    }
    let metrics = operator.metrics().await;
    assert!(
        metrics.contains("ferry_operator_worker_rollouts_stuck 0"),
        "{metrics}"
    );
}

/// Issue 31: a WorkerPool on a replicated NATS JetStream (three servers on loopback). Its
/// transports queue while the host is down; one worker hangs (SIGSTOP: its pod stops being
/// Ready) and a NATS server is killed with -9; after failoverAfter its transports move to the
/// other worker (status.placement, Event Moved, the pool's moves); with the host back every
/// acknowledged transaction arrives once, in order per transport; the hung worker, woken,
/// delivers nothing more; all Up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_on_jetstream_moves_a_hung_workers_transports_and_loses_nothing() {
    let Some(env) = env("a_pool_on_jetstream_moves_a_hung_workers_transports_and_loses_nothing")
    else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let mut nats = nats::NatsCluster::start().await;
    let cluster = Cluster::start(env, "jetstream").await;
    let _operator = cluster.operator(&[]);
    let host = cluster
        .run_pod("erp-host", &["sink", "--listen", "0.0.0.0:9090"], 9090)
        .await;
    cluster.apply(&format!(
        r#"
apiVersion: ferry.dev/v1alpha1
kind: WorkerPool
metadata:
  name: js
spec:
  replicas: 2
  capacity: 10
  failoverAfter: 5s
  queue:
    jetstream:
      url: {}
      replicas: 3
"#,
        nats.url()
    ));
    let pool = cluster
        .wait_pool("js", "two workers ready", |s| {
            s["readyWorkers"] == 2 && ready(s) == "True"
        })
        .await;
    assert_eq!(pool["queue"], "JetStream", "{pool}");
    let set = cluster
        .api::<k8s_openapi::api::apps::v1::StatefulSet>()
        .get("ferry-wp-js")
        .await
        .expect("the pool's StatefulSet");
    assert!(
        set.spec
            .as_ref()
            .and_then(|s| s.volume_claim_templates.as_ref())
            .is_none(),
        "workers on JetStream have no volume of their own"
    );
    let names = ["a", "b", "c", "d"];
    for name in names {
        cluster.apply(&pooled_sf_transport_yaml(name, &host, "js", false));
    }
    for name in names {
        delivered_and_up(&cluster, name).await;
    }
    // The host goes away: what comes now is queued, on a quorum of the streams' replicas.
    cluster.delete_pod_now_and_wait("erp-host", &host).await;
    for n in 0..3 {
        for name in names {
            let payload = format!(r#"{{"t":"{name}-{n}"}}"#);
            let (code, body) = cluster.ingest(name, &payload).await;
            assert_eq!(
                (code, body["outcome"].as_str()),
                (202, Some("stored")),
                "{body}"
            );
        }
    }
    let placed = |status: &Value| {
        status["placement"]["worker"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let mut before = std::collections::BTreeMap::new();
    for name in names {
        let status = cluster.wait_transport(name, "placed", |_| true).await;
        before.insert(name, placed(&status));
    }
    let hung = before.values().next().cloned().expect("a worker");
    let moving: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| before[n] == hung)
        .collect();
    cluster::say(&format!(
        "SIGSTOP {hung} (hosts {moving:?}); kill -9 a NATS server"
    ));
    cluster.signal_worker(&hung, "-STOP");
    nats.kill_node(0);
    let started = std::time::Instant::now();
    for name in &moving {
        cluster
            .wait_transport(name, "moved to the other worker", |s| {
                let worker = s["placement"]["worker"].as_str().unwrap_or("");
                !worker.is_empty() && worker != hung && ready(s) == "True"
            })
            .await;
    }
    cluster::say(&format!(
        "{} transports moved off the hung worker and Ready in {:.1}s (failoverAfter 5s)",
        moving.len(),
        started.elapsed().as_secs_f64()
    ));
    for name in &moving {
        eventually(&format!("a Moved Event of {name}"), || async {
            event_note(&cluster, name, "Moved")
        })
        .await;
    }
    let pool = cluster
        .wait_pool("js", "moves counted", |s| {
            s["moves"].as_u64().unwrap_or(0) >= moving.len() as u64
        })
        .await;
    assert!(
        pool["moves"].as_u64() >= Some(moving.len() as u64),
        "{pool}"
    );

    // The host is back: every acknowledged transaction arrives, once, in order per transport.
    let host_again = cluster
        .run_pod("erp-host", &["sink", "--listen", "0.0.0.0:9090"], 9090)
        .await;
    assert_eq!(host_again, host, "the host pod keeps its address");
    for name in names {
        cluster
            .wait_transport(name, "drained and Up", |s| {
                s["state"] == "Up" && s["queue"]["messages"] == 0 && ready(s) == "True"
            })
            .await;
    }
    let arrived = |log: &str, name: &str| -> Vec<String> {
        log.lines()
            .filter_map(|l| l.split("{\"t\":\"").nth(1))
            .filter_map(|t| t.split('"').next())
            .filter(|t| t.starts_with(&format!("{name}-")))
            .map(str::to_owned)
            .collect()
    };
    let log = cluster.pod_log("erp-host");
    for name in names {
        let want: Vec<String> = (0..3).map(|n| format!("{name}-{n}")).collect();
        assert_eq!(
            arrived(&log, name),
            want,
            "{name}, once each, in order:\n{log}"
        );
    }
    // The hung worker wakes up: it finds its transports taken and delivers nothing more.
    let count = log.lines().filter(|l| l.starts_with('#')).count();
    cluster.signal_worker(&hung, "-CONT");
    cluster.wait_pod_ready(&hung).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = cluster.pod_log("erp-host");
    assert_eq!(
        after.lines().filter(|l| l.starts_with('#')).count(),
        count,
        "the woken worker delivered nothing:\n{after}"
    );
    for name in names {
        let status = cluster
            .wait_transport(name, "Up", |s| s["state"] == "Up")
            .await;
        assert_eq!(status["totals"]["stored"], 3, "{name}: {status}");
        assert_eq!(status["totals"]["forwarded"], 3, "{name}: {status}");
    }
}
