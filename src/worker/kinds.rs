//! The kinds the worker hosts: each kind's runtime as a [`HostedRuntime`], and their one
//! registration (`HostedKinds`, `each`). A new kind is its runtime's module, an impl here and
//! a line in each of those two.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use super::{
    Worker, WorkerError,
    hosted::{ForEachKind, Hosted, HostedRuntime},
};
use crate::{
    api::{Connection, ConnectionSpec, Transport, TransportSpec, validate::Resource},
    connection::runtime::{ConnectionError, ConnectionRecord, ConnectionRuntime},
    store::{
        RecordKind, StoreError,
        record::{self, SavedSpec},
    },
    transport::runtime::{Record, RuntimeError, TransportRuntime},
    wire::{self, ConnectionReport, Resolved, TransportReport},
};

/// The runtimes of every kind, one map each.
#[derive(Default)]
pub struct HostedKinds {
    transports: Hosted<TransportRuntime>,
    connections: Hosted<ConnectionRuntime>,
}

/// Do `each` for every kind: transports first, so connections that target one find it hosted
/// when they are re-hosted.
pub fn each<F: ForEachKind>(each: F) -> F {
    each.kind::<TransportRuntime>().kind::<ConnectionRuntime>()
}

/// The trait's methods that each runtime has under the same name (`$failed`: its errors as
/// the worker's).
macro_rules! same_named {
    ($runtime:ty, $report:ty, $failed:ident) => {
        async fn restart(
            self: &Arc<Self>,
            value: String,
            just_started: bool,
        ) -> Result<(), WorkerError> {
            <$runtime>::restart(self, value, just_started)
                .await
                .map_err($failed(self.key()))
        }

        fn key(&self) -> &str {
            <$runtime>::key(self)
        }

        fn report(&self) -> $report {
            <$runtime>::report(self)
        }

        fn reclaim_policy(&self) -> crate::api::storage::ReclaimPolicy {
            <$runtime>::spec(self).storage.reclaim_policy
        }

        async fn stop(&self) -> Result<(), StoreError> {
            <$runtime>::stop(self).await
        }

        async fn pause(&self) -> Result<(), StoreError> {
            <$runtime>::pause(self).await
        }
    };
}

fn transport_failed(key: &str) -> impl FnOnce(RuntimeError) -> WorkerError + '_ {
    move |source| WorkerError::Runtime {
        key: key.to_owned(),
        source,
    }
}

fn connection_failed(key: &str) -> impl FnOnce(ConnectionError) -> WorkerError + '_ {
    move |source| WorkerError::Connection {
        key: key.to_owned(),
        source,
    }
}

/// A saved spec this build cannot read: the resource waits for its desired state.
fn unreadable_spec(key: &str, e: serde_json::Error) -> WorkerError {
    WorkerError::SavedSpec {
        key: key.to_owned(),
        source: e,
    }
}

impl HostedRuntime for TransportRuntime {
    const KIND: wire::Kind = wire::Kind::Transports;
    const RECORD: RecordKind = RecordKind::Transport;
    const KEPT: &'static str = "its queue is kept";
    const PURGED: &'static str = "its queue is removed";
    type Resource = Transport;
    type Beside = ();
    type Desired = (SavedSpec<TransportSpec>, Option<i64>);
    type Report = TransportReport;

    fn hosted(worker: &Worker) -> &Hosted<Self> {
        &worker.kinds.transports
    }

    fn from_manifest(worker: &Worker, doc: &Value) -> Result<(Transport, ()), WorkerError> {
        match worker.validate(doc)? {
            Resource::Transport(t) => Ok((*t, ())),
            Resource::Connection(_) => Err(WorkerError::WrongKind {
                kind: "Connection".into(),
                expected: "Transport",
            }),
        }
    }

    fn desired(transport: Transport, (): ()) -> (ObjectMeta, Self::Desired) {
        let generation = transport.metadata.generation;
        (
            transport.metadata,
            (SavedSpec::new(transport.spec), generation),
        )
    }

    fn saved(key: &str, raw: &[u8]) -> Result<Option<Self::Desired>, WorkerError> {
        let record: Record = record::decode(Self::RECORD, key, raw)?;
        if !record.hosted {
            return Ok(None);
        }
        let spec = SavedSpec::read(record.spec).map_err(|e| unreadable_spec(key, e))?;
        Ok(Some((spec, record.generation)))
    }

    async fn start(
        worker: &Worker,
        key: &str,
        (spec, generation): Self::Desired,
    ) -> Result<Arc<Self>, WorkerError> {
        TransportRuntime::start(
            worker.queue_home.clone(),
            key.to_owned(),
            format!("{}{}", worker.public_url, wire::transactions_path(key)),
            spec,
            generation,
            worker.forward_window,
        )
        .await
        .map_err(transport_failed(key))
    }

    async fn update(
        self: &Arc<Self>,
        (spec, generation): Self::Desired,
    ) -> Result<(), WorkerError> {
        TransportRuntime::update(self, spec, generation)
            .await
            .map_err(transport_failed(self.key()))
    }

    fn moved(&self) -> bool {
        TransportRuntime::moved(self)
    }

    same_named!(TransportRuntime, TransportReport, transport_failed);
}

impl HostedRuntime for ConnectionRuntime {
    const KIND: wire::Kind = wire::Kind::Connections;
    const RECORD: RecordKind = RecordKind::Connection;
    const KEPT: &'static str = "its watermarks are kept";
    const PURGED: &'static str = "its watermarks are removed";
    type Resource = Connection;
    type Beside = Resolved;
    type Desired = (SavedSpec<ConnectionSpec>, Option<i64>, Resolved);
    type Report = ConnectionReport;

    fn hosted(worker: &Worker) -> &Hosted<Self> {
        &worker.kinds.connections
    }

    /// The body may carry a top-level `resolved` object beside `spec`.
    fn from_manifest(worker: &Worker, doc: &Value) -> Result<(Connection, Resolved), WorkerError> {
        let resolved: Resolved = match doc.get("resolved") {
            Some(r) => serde_json::from_value(r.clone())
                .map_err(|e| WorkerError::Resolved(e.to_string()))?,
            None => Resolved::default(),
        };
        let mut manifest = doc.clone();
        if let Some(map) = manifest.as_object_mut() {
            map.remove("resolved");
        }
        match worker.validate(&manifest)? {
            Resource::Connection(c) => Ok((*c, resolved)),
            Resource::Transport(_) => Err(WorkerError::WrongKind {
                kind: "Transport".into(),
                expected: "Connection",
            }),
        }
    }

    fn desired(connection: Connection, resolved: Resolved) -> (ObjectMeta, Self::Desired) {
        let generation = connection.metadata.generation;
        (
            connection.metadata,
            (SavedSpec::new(connection.spec), generation, resolved),
        )
    }

    fn saved(key: &str, raw: &[u8]) -> Result<Option<Self::Desired>, WorkerError> {
        let record: ConnectionRecord = record::decode(Self::RECORD, key, raw)?;
        if !record.hosted {
            return Ok(None);
        }
        let spec = SavedSpec::read(record.spec).map_err(|e| unreadable_spec(key, e))?;
        Ok(Some((spec, record.generation, record.resolved.restored())))
    }

    async fn start(
        worker: &Worker,
        key: &str,
        (spec, generation, resolved): Self::Desired,
    ) -> Result<Arc<Self>, WorkerError> {
        ConnectionRuntime::start(
            worker.store.clone(),
            key.to_owned(),
            spec,
            generation,
            resolved,
        )
        .await
        .map_err(connection_failed(key))
    }

    async fn update(
        self: &Arc<Self>,
        (spec, generation, resolved): Self::Desired,
    ) -> Result<(), WorkerError> {
        ConnectionRuntime::update(self, spec, generation, resolved)
            .await
            .map_err(connection_failed(self.key()))
    }

    same_named!(ConnectionRuntime, ConnectionReport, connection_failed);
}
