//! What every reconcile shares: the API client, the way to reach workers, the worker
//! defaults, the Events publisher, and what this operator remembers of each resource until it
//! restarts.

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use crate::operator::{
    objects::builders::WorkerDefaults, runtime::backoff::Backoff, runtime::caches::Caches,
    runtime::events::Events, runtime::metrics::OperatorMetrics,
    runtime::report_watch::ReportWatchers, runtime::triggers::Triggers,
    runtime::worker_client::WorkerClient,
};

/// The one field manager of everything the operator applies.
pub const FIELD_MANAGER: &str = "ferry-operator";
/// Held until the worker's volume has been dealt with as `reclaimPolicy` says.
pub const FINALIZER: &str = "ferry.dev/worker-storage";

/// What the worker of a resource was last given: (generation, worker pod uid).
pub(in crate::operator) type Pushed = (Option<i64>, String);

pub struct Context {
    pub client: kube::Client,
    pub workers: WorkerClient,
    pub defaults: WorkerDefaults,
    pub status_interval: Duration,
    pub events: Events,
    /// The operator's `/metrics`: reconciles add the startup queue and worker restarts.
    pub metrics: std::sync::Arc<OperatorMetrics>,
    /// Failing reconciles, per object: how long each waits before the next.
    pub backoff: Backoff,
    /// The workers' objects and pods as the watches hold them.
    pub caches: Caches,
    /// Reconcile requests to the controllers (from the report watchers).
    pub triggers: std::sync::Arc<Triggers>,
    /// One long poll per ready worker, for its report's changes.
    pub reports: ReportWatchers,
    /// The workers' CA, with `--worker-tls`.
    pub authority: Option<std::sync::Arc<crate::operator::runtime::authority::Authority>>,
    /// What each worker was last given, by resource. A new generation or a new pod (the
    /// worker restarted) means the spec is pushed again. Empty after an operator restart, so
    /// everything is pushed once more.
    pushed: Mutex<HashMap<String, Pushed>>,
    /// Resources (by uid) whose Service and StatefulSet this operator found to be their own
    /// and applied: their ownership is not read again on every status refresh. Empty after an
    /// operator restart, so each is checked once more.
    owned: Mutex<HashSet<String>>,
    /// What this operator last applied of each worker object: (resource uid, `Kind/name`) → (hash of
    /// what was applied, the object's marker right after: its uid and resourceVersion, or a
    /// StatefulSet's uid and generation). An object whose cached marker still matches and whose
    /// desired form hashes the same is not applied again. Empty after an operator restart.
    applied: Mutex<Applied>,
    /// Placements on pool workers this operator made, by resource (`placement::resource_key`):
    /// counted with the ones the caches show until the resource's status shows it. Empty
    /// after a restart (the statuses hold every placement).
    placements: Mutex<HashMap<String, crate::api::worker_pool::Placement>>,
    /// Resources (by uid) whose destinations were found allowed: the generation checked and
    /// when. Checked again for a new generation or once the check is older than `RESYNC`, so
    /// the reconciles a worker's report brings cost no name lookups. Empty after a restart.
    destinations_allowed: Mutex<HashMap<String, (Option<i64>, std::time::Instant)>>,
    /// How many workers may restart at once for the operator's new worker template, and how
    /// long one may take (`--max-unavailable-workers`, `--rollout-timeout`).
    pub rollout_policy: RolloutPolicy,
    /// The worker rollout under way. Empty after a restart (a worker that was restarting is
    /// applied already and does not take a place again).
    rollouts: Mutex<crate::operator::runtime::rollouts::Rollouts>,
    /// Since when each pool worker has been not Ready (failover on JetStream).
    pub not_ready: crate::operator::runtime::not_ready::NotReady,
    started: std::time::Instant,
}

/// `--max-unavailable-workers` and `--rollout-timeout`.
#[derive(Clone, Copy, Debug)]
pub struct RolloutPolicy {
    pub max_unavailable: crate::operator::runtime::rollouts::MaxUnavailable,
    pub timeout: Duration,
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        Self {
            max_unavailable: Default::default(),
            timeout: Duration::from_secs(600),
        }
    }
}

/// (resource uid, object kind) → (hash of what was applied, the object's marker after).
type Applied = HashMap<(String, String), (String, String)>;

impl Context {
    pub fn new(
        client: kube::Client,
        workers: WorkerClient,
        defaults: WorkerDefaults,
        status_interval: Duration,
    ) -> Self {
        Self {
            client,
            workers,
            defaults,
            status_interval,
            events: Events::default(),
            metrics: Default::default(),
            backoff: Backoff::default(),
            caches: Caches::default(),
            triggers: Default::default(),
            reports: ReportWatchers::default(),
            authority: None,
            applied: Mutex::new(HashMap::new()),
            pushed: Mutex::new(HashMap::new()),
            owned: Mutex::new(HashSet::new()),
            placements: Mutex::new(HashMap::new()),
            destinations_allowed: Mutex::new(HashMap::new()),
            rollout_policy: RolloutPolicy::default(),
            rollouts: Mutex::default(),
            not_ready: Default::default(),
            started: std::time::Instant::now(),
        }
    }

    /// Roll the operator's worker template changes out as `policy` says.
    pub fn with_rollout_policy(mut self, policy: RolloutPolicy) -> Self {
        self.rollout_policy = policy;
        self
    }

    /// The worker rollout under way.
    pub fn rollouts(
        &self,
    ) -> std::sync::MutexGuard<'_, crate::operator::runtime::rollouts::Rollouts> {
        self.rollouts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many workers may restart at once now: of the worker pods the operator runs.
    pub fn rollout_limit(&self) -> usize {
        self.rollout_policy
            .max_unavailable
            .of(self.caches.pods.state().len())
    }

    /// Milliseconds since this operator started (the rollout's clock).
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Issue workers' certificates from this CA.
    pub fn with_authority(
        mut self,
        authority: std::sync::Arc<crate::operator::runtime::authority::Authority>,
    ) -> Self {
        self.authority = Some(authority);
        self
    }

    /// Publish Kubernetes Events for state changes and errors.
    pub fn with_events(mut self, events: Events) -> Self {
        self.events = events;
        self
    }

    /// Send reconcile requests to these controllers.
    pub fn with_triggers(mut self, triggers: std::sync::Arc<Triggers>) -> Self {
        self.triggers = triggers;
        self
    }

    /// Read the workers' objects and pods from these caches first.
    pub fn with_caches(mut self, caches: Caches) -> Self {
        self.caches = caches;
        self
    }

    /// Count into these metrics (the ones `/metrics` serves).
    pub fn with_metrics(mut self, metrics: std::sync::Arc<OperatorMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub(in crate::operator) fn pushed(&self) -> MutexGuard<'_, HashMap<String, Pushed>> {
        self.pushed.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(in crate::operator) fn applied(&self) -> MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follow the report of a ready worker, from the one the reconcile just read.
    pub(in crate::operator) fn follow_report(
        &self,
        follow: crate::operator::runtime::report_watch::Follow<'_>,
    ) {
        self.reports
            .follow(follow, &self.workers, &self.triggers, self.status_interval);
    }

    /// The resource (by uid) is gone: forget its worker's objects.
    pub(in crate::operator) fn forget_objects(&self, uid: &str) {
        self.owned().remove(uid);
        self.applied().retain(|(of, _), _| of != uid);
        self.destinations_allowed().remove(uid);
    }

    fn destinations_allowed(
        &self,
    ) -> MutexGuard<'_, HashMap<String, (Option<i64>, std::time::Instant)>> {
        self.destinations_allowed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the destinations of generation `generation` of resource `uid` are to be checked
    /// (never found allowed, a new generation, or the last check older than `every`).
    pub(in crate::operator) fn destinations_due(
        &self,
        uid: &str,
        generation: Option<i64>,
        every: Duration,
    ) -> bool {
        self.destinations_allowed()
            .get(uid)
            .is_none_or(|(checked, at)| *checked != generation || at.elapsed() >= every)
    }

    /// Generation `generation` of resource `uid` names no forbidden destination.
    pub(in crate::operator) fn destinations_found_allowed(
        &self,
        uid: &str,
        generation: Option<i64>,
    ) {
        self.destinations_allowed()
            .insert(uid.to_owned(), (generation, std::time::Instant::now()));
    }

    pub(in crate::operator) fn placements(
        &self,
    ) -> MutexGuard<'_, HashMap<String, crate::api::worker_pool::Placement>> {
        self.placements.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(in crate::operator) fn owned(&self) -> MutexGuard<'_, HashSet<String>> {
        self.owned.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) fn now() -> Time {
    Time(Timestamp::now())
}
