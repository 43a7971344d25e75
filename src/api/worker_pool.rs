//! The WorkerPool resource: worker pods shared by many Transports and Connections
//! (`spec.workerPool` on them), instead of a worker pod each. Semantics: docs/resources.md
//! "WorkerPool".

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Affinity, ResourceRequirements, Toleration},
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{duration::Duration, storage::Storage};

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A pool worker's volume holds the queues and watermarks of every resource it hosts.
pub const DEFAULT_STORAGE_BYTES: u64 = 10 << 30;
/// The most resources one worker may host.
pub const MAX_CAPACITY: u32 = 1000;
/// The most workers of one pool.
pub const MAX_REPLICAS: i32 = 100;

/// Worker pods that host many Transports and Connections, each placed once on one worker
/// and kept there.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "WorkerPool",
    namespaced,
    shortname = "wp",
    category = "ferry",
    derive = "PartialEq",
    status = "WorkerPoolStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Workers","type":"integer","jsonPath":".status.readyWorkers","description":"Workers ready"}"#,
    printcolumn = r#"{"name":"Hosted","type":"integer","jsonPath":".status.hosted","description":"Resources placed on the pool's workers"}"#,
    printcolumn = r#"{"name":"Capacity","type":"integer","jsonPath":".spec.capacity","description":"Resources per worker at most"}"#,
    printcolumn = r#"{"name":"Queue","type":"string","jsonPath":".status.queue","description":"Where the queues are: Volume or JetStream"}"#,
    printcolumn = r#"{"name":"Moves","type":"integer","jsonPath":".status.moves","description":"Resources moved off failed workers","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "has(self.queue) == has(oldSelf.queue) && (!has(self.queue) || self.queue == oldSelf.queue)"
).message("queue cannot change once the pool exists (its workers' queues are where it says): make a new pool and move the resources to it"))]
pub struct WorkerPoolSpec {
    /// How many workers (0 to 100). Scaling down never removes a worker that hosts
    /// resources: the status says what blocks it.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// How many resources one worker hosts at most (1 to 1000).
    #[serde(default = "default_capacity")]
    #[schemars(range(min = 1, max = 1000))]
    pub capacity: u32,
    /// The worker container's requests and limits; unset: the operator's worker defaults.
    /// Its memory limit sets the budget all hosted resources share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Each worker's volume, holding the queues and watermarks of what it hosts (default
    /// size 10Gi).
    #[serde(default)]
    pub storage: Storage,
    /// Nodes the workers may run on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Who may reach the pool's workers (their NetworkPolicy): the producers of every
    /// transport the pool hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<super::network::Network>,
    /// Where the queues and records of what the pool hosts live. Unset: each worker's volume
    /// (a resource stays on its worker). `jetstream`: a replicated NATS JetStream, so any
    /// worker can host any of the pool's resources and they move when a worker fails. Fixed
    /// once the pool exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<PoolQueue>,
    /// On JetStream: how long a worker may be not Ready (or gone) before what it hosts is
    /// moved to the pool's other workers.
    #[serde(default = "default_failover_after")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('5s') && duration(self) <= duration('1h')").message("must be at least 5s and at most 1h"))]
    pub failover_after: Duration,
}

/// Where a pool's queues and records live.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolQueue {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jetstream: Option<JetStreamQueue>,
}

/// A NATS JetStream (2.11 or newer, clustered, `sync_interval: always`) holding a stream per
/// transport and the pool's record bucket. docs/resources.md "Pools on JetStream".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct JetStreamQueue {
    /// The NATS servers: `nats://host:port` or `tls://host:port`, comma-separated.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^(nats|tls)://[^ ,/]+(, *(nats|tls)://[^ ,/]+)*$')").message("must be nats:// or tls:// addresses (host:port), comma-separated"))]
    pub url: String,
    /// Replicas of each stream and of the record bucket: 1, 3 (default) or 5.
    #[serde(default = "default_jetstream_replicas")]
    #[x_kube(validation = Rule::new("self in [1, 3, 5]").message("must be 1, 3 or 5"))]
    pub replicas: u8,
    /// A Secret of the pool's namespace with the workers' NATS login: `nats.creds` (a
    /// credentials file), or `token`, or `user` and `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<JetStreamTls>,
}

/// TLS to the NATS servers (required once any of these is set).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct JetStreamTls {
    /// A Secret with `ca.crt`: the CA the servers are verified by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub ca_secret: Option<String>,
    /// A TLS Secret (`tls.crt`, `tls.key`): the workers' client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_secret: Option<String>,
}

fn default_failover_after() -> Duration {
    Duration::from_secs(20)
}
fn default_jetstream_replicas() -> u8 {
    3
}

impl WorkerPoolSpec {
    /// The pool's JetStream, when its queues are there.
    pub fn jetstream(&self) -> Option<&JetStreamQueue> {
        self.queue.as_ref().and_then(|q| q.jetstream.as_ref())
    }
}

fn default_replicas() -> i32 {
    1
}
fn default_capacity() -> u32 {
    100
}

/// One worker of the pool, as the operator last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolWorker {
    /// The worker's pod (`<pool's StatefulSet>-<ordinal>`), also its stable DNS name's first
    /// label.
    pub name: String,
    pub ready: bool,
    /// Resources placed on it.
    pub hosted: u32,
}

/// Where a resource with `spec.workerPool` lives, in its status: written once when it is
/// placed, kept while it exists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    pub worker_pool: String,
    /// The worker's pod; its stable DNS name is `<worker>.<the pool's Service>.<namespace>.svc`.
    pub worker: String,
}

/// Written by the operator only.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPoolStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub ready_workers: i32,
    /// Resources placed on the pool's workers.
    #[serde(default)]
    pub hosted: u32,
    /// Where the pool's queues are: `Volume` or `JetStream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Resources moved from a failed worker to another (a pool on JetStream), since the
    /// pool was made.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub moves: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub workers: Vec<PoolWorker>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
