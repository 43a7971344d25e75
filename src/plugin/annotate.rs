//! `kubectl ferry pause` / `unpause` / `restart`: an annotation set on a resource, or removed
//! (docs/operator.md, "Pausing" and "Restarting"). A merge patch of the annotation alone: the
//! spec and everything else stay as they are.

use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

use super::PluginError;
use crate::{
    api::{Connection, Transport, WorkerPool},
    operator::reconcile::{
        restart::RESTART_ANNOTATION,
        skeleton::{PAUSED, RECONCILE_ANNOTATION},
    },
};

/// What `pause`/`unpause` name.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum PausableKind {
    #[value(alias = "transports", alias = "tp")]
    Transport,
    #[value(alias = "connections", alias = "conn")]
    Connection,
    #[value(alias = "workerpools", alias = "wp")]
    Workerpool,
}

/// What `restart` names: the kinds with a runtime of their own on a worker.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum RestartableKind {
    #[value(alias = "transports", alias = "tp")]
    Transport,
    #[value(alias = "connections", alias = "conn")]
    Connection,
}

impl From<RestartableKind> for PausableKind {
    fn from(kind: RestartableKind) -> Self {
        match kind {
            RestartableKind::Transport => Self::Transport,
            RestartableKind::Connection => Self::Connection,
        }
    }
}

/// The merge patch that sets `annotation` to `value` (`None`: removes it).
pub fn patch(annotation: &str, value: Option<&str>) -> Value {
    json!({"metadata": {"annotations": {annotation: value}}})
}

/// Set or remove the pausing annotation; answers what to print.
pub async fn pause(
    client: kube::Client,
    namespace: &str,
    kind: PausableKind,
    name: &str,
    pause: bool,
) -> Result<String, PluginError> {
    let value = pause.then_some(PAUSED);
    let label = annotate(client, namespace, kind, name, RECONCILE_ANNOTATION, value).await?;
    Ok(if pause {
        format!(
            "{label} {namespace}/{name}: reconciliation paused (the operator changes nothing of it until `kubectl ferry unpause {label} {name}`)"
        )
    } else {
        format!(
            "{label} {namespace}/{name}: reconciliation resumed (what changed meanwhile is applied now)"
        )
    })
}

/// Ask for a restart of the resource's runtime on its worker: the annotation set to the time
/// now (a new value every time, as `kubectl rollout restart` does); answers what to print.
pub async fn restart(
    client: kube::Client,
    namespace: &str,
    kind: RestartableKind,
    name: &str,
) -> Result<String, PluginError> {
    let value = k8s_openapi::jiff::Timestamp::now().to_string();
    let label = annotate(
        client,
        namespace,
        kind.into(),
        name,
        RESTART_ANNOTATION,
        Some(&value),
    )
    .await?;
    Ok(format!(
        "{label} {namespace}/{name}: restart asked ({RESTART_ANNOTATION}: {value}); status.lastHandledRestart shows it once its worker has carried it out"
    ))
}

/// Merge-patch one annotation of the resource; answers its kind in words.
async fn annotate(
    client: kube::Client,
    namespace: &str,
    kind: PausableKind,
    name: &str,
    annotation: &str,
    value: Option<&str>,
) -> Result<&'static str, PluginError> {
    let params = PatchParams {
        field_manager: Some("kubectl-ferry".into()),
        ..PatchParams::default()
    };
    let body = Patch::Merge(patch(annotation, value));
    let (label, outcome) = match kind {
        PausableKind::Transport => (
            "transport",
            merge::<Transport>(client, namespace, name, &params, &body).await,
        ),
        PausableKind::Connection => (
            "connection",
            merge::<Connection>(client, namespace, name, &params, &body).await,
        ),
        PausableKind::Workerpool => (
            "workerpool",
            merge::<WorkerPool>(client, namespace, name, &params, &body).await,
        ),
    };
    match outcome {
        Ok(()) => Ok(label),
        Err(kube::Error::Api(e)) if e.code == 404 => Err(PluginError::NotFound {
            kind: label.into(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }),
        Err(e) => Err(PluginError::Kube(e)),
    }
}

/// Merge-patch the object `name` of kind `K`.
async fn merge<K>(
    client: kube::Client,
    namespace: &str,
    name: &str,
    params: &PatchParams,
    body: &Patch<Value>,
) -> Result<(), kube::Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client, namespace)
        .patch(name, params, body)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_sets_or_removes_the_annotation_only() {
        assert_eq!(
            patch(RECONCILE_ANNOTATION, Some(PAUSED)),
            json!({"metadata": {"annotations": {"ferry.dev/reconcile": "paused"}}})
        );
        assert_eq!(
            patch(RECONCILE_ANNOTATION, None),
            json!({"metadata": {"annotations": {"ferry.dev/reconcile": null}}})
        );
        assert_eq!(
            patch(RESTART_ANNOTATION, Some("2026-12-03T17:00:00Z")),
            json!({"metadata": {"annotations": {"ferry.dev/restart": "2026-12-03T17:00:00Z"}}})
        );
    }
}
