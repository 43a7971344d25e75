//! Kubernetes Events for what a user watching `kubectl describe` wants to know: a transport's
//! state or a connection's status changed, a worker stopped answering, a reconcile failed.
//! Publishing is best effort: a refused Event is logged, never fails a reconcile.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::api::{ConnectionStatus, TransportStatus};

/// The operator's event publisher; `None` where no events are wanted (the mock-API tests).
#[derive(Clone, Default)]
pub struct Events(Option<Recorder>);

impl Events {
    pub fn new(client: kube::Client, instance: Option<String>) -> Self {
        Self(Some(Recorder::new(
            client,
            Reporter {
                controller: "ferry-operator".into(),
                instance,
            },
        )))
    }

    pub async fn publish(
        &self,
        reference: &ObjectReference,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let Some(recorder) = &self.0 else {
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
        if let Err(e) = recorder.publish(&event, reference).await {
            tracing::warn!(error = %e, reason, "cannot publish an event");
        }
    }
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

/// The event a connection's new status calls for: (warning, reason, note).
pub fn connection_event(
    before: Option<&ConnectionStatus>,
    after: &ConnectionStatus,
) -> Option<(bool, &'static str, String)> {
    use crate::api::ConnectionStatusValue::*;
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
