//! What a resource's worker holds, for an incident: a transport's queue (through the worker's
//! admin API, by the API server's pod proxy or at the pod's IP) and the worker pod's log.

use std::{io::Write, time::Duration};

use futures::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{Api, api::LogParams};

use super::{
    PluginError, ResourceKind,
    table::{columns, format_age},
};
use crate::{
    api::{Connection, Transport},
    operator::{
        reconcile::skeleton::WorkerResource,
        runtime::worker_client::{WorkerAccess, WorkerClient, WorkerPod},
        workers::worker_objects::admin_token_of,
        workers::worker_pod::pod_name,
    },
    wire::{self, QueueListing},
};

/// How long the worker may take to answer through the API server.
const WORKER_TIMEOUT: Duration = Duration::from_secs(10);

/// The resource, and the name of its worker's objects.
async fn worker_of<K>(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<(K, String), PluginError>
where
    K: WorkerResource,
{
    let kind = K::kind(&()).into_owned();
    let object = Api::<K>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
        .ok_or_else(|| PluginError::NotFound {
            kind: kind.clone(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })?;
    let worker = object
        .owner()
        .map_err(|e| PluginError::NoWorker {
            what: format!("{kind} {namespace}/{name}"),
            why: e.to_string(),
        })?
        .worker_name();
    Ok((object, worker))
}

/// `kubectl ferry queue transport NAME`: depth, bytes, oldest age and the oldest `limit`
/// transactions' ids, sizes and ages, from the worker itself; `json` prints its answer as is.
pub async fn queue(
    client: kube::Client,
    access: WorkerAccess,
    namespace: &str,
    name: &str,
    limit: usize,
    json: bool,
) -> Result<String, PluginError> {
    let (transport, worker) = worker_of::<Transport>(&client, namespace, name).await?;
    let what = format!("Transport {namespace}/{name}");
    let no_worker = |why: String| PluginError::NoWorker {
        what: what.clone(),
        why,
    };
    // The admin token only from a Secret the transport controls (as the operator reads it):
    // its admin Secret, or the worker's own where an operator before the two were kept apart
    // left it.
    let owner = transport.owner().map_err(|e| no_worker(e.to_string()))?;
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let mut admin_token = None;
    // The CA bundle beside it: the worker serves TLS (the operator's --worker-tls).
    let mut bundle = None;
    for name in [owner.admin_secret_name(), worker.clone()] {
        let Some(secret) = secrets.get_opt(&name).await? else {
            continue;
        };
        if !owner.controls(&secret.metadata) {
            return Err(no_worker(format!(
                "the Secret {name} is not controlled by it"
            )));
        }
        admin_token = admin_token_of(&secret);
        bundle = crate::operator::workers::worker_objects::bundle_of(&secret);
        if admin_token.is_some() {
            break;
        }
    }
    let admin_token = admin_token.ok_or_else(|| {
        no_worker(format!(
            "no Secret of it holds an admin-token yet ({} or {worker})",
            owner.admin_secret_name()
        ))
    })?;
    let pod = pod_name(&worker);
    let (workers, pod_ip) = match access {
        WorkerAccess::Proxy => (
            WorkerClient::proxy(client, WORKER_TIMEOUT, bundle.is_some()),
            None,
        ),
        WorkerAccess::Direct => {
            let ip = Api::<Pod>::namespaced(client, namespace)
                .get_opt(&pod)
                .await?
                .and_then(|p| p.status.and_then(|s| s.pod_ip))
                .ok_or_else(|| no_worker(format!("its pod {pod} has no IP (is it running?)")))?;
            let direct = match &bundle {
                Some(bundle) => WorkerClient::direct_tls(WORKER_TIMEOUT, bundle),
                None => WorkerClient::direct(WORKER_TIMEOUT),
            }
            .map_err(|e| no_worker(format!("no HTTP client: {e}")))?;
            (direct, Some(ip))
        }
    };
    let pod = WorkerPod {
        tls_name: bundle
            .as_ref()
            .map(|_| crate::operator::runtime::worker_client::tls_name(namespace, &worker, &pod)),
        namespace: namespace.to_owned(),
        pod,
        pod_ip,
        admin_token,
    };
    let path = format!(
        "{}?limit={limit}",
        wire::queue_path(&wire::key(namespace, name))
    );
    let answer: QueueListing = workers
        .get(&pod, &path)
        .await
        .map_err(|e| no_worker(e.to_string()))?;
    if json {
        return Ok(serde_json::to_string_pretty(&answer).unwrap_or_else(|e| e.to_string()));
    }
    Ok(render_queue(&what, &answer))
}

/// The worker's answer as a short report and a table of the oldest transactions.
pub fn render_queue(what: &str, answer: &QueueListing) -> String {
    let messages = answer.messages;
    let mut out = format!(
        "{what}: {}\nqueue: {messages} transactions, {} bytes",
        answer.state, answer.bytes,
    );
    if messages == 0 {
        out.push_str(", empty\n");
        return out;
    }
    out.push_str(&format!(
        ", oldest {} old\n",
        format_age(answer.oldest_age_seconds)
    ));
    let mut lines = vec![["#", "ID", "BYTES", "AGE"].map(str::to_owned).to_vec()];
    lines.extend(answer.oldest.iter().enumerate().map(|(i, e)| {
        vec![
            (i + 1).to_string(),
            e.id.clone(),
            e.bytes.to_string(),
            format_age(e.age_seconds),
        ]
    }));
    out.push_str(&columns(&lines, 0));
    if (answer.oldest.len() as u64) < messages {
        out.push_str(&format!(
            "(the oldest {} of {messages}; --limit shows more)\n",
            answer.oldest.len()
        ));
    }
    out
}

/// What `kubectl ferry logs` passes to the API server.
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub tail: Option<i64>,
    pub since_seconds: Option<i64>,
}

/// `kubectl ferry logs KIND NAME`: the worker container's log. With `follow`, lines are
/// written to `out` as they come and the answer is empty.
pub async fn logs(
    client: kube::Client,
    namespace: &str,
    kind: ResourceKind,
    name: &str,
    options: &LogOptions,
    out: &mut (dyn Write + Send),
) -> Result<String, PluginError> {
    let worker = match kind {
        ResourceKind::Transport => worker_of::<Transport>(&client, namespace, name).await?.1,
        ResourceKind::Connection => worker_of::<Connection>(&client, namespace, name).await?.1,
    };
    let pod = pod_name(&worker);
    let params = LogParams {
        container: Some("worker".into()),
        follow: options.follow,
        previous: options.previous,
        tail_lines: options.tail,
        since_seconds: options.since_seconds,
        ..LogParams::default()
    };
    let pods = Api::<Pod>::namespaced(client, namespace);
    if !options.follow {
        return Ok(pods.logs(&pod, &params).await?);
    }
    let mut lines = pods.log_stream(&pod, &params).await?.lines();
    while let Some(line) = lines.try_next().await.map_err(PluginError::Stream)? {
        writeln!(out, "{line}").map_err(PluginError::Stream)?;
    }
    Ok(String::new())
}
