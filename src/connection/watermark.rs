//! Watermarks: which records of a fetch still need the target, and how far the watermark may
//! advance. Pure.
//!
//! A source is asked for records changed since the watermark. Sources differ on whether
//! "since" includes the watermark itself, so the ids already accepted *at* the watermark are
//! remembered: a record is sent once per change either way.

use std::{cmp::Ordering, collections::BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A record's position in the source's change order: a number or a string (ISO 8601
/// timestamps sort as strings).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Watermark {
    Number(f64),
    Text(String),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatermarkError {
    #[error("the value at the watermark pointer is {0}, not a string or a number")]
    NotScalar(String),
    #[error("watermarks {0} and {1} cannot be compared: one is a number, the other a string")]
    Mixed(String, String),
}

impl Watermark {
    pub fn from_json(value: &Value) -> Result<Self, WatermarkError> {
        match value {
            Value::Number(n) => n
                .as_f64()
                .map(Watermark::Number)
                .ok_or_else(|| WatermarkError::NotScalar(value.to_string())),
            Value::String(s) => Ok(Watermark::Text(s.clone())),
            other => Err(WatermarkError::NotScalar(other.to_string())),
        }
    }

    /// As sent in the source's query parameter.
    pub fn as_param(&self) -> String {
        match self {
            Watermark::Number(n) if n.fract() == 0.0 && n.abs() < 1e15 => format!("{}", *n as i64),
            Watermark::Number(n) => n.to_string(),
            Watermark::Text(s) => s.clone(),
        }
    }

    pub fn compare(&self, other: &Self) -> Result<Ordering, WatermarkError> {
        match (self, other) {
            (Watermark::Number(a), Watermark::Number(b)) => Ok(a.total_cmp(b)),
            (Watermark::Text(a), Watermark::Text(b)) => Ok(a.cmp(b)),
            _ => Err(WatermarkError::Mixed(self.as_param(), other.as_param())),
        }
    }
}

/// A record as read from the source.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceRecord {
    pub id: String,
    pub watermark: Watermark,
    pub body: Value,
}

/// How far a sync-set got: the watermark of the newest accepted change, and the ids accepted
/// at exactly that watermark. With a window of sends in flight, records the target accepted
/// after one it refused are remembered too (`accepted_ahead`, at most a window's worth): the
/// watermark stops before the refused record, and those are not sent again.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub watermark: Option<Watermark>,
    #[serde(default)]
    pub accepted_at_watermark: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepted_ahead: Vec<(String, Watermark)>,
}

impl Progress {
    /// The records still to settle, in change order (stable for equal watermarks). Records
    /// older than the watermark, or accepted at it already, are left out; records accepted
    /// ahead of a refused one stay in (in order, so the watermark can move over them) but are
    /// not sent again ([`Progress::accepted_already`]).
    pub fn pending(
        &self,
        mut records: Vec<SourceRecord>,
    ) -> Result<Vec<SourceRecord>, WatermarkError> {
        let mut error = None;
        records.sort_by(|a, b| {
            a.watermark.compare(&b.watermark).unwrap_or_else(|e| {
                error.get_or_insert(e);
                Ordering::Equal
            })
        });
        if let Some(e) = error {
            return Err(e);
        }
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            if !self.behind_watermark(&record)? {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// The records of a fetch that stopped before its last page (`pending` order): those at
    /// the highest watermark held are left for the next fetch, because a later page may hold
    /// more records at that same watermark and a source that answers "since" exclusively
    /// would never return them once the watermark reached it. When every record held shares
    /// one watermark nothing smaller exists to stop at, and all are kept.
    pub fn complete_prefix(mut pending: Vec<SourceRecord>) -> Vec<SourceRecord> {
        let Some(last) = pending.last().map(|r| r.watermark.clone()) else {
            return pending;
        };
        let keep = pending
            .iter()
            .position(|r| r.watermark.compare(&last) == Ok(Ordering::Equal))
            .unwrap_or(pending.len());
        if keep > 0 {
            pending.truncate(keep);
        }
        pending
    }

    /// W3: the target accepted `record`, so the watermark moves up to it. Call in `pending`
    /// order and stop at the first refusal, so the watermark never passes a refused record.
    pub fn accept(&mut self, record: &SourceRecord) {
        let place = match &self.watermark {
            None => Ok(Ordering::Greater),
            Some(current) => record.watermark.compare(current),
        };
        match place {
            Ok(Ordering::Greater) => {
                self.watermark = Some(record.watermark.clone());
                self.accepted_at_watermark.clear();
                self.accepted_at_watermark.insert(record.id.clone());
            }
            Ok(Ordering::Equal) => {
                self.accepted_at_watermark.insert(record.id.clone());
            }
            // Behind the watermark already: nothing to remember.
            Ok(Ordering::Less) | Err(_) => {}
        }
        // What was accepted ahead and is now behind the watermark needs no memory of its own.
        if let Some(current) = self.watermark.clone() {
            let mut kept = Vec::new();
            for (id, watermark) in std::mem::take(&mut self.accepted_ahead) {
                match watermark.compare(&current) {
                    Ok(Ordering::Greater) => kept.push((id, watermark)),
                    Ok(Ordering::Equal) => {
                        self.accepted_at_watermark.insert(id);
                    }
                    Ok(Ordering::Less) | Err(_) => {}
                }
            }
            self.accepted_ahead = kept;
        }
    }

    /// W3 with a window of sends in flight: the outcome of one send, taken in `pending`
    /// order. Until a record is refused, accepted ones move the watermark; after the first
    /// refusal (`refused_earlier`) the watermark stays before it, and an accepted record is
    /// remembered so the next fetch does not send it again.
    pub fn settle(&mut self, record: &SourceRecord, accepted: bool, refused_earlier: bool) {
        match (accepted, refused_earlier) {
            (true, false) => self.accept(record),
            (true, true) => {
                if !self.accepted_already(record) {
                    self.accepted_ahead
                        .push((record.id.clone(), record.watermark.clone()));
                }
            }
            (false, _) => {}
        }
    }

    /// How many sends may be in flight: `full`, or one at a time while records accepted
    /// behind a refused one are remembered — so that memory never holds more than a window's
    /// worth, however long a record stays refused.
    pub fn window(&self, full: usize) -> usize {
        if self.accepted_ahead.is_empty() {
            full.max(1)
        } else {
            1
        }
    }

    /// Whether `record` is behind the watermark: older than it, or at it and accepted there.
    fn behind_watermark(&self, record: &SourceRecord) -> Result<bool, WatermarkError> {
        let Some(current) = &self.watermark else {
            return Ok(false);
        };
        Ok(match record.watermark.compare(current)? {
            Ordering::Less => true,
            Ordering::Equal => self.accepted_at_watermark.contains(&record.id),
            Ordering::Greater => false,
        })
    }

    /// Accepted already — ahead of a refused record, or since `pending` was computed (the
    /// watermark moved over it with the records before it): settled without being sent again.
    pub fn accepted_already(&self, record: &SourceRecord) -> bool {
        self.behind_watermark(record).unwrap_or(false)
            || self.accepted_ahead.iter().any(|(id, watermark)| {
                id == &record.id && watermark.compare(&record.watermark) == Ok(Ordering::Equal)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn rec(id: &str, wm: &str) -> SourceRecord {
        SourceRecord {
            id: id.into(),
            watermark: Watermark::Text(wm.into()),
            body: json!({"id": id}),
        }
    }

    fn ids(records: &[SourceRecord]) -> Vec<&str> {
        records.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn first_fetch_sends_everything_in_change_order() {
        let p = Progress::default();
        let out = p
            .pending(vec![
                rec("b", "2026-01-02"),
                rec("a", "2026-01-01"),
                rec("c", "2026-01-02"),
            ])
            .unwrap();
        assert_eq!(ids(&out), ["a", "b", "c"]);
    }

    #[test]
    fn an_inclusive_source_does_not_resend_what_was_accepted() {
        let mut p = Progress::default();
        for r in [rec("a", "t1"), rec("b", "t2")] {
            p.accept(&r);
        }
        // The source includes records *at* the watermark: b again, and a new d at t2.
        let out = p
            .pending(vec![
                rec("b", "t2"),
                rec("d", "t2"),
                rec("e", "t3"),
                rec("a", "t1"),
            ])
            .unwrap();
        assert_eq!(ids(&out), ["d", "e"]);
        // b changed again (new watermark): it is sent again, once.
        let out = p.pending(vec![rec("b", "t4")]).unwrap();
        assert_eq!(ids(&out), ["b"]);
    }

    #[test]
    fn the_watermark_stops_before_a_refused_record() {
        let mut p = Progress::default();
        let pending = p
            .pending(vec![rec("a", "t1"), rec("b", "t2"), rec("c", "t3")])
            .unwrap();
        p.accept(&pending[0]); // a accepted, b refused: stop.
        assert_eq!(p.watermark, Some(Watermark::Text("t1".into())));
        assert_eq!(
            ids(&p.pending(pending).unwrap()),
            ["b", "c"],
            "the next iteration retries b"
        );
    }

    #[test]
    fn numbers_compare_as_numbers_and_print_without_fraction() {
        let nine = Watermark::from_json(&json!(9)).unwrap();
        let ten = Watermark::from_json(&json!(10)).unwrap();
        assert_eq!(nine.compare(&ten), Ok(Ordering::Less));
        assert_eq!(ten.as_param(), "10");
        assert!(Watermark::from_json(&json!({"a": 1})).is_err());
        assert!(nine.compare(&Watermark::Text("9".into())).is_err());
    }

    proptest! {
        /// Fetching again after accepting everything sends nothing; after accepting a prefix,
        /// sends exactly the rest.
        #[test]
        fn every_change_is_sent_once(stamps in proptest::collection::vec(0u8..6, 0..20), accepted in 0usize..20) {
            let records: Vec<SourceRecord> = stamps.iter().enumerate()
                .map(|(i, s)| rec(&format!("r{i}"), &format!("t{s}"))).collect();
            let mut p = Progress::default();
            let pending = p.pending(records.clone()).unwrap();
            let cut = accepted.min(pending.len());
            for r in &pending[..cut] {
                p.accept(r);
            }
            let again = p.pending(records.clone()).unwrap();
            prop_assert_eq!(ids(&again), ids(&pending[cut..]));
            for r in &again {
                p.accept(r);
            }
            prop_assert!(p.pending(records).unwrap().is_empty());
        }
    }

    #[test]
    fn a_partial_fetch_leaves_the_highest_watermark_for_the_next() {
        let record = |id: &str, w: f64| SourceRecord {
            id: id.into(),
            watermark: Watermark::Number(w),
            body: Value::Null,
        };
        let ids = |records: Vec<SourceRecord>| -> Vec<String> {
            records.into_iter().map(|r| r.id).collect()
        };
        for (held, kept) in [
            (
                vec![("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 3.0)],
                vec!["a", "b"],
            ),
            (vec![("a", 1.0), ("b", 2.0)], vec!["a"]),
            (vec![("a", 5.0), ("b", 5.0)], vec!["a", "b"]),
            (vec![], vec![]),
        ] {
            let held = held.into_iter().map(|(id, w)| record(id, w)).collect();
            assert_eq!(ids(Progress::complete_prefix(held)), kept);
        }
    }

    /// Send `pending` as the runtime does (`Progress::window` in flight, outcomes taken in
    /// order, nothing new after a refusal), the target answering `accepted[i]` for the i-th.
    /// Answers the indices sent.
    fn send_in_window(
        progress: &mut Progress,
        pending: &[SourceRecord],
        accepted: &[bool],
        window: usize,
    ) -> Vec<usize> {
        let mut in_flight = std::collections::VecDeque::new();
        let mut next = 0;
        let mut sent = Vec::new();
        let mut refused = false;
        loop {
            while !refused && in_flight.len() < progress.window(window) && next < pending.len() {
                // Accepted ahead earlier: settled without being sent again.
                let again = progress.accepted_already(&pending[next]);
                if !again {
                    sent.push(next);
                }
                in_flight.push_back((next, again || accepted[next]));
                next += 1;
            }
            let Some((i, ok)) = in_flight.pop_front() else {
                break;
            };
            progress.settle(&pending[i], ok, refused);
            refused |= !ok;
        }
        sent
    }

    proptest! {
        /// A window never moves the watermark past a record the target refused, and every
        /// change is sent exactly once: what was accepted (even after the refusal, while in
        /// flight) is never pending again; what was refused or never sent still is.
        #[test]
        fn a_window_never_passes_a_refused_record(
            watermarks in proptest::collection::vec(0u8..8, 1..40),
            accepted in proptest::collection::vec(proptest::bool::weighted(0.85), 40),
            window in 1usize..8,
            rounds in 1usize..4,
        ) {
            let records: Vec<SourceRecord> = watermarks
                .iter()
                .enumerate()
                .map(|(i, w)| SourceRecord {
                    id: format!("r{i}"),
                    watermark: Watermark::Number(f64::from(*w)),
                    body: Value::Null,
                })
                .collect();
            let mut progress = Progress::default();
            let mut delivered: std::collections::HashMap<String, usize> = Default::default();
            let mut answers = accepted.iter().copied().cycle();
            for _ in 0..rounds {
                let pending = progress.pending(records.clone()).unwrap();
                let outcome: Vec<bool> = pending.iter().map(|_| answers.next().unwrap_or(true)).collect();
                let sent = send_in_window(&mut progress, &pending, &outcome, window);
                for &i in &sent {
                    if outcome[i] {
                        *delivered.entry(pending[i].id.clone()).or_default() += 1;
                    }
                }
                let again: Vec<String> = progress
                    .pending(records.clone())
                    .unwrap()
                    .into_iter()
                    .filter(|r| !progress.accepted_already(r))
                    .map(|r| r.id)
                    .collect();
                // What is still to send is exactly what no send has delivered yet.
                for record in &records {
                    prop_assert_eq!(
                        again.contains(&record.id),
                        !delivered.contains_key(&record.id),
                        "{} delivered {:?} times; still to send: {:?}",
                        &record.id, delivered.get(&record.id), &again
                    );
                }
                prop_assert!(progress.accepted_ahead.len() < window.max(1));
            }
            // Exactly once: no change reached the target twice.
            prop_assert!(delivered.values().all(|&n| n == 1), "{:?}", delivered);
            // And with a target that accepts everything, the rest goes through.
            let pending = progress.pending(records.clone()).unwrap();
            let all = vec![true; pending.len()];
            send_in_window(&mut progress, &pending, &all, window);
            prop_assert!(progress.pending(records).unwrap().is_empty());
            prop_assert!(progress.accepted_ahead.is_empty());
        }
    }
}
