//! The operator at scale (issue 21's figures), against the throwaway control plane with the
//! process kubelet. A benchmark, not a check: it prints, and asserts nothing about time.
//!
//! `tests/e2e/run operator_at_scale -- --ignored --nocapture` with
//! `FERRY_SCALE_RESOURCES` Transports (default 1000) of which `FERRY_SCALE_LIVE` (default 200)
//! get a running worker; the others live in a namespace the process kubelet does not run, so
//! their workers stay Pending (the machine holds a few hundred worker processes, not 1,000).
//! `FERRY_SCALE_WINDOW` seconds (default 120) of rest are measured, with and without the
//! operator. With `FERRY_SCALE_POOLS=P` (issue 22) every Transport is live and named to one of
//! P WorkerPools of one worker each (round robin), beside a pool that hosts nothing (the idle
//! worker's baseline).
//!
//! Prints: seconds from the end of `kubectl apply` to every Transport having a Ready
//! condition; API server requests per resource per minute at rest by verb and resource (from
//! the API server's own `apiserver_request_total`, watches left out, minus the same window
//! with the operator stopped); the operator's RSS and CPU at rest; p50/p99 of `suspended:
//! true` → `.status.state: Suspended` over the live ones; with pools, also the pool workers'
//! RSS per hosted transport at rest (above the empty pool's worker).

use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use ferry::api::Transport;
use futures::StreamExt;
use kube::{
    Api, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;

use crate::cluster::{Cluster, Operator, env, kubectl, say};

fn number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Transports `names` (with the WorkerPool each names, if any).
fn transports_yaml(
    namespace: &str,
    names: impl Iterator<Item = (String, Option<String>)>,
    host: &str,
) -> String {
    names
        .map(|(name, pool)| {
            let pool = pool.map_or_else(String::new, |p| format!("  workerPool: {p}\n"));
            format!(
                "apiVersion: ferry.dev/v1alpha1\nkind: Transport\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{pool}  loadAtInit: true\n  host:\n    url: {host}/ingest\n  storage:\n    size: 16Mi\n    reclaimPolicy: Delete\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// WorkerPools `pool-0`.. of one worker each, and `empty`, which hosts nothing.
fn pools_yaml(namespace: &str, pools: usize, capacity: usize) -> String {
    (0..pools)
        .map(|i| format!("pool-{i}"))
        .chain(["empty".to_owned()])
        .map(|name| {
            format!(
                "apiVersion: ferry.dev/v1alpha1\nkind: WorkerPool\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  replicas: 1\n  capacity: {capacity}\n  storage:\n    size: 64Mi\n    reclaimPolicy: Delete\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The pid of the `ferry worker` process of pod `pod` (its environment has `POD_NAME`).
fn pid_of(pod: &str) -> Option<u32> {
    let wanted = format!("POD_NAME={pod}");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            let named = environ.split(|b| *b == 0).any(|v| v == wanted.as_bytes());
            (cmdline.contains(" worker ") && named).then_some(pid)
        })
}

/// `apiserver_request_total` by (verb, resource[/subresource]), watches left out.
async fn requests(client: &kube::Client) -> BTreeMap<(String, String), f64> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("request");
    let text = client
        .request_text(request)
        .await
        .expect("API server metrics");
    let mut totals = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|l| l.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let verb = label("verb");
        if verb == "WATCH" || verb == "CONNECT" {
            continue;
        }
        let mut resource = label("resource");
        let subresource = label("subresource");
        if !subresource.is_empty() {
            resource = format!("{resource}/{subresource}");
        }
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        *totals.entry((verb, resource)).or_insert(0.0) += value;
    }
    totals
}

fn delta(
    after: &BTreeMap<(String, String), f64>,
    before: &BTreeMap<(String, String), f64>,
) -> BTreeMap<(String, String), f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// A field of `/proc/<pid>/status` in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Reconciles the operator has finished, of every kind and outcome
/// (`ferry_operator_reconciles_total`).
fn reconciles(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with("ferry_operator_reconciles_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// (RSS in KiB, CPU ticks used) of a process.
fn process(pid: u32) -> (u64, u64) {
    let rss = status_kib(pid, "VmRSS:");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // After the command: state is field 0, utime 11, stime 12.
    (rss, ticks(11) + ticks(12))
}

/// Every Transport in `namespaces`, as listed now.
async fn list(client: &kube::Client, namespaces: &[&str]) -> Vec<Transport> {
    let mut all = Vec::new();
    for namespace in namespaces {
        let api: Api<Transport> = Api::namespaced(client.clone(), namespace);
        all.extend(
            api.list(&Default::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default(),
        );
    }
    all
}

fn has_ready(transport: &Transport) -> bool {
    transport
        .status
        .as_ref()
        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Sink(Child);

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
#[ignore = "a benchmark: tests/e2e/run operator_at_scale -- --ignored --nocapture"]
async fn operator_at_scale() {
    let Some(env) = env("scale") else { return };
    let total = number("FERRY_SCALE_RESOURCES", 1000);
    let pools = number("FERRY_SCALE_POOLS", 0);
    // In pools every transport is live: a worker process hosts many.
    let live = if pools > 0 {
        total
    } else {
        number("FERRY_SCALE_LIVE", 200).min(total)
    };
    let window = Duration::from_secs(number("FERRY_SCALE_WINDOW", 120) as u64);
    let cluster = Cluster::start(env, "scale").await;
    // The process kubelet runs only pods of ferry-e2e-* namespaces: these workers stay Pending.
    let idle = format!("ferry-scale-idle-{}", std::process::id());
    kubectl(&cluster.env, &["create", "namespace", &idle], None).expect("the idle namespace");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let host = format!("http://127.0.0.1:{port}");
    let _sink = Sink(
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["sink", "--listen", &format!("127.0.0.1:{port}"), "--quiet"])
            .stdout(Stdio::null())
            .spawn()
            .expect("ferry sink"),
    );

    let mut operator = Operator::with(&cluster, &[]);
    let namespaces = [cluster.namespace.as_str(), idle.as_str()];
    if pools > 0 {
        kubectl(
            &cluster.env,
            &["apply", "--server-side", "-f", "-"],
            Some(&pools_yaml(
                &cluster.namespace,
                pools,
                total.div_ceil(pools),
            )),
        )
        .expect("the pools");
    }
    let pool_of = |i: usize| (pools > 0).then(|| format!("pool-{}", i % pools));
    let live_yaml = transports_yaml(
        &cluster.namespace,
        (0..live).map(|i| (format!("t{i:04}"), pool_of(i))),
        &host,
    );
    let idle_yaml = transports_yaml(
        &idle,
        (live..total).map(|i| (format!("t{i:04}"), None)),
        &host,
    );
    let applied = Instant::now();
    for yaml in [live_yaml, idle_yaml] {
        if !yaml.is_empty() {
            kubectl(
                &cluster.env,
                &["apply", "--server-side", "-f", "-"],
                Some(&yaml),
            )
            .expect("kubectl apply");
        }
    }
    let apply_took = applied.elapsed();
    let applied = Instant::now();
    let all_ready = loop {
        let listed = list(&cluster.client, &namespaces).await;
        if listed.len() == total && listed.iter().all(has_ready) {
            break applied.elapsed();
        }
        // A stopped operator (a zombie until waited for) has no resident memory.
        let running = operator.pid().is_some_and(|pid| process(pid).0 > 0);
        assert!(running, "the operator stopped: {}", operator.log());
        assert!(
            applied.elapsed() < Duration::from_secs(600),
            "no Ready condition on some after 10 min"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    say(&format!(
        "scale: {total} Transports ({live} with a running worker) applied in {:.1}s; every one has a Ready condition {:.1}s after the apply ended",
        apply_took.as_secs_f64(),
        all_ready.as_secs_f64()
    ));

    // The live ones Up and Ready, then rest.
    let started = Instant::now();
    loop {
        let listed = list(&cluster.client, &[&cluster.namespace]).await;
        let up = listed
            .iter()
            .filter(|t| {
                t.status.as_ref().is_some_and(|s| {
                    s.state.map(|s| s.as_str()) == Some("Up")
                        && s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        if up == live {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "only {up} of {live} Up after 15 min"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    say(&format!(
        "scale: the {live} live ones Up and Ready {:.1}s after the apply ended",
        (started.elapsed() + all_ready).as_secs_f64()
    ));
    // At rest means the cluster too: every StatefulSet has made its pod and claim (the
    // controller manager works through a thousand at its own pace).
    let pods_made = Instant::now();
    loop {
        let mut pods = 0;
        for namespace in namespaces {
            let api: Api<k8s_openapi::api::core::v1::Pod> =
                Api::namespaced(cluster.client.clone(), namespace);
            pods += api
                .list(&Default::default())
                .await
                .map(|l| l.items.len())
                .unwrap_or(0);
        }
        // A worker each, or one per pool (and the empty one).
        if pods >= if pools > 0 { pools + 1 } else { total } {
            break;
        }
        assert!(
            pods_made.elapsed() < Duration::from_secs(900),
            "only {pods} of {total} worker pods made after 15 min"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    tokio::time::sleep(Duration::from_secs(60)).await;

    // What the cluster does at rest without the operator (the kubelet's heartbeats, the
    // scheduler retrying the Pending workers, ...), then with it once it has settled again
    // after its restart (which applies and pushes everything once).
    operator.terminate();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = requests(&cluster.client).await;
    tokio::time::sleep(window).await;
    let after = requests(&cluster.client).await;
    let without_operator = delta(&after, &before);
    operator = Operator::with(&cluster, &[]);
    // At rest again: the restarted operator has reconciled everything once (its reconciles
    // stop counting up), and the cluster has had a minute to answer what it applied.
    let restarted = Instant::now();
    let mut last = None;
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let done = reconciles(&operator.metrics().await);
        if last == Some(done) && done >= total as f64 {
            break;
        }
        last = Some(done);
        assert!(
            restarted.elapsed() < Duration::from_secs(900),
            "the restarted operator still reconciles after 15 min"
        );
    }
    say(&format!(
        "scale: the restarted operator reconciled all {total} once in {:.0}s (to within 10 s)",
        restarted.elapsed().as_secs_f64()
    ));
    tokio::time::sleep(Duration::from_secs(60)).await;

    let pid = operator.pid().expect("the operator runs");
    let (_, cpu_before) = process(pid);
    let before = requests(&cluster.client).await;
    tokio::time::sleep(window).await;
    let after = requests(&cluster.client).await;
    let (rss, cpu_after) = process(pid);
    let (anon, file) = (status_kib(pid, "RssAnon:"), status_kib(pid, "RssFile:"));
    let with_operator = delta(&after, &before);
    // The pool workers at rest: RSS per hosted transport above the empty pool's worker.
    let workers_rss = (pools > 0).then(|| {
        let empty = pid_of("ferry-wp-empty-0").map_or(0, |pid| process(pid).0);
        let hosting: Vec<u64> = (0..pools)
            .filter_map(|i| pid_of(&format!("ferry-wp-pool-{i}-0")))
            .map(|pid| process(pid).0)
            .collect();
        (empty, hosting)
    });
    let ticks_per_second = 100.0;
    let cpu = (cpu_after - cpu_before) as f64 / ticks_per_second / window.as_secs_f64() * 100.0;

    // Suspend every live one at once; time each to Suspended.
    let api: Api<Transport> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let (seen_sender, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let watching = {
        let api = api.clone();
        tokio::spawn(async move {
            let mut stream =
                std::pin::pin!(watcher(api, watcher::Config::default()).applied_objects());
            while let Some(Ok(transport)) = stream.next().await {
                if transport
                    .status
                    .as_ref()
                    .and_then(|s| s.state)
                    .map(|s| s.as_str())
                    == Some("Suspended")
                {
                    let _ = seen_sender.send((transport.name_any(), Instant::now()));
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut patched = BTreeMap::new();
    let patch = kube::api::Patch::Merge(json!({"spec": {"suspended": true}}));
    for i in 0..live {
        let name = format!("t{i:04}");
        patched.insert(name.clone(), Instant::now());
        api.patch(&name, &Default::default(), &patch)
            .await
            .expect("suspend");
    }
    let mut latencies = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while latencies.len() < live && Instant::now() < deadline {
        if let Ok(Some((name, at))) =
            tokio::time::timeout(Duration::from_secs(5), seen.recv()).await
            && let Some(sent) = patched.get(&name)
        {
            latencies.entry(name).or_insert((at - *sent).as_secs_f64());
        }
    }
    watching.abort();
    let mut sorted: Vec<f64> = latencies.values().copied().collect();
    sorted.sort_by(f64::total_cmp);

    let warnings: Vec<String> = operator
        .log()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains("ERROR"))
        .map(str::to_owned)
        .collect();
    if !warnings.is_empty() {
        say(&format!(
            "scale: the operator warned {} times; the last ones:\n{}",
            warnings.len(),
            warnings[warnings.len().saturating_sub(5)..].join("\n")
        ));
    }

    let minutes = window.as_secs_f64() / 60.0;
    let mut rows = Vec::new();
    let (mut writes, mut reads) = (0.0, 0.0);
    for (key, with) in &with_operator {
        let without = without_operator.get(key).copied().unwrap_or(0.0);
        let per = (with - without).max(0.0) / total as f64 / minutes;
        if per > 0.0 {
            if matches!(key.0.as_str(), "GET" | "LIST") {
                reads += per;
            } else {
                writes += per;
            }
            rows.push(format!("  {:<7} {:<36} {per:.4}", key.0, key.1));
        }
    }
    say(&format!(
        "scale: at rest, API requests per resource per minute (watches left out, minus the cluster without the operator, {}s windows):\n{}\n  all writes {writes:.4}, all reads {reads:.4}",
        window.as_secs(),
        if rows.is_empty() {
            "  (none)".to_owned()
        } else {
            rows.join("\n")
        }
    ));
    say(&format!(
        "scale: operator at rest with {total} resources: RSS {:.1} MiB ({:.1} MiB heap and stacks, {:.1} MiB of its binary and libraries; a {} build), CPU {cpu:.2}% of one core",
        rss as f64 / 1024.0,
        anon as f64 / 1024.0,
        file as f64 / 1024.0,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    ));
    if let Some((empty, hosting)) = &workers_rss {
        let per_worker = total as f64 / pools as f64;
        let mean = hosting.iter().sum::<u64>() as f64 / hosting.len().max(1) as f64;
        say(&format!(
            "scale: {pools} pool workers hosting {per_worker:.0} transports each at rest: RSS mean {:.1} MiB, max {:.1} MiB; an empty pool's worker {:.1} MiB; per hosted transport {:.0} KiB above the empty worker ({:.0} KiB of the whole RSS)",
            mean / 1024.0,
            hosting.iter().max().copied().unwrap_or(0) as f64 / 1024.0,
            *empty as f64 / 1024.0,
            (mean - *empty as f64) / per_worker,
            mean / per_worker,
        ));
    }
    say(&format!(
        "scale: suspended: true → state Suspended over {} live workers ({} seen): p50 {:.2}s, p99 {:.2}s, max {:.2}s",
        live,
        sorted.len(),
        percentile(&sorted, 50.0),
        percentile(&sorted, 99.0),
        sorted.last().copied().unwrap_or(f64::NAN)
    ));

    // Cleanup: the operator removes the finalizers while the namespaces go; the idle
    // namespace's pods never ran, so nothing on a node says they stopped: they are removed
    // by force. (Cluster's drop then ends the live namespace.)
    // Deleted first (each once, while the operator runs): a terminating namespace's own
    // deletion of them retries with backoff.
    for namespace in [idle.as_str(), cluster.namespace.as_str()] {
        let _ = kubectl(
            &cluster.env,
            &[
                "delete",
                "transports",
                "--all",
                "-n",
                namespace,
                "--wait=false",
            ],
            None,
        );
    }
    let _ = kubectl(
        &cluster.env,
        &["delete", "namespace", &idle, "--wait=false"],
        None,
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline
        && kubectl(&cluster.env, &["get", "namespace", &idle], None).is_ok()
    {
        let _ = kubectl(
            &cluster.env,
            &[
                "delete",
                "pods",
                "--all",
                "-n",
                &idle,
                "--force",
                "--grace-period=0",
                "--wait=false",
            ],
            None,
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
