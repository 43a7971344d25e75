//! The worker's pod: ready to be asked, or why not (missing and why it cannot be created,
//! pending, not ready).

use k8s_openapi::api::core::v1::Pod;
use kube::Api;

use crate::operator::{
    objects::builders::WorkerTokens,
    runtime::caches::{cached, synced},
    runtime::context::Context,
    runtime::worker_client::WorkerPod,
};

/// Why a worker cannot be asked: its pod could not be read (the API server), or it is not
/// running (missing, pending, not ready). The message says which pod and why.
#[derive(Debug, thiserror::Error)]
pub enum WorkerPodUnavailable {
    #[error("cannot read the worker pod {pod}: {}", crate::kube_error_line(source))]
    Unreadable {
        pod: String,
        #[source]
        source: kube::Error,
    },
    /// What is known of why it does not run, for the status.
    #[error("{0}")]
    NotRunning(String),
    /// The pod does not exist (yet, or it cannot be created): why, for the status.
    #[error("{0}")]
    Missing(String),
}

impl WorkerPodUnavailable {
    /// Whether the pod's own changes will say when this changes: a pod that exists is
    /// watched; a missing one's reason (a FailedCreate Event) is not, and is looked up again.
    pub fn is_watched(&self) -> bool {
        matches!(self, Self::NotRunning(_))
    }
}

/// A ready worker pod to ask, with its uid (a new uid: the worker restarted).
pub type ReadyWorker = (WorkerPod, String);

/// The worker's pod, when it is ready to be asked. `Err` says why it cannot be asked.
/// `worker` is its StatefulSet, `pod_name` the pod of it to ask (a pool's worker, or the one).
pub(in crate::operator) async fn ready_worker(
    ctx: &Context,
    namespace: &str,
    worker: &str,
    pod_name: &str,
    tokens: &WorkerTokens,
) -> Result<ReadyWorker, WorkerPodUnavailable> {
    let pod_name = pod_name.to_owned();
    let pod = match cached(&ctx.caches.pods, namespace, &pod_name) {
        Some(pod) => Some(Pod::clone(&pod)),
        // The workers' pods are all watched: once listed, a pod not there does not exist (yet).
        None if synced(&ctx.caches.pods) => None,
        None => Api::<Pod>::namespaced(ctx.client.clone(), namespace)
            .get_opt(&pod_name)
            .await
            .map_err(|source| WorkerPodUnavailable::Unreadable {
                pod: pod_name.clone(),
                source,
            })?,
    };
    let Some(pod) = pod else {
        return Err(WorkerPodUnavailable::Missing(
            match creation_failure(ctx, namespace, worker).await {
                Some(why) => format!("the worker pod {pod_name} cannot be created: {why}"),
                None => format!("the worker pod {pod_name} does not exist yet"),
            },
        ));
    };
    ctx.metrics
        .worker_restarts(namespace, &pod_name, restart_count(&pod));
    if pod.metadata.deletion_timestamp.is_some() {
        // Still answering, maybe, but going: what it reports now is the last of it.
        return Err(WorkerPodUnavailable::NotRunning(format!(
            "the worker pod {pod_name} is being deleted"
        )));
    }
    if !is_ready(&pod) {
        return Err(WorkerPodUnavailable::NotRunning(
            match crate::operator::runtime::status::pod_not_ready_reason(&pod) {
                Some(why) => format!("the worker pod {pod_name} is not ready: {why}"),
                None => format!("the worker pod {pod_name} is not ready"),
            },
        ));
    }
    let target = WorkerPod {
        namespace: namespace.to_owned(),
        pod: pod_name.clone(),
        pod_ip: pod.status.as_ref().and_then(|s| s.pod_ip.clone()),
        admin_token: tokens.admin.clone(),
        tls_name: ctx.defaults.tls.then(|| {
            crate::operator::runtime::worker_client::tls_name(namespace, worker, &pod_name)
        }),
    };
    Ok((target, pod.metadata.uid.unwrap_or_default()))
}

/// Whether a worker pod serves: Ready, and not being deleted (a pod's Ready condition stays
/// true through its termination, while its worker shuts down).
pub fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Restarts of the pod's containers so far (a crash-looping worker is never ready, so this is
/// read before readiness).
fn restart_count(pod: &Pod) -> u64 {
    pod.status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .map(|c| u64::try_from(c.restart_count).unwrap_or(0))
        .sum()
}

/// The worker's one pod of the StatefulSet.
pub fn pod_name(worker: &str) -> String {
    pod_name_of(worker, 0)
}

/// The pod of ordinal `ordinal` of the StatefulSet `set` (a pool's workers).
pub fn pod_name_of(set: &str, ordinal: i32) -> String {
    format!("{set}-{ordinal}")
}

/// How old a worker's StatefulSet is before its missing pod's `FailedCreate` Events are read.
const CREATION_GRACE_SECS: i64 = 10;

/// Why the StatefulSet controller cannot create the worker's pod (quota, admission, an invalid
/// pod), from its latest `FailedCreate` Event; None when there is none or it cannot be read.
async fn creation_failure(ctx: &Context, namespace: &str, worker: &str) -> Option<String> {
    use k8s_openapi::api::core::v1::Event;
    // A StatefulSet just made has not tried yet: no Events are asked for in its first seconds
    // (a thousand new resources at once would ask for a thousand lists).
    if synced(&ctx.caches.stateful_sets) {
        let created = cached(&ctx.caches.stateful_sets, namespace, worker)
            .and_then(|set| set.metadata.creation_timestamp.clone())?;
        let age = k8s_openapi::jiff::Timestamp::now().duration_since(created.0);
        if age < k8s_openapi::jiff::SignedDuration::from_secs(CREATION_GRACE_SECS) {
            return None;
        }
    }
    let selector =
        format!("involvedObject.kind=StatefulSet,involvedObject.name={worker},reason=FailedCreate");
    let events = Api::<Event>::namespaced(ctx.client.clone(), namespace)
        .list(&kube::api::ListParams::default().fields(&selector))
        .await
        .ok()?;
    events
        .items
        .into_iter()
        .max_by_key(|e| {
            e.last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or_else(|| e.event_time.as_ref().map(|t| t.0))
        })
        .and_then(|e| e.message)
}
