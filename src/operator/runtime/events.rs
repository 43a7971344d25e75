//! Kubernetes Events for what a user watching `kubectl describe` wants to know: a transport's
//! state or a connection's status changed, a worker stopped answering, a reconcile failed.
//! Publishing is best effort: a refused Event is logged, never fails a reconcile.

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event as EventObject},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{
    Api,
    api::PostParams,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

use crate::api::{ConnectionStatus, TransportStatus};

/// The longest object name the API server takes (a DNS subdomain).
const MAX_NAME: usize = 253;
/// kube's recorder names an Event `<object name>.<nanoseconds, at most 16 hex digits>`.
const EVENT_SUFFIX: usize = 17;

/// The operator's event publisher; `None` where no events are wanted (the mock-API tests).
#[derive(Clone, Default)]
pub struct Events(Option<Publisher>);

#[derive(Clone)]
struct Publisher {
    recorder: Recorder,
    client: kube::Client,
    reporter: Reporter,
}

impl Events {
    pub fn new(client: kube::Client, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: "ferry-operator".into(),
            instance,
        };
        Self(Some(Publisher {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            client,
            reporter,
        }))
    }

    pub async fn publish(
        &self,
        reference: &ObjectReference,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let Some(publisher) = &self.0 else {
            return;
        };
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            // The API server caps an event's note at 1 KiB.
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        let name = reference.name.as_deref().unwrap_or_default();
        let published = if name.len() + EVENT_SUFFIX > MAX_NAME {
            publisher.create_short_named(&event, reference).await
        } else {
            publisher.recorder.publish(&event, reference).await
        };
        if let Err(e) = published {
            tracing::warn!(error = %e, reason, "cannot publish an event");
        }
    }
}

impl Publisher {
    /// The Event of an object whose name leaves no room for kube's suffix (every name the
    /// API server accepts must get its Events): the same Event, named
    /// `<the name cut to fit>.<nanoseconds>`, created as it is (no series).
    async fn create_short_named(
        &self,
        event: &Event,
        reference: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = k8s_openapi::jiff::Timestamp::now();
        let name = reference.name.as_deref().unwrap_or_default();
        let object = EventObject {
            metadata: ObjectMeta {
                name: Some(short_event_name(name, now.as_nanosecond())),
                namespace: reference.namespace.clone(),
                ..ObjectMeta::default()
            },
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            note: event.note.clone(),
            type_: Some(match event.type_ {
                EventType::Warning => "Warning".into(),
                EventType::Normal => "Normal".into(),
            }),
            regarding: Some(reference.clone()),
            event_time: Some(MicroTime(now)),
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            ..EventObject::default()
        };
        let namespace = reference.namespace.as_deref().unwrap_or("default");
        Api::<EventObject>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &object)
            .await
            .map(|_| ())
    }
}

/// `<name>.<nanos in hex>`, the name cut so the whole is a valid object name: at most 253
/// characters, ending in the hex digits (a cut never leaves a `.` or `-` before the dot).
fn short_event_name(name: &str, nanos: i128) -> String {
    let keep = MAX_NAME - EVENT_SUFFIX;
    let cut = name
        .get(..keep.min(name.len()))
        .unwrap_or(name)
        .trim_end_matches(['.', '-']);
    format!("{cut}.{:x}", nanos.max(0))
}

/// The Ready condition's reason and message, if any.
fn ready(conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> (&str, &str) {
    conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map_or(("", ""), |c| (c.reason.as_str(), c.message.as_str()))
}

/// The event a transport's new status calls for: (warning, reason, note).
pub fn transport_event(
    before: Option<&TransportStatus>,
    after: &TransportStatus,
) -> Option<(bool, &'static str, String)> {
    let (was, _) = ready(before.map(|b| b.conditions.as_slice()).unwrap_or_default());
    let (reason, message) = ready(&after.conditions);
    if reason == "WorkerUnreachable" && was != "WorkerUnreachable" {
        return Some((true, "WorkerUnreachable", message.to_owned()));
    }
    if let Some(panicked) = panicked(
        before.and_then(|b| b.faults.as_ref()),
        after.faults.as_ref(),
    ) {
        return Some(panicked);
    }
    let from = before.and_then(|b| b.state);
    match (from, after.state) {
        (Some(from), Some(to)) if from != to => Some((
            false,
            "StateChanged",
            format!("{} → {}", from.as_str(), to.as_str()),
        )),
        (None, Some(to)) => Some((false, "StateChanged", format!("now {}", to.as_str()))),
        _ => None,
    }
}

/// A Warning `Panicked` when the worker caught more panics in the resource's work than the
/// status showed (the count restarts with the worker).
fn panicked(
    before: Option<&crate::api::Faults>,
    after: Option<&crate::api::Faults>,
) -> Option<(bool, &'static str, String)> {
    let after = after?;
    let seen = before.cloned().unwrap_or_default();
    let new =
        after.panics > seen.panics || (after.panics > 0 && after.last_panic != seen.last_panic);
    new.then(|| {
        (
            true,
            "Panicked",
            format!(
                "{} panic(s) caught on its worker; it goes on. Last: {}",
                after.panics,
                after.last_panic.as_deref().unwrap_or("no message")
            ),
        )
    })
}

/// The event a connection's new status calls for: (warning, reason, note).
pub fn connection_event(
    before: Option<&ConnectionStatus>,
    after: &ConnectionStatus,
) -> Option<(bool, &'static str, String)> {
    use crate::api::ConnectionStatusValue::*;
    if let Some(panicked) = panicked(
        before.and_then(|b| b.faults.as_ref()),
        after.faults.as_ref(),
    ) {
        return Some(panicked);
    }
    let from = before.and_then(|b| b.status);
    let to = after.status?;
    if from == Some(to) {
        return None;
    }
    let (reason, message) = ready(&after.conditions);
    let warning = matches!(to, Failed | Unknown) || reason == "InvalidConfiguration";
    let from = from.map_or("new", |f| f.as_str());
    Some((
        warning,
        "StatusChanged",
        format!("{from} → {}: {message}", to.as_str()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TransportState;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn ready_condition(reason: &str) -> Condition {
        Condition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: reason.into(),
            message: format!("because {reason}"),
            observed_generation: None,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        }
    }

    fn transport(state: TransportState, reason: &str) -> TransportStatus {
        TransportStatus {
            state: Some(state),
            conditions: vec![ready_condition(reason)],
            ..Default::default()
        }
    }

    #[test]
    fn a_new_panic_is_a_warning_naming_it() {
        let up = transport(TransportState::Up, "Up");
        let mut panicked = up.clone();
        panicked.faults = Some(crate::api::Faults {
            panics: 1,
            last_panic: Some("forwarding panicked: boom".into()),
        });
        let (warning, reason, note) = transport_event(Some(&up), &panicked).unwrap();
        assert!(warning);
        assert_eq!(reason, "Panicked");
        assert!(note.contains("forwarding panicked: boom"), "{note}");
        assert_eq!(transport_event(Some(&panicked), &panicked), None);
    }

    #[test]
    fn transport_events_on_a_state_change_and_when_the_worker_goes_silent() {
        let up = transport(TransportState::Up, "Up");
        let sf = transport(TransportState::StoreAndForward, "StoreAndForward");
        assert_eq!(
            transport_event(Some(&up), &sf),
            Some((false, "StateChanged", "Up → Store and Forward".into()))
        );
        assert_eq!(transport_event(Some(&up), &up), None);
        let silent = transport(TransportState::Up, "WorkerUnreachable");
        assert_eq!(
            transport_event(Some(&up), &silent),
            Some((
                true,
                "WorkerUnreachable",
                "because WorkerUnreachable".into()
            ))
        );
        // Once, not on every poll while it stays silent.
        assert_eq!(transport_event(Some(&silent), &silent), None);
    }

    proptest::proptest! {
        /// Every name the API server accepts gives a valid Event name (kube's own names one
        /// over 236 characters past the limit, and the API server refuses it).
        #[test]
        fn every_accepted_name_gives_a_valid_event_name(
            name in "[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?",
            nanos in 0i128..i128::from(u64::MAX),
        ) {
            let event = short_event_name(&name, nanos);
            proptest::prop_assert!(event.len() <= MAX_NAME, "{event}");
            let (cut, hex) = event.rsplit_once('.').unwrap_or_default();
            proptest::prop_assert!(
                !cut.is_empty() && !cut.ends_with(['.', '-']) && name.starts_with(cut),
                "{event} of {name}"
            );
            proptest::prop_assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()), "{event}");
        }
    }

    #[test]
    fn connection_events_warn_on_failure() {
        use crate::api::ConnectionStatusValue::*;
        let with = |status, reason| ConnectionStatus {
            status: Some(status),
            conditions: vec![ready_condition(reason)],
            ..Default::default()
        };
        let running = with(Running, "Synchronizing");
        let failed = with(Failed, "SyncSetFailed");
        assert_eq!(
            connection_event(Some(&running), &failed),
            Some((
                true,
                "StatusChanged",
                "Running → Failed: because SyncSetFailed".into()
            ))
        );
        assert!(!connection_event(Some(&failed), &running).unwrap().0);
        assert_eq!(connection_event(Some(&running), &running), None);
    }
}
