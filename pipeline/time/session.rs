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
//!
//! A key's sessions may run in lanes that never merge (a client's own session ids under one
//! visitor), and each key's entry may carry a companion operator's state, so that an event
//! looks its key up once for both: the funnel keeps a visitor's touches there.

use super::{Late, LatenessGate, window_start};
use hashbrown::hash_map::EntryRef;
use hashbrown::{Equivalent, HashMap};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::hash::Hash;

/// State that can absorb another session's state when two sessions merge.
pub trait Merge {
    /// Folds `other` into `self`.
    fn merge(&mut self, other: Self);
}

/// What keeps a key's sessions apart even when they overlap in time: the client's own session
/// id, say. Sessions of different lanes never merge. `()` is the one lane of keys without.
pub trait Lane<L> {
    /// How this lane orders against `lane` (a key's sessions are sorted by lane, then start).
    fn cmp_lane(&self, lane: &L) -> Ordering;
    /// The lane to store with a new session.
    fn to_lane(&self) -> L;
}

impl Lane<()> for () {
    fn cmp_lane(&self, _: &()) -> Ordering {
        Ordering::Equal
    }

    fn to_lane(&self) {}
}

/// State that another operator keeps per key in the same entry as the key's sessions, so that
/// an event looks its key up once for both. A key's entry goes once its sessions have closed
/// and its companion is empty.
pub trait Companion: Default {
    /// Whether nothing is held: the entry may go.
    fn is_empty(&self) -> bool;
}

impl Companion for () {
    fn is_empty(&self) -> bool {
        true
    }
}

/// A key's open sessions, sorted by lane and then start: nearly always one, held inline.
pub type KeySessions<S, L = ()> = SmallVec<[Session<S, L>; 1]>;

/// One session of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session<S, L = ()> {
    /// Event time of its first event, ms.
    pub start: i64,
    /// Event time of its last event, ms.
    pub last: i64,
    /// Its lane. Absent from snapshots of releases before lanes; those set it from their key.
    #[serde(default)]
    pub lane: L,
    /// What the operator accumulates.
    pub state: S,
}

/// What one key holds: its companion state and its open sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(deserialize = "S: Deserialize<'de>, L: Deserialize<'de> + Default, C: Deserialize<'de>"))]
pub struct KeyEntry<S, L = (), C = ()> {
    /// The companion operator's state for the key.
    pub companion: C,
    /// Open sessions, sorted by lane and then start, never within the gap of each other in a lane.
    pub sessions: KeySessions<S, L>,
}

impl<S, L, C: Default> Default for KeyEntry<S, L, C> {
    fn default() -> Self {
        KeyEntry { companion: C::default(), sessions: KeySessions::new() }
    }
}

/// Open sessions of every key of one partition, and a companion state per key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(serialize = "K: Serialize + Eq + Hash, S: Serialize, L: Serialize, C: Serialize"))]
#[serde(bound(deserialize = "K: Deserialize<'de> + Eq + Hash + Ord + Clone, S: Deserialize<'de>, \
                             L: Deserialize<'de> + Default, C: Deserialize<'de> + Default"))]
#[serde(from = "SessionSnapshot<K, S, L, C>")]
pub struct SessionWindows<K, S, L = (), C = ()> {
    gap_ms: i64,
    max_length_ms: i64,
    gate: LatenessGate,
    /// Per key, its entry. Snapshots of releases before companions held sessions only, under
    /// `open`; those are read by the operators that used them.
    entries: HashMap<K, KeyEntry<S, L, C>>,
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
#[serde(bound(deserialize = "K: Deserialize<'de> + Eq + Hash, S: Deserialize<'de>, \
                             L: Deserialize<'de> + Default, C: Deserialize<'de> + Default"))]
struct SessionSnapshot<K, S, L, C> {
    gap_ms: i64,
    max_length_ms: i64,
    gate: LatenessGate,
    entries: HashMap<K, KeyEntry<S, L, C>>,
}

impl<K: Eq + Hash + Ord + Clone, S, L, C> From<SessionSnapshot<K, S, L, C>> for SessionWindows<K, S, L, C> {
    fn from(snap: SessionSnapshot<K, S, L, C>) -> Self {
        SessionWindows::from_entries(snap.gap_ms, snap.max_length_ms, snap.gate, snap.entries)
    }
}

impl<K: Eq + Hash + Ord + Clone, S, L, C> SessionWindows<K, S, L, C> {
    /// Windows over restored entries, the deadline queue rebuilt from them.
    pub fn from_entries(
        gap_ms: i64,
        max_length_ms: i64,
        gate: LatenessGate,
        entries: HashMap<K, KeyEntry<S, L, C>>,
    ) -> Self {
        let mut deadlines = Deadlines::new(gate.window_ms());
        for (key, entry) in &entries {
            if let Some(last) = entry.sessions.iter().map(|s| s.last).min() {
                deadlines.push(last + gap_ms, key.clone());
            }
        }
        SessionWindows { gap_ms, max_length_ms: max_length_ms.max(1), gate, entries, deadlines }
    }
}

impl<K: Eq + Hash + Ord + Clone, S: Default + Merge, L: Ord, C: Companion> SessionWindows<K, S, L, C> {
    /// Sessions split by `gap_ms` of inactivity and at most `max_length_ms` long, attributed to
    /// windows of `window_ms` for lateness (`lateness_ms`).
    pub fn new(gap_ms: i64, max_length_ms: i64, window_ms: i64, lateness_ms: i64) -> Self {
        SessionWindows::from_entries(gap_ms, max_length_ms, LatenessGate::new(window_ms, lateness_ms), HashMap::new())
    }

    /// Adds an event of `key` and `lane` at `event_time` to its session and applies `update`
    /// to it. `key` may be a borrowed form of the key: it is copied only for a key not seen
    /// before.
    ///
    /// # Errors
    /// [`Late`] when the event's window has closed; nothing is updated.
    pub fn record<Q, P>(&mut self, key: &Q, lane: &P, event_time: i64, update: impl FnOnce(&mut S)) -> Result<(), Late>
    where
        Q: Hash + Equivalent<K> + ?Sized,
        for<'q> K: From<&'q Q>,
        P: Lane<L> + ?Sized,
    {
        self.record_with(key, lane, event_time, None::<fn(&mut C)>, update).1
    }

    /// [`SessionWindows::record`], also handing the key's companion state to `companion` under
    /// the same lookup, whether or not the event is late for the sessions. Without a companion
    /// update, a late event creates no entry.
    pub fn record_with<Q, P, R>(
        &mut self,
        key: &Q,
        lane: &P,
        event_time: i64,
        companion: Option<impl FnOnce(&mut C) -> R>,
        update: impl FnOnce(&mut S),
    ) -> (Option<R>, Result<(), Late>)
    where
        Q: Hash + Equivalent<K> + ?Sized,
        for<'q> K: From<&'q Q>,
        P: Lane<L> + ?Sized,
    {
        let on_time = self.gate.check(event_time);
        if on_time.is_err() && companion.is_none() {
            return (None, on_time);
        }
        // One probe of the table, whether the key is new or not.
        let entry = match self.entries.entry_ref(key) {
            EntryRef::Occupied(entry) => entry.into_mut(),
            EntryRef::Vacant(entry) => entry.insert_with_key(K::from(key), KeyEntry::default()),
        };
        let companion = companion.map(|f| f(&mut entry.companion));
        if on_time.is_err() {
            return (companion, on_time);
        }
        let (gap, max_length) = (self.gap_ms, self.max_length_ms);
        let sessions = &mut entry.sessions;
        // The lane's sessions, sorted by start; those the event touches form a contiguous run.
        let lo = sessions.partition_point(|s| lane.cmp_lane(&s.lane) == Ordering::Greater);
        let hi = lo + sessions[lo..].partition_point(|s| lane.cmp_lane(&s.lane) == Ordering::Equal);
        let touches = |s: &Session<S, L>| event_time - s.last < gap && s.start - event_time < gap;
        let new_session = |start: i64| Session { start, last: start, lane: lane.to_lane(), state: S::default() };
        let first = sessions[lo..hi].iter().position(touches).map(|i| lo + i);
        let (index, started) = match first {
            None => {
                let at = lo + sessions[lo..hi].partition_point(|s| s.start < event_time);
                sessions.insert(at, new_session(event_time));
                (at, true)
            }
            Some(first) => {
                let run = sessions[first..hi].iter().take_while(|s| touches(s)).count();
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
                    (first, false)
                } else if let Some(fits) = (first..=last)
                    .rev()
                    .find(|&i| sessions[i].last.max(event_time) - sessions[i].start.min(event_time) < max_length)
                {
                    let s = &mut sessions[fits];
                    s.start = s.start.min(event_time);
                    s.last = s.last.max(event_time);
                    (fits, false)
                } else {
                    // Too long either way: the guard starts a new session here.
                    let at = lo + sessions[lo..hi].partition_point(|s| s.start <= event_time);
                    sessions.insert(at, new_session(event_time));
                    (at, true)
                }
            }
        };
        update(&mut sessions[index].state);
        if started {
            self.deadlines.push(event_time + gap, K::from(key));
        }
        (companion, Ok(()))
    }

    /// Moves the watermark and closes every session no on-time event can reach any more,
    /// ordered by start, key and lane.
    pub fn advance(&mut self, watermark: i64) -> Vec<(K, Session<S, L>)> {
        if !self.gate.advance(watermark) {
            return Vec::new();
        }
        let Some(horizon) = self.gate.horizon() else { return Vec::new() };
        let mut closed = Vec::new();
        let gap = self.gap_ms;
        let done = |s: &Session<S, L>| s.last + gap <= horizon;
        // A key still open goes back with its next deadline, which is past the horizon.
        while let Some(mut due) = self.deadlines.take_due(horizon) {
            for key in due.drain(..) {
                let Some(entry) = self.entries.get_mut(&key) else { continue };
                if entry.sessions.iter().all(done) {
                    // The usual case: the key's last session ends. Its key moves into the
                    // output unless the companion still holds something.
                    let sessions = std::mem::take(&mut entry.sessions);
                    if entry.companion.is_empty() {
                        self.entries.remove(&key);
                        push_with_key(&mut closed, key, sessions);
                    } else {
                        push_with_key(&mut closed, key.clone(), sessions);
                    }
                    continue;
                }
                let sessions = &mut entry.sessions;
                if sessions.iter().any(done) {
                    let (ended, open): (KeySessions<S, L>, KeySessions<S, L>) =
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

    /// Closes every open session (end of a bounded input), ordered by start, key and lane, and
    /// forgets every companion state.
    pub fn close_all(&mut self) -> Vec<(K, Session<S, L>)> {
        self.deadlines.clear();
        let mut closed = Vec::with_capacity(self.open_sessions());
        for (key, entry) in std::mem::take(&mut self.entries) {
            push_with_key(&mut closed, key, entry.sessions);
        }
        let closed = sort_by_start_and_key(closed);
        if let Some(last) = closed.iter().map(|(_, s)| s.last).max() {
            self.gate.advance(last + self.gap_ms + self.gate.window_ms() + self.gate.lateness_ms());
        }
        closed
    }

    /// Applies `prune` to every companion state, then drops the entries left with neither
    /// open sessions nor companion state.
    pub fn prune_companions(&mut self, mut prune: impl FnMut(&mut C)) {
        self.entries.retain(|_, entry| {
            prune(&mut entry.companion);
            !entry.sessions.is_empty() || !entry.companion.is_empty()
        });
    }

    /// Sets the companion state of `key` (restoring it from where it was kept before).
    pub fn set_companion(&mut self, key: K, companion: C) {
        self.entries.entry(key).or_default().companion = companion;
    }

    /// Open sessions, all keys.
    pub fn open_sessions(&self) -> usize {
        self.entries.values().map(|e| e.sessions.len()).sum()
    }

    /// Keys held: those with open sessions or companion state.
    pub fn keys_held(&self) -> usize {
        self.entries.len()
    }

    /// Keys whose companion state holds something.
    pub fn companions_held(&self) -> usize {
        self.entries.values().filter(|e| !e.companion.is_empty()).count()
    }
}

/// Sorts closed sessions by start, then key, then lane. No two are equal (a lane's sessions
/// never share a start), so the unstable sort gives the one order there is, without the stable
/// sort's buffer.
///
/// The sort moves (start, index) pairs and reads a key only when two starts tie; each session
/// (about 150 bytes) then moves once into place, where sorting them directly moved each one
/// about log2(n) times.
fn sort_by_start_and_key<K: Ord, S, L: Ord>(closed: Vec<(K, Session<S, L>)>) -> Vec<(K, Session<S, L>)> {
    let mut order: Vec<(i64, usize)> = closed.iter().enumerate().map(|(i, (_, s))| (s.start, i)).collect();
    order.sort_unstable_by(|a, b| {
        let (x, y) = (&closed[a.1], &closed[b.1]);
        a.0.cmp(&b.0).then_with(|| x.0.cmp(&y.0)).then_with(|| x.1.lane.cmp(&y.1.lane))
    });
    let mut sorted = Vec::with_capacity(closed.len());
    let mut slots: Vec<Option<(K, Session<S, L>)>> = closed.into_iter().map(Some).collect();
    sorted.extend(order.into_iter().filter_map(|(_, i)| slots[i].take()));
    sorted
}

/// Appends each of `sessions` with its key, copying the key for all but the last.
fn push_with_key<K: Clone, S, L>(closed: &mut Vec<(K, Session<S, L>)>, key: K, mut sessions: KeySessions<S, L>) {
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
        w.record(&key.to_owned(), &(), t, |v| v.push(t)).expect("on time");
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
        assert!(w.record(&"a".to_owned(), &(), 29 * MIN, |_| {}).is_err(), "its window has closed: late");
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

    /// Lanes of a test key: a client session number.
    impl Lane<u8> for u8 {
        fn cmp_lane(&self, lane: &u8) -> Ordering {
            self.cmp(lane)
        }

        fn to_lane(&self) -> u8 {
            *self
        }
    }

    impl Companion for Vec<i64> {
        fn is_empty(&self) -> bool {
            Vec::is_empty(self)
        }
    }

    #[test]
    fn sessions_of_different_lanes_never_merge_and_close_ordered_by_lane() {
        let mut w: SessionWindows<String, Vec<i64>, u8> = SessionWindows::new(30 * MIN, 6 * 60 * MIN, MIN, 0);
        for (lane, t) in [(2u8, 0), (1, 0), (2, 10 * MIN), (1, 50 * MIN), (1, 25 * MIN), (3, 5 * MIN)] {
            w.record(&"a".to_owned(), &lane, t, |v| v.push(t)).expect("on time");
        }
        assert_eq!(w.open_sessions(), 3, "lane 1 bridged into one session, lanes 2 and 3 apart");
        let closed: Vec<(u8, i64, i64, usize)> =
            w.close_all().into_iter().map(|(_, s)| (s.lane, s.start, s.last, s.state.len())).collect();
        assert_eq!(closed, vec![(1, 0, 50 * MIN, 3), (2, 0, 10 * MIN, 2), (3, 5 * MIN, 5 * MIN, 1)]);
    }

    #[test]
    fn a_key_stays_while_its_companion_holds_something_and_goes_when_both_are_empty() {
        let mut w: SessionWindows<String, Vec<i64>, (), Vec<i64>> = SessionWindows::new(30 * MIN, 6 * 60 * MIN, MIN, 0);
        let companion = |c: &mut Vec<i64>| c.push(1);
        let (seen, on_time) = w.record_with(&"a".to_owned(), &(), 0, Some(companion), |v| v.push(0));
        assert_eq!((seen, on_time), (Some(()), Ok(())));
        assert_eq!(spans_of(&w.advance(31 * MIN)), vec![("a", 0, 0, 1)]);
        assert_eq!((w.open_sessions(), w.companions_held()), (0, 1), "the session closed, the companion stays");
        // Late for the sessions: the companion still sees the event, no session is opened.
        let (seen, on_time) = w.record_with(&"b".to_owned(), &(), 0, Some(companion), |v| v.push(0));
        assert!(seen.is_some() && on_time.is_err());
        assert_eq!(w.record(&"c".to_owned(), &(), 0, |_| {}).map_err(|_| ()), Err(()));
        assert_eq!(w.entries.len(), 2, "a late event without a companion update adds no key");
        w.record(&"a".to_owned(), &(), 40 * MIN, |v| v.push(40 * MIN)).expect("on time");
        w.prune_companions(Vec::clear);
        assert_eq!((w.entries.len(), w.companions_held()), (1, 0), "b went, a stays for its open session");
        assert_eq!(spans_of(&w.advance(71 * MIN)), vec![("a", 40 * MIN, 40 * MIN, 1)]);
        assert!(w.entries.is_empty());
    }

    fn spans_of<C>(closed: &[(String, Session<Vec<i64>, C>)]) -> Vec<(&str, i64, i64, usize)> {
        closed.iter().map(|(k, s)| (k.as_str(), s.start, s.last, s.state.len())).collect()
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
                if w.record(&format!("k{key}"), &(), t, |v| v.push(t)).is_ok() {
                    accepted += 1;
                }
                watermark += step * MIN / 2;
                let closed = w.advance(watermark);
                let horizon = w.gate.horizon().unwrap_or(i64::MIN);
                proptest::prop_assert!(closed.iter().all(|(_, s)| s.last + w.gap_ms <= horizon));
                proptest::prop_assert!(w.entries.values().flat_map(|e| &e.sessions).all(|s| s.last + w.gap_ms > horizon));
                closed_events += closed.iter().map(|(_, s)| s.state.len()).sum::<usize>();
                let open_events: usize = w.entries.values().flat_map(|e| &e.sessions).map(|s| s.state.len()).sum();
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
        let bytes = crate::snapshot::cbor(&w).expect("snapshot");
        let mut back: SessionWindows<String, Vec<i64>> = crate::snapshot::read_cbor(&bytes).expect("restore");
        for x in [&mut w, &mut back] {
            add(x, "a", 2 * MIN);
        }
        assert_eq!(spans(&back.advance(40 * MIN)), spans(&w.advance(40 * MIN)));
        assert_eq!(back.open_sessions(), 0);
    }
}
