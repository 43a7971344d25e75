//! `kubectl ferry pause` / `unpause`: the annotation `ferry.dev/reconcile: paused` set on a
//! resource, or removed (docs/operator.md, "Pausing"). A merge patch of the annotation alone:
//! the spec and everything else stay as they are.

use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

use super::PluginError;
use crate::{
    api::{Connection, Transport, WorkerPool},
    operator::reconcile::skeleton::{PAUSED, RECONCILE_ANNOTATION},
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

/// The merge patch that pauses (or, with `false`, unpauses) a resource.
pub fn patch(pause: bool) -> Value {
    let value = if pause { json!(PAUSED) } else { Value::Null };
    json!({"metadata": {"annotations": {RECONCILE_ANNOTATION: value}}})
}

/// Set or remove the annotation; answers what to print.
pub async fn pause(
    client: kube::Client,
    namespace: &str,
    kind: PausableKind,
    name: &str,
    pause: bool,
) -> Result<String, PluginError> {
    let params = PatchParams {
        field_manager: Some("kubectl-ferry".into()),
        ..PatchParams::default()
    };
    let body = Patch::Merge(patch(pause));
    let (label, outcome) = match kind {
        PausableKind::Transport => (
            "transport",
            Api::<Transport>::namespaced(client, namespace)
                .patch(name, &params, &body)
                .await
                .map(|_| ()),
        ),
        PausableKind::Connection => (
            "connection",
            Api::<Connection>::namespaced(client, namespace)
                .patch(name, &params, &body)
                .await
                .map(|_| ()),
        ),
        PausableKind::Workerpool => (
            "workerpool",
            Api::<WorkerPool>::namespaced(client, namespace)
                .patch(name, &params, &body)
                .await
                .map(|_| ()),
        ),
    };
    match outcome {
        Ok(()) if pause => Ok(format!(
            "{label} {namespace}/{name}: reconciliation paused (the operator changes nothing of it until `kubectl ferry unpause {label} {name}`)"
        )),
        Ok(()) => Ok(format!(
            "{label} {namespace}/{name}: reconciliation resumed (what changed meanwhile is applied now)"
        )),
        Err(kube::Error::Api(e)) if e.code == 404 => Err(PluginError::NotFound {
            kind: label.into(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }),
        Err(e) => Err(PluginError::Kube(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_sets_or_removes_the_annotation_only() {
        assert_eq!(
            patch(true),
            json!({"metadata": {"annotations": {"ferry.dev/reconcile": "paused"}}})
        );
        assert_eq!(
            patch(false),
            json!({"metadata": {"annotations": {"ferry.dev/reconcile": null}}})
        );
    }
}
