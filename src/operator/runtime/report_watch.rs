//! How the operator learns of a worker's change without polling it: one long poll per ready
//! worker (`wire::CHANGED_FROM`). The worker answers when its report's state changes (at once)
//! or only its counters (after `--status-interval`), and `304` after 50 s of nothing; each
//! answer with a change asks for a reconcile of the resource, which writes the status. A
//! worker that stops answering asks for one too (its status then says so), and is asked
//! again after 1 s, doubling to 30 s.
//!
//! Cost per worker: one open HTTP connection to it and one request a minute while nothing
//! happens; none to the API server when the operator reaches workers directly (in cluster).
//! Through the API server's pod proxy (`--worker-access proxy`, outside a cluster) each of
//! those requests passes through the API server.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use serde_json::Value;
use tokio::task::JoinHandle;

use crate::operator::{
    runtime::triggers::SharedTriggers,
    runtime::worker_client::{WorkerClient, WorkerPod},
};

/// How long the worker holds a long poll while nothing changes.
pub const WAIT: Duration = Duration::from_secs(50);
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(30);

/// What a watcher follows: the resource, its worker pod (uid) and the report's path.
pub struct Follow<'a> {
    pub kind: &'static str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub worker: &'a WorkerPod,
    pub pod_uid: &'a str,
    pub path: String,
    /// The ETag of the report the reconcile just saw: a change since is reported.
    pub etag: String,
}

/// The running long polls, by `Kind namespace/name`.
#[derive(Debug, Default)]
pub struct ReportWatchers {
    running: Mutex<HashMap<String, (String, JoinHandle<()>)>>,
}

fn key(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind} {namespace}/{name}")
}

impl ReportWatchers {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, JoinHandle<()>)>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follow this worker's report, unless it is followed already (a new pod replaces the
    /// old one's watcher).
    pub fn follow(
        &self,
        follow: Follow<'_>,
        workers: &WorkerClient,
        triggers: &SharedTriggers,
        settle: Duration,
    ) {
        let key = key(follow.kind, follow.namespace, follow.name);
        let mut running = self.running();
        if let Some((pod_uid, task)) = running.get(&key)
            && pod_uid == follow.pod_uid
            && !task.is_finished()
        {
            return;
        }
        if let Some((_, old)) = running.remove(&key) {
            old.abort();
        }
        let task = tokio::spawn(watch(
            follow.kind,
            follow.namespace.to_owned(),
            follow.name.to_owned(),
            follow.worker.clone(),
            follow.path,
            follow.etag,
            workers.clone(),
            triggers.clone(),
            settle,
        ));
        running.insert(key, (follow.pod_uid.to_owned(), task));
    }

    /// Stop following (the worker is not ready, or the resource is gone).
    pub fn stop(&self, kind: &str, namespace: &str, name: &str) {
        if let Some((_, task)) = self.running().remove(&key(kind, namespace, name)) {
            task.abort();
        }
    }

    /// Workers followed now.
    pub fn len(&self) -> usize {
        self.running().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for ReportWatchers {
    fn drop(&mut self) {
        for (_, (_, task)) in self.running().drain() {
            task.abort();
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn watch(
    kind: &'static str,
    namespace: String,
    name: String,
    worker: WorkerPod,
    path: String,
    mut etag: String,
    workers: WorkerClient,
    triggers: SharedTriggers,
    settle: Duration,
) {
    let mut retry = RETRY_FIRST;
    loop {
        match workers
            .watch::<Value>(&worker, &path, Some(&etag), WAIT, settle)
            .await
        {
            Ok(Some((_, changed))) => {
                etag = changed;
                retry = RETRY_FIRST;
                triggers.send(kind, &namespace, &name);
            }
            Ok(None) => retry = RETRY_FIRST,
            Err(e) => {
                tracing::debug!(resource = %key(kind, &namespace, &name), error = %e, "the worker's report cannot be followed; asking again");
                triggers.send(kind, &namespace, &name);
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_CAP);
            }
        }
    }
}
