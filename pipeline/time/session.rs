//! Session windows: a key's events with gaps shorter than the inactivity gap form one session.
//!
//! Events may arrive out of order, so an event can extend a session at either end or bridge two
//! sessions, which then merge. A session closes once no on-time event can touch it any more:
//! its last event plus the gap is at or before the gate's horizon (the earliest event time still
//! on time). Lateness is decided by a [`LatenessGate`] on the window a session is attributed to,
//! so an event is late for sessions exactly when its start window has closed.
//!
//! A maximum session length guards memory against endless sessions (bots, stuck tabs): an event
//! that would stretch a session beyond it starts a new session instead.

use super::{Late, LatenessGate, window_start};
use hashbrown::hash_map::EntryRef;
use hashbrown::{Equivalent, HashMap};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::collections::BTreeMap;
use std::hash::Hash;

/// State that can absorb another session's state when two sessions merge.
pub trait Merge {
    /// Folds `other` into `self`.
    fn merge(&mut self, other: Self);
}

/// A key's open sessions, sorted by start: nearly always one, held inline.
pub type KeySessions<S> = SmallVec<[Session<S>; 1]>;

/// One session of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session<S> {
    /// Event time of its first event, ms.
    pub start: i64,
    /// Event time of its last event, ms.
    pub last: i64,
    /// What the operator accumulates.
    pub state: S,
}

/// Open sessions of every key of one partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(serialize = "K: Serialize + Eq + Hash, S: Serialize"))]
#[serde(bound(deserialize = "K: Deserialize<'de> + Eq + Hash + Ord + Clone, S: Deserialize<'de>"))]
#[serde(from = "SessionSnapshot<K, S>")]
pub struct SessionWindows<K, S> {
    gap_ms: i64,
    max_length_ms: i64,
    gate: LatenessGate,
    /// Per key, sessions sorted by start, never within `gap_ms` of each other.
    open: HashMap<K, KeySessions<S>>,
    /// Close candidates by deadline. Entries go stale when a session grows or merges and are
    /// checked when taken, so an event never has to search them. Rebuilt on restore.
    #[serde(skip)]
    deadlines: Deadlines<K>,
}

/// Close candidates, bucketed by the horizon at which each falls due. The horizon moves in
/// whole windows, so a bucket is due all at once: closing takes whole lists, where a heap of
/// the same candidates sifted each one (a key and its time, 56 bytes) through log n levels.
/// Emptied lists are kept for new buckets, so a steady stream stops allocating them.
#[derive(Debug, Clone)]
struct Deadlines<K> {
    window_ms: i64,
    due: BTreeMap<i64, Vec<K>>,
    spare: Vec<Vec<K>>,
}

impl<K> Deadlines<K> {
    fn new(window_ms: i64) -> Self {
        Deadlines { window_ms, due: BTreeMap::new(), spare: Vec::new() }
    }

    /// `key` may close once the horizon reaches `deadline`, that is, at the first window
    /// boundary at or after it.
    fn push(&mut self, deadline: i64, key: K) {
        let due = window_start(deadline - 1, self.window_ms) + self.window_ms;
        self.due.entry(due).or_insert_with(|| self.spare.pop().unwrap_or_default()).push(key);
    }

    /// The earliest bucket due at `horizon`, if any.
    fn take_due(&mut self, horizon: i64) -> Option<Vec<K>> {
        let bucket = self.due.first_entry().filter(|bucket| *bucket.key() <= horizon)?;
        Some(bucket.remove())
    }

    /// Keeps an emptied list for a bucket to come.
    fn recycle(&mut self, mut list: Vec<K>) {
        list.clear();
        if self.spare.len() < self.due.len() {
            self.spare.push(list);
        }
    }

    fn clear(&mut self) {
        self.due.clear();
        self.spare.clear();
    }
}

/// The serialized fields of [`SessionWindows`], from which the deadline queue is rebuilt.
#[derive(Deserialize)]
#[serde(bound(deserialize = "K: Deserialize<'de> + Eq + Hash, S: Deserialize<'de>"))]
struct SessionSnapshot<K, S> {
    gap_ms: i64,
    max_length_ms: i64,
    gate: LatenessGate,
    open: HashMap<K, KeySessions<S>>,
}

impl<K: Eq + Hash + Ord + Clone, S> From<SessionSnapshot<K, S>> for SessionWindows<K, S> {
    fn from(snap: SessionSnapshot<K, S>) -> Self {
        let mut deadlines = Deadlines::new(snap.gate.window_ms());
        for (key, sessions) in &snap.open {
            if let Some(last) = sessions.iter().map(|s| s.last).min() {
                deadlines.push(last + snap.gap_ms, key.clone());
            }
        }
        SessionWindows {
            gap_ms: snap.gap_ms,
            max_length_ms: snap.max_length_ms,
            gate: snap.gate,
            open: snap.open,
            deadlines,
        }
    }
}

impl<K: Eq + Hash + Ord + Clone, S: Default + Merge> SessionWindows<K, S> {
    /// Sessions split by `gap_ms` of inactivity and at most `max_length_ms` long, attributed to
    /// windows of `window_ms` for lateness (`lateness_ms`).
    pub fn new(gap_ms: i64, max_length_ms: i64, window_ms: i64, lateness_ms: i64) -> Self {
        SessionWindows {
            gap_ms,
            max_length_ms: max_length_ms.max(1),
            gate: LatenessGate::new(window_ms, lateness_ms),
            open: HashMap::new(),
            deadlines: Deadlines::new(window_ms),
        }
    }

    /// Adds an event of `key` at `event_time` to its session and applies `update` to it.
    /// `key` may be a borrowed form of the key: it is copied only for a key not seen before.
    ///
    /// # Errors
    /// [`Late`] when the event's window has closed; nothing is updated.
    pub fn record<Q>(&mut self, key: &Q, event_time: i64, update: impl FnOnce(&mut S)) -> Result<(), Late>
    where
        Q: Hash + Equivalent<K> + ?Sized,
        for<'q> K: From<&'q Q>,
    {
        self.gate.check(event_time)?;
        let (gap, max_length) = (self.gap_ms, self.max_length_ms);
        // One probe of the table, whether the key is new or not.
        let (sessions, created_new_key) = match self.open.entry_ref(key) {
            EntryRef::Occupied(entry) => (entry.into_mut(), false),
            EntryRef::Vacant(entry) => (entry.insert_with_key(K::from(key), KeySessions::new()), true),
        };
        // Sessions the event touches form a contiguous run.
        let touches = |s: &Session<S>| event_time - s.last < gap && s.start - event_time < gap;
        let first = sessions.iter().position(touches);
        let index = match first {
            None => {
                let at = sessions.partition_point(|s| s.start < event_time);
                sessions.insert(at, Session { start: event_time, last: event_time, state: S::default() });
                if !created_new_key {
                    self.deadlines.push(event_time + gap, K::from(key));
                }
                at
            }
            Some(first) => {
                let run = sessions[first..].iter().take_while(|s| touches(s)).count();
                let last = first + run - 1;
                let merged_start = sessions[first].start.min(event_time);
                let merged_last = sessions[last].last.max(event_time);
                if merged_last - merged_start < max_length {
                    for absorbed in sessions.drain(first + 1..=last).collect::<Vec<_>>() {
                        sessions[first].last = sessions[first].last.max(absorbed.last);
                        sessions[first].state.merge(absorbed.state);
                    }
                    let s = &mut sessions[first];
                    s.start = s.start.min(event_time);
                    s.last = s.last.max(event_time);
                    first
                } else if let Some(fits) = (first..=last)
                    .rev()
                    .find(|&i| sessions[i].last.max(event_time) - sessions[i].start.min(event_time) < max_length)
                {
                    let s = &mut sessions[fits];
                    s.start = s.start.min(event_time);
                    s.last = s.last.max(event_time);
                    fits
                } else {
                    // Too long either way: the guard starts a new session here.
                    let at = sessions.partition_point(|s| s.start <= event_time);
                    sessions.insert(at, Session { start: event_time, last: event_time, state: S::default() });
                    self.deadlines.push(event_time + gap, K::from(key));
                    at
                }
            }
        };
        update(&mut sessions[index].state);
        if created_new_key {
            self.deadlines.push(event_time + gap, K::from(key));
        }
        Ok(())
    }

    /// Moves the watermark and closes every session no on-time event can reach any more,
    /// ordered by start and key.
    pub fn advance(&mut self, watermark: i64) -> Vec<(K, Session<S>)> {
        if !self.gate.advance(watermark) {
            return Vec::new();
        }
        let Some(horizon) = self.gate.horizon() else { return Vec::new() };
        let mut closed = Vec::new();
        let gap = self.gap_ms;
        let done = |s: &Session<S>| s.last + gap <= horizon;
        // A key still open goes back with its next deadline, which is past the horizon.
        while let Some(mut due) = self.deadlines.take_due(horizon) {
            for key in due.drain(..) {
                let Some(sessions) = self.open.get_mut(&key) else { continue };
                if sessions.iter().all(done) {
                    // The usual case: the key's last session ends; its key moves into the output.
                    let sessions = self.open.remove(&key).unwrap_or_default();
                    push_with_key(&mut closed, key, sessions);
                    continue;
                }
                if sessions.iter().any(done) {
                    let (ended, open): (KeySessions<S>, KeySessions<S>) =
                        std::mem::take(sessions).into_iter().partition(done);
                    *sessions = open;
                    closed.extend(ended.into_iter().map(|s| (key.clone(), s)));
                }
                if let Some(last) = sessions.iter().map(|s| s.last).min() {
                    self.deadlines.push(last + gap, key);
                }
            }
            self.deadlines.recycle(due);
        }
        sort_by_start_and_key(closed)
    }

    /// Closes every open session (end of a bounded input), ordered by start and key.
    pub fn close_all(&mut self) -> Vec<(K, Session<S>)> {
        self.deadlines.clear();
        let mut closed = Vec::with_capacity(self.open_sessions());
        for (key, sessions) in std::mem::take(&mut self.open) {
            push_with_key(&mut closed, key, sessions);
        }
        let closed = sort_by_start_and_key(closed);
        if let Some(last) = closed.iter().map(|(_, s)| s.last).max() {
            self.gate.advance(last + self.gap_ms + self.gate.window_ms() + self.gate.lateness_ms());
        }
        closed
    }

    /// Open sessions, all keys.
    pub fn open_sessions(&self) -> usize {
        self.open.values().map(SmallVec::len).sum()
    }
}

/// Sorts closed sessions by start, then key. No two are equal (a key's sessions never share a
/// start), so the unstable sort gives the one order there is, without the stable sort's buffer.
///
/// The sort moves (start, index) pairs and reads a key only when two starts tie; each session
/// (about 150 bytes) then moves once into place, where sorting them directly moved each one
/// about log2(n) times.
fn sort_by_start_and_key<K: Ord, S>(closed: Vec<(K, Session<S>)>) -> Vec<(K, Session<S>)> {
    let mut order: Vec<(i64, usize)> = closed.iter().enumerate().map(|(i, (_, s))| (s.start, i)).collect();
    order.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| closed[a.1].0.cmp(&closed[b.1].0)));
    let mut sorted = Vec::with_capacity(closed.len());
    let mut slots: Vec<Option<(K, Session<S>)>> = closed.into_iter().map(Some).collect();
    sorted.extend(order.into_iter().filter_map(|(_, i)| slots[i].take()));
    sorted
}

/// Appends each of `sessions` with its key, copying the key for all but the last.
fn push_with_key<K: Clone, S>(closed: &mut Vec<(K, Session<S>)>, key: K, mut sessions: KeySessions<S>) {
    let last = sessions.pop();
    closed.extend(sessions.into_iter().map(|s| (key.clone(), s)));
    if let Some(s) = last {
        closed.push((key, s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Merge for Vec<i64> {
        fn merge(&mut self, other: Self) {
            self.extend(other);
            self.sort_unstable();
        }
    }

    const MIN: i64 = 60_000;

    fn windows() -> SessionWindows<String, Vec<i64>> {
        SessionWindows::new(30 * MIN, 6 * 60 * MIN, MIN, 0)
    }

    fn spans(closed: &[(String, Session<Vec<i64>>)]) -> Vec<(&str, i64, i64, usize)> {
        closed.iter().map(|(k, s)| (k.as_str(), s.start, s.last, s.state.len())).collect()
    }

    fn add(w: &mut SessionWindows<String, Vec<i64>>, key: &str, t: i64) {
        w.record(&key.to_owned(), t, |v| v.push(t)).expect("on time");
    }

    #[test]
    fn a_gap_of_the_inactivity_timeout_splits_sessions() {
        let mut w = windows();
        for t in [0, 10 * MIN, 40 * MIN - 1, 70 * MIN - 1] {
            add(&mut w, "a", t);
        }
        let closed = w.close_all();
        assert_eq!(
            spans(&closed),
            vec![("a", 0, 40 * MIN - 1, 3), ("a", 70 * MIN - 1, 70 * MIN - 1, 1)],
            "29:59 apart stays together, exactly 30:00 apart splits"
        );
    }

    #[test]
    fn an_out_of_order_event_bridging_two_sessions_merges_them() {
        let mut w = windows();
        add(&mut w, "a", 0);
        add(&mut w, "a", 50 * MIN);
        assert_eq!(w.open_sessions(), 2);
        add(&mut w, "a", 25 * MIN);
        assert_eq!(spans(&w.close_all()), vec![("a", 0, 50 * MIN, 3)]);
    }

    #[test]
    fn closed_sessions_come_ordered_by_start_then_key() {
        let mut w = windows();
        for (key, t) in [("c", 5 * MIN), ("b", 0), ("a", 5 * MIN), ("d", 0), ("a", 50 * MIN), ("b", 2 * MIN)] {
            add(&mut w, key, t);
        }
        let closed = w.close_all();
        let order: Vec<(&str, i64)> = spans(&closed).into_iter().map(|(k, start, ..)| (k, start)).collect();
        assert_eq!(order, vec![("b", 0), ("d", 0), ("a", 5 * MIN), ("c", 5 * MIN), ("a", 50 * MIN)]);
    }

    #[test]
    fn sessions_close_once_no_on_time_event_can_reach_them() {
        let mut w = windows();
        add(&mut w, "a", 0);
        add(&mut w, "b", 5 * MIN);
        assert!(w.advance(30 * MIN - 1).is_empty(), "an event at 29:59 could still extend a");
        assert_eq!(spans(&w.advance(30 * MIN)), vec![("a", 0, 0, 1)]);
        assert!(w.record(&"a".to_owned(), 29 * MIN, |_| {}).is_err(), "its window has closed: late");
        assert_eq!(spans(&w.advance(36 * MIN)), vec![("b", 5 * MIN, 5 * MIN, 1)]);
    }

    #[test]
    fn the_maximum_length_guard_starts_a_new_session() {
        let mut w: SessionWindows<String, Vec<i64>> = SessionWindows::new(30 * MIN, 60 * MIN, MIN, 0);
        for t in (0..=90).step_by(10) {
            add(&mut w, "bot", t * MIN);
        }
        assert_eq!(spans(&w.close_all()), vec![("bot", 0, 50 * MIN, 6), ("bot", 60 * MIN, 90 * MIN, 4)]);
    }

    #[test]
    fn a_snapshot_with_sessions_in_heap_vectors_restores() {
        // The layout before sessions were held inline: a checkpoint of that release restores.
        #[derive(Serialize)]
        struct Before {
            gap_ms: i64,
            max_length_ms: i64,
            gate: LatenessGate,
            open: HashMap<String, Vec<Session<Vec<i64>>>>,
        }
        let sessions = vec![
            Session { start: 0, last: MIN, state: vec![0, MIN] },
            Session { start: 40 * MIN, last: 40 * MIN, state: vec![40 * MIN] },
        ];
        let before = Before {
            gap_ms: 30 * MIN,
            max_length_ms: 6 * 60 * MIN,
            gate: LatenessGate::new(MIN, 0),
            open: HashMap::from([("a".to_owned(), sessions)]),
        };
        let bytes = crate::time::snapshot(&before).expect("snapshot");
        let mut back: SessionWindows<String, Vec<i64>> = crate::time::restore(&bytes).expect("restore");
        assert_eq!(back.open_sessions(), 2);
        assert_eq!(spans(&back.advance(71 * MIN)), vec![("a", 0, MIN, 2), ("a", 40 * MIN, 40 * MIN, 1)]);
    }

    proptest::proptest! {
        /// Events of a few keys out of order, the watermark moving by uneven steps: after every
        /// advance each session due at the horizon has closed and no other one has, and every
        /// event accepted is in exactly one session, closed or open.
        #[test]
        fn every_due_session_closes_and_no_event_is_lost(
            steps in proptest::collection::vec((0usize..4, 0i64..120, 0i64..4), 1..200),
        ) {
            let mut w: SessionWindows<String, Vec<i64>> = SessionWindows::new(10 * MIN, 45 * MIN, MIN, 2 * MIN);
            let (mut watermark, mut accepted, mut closed_events) = (0, 0, 0);
            for (key, minute, step) in steps {
                let t = watermark + minute * MIN / 8 - 5 * MIN;
                if w.record(&format!("k{key}"), t, |v| v.push(t)).is_ok() {
                    accepted += 1;
                }
                watermark += step * MIN / 2;
                let closed = w.advance(watermark);
                let horizon = w.gate.horizon().unwrap_or(i64::MIN);
                proptest::prop_assert!(closed.iter().all(|(_, s)| s.last + w.gap_ms <= horizon));
                proptest::prop_assert!(w.open.values().flatten().all(|s| s.last + w.gap_ms > horizon));
                closed_events += closed.iter().map(|(_, s)| s.state.len()).sum::<usize>();
                let open_events: usize = w.open.values().flatten().map(|s| s.state.len()).sum();
                proptest::prop_assert_eq!(closed_events + open_events, accepted);
            }
        }
    }

    #[test]
    fn snapshot_and_restore_continue_identically() {
        let mut w = windows();
        add(&mut w, "a", 0);
        add(&mut w, "b", MIN);
        w.advance(MIN);
        let bytes = crate::time::snapshot(&w).expect("snapshot");
        let mut back: SessionWindows<String, Vec<i64>> = crate::time::restore(&bytes).expect("restore");
        for x in [&mut w, &mut back] {
            add(x, "a", 2 * MIN);
        }
        assert_eq!(spans(&back.advance(40 * MIN)), spans(&w.advance(40 * MIN)));
        assert_eq!(back.open_sessions(), 0);
    }
}
