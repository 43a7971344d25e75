//! The startup queue of shared/seeds/000: "if you start multiple connections one after the
//! other, the connections are queued: The second connection will enter its startup process
//! only after the first connection is running."
//!
//! Pure: time comes in as milliseconds, and the whole queue serializes, so the operator can
//! keep it across restarts.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Where a connection stands after its start was observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// In its startup now.
    Starting,
    /// Waiting at this position (1 = next).
    Waiting(u32),
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
    /// In startup, with when each was admitted.
    starting: Vec<(String, u64)>,
    /// Waiting, in the order their starts were observed.
    waiting: VecDeque<String>,
}

impl StartupQueue {
    pub fn new(concurrency: usize, timeout_ms: u64) -> Self {
        Self {
            concurrency: concurrency.max(1),
            scope: Scope::Cluster,
            timeout_ms,
            starting: Vec::new(),
            waiting: VecDeque::new(),
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
            .filter(|(k, _)| self.group(k) == group)
            .count()
    }

    /// A start was observed (a new connection with `started: true`, or `started` turned on).
    /// Asking again changes nothing.
    pub fn request(&mut self, key: &str, now_ms: u64) -> Admission {
        if !self.is_starting(key) && !self.waiting.iter().any(|k| k == key) {
            self.waiting.push_back(key.to_owned());
        }
        self.advance(now_ms);
        self.admission(key).unwrap_or(Admission::Starting)
    }

    /// The connection left startup: it is Running or Failed, was stopped or deleted. A
    /// waiting connection that is stopped leaves the queue.
    pub fn release(&mut self, key: &str, now_ms: u64) {
        self.starting.retain(|(k, _)| k != key);
        self.waiting.retain(|k| k != key);
        self.advance(now_ms);
    }

    /// Let startups past the timeout go, and admit waiting connections into free places.
    /// Answers the connections admitted now, in order.
    pub fn advance(&mut self, now_ms: u64) -> Vec<String> {
        let timeout = self.timeout_ms;
        self.starting
            .retain(|(_, since)| now_ms.saturating_sub(*since) < timeout);
        // First come, first served within each group; a full group does not hold up others.
        let mut admitted = Vec::new();
        let mut i = 0;
        while i < self.waiting.len() {
            let group = self.group(&self.waiting[i]).to_owned();
            if self.starting_in(&group) < self.concurrency {
                if let Some(next) = self.waiting.remove(i) {
                    self.starting.push((next.clone(), now_ms));
                    admitted.push(next);
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
            .filter(|k| self.group(k) == group)
            .position(|k| k == key)
            .map(|i| i as u32 + 1)
    }

    pub fn is_starting(&self, key: &str) -> bool {
        self.starting.iter().any(|(k, _)| k == key)
    }

    pub fn starting(&self) -> impl Iterator<Item = &str> {
        self.starting.iter().map(|(k, _)| k.as_str())
    }

    pub fn waiting(&self) -> impl Iterator<Item = &str> {
        self.waiting.iter().map(String::as_str)
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
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..6).prop_map(Op::Request),
            2 => (0u8..6).prop_map(Op::Release),
            1 => (0u64..2_000).prop_map(Op::Tick),
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
            for op in ops {
                let waiting_before: Vec<String> = q.waiting().map(str::to_owned).collect();
                match &op {
                    Op::Request(k) => {
                        let key = format!("c{k}");
                        if q.admission(&key).is_none() {
                            counter += 1;
                            joined.insert(key.clone(), counter);
                        }
                        q.request(&key, now);
                    }
                    Op::Release(k) => q.release(&format!("c{k}"), now),
                    Op::Tick(dt) => {
                        now += dt;
                        q.advance(now);
                    }
                }
                prop_assert!(q.starting().count() <= concurrency);
                // The waiting list keeps the order in which keys joined it ...
                let order: Vec<u64> = q.waiting().map(|k| joined[k]).collect();
                prop_assert!(order.windows(2).all(|w| w[0] < w[1]), "{:?}", order);
                // ... and whoever was admitted now had joined before everyone still waiting.
                let still_waiting = order.first().copied().unwrap_or(u64::MAX);
                for key in &waiting_before {
                    if q.is_starting(key) {
                        prop_assert!(joined[key] < still_waiting);
                    }
                }
                // A place is never left empty while someone waits.
                if q.waiting().count() > 0 {
                    prop_assert_eq!(q.starting().count(), concurrency);
                }
                for (i, key) in q.waiting().enumerate() {
                    prop_assert_eq!(q.position(key), Some(i as u32 + 1));
                }
            }
            // No connection waits forever when the ones ahead never finish: time frees them.
            let waiting = q.waiting().count();
            for _ in 0..=waiting {
                now += timeout;
                q.advance(now);
            }
            prop_assert_eq!(q.waiting().count(), 0);
        }
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
                }
                for group in ["ns0", "ns1"] {
                    let starting = q.starting().filter(|k| k.starts_with(group)).count();
                    let waiting: Vec<&str> = q.waiting().filter(|k| k.starts_with(group)).collect();
                    prop_assert!(starting <= concurrency);
                    if !waiting.is_empty() {
                        prop_assert_eq!(starting, concurrency);
                    }
                    for (i, key) in waiting.iter().enumerate() {
                        prop_assert_eq!(q.position(key), Some(i as u32 + 1));
                    }
                }
            }
        }
    }
}
