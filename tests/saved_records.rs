//! Saved records across versions of ferry (docs/store-format.md, "Records"): records written
//! by an earlier main are hosted again by this one; a spec field this build does not know
//! survives its saves; a record's own fields are read even when its spec cannot be; a record
//! from a newer ferry is refused by name while the others are hosted.

#![allow(clippy::unwrap_used)]

use std::{path::Path, sync::Arc};

use ferry::{
    connection::runtime::ConnectionRuntime,
    store::{RecordKind, Store},
    transport::runtime::TransportRuntime,
    worker::{Worker, WorkerOptions},
};
use serde_json::{Value, json};

const TRANSPORT: &str = include_str!("fixtures/records/transport-8f94511.json");
const CONNECTION: &str = include_str!("fixtures/records/connection-8f94511.json");

/// A store holding exactly these records, as a worker left it.
async fn store_with(dir: &Path, records: &[(RecordKind, &str, Vec<u8>)]) {
    let store = Store::open(dir).unwrap();
    for (kind, key, raw) in records {
        store.save_record(*kind, key, raw.clone()).await.unwrap();
    }
}

/// A store holding this one transport record at `plant-a/erp`.
async fn store_transport(dir: &Path, record: &Value) {
    let raw = serde_json::to_vec(record).unwrap();
    store_with(dir, &[(RecordKind::Transport, "plant-a/erp", raw)]).await;
}

async fn worker(dir: &Path) -> Arc<Worker> {
    Worker::open(
        WorkerOptions {
            data_dir: dir.to_owned(),
            public_url: "http://127.0.0.1:1".into(),
            forward_window: 1,
            memory_budget: 1 << 20,
            jetstream: None,
        },
        true,
    )
    .await
    .unwrap()
}

fn saved(worker: &Worker, kind: RecordKind, key: &str) -> Value {
    serde_json::from_slice(&worker.store().load_record(kind, key).unwrap().unwrap()).unwrap()
}

#[tokio::test]
async fn records_written_before_versions_are_hosted_again_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    store_with(
        dir.path(),
        &[
            (RecordKind::Transport, "plant-a/erp", TRANSPORT.into()),
            (RecordKind::Connection, "plant-a/crm", CONNECTION.into()),
        ],
    )
    .await;
    let worker = worker(dir.path()).await;

    let transport = worker.get::<TransportRuntime>("plant-a/erp").unwrap();
    let report = transport.report();
    assert_eq!(report.observed_generation, Some(3));
    assert_eq!(
        transport.spec().store_and_forward.time_to_live.to_string(),
        "24h"
    );
    assert_eq!(transport.spec().host.url, "http://127.0.0.1:9/ingest");

    let connection = worker.get::<ConnectionRuntime>("plant-a/crm").unwrap();
    let report = connection.report();
    assert_eq!(report.observed_generation, Some(2));
    assert!(report.iteration >= 5, "{report:?}");
    let orders = &report.sync_sets[0];
    assert_eq!(orders.watermark.as_deref(), Some("1795969337639"));
    assert!(orders.records_synced >= 6, "{report:?}");

    // Saved again in the versioned shape, with the same spec.
    worker.shutdown().await;
    let record = saved(&worker, RecordKind::Transport, "plant-a/erp");
    assert_eq!(record["version"], 1);
    let before: Value = serde_json::from_str(TRANSPORT).unwrap();
    assert_eq!(record["spec"], before["spec"]);
    let record = saved(&worker, RecordKind::Connection, "plant-a/crm");
    assert_eq!(record["version"], 1);
    assert_eq!(
        record["syncSets"]["orders"]["progress"]["watermark"],
        1795969337639.0
    );
}

#[tokio::test]
async fn a_spec_field_this_build_does_not_know_survives_its_saves() {
    let dir = tempfile::tempdir().unwrap();
    let mut record: Value = serde_json::from_str(TRANSPORT).unwrap();
    record["version"] = json!(1);
    record["spec"]["fromANewerFerry"] = json!({"keep": ["me", 1]});
    store_transport(dir.path(), &record).await;
    let worker = worker(dir.path()).await;
    assert!(worker.get::<TransportRuntime>("plant-a/erp").is_some());
    worker.shutdown().await;
    let saved = saved(&worker, RecordKind::Transport, "plant-a/erp");
    assert_eq!(saved["spec"], record["spec"], "{saved}");
}

#[tokio::test]
async fn a_record_whose_spec_cannot_be_read_keeps_its_totals_for_the_desired_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut record: Value = serde_json::from_str(TRANSPORT).unwrap();
    // As if the CRD gained a required field: this build cannot read the saved spec.
    record["spec"] = json!({"hostV2": {"url": "http://127.0.0.1:9/ingest"}});
    record["totals"] = json!({"delivered": 7, "failed": 2});
    store_transport(dir.path(), &record).await;
    let worker = worker(dir.path()).await;
    assert!(
        worker.get::<TransportRuntime>("plant-a/erp").is_none(),
        "not hosted before its desired state arrives"
    );
    let manifest = json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
        "metadata": {"name": "erp", "namespace": "plant-a", "generation": 4},
        "spec": {"host": {"url": "http://127.0.0.1:9/ingest", "timeout": "200ms"}}});
    let (transport, created) = worker
        .apply::<TransportRuntime>(&manifest, Some("plant-a/erp"))
        .await
        .unwrap();
    assert!(created);
    let totals = transport.report().totals;
    assert_eq!((totals.delivered, totals.failed), (7, 2));
}

#[tokio::test]
async fn a_record_from_a_newer_ferry_is_refused_by_name_and_the_others_are_hosted() {
    let dir = tempfile::tempdir().unwrap();
    let mut newer: Value = serde_json::from_str(TRANSPORT).unwrap();
    newer["version"] = json!(2);
    store_with(
        dir.path(),
        &[
            (
                RecordKind::Transport,
                "plant-a/newer",
                serde_json::to_vec(&newer).unwrap(),
            ),
            (RecordKind::Transport, "plant-a/erp", TRANSPORT.into()),
        ],
    )
    .await;
    let worker = worker(dir.path()).await;
    assert!(worker.get::<TransportRuntime>("plant-a/erp").is_some());
    assert!(worker.get::<TransportRuntime>("plant-a/newer").is_none());
    // Its desired state cannot host it either: the record says why.
    let manifest = json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
        "metadata": {"name": "newer", "namespace": "plant-a"},
        "spec": {"host": {"url": "http://127.0.0.1:9/ingest"}}});
    let error = worker
        .apply::<TransportRuntime>(&manifest, Some("plant-a/newer"))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("written by a newer ferry (record version 2"),
        "{error}"
    );
}

#[tokio::test]
async fn a_saved_transport_that_cannot_start_is_left_out_and_the_others_are_hosted() {
    let dir = tempfile::tempdir().unwrap();
    let mut broken: Value = serde_json::from_str(TRANSPORT).unwrap();
    // Readable, but its host client cannot be built: the runtime does not start.
    broken["spec"]["host"]["url"] = json!("not a url");
    store_with(
        dir.path(),
        &[
            (
                RecordKind::Transport,
                "plant-a/broken",
                serde_json::to_vec(&broken).unwrap(),
            ),
            (RecordKind::Transport, "plant-a/erp", TRANSPORT.into()),
            (RecordKind::Connection, "plant-a/crm", CONNECTION.into()),
        ],
    )
    .await;
    let worker = worker(dir.path()).await;
    assert!(worker.get::<TransportRuntime>("plant-a/broken").is_none());
    assert!(worker.get::<TransportRuntime>("plant-a/erp").is_some());
    assert!(worker.get::<ConnectionRuntime>("plant-a/crm").is_some());
}
