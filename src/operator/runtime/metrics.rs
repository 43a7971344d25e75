//! The operator's own `/metrics`: reconciles and their errors and durations by kind, the
//! resources by state (read from the controllers' caches at scrape time), whether this
//! replica leads, the startup queue, and how often each worker's container restarted.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use kube::runtime::reflector::Store;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
    registry::Registry,
};

use crate::connection::startup_queue::QueueCounts;

type KindLabel = [(&'static str, &'static str); 1];
type ErrorLabels = [(&'static str, &'static str); 2];

/// Counters the reconcile loops update.
#[derive(Debug)]
pub struct OperatorMetrics {
    reconciles: Family<KindLabel, Counter>,
    errors: Family<ErrorLabels, Counter>,
    durations: Family<KindLabel, Histogram>,
    backing_off: Gauge,
    /// Resources moved off failed workers of pools on JetStream.
    pool_moves: Counter,
    live: Arc<Live>,
}

/// What is read at scrape time.
#[derive(Debug, Default)]
struct Live {
    leader: AtomicBool,
    kinds: Mutex<Vec<CountByState>>,
    /// The startup queue as the connection reconciler last left it.
    startup: Mutex<QueueCounts>,
    /// The worker rollout as last changed.
    rollouts: Mutex<crate::operator::runtime::rollouts::RolloutCounts>,
    /// Container restarts of each worker pod (`namespace`, `pod`) as last read.
    restarts: Mutex<BTreeMap<(String, String), u64>>,
}

/// One kind's objects by state, read from its controller's cache at scrape time: the kind
/// and a count of every state it has (`Pending` for no state yet).
pub type Counted = (&'static str, Vec<(&'static str, i64)>);

/// Counts one kind's objects (registered by its controller once its cache exists).
pub struct CountByState(Box<dyn Fn() -> Counted + Send + Sync>);

impl CountByState {
    /// Count the readable objects of `cache` (unreadable ones are counted nowhere) into
    /// `states`, by what `state_of` says of each.
    pub fn new<K: crate::operator::NamespacedObject>(
        kind: &'static str,
        states: Vec<&'static str>,
        cache: Store<kube::core::DeserializeGuard<K>>,
        state_of: fn(&K) -> Option<&'static str>,
    ) -> Self {
        Self(Box::new(move || {
            let objects = crate::operator::readable(&cache.state());
            (
                kind,
                by_state(states.iter().copied(), objects.iter().map(state_of)),
            )
        }))
    }
}

impl fmt::Debug for CountByState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountByState").finish_non_exhaustive()
    }
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        Self {
            reconciles: Family::default(),
            errors: Family::default(),
            durations: Family::new_with_constructor(|| {
                // 1 ms to ~16 s: a reconcile is a handful of API calls and one worker call.
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                    0.001, 2.0, 15,
                ))
            }),
            backing_off: Gauge::default(),
            pool_moves: Counter::default(),
            live: Arc::default(),
        }
    }
}

impl OperatorMetrics {
    /// A reconcile of `kind` ended after `took`; `error` names what went wrong, if it did.
    pub fn reconciled(&self, kind: &'static str, took: Duration, error: Option<&'static str>) {
        self.reconciles.get_or_create(&[("kind", kind)]).inc();
        self.durations
            .get_or_create(&[("kind", kind)])
            .observe(took.as_secs_f64());
        if let Some(error) = error {
            self.errors
                .get_or_create(&[("kind", kind), ("error", error)])
                .inc();
        }
    }

    /// Objects whose last reconcile failed (each waits its backoff).
    pub fn set_backing_off(&self, objects: usize) {
        self.backing_off
            .set(i64::try_from(objects).unwrap_or(i64::MAX));
    }

    /// A resource of a pool on JetStream was moved off a failed worker.
    pub fn pool_moved(&self) {
        self.pool_moves.inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.live.leader.store(leader, Ordering::Relaxed);
    }

    /// Count a kind's objects by state in `ferry_resources`.
    pub fn count_by_state(&self, kind: CountByState) {
        lock(&self.live.kinds).push(kind);
    }

    /// The startup queue after a connection was looked at.
    pub fn set_startup_queue(&self, counts: QueueCounts) {
        *lock(&self.live.startup) = counts;
    }

    /// The worker rollout changed.
    pub fn set_rollouts(&self, counts: crate::operator::runtime::rollouts::RolloutCounts) {
        *lock(&self.live.rollouts) = counts;
    }

    /// A worker pod was read: its containers' restarts so far.
    pub fn worker_restarts(&self, namespace: &str, pod: &str, restarts: u64) {
        lock(&self.live.restarts).insert((namespace.to_owned(), pod.to_owned()), restarts);
    }

    /// The resource is gone: its worker's series goes too.
    pub fn forget_worker(&self, namespace: &str, pod: &str) {
        lock(&self.live.restarts).remove(&(namespace.to_owned(), pod.to_owned()));
    }

    /// The registry served at `/metrics`.
    pub fn registry(self: &Arc<Self>) -> Registry {
        // No registry prefix: it would prefix the collector's full names a second time.
        let mut registry = Registry::default();
        registry.register(
            "ferry_operator_reconciles",
            "Reconciles run, by kind",
            self.reconciles.clone(),
        );
        registry.register(
            "ferry_operator_backing_off",
            "Objects whose last reconcile failed, each waiting its backoff (5 s doubling to 5 min) before the next",
            self.backing_off.clone(),
        );
        registry.register(
            "ferry_operator_reconcile_errors",
            "Reconciles that failed, by kind and the step that failed (finalizer, dereference, build, apply, conflict, status, cleanup)",
            self.errors.clone(),
        );
        registry.register(
            "ferry_operator_reconcile_duration_seconds",
            "How long reconciles took, by kind",
            self.durations.clone(),
        );
        registry.register(
            "ferry_operator_pool_moves",
            "Resources moved off a failed worker of a WorkerPool on JetStream (not Ready for its failoverAfter, gone, or beyond its replicas)",
            self.pool_moves.clone(),
        );
        registry.register_collector(Box::new(LiveCollector(self.live.clone())));
        registry
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Read at scrape time: leadership, the startup queue, worker restarts, resources by state.
#[derive(Debug)]
struct LiveCollector(Arc<Live>);

/// Resources of one kind by state: every documented state, then `Pending` for those without a
/// status yet.
fn by_state<'a>(
    states: impl IntoIterator<Item = &'static str>,
    seen: impl Iterator<Item = Option<&'a str>>,
) -> Vec<(&'static str, i64)> {
    let mut counts: Vec<(&'static str, i64)> = states
        .into_iter()
        .chain(["Pending"])
        .map(|s| (s, 0))
        .collect();
    for state in seen {
        let state = state.unwrap_or("Pending");
        if let Some(entry) = counts.iter_mut().find(|(s, _)| *s == state) {
            entry.1 += 1;
        }
    }
    counts
}

impl Collector for LiveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let live = &self.0;
        ConstGauge::new(i64::from(live.leader.load(Ordering::Relaxed))).encode(
            encoder.encode_descriptor(
                "ferry_operator_leader",
                "1 while this replica holds the leader lease (or runs without leader election)",
                None,
                MetricType::Gauge,
            )?,
        )?;

        let startup = *lock(&live.startup);
        let rollouts = *lock(&live.rollouts);
        for (name, help, value) in [
            (
                "ferry_operator_startup_queue_starting",
                "Connections in their startup now (at most --startup-concurrency per scope)",
                startup.starting,
            ),
            (
                "ferry_operator_startup_queue_waiting",
                "Connections waiting for a startup place whose worker is ready to run them",
                startup.waiting,
            ),
            (
                "ferry_operator_startup_queue_waiting_for_worker",
                "Connections keeping their turn in the startup queue while their worker pod is not ready",
                startup.waiting_for_worker,
            ),
            (
                "ferry_operator_worker_rollouts_in_progress",
                "Workers restarting for the operator's new worker template now (at most --max-unavailable-workers)",
                rollouts.rolling,
            ),
            (
                "ferry_operator_worker_rollouts_waiting",
                "Workers waiting for their turn to restart for the operator's new worker template",
                rollouts.waiting,
            ),
            (
                "ferry_operator_worker_rollouts_stuck",
                "Workers not new and Ready within --rollout-timeout: while above 0 no further worker restarts",
                rollouts.stuck,
            ),
        ] {
            ConstGauge::new(count_gauge(value)).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        ConstCounter::new(rollouts.completed).encode(encoder.encode_descriptor(
            "ferry_operator_worker_rollouts_completed",
            "Workers this replica restarted for a new worker template that came back new and Ready",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(startup.admitted).encode(encoder.encode_descriptor(
            "ferry_operator_startup_admissions",
            "Connections admitted into their startup by this replica",
            None,
            MetricType::Counter,
        )?)?;

        {
            let mut family = encoder.encode_descriptor(
                "ferry_operator_worker_restarts",
                "Container restarts of each worker pod, as last read (resets when the pod is recreated)",
                None,
                MetricType::Counter,
            )?;
            for ((namespace, pod), restarts) in lock(&live.restarts).iter() {
                ConstCounter::new(*restarts).encode(
                    family.encode_family(&[("namespace", namespace.as_str()), ("pod", pod)])?,
                )?;
            }
        }

        // Before the caches exist the family is described, with no series.
        let rows: Vec<Counted> = lock(&live.kinds).iter().map(|count| (count.0)()).collect();
        let mut family = encoder.encode_descriptor(
            "ferry_operator_resources",
            "Transports by state and Connections by status, as last written (Pending: no status yet)",
            None,
            MetricType::Gauge,
        )?;
        for (kind, counts) in rows {
            for (state, count) in counts {
                ConstGauge::new(count)
                    .encode(family.encode_family(&[("kind", kind), ("state", state)])?)?;
            }
        }
        Ok(())
    }
}

fn count_gauge(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TransportState;

    #[test]
    fn counts_every_documented_state_and_the_pending_ones() {
        let counts = by_state(
            TransportState::ALL.map(TransportState::as_str),
            [Some("Up"), Some("Up"), None, Some("S&F Suspended")].into_iter(),
        );
        assert_eq!(
            counts,
            [
                ("Down", 0),
                ("Up", 2),
                ("Suspended", 0),
                ("S&F Suspended", 1),
                ("Store and Forward", 0),
                ("Pending", 1)
            ]
        );
    }

    #[test]
    fn reconciles_errors_and_durations_are_exposed() {
        let metrics = Arc::new(OperatorMetrics::default());
        metrics.reconciled("Transport", Duration::from_millis(3), None);
        metrics.reconciled("Transport", Duration::from_millis(5), Some("apply"));
        metrics.set_leader(true);
        let text = crate::worker::metrics::render(&metrics.registry()).unwrap();
        for line in [
            "ferry_operator_reconciles_total{kind=\"Transport\"} 2",
            "ferry_operator_reconcile_errors_total{kind=\"Transport\",error=\"apply\"} 1",
            "ferry_operator_reconcile_duration_seconds_count{kind=\"Transport\"} 2",
            "ferry_operator_leader 1",
            "ferry_operator_startup_admissions_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }

    #[test]
    fn worker_restarts_and_the_startup_queue_are_exposed_until_forgotten() {
        let metrics = Arc::new(OperatorMetrics::default());
        metrics.worker_restarts("plant-a", "ferry-tp-erp-0", 4);
        metrics.set_startup_queue(QueueCounts {
            starting: 1,
            waiting: 2,
            waiting_for_worker: 1,
            admitted: 7,
        });
        let text = crate::worker::metrics::render(&metrics.registry()).unwrap();
        for line in [
            "ferry_operator_worker_restarts_total{namespace=\"plant-a\",pod=\"ferry-tp-erp-0\"} 4",
            "ferry_operator_startup_queue_starting 1",
            "ferry_operator_startup_queue_waiting 2",
            "ferry_operator_startup_queue_waiting_for_worker 1",
            "ferry_operator_startup_admissions_total 7",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        metrics.forget_worker("plant-a", "ferry-tp-erp-0");
        let text = crate::worker::metrics::render(&metrics.registry()).unwrap();
        assert!(!text.contains("ferry-tp-erp-0"), "{text}");
    }
}
