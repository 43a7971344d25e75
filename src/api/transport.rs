//! The Transport resource: delivers transactions to a host, with Store and Forward.
//! Semantics: docs/transport.md (the five states, T1–T9, H1–H3).

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{duration::Duration, quantity::ByteQuantity, storage::Storage};

pub const DEFAULT_STORAGE_BYTES: u64 = 2 << 30;

/// A Transport delivers transactions to a host; when the host cannot be reached it keeps
/// them in a durable Store and Forward queue and forwards them in order once it can.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "Transport",
    namespaced,
    shortname = "tp",
    category = "ferry",
    derive = "PartialEq",
    status = "TransportStatus",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state","description":"Up, Down, Suspended, S&F Suspended or Store and Forward"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Queued","type":"integer","jsonPath":".status.queue.messages","description":"Transactions waiting in the Store and Forward queue"}"#,
    printcolumn = r#"{"name":"Worker","type":"string","jsonPath":".status.placement.worker","priority":1,"description":"The WorkerPool worker it lives on (with spec.workerPool)"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "has(self.workerPool) == has(oldSelf.workerPool) && (!has(self.workerPool) || self.workerPool == oldSelf.workerPool)"
).message("workerPool cannot change once the resource exists: its queue and watermarks live on its worker's volume (docs/resources.md, \"Moving a resource to or from a pool\")"))]
pub struct TransportSpec {
    /// Suspend (true) or resume (false). A suspended transport never delivers; with Store
    /// and Forward enabled it queues what it receives, otherwise it fails it.
    #[serde(default)]
    pub suspended: bool,
    /// Connect to the host at start-up (and right after leaving Store and Forward) instead
    /// of at the first transaction.
    #[serde(default)]
    pub load_at_init: bool,
    /// Where transactions are delivered.
    pub host: Host,
    /// The durable queue used while the host is unreachable or the transport is suspended.
    #[serde(default)]
    pub store_and_forward: StoreAndForward,
    /// The largest transaction accepted; larger ones are answered 413.
    #[serde(default = "default_max_transaction_bytes")]
    #[x_kube(validation = Rule::new("quantity(string(self)).compareTo(quantity('64Mi')) <= 0").message("must be at most 64Mi"))]
    pub max_transaction_bytes: ByteQuantity,
    /// The WorkerPool (same namespace) whose workers host this one; unset: a worker of its
    /// own. Fixed once the resource exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub worker_pool: Option<String>,
    /// The worker's volume, which holds the queue (default size 2Gi).
    #[serde(default)]
    pub storage: Storage,
    /// Who may reach the worker (its NetworkPolicy). A pooled transport's worker is the
    /// pool's: the pool's `spec.network` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<super::network::Network>,
}

fn default_max_transaction_bytes() -> ByteQuantity {
    ByteQuantity::from_bytes(1 << 20).expect("1Mi is positive")
}

/// The host transactions are POSTed to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    /// http:// or https:// URL; every transaction is POSTed here.
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s/?#]+[^\s]*$"))]
    pub url: String,
    /// The time one delivery attempt may take (at most 10m).
    #[serde(default = "default_host_timeout")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s') && duration(self) <= duration('10m')").message("must be more than 0s and at most 10m"))]
    pub timeout: Duration,
    /// A path on the host answering 2xx when it is healthy; when set, "connected" means it
    /// answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), regex(pattern = r"^/[^\s]*$"))]
    pub health_check_path: Option<String>,
}

fn default_host_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Store and Forward: bounded by time to live and max storage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoreAndForward {
    /// Queue transactions the host cannot take now (true), or fail them (false).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A queued transaction older than this expires (it is counted as expired, never
    /// dropped silently).
    #[serde(default = "default_time_to_live")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("must be at least 1s"))]
    pub time_to_live: Duration,
    /// Max Storage by count.
    #[serde(default = "default_max_messages")]
    #[schemars(range(min = 1, max = 100_000_000))]
    pub max_messages: u64,
    /// Max Storage by bytes; whichever limit is reached first applies.
    #[serde(default = "default_max_bytes")]
    #[x_kube(validation = Rule::new("quantity(string(self)).compareTo(quantity('1Pi')) <= 0").message("must be at most 1Pi"))]
    pub max_bytes: ByteQuantity,
    /// What a full queue does with a new transaction.
    #[serde(default)]
    pub when_full: WhenFull,
}

impl Default for StoreAndForward {
    fn default() -> Self {
        Self {
            enabled: true,
            time_to_live: default_time_to_live(),
            max_messages: default_max_messages(),
            max_bytes: default_max_bytes(),
            when_full: WhenFull::default(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_time_to_live() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_messages() -> u64 {
    100_000
}
fn default_max_bytes() -> ByteQuantity {
    ByteQuantity::from_bytes(1 << 30).expect("1Gi is positive")
}

/// What a full Store and Forward queue does with a new transaction.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum WhenFull {
    /// Drop the oldest queued transactions to make room (counted as dropped).
    #[default]
    DropOldest,
    /// Fail the new transaction and keep the queue as it is.
    RejectNew,
}

/// The five documented transport states, serialized verbatim.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum TransportState {
    /// Not connected to the host; nothing waits in the queue.
    #[default]
    Down,
    /// Connected; transactions are delivered as they come.
    Up,
    /// Suspended by the user; disconnected; the queue is empty.
    Suspended,
    /// Suspended, and the Store and Forward queue holds transactions.
    #[serde(rename = "S&F Suspended")]
    SfSuspended,
    /// The host could not be reached; transactions are queued and reconnection is retried.
    #[serde(rename = "Store and Forward")]
    StoreAndForward,
}

impl TransportState {
    pub const ALL: [TransportState; 5] = [
        Self::Down,
        Self::Up,
        Self::Suspended,
        Self::SfSuspended,
        Self::StoreAndForward,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Down => "Down",
            Self::Up => "Up",
            Self::Suspended => "Suspended",
            Self::SfSuspended => "S&F Suspended",
            Self::StoreAndForward => "Store and Forward",
        }
    }
}

impl fmt::Display for TransportState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the Store and Forward queue holds now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    pub messages: u64,
    pub bytes: u64,
    pub oldest_age_seconds: u64,
}

/// Counters since the transport was created; they survive worker restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Totals {
    pub received: u64,
    pub delivered: u64,
    pub stored: u64,
    pub forwarded: u64,
    pub failed: u64,
    pub expired: u64,
    pub dropped: u64,
}

/// Written by the operator only, from the worker's report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransportStatus {
    /// One of Up, Down, Suspended, "S&F Suspended", "Store and Forward".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<TransportState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub queue: QueueStatus,
    #[serde(default)]
    pub totals: Totals,
    /// The URL producers send transactions to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The WorkerPool and worker it lives on (with `spec.workerPool`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<super::worker_pool::Placement>,
    /// Panics caught in its work on the worker (it goes on; its neighbours are untouched).
    #[serde(default, skip_serializing_if = "super::Faults::is_none")]
    pub faults: Option<super::Faults>,
    /// The last `ferry.dev/restart` annotation value its worker carried out (longer values
    /// than 253 bytes as `sha256:<hex>` of them): a value is handled once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_restart: Option<String>,
    /// When the worker last answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_report_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
