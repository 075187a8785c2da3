//! Event time: window assignment, per-partition watermarks, the instance's low watermark, and
//! a tumbling-window container that closes windows as the watermark passes, and duplicate
//! suppression. Pure logic, no I/O.

mod dedupe;

pub use dedupe::Dedupe;

use std::collections::BTreeMap;

/// Start of the tumbling window of size `window_ms` containing `t` (windows align to the epoch).
pub fn window_start(t: i64, window_ms: i64) -> i64 {
    t.div_euclid(window_ms) * window_ms
}

/// Watermark of one partition: max event time seen minus the allowed out-of-orderness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Processing time (wall ms) of its last event.
    pub last_event_at_ms: i64,
    /// Whether the consumer has reached the partition's high watermark (no lag).
    pub caught_up: bool,
}

/// Minimum watermark over partitions, skipping those that are idle *and* caught up: a
/// partition that is merely slow (lagging) holds the watermark back, never loses data.
///
/// An assigned partition without a watermark yet (no event seen) holds everything back unless
/// it is caught up (empty). Returns `None` while nothing can be closed. When every partition
/// with a watermark is idle, the minimum over all of them is kept, so nothing closes early.
pub fn low_watermark<'a>(
    partitions: impl IntoIterator<Item = &'a PartitionProgress>,
    now_ms: i64,
    idle_timeout_ms: i64,
) -> Option<i64> {
    let mut active: Option<i64> = None;
    let mut all: Option<i64> = None;
    for p in partitions {
        let Some(w) = p.watermark else {
            if p.caught_up {
                continue;
            }
            return None;
        };
        all = Some(all.map_or(w, |a| a.min(w)));
        let idle = p.caught_up && now_ms - p.last_event_at_ms >= idle_timeout_ms;
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
    /// How far the watermark was past the event's time, ms.
    pub behind_watermark_ms: i64,
}

/// Open tumbling windows of one operator, keyed by start, each holding state `S`.
#[derive(Debug, Clone)]
pub struct TumblingWindows<S> {
    window_ms: i64,
    lateness_ms: i64,
    open: BTreeMap<i64, S>,
    /// Watermark at the last [`TumblingWindows::advance`]; windows ending (plus lateness) at or
    /// before it are closed.
    closed_through: Option<i64>,
}

impl<S: Default> TumblingWindows<S> {
    /// Windows of `window_ms`, kept open `lateness_ms` past the watermark reaching their end.
    pub fn new(window_ms: i64, lateness_ms: i64) -> Self {
        TumblingWindows { window_ms, lateness_ms, open: BTreeMap::new(), closed_through: None }
    }

    /// The window size in ms.
    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    /// The state of the window containing `event_time`, or [`Late`] if it already closed.
    ///
    /// # Errors
    /// [`Late`] when the window closed before this event arrived.
    pub fn slot(&mut self, event_time: i64) -> Result<&mut S, Late> {
        let start = window_start(event_time, self.window_ms);
        if let Some(watermark) = self.closed_through
            && start + self.window_ms + self.lateness_ms <= watermark
        {
            return Err(Late { window_start: start, behind_watermark_ms: watermark - event_time });
        }
        Ok(self.open.entry(start).or_default())
    }

    /// Closes every window whose end plus lateness is at or before `watermark`, in start order.
    pub fn advance(&mut self, watermark: i64) -> Vec<(i64, S)> {
        if self.closed_through.is_some_and(|c| watermark <= c) {
            return Vec::new();
        }
        self.closed_through = Some(watermark);
        let mut closed = Vec::new();
        while let Some(entry) = self.open.first_entry() {
            if *entry.key() + self.window_ms + self.lateness_ms > watermark {
                break;
            }
            closed.push(entry.remove_entry());
        }
        closed
    }

    /// Closes every open window (end of a bounded input).
    pub fn close_all(&mut self) -> Vec<(i64, S)> {
        if let Some(last) = self.open.last_key_value().map(|(k, _)| *k) {
            self.closed_through = Some(last + self.window_ms + self.lateness_ms);
        }
        std::mem::take(&mut self.open).into_iter().collect()
    }

    /// Number of open windows.
    pub fn open_windows(&self) -> usize {
        self.open.len()
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

    #[test]
    fn window_closes_when_watermark_passes_end_plus_lateness() {
        let mut w: TumblingWindows<u32> = TumblingWindows::new(60_000, 10_000);
        *w.slot(5_000).expect("open") += 1;
        assert!(w.advance(69_999).is_empty());
        assert_eq!(w.advance(70_000), vec![(0, 1)]);
    }

    #[test]
    fn late_event_is_reported_with_missed_window() {
        let mut w: TumblingWindows<u32> = TumblingWindows::new(60_000, 0);
        *w.slot(1_000).expect("open") += 1;
        w.advance(61_000);
        let late = w.slot(59_000).expect_err("window 0 closed");
        assert_eq!(late, Late { window_start: 0, behind_watermark_ms: 2_000 });
        assert!(w.slot(61_500).is_ok(), "the next window is still open");
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
    }
}
