//! The seven connection status values, picked by rules C1–C6 of docs/connection.md in order,
//! as a pure function of the desired spec, the operator's phase and the worker's report.

use crate::api::{ConnectionStatusValue, connection::SyncResult};

/// C1 belongs to the operator: whether it has re-pushed this connection since it
/// (re)started or its global configuration changed. A worker deriving on its own passes
/// `Pushed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperatorPhase {
    Reinitializing,
    Pushed,
}

/// One enabled sync-set as the worker reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncSetView {
    pub name: String,
    /// The last *completed* iteration's result (an ongoing one does not count).
    pub last_result: Option<SyncResult>,
    /// Whether an iteration of it completed since the connection was (re)started.
    pub completed_since_start: bool,
    pub last_error: Option<String>,
}

/// What the worker said, if it could be asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerView {
    /// The worker cannot be reached or its report cannot be read.
    Unreachable(String),
    /// The enabled sync-sets, as the spec names them, with the worker's report of each.
    Report(Vec<SyncSetView>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inputs {
    pub operator: OperatorPhase,
    /// `spec.started`
    pub started: bool,
    /// Why the connection cannot run even though started (a missing target, an invalid
    /// source), as found when resolving its configuration.
    pub config_error: Option<String>,
    /// How many sync-sets the spec enables.
    pub enabled_sync_sets: usize,
    /// Waiting in the startup queue at this position (1 = next).
    pub queue_position: Option<u32>,
    pub worker: WorkerView,
}

/// The status value and the condition reason and message that explain it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Derived {
    pub status: ConnectionStatusValue,
    /// PascalCase, for the Ready condition.
    pub reason: &'static str,
    pub message: String,
}

fn derived(
    status: ConnectionStatusValue,
    reason: &'static str,
    message: impl Into<String>,
) -> Derived {
    Derived {
        status,
        reason,
        message: message.into(),
    }
}

/// Rules C1 to C6, in order: the first that applies decides.
pub fn derive(inputs: &Inputs) -> Derived {
    use ConnectionStatusValue::*;
    // C1: not yet pushed again since the operator (re)started, stopped connections too.
    if inputs.operator == OperatorPhase::Reinitializing {
        return derived(
            ServerReinitializing,
            "ServerReinitializing",
            "the operator is pushing the configuration to the worker again",
        );
    }
    // C2: stopped, or unable to run.
    if !inputs.started {
        return derived(
            Disabled,
            "Stopped",
            "the connection is stopped (spec.started is false)",
        );
    }
    if let Some(error) = &inputs.config_error {
        return derived(Disabled, "InvalidConfiguration", error.clone());
    }
    // C3: nothing enabled to synchronize.
    if inputs.enabled_sync_sets == 0 {
        return derived(Idle, "NoSyncSetEnabled", "no sync-set is enabled");
    }
    // C4: the worker cannot be asked, so the status is not known.
    let sync_sets = match &inputs.worker {
        WorkerView::Unreachable(why) => return derived(Unknown, "WorkerUnreachable", why.clone()),
        WorkerView::Report(sync_sets) => sync_sets,
    };
    // C5: started (or changed, or restarted) and not every sync-set has completed since;
    //     waiting in the startup queue counts as starting.
    if let Some(position) = inputs.queue_position {
        return derived(
            Restarting,
            "QueuedForStartup",
            format!("waiting to start: position {position} in the startup queue"),
        );
    }
    let pending: Vec<&str> = sync_sets
        .iter()
        .filter(|s| !s.completed_since_start)
        .map(|s| s.name.as_str())
        .collect();
    if !pending.is_empty() || sync_sets.len() < inputs.enabled_sync_sets {
        return derived(
            Restarting,
            "Starting",
            format!(
                "waiting for a first completed iteration of: {}",
                pending.join(", ")
            ),
        );
    }
    // C6: the last completed result of every enabled sync-set: any Failed is Failed, all
    //     Success is Running.
    let failed: Vec<&SyncSetView> = sync_sets
        .iter()
        .filter(|s| s.last_result == Some(SyncResult::Failed))
        .collect();
    if failed.is_empty() {
        return derived(
            Running,
            "Synchronizing",
            "every enabled sync-set's last iteration succeeded",
        );
    }
    let detail: Vec<String> = failed
        .iter()
        .map(|s| match &s.last_error {
            Some(e) => format!("{}: {e}", s.name),
            None => s.name.clone(),
        })
        .collect();
    derived(
        Failed,
        "SyncSetFailed",
        format!("failed: {}", detail.join("; ")),
    )
}

#[cfg(test)]
mod tests {
    use super::{ConnectionStatusValue::*, *};
    use proptest::prelude::*;

    fn ss(name: &str, last: Option<SyncResult>, completed: bool) -> SyncSetView {
        SyncSetView {
            name: name.into(),
            last_result: last,
            completed_since_start: completed,
            last_error: None,
        }
    }

    fn running(report: Vec<SyncSetView>) -> Inputs {
        Inputs {
            operator: OperatorPhase::Pushed,
            started: true,
            config_error: None,
            enabled_sync_sets: report.len(),
            queue_position: None,
            worker: WorkerView::Report(report),
        }
    }

    const S: Option<SyncResult> = Some(SyncResult::Success);
    const F: Option<SyncResult> = Some(SyncResult::Failed);

    /// The three cases of C6 (docs/connection.md). Each sync-set carries its *last completed*
    /// result; an ongoing iteration leaves it as it was.
    #[test]
    fn the_three_cases_of_c6() {
        // Case 1: iteration 2 all succeeded; iteration 3 has ss1 ongoing -> Running.
        let case1 = running(vec![
            ss("ss1", S, true),
            ss("ss2", S, true),
            ss("ss3", S, true),
        ]);
        assert_eq!(derive(&case1).status, Running);
        // Case 2: iteration 2 had ss1 failed; iteration 3 has ss1 ongoing -> Failed.
        let case2 = running(vec![
            ss("ss1", F, true),
            ss("ss2", S, true),
            ss("ss3", S, true),
        ]);
        assert_eq!(derive(&case2).status, Failed);
        // Case 3: iteration 2 had ss1 failed; iteration 3 completed ss1 with success and has
        // ss2 ongoing -> Running.
        let case3 = running(vec![
            ss("ss1", S, true),
            ss("ss2", S, true),
            ss("ss3", S, true),
        ]);
        assert_eq!(derive(&case3).status, Running);
    }

    #[test]
    fn every_status_in_order() {
        let ok = vec![ss("a", S, true)];
        let base = running(ok.clone());
        let rows: Vec<(&str, Inputs, ConnectionStatusValue, &str)> = vec![
            (
                "C1 reinitializing beats everything",
                Inputs {
                    operator: OperatorPhase::Reinitializing,
                    started: false,
                    ..base.clone()
                },
                ServerReinitializing,
                "ServerReinitializing",
            ),
            (
                "C2 stopped",
                Inputs {
                    started: false,
                    ..base.clone()
                },
                Disabled,
                "Stopped",
            ),
            (
                "C2 stopped and unreachable",
                Inputs {
                    started: false,
                    worker: WorkerView::Unreachable("x".into()),
                    ..base.clone()
                },
                Disabled,
                "Stopped",
            ),
            (
                "C2 missing target",
                Inputs {
                    config_error: Some("target transport plant-a/erp does not exist".into()),
                    ..base.clone()
                },
                Disabled,
                "InvalidConfiguration",
            ),
            (
                "C3 nothing enabled",
                Inputs {
                    enabled_sync_sets: 0,
                    worker: WorkerView::Report(vec![]),
                    ..base.clone()
                },
                Idle,
                "NoSyncSetEnabled",
            ),
            (
                "C4 worker unreachable",
                Inputs {
                    worker: WorkerView::Unreachable("connection refused".into()),
                    ..base.clone()
                },
                Unknown,
                "WorkerUnreachable",
            ),
            (
                "C5 in the startup queue",
                Inputs {
                    queue_position: Some(2),
                    ..base.clone()
                },
                Restarting,
                "QueuedForStartup",
            ),
            (
                "C5 not yet completed since start",
                running(vec![ss("a", S, true), ss("b", S, false)]),
                Restarting,
                "Starting",
            ),
            (
                "C5 never ran",
                running(vec![ss("a", None, false)]),
                Restarting,
                "Starting",
            ),
            (
                "C5 report lacks an enabled sync-set",
                Inputs {
                    enabled_sync_sets: 2,
                    ..base.clone()
                },
                Restarting,
                "Starting",
            ),
            ("C6 all success", base.clone(), Running, "Synchronizing"),
            (
                "C6 one failed",
                running(vec![ss("a", S, true), ss("b", F, true)]),
                Failed,
                "SyncSetFailed",
            ),
        ];
        for (name, inputs, status, reason) in rows {
            let d = derive(&inputs);
            assert_eq!((d.status, d.reason), (status, reason), "{name}");
        }
    }

    #[test]
    fn failed_message_names_the_sync_set_and_error() {
        let mut failing = ss("orders", F, true);
        failing.last_error = Some("the target answered 500".into());
        let d = derive(&running(vec![failing]));
        assert_eq!(d.message, "failed: orders: the target answered 500");
    }

    fn result() -> impl Strategy<Value = Option<SyncResult>> {
        prop_oneof![Just(None), Just(S), Just(F)]
    }

    fn view() -> impl Strategy<Value = SyncSetView> {
        (result(), any::<bool>())
            .prop_map(|(last, completed)| ss("s", last, completed && last.is_some()))
    }

    proptest! {
        /// Stopping always gives Disabled, unless the server is reinitializing.
        #[test]
        fn stopped_is_disabled(views in proptest::collection::vec(view(), 0..5), reinit: bool, unreachable: bool, position in proptest::option::of(1u32..5)) {
            let inputs = Inputs {
                operator: if reinit { OperatorPhase::Reinitializing } else { OperatorPhase::Pushed },
                started: false,
                config_error: None,
                enabled_sync_sets: views.len(),
                queue_position: position,
                worker: if unreachable { WorkerView::Unreachable("down".into()) } else { WorkerView::Report(views) },
            };
            let expected = if reinit { ServerReinitializing } else { Disabled };
            prop_assert_eq!(derive(&inputs).status, expected);
        }

        /// An ongoing iteration never changes Running/Failed: the derivation reads only last
        /// completed results, so starting another iteration (which changes nothing the
        /// inputs carry) leaves the value as it was; and Running/Failed follow C6 exactly.
        #[test]
        fn running_or_failed_follows_the_last_completed_results(results in proptest::collection::vec(prop_oneof![Just(S), Just(F)], 1..6)) {
            let views: Vec<SyncSetView> = results.iter().map(|r| ss("s", *r, true)).collect();
            let status = derive(&running(views)).status;
            let any_failed = results.contains(&F);
            prop_assert_eq!(status, if any_failed { Failed } else { Running });
        }

        /// Whatever the inputs, the value is one of the seven and the reason is PascalCase.
        #[test]
        fn always_one_of_the_seven(views in proptest::collection::vec(view(), 0..5), started: bool, reinit: bool, position in proptest::option::of(1u32..5)) {
            let inputs = Inputs {
                operator: if reinit { OperatorPhase::Reinitializing } else { OperatorPhase::Pushed },
                started,
                config_error: None,
                enabled_sync_sets: views.len(),
                queue_position: position,
                worker: WorkerView::Report(views),
            };
            let d = derive(&inputs);
            prop_assert!(ConnectionStatusValue::ALL.contains(&d.status));
            prop_assert!(d.reason.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && !d.reason.contains(' '));
        }
    }
}
