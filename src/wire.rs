//! The worker's HTTP contract (docs/worker-api.md): its paths, headers and the JSON bodies
//! the worker answers with and takes beside a manifest. The worker serves it; the operator,
//! the plugin, standalone mode and connections that target a transport speak it. It depends on
//! the resource types alone, so every side compiles against the same shapes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::{
    ConnectionStatusValue, TransportState,
    connection::SyncSetStatus,
    transport::{QueueStatus, Totals},
};

/// The port a worker listens on in its pod.
pub const PORT: u16 = 8080;

/// The header that carries a token (`Authorization: Bearer` works too, except through the
/// API server's pod proxy, which consumes `Authorization`).
pub const TOKEN_HEADER: &str = "ferry-token";
/// A transaction's id, on ingest (optional) and to the host.
pub const TRANSACTION_ID_HEADER: &str = "ferry-transaction-id";
/// `namespace/name` of the transport, to the host.
pub const TRANSPORT_HEADER: &str = "ferry-transport";

/// A top-level field of a transport's PUT beside `spec`: the SHA-256 (hex) of the transport's
/// own ingest token (a pool's worker hosts many transports, each with its producers).
pub const INGEST_TOKEN_SHA256: &str = "ingestTokenSha256";

/// A top-level field of a PUT beside `spec`: restart the resource's runtime on the worker once
/// for this value (`ferry.dev/restart`); the report's `restarted` says which value it handled.
/// A resource the PUT newly hosts has just started: the value is handled without a second start.
pub const RESTART: &str = "restart";
/// The longest `restart` value a worker takes (the operator hashes longer annotation values).
pub const MAX_RESTART_VALUE: usize = 253;

pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";
pub const METRICS: &str = "/metrics";

/// The kinds of hosted resource, as the routes name them (`/v1/{kind}/...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Transports,
    Connections,
}

impl Kind {
    /// The path segment: `transports`, `connections`.
    pub fn segment(self) -> &'static str {
        match self {
            Kind::Transports => "transports",
            Kind::Connections => "connections",
        }
    }

    /// One of them, in words: `transport`, `connection`.
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Transports => "transport",
            Kind::Connections => "connection",
        }
    }
}

/// `namespace/name`, the key of a hosted resource.
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// `PUT`, `GET` and `DELETE` of a hosted resource: `/v1/{kind}/{namespace}/{name}`.
pub fn resource_path(kind: Kind, key: &str) -> String {
    format!("/v1/{}/{key}", kind.segment())
}

/// What a `DELETE` of a hosted resource does with what it kept on the worker's volume
/// (`?purge=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Purge {
    /// `false` (or no `purge`): its queue or watermarks stay.
    #[default]
    #[serde(rename = "false")]
    Keep,
    /// `true`: they are removed (the operator, deleting a resource with `reclaimPolicy: Delete`).
    #[serde(rename = "true")]
    Remove,
    /// `reclaimPolicy`: as the hosted resource's own `spec.storage.reclaimPolicy` says (the
    /// pool's sweep, which no longer has the deleted resource to ask).
    #[serde(rename = "reclaimPolicy")]
    AsItsReclaimPolicy,
}

impl Purge {
    /// `DELETE` of a hosted resource with this purge.
    pub fn delete_path(self, kind: Kind, key: &str) -> String {
        let path = resource_path(kind, key);
        match self {
            Purge::Keep => path,
            Purge::Remove => format!("{path}?purge=true"),
            Purge::AsItsReclaimPolicy => format!("{path}?purge=reclaimPolicy"),
        }
    }
}

/// `GET` of the keys of every hosted resource of a kind (admin): a [`HostedList`].
pub fn hosted_path(kind: Kind) -> String {
    format!("/v1/{}", kind.segment())
}

/// What a worker hosts of one kind, as `namespace/name`, sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostedList {
    pub items: Vec<String>,
}

/// `POST` of one transaction to the transport `key` (`namespace/name`).
pub fn transactions_path(key: &str) -> String {
    format!("/v1/transports/{key}/transactions")
}

/// `GET` of a transport's queue listing (`?limit=N`: at most N of its oldest transactions).
pub fn queue_path(key: &str) -> String {
    format!("/v1/transports/{key}/queue")
}

/// A long poll of a hosted resource's report (`GET /v1/{kind}/{ns}/{name}?changedFrom=…`):
/// every report answer carries an `ETag`; given it back as `changedFrom`, the worker answers
/// at once when the report's state changed since (its [`Marked::significant`] part), after
/// `settle` seconds when only its counters changed, and `304 Not Modified` when nothing
/// changed for `wait` seconds. How the operator learns of a worker's change without polling.
pub const CHANGED_FROM: &str = "changedFrom";
/// The longest `wait` and `settle` a worker takes, in seconds.
pub const MAX_WAIT_SECONDS: u64 = 60;
/// `wait` when none is given, in seconds.
pub const DEFAULT_WAIT_SECONDS: u64 = 30;

/// A report as a long poll compares it: what is a change of state, and what only counts.
/// Clocks (the age of the oldest queued transaction, a connection's iteration number) are in
/// neither: they move while nothing happens.
pub trait Marked {
    fn significant(&self) -> serde_json::Value;
    fn counters(&self) -> serde_json::Value;

    /// `"<significant>-<counters>"`, each a hash.
    fn etag(&self) -> String {
        let hash = |v: serde_json::Value| crate::stable_hash_hex(&v.to_string(), 8);
        format!("{}-{}", hash(self.significant()), hash(self.counters()))
    }
}

/// The significant half of an etag.
pub fn significant_mark(etag: &str) -> &str {
    etag.split_once('-')
        .map_or(etag, |(significant, _)| significant)
}

impl Marked for TransportReport {
    fn significant(&self) -> serde_json::Value {
        let panics = self.faults.as_ref().map_or(0, |f| f.panics);
        serde_json::json!([
            self.state,
            self.observed_generation,
            self.endpoint,
            panics,
            self.restarted
        ])
    }

    fn counters(&self) -> serde_json::Value {
        serde_json::json!([self.queue.messages, self.queue.bytes, self.totals])
    }
}

impl Marked for ConnectionReport {
    fn significant(&self) -> serde_json::Value {
        let sync_sets: Vec<_> = self
            .sync_sets
            .iter()
            .map(|s| serde_json::json!([s.name, s.last_result, s.last_error]))
            .collect();
        serde_json::json!([
            self.status,
            self.reason,
            self.message,
            self.observed_generation,
            self.startup_queue_position,
            self.started_iteration,
            sync_sets,
            self.faults.as_ref().map_or(0, |f| f.panics),
            self.restarted,
        ])
    }

    fn counters(&self) -> serde_json::Value {
        let sync_sets: Vec<_> = self
            .sync_sets
            .iter()
            .map(|s| serde_json::json!([s.name, s.watermark, s.records_synced]))
            .collect();
        serde_json::json!(sync_sets)
    }
}

/// How many queued transactions a queue listing has at most (`?limit=`, 10 by default).
pub const MAX_QUEUE_LISTING: usize = 100;
pub const DEFAULT_QUEUE_LISTING: usize = 10;

/// Every error answer: `{"message": ...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
}

/// `GET /v1/transports/…/queue`: the queue's numbers and its oldest transactions in queue
/// order, headers only, never a payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueListing {
    pub transport: String,
    pub state: TransportState,
    pub messages: u64,
    pub bytes: u64,
    #[serde(default)]
    pub oldest_age_seconds: u64,
    #[serde(default)]
    pub oldest: Vec<QueuedSummary>,
}

/// One queued transaction of a [`QueueListing`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueuedSummary {
    pub id: String,
    pub bytes: u64,
    #[serde(default)]
    pub content_type: Option<String>,
    pub received_ms: u64,
    pub age_seconds: u64,
}

/// The answer to one ingest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestResult {
    pub id: String,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub state: TransportState,
}

/// The one outcome a received transaction ends in (the ledger's columns).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Delivered,
    Stored,
    Failed,
}

/// `GET /v1/transports/…`: a transport's report, in the field names of its status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransportReport {
    pub state: TransportState,
    pub observed_generation: Option<i64>,
    pub queue: QueueStatus,
    pub totals: Totals,
    pub endpoint: String,
    /// Panics caught in its work.
    #[serde(default, skip_serializing_if = "crate::api::Faults::is_none")]
    pub faults: Option<crate::api::Faults>,
    /// The last `restart` value this worker process handled for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted: Option<String>,
    /// Its queue's server (a pool on JetStream) is unavailable now, and why (T11).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_unavailable: Option<String>,
    /// Another worker took it over (a pool on JetStream): this one serves it no more.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub moved: bool,
}

/// The `resolved` object of a connection's PUT: what the operator (or standalone mode) looked
/// up for the worker: each target transport's
/// ingest endpoint and token, and whether the connection may start (the startup queue).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolved {
    #[serde(default)]
    pub transports: BTreeMap<String, ResolvedTransport>,
    #[serde(default)]
    pub startup: Startup,
}

impl Resolved {
    /// As kept on a worker's volume: no target's token (a token at rest is one a stolen
    /// volume gives away; the operator pushes them again after a restart).
    pub fn without_tokens(&self) -> Self {
        let mut kept = self.clone();
        for target in kept.transports.values_mut() {
            target.token = None;
        }
        kept
    }

    /// Restored from a volume: a connection with a target whose token is not known (never
    /// kept, above) does not start until it is pushed again — sending without the token
    /// would only be refused. A record from before tokens were left out keeps its tokens in
    /// memory; the next save leaves them out.
    pub fn restored(mut self) -> Self {
        if self.transports.values().any(|t| t.token.is_none()) {
            self.startup.admitted = false;
        }
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedTransport {
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Startup {
    /// False while the connection waits in the startup queue.
    pub admitted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
}

impl Default for Startup {
    fn default() -> Self {
        Self {
            admitted: true,
            position: None,
        }
    }
}

/// `GET /v1/connections/…`: a connection's report, the status value the worker derives on its own (C2–C6: all but C1) and
/// the fields of the resource's status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionReport {
    pub status: ConnectionStatusValue,
    pub reason: String,
    pub message: String,
    pub observed_generation: Option<i64>,
    pub iteration: u64,
    pub startup_queue_position: Option<u32>,
    pub sync_sets: Vec<SyncSetStatus>,
    /// The iteration number when the connection was last (re)started: a sync-set whose last
    /// completed iteration is above it has completed since.
    pub started_iteration: u64,
    /// Panics caught in its work.
    #[serde(default, skip_serializing_if = "crate::api::Faults::is_none")]
    pub faults: Option<crate::api::Faults>,
    /// The last `restart` value this worker process handled for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted: Option<String>,
}

#[cfg(test)]
mod resolved_tests {
    use super::*;

    fn resolved(token: Option<&str>) -> Resolved {
        Resolved {
            transports: BTreeMap::from([(
                "erp".to_owned(),
                ResolvedTransport {
                    endpoint: "http://ferry-tp-erp:8080/v1/transports/a/erp/transactions".into(),
                    token: token.map(str::to_owned),
                },
            )]),
            startup: Startup {
                admitted: true,
                position: None,
            },
        }
    }

    #[test]
    fn no_token_is_kept_and_a_restored_connection_waits_for_its_push() {
        let kept = resolved(Some("s3cret")).without_tokens();
        assert!(!serde_json::to_string(&kept).unwrap().contains("s3cret"));
        assert_eq!(
            kept.transports["erp"].endpoint,
            resolved(None).transports["erp"].endpoint
        );
        assert!(
            !kept.restored().startup.admitted,
            "no token: not started until pushed"
        );
        // A record from before tokens were left out: its tokens serve until the next save.
        let older = resolved(Some("s3cret")).restored();
        assert!(older.startup.admitted);
        assert_eq!(older.transports["erp"].token.as_deref(), Some("s3cret"));
        // Only HTTP targets: nothing to wait for.
        assert!(
            Resolved {
                startup: Startup {
                    admitted: true,
                    position: None
                },
                ..Resolved::default()
            }
            .restored()
            .startup
            .admitted
        );
    }
}
