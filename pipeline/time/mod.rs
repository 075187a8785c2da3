//! Event time: window assignment, per-partition watermarks, the instance's low watermark,
//! lateness, tumbling and session windows that close as the watermark passes, duplicate
//! suppression, and the settings of all of it. Pure logic, no I/O.

mod clock;
mod dedupe;
mod session;
mod settings;

pub use clock::WallClock;
pub use dedupe::Dedupe;
pub use session::{Companion, KeyEntry, KeySessions, Lane, Merge, Session, SessionWindows};
pub use settings::{FamilyLateness, JumpGuard, Retention, TimeSettings};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Milliseconds since the epoch of a system time (negative before 1970).
pub fn system_time_ms(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// `ms` since the epoch as RFC 3339 UTC with milliseconds (times before 1970 as 1970).
pub fn rfc3339_ms(ms: i64) -> String {
    let since_epoch = std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + since_epoch).to_string()
}

/// Start of the tumbling window of size `window_ms` containing `t` (windows align to the epoch).
pub fn window_start(t: i64, window_ms: i64) -> i64 {
    t.div_euclid(window_ms) * window_ms
}

/// Watermark of one partition: max event time seen minus the allowed out-of-orderness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionWatermark {
    out_of_orderness_ms: i64,
    max_event_time: Option<i64>,
}

impl PartitionWatermark {
    /// A partition that has seen nothing yet.
    pub fn new(out_of_orderness_ms: i64) -> Self {
        PartitionWatermark { out_of_orderness_ms, max_event_time: None }
    }

    /// Takes an event time into account.
    pub fn observe(&mut self, event_time: i64) {
        self.max_event_time = Some(self.max_event_time.map_or(event_time, |m| m.max(event_time)));
    }

    /// The largest event time seen, once the partition has seen an event.
    pub fn max_event_time(&self) -> Option<i64> {
        self.max_event_time
    }

    /// The watermark, once the partition has seen an event.
    pub fn current(&self) -> Option<i64> {
        self.max_event_time.map(|m| m - self.out_of_orderness_ms)
    }
}

/// What the instance knows about one partition's progress, for the low watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartitionProgress {
    /// The partition's watermark, if it has seen events.
    pub watermark: Option<i64>,
    /// Processing time (wall ms) of its last event, or of its assignment before its first.
    pub last_event_at_ms: i64,
    /// Whether the consumer has reached the partition's high watermark (no lag).
    pub caught_up: bool,
}

/// Minimum watermark over partitions, skipping those that are idle *and* caught up: a
/// partition that is merely slow (lagging) holds the watermark back, never loses data.
///
/// An assigned partition without a watermark yet (no event seen) holds everything back until
/// it is idle too: caught up (empty) for an idle timeout since its assignment. Lag comes from
/// fetch statistics a second old, so a partition that just received its first events can look
/// empty; skipping it at once would close windows on its neighbours' event times. Returns
/// `None` while nothing can be closed. When every partition
/// with a watermark is idle, the minimum over all of them is kept, so nothing closes early.
pub fn low_watermark<'a>(
    partitions: impl IntoIterator<Item = &'a PartitionProgress>,
    now_ms: i64,
    idle_timeout_ms: i64,
) -> Option<i64> {
    let mut active: Option<i64> = None;
    let mut all: Option<i64> = None;
    for p in partitions {
        let idle = p.caught_up && now_ms - p.last_event_at_ms >= idle_timeout_ms;
        let Some(w) = p.watermark else {
            if idle {
                continue;
            }
            return None;
        };
        all = Some(all.map_or(w, |a| a.min(w)));
        if !idle {
            active = Some(active.map_or(w, |a| a.min(w)));
        }
    }
    active.or(all)
}

/// An event whose window had already closed when it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Late {
    /// Start of the window it missed.
    pub window_start: i64,
    /// Size of the window it missed, ms.
    pub window_ms: i64,
    /// How far the watermark was past the event's time, ms.
    pub behind_watermark_ms: i64,
}

/// Decides lateness for one metric family: an event is late when its window of `window_ms`
/// has ended `lateness_ms` or more before the watermark. Larger windows containing an accepted
/// event end later, so they are still open: one decision covers every window size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatenessGate {
    window_ms: i64,
    lateness_ms: i64,
    watermark: Option<i64>,
}

impl LatenessGate {
    /// A gate for windows of `window_ms` kept open `lateness_ms` past their end.
    pub fn new(window_ms: i64, lateness_ms: i64) -> Self {
        LatenessGate { window_ms, lateness_ms, watermark: None }
    }

    /// The window size the decision is made on, ms.
    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    /// Allowed lateness, ms.
    pub fn lateness_ms(&self) -> i64 {
        self.lateness_ms
    }

    /// `Ok` if an event at `event_time` is still on time.
    ///
    /// # Errors
    /// [`Late`] when its window closed before the event arrived.
    pub fn check(&self, event_time: i64) -> Result<(), Late> {
        let start = window_start(event_time, self.window_ms);
        match self.watermark {
            Some(watermark) if self.closed(start + self.window_ms, watermark) => Err(Late {
                window_start: start,
                window_ms: self.window_ms,
                behind_watermark_ms: watermark - event_time,
            }),
            _ => Ok(()),
        }
    }

    /// Whether a window ending at `end` is closed at `watermark`.
    pub fn closed(&self, end: i64, watermark: i64) -> bool {
        end + self.lateness_ms <= watermark
    }

    /// Moves the watermark forward; returns false (and changes nothing) if it would not advance.
    pub fn advance(&mut self, watermark: i64) -> bool {
        if self.watermark.is_some_and(|w| watermark <= w) {
            return false;
        }
        self.watermark = Some(watermark);
        true
    }

    /// The watermark the gate last advanced to.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// The earliest event time still on time: the start of the oldest open window.
    pub fn horizon(&self) -> Option<i64> {
        self.watermark.map(|w| window_start(w - self.lateness_ms, self.window_ms))
    }
}

/// Open tumbling windows of one operator in several sizes at once (say 1 minute and 1 hour),
/// each window holding state `S`. Lateness is decided on the smallest size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TumblingWindows<S> {
    gate: LatenessGate,
    sizes_ms: Vec<i64>,
    /// Open windows keyed by (end, size), so they close in end order.
    open: BTreeMap<(i64, i64), S>,
}

/// A closed window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedWindow<S> {
    /// Start, UTC ms.
    pub start: i64,
    /// Size, ms.
    pub size_ms: i64,
    /// Its state.
    pub state: S,
}

impl<S: Default> TumblingWindows<S> {
    /// Windows of each of `sizes_ms` (at least one), kept open `lateness_ms` past the watermark
    /// reaching their end.
    pub fn new(sizes_ms: &[i64], lateness_ms: i64) -> Self {
        let mut sizes_ms = sizes_ms.to_vec();
        sizes_ms.sort_unstable();
        sizes_ms.dedup();
        assert!(sizes_ms.first().is_some_and(|s| *s > 0), "at least one positive window size");
        TumblingWindows { gate: LatenessGate::new(sizes_ms[0], lateness_ms), sizes_ms, open: BTreeMap::new() }
    }

    /// Applies `update` to the state of every window containing `event_time`.
    ///
    /// # Errors
    /// [`Late`] when the event's smallest window closed before it arrived; nothing is updated.
    pub fn record(&mut self, event_time: i64, mut update: impl FnMut(&mut S)) -> Result<(), Late> {
        self.record_each(event_time, |_, _, state| update(state))
    }

    /// Whether an event at `event_time` would be on time.
    ///
    /// # Errors
    /// [`Late`] when its smallest window has closed.
    pub fn check(&self, event_time: i64) -> Result<(), Late> {
        self.gate.check(event_time)
    }

    /// Whether the windows ending at `end` are still open.
    pub fn is_open(&self, end: i64) -> bool {
        self.gate.watermark().is_none_or(|watermark| !self.gate.closed(end, watermark))
    }

    /// The longest window size, ms.
    pub fn longest_ms(&self) -> i64 {
        self.sizes_ms.last().copied().unwrap_or_default()
    }

    /// Like [`TumblingWindows::record`], also telling `update` each window's end and size, ms.
    ///
    /// # Errors
    /// [`Late`] when the event's smallest window closed before it arrived; nothing is updated.
    pub fn record_each(&mut self, event_time: i64, mut update: impl FnMut(i64, i64, &mut S)) -> Result<(), Late> {
        self.gate.check(event_time)?;
        for &size in &self.sizes_ms {
            let end = window_start(event_time, size) + size;
            update(end, size, self.open.entry((end, size)).or_default());
        }
        Ok(())
    }

    /// Closes every window whose end plus lateness is at or before `watermark`, in end order.
    /// Every window ending at or before the last one closed is closed then: closing depends on
    /// the end only.
    pub fn advance(&mut self, watermark: i64) -> Vec<ClosedWindow<S>> {
        if !self.gate.advance(watermark) {
            return Vec::new();
        }
        let mut closed = Vec::new();
        while let Some(entry) = self.open.first_entry() {
            let (end, size) = *entry.key();
            if !self.gate.closed(end, watermark) {
                break;
            }
            closed.push(ClosedWindow { start: end - size, size_ms: size, state: entry.remove() });
        }
        closed
    }

    /// Closes every open window (end of a bounded input).
    pub fn close_all(&mut self) -> Vec<ClosedWindow<S>> {
        if let Some(&(last_end, _)) = self.open.last_key_value().map(|(k, _)| k) {
            self.gate.advance(last_end + self.gate.lateness_ms());
        }
        std::mem::take(&mut self.open)
            .into_iter()
            .map(|((end, size), state)| ClosedWindow { start: end - size, size_ms: size, state })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_align_to_epoch_including_negative_times() {
        assert_eq!(window_start(125_000, 60_000), 120_000);
        assert_eq!(window_start(-1, 60_000), -60_000);
    }

    fn closed(start: i64, size_ms: i64, state: u32) -> ClosedWindow<u32> {
        ClosedWindow { start, size_ms, state }
    }

    #[test]
    fn window_closes_when_watermark_passes_end_plus_lateness() {
        let mut w: TumblingWindows<u32> = TumblingWindows::new(&[60_000], 10_000);
        w.record(5_000, |n| *n += 1).expect("open");
        assert!(w.advance(69_999).is_empty());
        assert_eq!(w.advance(70_000), vec![closed(0, 60_000, 1)]);
    }

    #[test]
    fn several_sizes_at_once_close_in_end_order() {
        let mut w: TumblingWindows<u32> = TumblingWindows::new(&[3_600_000, 60_000], 0);
        for t in [1_000, 61_000, 3_599_000] {
            w.record(t, |n| *n += 1).expect("open");
        }
        assert_eq!(w.advance(120_000), vec![closed(0, 60_000, 1), closed(60_000, 60_000, 1)]);
        assert_eq!(w.advance(3_600_000), vec![closed(3_540_000, 60_000, 1), closed(0, 3_600_000, 3)]);
    }

    #[test]
    fn late_event_is_reported_with_missed_window_and_counted_nowhere() {
        let mut w: TumblingWindows<u32> = TumblingWindows::new(&[60_000, 3_600_000], 0);
        w.record(1_000, |n| *n += 1).expect("open");
        w.advance(61_000);
        let late = w.record(59_000, |n| *n += 1).expect_err("window 0 closed");
        assert_eq!(late, Late { window_start: 0, window_ms: 60_000, behind_watermark_ms: 2_000 });
        assert!(w.record(61_500, |n| *n += 1).is_ok(), "the next window is still open");
        let hour = w.close_all().into_iter().find(|c| c.size_ms == 3_600_000).expect("hour window");
        assert_eq!(hour.state, 2, "the late event is not in the hour either");
    }

    #[test]
    fn gate_horizon_is_the_start_of_the_oldest_open_window() {
        let mut gate = LatenessGate::new(60_000, 30_000);
        assert_eq!(gate.horizon(), None);
        gate.advance(150_000);
        assert_eq!(gate.horizon(), Some(120_000));
        assert!(gate.check(119_999).is_err());
        assert!(gate.check(120_000).is_ok());
        assert!(!gate.advance(100_000), "watermarks never go back");
    }

    #[test]
    fn state_survives_a_snapshot_round_trip() {
        use crate::snapshot::{read_cbor, write_cbor};
        let mut w: TumblingWindows<BTreeMap<Option<String>, u32>> = TumblingWindows::new(&[60_000, 3_600_000], 0);
        w.record(5_000, |m| *m.entry(None).or_default() += 1).expect("open");
        w.advance(1_000);
        let mut bytes = Vec::new();
        write_cbor(&w, &mut bytes).expect("snapshot");
        let mut back: TumblingWindows<BTreeMap<Option<String>, u32>> = read_cbor(&bytes).expect("restore");
        assert_eq!(back.close_all(), w.close_all());
        assert!(read_cbor::<TumblingWindows<u32>>(b"not cbor").is_err());
    }

    #[test]
    fn lagging_partition_holds_low_watermark_back_but_idle_caught_up_one_does_not() {
        let busy = PartitionProgress { watermark: Some(100_000), last_event_at_ms: 1_000, caught_up: false };
        let quiet_caught_up = PartitionProgress { watermark: Some(10_000), last_event_at_ms: 0, caught_up: true };
        let quiet_lagging = PartitionProgress { watermark: Some(20_000), last_event_at_ms: 0, caught_up: false };
        assert_eq!(low_watermark([&busy, &quiet_caught_up], 60_000, 30_000), Some(100_000));
        assert_eq!(low_watermark([&busy, &quiet_lagging], 60_000, 30_000), Some(20_000));
        assert_eq!(low_watermark([&quiet_caught_up], 60_000, 30_000), Some(10_000));
        assert_eq!(low_watermark([&PartitionProgress::default()], 0, 1), None);
        let empty = PartitionProgress { watermark: None, last_event_at_ms: 0, caught_up: true };
        let not_started = PartitionProgress { watermark: None, last_event_at_ms: 0, caught_up: false };
        assert_eq!(low_watermark([&busy, &empty], 60_000, 30_000), Some(100_000));
        assert_eq!(low_watermark([&busy, &not_started], 60_000, 30_000), None, "a partition not yet read holds back");
        let just_assigned_empty = PartitionProgress { watermark: None, last_event_at_ms: 50_000, caught_up: true };
        assert_eq!(
            low_watermark([&busy, &just_assigned_empty], 60_000, 30_000),
            None,
            "an empty partition holds back for an idle timeout after its assignment: its events may be in flight"
        );
        assert_eq!(low_watermark([&busy, &just_assigned_empty], 80_000, 30_000), Some(100_000));
    }
}
