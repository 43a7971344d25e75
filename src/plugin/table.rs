//! `kubectl ferry status`: one line per Transport and Connection — state, queue depth, the
//! worker it runs on (`pool/worker` in a WorkerPool), how long ago the worker last reported,
//! and the Ready condition with its message. `kubectl ferry pool NAME`: a pool's workers and
//! what each hosts.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject, ListParams},
};
use serde_json::Value;

use super::PluginError;
use crate::api::{Connection, Transport, WorkerPool, worker_pool::Placement};
use crate::operator::{
    reconcile::skeleton::WorkerResource,
    runtime::status::{Placeable, WithConditions},
};

/// One line of the table.
#[derive(Debug, PartialEq)]
pub struct Row {
    pub namespace: String,
    pub kind: &'static str,
    pub name: String,
    pub state: String,
    pub queue: String,
    /// Its worker's pod; `pool/worker` in a WorkerPool, `pool/-` before it has a place.
    pub worker: String,
    pub last_report: String,
    pub ready: String,
    pub message: String,
}

/// `5s`, `3m`, `2h`, `4d`, as kubectl shows ages; `never` without a report.
pub fn age(since: Option<&Time>, now: Timestamp) -> String {
    let Some(since) = since else {
        return "never".into();
    };
    let seconds = now.as_second().saturating_sub(since.0.as_second()).max(0);
    format_age(seconds.unsigned_abs())
}

/// A number of seconds as kubectl shows ages: `5s`, `3m`, `2h`, `4d`.
pub fn format_age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// What a resource without any status means: the operator is the only writer of `.status`.
pub const NO_STATUS: &str = "no status yet: no ferry operator has written one (none runs for this namespace, or it cannot read or write this resource; see docs/troubleshooting.md#no-status)";

/// The Ready condition's status and message; a resource without a Ready condition says why.
fn ready(conditions: &[Condition]) -> (String, String) {
    conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map_or(("Unknown".into(), NO_STATUS.into()), |c| {
            (c.status.clone(), c.message.clone())
        })
}

/// Where a resource runs: its own worker's pod, or `pool/worker` in a WorkerPool.
fn worker_of(short: &str, name: &str, pool: Option<&str>, placement: Option<&Placement>) -> String {
    match (pool, placement) {
        (None, _) => format!(
            "{}-0",
            crate::operator::objects::builders::worker_name(short, name)
        ),
        (Some(pool), Some(p)) if p.worker_pool == pool => format!("{pool}/{}", p.worker),
        (Some(pool), _) => format!("{pool}/-"),
    }
}

pub fn transport_row(t: &Transport, now: Timestamp) -> Row {
    let status = t.status.clone().unwrap_or_default();
    let (ready, message) = ready(&status.conditions);
    let worker = worker_of(
        "tp",
        &t.name_any(),
        t.spec.worker_pool.as_deref(),
        status.placement.as_ref(),
    );
    Row {
        namespace: t.namespace().unwrap_or_default(),
        kind: "Transport",
        name: t.name_any(),
        state: status
            .state
            .map_or_else(|| "Pending".into(), |s| s.as_str().to_owned()),
        queue: status.queue.messages.to_string(),
        worker,
        last_report: age(status.last_report_time.as_ref(), now),
        ready,
        message,
    }
}

pub fn connection_row(c: &Connection, now: Timestamp) -> Row {
    let status = c.status.clone().unwrap_or_default();
    let (ready, message) = ready(&status.conditions);
    let worker = worker_of(
        "conn",
        &c.name_any(),
        c.spec.worker_pool.as_deref(),
        status.placement.as_ref(),
    );
    Row {
        namespace: c.namespace().unwrap_or_default(),
        kind: "Connection",
        name: c.name_any(),
        state: status
            .status
            .map_or_else(|| "Pending".into(), |s| s.as_str().to_owned()),
        queue: "-".into(),
        worker,
        last_report: age(status.last_report_time.as_ref(), now),
        ready,
        message,
    }
}

/// Columns padded to their widest cell, as kubectl prints; NAMESPACE only across namespaces.
pub fn render(rows: &[Row], with_namespace: bool) -> String {
    let header = [
        "NAMESPACE",
        "KIND",
        "NAME",
        "STATE",
        "QUEUE",
        "WORKER",
        "LAST REPORT",
        "READY",
        "MESSAGE",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        lines.push(vec![
            r.namespace.clone(),
            r.kind.to_string(),
            r.name.clone(),
            r.state.clone(),
            r.queue.clone(),
            r.worker.clone(),
            r.last_report.clone(),
            r.ready.clone(),
            r.message.clone(),
        ]);
    }
    columns(&lines, usize::from(!with_namespace))
}

/// Lines of cells as columns padded to their widest cell (the last one not padded), leaving
/// out the first `skip` columns, as kubectl prints tables.
pub fn columns(lines: &[Vec<String>], skip: usize) -> String {
    let count = lines.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..count)
        .map(|i| {
            lines
                .iter()
                .map(|l| l.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in lines {
        let cells: Vec<String> = line
            .iter()
            .enumerate()
            .skip(skip)
            .map(|(i, cell)| {
                if i + 1 == line.len() {
                    cell.clone()
                } else {
                    format!("{cell:<width$}", width = widths[i])
                }
            })
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// The row of an object ferry cannot read (stored before a CRD bound existed): listed, not an
/// error that hides the others. The message is the operator's (its Ready condition, naming the
/// field) or, before the operator has seen it, the reader's.
pub fn unreadable_row(kind: &'static str, raw: &Value, error: &serde_json::Error) -> Row {
    let text = |pointer: &str| {
        raw.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let operator_says = raw
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| {
            c["type"] == "Ready" && c["reason"] == crate::operator::runtime::status::INVALID_SPEC
        })
        .and_then(|c| c["message"].as_str());
    Row {
        namespace: text("/metadata/namespace").to_owned(),
        kind,
        name: text("/metadata/name").to_owned(),
        state: "Unreadable".into(),
        queue: "-".into(),
        worker: "-".into(),
        last_report: "-".into(),
        ready: "False".into(),
        message: operator_says
            .map_or_else(|| format!("ferry cannot read it: {error}"), str::to_owned),
    }
}

/// Every object of kind `K` in `namespace` (None: all), each read on its own.
async fn rows<K>(
    client: kube::Client,
    namespace: Option<&str>,
    kind: &'static str,
    row: impl Fn(&K) -> Row,
) -> Result<Vec<Row>, PluginError>
where
    K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned,
{
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client, ns, &resource),
        None => Api::all_with(client, &resource),
    };
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|object| {
            let raw = serde_json::to_value(object).unwrap_or_default();
            match serde_json::from_value::<K>(raw.clone()) {
                Ok(object) => row(&object),
                Err(error) => unreadable_row(kind, &raw, &error),
            }
        })
        .collect())
}

/// List and render; `namespace` None = every namespace.
pub async fn status(client: kube::Client, namespace: Option<&str>) -> Result<String, PluginError> {
    let now = Timestamp::now();
    let mut listed = rows(client.clone(), namespace, "Transport", |t| {
        transport_row(t, now)
    })
    .await?;
    listed.extend(rows(client, namespace, "Connection", |c| connection_row(c, now)).await?);
    if listed.is_empty() {
        return Ok(match namespace {
            Some(ns) => format!("No Transports or Connections in namespace {ns}.\n"),
            None => "No Transports or Connections.\n".into(),
        });
    }
    listed.sort_by(|a, b| (&a.namespace, a.kind, &a.name).cmp(&(&b.namespace, b.kind, &b.name)));
    Ok(render(&listed, namespace.is_none()))
}

/// A pooled resource as the pool listing shows it: `Transport erp`, and where it is.
pub struct Hosted {
    pub what: String,
    pub placement: Option<Placement>,
    /// Its Ready reason, shown for one without a place (`PoolFull`, `NoReadyWorker`).
    pub reason: String,
}

/// `kubectl ferry pool NAME`: the pool's workers in ordinal order (ready, hosted of its
/// capacity, the resources placed there), then the resources that name it without a place.
pub fn pool_table(pool: &WorkerPool, resources: &[Hosted]) -> String {
    let name = pool.name_any();
    let status = pool.status.clone().unwrap_or_default();
    let mut lines = vec![
        ["WORKER", "READY", "HOSTED", "RESOURCES"]
            .map(str::to_owned)
            .to_vec(),
    ];
    let on = |worker: &str| {
        let mut names: Vec<&str> = resources
            .iter()
            .filter(|r| {
                r.placement
                    .as_ref()
                    .is_some_and(|p| p.worker_pool == name && p.worker == worker)
            })
            .map(|r| r.what.as_str())
            .collect();
        names.sort_unstable();
        names
    };
    for worker in &status.workers {
        let names = on(&worker.name);
        lines.push(vec![
            worker.name.clone(),
            if worker.ready { "True" } else { "False" }.to_owned(),
            format!("{}/{}", names.len(), pool.spec.capacity),
            names.join(", "),
        ]);
    }
    let mut waiting: Vec<String> = resources
        .iter()
        .filter(|r| r.placement.as_ref().is_none_or(|p| p.worker_pool != name))
        .map(|r| format!("{} ({})", r.what, r.reason))
        .collect();
    waiting.sort();
    if !waiting.is_empty() {
        lines.push(vec![
            "(no place)".into(),
            "-".into(),
            waiting.len().to_string(),
            waiting.join(", "),
        ]);
    }
    let (ready, message) = ready(&status.conditions);
    // Where the queues are; on JetStream, how many resources moved off failed workers.
    let queue = match pool.spec.jetstream() {
        Some(js) => format!(
            "queues on JetStream ({}, {} replicas, failover after {}, {} moved); ",
            js.url, js.replicas, pool.spec.failover_after, status.moves
        ),
        None => String::new(),
    };
    format!(
        "WorkerPool {name}: {} of {} workers ready, capacity {} each; {queue}Ready={ready} {message}\n{}",
        status.ready_workers,
        pool.spec.replicas,
        pool.spec.capacity,
        columns(&lines, 0)
    )
}

/// The resources of one kind listed by `api` that name the pool `pool`.
async fn in_pool<R>(api: Api<R>, pool: &str) -> Result<Vec<Hosted>, PluginError>
where
    R: WorkerResource + Clone + std::fmt::Debug,
{
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|r| r.worker_pool() == Some(pool))
        .map(|r| {
            let status = r.status();
            Hosted {
                what: format!("{} {}", R::KIND, r.name_any()),
                placement: status.and_then(Placeable::placement).cloned(),
                reason: status
                    .and_then(|s| s.conditions().iter().find(|c| c.type_ == "Ready"))
                    .map_or_else(|| "no status yet".to_owned(), |c| c.reason.clone()),
            }
        })
        .collect())
}

/// List the pool and what names it; answers the table.
pub async fn pool(
    client: kube::Client,
    namespace: &str,
    name: &str,
) -> Result<String, PluginError> {
    let pool = Api::<WorkerPool>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
        .ok_or_else(|| PluginError::NotFound {
            kind: "WorkerPool".into(),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        })?;
    let mut resources = in_pool(
        Api::<Transport>::namespaced(client.clone(), namespace),
        name,
    )
    .await?;
    resources.extend(in_pool(Api::<Connection>::namespaced(client, namespace), name).await?);
    Ok(pool_table(&pool, &resources))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_like_kubectl() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let at = |s: i64| Time(Timestamp::from_second(1_000_000 - s).unwrap());
        assert_eq!(age(None, now), "never");
        assert_eq!(age(Some(&at(5)), now), "5s");
        assert_eq!(age(Some(&at(600)), now), "10m");
        assert_eq!(age(Some(&at(3 * 3600)), now), "3h");
        assert_eq!(age(Some(&at(3 * 86400)), now), "3d");
    }

    #[test]
    fn a_table_with_and_without_namespaces() {
        let row = |kind, name: &str, state: &str, queue: &str| Row {
            namespace: "plant-a".into(),
            kind,
            name: name.into(),
            state: state.into(),
            queue: queue.into(),
            worker: "ferry-tp-erp-0".into(),
            last_report: "3s".into(),
            ready: "True".into(),
            message: "".into(),
        };
        let rows = [
            row("Transport", "erp", "S&F Suspended", "120"),
            row("Connection", "crm-orders", "Running", "-"),
        ];
        assert_eq!(
            render(&rows, false),
            "KIND         NAME         STATE           QUEUE   WORKER           LAST REPORT   READY   MESSAGE\n\
             Transport    erp          S&F Suspended   120     ferry-tp-erp-0   3s            True\n\
             Connection   crm-orders   Running         -       ferry-tp-erp-0   3s            True\n"
        );
        assert!(render(&rows, true).starts_with("NAMESPACE   KIND"));
    }

    #[test]
    fn the_worker_column_names_the_pool_and_worker() {
        let placed = Placement {
            worker_pool: "fleet".into(),
            worker: "ferry-wp-fleet-1".into(),
        };
        assert_eq!(worker_of("tp", "erp", None, None), "ferry-tp-erp-0");
        assert_eq!(
            worker_of("tp", "erp", Some("fleet"), Some(&placed)),
            "fleet/ferry-wp-fleet-1"
        );
        assert_eq!(worker_of("conn", "crm", Some("fleet"), None), "fleet/-");
    }

    #[test]
    fn a_pool_lists_its_workers_and_what_waits_for_a_place() {
        let pool: WorkerPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "WorkerPool",
            "metadata": {"name": "fleet", "namespace": "plant-a"},
            "spec": {"replicas": 2, "capacity": 2},
            "status": {"readyWorkers": 1, "hosted": 2, "workers": [
                {"name": "ferry-wp-fleet-0", "ready": true, "hosted": 2},
                {"name": "ferry-wp-fleet-1", "ready": false, "hosted": 0},
            ], "conditions": [{"type": "Ready", "status": "True", "reason": "Ready",
                "message": "2 resources on 1 ready worker", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        }))
        .unwrap();
        let on = |what: &str, worker: Option<&str>, reason: &str| Hosted {
            what: what.into(),
            placement: worker.map(|w| Placement {
                worker_pool: "fleet".into(),
                worker: w.into(),
            }),
            reason: reason.into(),
        };
        let table = pool_table(
            &pool,
            &[
                on("Transport erp", Some("ferry-wp-fleet-0"), "Up"),
                on("Connection crm", Some("ferry-wp-fleet-0"), "Running"),
                on("Transport late", None, "PoolFull"),
            ],
        );
        assert_eq!(
            table,
            "WorkerPool fleet: 1 of 2 workers ready, capacity 2 each; Ready=True 2 resources on 1 ready worker\n\
             WORKER             READY   HOSTED   RESOURCES\n\
             ferry-wp-fleet-0   True    2/2      Connection crm, Transport erp\n\
             ferry-wp-fleet-1   False   0/2\n\
             (no place)         -       1        Transport late (PoolFull)\n"
        );
        let mut on_jetstream = pool.clone();
        on_jetstream.spec.queue = serde_json::from_value(
            serde_json::json!({"jetstream": {"url": "nats://nats:4222", "replicas": 3}}),
        )
        .unwrap();
        on_jetstream.status.as_mut().unwrap().moves = 4;
        let table = pool_table(&on_jetstream, &[]);
        assert!(
            table.contains(
                "queues on JetStream (nats://nats:4222, 3 replicas, failover after 20s, 4 moved)"
            ),
            "{table}"
        );
    }
}
