//! The Connection resource: synchronizes records from a source into a target in
//! iterations of its sync-sets. Semantics: docs/connection.md (W1–W4, C1–C6, Q1–Q6).

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{duration::Duration, storage::Storage};

pub const DEFAULT_STORAGE_BYTES: u64 = 100 << 20;

/// A Connection synchronizes records changed in a source into a target, one iteration of
/// its sync-sets at a time.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "Connection",
    namespaced,
    shortname = "conn",
    category = "ferry",
    derive = "PartialEq",
    status = "ConnectionStatus",
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.status","description":"Disabled, Failed, Idle, Restarting, Running, Server Reinitializing or Unknown"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Iteration","type":"integer","jsonPath":".status.iteration"}"#,
    printcolumn = r#"{"name":"Worker","type":"string","jsonPath":".status.placement.worker","priority":1,"description":"The WorkerPool worker it lives on (with spec.workerPool)"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "has(self.workerPool) == has(oldSelf.workerPool) && (!has(self.workerPool) || self.workerPool == oldSelf.workerPool)"
).message("workerPool cannot change once the resource exists: its queue and watermarks live on its worker's volume (docs/resources.md, \"Moving a resource to or from a pool\")"))]
pub struct ConnectionSpec {
    /// Start (true) or stop (false) the connection. A defined connection runs by default.
    #[serde(default = "default_true")]
    pub started: bool,
    /// The longest interval between the starts of two iterations (1s to 24h).
    #[serde(default = "default_frequency")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('24h')").message("must be between 1s and 24h"))]
    pub frequency: Duration,
    /// What is synchronized; names are unique.
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub sync_sets: Vec<SyncSet>,
    /// The WorkerPool (same namespace) whose workers host this one; unset: a worker of its
    /// own. Fixed once the resource exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub worker_pool: Option<String>,
    /// The worker's volume for watermarks and iteration history (default size 100Mi).
    #[serde(default)]
    pub storage: Storage,
}

fn default_true() -> bool {
    true
}
fn default_frequency() -> Duration {
    Duration::from_secs(60)
}

/// One source-to-target pairing, run once per iteration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncSet {
    /// Unique within the connection; a DNS label.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Disabled sync-sets are skipped; a connection with none enabled is Idle.
    #[serde(default = "default_true")]
    pub enabled: bool,
    pub source: Source,
    pub target: Target,
}

/// Where records come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
pub struct Source {
    pub http: HttpSource,
}

/// Pulls the records changed since the watermark from an HTTP endpoint returning JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpSource {
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s/?#]+[^\s]*$"))]
    pub url: String,
    /// The query parameter carrying the watermark.
    #[serde(default = "default_watermark_param")]
    #[schemars(length(min = 1, max = 128))]
    pub watermark_param: String,
    /// JSON pointer to the array of records; "" means the body is the array.
    #[serde(default)]
    #[schemars(length(max = 256), regex(pattern = r"^(/.*)?$"))]
    pub items_pointer: String,
    /// JSON pointer, inside a record, to its watermark value.
    #[serde(default = "default_watermark_pointer")]
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^/.*$"))]
    pub watermark_pointer: String,
    /// JSON pointer, inside a record, to its id.
    #[serde(default = "default_id_pointer")]
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^/.*$"))]
    pub id_pointer: String,
}

fn default_watermark_param() -> String {
    "updatedSince".into()
}
fn default_watermark_pointer() -> String {
    "/updatedAt".into()
}
fn default_id_pointer() -> String {
    "/id".into()
}

/// Where records go: exactly one of `transport` or `http`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.transport) != has(self.http)").message("exactly one of transport or http must be set"))]
pub struct Target {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<TransportRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpTarget>,
}

/// A Transport in the connection's namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
pub struct TransportRef {
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
}

/// Each record is sent to this URL; a 2xx answer accepts it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
pub struct HttpTarget {
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s/?#]+[^\s]*$"))]
    pub url: String,
    #[serde(default)]
    pub method: HttpMethod,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum HttpMethod {
    #[default]
    #[serde(rename = "POST")]
    Post,
    #[serde(rename = "PUT")]
    Put,
}

/// The seven documented connection status values, serialized verbatim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum ConnectionStatusValue {
    /// Stopped, never started, or an error made it unable to run.
    Disabled,
    /// An enabled sync-set's last completed iteration failed.
    Failed,
    /// No sync-set is enabled.
    Idle,
    /// Started, changed or restarted, and not every enabled sync-set has completed since.
    Restarting,
    /// Every enabled sync-set's last completed iteration succeeded.
    Running,
    /// The operator has not yet re-pushed this connection since it (re)started.
    #[serde(rename = "Server Reinitializing")]
    ServerReinitializing,
    /// The worker cannot be reached or its report cannot be read.
    Unknown,
}

impl ConnectionStatusValue {
    pub const ALL: [ConnectionStatusValue; 7] = [
        Self::Disabled,
        Self::Failed,
        Self::Idle,
        Self::Restarting,
        Self::Running,
        Self::ServerReinitializing,
        Self::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "Disabled",
            Self::Failed => "Failed",
            Self::Idle => "Idle",
            Self::Restarting => "Restarting",
            Self::Running => "Running",
            Self::ServerReinitializing => "Server Reinitializing",
            Self::Unknown => "Unknown",
        }
    }
}

impl fmt::Display for ConnectionStatusValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of a sync-set's last completed iteration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum SyncResult {
    Success,
    Failed,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncSetStatus {
    pub name: String,
    /// The last *completed* iteration's result; an ongoing one does not count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<SyncResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_completed_iteration: Option<u64>,
    #[serde(default)]
    pub ongoing: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<String>,
    #[serde(default)]
    pub records_synced: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Written by the operator only, from the worker's report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionStatus {
    /// One of Disabled, Failed, Idle, Restarting, Running, "Server Reinitializing", Unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ConnectionStatusValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub iteration: u64,
    /// Position in the startup queue while waiting to start (1 = next).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_queue_position: Option<u32>,
    /// When the operator admitted it into its startup (cleared once the startup is over): with
    /// `startupQueuePosition`, the startup queue as it stands, so it survives an operator restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_started_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub sync_sets: Vec<SyncSetStatus>,
    /// The WorkerPool and worker it lives on (with `spec.workerPool`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<super::worker_pool::Placement>,
    /// The last `ferry.dev/restart` annotation value its worker carried out (longer values
    /// than 253 bytes as `sha256:<hex>` of them): a value is handled once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_restart: Option<String>,
    /// Panics caught in its work on the worker (it goes on; its neighbours are untouched).
    #[serde(default, skip_serializing_if = "super::Faults::is_none")]
    pub faults: Option<super::Faults>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_report_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
