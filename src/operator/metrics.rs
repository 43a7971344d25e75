//! The operator's own `/metrics`: reconciles and their errors and durations by kind, the
//! resources by state (read from the controllers' caches at scrape time), and whether this
//! replica leads.

use std::{
    fmt,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use kube::runtime::reflector::Store;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        MetricType, counter::Counter, family::Family, gauge::ConstGauge, histogram::Histogram,
    },
    registry::Registry,
};

use crate::api::{Connection, ConnectionStatusValue, Transport, TransportState};

type KindLabel = [(&'static str, &'static str); 1];
type ErrorLabels = [(&'static str, &'static str); 2];

/// Counters the reconcile loops update.
#[derive(Debug)]
pub struct OperatorMetrics {
    reconciles: Family<KindLabel, Counter>,
    errors: Family<ErrorLabels, Counter>,
    durations: Family<KindLabel, Histogram>,
    leader: Arc<AtomicBool>,
    caches: Arc<OnceLock<Caches>>,
}

/// The controllers' caches, known once the controllers are built.
#[derive(Clone)]
/// The controllers' caches (unreadable objects in them are counted nowhere).
pub struct Caches {
    pub transports: Store<kube::core::DeserializeGuard<Transport>>,
    pub connections: Store<kube::core::DeserializeGuard<Connection>>,
}

impl fmt::Debug for Caches {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caches").finish_non_exhaustive()
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
            leader: Arc::new(AtomicBool::new(false)),
            caches: Arc::new(OnceLock::new()),
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

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    pub fn set_caches(&self, caches: Caches) {
        let _ = self.caches.set(caches);
    }

    /// The registry served at `/metrics`.
    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut registry = Registry::with_prefix("ferry_operator");
        registry.register(
            "reconciles",
            "Reconciles run, by kind",
            self.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by kind and error (api, build, finalizer)",
            self.errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "How long reconciles took, by kind",
            self.durations.clone(),
        );
        registry.register_collector(Box::new(LiveCollector {
            leader: self.leader.clone(),
            caches: self.caches.clone(),
        }));
        registry
    }
}

/// Read at scrape time: resources by state and leadership.
#[derive(Debug)]
struct LiveCollector {
    leader: Arc<AtomicBool>,
    caches: Arc<OnceLock<Caches>>,
}

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
        ConstGauge::new(i64::from(self.leader.load(Ordering::Relaxed))).encode(
            encoder.encode_descriptor(
                "ferry_operator_leader",
                "1 while this replica holds the leader lease (or runs without leader election)",
                None,
                MetricType::Gauge,
            )?,
        )?;
        let Some(caches) = self.caches.get() else {
            return Ok(());
        };
        let transports = super::guard::readable(&caches.transports.state());
        let connections = super::guard::readable(&caches.connections.state());
        let rows = [
            (
                "Transport",
                by_state(
                    TransportState::ALL.map(TransportState::as_str),
                    transports.iter().map(|t| {
                        t.status
                            .as_ref()
                            .and_then(|s| s.state)
                            .map(TransportState::as_str)
                    }),
                ),
            ),
            (
                "Connection",
                by_state(
                    ConnectionStatusValue::ALL.map(ConnectionStatusValue::as_str),
                    connections.iter().map(|c| {
                        c.status
                            .as_ref()
                            .and_then(|s| s.status)
                            .map(ConnectionStatusValue::as_str)
                    }),
                ),
            ),
        ];
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

#[cfg(test)]
mod tests {
    use super::*;

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
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }
}
