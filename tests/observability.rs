//! What teams install beside ferry reads only what ferry exports: every metric an alert
//! (charts/ferry/files/prometheus-rules.yaml) or a dashboard panel (charts/ferry/files/
//! dashboard.json) names is served by a real worker's or the operator's `/metrics`, with the
//! labels and label values it matches on; every alert has a runbook section and promtool tests.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use common::{TestHost, TestSource, WorkerProc, spec};
use ferry::{
    api::{Connection, Transport},
    operator::{reconcile::skeleton::count_by_state, runtime::metrics::OperatorMetrics},
};
use promql_parser::{
    label::MatchOp,
    parser::{self, Expr},
    util::{ExprVisitor, walk_expr},
};
use serde_json::{Value, json};

/// Labels Prometheus adds to every series of a scraped pod (the chart's monitors).
const TARGET_LABELS: [&str; 2] = ["namespace", "pod"];
/// Series that come from others, not ferry: the kubelet's volume statistics.
const FOREIGN: [&str; 2] = [
    "kubelet_volume_stats_available_bytes",
    "kubelet_volume_stats_capacity_bytes",
];

/// Series name → every label set seen on it. A family without samples has an empty list.
type Exported = BTreeMap<String, Vec<BTreeMap<String, String>>>;

/// Reads Prometheus' text format: the series each `# TYPE` line allows (with `_total`,
/// `_bucket`, `_sum`, `_count`), and the labels of every sample.
fn parse_exposition(text: &str, into: &mut Exported) {
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            let names = match kind {
                "counter" => vec![format!("{name}_total")],
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .map(|s| format!("{name}{s}"))
                    .collect(),
                _ => vec![name.to_owned()],
            };
            for name in names {
                into.entry(name).or_default();
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let (series, _) = line.rsplit_once(' ').unwrap();
            let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
            let labels = labels.trim_end_matches('}');
            let mut set = BTreeMap::new();
            // Values here hold no `",` (names, states, outcomes).
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"").unwrap();
                set.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
            }
            into.entry(name.to_owned()).or_default().push(set);
        }
    }
}

/// A worker hosting a transport and a connection, scraped once both have reported.
async fn worker_metrics(into: &mut Exported) {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start().await;
    let source = TestSource::start().await;
    source.put("orders", "a", 1);
    let worker = WorkerProc::start(dir.path()).await;
    worker.apply("erp", spec(&host)).await;
    let sync_set = json!({"name": "orders",
        "source": {"http": {"url": source.url("orders"), "itemsPointer": "/items"}},
        "target": {"http": {"url": host.url()}}});
    let (status, report) = worker
        .put_connection(
            "crm",
            json!({"frequency": "1s", "syncSets": [sync_set]}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{report}");
    worker
        .wait_connection("crm", "a completed iteration", |r| {
            r["syncSets"][0]["lastResult"].is_string()
        })
        .await;
    parse_exposition(&worker.metrics().await, into);
}

fn resource(kind: &str, name: &str, status: Value) -> Value {
    json!({"apiVersion": "ferry.dev/v1alpha1", "kind": kind,
           "metadata": {"name": name, "namespace": "plant-a", "uid": name},
           "spec": {"host": {"url": "http://erp/ingest"}}, "status": status})
}

/// The operator's registry, with every family it serves filled: a reconcile and an error,
/// leadership, the startup queue, a worker's restarts, and resources in its caches.
fn operator_metrics(into: &mut Exported) {
    use kube::runtime::{reflector, watcher::Event};
    let metrics = Arc::new(OperatorMetrics::default());
    metrics.reconciled("Transport", Duration::from_millis(2), Some("apply"));
    metrics.set_leader(true);
    metrics.worker_restarts("plant-a", "ferry-tp-erp-0", 1);
    let (transports, mut writer) = reflector::store();
    writer.apply_watcher_event(&Event::Apply(
        serde_json::from_value(resource("Transport", "erp", json!({"state": "Up"}))).unwrap(),
    ));
    let (connections, mut writer) = reflector::store();
    writer.apply_watcher_event(&Event::Apply(
        serde_json::from_value(resource("Connection", "crm", json!({"status": "Running"})))
            .unwrap(),
    ));
    metrics.count_by_state(count_by_state::<Transport>(transports));
    metrics.count_by_state(count_by_state::<Connection>(connections));
    let text = ferry::worker::metrics::render(&metrics.registry()).unwrap();
    parse_exposition(&text, into);
}

/// A label matcher of a selector: label, op, value.
type Matcher = (String, MatchOp, String);

/// Every selector of a query: metric name and its matchers.
#[derive(Default)]
struct Selectors(Vec<(String, Vec<Matcher>)>);

impl ExprVisitor for Selectors {
    type Error = std::convert::Infallible;
    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Self::Error> {
        let selector = match expr {
            Expr::VectorSelector(vs) => vs,
            Expr::MatrixSelector(ms) => &ms.vs,
            _ => return Ok(true),
        };
        let name = selector.name.clone().unwrap_or_default();
        let matchers = selector
            .matchers
            .matchers
            .iter()
            .map(|m| (m.name.clone(), m.op.clone(), m.value.clone()))
            .collect();
        self.0.push((name, matchers));
        Ok(true)
    }
}

/// What is wrong with one query against what is exported.
fn check_query(query: &str, exported: &Exported) -> Vec<String> {
    // Grafana's variables, as Grafana would substitute them.
    let query = query
        .replace("$__rate_interval", "5m")
        .replace("$namespace", ".*");
    let expr = match parser::parse(&query) {
        Ok(expr) => expr,
        Err(e) => return vec![format!("{query}: not PromQL: {e}")],
    };
    let mut selectors = Selectors::default();
    walk_expr(&mut selectors, &expr).unwrap();
    assert!(!selectors.0.is_empty(), "{query}: selects nothing");
    let mut problems = Vec::new();
    for (name, matchers) in selectors.0 {
        if FOREIGN.contains(&name.as_str()) {
            continue;
        }
        let Some(samples) = exported.get(&name) else {
            problems.push(format!("{query}: no exported metric {name}"));
            continue;
        };
        for (label, op, value) in matchers {
            if TARGET_LABELS.contains(&label.as_str()) {
                continue;
            }
            let seen: BTreeSet<&str> = samples
                .iter()
                .filter_map(|s| s.get(&label).map(String::as_str))
                .collect();
            if seen.is_empty() {
                problems.push(format!("{query}: {name} has no label {label}"));
                continue;
            }
            // An exact value, or an alternation of exact values, must each be one ferry writes.
            let wanted: Vec<String> = match op {
                MatchOp::Equal => vec![value],
                MatchOp::Re(_)
                    if value
                        .chars()
                        .all(|c| c.is_alphanumeric() || " |&".contains(c)) =>
                {
                    value.split('|').map(str::to_owned).collect()
                }
                _ => continue,
            };
            for value in wanted {
                if !seen.contains(value.as_str()) {
                    problems.push(format!(
                        "{query}: {name}{{{label}=\"{value}\"}} is never exported (seen: {seen:?})"
                    ));
                }
            }
        }
    }
    problems
}

fn rule_groups() -> Value {
    let text = std::fs::read_to_string("charts/ferry/files/prometheus-rules.yaml").unwrap();
    serde_norway::from_str(&text).unwrap()
}

fn alerts() -> Vec<Value> {
    rule_groups()["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string("charts/ferry/files/dashboard.json").unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

fn panels() -> Vec<Value> {
    dashboard()["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboard_name_only_exported_metrics() {
    let mut exported = Exported::new();
    worker_metrics(&mut exported).await;
    operator_metrics(&mut exported);
    let mut problems = Vec::new();
    for alert in alerts() {
        problems.extend(check_query(alert["expr"].as_str().unwrap(), &exported));
    }
    for panel in panels() {
        for target in panel["targets"].as_array().unwrap() {
            problems.extend(check_query(target["expr"].as_str().unwrap(), &exported));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");

    // The check itself: a misspelt name or label value is caught.
    assert!(!check_query("ferry_transport_queue_depth", &exported).is_empty());
    assert!(
        !check_query(
            r#"ferry_transport_state{state="StoreAndForward"}"#,
            &exported
        )
        .is_empty()
    );
    assert!(
        !check_query(
            r#"ferry_operator_reconcile_errors_total{error=~"api|apply"}"#,
            &exported
        )
        .is_empty()
    );
}

/// Each alert has a summary, a description, a severity and a runbook section in docs/, and is
/// tested by promtool (a case where it fires).
#[test]
fn every_alert_has_a_runbook_and_a_test() {
    let runbook = std::fs::read_to_string("docs/runbook.md").unwrap();
    let tests: Value = serde_norway::from_str(
        &std::fs::read_to_string("tests/prometheus/rules.test.yaml").unwrap(),
    )
    .unwrap();
    let fired: BTreeSet<&str> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
        .filter(|t| t["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()))
        .filter_map(|t| t["alertname"].as_str())
        .collect();
    let alerts = alerts();
    assert!(alerts.len() >= 7, "the README's seven and more");
    for alert in &alerts {
        let name = alert["alert"].as_str().unwrap();
        for annotation in ["summary", "description", "runbook_url"] {
            assert!(
                alert["annotations"][annotation].is_string(),
                "{name}: {annotation}"
            );
        }
        assert!(
            ["critical", "warning"].contains(&alert["labels"]["severity"].as_str().unwrap_or("")),
            "{name}: severity"
        );
        let anchor = name.to_lowercase();
        assert_eq!(
            alert["annotations"]["runbook_url"],
            format!("https://github.com/ferry-dev/ferry/blob/main/docs/runbook.md#{anchor}"),
            "{name}"
        );
        assert!(
            runbook.contains(&format!("<a id=\"{anchor}\"></a>\n## {name}")),
            "docs/runbook.md has no section for {name}"
        );
        assert!(fired.contains(name), "no promtool test fires {name}");
    }
}

/// The dashboard is one Grafana can import: unique panel ids, panels inside the 24-column
/// grid, every query on the dashboard's data source variable, every variable it uses defined.
#[test]
fn the_dashboard_is_well_formed() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "ferry-overview");
    let variables: BTreeSet<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(variables, BTreeSet::from(["datasource", "namespace"]));
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "{title}: id");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && w > 0 && grid["h"].as_u64() > Some(0),
            "{title}: {grid}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            for used in expr.split('$').skip(1) {
                let name: String = used
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    name == "__rate_interval" || variables.contains(name.as_str()),
                    "{title}: ${name} is not a variable"
                );
            }
        }
    }
    // What the issue asks the dashboard to show.
    let all: String = panels()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    for shown in [
        "ferry_operator_resources{kind=\"Transport\"}",
        "ferry_transport_queue_messages",
        "ferry_transport_queue_oldest_age_seconds",
        "ferry_transport_transactions_total",
        "ferry_operator_resources{kind=\"Connection\"}",
        "ferry_connection_iteration",
        "ferry_operator_reconciles_total",
        "ferry_operator_reconcile_errors_total",
        "ferry_operator_reconcile_duration_seconds_bucket",
        "ferry_operator_leader",
    ] {
        assert!(all.contains(shown), "the dashboard shows no {shown}");
    }
}

/// `GET .../queue` on a real worker: the queue's numbers and its oldest transactions in order,
/// ids and sizes only; limits and tokens are enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_route_lists_the_oldest_transactions_without_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::down_from_the_start();
    let worker = WorkerProc::start(dir.path()).await;
    worker.apply("erp", spec(&host)).await;
    for (id, payload) in [("order-1", "a"), ("order-2", "bb"), ("order-3", "ccc")] {
        let (status, body) = worker.send("erp", payload, Some(id)).await;
        assert_eq!(status, 202, "{body}");
    }
    let url = format!("{}/queue", worker.transport_url("erp"));
    let get = |url: String, token: Option<&str>| {
        let request = worker.http().get(url);
        let request = match token {
            Some(t) => request.bearer_auth(t),
            None => request,
        };
        async move {
            let r = request.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, queue) = get(format!("{url}?limit=2"), Some(&worker.admin)).await;
    assert_eq!(status, 200, "{queue}");
    assert_eq!(queue["transport"], "default/erp");
    assert_eq!(queue["state"], "Store and Forward");
    assert_eq!(
        (queue["messages"].as_u64(), queue["bytes"].as_u64()),
        (Some(3), Some(6))
    );
    let oldest = queue["oldest"].as_array().unwrap();
    let listed: Vec<(&str, u64)> = oldest
        .iter()
        .map(|e| (e["id"].as_str().unwrap(), e["bytes"].as_u64().unwrap()))
        .collect();
    assert_eq!(listed, [("order-1", 1), ("order-2", 2)]);
    assert!(
        oldest
            .iter()
            .all(|e| e.get("payload").is_none() && e["ageSeconds"].is_u64())
    );
    assert!(!queue.to_string().contains("\"bb\""), "no payload: {queue}");

    let (status, all) = get(url.clone(), Some(&worker.admin)).await;
    assert_eq!(
        (status, all["oldest"].as_array().map(Vec::len)),
        (200, Some(3))
    );
    let (status, body) = get(format!("{url}?limit=101"), Some(&worker.admin)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("limit"), "{body}");
    assert_eq!(get(url.clone(), None).await.0, 401);
    assert_eq!(get(url.clone(), Some("wrong")).await.0, 401);
    let other = format!("{}/queue", worker.transport_url("nothing"));
    assert_eq!(get(other, Some(&worker.admin)).await.0, 404);
}
