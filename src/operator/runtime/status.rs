//! What the operator writes into `.status`, from the worker's report or its silence. Pure.
//!
//! Conditions follow `metav1.Condition`: `Ready` is true only when the worker answered and the
//! resource does what its spec asks; `Progressing` while the spec is being applied or the
//! resource is starting; `Degraded` when something is wrong that the user may need to act on.
//! A condition keeps its `lastTransitionTime` while its status does not change.
//!
//! `Reconciling` and `Stalled` are for kstatus (Flux's health checks, kpt, cli-utils): they are
//! derived from `Ready` wherever `Ready` is set, so the three never disagree (docs/operator.md,
//! "Conditions").

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::{
    api::{
        ConnectionStatus, ConnectionStatusValue, TransportState, TransportStatus, WorkerPoolStatus,
        worker_pool::{Placement, PoolWorker},
    },
    connection::status::{self, Inputs, OperatorPhase, SyncSetView, WorkerView},
    wire::{ConnectionReport, TransportReport},
};

/// The reason of the Ready condition of an object ferry cannot read (the guard's).
pub const INVALID_SPEC: &str = "InvalidSpec";

/// A condition to set: type, whether it holds, a PascalCase reason and a message.
struct Set<'a>(&'a str, bool, &'a str, String);

/// Replace the conditions of the given types, keeping `lastTransitionTime` where the status
/// did not change, and any other conditions as they were.
fn set_conditions(
    previous: &[Condition],
    wanted: Vec<Set<'_>>,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let wanted = with_kstatus(wanted);
    let mut out: Vec<Condition> = previous
        .iter()
        .filter(|c| !wanted.iter().any(|w| w.0 == c.type_))
        .cloned()
        .collect();
    for Set(type_, holds, reason, message) in wanted {
        let status = if holds { "True" } else { "False" };
        let since = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
        out.push(Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
            last_transition_time: since,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// The condition of a resource whose reconciliation is paused (`ferry.dev/reconcile: paused`).
pub const RECONCILE_PAUSED: &str = "ReconcilePaused";

/// `ReconcilePaused=True` while the annotation holds the operator's hands off the resource;
/// no such condition otherwise (one left from a pause goes).
pub fn reconcile_paused(
    previous: &[Condition],
    paused: bool,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    if !paused {
        return previous
            .iter()
            .filter(|c| c.type_ != RECONCILE_PAUSED)
            .cloned()
            .collect();
    }
    let why = "ferry.dev/reconcile: paused — the operator changes none of its objects and pushes \
               nothing to its worker; the status is still read from the worker. Remove the \
               annotation to apply what changed meanwhile";
    set_conditions(
        previous,
        vec![Set(RECONCILE_PAUSED, true, "Paused", why.to_owned())],
        generation,
        now,
    )
}

/// The Ready reason of a resource whose spec names a forbidden destination.
pub const FORBIDDEN_DESTINATION: &str = "ForbiddenDestination";

/// Ready reasons that no retry by ferry can turn into Ready: the user must change something
/// (the object, a name, a quota, a missing target, the source or target a sync-set failed on).
/// kstatus reads `Stalled=True` as Failed; every other not-ready resource is `Reconciling`.
pub const STALLED_REASONS: [&str; 8] = [
    INVALID_SPEC,
    "NameConflict",
    // A host, source or target URL that is, or resolves to, a forbidden address.
    FORBIDDEN_DESTINATION,
    "WorkerObjectsRefused",
    "InvalidConfiguration",
    "SyncSetFailed",
    // A WorkerPool's: resources still use it, or still live on the workers it would remove.
    "InUse",
    "ScaleDownBlocked",
];

/// `Reconciling` and `Stalled` from the `Ready` being set: ready → neither; not ready for a
/// reason in [`STALLED_REASONS`] → Stalled; otherwise → Reconciling (applying, starting,
/// being suspended or resumed, a worker not answering yet).
fn with_kstatus(mut wanted: Vec<Set<'_>>) -> Vec<Set<'_>> {
    let Some(Set(_, ready, reason, message)) = wanted.iter().find(|s| s.0 == "Ready") else {
        return wanted;
    };
    let (ready, reason, message) = (*ready, *reason, message.clone());
    let stalled = !ready && STALLED_REASONS.contains(&reason);
    let reconciling = !ready && !stalled;
    let settled = if ready {
        "the resource does what its spec asks".to_owned()
    } else {
        message.clone()
    };
    wanted.push(if reconciling {
        Set("Reconciling", true, reason, message.clone())
    } else {
        let why = if stalled { "Stalled" } else { "Reconciled" };
        Set("Reconciling", false, why, settled.clone())
    });
    wanted.push(if stalled {
        Set("Stalled", true, reason, message)
    } else {
        Set("Stalled", false, "AsExpected", settled)
    });
    wanted
}

fn state_reason(state: TransportState) -> &'static str {
    match state {
        TransportState::Up => "Up",
        TransportState::Down => "Down",
        TransportState::Suspended => "Suspended",
        TransportState::SfSuspended => "SfSuspended",
        TransportState::StoreAndForward => "StoreAndForward",
    }
}

/// A status with conditions (both kinds').
pub trait WithConditions: Clone + Default + PartialEq + serde::Serialize {
    fn conditions(&self) -> &[Condition];
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
    /// `lastReportTime`: when the worker last answered.
    fn last_report_time(&self) -> Option<&Time>;
    /// The status without what moves while nothing happens (`lastReportTime`, the age of the
    /// oldest queued transaction, a connection's iteration numbers): what a change is.
    fn without_clocks(&self) -> Self;
}

impl WithConditions for TransportStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }

    fn last_report_time(&self) -> Option<&Time> {
        self.last_report_time.as_ref()
    }

    fn without_clocks(&self) -> Self {
        let mut status = self.clone();
        status.last_report_time = None;
        status.queue.oldest_age_seconds = 0;
        status
    }
}

impl WithConditions for ConnectionStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }

    fn last_report_time(&self) -> Option<&Time> {
        self.last_report_time.as_ref()
    }

    fn without_clocks(&self) -> Self {
        let mut status = self.clone();
        status.last_report_time = None;
        status.iteration = 0;
        for sync_set in &mut status.sync_sets {
            sync_set.last_completed_iteration = None;
            sync_set.ongoing = false;
        }
        status
    }
}

/// The status of a resource that may live on a pool's worker.
pub trait Placeable {
    fn placement(&self) -> Option<&Placement>;
    fn set_placement(&mut self, placement: Option<Placement>);
}

/// The last `ferry.dev/restart` value its worker carried out (`status.lastHandledRestart`).
pub trait HandledRestart {
    fn last_handled_restart(&self) -> Option<&str>;
}

impl HandledRestart for TransportStatus {
    fn last_handled_restart(&self) -> Option<&str> {
        self.last_handled_restart.as_deref()
    }
}

impl HandledRestart for ConnectionStatus {
    fn last_handled_restart(&self) -> Option<&str> {
        self.last_handled_restart.as_deref()
    }
}

impl Placeable for TransportStatus {
    fn placement(&self) -> Option<&Placement> {
        self.placement.as_ref()
    }

    fn set_placement(&mut self, placement: Option<Placement>) {
        self.placement = placement;
    }
}

impl Placeable for ConnectionStatus {
    fn placement(&self) -> Option<&Placement> {
        self.placement.as_ref()
    }

    fn set_placement(&mut self, placement: Option<Placement>) {
        self.placement = placement;
    }
}

/// A resource that does not run as its spec says — it names a WorkerPool that has no place
/// for it (yet), or a forbidden destination: `Ready` and `Degraded` say why; the last known
/// state stays.
pub fn not_running(
    previous: &[Condition],
    generation: Option<i64>,
    reason: &str,
    why: &str,
    now: Time,
) -> Vec<Condition> {
    not_applied(previous, generation, reason, why.to_owned(), now)
}

/// A pool's status has no clocks: every change is a change.
impl WithConditions for WorkerPoolStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }

    fn last_report_time(&self) -> Option<&Time> {
        None
    }

    fn without_clocks(&self) -> Self {
        self.clone()
    }
}

/// How long the clocks of a status (`lastReportTime`, `queue.oldestAgeSeconds`, a connection's
/// `iteration`) stand still while nothing else in it changes (docs/operator.md, "What the
/// operator reads and writes"): a report that only says "still the same" is not written more
/// often, so a resource at rest costs no status write.
pub const REPORT_TIME_FRESHNESS: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// The status to write, or `None` when the object shows it already. Clocks alone are a change
/// only once the `lastReportTime` shown is [`REPORT_TIME_FRESHNESS`] old.
pub fn to_write<S: WithConditions>(shown: Option<&S>, next: S) -> Option<S> {
    let Some(shown) = shown else {
        return Some(next);
    };
    if shown.without_clocks() != next.without_clocks() {
        return Some(next);
    }
    let stale = match (shown.last_report_time(), next.last_report_time()) {
        (Some(shown), Some(next)) => next
            .0
            .duration_since(shown.0)
            .unsigned_abs()
            .ge(&REPORT_TIME_FRESHNESS),
        (None, Some(_)) => true,
        _ => false,
    };
    stale.then_some(next)
}

/// Why a worker pod that exists is not ready, as `kubectl describe` would show it: a container
/// waiting (ImagePullBackOff, CrashLoopBackOff, ...), or the pod not scheduled.
pub fn pod_not_ready_reason(pod: &k8s_openapi::api::core::v1::Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let waiting = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
        .find_map(|w| {
            let reason = w.reason.as_deref()?;
            Some(match w.message.as_deref() {
                Some(message) => format!("{reason}: {message}"),
                None => reason.to_owned(),
            })
        });
    waiting.or_else(|| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
            .map(|c| {
                format!(
                    "not scheduled: {}",
                    c.message
                        .as_deref()
                        .or(c.reason.as_deref())
                        .unwrap_or("no reason given")
                )
            })
    })
}

/// The API server refused the worker's objects (an invalid change, a quota, an admission
/// webhook): `Ready` and `Degraded` say why; the last known state stays.
pub fn objects_refused(
    previous: &[Condition],
    generation: Option<i64>,
    why: &str,
    now: Time,
) -> Vec<Condition> {
    let message = format!("the API server refused the worker's objects: {why}");
    not_applied(previous, generation, "WorkerObjectsRefused", message, now)
}

/// An object of the worker's name exists and belongs to somebody else: nothing was applied,
/// and `Ready`/`Degraded` name the object.
pub fn name_conflict(
    previous: &[Condition],
    generation: Option<i64>,
    why: &str,
    now: Time,
) -> Vec<Condition> {
    not_applied(previous, generation, "NameConflict", why.to_owned(), now)
}

/// The object cannot be read (`guard`): `Ready`/`Degraded` say which field, and it is stalled.
pub fn invalid_spec(
    previous: &[Condition],
    generation: Option<i64>,
    why: &str,
    now: Time,
) -> Vec<Condition> {
    not_applied(previous, generation, INVALID_SPEC, why.to_owned(), now)
}

fn not_applied(
    previous: &[Condition],
    generation: Option<i64>,
    reason: &str,
    message: String,
    now: Time,
) -> Vec<Condition> {
    set_conditions(
        previous,
        vec![
            Set("Ready", false, reason, message.clone()),
            Set("Degraded", true, reason, message),
        ],
        generation,
        &now,
    )
}

/// A transport's status from its worker's report (`Ok`) or why the worker could not be read.
pub fn transport_status(
    previous: Option<&TransportStatus>,
    generation: Option<i64>,
    suspended: bool,
    report: Result<&TransportReport, &str>,
    now: Time,
) -> TransportStatus {
    let previous_conditions = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    let report = match report {
        Ok(report) => report,
        Err(why) => {
            // The last known state, queue and totals stay; the conditions say they are stale.
            let mut status = previous.cloned().unwrap_or_default();
            status.conditions = set_conditions(
                previous_conditions,
                vec![
                    Set(
                        "Ready",
                        false,
                        "WorkerUnreachable",
                        format!("the worker does not answer: {why}"),
                    ),
                    Set(
                        "Degraded",
                        true,
                        "WorkerUnreachable",
                        format!("the worker does not answer: {why}"),
                    ),
                ],
                generation,
                &now,
            );
            return status;
        }
    };
    let applied = report.observed_generation == generation;
    let wants_suspension = suspended
        == matches!(
            report.state,
            TransportState::Suspended | TransportState::SfSuspended
        );
    let doing_what_asked = applied && wants_suspension;
    let ready_message = match report.state {
        TransportState::Up => "connected; transactions are delivered as they come".to_owned(),
        TransportState::Down => "not connected; it connects with the first transaction".to_owned(),
        TransportState::Suspended => "suspended by the user".to_owned(),
        TransportState::SfSuspended => {
            format!(
                "suspended by the user; {} transactions queued",
                report.queue.messages
            )
        }
        TransportState::StoreAndForward => format!(
            "the host is unreachable; {} transactions queued, reconnecting",
            report.queue.messages
        ),
    };
    let progressing = if !applied {
        Set(
            "Progressing",
            true,
            "ApplyingSpec",
            "the worker has not applied the latest spec yet".into(),
        )
    } else if !wants_suspension {
        let to = if suspended { "suspended" } else { "resumed" };
        Set("Progressing", true, "Transitioning", format!("being {to}"))
    } else {
        Set(
            "Progressing",
            false,
            "Applied",
            "the worker runs the latest spec".into(),
        )
    };
    // T11: the queue's servers (a pool on JetStream) unavailable: not Ready, whatever the
    // state, until the worker reaches them again.
    let unavailable = report.queue_unavailable.as_ref().map(|why| {
        format!("the queue is unavailable ({why}); what would be queued is refused with 503, direct delivery goes on")
    });
    let doing_what_asked = doing_what_asked && unavailable.is_none();
    let (ready_reason, ready_message) = match &unavailable {
        Some(message) => ("QueueUnavailable", message.clone()),
        None => (state_reason(report.state), ready_message),
    };
    let degraded = if let Some(message) = &unavailable {
        Set("Degraded", true, "QueueUnavailable", message.clone())
    } else if report.state == TransportState::StoreAndForward {
        Set("Degraded", true, "HostUnreachable", ready_message.clone())
    } else {
        Set(
            "Degraded",
            false,
            "AsExpected",
            "nothing needs attention".into(),
        )
    };
    TransportStatus {
        state: Some(report.state),
        observed_generation: report.observed_generation,
        queue: report.queue.clone(),
        totals: report.totals.clone(),
        endpoint: Some(report.endpoint.clone()),
        faults: report.faults.clone(),
        last_report_time: Some(now.clone()),
        // Set by the reconcile, which knows where the resource lives and what it asked.
        placement: previous.and_then(|p| p.placement.clone()),
        last_handled_restart: previous.and_then(|p| p.last_handled_restart.clone()),
        conditions: set_conditions(
            previous_conditions,
            vec![
                Set("Ready", doing_what_asked, ready_reason, ready_message),
                progressing,
                degraded,
            ],
            generation,
            &now,
        ),
    }
}

/// What the operator adds to a connection's worker report: C1 and the startup queue.
pub struct ConnectionContext {
    pub generation: Option<i64>,
    pub started: bool,
    /// Names of the enabled sync-sets in the spec.
    pub enabled_sync_sets: Vec<String>,
    pub phase: OperatorPhase,
    pub queue_position: Option<u32>,
    /// A target transport that does not exist, found while resolving.
    pub config_error: Option<String>,
}

/// A connection's status, the seven values decided by `connection::status::derive`.
pub fn connection_status(
    previous: Option<&ConnectionStatus>,
    context: &ConnectionContext,
    report: Result<&ConnectionReport, &str>,
    now: Time,
) -> ConnectionStatus {
    let previous_conditions = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    let worker = match report {
        Ok(report) => WorkerView::Report(
            context
                .enabled_sync_sets
                .iter()
                .filter_map(|name| report.sync_sets.iter().find(|s| &s.name == name))
                .map(|s| SyncSetView {
                    name: s.name.clone(),
                    last_result: s.last_result,
                    completed_since_start: s
                        .last_completed_iteration
                        .is_some_and(|i| i > report.started_iteration),
                    last_error: s.last_error.clone(),
                })
                .collect(),
        ),
        Err(why) => WorkerView::Unreachable(format!("the worker does not answer: {why}")),
    };
    let derived = status::derive(&Inputs {
        operator: context.phase,
        started: context.started,
        config_error: context.config_error.clone(),
        enabled_sync_sets: context.enabled_sync_sets.len(),
        queue_position: context.queue_position,
        worker,
    });
    use ConnectionStatusValue::*;
    let ready = match derived.status {
        Running | Idle => true,
        Disabled => derived.reason == "Stopped",
        Failed | Restarting | ServerReinitializing | Unknown => false,
    };
    let progressing = matches!(derived.status, Restarting | ServerReinitializing);
    let degraded =
        matches!(derived.status, Failed | Unknown) || derived.reason == "InvalidConfiguration";
    let quiet = |holds: bool, fallback: &'static str| if holds { derived.reason } else { fallback };
    let conditions = set_conditions(
        previous_conditions,
        vec![
            Set("Ready", ready, derived.reason, derived.message.clone()),
            Set(
                "Progressing",
                progressing,
                quiet(progressing, "Settled"),
                derived.message.clone(),
            ),
            Set(
                "Degraded",
                degraded,
                quiet(degraded, "AsExpected"),
                derived.message.clone(),
            ),
        ],
        context.generation,
        &now,
    );
    let mut status = previous.cloned().unwrap_or_default();
    status.status = Some(derived.status);
    status.startup_queue_position = context.queue_position;
    status.conditions = conditions;
    if let Ok(report) = report {
        status.observed_generation = report.observed_generation;
        status.iteration = report.iteration;
        status.sync_sets = report.sync_sets.to_vec();
        status.faults = report.faults.clone();
        status.last_report_time = Some(now);
    }
    status
}

/// What the operator sees of a WorkerPool: what its spec asks, its workers (by ordinal, as
/// many as run), and the resources that name it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolView {
    pub replicas: i32,
    /// Ordinal order; `hosted` as placed in the resources' status.
    pub workers: Vec<PoolWorker>,
    /// `Transport erp`, ... : every resource whose `spec.workerPool` names the pool.
    pub used_by: Vec<String>,
    /// The pool is being deleted.
    pub deleting: bool,
    /// `Volume` or `JetStream`.
    pub queue: &'static str,
    /// Resources moved off failed workers in this reconcile (added to `status.moves`).
    pub moved: u64,
}

/// How many workers a pool runs: what its spec asks, but never fewer than one past the
/// highest worker that hosts a resource (its queue is on that worker's volume).
pub fn pool_replicas(wanted: i32, workers: &[PoolWorker]) -> i32 {
    let needed = workers
        .iter()
        .rposition(|w| w.hosted > 0)
        .map_or(0, |last| i32::try_from(last + 1).unwrap_or(i32::MAX));
    wanted.max(needed)
}

/// A pool's status (docs/resources.md, "WorkerPool"): `Ready` when every worker its spec asks
/// for is ready; a scale-down a hosting worker blocks and a deletion resources block say
/// which, in `Ready`'s message and in `Degraded`.
pub fn pool_status(
    previous: Option<&WorkerPoolStatus>,
    generation: Option<i64>,
    view: &PoolView,
    now: Time,
) -> WorkerPoolStatus {
    let ready_workers = view.workers.iter().filter(|w| w.ready).count();
    let ready_workers = i32::try_from(ready_workers).unwrap_or(i32::MAX);
    let hosted = view.workers.iter().map(|w| w.hosted).sum();
    let running = pool_replicas(view.replicas, &view.workers);
    let listed = |names: &[String]| {
        let mut text = names
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if names.len() > 10 {
            text.push_str(&format!(" and {} more", names.len() - 10));
        }
        text
    };
    let blocked_scale_down = (running > view.replicas).then(|| {
        let hosting: Vec<String> = view
            .workers
            .iter()
            .skip(usize::try_from(view.replicas).unwrap_or(0))
            .filter(|w| w.hosted > 0)
            .map(|w| format!("{} hosts {}", w.name, w.hosted))
            .collect();
        format!(
            "cannot scale down to {} workers: {} (move or delete what they host)",
            view.replicas,
            hosting.join(", ")
        )
    });
    let (ready, reason, message) = if view.deleting && !view.used_by.is_empty() {
        (
            false,
            "InUse",
            format!(
                "deletion waits: {} still use the pool (delete them or move them, docs/resources.md)",
                listed(&view.used_by)
            ),
        )
    } else if let Some(blocked) = &blocked_scale_down {
        (false, "ScaleDownBlocked", blocked.clone())
    } else if view.replicas == 0 {
        (
            true,
            "ScaledToZero",
            "no workers asked for; nothing can be placed".to_owned(),
        )
    } else if ready_workers >= view.replicas {
        (
            true,
            "WorkersReady",
            format!("{ready_workers} of {} workers ready", view.replicas),
        )
    } else if ready_workers == 0 {
        (
            false,
            "NoReadyWorker",
            format!("none of {} workers is ready yet", view.replicas),
        )
    } else {
        (
            false,
            "WorkersStarting",
            format!("{ready_workers} of {} workers ready", view.replicas),
        )
    };
    let degraded = matches!(reason, "InUse" | "ScaleDownBlocked");
    let previous_conditions = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    WorkerPoolStatus {
        observed_generation: generation,
        ready_workers,
        hosted,
        queue: (!view.queue.is_empty()).then(|| view.queue.to_owned()),
        moves: previous.map_or(0, |p| p.moves) + view.moved,
        workers: view.workers.clone(),
        conditions: set_conditions(
            previous_conditions,
            vec![
                Set("Ready", ready, reason, message.clone()),
                Set("Progressing", !ready && !degraded, reason, message.clone()),
                Set(
                    "Degraded",
                    degraded,
                    if degraded { reason } else { "AsExpected" },
                    if degraded { message } else { String::new() },
                ),
            ],
            generation,
            &now,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        connection::{SyncResult, SyncSetStatus},
        transport::{QueueStatus, Totals},
    };

    fn at(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    fn report(state: TransportState, generation: i64) -> TransportReport {
        TransportReport {
            faults: None,
            state,
            observed_generation: Some(generation),
            queue: QueueStatus {
                messages: 3,
                ..Default::default()
            },
            totals: Totals::default(),
            endpoint: "http://ferry-tp-erp.plant-a.svc:8080/v1/transports/plant-a/erp/transactions"
                .into(),
            restarted: None,
            queue_unavailable: None,
            moved: false,
        }
    }

    fn condition<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
        conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition present")
    }

    /// At rest a status is not written again: the same report later is no change, until the
    /// report time shown is REPORT_TIME_FRESHNESS old; any other change is written at once.
    #[test]
    fn a_status_is_written_only_when_it_changed_or_its_report_time_is_stale() {
        let up = report(TransportState::Up, 1);
        let shown = transport_status(None, Some(1), false, Ok(&up), at(10));
        let again = transport_status(Some(&shown), Some(1), false, Ok(&up), at(15));
        assert_eq!(to_write(Some(&shown), again), None);
        let stale = REPORT_TIME_FRESHNESS.as_secs() as i64 + 10;
        let later = transport_status(Some(&shown), Some(1), false, Ok(&up), at(stale));
        assert_eq!(to_write(Some(&shown), later.clone()), Some(later));
        let mut queued = up.clone();
        queued.queue.messages = 1;
        let changed = transport_status(Some(&shown), Some(1), false, Ok(&queued), at(15));
        assert_eq!(to_write(Some(&shown), changed.clone()), Some(changed));
        let first = transport_status(None, Some(1), false, Ok(&up), at(15));
        assert_eq!(to_write(None, first.clone()), Some(first));
    }

    #[test]
    fn transport_ready_only_when_doing_what_the_spec_asks() {
        let up = transport_status(
            None,
            Some(2),
            false,
            Ok(&report(TransportState::Up, 2)),
            at(10),
        );
        let ready = condition(&up.conditions, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Up")
        );
        assert_eq!(up.state, Some(TransportState::Up));
        assert_eq!(up.last_report_time, Some(at(10)));

        // The spec says suspended; the worker has not got there yet.
        let behind = transport_status(
            Some(&up),
            Some(3),
            true,
            Ok(&report(TransportState::Up, 2)),
            at(20),
        );
        assert_eq!(condition(&behind.conditions, "Ready").status, "False");
        assert_eq!(
            condition(&behind.conditions, "Progressing").reason,
            "ApplyingSpec"
        );

        let suspended = transport_status(
            Some(&behind),
            Some(3),
            true,
            Ok(&report(TransportState::SfSuspended, 3)),
            at(30),
        );
        let ready = condition(&suspended.conditions, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "SfSuspended")
        );
        assert!(ready.message.contains("3 transactions queued"));

        let sf = transport_status(
            Some(&suspended),
            Some(4),
            false,
            Ok(&report(TransportState::StoreAndForward, 4)),
            at(40),
        );
        let degraded = condition(&sf.conditions, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "HostUnreachable")
        );
    }

    /// T11: the queue's servers unavailable: not Ready and Degraded with QueueUnavailable,
    /// in whatever state; back to Ready once the worker reaches them again.
    #[test]
    fn an_unavailable_queue_is_not_ready_whatever_the_state() {
        for state in [TransportState::Up, TransportState::StoreAndForward] {
            let mut unavailable = report(state, 1);
            unavailable.queue_unavailable = Some("no quorum".into());
            let status = transport_status(None, Some(1), false, Ok(&unavailable), at(10));
            for kind in ["Ready", "Degraded"] {
                let c = condition(&status.conditions, kind);
                assert_eq!(c.reason, "QueueUnavailable", "{state:?} {kind}");
                assert!(c.message.contains("no quorum"), "{}", c.message);
            }
            assert_eq!(condition(&status.conditions, "Ready").status, "False");
            assert_eq!(status.state, Some(state), "the state stays one of the five");
            let back =
                transport_status(Some(&status), Some(1), false, Ok(&report(state, 1)), at(20));
            assert_ne!(
                condition(&back.conditions, "Ready").reason,
                "QueueUnavailable"
            );
        }
    }

    #[test]
    fn an_unreachable_worker_keeps_the_last_known_state() {
        let up = transport_status(
            None,
            Some(1),
            false,
            Ok(&report(TransportState::Up, 1)),
            at(10),
        );
        let lost = transport_status(Some(&up), Some(1), false, Err("connection refused"), at(20));
        assert_eq!(
            lost.state,
            Some(TransportState::Up),
            "last known state kept"
        );
        assert_eq!(
            lost.last_report_time,
            Some(at(10)),
            "the last report's time, not now"
        );
        let ready = condition(&lost.conditions, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "WorkerUnreachable")
        );
        assert_eq!(ready.last_transition_time, at(20));
        assert!(ready.message.contains("connection refused"));
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let first = transport_status(
            None,
            Some(1),
            false,
            Ok(&report(TransportState::Down, 1)),
            at(10),
        );
        let again = transport_status(
            Some(&first),
            Some(1),
            false,
            Ok(&report(TransportState::Up, 1)),
            at(20),
        );
        // Ready stayed True (Down and Up are both what the spec asks): its time is kept.
        assert_eq!(
            condition(&again.conditions, "Ready").last_transition_time,
            at(10)
        );
        assert_eq!(condition(&again.conditions, "Ready").reason, "Up");
        let lost = transport_status(Some(&again), Some(1), false, Err("timeout"), at(30));
        assert_eq!(
            condition(&lost.conditions, "Ready").last_transition_time,
            at(30)
        );
    }

    fn connection_report(result: Option<SyncResult>, completed: Option<u64>) -> ConnectionReport {
        ConnectionReport {
            faults: None,
            status: ConnectionStatusValue::Running,
            reason: String::new(),
            message: String::new(),
            observed_generation: Some(1),
            iteration: 3,
            startup_queue_position: None,
            sync_sets: vec![SyncSetStatus {
                name: "orders".into(),
                last_result: result,
                last_completed_iteration: completed,
                ..Default::default()
            }],
            started_iteration: 1,
            restarted: None,
        }
    }

    fn context(phase: OperatorPhase) -> ConnectionContext {
        ConnectionContext {
            generation: Some(1),
            started: true,
            enabled_sync_sets: vec!["orders".into()],
            phase,
            queue_position: None,
            config_error: None,
        }
    }

    #[test]
    fn connection_values_and_conditions() {
        let running = connection_report(Some(SyncResult::Success), Some(3));
        let reinit = connection_status(
            None,
            &context(OperatorPhase::Reinitializing),
            Ok(&running),
            at(1),
        );
        assert_eq!(
            reinit.status,
            Some(ConnectionStatusValue::ServerReinitializing)
        );
        assert_eq!(condition(&reinit.conditions, "Progressing").status, "True");

        let ok = connection_status(
            Some(&reinit),
            &context(OperatorPhase::Pushed),
            Ok(&running),
            at(2),
        );
        assert_eq!(ok.status, Some(ConnectionStatusValue::Running));
        assert_eq!(condition(&ok.conditions, "Ready").status, "True");
        assert_eq!(ok.iteration, 3);

        let failed = connection_report(Some(SyncResult::Failed), Some(3));
        let bad = connection_status(
            Some(&ok),
            &context(OperatorPhase::Pushed),
            Ok(&failed),
            at(3),
        );
        assert_eq!(bad.status, Some(ConnectionStatusValue::Failed));
        assert_eq!(
            condition(&bad.conditions, "Degraded").reason,
            "SyncSetFailed"
        );

        let gone = connection_status(
            Some(&ok),
            &context(OperatorPhase::Pushed),
            Err("refused"),
            at(4),
        );
        assert_eq!(gone.status, Some(ConnectionStatusValue::Unknown));
        assert_eq!(
            condition(&gone.conditions, "Ready").reason,
            "WorkerUnreachable"
        );
        assert_eq!(gone.iteration, 3, "the last known iteration is kept");

        let mut queued = context(OperatorPhase::Pushed);
        queued.queue_position = Some(2);
        let waiting = connection_status(None, &queued, Ok(&connection_report(None, None)), at(5));
        assert_eq!(
            (waiting.status, waiting.startup_queue_position),
            (Some(ConnectionStatusValue::Restarting), Some(2))
        );
        assert_eq!(
            condition(&waiting.conditions, "Progressing").reason,
            "QueuedForStartup"
        );

        let mut stopped = context(OperatorPhase::Pushed);
        stopped.started = false;
        let off = connection_status(None, &stopped, Err("scaled to zero"), at(6));
        assert_eq!(off.status, Some(ConnectionStatusValue::Disabled));
        assert_eq!(
            condition(&off.conditions, "Ready").status,
            "True",
            "stopped as the spec asks"
        );

        let mut missing = context(OperatorPhase::Pushed);
        missing.config_error = Some("target transport erp does not exist".into());
        let broken = connection_status(None, &missing, Ok(&running), at(7));
        assert_eq!(broken.status, Some(ConnectionStatusValue::Disabled));
        assert_eq!(
            condition(&broken.conditions, "Degraded").reason,
            "InvalidConfiguration"
        );
        assert_eq!(condition(&broken.conditions, "Ready").status, "False");
    }

    /// The API server validates status writes against the CRD too.
    #[test]
    fn written_statuses_pass_the_crd_schema() {
        use crate::api::validate::{ManifestValidator, Resource};
        let validator = ManifestValidator::new();
        let up = transport_status(
            None,
            Some(1),
            false,
            Ok(&report(TransportState::Up, 1)),
            at(10),
        );
        let lost = transport_status(Some(&up), Some(1), false, Err("refused"), at(20));
        for status in [up, lost] {
            let doc = serde_json::json!({
                "apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
                "metadata": {"name": "erp", "namespace": "plant-a"},
                "spec": {"host": {"url": "http://erp/ingest"}},
                "status": status,
            });
            assert!(
                matches!(validator.validate(&doc), Ok(Resource::Transport(_))),
                "{doc}"
            );
        }
        let connection = connection_status(
            None,
            &context(OperatorPhase::Pushed),
            Ok(&connection_report(Some(SyncResult::Failed), Some(3))),
            at(1),
        );
        let doc = serde_json::json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "Connection",
            "metadata": {"name": "crm", "namespace": "plant-a"},
            "spec": {},
            "status": connection,
        });
        assert!(
            matches!(validator.validate(&doc), Ok(Resource::Connection(_))),
            "{doc}"
        );
    }

    #[test]
    fn a_pod_that_is_not_ready_says_why() {
        let pod = |status: serde_json::Value| -> k8s_openapi::api::core::v1::Pod {
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": "w-0"}, "status": status}),
            )
            .unwrap()
        };
        let pulling = pod(serde_json::json!({"containerStatuses": [{
            "name": "worker", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x\""}}}]}));
        assert_eq!(
            pod_not_ready_reason(&pulling).as_deref(),
            Some("ImagePullBackOff: Back-off pulling image \"x\"")
        );
        let pending = pod(
            serde_json::json!({"conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "0/3 nodes are available: insufficient memory"}]}),
        );
        assert_eq!(
            pod_not_ready_reason(&pending).as_deref(),
            Some("not scheduled: 0/3 nodes are available: insufficient memory")
        );
        assert_eq!(pod_not_ready_reason(&pod(serde_json::json!({}))), None);
    }

    /// kstatus (sigs.k8s.io/cli-utils/pkg/kstatus, used by Flux and kpt) for a custom resource,
    /// as documented, in its order: deleting → Terminating; `status.observedGeneration` behind
    /// `metadata.generation` → InProgress; `Reconciling=True` → InProgress; `Stalled=True` →
    /// Failed; anything else → Current.
    fn kstatus(object: &serde_json::Value) -> &'static str {
        if object["metadata"]["deletionTimestamp"].is_string() {
            return "Terminating";
        }
        let generation = object["metadata"]["generation"].as_i64();
        let observed = object["status"]["observedGeneration"].as_i64();
        if let (Some(generation), Some(observed)) = (generation, observed)
            && generation != observed
        {
            return "InProgress";
        }
        let holds = |type_: &str| {
            object["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == type_ && c["status"] == "True")
        };
        if holds("Reconciling") {
            return "InProgress";
        }
        if holds("Stalled") {
            return "Failed";
        }
        "Current"
    }

    fn object(generation: i64, status: impl serde::Serialize) -> serde_json::Value {
        serde_json::json!({"metadata": {"name": "erp", "generation": generation},
                           "status": status})
    }

    /// Every situation ferry writes, read by kstatus's rules: Flux waits while a resource is
    /// InProgress, fails a health check on Failed, and passes on Current.
    #[test]
    fn kstatus_reads_every_status_as_documented() {
        fn transport(suspended: bool, report: Result<TransportReport, &str>) -> TransportStatus {
            transport_status(
                None,
                Some(2),
                suspended,
                report.as_ref().map_err(|e| *e),
                at(1),
            )
        }
        let up = transport(false, Ok(report(TransportState::Up, 2)));
        let sf = transport(false, Ok(report(TransportState::StoreAndForward, 2)));
        let conflict = TransportStatus {
            conditions: name_conflict(&[], Some(2), "Service ferry-tp-erp is not ours", at(1)),
            ..Default::default()
        };
        let refused = TransportStatus {
            conditions: objects_refused(&up.conditions, Some(2), "exceeded quota", at(1)),
            ..up.clone()
        };
        let invalid = TransportStatus {
            conditions: invalid_spec(&[], Some(2), "spec.maxBytes: too large", at(1)),
            ..Default::default()
        };
        let transports: [(&str, TransportStatus, &str); 9] = [
            ("Up as asked", up.clone(), "Current"),
            (
                "Suspended as asked",
                transport(true, Ok(report(TransportState::Suspended, 2))),
                "Current",
            ),
            ("Store and Forward: queueing as designed", sf, "Current"),
            (
                "the worker has generation 1 of 2",
                transport(false, Ok(report(TransportState::Up, 1))),
                "InProgress",
            ),
            (
                "being suspended",
                transport(true, Ok(report(TransportState::Up, 2))),
                "InProgress",
            ),
            (
                "new, the worker not answering yet",
                transport(false, Err("pod not ready")),
                "InProgress",
            ),
            ("a name taken by another object", conflict, "Failed"),
            (
                "the API server refuses the worker's objects",
                refused,
                "Failed",
            ),
            ("an object ferry cannot read", invalid, "Failed"),
        ];
        for (case, status, expected) in transports {
            assert_eq!(kstatus(&object(2, &status)), expected, "transport: {case}");
        }
        let mut deleting = object(2, &up);
        deleting["metadata"]["deletionTimestamp"] = "2026-11-28T10:00:00Z".into();
        assert_eq!(kstatus(&deleting), "Terminating");

        let pushed = || context(OperatorPhase::Pushed);
        let running = connection_report(Some(SyncResult::Success), Some(3));
        let stopped = ConnectionContext {
            started: false,
            ..pushed()
        };
        let queued = ConnectionContext {
            queue_position: Some(2),
            ..pushed()
        };
        let missing = ConnectionContext {
            config_error: Some("target transport erp does not exist".into()),
            ..pushed()
        };
        let idle = ConnectionContext {
            enabled_sync_sets: vec![],
            ..pushed()
        };
        let connections: [(
            &str,
            ConnectionContext,
            Result<&ConnectionReport, &str>,
            &str,
        ); 8] = [
            ("Running", pushed(), Ok(&running), "Current"),
            ("Idle", idle, Ok(&running), "Current"),
            (
                "Disabled: stopped as asked",
                stopped,
                Ok(&running),
                "Current",
            ),
            (
                "Server Reinitializing",
                context(OperatorPhase::Reinitializing),
                Ok(&running),
                "InProgress",
            ),
            (
                "Restarting: queued for startup",
                queued,
                Ok(&running),
                "InProgress",
            ),
            (
                "Unknown: the worker does not answer",
                pushed(),
                Err("refused"),
                "InProgress",
            ),
            (
                "Failed",
                pushed(),
                Ok(&connection_report(Some(SyncResult::Failed), Some(3))),
                "Failed",
            ),
            (
                "Disabled: a missing target",
                missing,
                Ok(&running),
                "Failed",
            ),
        ];
        for (case, context, report, expected) in connections {
            let status = connection_status(None, &context, report, at(1));
            assert_eq!(kstatus(&object(1, &status)), expected, "connection: {case}");
        }
    }

    /// Reconciling and Stalled never both hold, and neither holds when Ready does.
    #[test]
    fn kstatus_conditions_agree_with_ready() {
        let holds =
            |conditions: &[Condition], type_: &str| condition(conditions, type_).status == "True";
        for state in TransportState::ALL {
            for (suspended, generation) in [(false, 1), (true, 1), (false, 2)] {
                let status = transport_status(
                    None,
                    Some(2),
                    suspended,
                    Ok(&report(state, generation)),
                    at(1),
                );
                let c = &status.conditions;
                assert!(!(holds(c, "Reconciling") && holds(c, "Stalled")), "{c:?}");
                assert_eq!(
                    holds(c, "Ready"),
                    !holds(c, "Reconciling") && !holds(c, "Stalled"),
                    "{c:?}"
                );
            }
        }
    }
}
