//! The startup queue (docs/connection.md, Q1–Q6). Q1: connections started one after another
//! enter their startup one at a time, each after the one before it runs.
//!
//! One admission policy for the operator and `ferry standalone`: each look at a connection
//! goes through [`StartupQueue::observe`] (is this a start, may it go now) and each status it
//! reaches through [`StartupQueue::settle`] (is its startup over).
//!
//! Pure: time comes in as milliseconds, and the whole queue serializes.

use std::collections::{BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::api::ConnectionStatusValue;

/// Where a connection stands after its start was observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// In its startup now.
    Starting,
    /// Waiting at this position (1 = next).
    Waiting(u32),
}

/// One look at a connection, as the operator or standalone sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Look {
    /// `spec.started`.
    pub started: bool,
    /// Its configuration lets it run (every target it names exists).
    pub can_run: bool,
    /// Its status before this look; `None` for a connection seen for the first time.
    pub previous: Option<ConnectionStatusValue>,
    /// Its worker can run it now (in standalone, always).
    pub worker_ready: bool,
    /// A restart (`ferry.dev/restart`) is asked and not carried out yet: a start (Q2).
    pub restart: bool,
}

/// Q2: a start is observed when a started connection was not running before: it is new, or its
/// last status was Disabled (stopped, or unable to run); or when a restart is asked of it
/// (`Look::restart`). Any other status means it was running already: a spec change, an
/// unreachable worker or an operator restart requeues nothing.
pub fn is_a_start(previous: Option<ConnectionStatusValue>) -> bool {
    matches!(previous, None | Some(ConnectionStatusValue::Disabled))
}

/// A startup is over once the connection runs, fails or cannot run; not while it is still
/// starting, being reinitialized, or its worker cannot be read.
pub fn ends_startup(status: ConnectionStatusValue) -> bool {
    use ConnectionStatusValue::*;
    matches!(status, Running | Failed | Idle | Disabled)
}

/// Who shares the startup places.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "camelCase")]
pub enum Scope {
    /// Every connection of the operator waits in one queue.
    #[default]
    Cluster,
    /// Each namespace has its own queue and its own places: one team's connections that do
    /// not come up never delay another team's.
    Namespace,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartupQueue {
    /// How many connections may be in startup at once (at least 1), per scope.
    concurrency: usize,
    #[serde(default)]
    scope: Scope,
    /// A connection in startup longer than this no longer holds its place.
    timeout_ms: u64,
    /// In startup.
    starting: Vec<Started>,
    /// Waiting, in the order their starts were observed (ascending tickets).
    waiting: VecDeque<Ticket>,
    /// The next ticket handed out: a start observed later always gets a higher one.
    #[serde(default)]
    next_ticket: u64,
    /// Connections whose worker cannot run them now (its pod is missing or not ready): they
    /// keep their turn but hold no place, so one that never comes up delays nobody.
    #[serde(default)]
    not_ready: BTreeSet<String>,
    /// Admissions into startup so far (for the operator's metrics).
    #[serde(default)]
    admitted: u64,
}

/// How the queue stands, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub starting: usize,
    /// Waiting for a place, their worker ready.
    pub waiting: usize,
    /// Keeping their turn while their worker is not ready.
    pub waiting_for_worker: usize,
    /// Admissions into startup so far.
    pub admitted: u64,
}

/// A connection's turn: `ticket` orders the waiting by when their start was observed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ticket {
    key: String,
    ticket: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Started {
    key: String,
    /// Kept so a connection whose worker stops being ready goes back to its own turn.
    ticket: u64,
    /// When it was admitted.
    since_ms: u64,
}

impl StartupQueue {
    pub fn new(concurrency: usize, timeout_ms: u64) -> Self {
        Self {
            concurrency: concurrency.max(1),
            scope: Scope::Cluster,
            timeout_ms,
            starting: Vec::new(),
            waiting: VecDeque::new(),
            next_ticket: 0,
            not_ready: BTreeSet::new(),
            admitted: 0,
        }
    }

    pub fn counts(&self) -> QueueCounts {
        let for_worker = self
            .waiting
            .iter()
            .filter(|t| self.not_ready.contains(&t.key))
            .count();
        QueueCounts {
            starting: self.starting.len(),
            waiting: self.waiting.len() - for_worker,
            waiting_for_worker: for_worker,
            admitted: self.admitted,
        }
    }

    /// The same queue with places shared by `scope`.
    pub fn scoped(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// The group a connection (`namespace/name`) shares its places with.
    fn group<'k>(&self, key: &'k str) -> &'k str {
        match self.scope {
            Scope::Cluster => "",
            Scope::Namespace => key.split_once('/').map_or("", |(ns, _)| ns),
        }
    }

    fn starting_in(&self, group: &str) -> usize {
        self.starting
            .iter()
            .filter(|s| self.group(&s.key) == group)
            .count()
    }

    /// A start was observed (a new connection with `started: true`, or `started` turned on).
    /// Asking again changes nothing.
    pub fn request(&mut self, key: &str, now_ms: u64) -> Admission {
        if self.admission(key).is_none() {
            let ticket = self.next_ticket;
            self.next_ticket += 1;
            self.waiting.push_back(Ticket {
                key: key.to_owned(),
                ticket,
            });
        }
        self.advance(now_ms);
        self.admission(key).unwrap_or(Admission::Starting)
    }

    /// Q2 and Q5, at each look at a connection: a started connection that can run joins the
    /// queue when this is a start (or keeps its place); one that is stopped or cannot run
    /// leaves it. Answers where it stands; `None`: not in the queue, free to run.
    pub fn observe(&mut self, key: &str, look: Look, now_ms: u64) -> Option<Admission> {
        self.set_worker_ready(key, look.worker_ready, now_ms);
        if !(look.started && look.can_run) {
            self.release(key, now_ms);
            return None;
        }
        if is_a_start(look.previous) || look.restart || self.admission(key).is_some() {
            Some(self.request(key, now_ms))
        } else {
            None
        }
    }

    /// Q4: the connection reached `status`; a startup that is over gives its place up.
    pub fn settle(&mut self, key: &str, status: ConnectionStatusValue, now_ms: u64) {
        if ends_startup(status) {
            self.release(key, now_ms);
        }
    }

    /// Q5: whether the connection's worker can run it now. A connection whose worker is not
    /// ready is not in its startup: it gives its place up and waits, keeping its turn, until
    /// its worker is ready again.
    pub fn set_worker_ready(&mut self, key: &str, ready: bool, now_ms: u64) {
        if ready {
            self.not_ready.remove(key);
        } else {
            self.not_ready.insert(key.to_owned());
            if let Some(i) = self.starting.iter().position(|s| s.key == key) {
                let started = self.starting.remove(i);
                let at = self.waiting.partition_point(|t| t.ticket < started.ticket);
                self.waiting.insert(
                    at,
                    Ticket {
                        key: started.key,
                        ticket: started.ticket,
                    },
                );
            }
        }
        self.advance(now_ms);
    }

    /// Whether the connection waits for its worker rather than for a place.
    pub fn waits_for_worker(&self, key: &str) -> bool {
        self.not_ready.contains(key) && self.waiting.iter().any(|t| t.key == key)
    }

    /// The connection left startup: it is Running or Failed, was stopped or deleted. A
    /// waiting connection that is stopped leaves the queue.
    pub fn release(&mut self, key: &str, now_ms: u64) {
        self.starting.retain(|s| s.key != key);
        self.waiting.retain(|t| t.key != key);
        self.not_ready.remove(key);
        self.advance(now_ms);
    }

    /// Q4 and Q3: let startups past the timeout go, and admit waiting connections whose worker
    /// is ready into free places, first come first served. Answers the connections admitted now, in order.
    pub fn advance(&mut self, now_ms: u64) -> Vec<String> {
        let timeout = self.timeout_ms;
        self.starting
            .retain(|s| now_ms.saturating_sub(s.since_ms) < timeout);
        // First come, first served within each group; a full group does not hold up others,
        // and a connection waiting for its worker does not hold up the ones behind it.
        let mut admitted = Vec::new();
        let mut i = 0;
        while i < self.waiting.len() {
            let key = &self.waiting[i].key;
            let group = self.group(key).to_owned();
            if !self.not_ready.contains(key) && self.starting_in(&group) < self.concurrency {
                if let Some(next) = self.waiting.remove(i) {
                    self.admitted += 1;
                    admitted.push(next.key.clone());
                    self.starting.push(Started {
                        key: next.key,
                        ticket: next.ticket,
                        since_ms: now_ms,
                    });
                }
            } else {
                i += 1;
            }
        }
        admitted
    }

    pub fn admission(&self, key: &str) -> Option<Admission> {
        if self.is_starting(key) {
            return Some(Admission::Starting);
        }
        self.position(key).map(Admission::Waiting)
    }

    /// 1-based position among the waiting of its group.
    pub fn position(&self, key: &str) -> Option<u32> {
        let group = self.group(key);
        self.waiting
            .iter()
            .filter(|t| self.group(&t.key) == group)
            .position(|t| t.key == key)
            .map(|i| i as u32 + 1)
    }

    pub fn is_starting(&self, key: &str) -> bool {
        self.starting.iter().any(|s| s.key == key)
    }

    pub fn starting(&self) -> impl Iterator<Item = &str> {
        self.starting.iter().map(|s| s.key.as_str())
    }

    pub fn waiting(&self) -> impl Iterator<Item = &str> {
        self.waiting.iter().map(|t| t.key.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_second_enters_startup_after_the_first_is_running() {
        let mut q = StartupQueue::new(1, 60_000);
        assert_eq!(q.request("a", 0), Admission::Starting);
        assert_eq!(q.request("b", 1), Admission::Waiting(1));
        assert_eq!(q.request("c", 2), Admission::Waiting(2));
        assert_eq!(
            q.request("b", 3),
            Admission::Waiting(1),
            "asking again keeps the place"
        );
        q.release("a", 10); // a is Running
        assert_eq!(q.admission("b"), Some(Admission::Starting));
        assert_eq!(q.admission("c"), Some(Admission::Waiting(1)));
        q.release("c", 11); // c is stopped while waiting
        assert_eq!(q.admission("c"), None);
        q.release("b", 12);
        assert_eq!(q.starting().count(), 0);
    }

    /// Q2: a restart asked of a running connection is a start: it waits for a place like
    /// any other, and keeps it until its startup is over.
    #[test]
    fn a_restart_of_a_running_connection_goes_through_the_queue() {
        use ConnectionStatusValue::*;
        let mut q = StartupQueue::new(1, 60_000);
        let look = |previous, restart| Look {
            started: true,
            can_run: true,
            previous: Some(previous),
            worker_ready: true,
            restart,
        };
        assert_eq!(q.request("new", 0), Admission::Starting);
        assert_eq!(q.observe("running", look(Running, false), 1), None);
        assert_eq!(
            q.observe("running", look(Running, true), 2),
            Some(Admission::Waiting(1))
        );
        q.settle("new", Running, 3);
        // Asked of the worker now; the restart is handled, the place kept until it runs.
        assert_eq!(
            q.observe("running", look(Restarting, false), 4),
            Some(Admission::Starting)
        );
        q.settle("running", Running, 5);
        assert_eq!(q.observe("running", look(Running, false), 6), None);
    }

    #[test]
    fn a_startup_that_takes_too_long_lets_the_next_one_in() {
        let mut q = StartupQueue::new(1, 1_000);
        q.request("slow", 0);
        q.request("next", 0);
        assert_eq!(q.advance(999), Vec::<String>::new());
        assert_eq!(q.advance(1_000), vec!["next".to_string()]);
    }

    #[test]
    fn concurrency_admits_several() {
        let mut q = StartupQueue::new(2, 60_000);
        assert_eq!(q.request("a", 0), Admission::Starting);
        assert_eq!(q.request("b", 0), Admission::Starting);
        assert_eq!(q.request("c", 0), Admission::Waiting(1));
        let json = serde_json::to_string(&q).unwrap();
        assert_eq!(
            serde_json::from_str::<StartupQueue>(&json).unwrap(),
            q,
            "it survives a restart"
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        Request(u8),
        Release(u8),
        Tick(u64),
        /// Its worker pod is (not) ready.
        WorkerReady(u8, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..6).prop_map(Op::Request),
            2 => (0u8..6).prop_map(Op::Release),
            1 => (0u64..2_000).prop_map(Op::Tick),
            2 => (0u8..6, any::<bool>()).prop_map(|(k, ready)| Op::WorkerReady(k, ready)),
        ]
    }

    proptest! {
        #[test]
        fn never_more_than_n_in_startup_first_come_first_served(
            ops in proptest::collection::vec(op(), 1..60),
            concurrency in 1usize..4,
        ) {
            let timeout = 1_000;
            let mut q = StartupQueue::new(concurrency, timeout);
            let mut now = 0;
            // When each key joined the waiting list (a counter), while it is there.
            let mut joined: std::collections::HashMap<String, u64> = Default::default();
            let mut counter = 0;
            let mut not_ready = std::collections::BTreeSet::new();
            for op in ops {
                let waiting_before: Vec<String> = q.waiting().map(str::to_owned).collect();
                let before = q.counts();
                let starting_before: Vec<String> = q.starting().map(str::to_owned).collect();
                match &op {
                    Op::Request(k) => {
                        let key = format!("c{k}");
                        if q.admission(&key).is_none() {
                            counter += 1;
                            joined.insert(key.clone(), counter);
                        }
                        q.request(&key, now);
                    }
                    Op::Release(k) => {
                        q.release(&format!("c{k}"), now);
                        not_ready.remove(&format!("c{k}"));
                    }
                    Op::Tick(dt) => {
                        now += dt;
                        q.advance(now);
                    }
                    Op::WorkerReady(k, ready) => {
                        let key = format!("c{k}");
                        q.set_worker_ready(&key, *ready, now);
                        if *ready { not_ready.remove(&key); } else { not_ready.insert(key); }
                    }
                }
                prop_assert!(q.starting().count() <= concurrency);
                // The counts the operator exports agree with the queue; admissions count each
                // entry into startup.
                let counts = q.counts();
                let entered = q.starting().filter(|k| !starting_before.iter().any(|s| s == k)).count();
                prop_assert_eq!(counts.starting, q.starting().count());
                prop_assert_eq!(counts.waiting_for_worker, q.waiting().filter(|k| not_ready.contains(*k)).count());
                prop_assert_eq!(counts.waiting + counts.waiting_for_worker, q.waiting().count());
                prop_assert_eq!(counts.admitted, before.admitted + entered as u64);
                // A connection whose worker is not ready holds no place.
                for key in &not_ready {
                    prop_assert!(!q.is_starting(key), "{} holds a place", key);
                }
                // The waiting list keeps the order in which keys joined it ...
                let order: Vec<u64> = q.waiting().map(|k| joined[k]).collect();
                prop_assert!(order.windows(2).all(|w| w[0] < w[1]), "{:?}", order);
                // ... and whoever was admitted now had joined before everyone still waiting
                // with a ready worker.
                let still_waiting = q
                    .waiting()
                    .filter(|k| !not_ready.contains(*k))
                    .map(|k| joined[k])
                    .next()
                    .unwrap_or(u64::MAX);
                for key in &waiting_before {
                    if q.is_starting(key) {
                        prop_assert!(joined[key] < still_waiting);
                    }
                }
                // A place is never left empty while a connection whose worker is ready waits.
                if q.waiting().any(|k| !not_ready.contains(k)) {
                    prop_assert_eq!(q.starting().count(), concurrency);
                }
                for (i, key) in q.waiting().enumerate() {
                    prop_assert_eq!(q.position(key), Some(i as u32 + 1));
                    prop_assert_eq!(q.waits_for_worker(key), not_ready.contains(key));
                }
            }
            // No connection waits forever when the ones ahead never finish: time frees them.
            // Only those still waiting for their worker are left.
            let waiting = q.waiting().count();
            for _ in 0..=waiting {
                now += timeout;
                q.advance(now);
            }
            prop_assert!(q.waiting().all(|k| not_ready.contains(k)));
            // Once their workers are ready, they get their places in turn too.
            for key in std::mem::take(&mut not_ready) {
                q.set_worker_ready(&key, true, now);
            }
            for _ in 0..=waiting {
                now += timeout;
                q.advance(now);
            }
            prop_assert_eq!(q.waiting().count(), 0);
        }
    }

    #[test]
    fn a_connection_whose_worker_is_not_ready_gives_its_place_up_and_keeps_its_turn() {
        let mut q = StartupQueue::new(1, 300_000);
        // `broken` is admitted first, then its pod turns out not to be ready.
        assert_eq!(q.request("broken", 0), Admission::Starting);
        assert_eq!(q.request("crm", 1), Admission::Waiting(1));
        assert_eq!(q.request("erp", 2), Admission::Waiting(2));
        q.set_worker_ready("broken", false, 3);
        assert_eq!(
            q.admission("crm"),
            Some(Admission::Starting),
            "crm need not wait"
        );
        assert_eq!(
            q.admission("broken"),
            Some(Admission::Waiting(1)),
            "its turn is kept"
        );
        assert!(q.waits_for_worker("broken"));
        // Its worker is ready again: it is next once crm's startup is over, before erp.
        q.set_worker_ready("broken", true, 4);
        assert_eq!(q.admission("broken"), Some(Admission::Waiting(1)));
        q.release("crm", 5);
        assert_eq!(q.admission("broken"), Some(Admission::Starting));
        assert_eq!(q.admission("erp"), Some(Admission::Waiting(1)));
        // A start observed while its worker is not ready yet waits without a place.
        let mut q = StartupQueue::new(1, 300_000);
        q.set_worker_ready("new", false, 0);
        assert_eq!(q.request("new", 0), Admission::Waiting(1));
        assert_eq!(q.request("other", 0), Admission::Starting);
        // Leaving the queue forgets it.
        q.release("new", 1);
        assert!(!q.waits_for_worker("new"));
    }

    #[test]
    fn with_namespace_scope_one_team_does_not_wait_for_another() {
        let mut q = StartupQueue::new(1, 300_000).scoped(Scope::Namespace);
        assert_eq!(q.request("team-a/broken", 0), Admission::Starting);
        assert_eq!(q.request("team-a/next", 0), Admission::Waiting(1));
        // team-b has its own place, though team-a's is held by a connection that never runs.
        assert_eq!(q.request("team-b/crm", 0), Admission::Starting);
        assert_eq!(q.request("team-b/erp", 0), Admission::Waiting(1));
        q.release("team-b/crm", 1);
        assert_eq!(q.admission("team-b/erp"), Some(Admission::Starting));
        assert_eq!(q.admission("team-a/next"), Some(Admission::Waiting(1)));
        // The cluster scope is one queue.
        let mut q = StartupQueue::new(1, 300_000);
        q.request("team-a/broken", 0);
        assert_eq!(q.request("team-b/crm", 0), Admission::Waiting(1));
    }

    proptest! {
        /// Per namespace: never more than n in startup, first come first served, a place is
        /// never left empty while someone of that namespace waits.
        #[test]
        fn namespace_scope_keeps_each_namespace_fair(
            ops in proptest::collection::vec((0u8..2, op()), 1..60),
            concurrency in 1usize..3,
        ) {
            let mut q = StartupQueue::new(concurrency, 1_000).scoped(Scope::Namespace);
            let mut now = 0;
            for (ns, op) in ops {
                let key = |k: &u8| format!("ns{ns}/c{k}");
                match &op {
                    Op::Request(k) => { q.request(&key(k), now); }
                    Op::Release(k) => q.release(&key(k), now),
                    Op::Tick(dt) => { now += dt; q.advance(now); }
                    Op::WorkerReady(k, ready) => q.set_worker_ready(&key(k), *ready, now),
                }
                for group in ["ns0", "ns1"] {
                    let starting = q.starting().filter(|k| k.starts_with(group)).count();
                    let waiting: Vec<&str> = q.waiting().filter(|k| k.starts_with(group)).collect();
                    prop_assert!(starting <= concurrency);
                    if waiting.iter().any(|k| !q.waits_for_worker(k)) {
                        prop_assert_eq!(starting, concurrency);
                    }
                    for (i, key) in waiting.iter().enumerate() {
                        prop_assert_eq!(q.position(key), Some(i as u32 + 1));
                    }
                }
            }
        }
    }

    fn status() -> impl Strategy<Value = ConnectionStatusValue> {
        use ConnectionStatusValue::*;
        prop_oneof![
            Just(Disabled),
            Just(Failed),
            Just(Idle),
            Just(Restarting),
            Just(Running),
            Just(ServerReinitializing),
            Just(Unknown),
        ]
    }

    #[derive(Clone, Debug)]
    enum Step {
        /// A look at connection k with this spec, configuration and worker.
        Look(u8, bool, bool, bool, bool),
        /// Connection k reached a status.
        Reached(u8, ConnectionStatusValue),
        Tick(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u8..5, any::<bool>(), any::<bool>(), any::<bool>(), proptest::bool::weighted(0.2))
                .prop_map(|(k, started, can_run, ready, restart)| {
                    Step::Look(k, started, can_run, ready, restart)
                }),
            3 => (0u8..5, status()).prop_map(|(k, s)| Step::Reached(k, s)),
            1 => (0u64..500).prop_map(Step::Tick),
        ]
    }

    proptest! {
        /// The policy as both the operator and standalone apply it, against what it promises:
        /// a stopped connection or one that cannot run is never in the queue; one that was
        /// running is never queued again by a look; a settled startup holds no place; a
        /// connection admitted never waits behind one that started later.
        #[test]
        fn the_admission_policy_keeps_its_promises(
            steps in proptest::collection::vec(step(), 1..80),
            concurrency in 1usize..3,
        ) {
            let mut q = StartupQueue::new(concurrency, 1_000);
            let mut now = 0;
            let mut last: std::collections::HashMap<String, ConnectionStatusValue> = Default::default();
            for step in steps {
                match step {
                    Step::Look(k, started, can_run, worker_ready, restart) => {
                        let key = format!("c{k}");
                        let previous = last.get(&key).copied();
                        let queued_before = q.admission(&key).is_some();
                        let look = Look { started, can_run, previous, worker_ready, restart };
                        let admission = q.observe(&key, look, now);
                        prop_assert_eq!(admission, q.admission(&key));
                        if !(started && can_run) {
                            prop_assert!(admission.is_none(), "{} stopped yet queued", key);
                        } else if !is_a_start(previous) && !restart && !queued_before {
                            prop_assert!(admission.is_none(), "{} was running yet queued", key);
                        } else {
                            prop_assert!(admission.is_some(), "{} started yet not queued", key);
                        }
                        if !worker_ready {
                            prop_assert!(!q.is_starting(&key), "{} holds a place without a worker", key);
                        }
                    }
                    Step::Reached(k, status) => {
                        let key = format!("c{k}");
                        q.settle(&key, status, now);
                        last.insert(key.clone(), status);
                        if ends_startup(status) {
                            prop_assert!(q.admission(&key).is_none());
                        }
                    }
                    Step::Tick(dt) => {
                        now += dt;
                        q.advance(now);
                    }
                }
                prop_assert!(q.starting().count() <= concurrency);
            }
        }
    }
}
