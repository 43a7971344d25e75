//! `/metrics`: every hosted transport's state, queue and totals, read live at each scrape.

use std::{fmt, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use super::Worker;
use crate::api::TransportState;

/// Reads the worker's runtimes at scrape time, so the figures never drift from the reports.
#[derive(Debug)]
struct TransportCollector(Arc<Worker>);

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Collector for TransportCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let reports: Vec<_> = self
            .0
            .all::<crate::transport::runtime::TransportRuntime>()
            .into_iter()
            .map(|t| (t.namespace_name(), t.report()))
            .collect();

        {
            let mut family = encoder.encode_descriptor(
            "ferry_transport_state",
            "1 for the transport's current state (Up, Down, Suspended, S&F Suspended, Store and Forward), 0 for the others",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
            for ((ns, name), report) in &reports {
                for state in TransportState::ALL {
                    let labels = [
                        ("namespace", ns.as_str()),
                        ("name", name.as_str()),
                        ("state", state.as_str()),
                    ];
                    ConstGauge::new(i64::from(report.state == state))
                        .encode(family.encode_family(&labels)?)?;
                }
            }
        }

        type Gauge = fn(&crate::wire::TransportReport) -> u64;
        let gauges: [(&str, &str, Gauge); 4] = [
            (
                "ferry_transport_queue_messages",
                "Transactions in the Store and Forward queue",
                |r| r.queue.messages,
            ),
            (
                "ferry_transport_queue_bytes",
                "Payload bytes in the Store and Forward queue",
                |r| r.queue.bytes,
            ),
            (
                "ferry_transport_queue_oldest_age_seconds",
                "Age of the oldest queued transaction",
                |r| r.queue.oldest_age_seconds,
            ),
            (
                "ferry_transport_queue_unavailable",
                "1 while the transport's queue (a pool on JetStream) is unavailable: what it would queue is refused with 503 (T11)",
                |r| u64::from(r.queue_unavailable.is_some()),
            ),
        ];
        for (metric, help, value) in gauges {
            let mut family = encoder.encode_descriptor(
                metric,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for ((ns, name), report) in &reports {
                let labels = [("namespace", ns.as_str()), ("name", name.as_str())];
                ConstGauge::new(value(report) as i64).encode(family.encode_family(&labels)?)?;
            }
        }

        {
            let mut family = encoder.encode_descriptor(
            "ferry_transport_transactions",
            "Transactions by outcome: received, delivered, stored, forwarded, failed, expired, dropped",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
            for ((ns, name), report) in &reports {
                let t = &report.totals;
                for (outcome, value) in [
                    ("received", t.received),
                    ("delivered", t.delivered),
                    ("stored", t.stored),
                    ("forwarded", t.forwarded),
                    ("failed", t.failed),
                    ("expired", t.expired),
                    ("dropped", t.dropped),
                ] {
                    let labels = [
                        ("namespace", ns.as_str()),
                        ("name", name.as_str()),
                        ("outcome", outcome),
                    ];
                    ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
        }

        encode_connections(&self.0, &mut encoder)?;
        encode_panics(&self.0, &reports, &mut encoder)?;

        let budget = self.0.budget();
        for (metric, help, value) in [
            (
                "ferry_worker_memory_budget_bytes",
                "Transaction bytes ingest may hold in memory at once (--memory-budget)",
                budget.total(),
            ),
            (
                "ferry_worker_memory_in_use_bytes",
                "Transaction bytes ingest holds in memory now",
                budget.in_use(),
            ),
        ] {
            let family = encoder.encode_descriptor(
                metric,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            ConstGauge::new(value as i64).encode(family)?;
        }
        let family = encoder.encode_descriptor(
            "ferry_worker_ingest_refused",
            "Transactions refused before they were received because the memory budget was full (503) or too small for them (413)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        ConstCounter::new(budget.refused()).encode(family)?;
        Ok(())
    }
}

/// Every hosted connection's iteration, and per sync-set the records synced and whether the
/// last completed iteration failed.
/// `ferry_worker_panics_total`: panics caught in each hosted resource's work (every resource,
/// 0 included), by kind.
fn encode_panics(
    worker: &Worker,
    transports: &[((String, String), crate::wire::TransportReport)],
    encoder: &mut DescriptorEncoder,
) -> Result<(), fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "ferry_worker_panics",
        "Panics caught in a hosted resource's work (counted, the work started again, the other resources untouched)",
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    let panics = |faults: &Option<crate::api::Faults>| faults.as_ref().map_or(0, |f| f.panics);
    for ((ns, name), report) in transports {
        let labels = [
            ("kind", "transport"),
            ("namespace", ns.as_str()),
            ("name", name.as_str()),
        ];
        ConstCounter::new(panics(&report.faults)).encode(family.encode_family(&labels)?)?;
    }
    for connection in worker.all::<crate::connection::runtime::ConnectionRuntime>() {
        let (ns, name) = connection
            .key()
            .split_once('/')
            .unwrap_or(("default", connection.key()));
        let labels = [("kind", "connection"), ("namespace", ns), ("name", name)];
        ConstCounter::new(panics(&connection.report().faults))
            .encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn encode_connections(worker: &Worker, encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
    use prometheus_client::metrics::MetricType;
    let reports: Vec<_> = worker
        .all::<crate::connection::runtime::ConnectionRuntime>()
        .into_iter()
        .map(|c| {
            let (ns, name) = c.key().split_once('/').unwrap_or(("default", c.key()));
            (ns.to_owned(), name.to_owned(), c.report())
        })
        .collect();
    {
        let mut family = encoder.encode_descriptor(
            "ferry_connection_iteration",
            "The connection's current iteration number",
            None,
            MetricType::Gauge,
        )?;
        for (ns, name, report) in &reports {
            let labels = [("namespace", ns.as_str()), ("name", name.as_str())];
            ConstGauge::new(i64::try_from(report.iteration).unwrap_or(i64::MAX))
                .encode(family.encode_family(&labels)?)?;
        }
    }
    type PerSyncSet = fn(&crate::api::connection::SyncSetStatus) -> u64;
    let per_sync_set: [(&str, &str, MetricType, PerSyncSet); 2] = [
        (
            "ferry_connection_records_synced",
            "Records a sync-set delivered to its target",
            MetricType::Counter,
            |s| s.records_synced,
        ),
        (
            "ferry_connection_sync_set_failed",
            "1 when the sync-set's last completed iteration failed, 0 otherwise",
            MetricType::Gauge,
            |s| u64::from(s.last_result == Some(crate::api::connection::SyncResult::Failed)),
        ),
    ];
    for (metric, help, kind, value) in per_sync_set {
        let mut family = encoder.encode_descriptor(metric, help, None, kind)?;
        for (ns, name, report) in &reports {
            for set in &report.sync_sets {
                let labels = [
                    ("namespace", ns.as_str()),
                    ("name", name.as_str()),
                    ("sync_set", set.name.as_str()),
                ];
                let encoder = family.encode_family(&labels)?;
                match kind {
                    MetricType::Counter => ConstCounter::new(value(set)).encode(encoder)?,
                    _ => ConstGauge::new(i64::try_from(value(set)).unwrap_or(i64::MAX))
                        .encode(encoder)?,
                }
            }
        }
    }
    Ok(())
}

/// The registry served at `/metrics`.
pub fn registry(worker: Arc<Worker>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(TransportCollector(worker)));
    registry
}

/// What `render` writes (prometheus-client's text encoder writes OpenMetrics, `# EOF`
/// included), for the `Content-Type` of every `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// OpenMetrics text format.
pub fn render(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}
