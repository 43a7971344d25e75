//! Objects the API server accepted but ferry cannot read (a poison object).
//!
//! The controllers watch `DeserializeGuard<K>` (kube's error boundary), so one unreadable
//! object never fails a list or a watch: the others keep reconciling. An unreadable object is
//! checked against ferry's own manifest validator, to name the field, and gets `Ready=False`
//! reason `InvalidSpec` with that message (the rest of its status kept) and a Warning Event.
//! Where the API server refuses that status as well (it validates the whole object on a status
//! write, so a spec that breaks a CRD rule it was stored before fails the write too), the
//! Warning Event alone says why. It is not requeued: the next change of it is reconciled again.

use std::sync::{Arc, OnceLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{
    Api,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    core::{DeserializeGuard, error_boundary::InvalidObject},
    runtime::controller::Action,
};
use serde_json::{Value, json};

use crate::api::validate::ManifestValidator;
use crate::operator::{
    NamespacedObject,
    runtime::context::{Context, FIELD_MANAGER, now},
    runtime::error::ReconcileError,
    runtime::status,
};

/// Reconcile a readable object with `reconcile`; report an unreadable one.
pub async fn reconcile_guarded<K, F, Fut>(
    guarded: Arc<DeserializeGuard<K>>,
    ctx: Arc<Context>,
    reconcile: F,
) -> Result<Action, ReconcileError>
where
    K: NamespacedObject,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action, ReconcileError>>,
{
    match &guarded.0 {
        Ok(object) => reconcile(Arc::new(object.clone()), ctx).await,
        Err(invalid) => report_invalid::<K>(invalid, &ctx).await,
    }
}

fn validator() -> &'static ManifestValidator {
    static VALIDATOR: OnceLock<ManifestValidator> = OnceLock::new();
    VALIDATOR.get_or_init(ManifestValidator::new)
}

/// What is wrong with the object, naming the field when ferry's validator can.
fn diagnosis(raw: Option<&Value>, invalid: &InvalidObject) -> String {
    raw.and_then(|raw| validator().validate(raw).err())
        .map_or_else(
            || format!("ferry cannot read the object: {}", invalid.error),
            |e| e.to_string(),
        )
}

/// The object's status with `Ready`, `Degraded` and the kstatus conditions saying
/// `InvalidSpec` (other conditions and the last known state kept).
fn invalid_status(raw: Option<&Value>, generation: Option<i64>, message: &str) -> Value {
    let mut status = raw
        .and_then(|r| r.get("status"))
        .filter(|s| s.is_object())
        .cloned()
        .unwrap_or_else(|| json!({}));
    // Conditions that cannot be read (as malformed as the rest) are replaced, not kept.
    let previous: Vec<Condition> = status["conditions"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|c| serde_json::from_value(c.clone()).ok())
                .collect()
        })
        .unwrap_or_default();
    let conditions = status::invalid_spec(&previous, generation, message, now());
    status["conditions"] = serde_json::to_value(conditions).unwrap_or_else(|_| json!([]));
    status
}

async fn report_invalid<K>(invalid: &InvalidObject, ctx: &Context) -> Result<Action, ReconcileError>
where
    K: NamespacedObject,
{
    let meta = &invalid.metadata;
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let name = meta.name.clone().unwrap_or_default();
    let resource = ApiResource::erase::<K>(&());
    let raw = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &namespace, &resource)
        .get_opt(&name)
        .await
        .map_err(|source| ReconcileError::Dereference {
            what: format!("{} {namespace}/{name} as stored", K::kind(&())),
            source,
        })?
        .and_then(|object| serde_json::to_value(object).ok());
    let message = diagnosis(raw.as_ref(), invalid);
    tracing::warn!(object = %format!("{} {namespace}/{name}", K::kind(&())), error = %message, "the object cannot be read; its status says why");
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": invalid_status(raw.as_ref(), meta.generation, &message),
    });
    let written = Api::<DeserializeGuard<K>>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await;
    match written {
        Ok(_) => {}
        // The API server validates the whole object on a status write, and refuses the same
        // spec ferry cannot read (a CRD rule it was stored before): the Event is then the one
        // place that says why. Retrying cannot help until the object changes.
        Err(kube::Error::Api(e)) if e.code == 422 => {
            tracing::warn!(object = %format!("{} {namespace}/{name}", K::kind(&())), error = %e.message, "the API server refuses its status too; its Warning Event says why");
        }
        Err(source) => return Err(ReconcileError::Status { source }),
    }
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: Some(name),
        namespace: Some(namespace),
        uid: meta.uid.clone(),
        ..Default::default()
    };
    ctx.events
        .publish(&reference, true, status::INVALID_SPEC, message)
        .await;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Transport;
    use crate::operator::fixtures::{context, mock, respond};
    use kube::ResourceExt;

    fn poison() -> Value {
        json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
               "metadata": {"name": "poison", "namespace": "plant-a", "uid": "uid-p", "generation": 4},
               "spec": {"host": {"url": "http://erp/ingest"},
                        "storeAndForward": {"maxBytes": "99999999999999999999"}},
               "status": {"state": "Up", "conditions": [{"type": "Ready", "status": "True",
                          "reason": "WorkerReady", "message": "", "lastTransitionTime": "2026-11-28T05:00:00Z"}]}})
    }

    /// A list that mixes a readable and an unreadable Transport is read whole: the readable
    /// one as it is, the unreadable one as an error with its metadata.
    #[test]
    fn a_list_with_a_poison_object_is_read_whole() {
        let good = json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
                          "metadata": {"name": "erp", "namespace": "plant-a"},
                          "spec": {"host": {"url": "http://erp/ingest"}}});
        let list = json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "TransportList",
                          "metadata": {}, "items": [good, poison(), {"metadata": {"name": "null-bytes", "namespace": "plant-a"},
                          "spec": {"host": {"url": "http://h"}, "maxTransactionBytes": null}}]});
        let read: kube::core::ObjectList<DeserializeGuard<Transport>> =
            serde_json::from_value(list).expect("the list is read whole");
        let names: Vec<(String, bool)> = read
            .items
            .iter()
            .map(|g| (g.name_any(), g.0.is_ok()))
            .collect();
        assert_eq!(
            names,
            [
                ("erp".into(), true),
                ("poison".into(), false),
                ("null-bytes".into(), false)
            ]
        );
    }

    /// The poison object reported through the mock API server, whose status write answers
    /// `status_code`: (what the reconcile answered, the status patch, the Event).
    async fn report_poison(status_code: u16) -> (Result<Action, ReconcileError>, Value, Value) {
        let (client, mut handle) = mock();
        let ctx = Arc::new(
            Arc::into_inner(context(client.clone()))
                .expect("one context")
                .with_events(crate::operator::runtime::events::Events::new(client, None)),
        );
        let guarded: DeserializeGuard<Transport> =
            serde_json::from_value(poison()).expect("a guard always reads");
        let server = tokio::spawn(async move {
            let (_, path, _, send) = handle.next().await;
            assert!(path.ends_with("/transports/poison"), "{path}");
            send.send_response(respond(200, poison()));
            let (method, path, body, send) = handle.next().await;
            assert_eq!(method, http::Method::PATCH);
            assert!(path.contains("/transports/poison/status"), "{path}");
            let answer = if status_code == 200 {
                poison()
            } else {
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": status_code,
                       "reason": "Invalid", "message": "spec.storeAndForward.maxBytes: Invalid value"})
            };
            send.send_response(respond(status_code, answer));
            let (_, path, event, send) = handle.next().await;
            assert!(path.contains("/events"), "{path}");
            send.send_response(respond(200, event.clone()));
            (body, event)
        });
        let answer = reconcile_guarded(Arc::new(guarded), ctx, |_: Arc<Transport>, _| async {
            panic!("an unreadable object is not reconciled")
        })
        .await;
        let (body, event) = server.await.unwrap();
        (answer, body, event)
    }

    /// Where the API server refuses the status of the poison object too (422: it validates the
    /// whole object), the Warning Event still says why, and it is not retried until it changes.
    #[tokio::test]
    async fn a_poison_object_whose_status_is_refused_is_told_by_its_event() {
        let (answer, _, event) = report_poison(422).await;
        assert_eq!(answer.unwrap(), Action::await_change());
        assert_names_the_field(&event);
    }

    /// A Warning Event `InvalidSpec` whose note names the field ferry cannot read.
    fn assert_names_the_field(event: &Value) {
        assert_eq!(
            (event["type"].as_str(), event["reason"].as_str()),
            (Some("Warning"), Some(status::INVALID_SPEC))
        );
        assert!(
            event["note"]
                .as_str()
                .is_some_and(|m| m.contains("spec.storeAndForward.maxBytes")),
            "{event}"
        );
    }

    /// The unreadable object gets Ready=False InvalidSpec naming the field (its last state
    /// kept) and a Warning Event; it is not requeued.
    #[tokio::test]
    async fn a_poison_object_is_told_why_and_left_until_it_changes() {
        let (answer, body, event) = report_poison(200).await;
        assert_eq!(answer.unwrap(), Action::await_change());
        let status = &body["status"];
        assert_eq!(
            status["state"], "Up",
            "the last known state stays: {status}"
        );
        let condition = |type_: &str| {
            status["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == type_))
                .cloned()
                .unwrap_or_default()
        };
        let ready = &condition("Ready");
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some(status::INVALID_SPEC))
        );
        assert!(
            ready["message"]
                .as_str()
                .is_some_and(|m| m.contains("spec.storeAndForward.maxBytes")),
            "{ready}"
        );
        assert_eq!(ready["observedGeneration"], 4);
        for (type_, holds) in [
            ("Stalled", "True"),
            ("Reconciling", "False"),
            ("Degraded", "True"),
        ] {
            assert_eq!(condition(type_)["status"], holds, "{type_} in {status}");
        }
        assert_names_the_field(&event);
    }
}
