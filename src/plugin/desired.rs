//! Suspend / Resume a transport, Start / Stop a connection: one merge patch of the spec field,
//! then (with `--wait`) polling until the status shows the documented result (docs/transport.md, docs/connection.md).

use std::time::{Duration, Instant};

use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

use crate::api::{Connection, Transport};

/// The field manager of the plugin's patches (visible in managedFields, so GitOps tools can
/// tell who changed the field).
pub const FIELD_MANAGER: &str = "kubectl-ferry";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Suspend,
    Resume,
    Start,
    Stop,
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot use the kubeconfig: {0}")]
    Config(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("{kind} {namespace}/{name} does not exist")]
    NotFound {
        kind: String,
        namespace: String,
        name: String,
    },
    #[error("the API server refused: {}", crate::kube_error_line(.0))]
    Kube(#[from] kube::Error),
    #[error(
        "{what}, but after {waited:?} {kind} {namespace}/{name} is {seen} (waiting for {wanted}){ready}"
    )]
    Timeout {
        what: String,
        waited: Duration,
        kind: &'static str,
        namespace: String,
        name: String,
        seen: String,
        wanted: &'static str,
        ready: String,
    },
    #[error("cannot reach the worker of {what}: {why}")]
    NoWorker { what: String, why: String },
    #[error("the log stream broke: {0}")]
    Stream(#[source] std::io::Error),
    #[error(
        "transport {transport} runs on WorkerPool {pool}: its worker's admin token is the pool's (delete the pool's Secret ferry-wp-{pool} to rotate it)"
    )]
    PooledAdmin { transport: String, pool: String },
    #[error("{what} is not controlled by {owner}: it is left alone")]
    NotOurs { what: String, owner: String },
    #[error(
        "the old token's Secret {secret} is deleted, but after {waited:?} no new one exists: is the operator running? (kubectl get pods -l app.kubernetes.io/component=operator -A)"
    )]
    NoNewSecret { secret: String, waited: Duration },
    #[error("{kind} {namespace}/{name} was started and is Failed{ready}")]
    Failed {
        kind: &'static str,
        namespace: String,
        name: String,
        ready: String,
    },
}

impl Change {
    fn kind(self) -> &'static str {
        match self {
            Change::Suspend | Change::Resume => "Transport",
            Change::Start | Change::Stop => "Connection",
        }
    }

    fn patch(self) -> Value {
        match self {
            Change::Suspend => json!({"spec": {"suspended": true}}),
            Change::Resume => json!({"spec": {"suspended": false}}),
            Change::Start => json!({"spec": {"started": true}}),
            Change::Stop => json!({"spec": {"started": false}}),
        }
    }

    fn done(self) -> &'static str {
        match self {
            Change::Suspend => "suspended",
            Change::Resume => "resumed",
            Change::Start => "started",
            Change::Stop => "stopped",
        }
    }

    /// The documented result, as said in messages.
    fn wanted(self) -> &'static str {
        match self {
            Change::Suspend => "Suspended or S&F Suspended",
            Change::Resume => "Down, Up or Store and Forward",
            Change::Start => "Running",
            Change::Stop => "Disabled",
        }
    }
}

/// What `--wait` looks at: the state or status value, the generation it reflects, and the
/// Ready condition.
#[derive(Debug, Default, PartialEq)]
pub struct Seen {
    pub value: Option<String>,
    pub observed_generation: Option<i64>,
    pub ready: Option<(String, String, String)>,
}

/// Where a change stands, as `--wait` sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    Waiting,
    Reached,
    /// It cannot get there any more: a started connection Failed.
    Failed,
}

/// Has the change taken effect?
pub fn reached(change: Change, generation: i64, seen: &Seen) -> Progress {
    let value = seen.value.as_deref().unwrap_or("");
    let current = seen.observed_generation.is_some_and(|g| g >= generation);
    let done = match change {
        Change::Suspend => matches!(value, "Suspended" | "S&F Suspended"),
        Change::Resume => matches!(value, "Down" | "Up" | "Store and Forward"),
        Change::Start if current && value == "Failed" => return Progress::Failed,
        Change::Start => value == "Running",
        Change::Stop => value == "Disabled",
    };
    if current && done {
        Progress::Reached
    } else {
        Progress::Waiting
    }
}

fn ready_text(seen: &Seen) -> String {
    match &seen.ready {
        Some((status, reason, message)) => {
            let hint = troubleshooting(message)
                .map(|anchor| format!(" (see docs/troubleshooting.md#{anchor})"))
                .unwrap_or_default();
            format!("; Ready={status} {reason}: {message}{hint}")
        }
        None => String::new(),
    }
}

/// The section of docs/troubleshooting.md for a Ready message, where one applies.
pub fn troubleshooting(message: &str) -> Option<&'static str> {
    if message.contains("ImagePullBackOff") || message.contains("ErrImagePull") {
        Some("image-pull")
    } else if message.contains("worker pod") && message.contains("Pending")
        || message.contains("Unschedulable")
        || message.contains("unbound")
    {
        Some("worker-pending")
    } else if message.contains("is in use by another process") {
        Some("a-store-in-use")
    } else if message.contains("is damaged") {
        Some("a-damaged-store")
    } else {
        None
    }
}

fn ready_of(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Option<(String, String, String)> {
    conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn not_found(change: Change, namespace: &str, name: &str) -> PluginError {
    PluginError::NotFound {
        kind: change.kind().to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

/// Merge-patch the spec; answers the generation the change got.
async fn patch_spec<K>(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    change: Change,
) -> Result<Option<i64>, PluginError>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    match Api::<K>::namespaced(client.clone(), namespace)
        .patch(name, &params, &Patch::Merge(change.patch()))
        .await
    {
        Ok(object) => Ok(object.meta().generation),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            Err(not_found(change, namespace, name))
        }
        Err(e) => Err(PluginError::Kube(e)),
    }
}

/// A transport's state comes from its worker: `status.observedGeneration` says which spec it
/// reflects. A connection's status may come from the operator alone (Disabled while its worker
/// is scaled to zero): its Ready condition's `observedGeneration` says which spec was seen.
async fn look(
    change: Change,
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Seen, PluginError> {
    let missing = || not_found(change, namespace, name);
    if change.kind() == "Transport" {
        let transport = Api::<Transport>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await?
            .ok_or_else(missing)?;
        let status = transport.status.unwrap_or_default();
        Ok(Seen {
            value: status.state.map(|s| s.as_str().to_owned()),
            observed_generation: status.observed_generation,
            ready: ready_of(&status.conditions),
        })
    } else {
        let connection = Api::<Connection>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await?
            .ok_or_else(missing)?;
        let status = connection.status.unwrap_or_default();
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
        Ok(Seen {
            value: status.status.map(|s| s.as_str().to_owned()),
            observed_generation: ready.and_then(|c| c.observed_generation),
            ready: ready_of(&status.conditions),
        })
    }
}

/// Patch the spec; with `wait`, poll every `poll` until the result shows or `wait` passes.
pub async fn apply(
    client: kube::Client,
    namespace: &str,
    name: &str,
    change: Change,
    wait: Option<Duration>,
    poll: Duration,
) -> Result<String, PluginError> {
    let generation = if change.kind() == "Transport" {
        patch_spec::<Transport>(&client, namespace, name, change).await?
    } else {
        patch_spec::<Connection>(&client, namespace, name, change).await?
    }
    .unwrap_or(0);
    let what = format!(
        "{} {namespace}/{name} {}",
        change.kind().to_lowercase(),
        change.done()
    );
    let Some(limit) = wait else {
        return Ok(what);
    };
    let started = Instant::now();
    loop {
        let seen = look(change, &client, namespace, name).await?;
        match reached(change, generation, &seen) {
            Progress::Reached => {
                return Ok(format!(
                    "{what}: {}",
                    seen.value.as_deref().unwrap_or_default()
                ));
            }
            Progress::Waiting => {}
            Progress::Failed => {
                return Err(PluginError::Failed {
                    kind: change.kind(),
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    ready: ready_text(&seen),
                });
            }
        }
        if started.elapsed() >= limit {
            let ready = ready_text(&seen);
            return Err(PluginError::Timeout {
                what,
                waited: limit,
                kind: change.kind(),
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                seen: seen
                    .value
                    .unwrap_or_else(|| format!("without a status ({})", super::table::NO_STATUS)),
                wanted: change.wanted(),
                ready,
            });
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(value: &str, generation: i64) -> Seen {
        Seen {
            value: Some(value.into()),
            observed_generation: Some(generation),
            ready: None,
        }
    }

    /// Each hint names a section that exists in docs/troubleshooting.md.
    #[test]
    fn ready_messages_point_at_their_troubleshooting_section() {
        let doc = include_str!("../../docs/troubleshooting.md");
        for (message, anchor) in [
            (
                "the worker pod ferry-tp-erp-0 is not ready: ImagePullBackOff: Back-off pulling image",
                Some("image-pull"),
            ),
            (
                "the worker pod ferry-tp-erp-0 is not ready: Pending: 0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims",
                Some("worker-pending"),
            ),
            (
                "the store /var/lib/ferry/ferry.redb is in use by another process",
                Some("a-store-in-use"),
            ),
            ("Up", None),
        ] {
            assert_eq!(troubleshooting(message), anchor, "{message}");
            if let Some(anchor) = anchor {
                assert!(doc.contains(&format!("<a id=\"{anchor}\">")), "{anchor}");
            }
        }
        assert!(super::super::table::NO_STATUS.contains("docs/troubleshooting.md#no-status"));
        assert!(doc.contains("<a id=\"no-status\">"));
    }

    #[test]
    fn the_documented_results() {
        use Change::*;
        let rows = [
            (Suspend, seen("Suspended", 3), Progress::Reached),
            (Suspend, seen("S&F Suspended", 3), Progress::Reached),
            (Suspend, seen("Store and Forward", 3), Progress::Waiting),
            // The worker has not got generation 3 yet.
            (Suspend, seen("Suspended", 2), Progress::Waiting),
            (Resume, seen("Down", 3), Progress::Reached),
            (Resume, seen("Up", 3), Progress::Reached),
            (Resume, seen("Store and Forward", 3), Progress::Reached),
            (Resume, seen("S&F Suspended", 3), Progress::Waiting),
            (Start, seen("Restarting", 3), Progress::Waiting),
            (Start, seen("Server Reinitializing", 3), Progress::Waiting),
            (Start, seen("Running", 3), Progress::Reached),
            (Start, seen("Failed", 3), Progress::Failed),
            (Start, seen("Failed", 2), Progress::Waiting),
            (Stop, seen("Disabled", 3), Progress::Reached),
            (Stop, seen("Running", 3), Progress::Waiting),
        ];
        for (change, seen, expected) in rows {
            assert_eq!(reached(change, 3, &seen), expected, "{change:?} {seen:?}");
        }
    }
}
