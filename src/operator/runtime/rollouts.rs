//! Bounded worker rollouts (docs/operator.md#rollouts): a worker template that changes only
//! because of the operator (a new image or version, a changed flag) is rolled out a few workers
//! at a time across the whole cluster, never all at once.
//!
//! Each worker StatefulSet that needs such a change takes a place; at most
//! `--max-unavailable-workers` hold one at once. A place is given back once every pod of the
//! StatefulSet is new (none of the pods from before the change is left) and Ready — a worker is
//! Ready only once it hosts every saved resource again. A place held longer than
//! `--rollout-timeout` stops the rollout: no further worker starts until it is given back.
//! A resource's own change (its generation moved since its StatefulSet was last applied) and a
//! new worker never wait.
//!
//! Pure: time comes in as milliseconds since the operator started.

use std::collections::{BTreeMap, BTreeSet};

/// The StatefulSet annotation holding the hash of the pod template last applied.
pub const TEMPLATE_HASH_ANNOTATION: &str = "ferry.dev/template-hash";
/// The StatefulSet annotation naming the resource's own inputs it was applied for: the
/// resource's generation and its admin token's (shortened) hash.
pub const APPLIED_FOR_ANNOTATION: &str = "ferry.dev/applied-for";

/// What [`APPLIED_FOR_ANNOTATION`] holds: the resource's own inputs to its worker's template.
pub fn applied_for(generation: Option<i64>, admin_token: &str) -> String {
    format!(
        "{}-{}",
        generation.unwrap_or_default(),
        crate::stable_hash_hex(admin_token, 4)
    )
}

/// `--max-unavailable-workers`: a number of workers, or a percentage of the worker pods the
/// operator runs (rounded down, at least 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxUnavailable {
    Count(u32),
    Percent(u8),
}

impl MaxUnavailable {
    /// `3` or `10%`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let refused = || {
            format!("{text:?}: a number of workers (at least 1) or a percentage from 1% to 100%")
        };
        match text.strip_suffix('%') {
            Some(percent) => match percent.parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => Ok(Self::Percent(p)),
                _ => Err(refused()),
            },
            None => match text.parse::<u32>() {
                Ok(n) if n >= 1 => Ok(Self::Count(n)),
                _ => Err(refused()),
            },
        }
    }

    /// How many workers may restart at once when the operator runs `workers`.
    pub fn of(self, workers: usize) -> usize {
        match self {
            Self::Count(n) => usize::try_from(n).unwrap_or(usize::MAX),
            Self::Percent(p) => workers * usize::from(p) / 100,
        }
        .max(1)
    }
}

impl Default for MaxUnavailable {
    fn default() -> Self {
        Self::Percent(10)
    }
}

/// Whether a StatefulSet's new template needs a place: it exists, its template changes, and
/// the change is not the resource's own (`annotations` are the StatefulSet's as applied last;
/// one applied by an earlier ferry has none, and its change is the operator's; `own` is
/// [`applied_for`] now).
pub fn needs_place(
    annotations: Option<&BTreeMap<String, String>>,
    template_hash: &str,
    own: &str,
) -> bool {
    let Some(annotations) = annotations else {
        return false;
    };
    if annotations
        .get(TEMPLATE_HASH_ANNOTATION)
        .map(String::as_str)
        == Some(template_hash)
    {
        return false;
    }
    annotations
        .get(APPLIED_FOR_ANNOTATION)
        .is_none_or(|applied| applied == own)
}

/// What [`Rollouts::admit`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// It holds a place already (its apply is repeated).
    Holding,
    /// It took a place now: `rolling` of at most `limit` are restarting.
    Started { rolling: usize, limit: usize },
    /// It waits: why.
    Waiting(String),
}

/// What [`Rollouts::observe`] found of a worker that holds a place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Every pod is new and Ready: the place is given back; how long it took (ms).
    Done(u64),
    /// It passed the timeout just now: the rollout stops until it is done.
    Stuck,
    Rolling,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rolling {
    since_ms: u64,
    /// The uids of its pods when it took its place.
    before: BTreeSet<String>,
    stuck: bool,
}

/// The rollout's state across every worker of the operator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollouts {
    rolling: BTreeMap<String, Rolling>,
    waiting: BTreeSet<String>,
    completed: u64,
}

/// How the rollout stands, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RolloutCounts {
    pub rolling: usize,
    pub waiting: usize,
    pub stuck: usize,
    pub completed: u64,
}

impl Rollouts {
    /// The worker StatefulSet `key` (`namespace/name`) needs a place for the operator's new
    /// template; `pods` are its pods' uids now.
    pub fn admit(
        &mut self,
        key: &str,
        pods: BTreeSet<String>,
        limit: usize,
        now_ms: u64,
    ) -> Admission {
        if self.rolling.contains_key(key) {
            return Admission::Holding;
        }
        if let Some((stuck, _)) = self.rolling.iter().find(|(_, r)| r.stuck) {
            self.waiting.insert(key.to_owned());
            return Admission::Waiting(format!(
                "the worker rollout stopped: {stuck} did not become Ready within --rollout-timeout"
            ));
        }
        if self.rolling.len() >= limit {
            self.waiting.insert(key.to_owned());
            return Admission::Waiting(format!(
                "{} of at most {limit} workers are restarting for the new worker template (--max-unavailable-workers)",
                self.rolling.len()
            ));
        }
        self.waiting.remove(key);
        self.rolling.insert(
            key.to_owned(),
            Rolling {
                since_ms: now_ms,
                before: pods,
                stuck: false,
            },
        );
        Admission::Started {
            rolling: self.rolling.len(),
            limit,
        }
    }

    /// A look at a worker: `pods` are its pods now as (uid, Ready), `replicas` how many it
    /// should have. `None` when it holds no place.
    pub fn observe(
        &mut self,
        key: &str,
        pods: &[(String, bool)],
        replicas: usize,
        now_ms: u64,
        timeout_ms: u64,
    ) -> Option<Progress> {
        let rolling = self.rolling.get_mut(key)?;
        let new_and_ready = pods.len() >= replicas
            && pods
                .iter()
                .all(|(uid, ready)| *ready && !rolling.before.contains(uid));
        if new_and_ready {
            let took = now_ms.saturating_sub(rolling.since_ms);
            self.rolling.remove(key);
            self.completed += 1;
            return Some(Progress::Done(took));
        }
        if !rolling.stuck && now_ms.saturating_sub(rolling.since_ms) >= timeout_ms {
            rolling.stuck = true;
            return Some(Progress::Stuck);
        }
        Some(Progress::Rolling)
    }

    /// Whether the worker waits for a place or holds one: either way it is looked at again
    /// soon (a place is given back, or found stuck, only when it is looked at).
    pub fn is_in_rollout(&self, key: &str) -> bool {
        self.waiting.contains(key) || self.rolling.contains_key(key)
    }

    /// The worker no longer needs a place (its resource went, or its change became its own).
    pub fn forget(&mut self, key: &str) {
        self.rolling.remove(key);
        self.waiting.remove(key);
    }

    /// The worker's template is applied without a place (its own change): it waits no more.
    pub fn applied(&mut self, key: &str) {
        self.waiting.remove(key);
    }

    pub fn counts(&self) -> RolloutCounts {
        RolloutCounts {
            rolling: self.rolling.len(),
            waiting: self.waiting.len(),
            stuck: self.rolling.values().filter(|r| r.stuck).count(),
            completed: self.completed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn uids(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_limit_is_a_count_or_a_share_of_the_workers() {
        assert_eq!(MaxUnavailable::parse("3"), Ok(MaxUnavailable::Count(3)));
        assert_eq!(
            MaxUnavailable::parse("10%"),
            Ok(MaxUnavailable::Percent(10))
        );
        for bad in ["0", "0%", "101%", "-1", "x", "", "%"] {
            assert!(MaxUnavailable::parse(bad).is_err(), "{bad}");
        }
        let ten = MaxUnavailable::default();
        assert_eq!(ten.of(0), 1);
        assert_eq!(ten.of(9), 1);
        assert_eq!(ten.of(200), 20);
        assert_eq!(MaxUnavailable::Count(2).of(1000), 2);
    }

    /// | annotations as applied | the template now | generation now | needs a place |
    #[test]
    fn only_the_operators_change_of_an_existing_worker_waits() {
        let applied = |hash: &str, own: Option<&str>| {
            let mut a = BTreeMap::from([(TEMPLATE_HASH_ANNOTATION.to_owned(), hash.to_owned())]);
            if let Some(own) = own {
                a.insert(APPLIED_FOR_ANNOTATION.to_owned(), own.to_owned());
            }
            a
        };
        let none = BTreeMap::new();
        let a = applied_for(Some(1), "admin");
        let rotated = applied_for(Some(1), "another admin token");
        let spec_changed = applied_for(Some(2), "admin");
        let was = applied("h1", Some(&a));
        type Row<'a> = (Option<&'a BTreeMap<String, String>>, &'a str, &'a str, bool);
        let rows: &[Row] = &[
            (None, "h2", &a, false),                  // a new worker
            (Some(&was), "h1", &a, false),            // nothing changes
            (Some(&was), "h2", &a, true),             // the operator's change
            (Some(&was), "h2", &spec_changed, false), // its own change: its spec
            (Some(&was), "h2", &rotated, false),      // its own change: a rotated admin token
            (Some(&none), "h2", &a, true),            // applied by an earlier ferry
        ];
        for (annotations, hash, own, wanted) in rows {
            assert_eq!(
                needs_place(*annotations, hash, own),
                *wanted,
                "{annotations:?} {hash} {own}"
            );
        }
    }

    #[test]
    fn at_most_the_limit_restart_and_the_next_goes_once_one_is_new_and_ready() {
        let mut r = Rollouts::default();
        assert_eq!(
            r.admit("a", uids(&["a0"]), 2, 0),
            Admission::Started {
                rolling: 1,
                limit: 2
            }
        );
        assert_eq!(
            r.admit("b", uids(&["b0"]), 2, 0),
            Admission::Started {
                rolling: 2,
                limit: 2
            }
        );
        assert!(matches!(
            r.admit("c", uids(&["c0"]), 2, 0),
            Admission::Waiting(_)
        ));
        assert_eq!(r.counts().waiting, 1, "c waits");
        assert_eq!(r.admit("a", uids(&["a0"]), 2, 1), Admission::Holding);
        // The old pod still there, or a new one not Ready: not done.
        assert_eq!(
            r.observe("a", &[("a0".into(), true)], 1, 5, 60_000),
            Some(Progress::Rolling)
        );
        assert_eq!(
            r.observe("a", &[("a1".into(), false)], 1, 6, 60_000),
            Some(Progress::Rolling)
        );
        assert_eq!(
            r.observe("a", &[("a1".into(), true)], 1, 7, 60_000),
            Some(Progress::Done(7))
        );
        assert_eq!(
            r.admit("c", uids(&["c0"]), 2, 8),
            Admission::Started {
                rolling: 2,
                limit: 2
            }
        );
        assert_eq!(r.counts().waiting, 0, "c no longer waits");
        assert_eq!(r.observe("x", &[], 1, 9, 60_000), None);
        assert_eq!(
            r.counts(),
            RolloutCounts {
                rolling: 2,
                waiting: 0,
                stuck: 0,
                completed: 1
            }
        );
    }

    #[test]
    fn a_pool_is_done_once_every_pod_is_new() {
        let mut r = Rollouts::default();
        r.admit("pool", uids(&["p0", "p1"]), 1, 0);
        let half = [("n0".to_owned(), true), ("p1".to_owned(), true)];
        assert_eq!(
            r.observe("pool", &half, 2, 1, 60_000),
            Some(Progress::Rolling)
        );
        let one_missing = [("n0".to_owned(), true)];
        assert_eq!(
            r.observe("pool", &one_missing, 2, 2, 60_000),
            Some(Progress::Rolling)
        );
        let all = [("n0".to_owned(), true), ("n1".to_owned(), true)];
        assert_eq!(
            r.observe("pool", &all, 2, 3, 60_000),
            Some(Progress::Done(3))
        );
    }

    #[test]
    fn a_stuck_worker_stops_the_rollout_until_it_is_ready() {
        let mut r = Rollouts::default();
        r.admit("a", uids(&["a0"]), 5, 0);
        assert_eq!(r.observe("a", &[], 1, 999, 1_000), Some(Progress::Rolling));
        assert_eq!(r.observe("a", &[], 1, 1_000, 1_000), Some(Progress::Stuck));
        assert_eq!(
            r.observe("a", &[], 1, 2_000, 1_000),
            Some(Progress::Rolling),
            "said once"
        );
        let waiting = r.admit("b", uids(&["b0"]), 5, 2_000);
        assert!(
            matches!(&waiting, Admission::Waiting(why) if why.contains("stopped") && why.contains('a')),
            "{waiting:?}"
        );
        assert_eq!(r.counts().stuck, 1);
        assert!(matches!(
            r.observe("a", &[("a1".into(), true)], 1, 3_000, 1_000),
            Some(Progress::Done(_))
        ));
        assert!(matches!(
            r.admit("b", uids(&["b0"]), 5, 3_000),
            Admission::Started { .. }
        ));
    }

    proptest! {
        /// Whatever happens, no more than the limit hold a place, and a place is given back
        /// only when every pod from before is gone and the new ones are Ready.
        #[test]
        fn never_more_than_the_limit(
            steps in proptest::collection::vec((0u8..6, 0u8..3, any::<bool>()), 1..120),
            limit in 1usize..4,
        ) {
            let mut r = Rollouts::default();
            for (now, (worker, action, ready)) in steps.into_iter().enumerate() {
                let now = now as u64 * 100;
                let key = format!("w{worker}");
                match action {
                    0 => { r.admit(&key, uids(&[&format!("{key}-old")]), limit, now); }
                    1 => {
                        let pods = [(format!("{key}-new"), ready)];
                        if let Some(Progress::Done(_)) = r.observe(&key, &pods, 1, now, 10_000) {
                            prop_assert!(ready);
                        }
                    }
                    _ => {
                        let pods = [(format!("{key}-old"), ready)];
                        let seen = r.observe(&key, &pods, 1, now, 10_000);
                        prop_assert!(!matches!(seen, Some(Progress::Done(_))), "done with its old pod");
                    }
                }
                prop_assert!(r.counts().rolling <= limit);
            }
        }
    }
}
